//! The actionCluster layers shared by every node: cache, stats and web messages (spec Part C
//! §C4, §C5, §C8), each with a memory backend (a stand-alone node) and a redis backend with
//! the same operation names, results and error texts.
//!
//! Clocks: the redis backend takes every timestamp (cache `createdAt`, `readAt`, expiry
//! checks) from redis `TIME`, inside the script that uses it, so all nodes compare against one
//! clock (§C1.2). The memory backend uses the node clock through [`MemoryClock`], which tests
//! may advance.
//!
//! Layering: imports only `protocol`, `redis_conn` and `telemetry`.

mod cache;
mod keys;
mod rooms;
mod stats;
pub mod tasks;
mod web_messages;

pub use cache::{Cache, CacheEntry};
pub use keys::DEFAULT_PREFIX;
pub(crate) use keys::invalid_node_id;
pub use rooms::{RoomAdd, RoomStatus, Rooms};
pub use stats::{Scope, Stats};
pub use tasks::runtime::PeerEvent;
pub use tasks::{
    EnqueueOptions, FailReason, FailedEntry, Inspection, Target, TaskContext, TaskDefinition, TaskError, TaskFailure,
    TaskRecord, TaskScope, TaskSettings, Tasks,
};
pub use web_messages::WebMessages;

use crate::redis_conn::{CommandConnection, RedisConnError, RedisEndpoint, RedisKind, TimedConnection};
use crate::telemetry::Metrics;
use keys::Keys;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why a cluster operation failed. The Display texts of the first six are the spec's (and
/// later actionHero's) error texts, identical on both backends.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The cache has no entry under that key.
    #[error("Object not found")]
    NotFound,
    /// The cache entry's expiry has passed (it stays until swept).
    #[error("Object expired")]
    Expired,
    /// Another node holds the key's cache lock.
    #[error("Object Locked")]
    Locked,
    /// The stored record under this key is not valid wrapper JSON.
    #[error("Corrupt({0})")]
    Corrupt(String),
    /// An increment met a stored value that is not a number.
    #[error("NotANumber")]
    NotANumber,
    /// The feature is switched off (web messages without a TTL).
    #[error("Disabled")]
    Disabled,
    /// A room add for a connection this node already holds in another room: one current
    /// room per connection per node (§6.2); remove it from that room first.
    #[error("Connection is in another room ({0})")]
    InOtherRoom(String),
    /// An argument cannot be used (zero lock TTL, non-finite number).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Redis did not answer or refused the command.
    #[error("redis unavailable: {0}")]
    RedisUnavailable(#[source] redis::RedisError),
    /// Redis could not be reached when the cluster handle was built.
    #[error(transparent)]
    Connect(#[from] RedisConnError),
}

/// A number as stats and cache increments store it: integers stay exact, other values are
/// floats. A float with an integral value below 2^53 is always normalised to `Int`, so both
/// backends give the same variant for the same value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Numeric {
    /// An integer.
    Int(i64),
    /// A non-integral (or very large) float.
    Float(f64),
}

/// Largest magnitude below which every integer is exact as an f64.
const EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

impl Numeric {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Numeric::Int(i) => i as f64,
            Numeric::Float(f) => f,
        }
    }

    /// The value as an integer, when it is one.
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Numeric::Int(i) => Some(i),
            Numeric::Float(_) => None,
        }
    }

    /// A float, normalised to `Int` when integral and exact.
    pub(crate) fn from_f64(f: f64) -> Numeric {
        if f.fract() == 0.0 && f.abs() < EXACT_F64_INT { Numeric::Int(f as i64) } else { Numeric::Float(f) }
    }

    /// Parses redis's text form of an integer or float.
    pub(crate) fn parse(text: &str) -> Option<Numeric> {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Numeric::Int(i));
        }
        text.parse::<f64>().ok().filter(|f| f.is_finite()).map(Numeric::from_f64)
    }

    /// The JSON number for this value.
    pub(crate) fn from_json(value: &serde_json::Value) -> Option<Numeric> {
        let n = value.as_number()?;
        n.as_i64().map(Numeric::Int).or_else(|| n.as_f64().filter(|f| f.is_finite()).map(Numeric::from_f64))
    }

    /// The JSON number for this value.
    pub(crate) fn to_json(self) -> serde_json::Value {
        match self {
            Numeric::Int(i) => i.into(),
            Numeric::Float(f) => serde_json::Number::from_f64(f).map(serde_json::Value::Number).unwrap_or_default(),
        }
    }

    /// The sum, or `None` when it overflows or is not finite. Integer + integer stays exact.
    pub(crate) fn checked_add(self, other: Numeric) -> Option<Numeric> {
        match (self, other) {
            (Numeric::Int(a), Numeric::Int(b)) => a.checked_add(b).map(Numeric::Int),
            (a, b) => Some(a.as_f64() + b.as_f64()).filter(|f| f.is_finite()).map(Numeric::from_f64),
        }
    }

    /// Rejects NaN and infinities, which neither JSON nor redis can hold.
    pub(crate) fn validate(self) -> Result<Numeric, ClusterError> {
        match self {
            Numeric::Float(f) if !f.is_finite() => Err(ClusterError::InvalidArgument(format!("{f} is not finite"))),
            n => Ok(n),
        }
    }

    /// The text sent to redis.
    pub(crate) fn redis_text(self) -> String {
        match self {
            Numeric::Int(i) => i.to_string(),
            Numeric::Float(f) => format!("{f:?}"),
        }
    }
}

impl From<i64> for Numeric {
    fn from(v: i64) -> Self {
        Numeric::Int(v)
    }
}

impl From<i32> for Numeric {
    fn from(v: i32) -> Self {
        Numeric::Int(v.into())
    }
}

impl From<u32> for Numeric {
    fn from(v: u32) -> Self {
        Numeric::Int(v.into())
    }
}

impl From<f64> for Numeric {
    fn from(v: f64) -> Self {
        Numeric::from_f64(v)
    }
}

/// The node clock of the memory backend, in ms since the epoch. Clones share one offset, so
/// a test can hold a clone and [`advance`](MemoryClock::advance) time for a whole cluster.
#[derive(Debug, Clone, Default)]
pub struct MemoryClock {
    offset_ms: Arc<AtomicI64>,
}

impl MemoryClock {
    /// The system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Now, in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        crate::clock::unix_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock (and every clone) forward.
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(duration_ms(by), Ordering::Relaxed);
    }
}

/// How the cluster layers behave; [`Default`] gives the spec's defaults (§C11).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Prefix of every key (`actionHero:`).
    pub prefix: String,
    /// How often [`Cluster::start`]'s sweeper removes expired cache entries (10 s).
    pub sweeper_interval: Duration,
    /// Cache fields examined per HSCAN step of a sweep (100).
    pub sweeper_batch: usize,
    /// Web message mailbox lifetime after the last store; `None` disables web messages.
    pub web_message_ttl: Option<Duration>,
    /// Most messages one mailbox keeps; older ones are dropped and counted. `None`: no cap.
    pub max_web_messages: Option<usize>,
    /// Clock of the memory backend (the redis backend uses redis `TIME`).
    pub clock: MemoryClock,
    /// Task queue and membership settings.
    pub tasks: TaskSettings,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_string(),
            sweeper_interval: Duration::from_secs(10),
            sweeper_batch: 100,
            web_message_ttl: None,
            max_web_messages: None,
            clock: MemoryClock::new(),
            tasks: TaskSettings::default(),
        }
    }
}

/// A duration in whole ms, saturating: how TTLs, delays and intervals reach redis.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A fresh incarnation suffix (four lowercase letters): a node id's last part, new per start
/// and per re-join after an eviction (§C1.4).
pub(crate) fn incarnation_suffix() -> String {
    (0..4).map(|_| char::from(b'a' + rand::random_range(0..26u8))).collect()
}

/// Locks a memory-backend mutex; a panic elsewhere never leaves state half-written (every
/// critical section is a few map operations), so a poisoned lock is still usable.
pub(crate) fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// In-process state of a stand-alone node, shared by sibling handles.
#[derive(Debug, Default)]
pub(crate) struct MemoryState {
    pub(crate) clock: MemoryClock,
    /// Lock order: `cache` before `stats` (cache operations update `cache:cachedObjects`).
    pub(crate) cache: Mutex<cache::MemoryCache>,
    pub(crate) stats: Mutex<stats::MemoryStats>,
    pub(crate) mailboxes: Mutex<web_messages::MemoryMailboxes>,
    pub(crate) tasks: Mutex<tasks::memory::MemoryTasks>,
    pub(crate) rooms: Mutex<rooms::MemoryRooms>,
}

/// Longest a task write waits for a replica to confirm it (`WAIT 1 <ms>`), kept under the
/// command connection's reply timeout.
const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);

/// How long task writes skip `WAIT` after one that no replica confirmed.
const REPLICA_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The shared redis command connection and key names.
pub(crate) struct RedisBackend {
    url: String,
    con: CommandConnection,
    metrics: Arc<Metrics>,
    pub(crate) keys: Keys,
    /// True behind Sentinel: the master has a replica, and writes that must survive a
    /// failover wait for it ([`RedisBackend::wait_for_replica`]).
    replicated: bool,
    /// Until when task writes skip `WAIT` after one that no replica confirmed.
    unreplicated_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// False from the first failure of an outage until the next success: one log line each way.
    healthy: AtomicBool,
}

impl RedisBackend {
    pub(crate) fn con(&self) -> TimedConnection {
        TimedConnection { inner: self.con.clone(), metrics: self.metrics.clone() }
    }

    /// After a write that a failover must not lose (an enqueued task), waits until one
    /// replica has it (`WAIT 1`), on the same connection as the write. Only behind Sentinel:
    /// a single redis has no replica. A replica that does not confirm in time is logged, not
    /// an error: the write happened, and the caller retrying would enqueue it twice.
    /// When no replica confirmed in time (none attached, as after a failover until the old
    /// master returns), task writes stop waiting for [`REPLICA_RETRY`], so that enqueues are
    /// not each delayed by [`REPLICA_WAIT`]; one warning per such period.
    pub(crate) async fn wait_for_replica(&self, con: &mut TimedConnection) {
        if !self.replicated {
            return;
        }
        let skipping = {
            let until = self.unreplicated_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            until.is_some_and(|t| std::time::Instant::now() < t)
        };
        if skipping {
            return;
        }
        let acked: redis::RedisResult<i64> =
            redis::cmd("WAIT").arg(1).arg(REPLICA_WAIT.as_millis() as u64).query_async(con).await;
        match acked {
            Ok(n) if n >= 1 => {}
            Ok(_) => {
                tracing::warn!(
                    waited_ms = REPLICA_WAIT.as_millis() as u64,
                    retry_in_s = REPLICA_RETRY.as_secs(),
                    "cluster: no replica confirmed a task write; until one does, a failover could lose tasks"
                );
                *self.unreplicated_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(std::time::Instant::now() + REPLICA_RETRY);
            }
            Err(e) => tracing::warn!(error = %e, "cluster: WAIT for a replica failed"),
        }
    }

    /// Maps a redis failure to [`ClusterError::RedisUnavailable`], logging outages once.
    pub(crate) fn check<T>(&self, result: redis::RedisResult<T>) -> Result<T, ClusterError> {
        match result {
            Ok(v) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "cluster: redis reachable again");
                }
                Ok(v)
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(url = %self.url, error = %e, "cluster: redis unavailable");
                }
                Err(ClusterError::RedisUnavailable(e))
            }
        }
    }

    /// Redis `TIME` in ms since the epoch.
    pub(crate) async fn now_ms(&self) -> Result<i64, ClusterError> {
        let (secs, micros): (i64, i64) = self.check(redis::cmd("TIME").query_async(&mut self.con()).await)?;
        Ok(secs * 1000 + micros / 1000)
    }
}

/// Where a handle's data lives.
#[derive(Clone)]
pub(crate) enum Backend {
    Memory(Arc<MemoryState>),
    Redis(Arc<RedisBackend>),
}

/// What every layer handle shares: the node id, the backend and the settings.
pub(crate) struct Ctx {
    /// The current node id. It changes when an evicted node re-joins under a new
    /// incarnation (§C2.4), so layers read it per operation.
    node_id: RwLock<Arc<str>>,
    pub(crate) backend: Backend,
    pub(crate) settings: ClusterSettings,
}

impl Ctx {
    pub(crate) fn new(node_id: String, backend: Backend, settings: ClusterSettings) -> Self {
        Self { node_id: RwLock::new(node_id.into()), backend, settings }
    }

    /// This node's id as of now.
    pub(crate) fn node_id(&self) -> Arc<str> {
        self.node_id.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Switches to a new id (a re-join under a new incarnation).
    pub(crate) fn set_node_id(&self, id: &str) {
        *self.node_id.write().unwrap_or_else(PoisonError::into_inner) = id.into();
    }
}

/// A node's handle on the cluster layers. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    ctx: Arc<Ctx>,
    cache: Cache,
    stats: Stats,
    web_messages: WebMessages,
    rooms: Rooms,
    tasks: Tasks,
    runtime: Arc<tasks::runtime::Runtime>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.ctx.backend {
            Backend::Memory(_) => "memory".to_string(),
            Backend::Redis(r) => r.url.clone(),
        };
        f.debug_struct("Cluster").field("node_id", &self.ctx.node_id()).field("backend", &backend).finish()
    }
}

impl Cluster {
    fn from_ctx(ctx: Ctx) -> Self {
        let ctx = Arc::new(ctx);
        let tasks = Tasks::new(ctx.clone());
        Self {
            runtime: Arc::new(tasks::runtime::Runtime::new(ctx.clone(), tasks.clone())),
            tasks,
            cache: Cache::new(ctx.clone()),
            stats: Stats::new(ctx.clone()),
            web_messages: WebMessages::new(ctx.clone()),
            rooms: Rooms::new(ctx.clone()),
            ctx,
        }
    }

    /// A stand-alone node's cluster: in-process, single node, not durable (§C1.5).
    pub fn memory(node_id: impl Into<String>) -> Self {
        Self::memory_with(node_id, ClusterSettings::default())
    }

    /// [`Cluster::memory`] with explicit settings.
    pub fn memory_with(node_id: impl Into<String>, settings: ClusterSettings) -> Self {
        let state = MemoryState { clock: settings.clock.clone(), ..MemoryState::default() };
        Self::from_ctx(Ctx::new(node_id.into(), Backend::Memory(Arc::new(state)), settings))
    }

    /// A cluster on redis (`redis://host:port/db`, …) with keys under `prefix`.
    pub async fn redis(endpoint_url: &str, prefix: &str, node_id: impl Into<String>) -> Result<Self, ClusterError> {
        let settings = ClusterSettings { prefix: prefix.to_string(), ..ClusterSettings::default() };
        Self::redis_with(endpoint_url, node_id, settings).await
    }

    /// [`Cluster::redis`] with explicit settings.
    pub async fn redis_with(
        endpoint_url: &str,
        node_id: impl Into<String>,
        settings: ClusterSettings,
    ) -> Result<Self, ClusterError> {
        Self::connect(endpoint_url, node_id.into(), settings, Arc::new(Metrics::default())).await
    }

    /// Connects with the node's metrics, so cluster round trips show in `/metrics`.
    pub(crate) async fn connect(
        endpoint_url: &str,
        node_id: String,
        settings: ClusterSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClusterError> {
        let endpoint = RedisEndpoint::parse(endpoint_url)?;
        endpoint.refuse_cluster(
            "the cluster layers (cache, tasks, peers, stats, rooms, web messages: actionHero key names)",
            "give them a plain or Sentinel redis with --cluster-redis",
        )?;
        let con = endpoint.commands().await?;
        let backend = RedisBackend {
            url: endpoint.url().to_string(),
            con,
            replicated: endpoint.kind() == RedisKind::Sentinel,
            unreplicated_until: std::sync::Mutex::new(None),
            metrics,
            keys: Keys::new(&settings.prefix),
            healthy: AtomicBool::new(true),
        };
        tracing::debug!(url = %endpoint.url(), %node_id, prefix = %settings.prefix, "cluster layers on redis");
        Ok(Self::from_ctx(Ctx::new(node_id, Backend::Redis(Arc::new(backend)), settings)))
    }

    /// Another handle on the same storage (memory state or redis connection) acting as a
    /// different node: how one process plays several nodes, e.g. in tests.
    pub fn sibling(&self, node_id: impl Into<String>) -> Self {
        Self::from_ctx(Ctx::new(node_id.into(), self.ctx.backend.clone(), self.ctx.settings.clone()))
    }

    /// This node's current id (raw, with its `:`s); a new incarnation after an eviction.
    pub fn node_id(&self) -> Arc<str> {
        self.ctx.node_id()
    }

    /// True when the layers live in redis, false for the memory backend.
    pub fn is_redis(&self) -> bool {
        matches!(self.ctx.backend, Backend::Redis(_))
    }

    /// The shared cache (§C4).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Cluster and per-node stats (§C5).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// HTTP clients' mailboxes (§C8).
    pub fn web_messages(&self) -> &WebMessages {
        &self.web_messages
    }

    /// Chat room memberships (§C6).
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// The task queue (§C3): define task types, enqueue, inspect, manage the dead letter.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The live members (ids with a ping field), in join order (§C2.8).
    pub async fn peers(&self) -> Result<Vec<String>, ClusterError> {
        self.runtime.peers().await
    }

    /// True when `id` is a live member.
    pub async fn is_alive(&self, id: &str) -> Result<bool, ClusterError> {
        self.runtime.is_alive(id).await
    }

    /// Membership events seen by this node: joins, evictions, dead peers, leave.
    pub fn peer_events(&self) -> tokio::sync::broadcast::Receiver<PeerEvent> {
        self.runtime.events()
    }

    /// True once this node joined and until it leaves.
    pub fn is_member(&self) -> bool {
        self.runtime.is_member()
    }

    /// Graceful leave (§C2.7): workers stop claiming, running tasks get up to
    /// `shutdown_timeout` (then cancellation and a grace), claims still held are handed
    /// back, and the node's queue, statuses, stats, rooms and membership are removed.
    pub async fn stop(&self) {
        self.runtime.stop().await;
    }

    /// Starts the background work of this node: joining the cluster, the pinger, the
    /// dead-peer check, delayed promotion, the task workers (§C2, §C3), and the cache
    /// sweeper (every `sweeper_interval`, safe on every node at once) which, on the memory
    /// backend, also drops expired mailboxes. Stops when `shutdown` is cancelled; call
    /// [`stop`](Cluster::stop) first for a graceful leave.
    pub fn start(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        self.runtime.start(shutdown.clone());
        let this = self.clone();
        crate::periodic::every(self.ctx.settings.sweeper_interval, shutdown, move || {
            let this = this.clone();
            async move {
                match this.cache.sweep().await {
                    Ok(removed) if !removed.is_empty() => {
                        tracing::debug!(removed = removed.len(), "cache sweeper removed expired entries");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cache sweep failed; retrying next interval"),
                }
                this.web_messages.purge_expired();
                true
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_normalise_and_parse() {
        assert_eq!(Numeric::from(2.0), Numeric::Int(2));
        assert_eq!(Numeric::from(2.5), Numeric::Float(2.5));
        assert_eq!(Numeric::parse("3"), Some(Numeric::Int(3)));
        assert_eq!(Numeric::parse("1.5"), Some(Numeric::Float(1.5)));
        assert_eq!(Numeric::parse("4.0"), Some(Numeric::Int(4)));
        assert_eq!(Numeric::parse("x"), None);
        assert_eq!(Numeric::parse("inf"), None);
        assert_eq!(Numeric::Int(1).checked_add(Numeric::Float(0.5)), Some(Numeric::Float(1.5)));
        assert_eq!(Numeric::Int(i64::MAX).checked_add(Numeric::Int(1)), None);
        assert_eq!(Numeric::Float(0.5).redis_text(), "0.5");
    }

    #[test]
    fn error_texts_are_the_spec_texts() {
        assert_eq!(ClusterError::NotFound.to_string(), "Object not found");
        assert_eq!(ClusterError::Expired.to_string(), "Object expired");
        assert_eq!(ClusterError::Locked.to_string(), "Object Locked");
        assert_eq!(ClusterError::Corrupt("k".into()).to_string(), "Corrupt(k)");
        assert_eq!(ClusterError::NotANumber.to_string(), "NotANumber");
        assert_eq!(ClusterError::Disabled.to_string(), "Disabled");
    }
}
