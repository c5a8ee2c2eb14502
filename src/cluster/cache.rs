//! The shared cache (spec §C4): hash `actionHero:cache`, field = the caller's key, value = the
//! wrapper `{"value","expireTimestamp","createdAt","readAt"}` (ms timestamps). Expiry is
//! logical: load answers `Object expired`, and only the sweeper (or nothing) deletes, always
//! with a re-check inside a script. Locks (`actionHero:cache:lock:{key}`, owner = node id)
//! make save, destroy and increment of a key fail with `Object Locked` on other nodes.
//!
//! Timestamps: redis backend = redis `TIME` read inside the script (or in the same pipeline as
//! the read it judges); memory backend = [`MemoryClock`](super::MemoryClock).
//!
//! `cache:cachedObjects` is kept exact in the cluster stats hash: +1 only when a save or
//! increment created the field, −1 only when a destroy or sweep deleted one (it is cluster
//! state, so it is not written to node hashes).

use super::keys::CACHED_OBJECTS;
use super::{Backend, ClusterError, Ctx, MemoryState, Numeric, RedisBackend, guard};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How often `check_lock` retries while waiting.
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// One loaded cache entry: the original's `(value, expireTimestamp, createdAt, readAt)`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    /// What was saved.
    pub value: Value,
    /// When the entry expires (ms since the epoch), `None` for never.
    pub expire_timestamp: Option<i64>,
    /// When it was saved (ms).
    pub created_at: i64,
    /// When this load read it (ms): the new `readAt`.
    pub read_at: Option<i64>,
}

/// The wrapper as stored; `value` is kept as raw JSON so a readAt write-back never alters it.
#[derive(Deserialize)]
struct StoredWrapper<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(rename = "expireTimestamp", default)]
    expire_timestamp: Option<i64>,
    #[serde(rename = "createdAt")]
    created_at: i64,
    #[serde(rename = "readAt", default)]
    read_at: Option<i64>,
}

/// The wrapper as written, fields in the original's order.
#[derive(Serialize)]
struct WrapperOut<'a> {
    value: &'a RawValue,
    #[serde(rename = "expireTimestamp")]
    expire_timestamp: Option<i64>,
    #[serde(rename = "createdAt")]
    created_at: i64,
    #[serde(rename = "readAt")]
    read_at: Option<i64>,
}

fn parse_wrapper<'a>(key: &str, text: &'a str) -> Result<StoredWrapper<'a>, ClusterError> {
    serde_json::from_str(text).map_err(|e| {
        tracing::warn!(key, error = %e, "corrupt cache entry");
        ClusterError::Corrupt(key.to_string())
    })
}

/// The Lua prelude every cache script shares: `now` from redis TIME, number formatting, and
/// the wrapper check the Rust side also applies.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(n)
  if n == math.floor(n) and n > -9007199254740992 and n < 9007199254740992 then return string.format('%d', n) end
  return string.format('%.17g', n)
end
local function int_or_null(x) return x == nil or x == cjson.null or (type(x) == 'number' and x == math.floor(x)) end
local function wrapper(s)
  local ok, w = pcall(cjson.decode, s)
  if not ok or type(w) ~= 'table' or w.value == nil then return nil end
  if type(w.createdAt) ~= 'number' or not int_or_null(w.expireTimestamp) or not int_or_null(w.readAt) then return nil end
  return w
end
local function locked_by_other(lock, node)
  local owner = redis.call('GET', lock)
  return owner and owner ~= node
end
"#;

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

/// Save. KEYS: cache hash, lock key, cluster stats. ARGV: field, node id, value JSON, ttl ms
/// or ''. Guarantees: refused (-1) while another node holds the lock; the wrapper is written
/// with redis time; the object count moves only when the field is new.
static SAVE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
if locked_by_other(KEYS[2], ARGV[2]) then return -1 end
local expire = 'null'
if ARGV[4] ~= '' then expire = num(now + tonumber(ARGV[4])) end
local w = '{"value":' .. ARGV[3] .. ',"expireTimestamp":' .. expire .. ',"createdAt":' .. num(now) .. ',"readAt":null}'
if redis.call('HSET', KEYS[1], ARGV[1], w) == 1 then redis.call('HINCRBY', KEYS[3], ARGV[5], 1) end
return 1
"#,
    )
});

/// readAt write-back. KEYS: cache hash. ARGV: field, the wrapper load read, the new wrapper.
/// Guarantees: writes only if the field still holds exactly what was read, so a load never
/// resurrects a destroyed entry nor overwrites a newer save.
static COMPARE_AND_SET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"#,
    )
});

/// Destroy. KEYS: cache hash, lock key, cluster stats. ARGV: field, node id, count field.
/// Guarantees: refused (-1) under another node's lock; the count drops only if a field went.
static DESTROY: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
if locked_by_other(KEYS[2], ARGV[2]) then return -1 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[3], -1)
  return 1
end
return 0
"#,
    )
});

/// Sweep candidates. KEYS: cache hash, cluster stats. ARGV: count field, then fields judged
/// expired from a scan. Guarantees: each is re-read and deleted only if still expired by redis
/// time now, so an entry re-saved since the scan survives. Returns the deleted fields.
static SWEEP: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local removed = {}
for i = 2, #ARGV do
  local s = redis.call('HGET', KEYS[1], ARGV[i])
  if s then
    local w = wrapper(s)
    if w and type(w.expireTimestamp) == 'number' and w.expireTimestamp < now then
      redis.call('HDEL', KEYS[1], ARGV[i])
      removed[#removed + 1] = ARGV[i]
    end
  end
end
if #removed > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], -#removed) end
return removed
"#,
    )
});

/// Increment. KEYS: cache hash, lock key, cluster stats. ARGV: field, node id, delta, count
/// field. Guarantees: read, add and write in one step (no lost increments); a missing or
/// expired entry starts from 0 with no expiry; expireTimestamp, createdAt and readAt are kept.
/// Returns {'ok', new value} or {'locked'} / {'corrupt'} / {'nan'} without writing.
static INCREMENT: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
if locked_by_other(KEYS[2], ARGV[2]) then return {'locked'} end
local value, expire, created, read = 0, 'null', num(now), 'null'
local s = redis.call('HGET', KEYS[1], ARGV[1])
if s then
  local w = wrapper(s)
  if not w then return {'corrupt'} end
  if not (type(w.expireTimestamp) == 'number' and w.expireTimestamp < now) then
    if type(w.value) ~= 'number' then return {'nan'} end
    value, created = w.value, num(w.createdAt)
    if type(w.expireTimestamp) == 'number' then expire = num(w.expireTimestamp) end
    if type(w.readAt) == 'number' then read = num(w.readAt) end
  end
end
local new = value + tonumber(ARGV[3])
if new ~= new or new == math.huge or new == -math.huge then return {'nan'} end
local text = num(new)
local out = '{"value":' .. text .. ',"expireTimestamp":' .. expire .. ',"createdAt":' .. created .. ',"readAt":' .. read .. '}'
if redis.call('HSET', KEYS[1], ARGV[1], out) == 1 then redis.call('HINCRBY', KEYS[3], ARGV[4], 1) end
return {'ok', text}
"#,
    )
});

/// Lock. KEYS: lock key. ARGV: node id, ttl ms. Guarantees: `SET NX PX` semantics; when
/// already held by this node the TTL is refreshed; never takes another node's lock.
static LOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Unlock. KEYS: lock key. ARGV: node id. Guarantees: compare-and-delete, so a node never
/// releases a lock another node took after its own expired.
static UNLOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// One in-process entry.
#[derive(Debug, Clone)]
struct MemoryEntry {
    value: Value,
    expire: Option<i64>,
    created: i64,
    read: Option<i64>,
}

/// The memory backend's cache: entries and locks (owner, expiry ms).
#[derive(Debug, Default)]
pub(crate) struct MemoryCache {
    entries: HashMap<String, MemoryEntry>,
    locks: HashMap<String, (String, i64)>,
}

impl MemoryCache {
    fn locked_by_other(&self, key: &str, node: &str, now: i64) -> bool {
        self.locks.get(key).is_some_and(|(owner, until)| *until > now && owner != node)
    }
}

/// The shared cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    ctx: Arc<Ctx>,
}

impl Cache {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    fn node(&self) -> std::sync::Arc<str> {
        self.ctx.node_id()
    }

    /// Stores `value` under `key`, replacing any entry; `ttl_ms` sets the expiry (a negative
    /// one stores an already-expired entry), `None` never expires. Answers `true`, or
    /// `Object Locked` while another node holds the key's lock.
    pub async fn save(&self, key: &str, value: Value, ttl_ms: Option<i64>) -> Result<bool, ClusterError> {
        match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = m.clock.now_ms();
                let mut cache = guard(&m.cache);
                if cache.locked_by_other(key, &self.node(), now) {
                    return Err(ClusterError::Locked);
                }
                let entry =
                    MemoryEntry { value, expire: ttl_ms.map(|t| now.saturating_add(t)), created: now, read: None };
                if cache.entries.insert(key.to_string(), entry).is_none() {
                    guard(&m.stats).add_cluster(CACHED_OBJECTS, Numeric::Int(1));
                }
            }
            Backend::Redis(r) => {
                let json = serde_json::to_string(&value).map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
                let ttl = ttl_ms.map(|t| t.to_string()).unwrap_or_default();
                let answer: i64 = r.check(
                    SAVE.key(r.keys.cache())
                        .key(r.keys.cache_lock(key))
                        .key(r.keys.stats())
                        .arg(key)
                        .arg(&*self.node())
                        .arg(json)
                        .arg(ttl)
                        .arg(CACHED_OBJECTS)
                        .invoke_async(&mut r.con())
                        .await,
                )?;
                if answer < 0 {
                    return Err(ClusterError::Locked);
                }
            }
        }
        tracing::trace!(key, ?ttl_ms, "cache save");
        Ok(true)
    }

    /// Reads `key` and records the read (`readAt`). `Object not found` / `Object expired`
    /// otherwise (an entry is still valid when its expiry equals now). Allowed under another
    /// node's lock.
    pub async fn load(&self, key: &str) -> Result<CacheEntry, ClusterError> {
        self.load_inner(key, None).await
    }

    /// [`load`](Cache::load) with sliding expiry: an entry that has an expiry gets
    /// `now + extend_ttl` (entries without one keep none).
    pub async fn load_extending(&self, key: &str, extend_ttl: Duration) -> Result<CacheEntry, ClusterError> {
        self.load_inner(key, Some(super::duration_ms(extend_ttl))).await
    }

    async fn load_inner(&self, key: &str, extend: Option<i64>) -> Result<CacheEntry, ClusterError> {
        match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = m.clock.now_ms();
                let mut cache = guard(&m.cache);
                let entry = cache.entries.get_mut(key).ok_or(ClusterError::NotFound)?;
                if entry.expire.is_some_and(|e| e < now) {
                    return Err(ClusterError::Expired);
                }
                entry.read = Some(now);
                if let (Some(_), Some(ext)) = (entry.expire, extend) {
                    entry.expire = Some(now.saturating_add(ext));
                }
                Ok(CacheEntry {
                    value: entry.value.clone(),
                    expire_timestamp: entry.expire,
                    created_at: entry.created,
                    read_at: entry.read,
                })
            }
            Backend::Redis(r) => self.redis_load(r, key, extend).await,
        }
    }

    /// Read (with redis time) in one round trip, judge in Rust, then write `readAt` back
    /// with the compare-and-set script. If the entry changed in between, the read still
    /// succeeds (with `read_at` = the time of this read) but nothing is written.
    async fn redis_load(&self, r: &RedisBackend, key: &str, extend: Option<i64>) -> Result<CacheEntry, ClusterError> {
        let hash = r.keys.cache();
        let mut con = r.con();
        let (stored, (secs, micros)): (Option<Vec<u8>>, (i64, i64)) =
            r.check(redis::pipe().hget(&hash, key).cmd("TIME").query_async(&mut con).await)?;
        let now = secs * 1000 + micros / 1000;
        let stored = stored.ok_or(ClusterError::NotFound)?;
        let text = String::from_utf8(stored).map_err(|_| ClusterError::Corrupt(key.to_string()))?;
        let w = parse_wrapper(key, &text)?;
        if w.expire_timestamp.is_some_and(|e| e < now) {
            return Err(ClusterError::Expired);
        }
        let value: Value = serde_json::from_str(w.value.get()).map_err(|_| ClusterError::Corrupt(key.to_string()))?;
        let expire = match (w.expire_timestamp, extend) {
            (Some(_), Some(ext)) => Some(now.saturating_add(ext)),
            (e, _) => e,
        };
        let out = WrapperOut { value: w.value, expire_timestamp: expire, created_at: w.created_at, read_at: Some(now) };
        let updated = serde_json::to_string(&out).map_err(|_| ClusterError::Corrupt(key.to_string()))?;
        let written: i64 =
            r.check(COMPARE_AND_SET.key(&hash).arg(key).arg(&text).arg(&updated).invoke_async(&mut con).await)?;
        let expire_timestamp = if written == 1 {
            expire
        } else {
            tracing::debug!(key, previous_read_at = ?w.read_at, "cache entry changed during load; readAt not written");
            w.expire_timestamp
        };
        Ok(CacheEntry { value, expire_timestamp, created_at: w.created_at, read_at: Some(now) })
    }

    /// Deletes `key`: `true` if there was an entry, `false` if not; `Object Locked` while
    /// another node holds the key's lock.
    pub async fn destroy(&self, key: &str) -> Result<bool, ClusterError> {
        let existed = match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = m.clock.now_ms();
                let mut cache = guard(&m.cache);
                if cache.locked_by_other(key, &self.node(), now) {
                    return Err(ClusterError::Locked);
                }
                let existed = cache.entries.remove(key).is_some();
                if existed {
                    guard(&m.stats).add_cluster(CACHED_OBJECTS, Numeric::Int(-1));
                }
                existed
            }
            Backend::Redis(r) => {
                let answer: i64 = r.check(
                    DESTROY
                        .key(r.keys.cache())
                        .key(r.keys.cache_lock(key))
                        .key(r.keys.stats())
                        .arg(key)
                        .arg(&*self.node())
                        .arg(CACHED_OBJECTS)
                        .invoke_async(&mut r.con())
                        .await,
                )?;
                if answer < 0 {
                    return Err(ClusterError::Locked);
                }
                answer == 1
            }
        };
        tracing::trace!(key, existed, "cache destroy");
        Ok(existed)
    }

    /// Number of entries, expired-but-unswept ones included (HLEN).
    pub async fn size(&self) -> Result<u64, ClusterError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(guard(&m.cache).entries.len() as u64),
            Backend::Redis(r) => {
                let mut con = r.con();
                r.check(redis::cmd("HLEN").arg(r.keys.cache()).query_async(&mut con).await)
            }
        }
    }

    /// One sweeper pass: deletes every entry whose expiry has passed and returns their keys.
    /// On redis it walks the hash with HSCAN in batches and deletes each batch's candidates
    /// with a script that re-checks expiry, so any number of nodes may sweep at once and an
    /// entry re-saved meanwhile is kept. Corrupt entries are reported and left in place.
    pub async fn sweep(&self) -> Result<Vec<String>, ClusterError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(sweep_memory(m)),
            Backend::Redis(r) => self.sweep_redis(r).await,
        }
    }

    async fn sweep_redis(&self, r: &RedisBackend) -> Result<Vec<String>, ClusterError> {
        let hash = r.keys.cache();
        let now = r.now_ms().await?;
        let mut con = r.con();
        let mut cursor: u64 = 0;
        let mut removed = Vec::new();
        loop {
            let (next, flat): (u64, Vec<Vec<u8>>) = r.check(
                redis::cmd("HSCAN")
                    .arg(&hash)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(self.ctx.settings.sweeper_batch.max(1))
                    .query_async(&mut con)
                    .await,
            )?;
            let mut candidates = Vec::new();
            for pair in flat.chunks(2) {
                let [field, value] = pair else { continue };
                let Ok(field) = std::str::from_utf8(field) else {
                    tracing::warn!(field = ?String::from_utf8_lossy(field), "cache field is not UTF-8; not swept");
                    continue;
                };
                let Ok(text) = std::str::from_utf8(value) else {
                    tracing::warn!(key = field, "corrupt cache entry (not UTF-8); not swept");
                    continue;
                };
                match parse_wrapper(field, text) {
                    Ok(w) if w.expire_timestamp.is_some_and(|e| e < now) => candidates.push(field.to_string()),
                    Ok(_) | Err(_) => {}
                }
            }
            if !candidates.is_empty() {
                let gone: Vec<String> = r.check(
                    SWEEP
                        .key(&hash)
                        .key(r.keys.stats())
                        .arg(CACHED_OBJECTS)
                        .arg(&candidates)
                        .invoke_async(&mut con)
                        .await,
                )?;
                removed.extend(gone);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// Takes the key's lock for `ttl` for this node (`SET … NX PX` semantics): `true` if taken
    /// or already ours (the TTL is then refreshed), `false` if another node holds it.
    pub async fn lock(&self, key: &str, ttl: Duration) -> Result<bool, ClusterError> {
        let ttl_ms = lock_ttl_ms(ttl)?;
        let taken = match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = m.clock.now_ms();
                let mut cache = guard(&m.cache);
                if cache.locked_by_other(key, &self.node(), now) {
                    false
                } else {
                    cache.locks.insert(key.to_string(), (self.node().to_string(), now.saturating_add(ttl_ms)));
                    true
                }
            }
            Backend::Redis(r) => {
                let answer: i64 = r.check(
                    LOCK.key(r.keys.cache_lock(key)).arg(&*self.node()).arg(ttl_ms).invoke_async(&mut r.con()).await,
                )?;
                answer == 1
            }
        };
        tracing::debug!(key, taken, ttl_ms, "cache lock");
        Ok(taken)
    }

    /// Releases the key's lock if this node holds it: `true` if released.
    pub async fn unlock(&self, key: &str) -> Result<bool, ClusterError> {
        let released = match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = m.clock.now_ms();
                let mut cache = guard(&m.cache);
                let ours = cache.locks.get(key).is_some_and(|(owner, until)| *until > now && *owner == *self.node());
                if ours {
                    cache.locks.remove(key);
                }
                ours
            }
            Backend::Redis(r) => {
                let answer: i64 =
                    r.check(UNLOCK.key(r.keys.cache_lock(key)).arg(&*self.node()).invoke_async(&mut r.con()).await)?;
                answer == 1
            }
        };
        tracing::debug!(key, released, "cache unlock");
        Ok(released)
    }

    /// `true` if the key's lock is free or ours. With `wait`, retries every 100 ms for up
    /// to that long before answering `false`.
    pub async fn check_lock(&self, key: &str, wait: Option<Duration>) -> Result<bool, ClusterError> {
        let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
        loop {
            if self.lock_free_or_ours(key).await? {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(LOCK_RETRY.min(deadline - now)).await;
        }
    }

    async fn lock_free_or_ours(&self, key: &str) -> Result<bool, ClusterError> {
        match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = m.clock.now_ms();
                Ok(!guard(&m.cache).locked_by_other(key, &self.node(), now))
            }
            Backend::Redis(r) => {
                let mut con = r.con();
                let owner: Option<String> =
                    r.check(redis::cmd("GET").arg(r.keys.cache_lock(key)).query_async(&mut con).await)?;
                Ok(owner.is_none_or(|o| o == *self.node()))
            }
        }
    }

    /// Adds `delta` to the number stored under `key` and returns the new value, in one step.
    /// A missing or expired entry starts from 0 with no expiry; the expiry of a live entry
    /// is kept. `NotANumber` if the stored value is not a number, `Object Locked` under
    /// another node's lock. Redis adds in doubles (exact up to 2^53).
    pub async fn increment(&self, key: &str, delta: impl Into<Numeric>) -> Result<Numeric, ClusterError> {
        let delta = delta.into().validate()?;
        let result = match &self.ctx.backend {
            Backend::Memory(m) => increment_memory(m, &self.node(), key, delta)?,
            Backend::Redis(r) => {
                let answer: Vec<String> = r.check(
                    INCREMENT
                        .key(r.keys.cache())
                        .key(r.keys.cache_lock(key))
                        .key(r.keys.stats())
                        .arg(key)
                        .arg(&*self.node())
                        .arg(delta.redis_text())
                        .arg(CACHED_OBJECTS)
                        .invoke_async(&mut r.con())
                        .await,
                )?;
                match answer.as_slice() {
                    [ok, value] if ok == "ok" => Numeric::parse(value).ok_or(ClusterError::NotANumber)?,
                    [code] if code == "locked" => return Err(ClusterError::Locked),
                    [code] if code == "corrupt" => {
                        tracing::warn!(key, "corrupt cache entry");
                        return Err(ClusterError::Corrupt(key.to_string()));
                    }
                    _ => return Err(ClusterError::NotANumber),
                }
            }
        };
        tracing::trace!(key, ?delta, ?result, "cache increment");
        Ok(result)
    }
}

fn lock_ttl_ms(ttl: Duration) -> Result<i64, ClusterError> {
    match i64::try_from(ttl.as_millis()) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(ClusterError::InvalidArgument(format!("lock ttl must be at least 1 ms, got {ttl:?}"))),
    }
}

fn sweep_memory(m: &MemoryState) -> Vec<String> {
    let now = m.clock.now_ms();
    let mut cache = guard(&m.cache);
    let removed: Vec<String> =
        cache.entries.iter().filter(|(_, e)| e.expire.is_some_and(|x| x < now)).map(|(k, _)| k.clone()).collect();
    for key in &removed {
        cache.entries.remove(key);
    }
    cache.locks.retain(|_, (_, until)| *until > now);
    if !removed.is_empty() {
        guard(&m.stats).add_cluster(CACHED_OBJECTS, Numeric::Int(-(removed.len() as i64)));
    }
    removed
}

fn increment_memory(m: &MemoryState, node: &str, key: &str, delta: Numeric) -> Result<Numeric, ClusterError> {
    let now = m.clock.now_ms();
    let mut cache = guard(&m.cache);
    if cache.locked_by_other(key, node, now) {
        return Err(ClusterError::Locked);
    }
    let live = cache.entries.get(key).filter(|e| e.expire.is_none_or(|x| x >= now)).cloned();
    let (current, expire, created, read) = match live {
        Some(e) => (Numeric::from_json(&e.value).ok_or(ClusterError::NotANumber)?, e.expire, e.created, e.read),
        None => (Numeric::Int(0), None, now, None),
    };
    // Beyond i64, redis's double arithmetic goes on in floats; so does this.
    let new = current
        .checked_add(delta)
        .or_else(|| Some(current.as_f64() + delta.as_f64()).filter(|f| f.is_finite()).map(Numeric::from_f64))
        .ok_or(ClusterError::NotANumber)?;
    let entry = MemoryEntry { value: new.to_json(), expire, created, read };
    if cache.entries.insert(key.to_string(), entry).is_none() {
        guard(&m.stats).add_cluster(CACHED_OBJECTS, Numeric::Int(1));
    }
    Ok(new)
}
