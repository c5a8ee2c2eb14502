//! Lua scripts of the native layout: each change to a session is one script, so it happens
//! whole and costs one round trip. Every script that changes what a node must deliver also
//! appends an entry to that node's inbox, so the node applies changes and messages in the
//! order redis saw them. Key prefixes come from `keys.rs` as arguments.
//!
//! Entries are added with id `1-*`: redis numbers them `1-0`, `1-1`, … in order, so the reader
//! sees any entry it missed (trimmed by the length bound before it was read) as a gap in the
//! numbers (needs redis ≥ 7.0).
//!
//! Inbox entries (`t` is the type):
//! - `m`: a published message; `d` its JSON, `w` = `0` when `/**` subscribers must not get it.
//! - `s` / `u`: client `c` subscribed to / left pattern `p`.
//! - `d`: client `c` was destroyed.
//! - `T`: client `c` moved here at epoch `e` with subscriptions `p`, `p`, ...
//! - `h`: client `c` moved to node `to` at epoch `e`: hand over what is queued for it.
//! - `H`: what client `c`'s previous node held for it at epoch `e`, as `d`, `d`, ...

use std::sync::LazyLock;

/// Publish. KEYS: the interest hashes of every pattern the channel matches. ARGV: inbox
/// prefix, inbox length bound, message JSON, `1`/`0` (whether `/**` subscribers get it).
/// Appends the message once to the inbox of every node interested in any of the patterns.
/// Returns the number of nodes. Cost: one HKEYS per pattern plus one XADD per node, whatever
/// the number of subscribers.
pub(crate) static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local seen, nodes = {}, {}
for i = 1, #KEYS do
  for _, node in ipairs(redis.call('HKEYS', KEYS[i])) do
    if not seen[node] then
      seen[node] = true
      nodes[#nodes + 1] = node
    end
  end
end
for _, node in ipairs(nodes) do
  if ARGV[4] == '1' then
    redis.call('XADD', ARGV[1] .. node, 'MAXLEN', '~', ARGV[2], '1-*', 't', 'm', 'd', ARGV[3])
  else
    redis.call('XADD', ARGV[1] .. node, 'MAXLEN', '~', ARGV[2], '1-*', 't', 'm', 'd', ARGV[3], 'w', '0')
  end
end
return #nodes
"#,
    )
});

/// Create a client owned by this node. KEYS[1]: clients; KEYS[2]: the client's hash. ARGV:
/// client id, node id, now (ms). Returns 0 if the id is taken, 1 when created.
pub(crate) static CREATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('ZADD', KEYS[1], 'NX', ARGV[3], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'epoch', 1)
return 1
"#,
    )
});

/// Subscribe under a per-client limit. KEYS[1]: the client's hash; KEYS[2]: its
/// subscriptions; KEYS[3]: the pattern's interest hash. ARGV: pattern, client id, limit,
/// inbox prefix, inbox bound. Returns -2 for an unknown client, -1 at the limit (nothing
/// changes), 0 when already subscribed, 1 when added: the owner's interest is counted and
/// the owner told through its inbox, ahead of any message published after this.
pub(crate) static SUBSCRIBE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return -2 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], owner, 1)
redis.call('XADD', ARGV[4] .. owner, 'MAXLEN', '~', ARGV[5], '1-*', 't', 's', 'c', ARGV[2], 'p', ARGV[1])
return 1
"#,
    )
});

/// Unsubscribe. Keys and ARGV as [`SUBSCRIBE`] without the limit. Returns 1 when the client
/// was subscribed (the owner's interest is uncounted and the owner told), else 0.
pub(crate) static UNSUBSCRIBE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 0 end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[3], owner, -1) <= 0 then redis.call('HDEL', KEYS[3], owner) end
redis.call('XADD', ARGV[3] .. owner, 'MAXLEN', '~', ARGV[4], '1-*', 't', 'u', 'c', ARGV[2], 'p', ARGV[1])
return 1
"#,
    )
});

/// Destroy a client. KEYS[1]: clients; KEYS[2]: the client's hash; KEYS[3]: its
/// subscriptions. ARGV: client id, interest prefix, inbox prefix, inbox bound. Uncounts the
/// owner's interest, tells the owner, deletes the session. Returns {existed (0/1),
/// subscription, ...}.
pub(crate) static DESTROY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local owner = redis.call('HGET', KEYS[2], 'owner')
local existed = redis.call('ZREM', KEYS[1], ARGV[1])
local subs = redis.call('SMEMBERS', KEYS[3])
if owner then
  for _, p in ipairs(subs) do
    local key = ARGV[2] .. p
    if redis.call('HINCRBY', key, owner, -1) <= 0 then redis.call('HDEL', key, owner) end
  end
  redis.call('XADD', ARGV[3] .. owner, 'MAXLEN', '~', ARGV[4], '1-*', 't', 'd', 'c', ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3])
local out = {existed}
for _, p in ipairs(subs) do out[#out + 1] = p end
return out
"#,
    )
});

/// Move a client to this node. KEYS[1]: clients; KEYS[2]: the client's hash; KEYS[3]: its
/// subscriptions; KEYS[4]: nodes. ARGV: client id, this node, now (ms), interest prefix,
/// inbox prefix, inbox bound. Bumps the epoch, moves the interest counts to this node, appends
/// `T` (with the subscriptions) to this node's inbox and `h` to the previous owner's, in one
/// step: messages published before reach the old owner ahead of `h`, later ones reach this
/// node after `T`. Returns {0} for an unknown client, else {1, previous owner, epoch,
/// previous owner's last heartbeat (ms, -1 when unknown)}.
pub(crate) static TAKE_OVER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local old = redis.call('HGET', KEYS[2], 'owner')
if not old then return {0} end
local me = ARGV[2]
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSET', KEYS[2], 'owner', me)
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
local entry = {'t', 'T', 'c', ARGV[1], 'e', epoch}
for _, p in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if old ~= me then
    local key = ARGV[4] .. p
    if redis.call('HINCRBY', key, old, -1) <= 0 then redis.call('HDEL', key, old) end
    redis.call('HINCRBY', key, me, 1)
  end
  entry[#entry + 1] = 'p'
  entry[#entry + 1] = p
end
redis.call('XADD', ARGV[5] .. me, 'MAXLEN', '~', ARGV[6], '1-*', unpack(entry))
local beat = -1
if old ~= me then
  redis.call('XADD', ARGV[5] .. old, 'MAXLEN', '~', ARGV[6], '1-*', 't', 'h', 'c', ARGV[1], 'to', me, 'e', epoch)
  beat = tonumber(redis.call('ZSCORE', KEYS[4], old) or '-1')
end
return {1, old, epoch, beat}
"#,
    )
});

/// Record again a client this node holds, after redis lost its data. KEYS[1]: clients;
/// KEYS[2]: the client's hash; KEYS[3]: its subscriptions. ARGV: client id, this node, now
/// (ms), interest prefix, then its subscriptions. Returns 0 when another node owns the client
/// now (this node must let it go), 1 when the record is there and ours, 2 when it was
/// written anew.
pub(crate) static REASSERT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local owner = redis.call('HGET', KEYS[2], 'owner')
if owner then
  if owner == ARGV[2] then return 1 end
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'epoch', 1)
for i = 5, #ARGV do
  redis.call('SADD', KEYS[3], ARGV[i])
  redis.call('HINCRBY', ARGV[4] .. ARGV[i], ARGV[2], 1)
end
return 2
"#,
    )
});

/// Heartbeat. KEYS[1]: nodes. ARGV: this node, now (ms). Returns 1 when the node was
/// registered already, 0 when it was not (first beat, or redis lost its data).
pub(crate) static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if known then return 1 end
return 0
"#,
    )
});
