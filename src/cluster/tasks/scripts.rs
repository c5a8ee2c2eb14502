//! The Lua scripts of tasks and peers (spec §C2, §C3): every move of a task between places,
//! every claim, completion, promotion and recovery is one script, so a record and its place
//! change together (§C1.1) and every time comparison uses redis `TIME` (§C1.2).
//!
//! Each script gets the key prefix as `ARGV[1]` and computes its keys: per-node queues,
//! room indexes and stats hashes are only known inside the script (which peers are live,
//! which node owned a claim). That is allowed because the target is one redis server, not
//! Redis Cluster (§C1.7).
//!
//! Records keep `params` as the last field, written by Rust as raw JSON: the scripts decode
//! only the part before `,"params":` and splice the params text back unchanged, so a number
//! in the params never passes through Lua's doubles. (Inside a JSON string every `"` is
//! escaped, so the first `,"params":` of a record is always the field separator.)

use std::sync::LazyLock;

/// Shared by every script: keys, redis time, record (de)coding, places.
const PRELUDE: &str = r#"
local P = ARGV[1]
local function k(s) return P .. s end
local function node_part(n) return (string.gsub(n, ':', '-')) end
local function local_queue(n) return P .. 'tasks:' .. node_part(n) end
local DATA, GLOBAL, DELAYED, PROC = k('tasks:data'), k('tasks:global'), k('tasks:delayed'), k('tasks:processing')
local FAILED, WS, PEERS, PINGS, STATS = k('tasks:failed'), k('tasks:workerStatus'), k('peers'), k('peerPings'), k('stats')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local NULL = cjson.null
local MARK = ',"params":'

local function is_set(v) return v ~= nil and v ~= NULL end
local function int(v) return string.format('%d', v) end

-- A record's head (every field but params) as a table, and the raw params text; nil when
-- the text is not a record.
local function decode(s)
  if type(s) ~= 'string' or string.sub(s, -1) ~= '}' then return nil end
  local i = string.find(s, MARK, 1, true)
  if not i then return nil end
  local ok, h = pcall(cjson.decode, string.sub(s, 1, i - 1) .. '}')
  if not ok or type(h) ~= 'table' or type(h.id) ~= 'string' or type(h.name) ~= 'string' then return nil end
  return h, string.sub(s, i + #MARK, -2)
end

local function encode(h, params)
  local head = cjson.encode(h)
  return string.sub(head, 1, -2) .. MARK .. params .. '}'
end

local function live(n) return redis.call('HEXISTS', PINGS, n) == 1 end

local function count(field, by, node)
  redis.call('HINCRBY', STATS, field, by)
  if node then redis.call('HINCRBY', P .. 'stats:' .. node_part(node), field, by) end
end

local function clear_claim(h)
  h.token = NULL; h.api_id = NULL; h.worker_id = NULL; h.claimedAt = NULL
end

-- Appends a dead-letter entry (task last, so its text can be cut back out) and deletes the
-- record: the task's one place is now the failed list.
local function dead_letter(h, params, reason, err, node)
  h.state = 'failed'
  if is_set(err) then h.lastError = err end
  clear_claim(h)
  redis.call('HDEL', DATA, h.id)
  local e = '{"reason":' .. cjson.encode(reason) .. ',"error":' .. (is_set(err) and cjson.encode(err) or 'null')
    .. ',"failedAt":' .. int(now) .. ',"serverId":' .. cjson.encode(node or '') .. ',"task":' .. encode(h, params) .. '}'
  redis.call('RPUSH', FAILED, e)
  count('tasks:failed', 1, nil)
end

-- A record that cannot be decoded (or is missing) under an id that had a place.
local function dead_letter_corrupt(id, raw, node)
  redis.call('HDEL', DATA, id)
  local task = cjson.encode({id = id, raw = raw or NULL})
  local e = '{"reason":"corrupt","error":"task record missing or unparsable","failedAt":' .. int(now)
    .. ',"serverId":' .. cjson.encode(node or '') .. ',"task":' .. task .. '}'
  redis.call('RPUSH', FAILED, e)
  count('tasks:failed', 1, nil)
end

-- Tasks that exist only for their target node: "all" copies and per-node periodic instances.
local function per_node_only(h) return h.isDuplicate == true or (h.periodic == true and is_set(h.target)) end

local function schedule(h, params, at)
  h.state = 'delayed'; h.queue = DELAYED; h.runAt = at
  clear_claim(h)
  redis.call('HSET', DATA, h.id, encode(h, params))
  redis.call('ZADD', DELAYED, at, h.id)
end

-- Writes one copy per live member into its local queue; answers how many.
local function fan_out(h, params)
  local n = 0
  for _, member in ipairs(redis.call('LRANGE', PEERS, 0, -1)) do
    if live(member) then
      local c = {}
      for f, v in pairs(h) do c[f] = v end
      c.id = h.id .. '@' .. member
      c.isDuplicate = true; c.parentId = h.id; c.target = member; c.fanOut = false
      c.state = 'pending'; c.queue = local_queue(member); c.runAt = now - 1
      clear_claim(c)
      redis.call('HSET', DATA, c.id, encode(c, params))
      redis.call('RPUSH', c.queue, c.id)
      n = n + 1
    end
  end
  return n
end

-- Puts a record into its ready queue (tail, or head for recovered work). A task for a node
-- that is gone is dropped (per-node only) or dead-lettered (`targetGone`).
local function make_ready(h, params, head, node)
  local q = GLOBAL
  if is_set(h.target) then
    if not live(h.target) then
      if per_node_only(h) then
        redis.call('HDEL', DATA, h.id)
        count('tasks:droppedForDeadNode', 1, nil)
      else
        dead_letter(h, params, 'targetGone', 'target node ' .. h.target .. ' is gone', node)
      end
      return false
    end
    q = local_queue(h.target)
  end
  h.state = 'pending'; h.queue = q
  clear_claim(h)
  redis.call('HSET', DATA, h.id, encode(h, params))
  if head then redis.call('LPUSH', q, h.id) else redis.call('RPUSH', q, h.id) end
  return true
end

-- A task that must run on the dead node: dropped when it exists only for that node, else
-- dead-lettered `targetGone`.
local function dispose_targeted_at_dead(h, params, dead, checker, summary)
  if per_node_only(h) then
    redis.call('HDEL', DATA, h.id); summary.dropped = summary.dropped + 1
    count('tasks:droppedForDeadNode', 1, nil)
  else
    dead_letter(h, params, 'targetGone', 'target node ' .. dead .. ' is gone', checker)
    summary.dead_lettered = summary.dead_lettered + 1
  end
end

-- Everything a dead (or leaving) node held, disposed of as §C3.7 says. The ping field is
-- deleted first and the peers entry last; each step is idempotent, so a repeated call
-- finishes a half-done one.
local function recover(dead, max_crash, checker)
  local summary = {reclaimed = 0, dropped = 0, dead_lettered = 0}
  redis.call('HDEL', PINGS, dead)
  local claims = redis.call('HGETALL', PROC)
  for i = 1, #claims, 2 do
    local id = claims[i]
    local ok, c = pcall(cjson.decode, claims[i + 1])
    if not ok or type(c) ~= 'table' or c.serverId == dead then
      redis.call('HDEL', PROC, id)
      local raw = redis.call('HGET', DATA, id)
      local h, params = decode(raw)
      if not h then
        dead_letter_corrupt(id, raw, checker); summary.dead_lettered = summary.dead_lettered + 1
      elseif h.stopRequested == true then
        redis.call('HDEL', DATA, id)
      elseif is_set(h.target) and h.target == dead then
        dispose_targeted_at_dead(h, params, dead, checker, summary)
      elseif (tonumber(h.attempt) or 0) >= max_crash then
        dead_letter(h, params, 'crashLoop', 'claimed ' .. int(h.attempt) .. ' times by nodes that died', checker)
        summary.dead_lettered = summary.dead_lettered + 1
      else
        make_ready(h, params, true, checker)
        summary.reclaimed = summary.reclaimed + 1
        count('tasks:reclaimed', 1, nil)
      end
    end
  end
  local lq = local_queue(dead)
  local waiting = redis.call('LRANGE', lq, 0, -1)
  redis.call('DEL', lq)
  for _, id in ipairs(waiting) do
    local raw = redis.call('HGET', DATA, id)
    local h, params = decode(raw)
    if not h then
      dead_letter_corrupt(id, raw, checker); summary.dead_lettered = summary.dead_lettered + 1
    elseif is_set(h.target) and h.target == dead then
      dispose_targeted_at_dead(h, params, dead, checker, summary)
    else
      h.target = NULL
      make_ready(h, params, false, checker)
    end
  end
  local statuses = redis.call('HKEYS', WS)
  for _, f in ipairs(statuses) do
    if string.sub(f, 1, #dead + 1) == dead .. '#' then redis.call('HDEL', WS, f) end
  end
  redis.call('DEL', P .. 'stats:' .. node_part(dead))
  -- Room memberships: a connection stays in a room another member node also holds it in.
  local index = P .. 'roomIndex:' .. node_part(dead)
  local entries = redis.call('HGETALL', index)
  if #entries > 0 then
    local others = {}
    for _, peer in ipairs(redis.call('LRANGE', PEERS, 0, -1)) do
      if peer ~= dead then table.insert(others, P .. 'roomIndex:' .. node_part(peer)) end
    end
    for i = 1, #entries, 2 do
      local conn, room = entries[i], entries[i + 1]
      local held = false
      for _, other in ipairs(others) do
        if redis.call('HGET', other, conn) == room then held = true; break end
      end
      if not held then redis.call('LREM', P .. 'roomMembers-' .. room, 0, conn) end
    end
    redis.call('DEL', index)
  end
  redis.call('LREM', PEERS, 0, dead)
  return summary
end
"#;

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

/// Join. ARGV: prefix, node. Removes any earlier entry of the id, appends it, writes its
/// ping: from now on the node is a member and may claim.
pub(super) static JOIN: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('LREM', PEERS, 0, ARGV[2])
redis.call('RPUSH', PEERS, ARGV[2])
redis.call('HSET', PINGS, ARGV[2], int(now))
return int(now)
"#,
    )
});

/// Ping. ARGV: prefix, node. "ok" after refreshing the ping; "evicted" when the node's field
/// is gone (never re-created here: an evicted node must re-join under a new id).
pub(super) static PING: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
if not live(ARGV[2]) then return 'evicted' end
redis.call('HSET', PINGS, ARGV[2], int(now))
return 'ok'
"#,
    )
});

/// Dead-peer check. ARGV: prefix, deadAfter ms, maxCrashAttempts, checking node. Every
/// listed peer whose ping is older than deadAfter, or missing ("dead, recovery pending"),
/// is removed with its work recovered, all in this one step. Answers a flat list
/// `id, age ms (-1: no ping), reclaimed, dropped, dead-lettered` per removed peer.
pub(super) static CHECK_DEAD: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local dead_after, max_crash = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local seen = {}
for _, id in ipairs(redis.call('LRANGE', PEERS, 0, -1)) do
  if not seen[id] then
    seen[id] = true
    local ping = tonumber(redis.call('HGET', PINGS, id))
    if ping == nil or now - ping > dead_after then
      local s = recover(id, max_crash, ARGV[4])
      table.insert(out, id)
      table.insert(out, ping and int(now - ping) or '-1')
      table.insert(out, s.reclaimed); table.insert(out, s.dropped); table.insert(out, s.dead_lettered)
    end
  end
end
-- A ping field without a peers entry cannot come from join; treat it as a leftover.
for _, id in ipairs(redis.call('HKEYS', PINGS)) do
  if not seen[id] then
    local ping = tonumber(redis.call('HGET', PINGS, id))
    if ping == nil or now - ping > dead_after then redis.call('HDEL', PINGS, id) end
  end
end
return out
"#,
    )
});

/// Leave. ARGV: prefix, node, maxCrashAttempts. The dead-node recovery applied by a node to
/// itself after its workers stopped: claims handed back, local queue disposed of, statuses,
/// stats, rooms and membership removed. Answers `reclaimed, dropped, dead-lettered`.
pub(super) static LEAVE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local s = recover(ARGV[2], tonumber(ARGV[3]), ARGV[2])
return {s.reclaimed, s.dropped, s.dead_lettered}
"#,
    )
});

/// Enqueue. ARGV: prefix, record JSON (params last), mode (`ready`|`all`), runAt ms or '',
/// delay ms or '', idempotency key or '', idempotency TTL ms, create-if-absent '1'|'0'.
/// Answers `{'ok', id}`, `{'exists', id}` (idempotency key or periodic id already there),
/// `{'unknownNode', id}`, `{'noLivePeers'}` or `{'invalid'}`.
pub(super) static ENQUEUE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local h, params = decode(ARGV[2])
if not h then return {'invalid'} end
local idem = ARGV[6]
if idem ~= '' then
  local existing = redis.call('GET', k('tasks:idempotency:' .. idem))
  if existing then return {'exists', existing} end
end
if ARGV[8] == '1' and redis.call('HEXISTS', DATA, h.id) == 1 then return {'exists', h.id} end
if is_set(h.target) and not live(h.target) then return {'unknownNode', h.target} end
local run_at = now - 1
if ARGV[4] ~= '' then run_at = tonumber(ARGV[4]) elseif ARGV[5] ~= '' then run_at = now + tonumber(ARGV[5]) end
h.enqueuedAt = now
h.runAt = run_at
if ARGV[3] == 'all' then
  h.fanOut = true
  if run_at > now then
    schedule(h, params, run_at)
  else
    local ok = false
    for _, member in ipairs(redis.call('LRANGE', PEERS, 0, -1)) do if live(member) then ok = true end end
    if not ok then return {'noLivePeers'} end
    fan_out(h, params)
  end
elseif run_at > now then
  schedule(h, params, run_at)
else
  make_ready(h, params, false, nil)
end
if idem ~= '' then redis.call('SET', k('tasks:idempotency:' .. idem), h.id, 'PX', ARGV[7]) end
return {'ok', h.id}
"#,
    )
});

/// Delayed promotion. ARGV: prefix, batch size, node. Moves up to batch due ids from the
/// delayed set to their ready queues (fan-out for "all" parents); ZREM is the guard, so
/// concurrent runs on several nodes are safe. Answers how many were promoted.
pub(super) static PROMOTE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', DELAYED, id) == 1 then
    local raw = redis.call('HGET', DATA, id)
    local h, params = decode(raw)
    if not h then
      dead_letter_corrupt(id, raw, ARGV[3])
    elseif h.fanOut == true then
      redis.call('HDEL', DATA, id)
      if fan_out(h, params) == 0 then
        dead_letter(h, params, 'targetGone', 'no live peers to fan out to', ARGV[3])
      end
      n = n + 1
    elseif make_ready(h, params, false, ARGV[3]) then
      n = n + 1
    end
  end
end
return n
"#,
    )
});

/// Claim. ARGV: prefix, node, worker index, token, global-first '1'|'0'. Only a member may
/// claim. Pops the first id of the node's local queue (or global first), records ownership
/// in the processing hash and the record in the same step. Answers `{'claimed', record}`,
/// `{'none'}` or `{'evicted'}`.
pub(super) static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local node, worker, token = ARGV[2], tonumber(ARGV[3]), ARGV[4]
if not live(node) then return {'evicted'} end
local queues = {local_queue(node), GLOBAL}
if ARGV[5] == '1' then queues = {GLOBAL, local_queue(node)} end
for _, q in ipairs(queues) do
  for _ = 1, 16 do
    local id = redis.call('LPOP', q)
    if not id then break end
    local raw = redis.call('HGET', DATA, id)
    local h, params = decode(raw)
    if not h then
      dead_letter_corrupt(id, raw, node)
    else
      h.attempt = (tonumber(h.attempt) or 0) + 1
      h.state = 'processing'; h.queue = PROC
      h.api_id = node; h.worker_id = worker; h.token = token; h.claimedAt = now
      local rec = encode(h, params)
      redis.call('HSET', DATA, id, rec)
      redis.call('HSET', PROC, id, cjson.encode({serverId = node, worker = worker, token = token, claimedAt = now}))
      redis.call('HSET', WS, node .. '#' .. ARGV[3], 'working task: ' .. id)
      return {'claimed', rec}
    end
  end
end
return {'none'}
"#,
    )
});

/// Completion. ARGV: prefix, node, worker index, id, token, outcome (`ok`|`error`|`bounce`),
/// error text, backoff ms list (comma separated), bounce limit, bounce delay ms. A claim
/// whose token no longer matches is `stale` and changes nothing (fencing). Otherwise the
/// claim ends and the task is deleted, re-scheduled, retried or dead-lettered in this step,
/// and a run (not a bounce) is counted in `tasks:ranTasks:{name}` (cluster and node).
/// Answers one of `stale`, `corrupt`, `stopped`, `done`, `rescheduled`, `retry`, `bounced`,
/// `deadLettered`.
pub(super) static COMPLETE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local node, id, token, outcome, err = ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local c = redis.call('HGET', PROC, id)
if not c then return 'stale' end
local ok, claim = pcall(cjson.decode, c)
if not ok or type(claim) ~= 'table' or claim.token ~= token then return 'stale' end
redis.call('HDEL', PROC, id)
redis.call('HSET', WS, node .. '#' .. ARGV[3], 'idle')
local raw = redis.call('HGET', DATA, id)
local h, params = decode(raw)
if not h then dead_letter_corrupt(id, raw, node); return 'corrupt' end
clear_claim(h)
if h.stopRequested == true then redis.call('HDEL', DATA, id); return 'stopped' end
local attempt = tonumber(h.attempt) or 0
if outcome == 'bounce' then
  h.bounces = (tonumber(h.bounces) or 0) + 1
  h.attempt = math.max(0, attempt - 1)
  count('tasks:notRunnableHere', 1, node)
  if h.bounces >= tonumber(ARGV[9]) then
    dead_letter(h, params, 'notRunnableHere', err, node); return 'deadLettered'
  end
  schedule(h, params, now + tonumber(ARGV[10])); return 'bounced'
end
count('tasks:ranTasks:' .. h.name, 1, node)
if h.periodic == true then
  if outcome ~= 'ok' then h.lastError = err; count('tasks:periodicFailures', 1, node) end
  h.attempt = 0
  schedule(h, params, now + (tonumber(h.frequency) or 0)); return 'rescheduled'
end
if outcome == 'ok' then redis.call('HDEL', DATA, id); return 'done' end
h.lastError = err
if attempt < (tonumber(h.maxAttempts) or 1) then
  local backoff = {}
  for v in string.gmatch(ARGV[8], '[^,]+') do table.insert(backoff, tonumber(v)) end
  local delay = backoff[math.min(math.max(attempt, 1), #backoff)] or 1000
  schedule(h, params, now + delay); return 'retry'
end
dead_letter(h, params, 'error', err, node)
return 'deadLettered'
"#,
    )
});

/// Cancel. ARGV: prefix, id. Removes a task still waiting in the delayed set or a ready
/// queue, with its record; 0 when it is not there (unknown, claimed or finished).
pub(super) static CANCEL: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local h = decode(redis.call('HGET', DATA, ARGV[2]))
if not h then return 0 end
local removed = 0
if h.state == 'delayed' then removed = redis.call('ZREM', DELAYED, h.id)
elseif h.state == 'pending' and type(h.queue) == 'string' then removed = redis.call('LREM', h.queue, 1, h.id) end
if removed > 0 then redis.call('HDEL', DATA, h.id) end
return removed
"#,
    )
});

/// Retry a dead-letter entry. ARGV: prefix, entry text. Re-creates the task with attempt 0
/// at its original target and removes the entry. Answers `ok`, `gone` (entry not there),
/// `corrupt` (no task record in it), `exists` (the id is live again) or `unknownNode`.
pub(super) static RETRY_FAILED: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local entry = ARGV[2]
local i = string.find(entry, ',"task":', 1, true)
if not i then return 'corrupt' end
local h, params = decode(string.sub(entry, i + 8, -2))
if not h then return 'corrupt' end
if not redis.call('LPOS', FAILED, entry) then return 'gone' end
if redis.call('HEXISTS', DATA, h.id) == 1 then return 'exists' end
if is_set(h.target) and not live(h.target) then return 'unknownNode' end
redis.call('LREM', FAILED, 1, entry)
h.attempt = 0; h.bounces = 0; h.stopRequested = nil
if h.fanOut == true then
  if fan_out(h, params) == 0 then
    redis.call('RPUSH', FAILED, entry); return 'unknownNode'
  end
else
  make_ready(h, params, false, nil)
end
return 'ok'
"#,
    )
});

/// Stop a periodic task. ARGV: prefix, name. Deletes the "any" instance and every listed
/// node's "all" instance wherever they wait; a claimed one is marked so that its completion
/// deletes it instead of re-scheduling. Answers how many instances were stopped.
pub(super) static STOP_PERIODIC: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local ids = {'periodic:' .. ARGV[2]}
for _, peer in ipairs(redis.call('LRANGE', PEERS, 0, -1)) do table.insert(ids, 'periodic:' .. ARGV[2] .. ':' .. peer) end
local n = 0
for _, id in ipairs(ids) do
  local h, params = decode(redis.call('HGET', DATA, id))
  if h then
    n = n + 1
    if h.state == 'processing' then
      h.stopRequested = true
      redis.call('HSET', DATA, id, encode(h, params))
    else
      if h.state == 'delayed' then redis.call('ZREM', DELAYED, id)
      elseif type(h.queue) == 'string' then redis.call('LREM', h.queue, 0, id) end
      redis.call('HDEL', DATA, id)
    end
  end
end
return n
"#,
    )
});
