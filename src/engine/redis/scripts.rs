//! Lua scripts: each multi-step change is one script, so it happens whole or not at all and
//! costs one round trip. Per-client key names are built inside from the namespace exactly as
//! `keys.rs` builds them (faye-redis layout), since the recipients are only known inside.

use std::sync::LazyLock;

/// Publish. ARGV: namespace, message JSON, cutoff ms (clients last seen before it are gone),
/// queue bound in bytes (0: none), then the expanded channels. Unions the subscribers of every
/// channel; for each live one, appends the message to its queue and announces its id on the
/// messages channel; a gone one's queue is deleted (as faye-redis does). Returns
/// {recipients, id, bytes, id, bytes, ...}: the clients whose queue is now over the bound.
/// The size is redis's own estimate (MEMORY USAGE, sampled), asked only when the queue's
/// length times this message's size passes the bound or every 32nd message, so the check
/// stays cheap; faye-redis nodes draining the same queues need no extra key.
/// Guarantees: every recipient gets the message once, in publish order per publisher.
pub(crate) static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local ns, msg, cutoff, bound = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local sets = {}
for i = 5, #ARGV do sets[#sets + 1] = ns .. '/channels' .. ARGV[i] end
local clients = redis.call('SUNION', unpack(sets))
local result = {0}
for _, id in ipairs(clients) do
  local queue = ns .. '/clients/' .. id .. '/messages'
  local score = tonumber(redis.call('ZSCORE', ns .. '/clients', id))
  if score and score > cutoff then
    local length = redis.call('RPUSH', queue, msg)
    redis.call('PUBLISH', ns .. '/notifications/messages', id)
    result[1] = result[1] + 1
    if bound > 0 and (length * #msg > bound or length % 32 == 0) then
      local bytes = redis.call('MEMORY', 'USAGE', queue) or 0
      if bytes > bound then
        result[#result + 1] = id
        result[#result + 1] = bytes
      end
    end
  else
    redis.call('DEL', queue)
  end
end
return result
"#,
    )
});

/// Subscribe under a per-client limit. KEYS[1]: the client's channel set; KEYS[2]: the
/// channel's client set; ARGV: channel, client id, limit. Returns 0 when already subscribed,
/// -1 when the client holds `limit` channels already (nothing changes), 1 when added to both
/// sets. Guarantees: the check and the two additions happen as one step.
pub(crate) static SUBSCRIBE_LIMITED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"#,
    )
});

/// Take several clients' queues. KEYS: the queues. Returns one array of messages per key, in
/// KEYS order; each queue is read and deleted in the same step, so a message is either
/// returned once or still queued. One call drains every client notified meanwhile.
pub(crate) static TAKE_QUEUES: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local out = {}
for i, key in ipairs(KEYS) do
  local messages = redis.call('LRANGE', key, 0, -1)
  if #messages > 0 then redis.call('DEL', key) end
  out[i] = messages
end
return out
"#,
    )
});

/// Destroy a client. ARGV: namespace, client id. Marks it (score 0), removes it from every
/// channel set and its own, deletes its queue, removes it, and announces it on the close
/// channel — the faye-redis sequence in one atomic step. Returns {existed, channels...}.
pub(crate) static DESTROY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local ns, id = ARGV[1], ARGV[2]
local own = ns .. '/clients/' .. id .. '/channels'
local channels = redis.call('SMEMBERS', own)
local existed = redis.call('ZSCORE', ns .. '/clients', id) and 1 or 0
redis.call('ZADD', ns .. '/clients', 0, id)
local result = {existed}
for _, c in ipairs(channels) do
  redis.call('SREM', own, c)
  if redis.call('SREM', ns .. '/channels' .. c, id) == 1 then result[#result + 1] = c end
end
redis.call('DEL', ns .. '/clients/' .. id .. '/messages')
redis.call('ZREM', ns .. '/clients', id)
redis.call('PUBLISH', ns .. '/notifications/close', id)
return result
"#,
    )
});

/// Requeue at the head. KEYS[1]: the queue; KEYS[2]: the clients set; ARGV[1]: client id;
/// ARGV[2]: messages channel; ARGV[3..]: messages oldest first. Only while the client still
/// exists, and announces them so whichever node holds the client drains again.
pub(crate) static REQUEUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
for i = #ARGV, 3, -1 do redis.call('LPUSH', KEYS[1], ARGV[i]) end
redis.call('PUBLISH', ARGV[2], ARGV[1])
return #ARGV - 2
"#,
    )
});
