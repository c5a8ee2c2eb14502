//! The task queue (spec §C3): definitions registered in Rust, enqueue for any node, this
//! node, a named node or all nodes, run-at and delay, idempotency keys, claims with fencing
//! tokens, retries with backoff, a dead letter, periodic tasks with exactly one instance,
//! and bounces of names a node does not know (rolling deploys).
//!
//! A task is always in exactly one place (delayed set, a ready queue, the processing hash,
//! the dead letter, or deleted when finished) and its record agrees with the place; every
//! move is one script on redis (`scripts.rs`) or one critical section in memory
//! (`memory.rs`). The workers, the pinger, the dead-peer check and the promoter live in
//! `runtime.rs`.

pub(crate) mod memory;
mod record;
pub(crate) mod runtime;
mod scripts;

pub use record::{FailReason, FailedEntry, TaskRecord};

use super::{Backend, ClusterError, Ctx, MemoryState, RedisBackend, duration_ms, guard};
use record::new_task_id;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why a task operation failed.
#[derive(Debug, Error)]
pub enum TaskError {
    /// No definition of that name is registered on this node.
    #[error("task name, {0}, not found")]
    UnknownTask(String),
    /// The params are not a JSON object.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// The target node is not a live member.
    #[error("unknown node {0}: not a live member of the cluster")]
    UnknownNode(String),
    /// A fan-out found no live members.
    #[error("no live peers to run the task on")]
    NoLivePeers,
    /// An explicit enqueue of a periodic task whose instance exists.
    #[error("not enquing periodic task {0}: already in the queue")]
    PeriodicAlreadyScheduled(String),
    /// A dead-letter entry cannot be retried: a task with its id exists again.
    #[error("task {0} exists again; the dead-letter entry was kept")]
    TaskExists(String),
    /// A dead-letter entry has no readable task record.
    #[error("the dead-letter entry holds no readable task record")]
    CorruptEntry,
    /// An option cannot be used (both `run_at` and `delay`, zero attempts).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The storage failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Which nodes a task definition runs on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskScope {
    /// One run, by one node.
    Any,
    /// One run on every live member at the moment of fan-out.
    All,
}

/// Where an enqueued task runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Target {
    /// Any node (the default for `Any` definitions).
    #[default]
    Any,
    /// The enqueuing node.
    ThisNode,
    /// One named node (a live member).
    Node(String),
    /// Every live member, one copy each (the default for `All` definitions).
    AllNodes,
}

/// What a handler gets.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task id (for "all" copies the copy's id; see `parent_id`).
    pub id: String,
    /// The definition's name.
    pub name: String,
    /// The claim number: 1 on the first run, higher after retries or a recovery.
    pub attempt: u32,
    /// The enqueued params.
    pub params: Value,
    /// For "all" copies, the id the enqueuer got.
    pub parent_id: Option<String>,
    /// The node running it.
    pub node_id: Arc<str>,
    /// Cancelled at a shutdown deadline, on eviction, or at the definition's timeout.
    pub cancel: CancellationToken,
}

/// A handler's failure; its text becomes `lastError`.
pub type TaskFailure = Box<dyn std::error::Error + Send + Sync>;

/// The future a handler returns.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskFailure>> + Send>>;

type Handler = Arc<dyn Fn(TaskContext) -> TaskFuture + Send + Sync>;

/// A task type: name, handler and how it is scheduled (§4.1, §C3).
#[derive(Clone)]
pub struct TaskDefinition {
    pub(crate) name: String,
    pub(crate) scope: TaskScope,
    pub(crate) frequency: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) handler: Handler,
}

impl std::fmt::Debug for TaskDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskDefinition")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("frequency", &self.frequency)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TaskDefinition {
    /// A one-off "any" task with one try and no timeout.
    pub fn new<F, Fut>(name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), TaskFailure>> + Send + 'static,
    {
        Self {
            name: name.into(),
            scope: TaskScope::Any,
            frequency: None,
            max_attempts: 1,
            timeout: None,
            handler: Arc::new(move |ctx| Box::pin(handler(ctx))),
        }
    }

    /// Runs on one node (`Any`) or on every node (`All`).
    pub fn scope(mut self, scope: TaskScope) -> Self {
        self.scope = scope;
        self
    }

    /// Makes it periodic: one instance (per node for `All`), run every `frequency`.
    pub fn every(mut self, frequency: Duration) -> Self {
        self.frequency = Some(frequency.max(Duration::from_millis(1)));
        self
    }

    /// How many runs may fail before the task is dead-lettered (default 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Gives up on a run after `timeout` (cancels it and records a failure).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Options of one enqueue.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Run at this time (ms since the epoch, compared with redis time).
    pub run_at: Option<i64>,
    /// Run after this delay.
    pub delay: Option<Duration>,
    /// Where it runs; `None` takes the definition's scope.
    pub target: Option<Target>,
    /// A key that makes retries of the same enqueue return the first id.
    pub idempotency_key: Option<String>,
    /// Overrides the definition's `max_attempts`.
    pub max_attempts: Option<u32>,
}

impl EnqueueOptions {
    /// Runs after `delay`.
    pub fn delay(delay: Duration) -> Self {
        Self { delay: Some(delay), ..Self::default() }
    }

    /// Runs at `target`.
    pub fn target(target: Target) -> Self {
        Self { target: Some(target), ..Self::default() }
    }
}

/// Queue lengths and worker statuses, for operators (§C3.3 inspect, the status endpoint).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Inspection {
    /// Ready for any node.
    pub global: u64,
    /// Waiting for their time.
    pub delayed: u64,
    /// Claimed.
    pub processing: u64,
    /// Dead-lettered.
    pub failed: u64,
    /// Ready for one node, by node id (members only).
    pub local: BTreeMap<String, u64>,
    /// `{node}#{worker}` → status text.
    pub workers: BTreeMap<String, String>,
}

/// How a run ended, as the completion script takes it.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Ok,
    Error(String),
    /// The name is not known on this node (§C3.8).
    Bounce(String),
}

impl Outcome {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Outcome::Ok => ("ok", ""),
            Outcome::Error(e) => ("error", e),
            Outcome::Bounce(e) => ("bounce", e),
        }
    }
}

/// Whether a new record fans out to all members or goes to one ready queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnqueueMode {
    Ready,
    All,
}

/// A script's answer, in both backends.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Ok(String),
    Exists(String),
    UnknownNode(String),
    NoLivePeers,
    Invalid,
    Claimed(Box<TaskRecord>),
    Nothing,
    Evicted,
}

impl Answer {
    fn from_redis(parts: Vec<String>) -> Result<Answer, TaskError> {
        let mut it = parts.into_iter();
        let kind = it.next().unwrap_or_default();
        let arg = it.next().unwrap_or_default();
        Ok(match kind.as_str() {
            "ok" => Answer::Ok(arg),
            "exists" => Answer::Exists(arg),
            "unknownNode" => Answer::UnknownNode(arg),
            "noLivePeers" => Answer::NoLivePeers,
            "invalid" => Answer::Invalid,
            "claimed" => Answer::Claimed(Box::new(
                serde_json::from_str(&arg)
                    .map_err(|e| TaskError::Cluster(ClusterError::Corrupt(format!("claimed record: {e}"))))?,
            )),
            "none" => Answer::Nothing,
            "evicted" => Answer::Evicted,
            other => {
                return Err(TaskError::Cluster(ClusterError::Corrupt(format!("unexpected script answer {other:?}"))));
            }
        })
    }
}

/// Runs one memory-backend task operation, then moves the counts it raised into the memory
/// stats (the cluster hash, and the node's hash where the scripts write one), as the scripts
/// do on redis. The stats lock is taken while the tasks lock is still held, so nobody sees the
/// task change without its counts (a script is atomic on redis too); the stats lock is a leaf
/// that never waits for another lock, so the nesting cannot deadlock.
pub(crate) fn with_memory_tasks<R>(m: &MemoryState, operation: impl FnOnce(&mut memory::MemoryTasks) -> R) -> R {
    let mut tasks = guard(&m.tasks);
    let result = operation(&mut tasks);
    let raised = std::mem::take(&mut tasks.raised);
    if !raised.is_empty() {
        let mut stats = guard(&m.stats);
        for (field, node) in raised {
            match node {
                Some(node) => {
                    if let Err(e) = stats.add(&node, &field, super::Numeric::Int(1)) {
                        tracing::warn!(field, error = %e, "task stat not updated");
                    }
                }
                None => stats.add_cluster(&field, super::Numeric::Int(1)),
            }
        }
    }
    drop(tasks);
    result
}

/// The task queue of one node. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) definitions: Arc<RwLock<HashMap<String, TaskDefinition>>>,
}

impl Tasks {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx, definitions: Arc::default() }
    }

    /// Registers a task type on this node (replacing one of the same name). Periodic types
    /// are seeded when the node's runtime starts, or at once when it already runs.
    pub fn define(&self, definition: TaskDefinition) {
        tracing::debug!(name = %definition.name, scope = ?definition.scope, "task defined");
        self.definitions.write().unwrap_or_else(PoisonError::into_inner).insert(definition.name.clone(), definition);
    }

    /// The definition of `name` on this node.
    pub(crate) fn definition(&self, name: &str) -> Option<TaskDefinition> {
        self.definitions.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    /// The names defined on this node.
    pub fn defined_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.definitions.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        names.sort();
        names
    }

    fn now_memory(&self) -> i64 {
        self.ctx.settings.clock.now_ms()
    }

    /// Enqueues a task of a type defined on this node and answers its id (for `AllNodes`,
    /// the parent id its copies point to).
    pub async fn enqueue(&self, name: &str, params: Value, options: EnqueueOptions) -> Result<String, TaskError> {
        let definition = self.definition(name).ok_or_else(|| TaskError::UnknownTask(name.to_string()))?;
        if definition.frequency.is_some() {
            return self.seed(&definition, true).await.map(|(id, _)| id);
        }
        if !params.is_object() {
            return Err(TaskError::InvalidParams("params must be a JSON object".to_string()));
        }
        if options.run_at.is_some() && options.delay.is_some() {
            return Err(TaskError::InvalidArgument("give run_at or delay, not both".to_string()));
        }
        let target = options.target.clone().unwrap_or(match definition.scope {
            TaskScope::Any => Target::Any,
            TaskScope::All => Target::AllNodes,
        });
        let (mode, target_node) = match target {
            Target::Any => (EnqueueMode::Ready, None),
            Target::ThisNode => (EnqueueMode::Ready, Some(self.ctx.node_id().to_string())),
            Target::Node(id) => (EnqueueMode::Ready, Some(id)),
            Target::AllNodes => (EnqueueMode::All, None),
        };
        let max_attempts = options.max_attempts.unwrap_or(definition.max_attempts);
        if max_attempts == 0 {
            return Err(TaskError::InvalidArgument("max_attempts must be at least 1".to_string()));
        }
        let record = self.new_record(new_task_id(), &definition, target_node, max_attempts, &params, &options)?;
        let delay_ms = options.delay.map(duration_ms);
        let answer =
            self.run_enqueue(record, mode, options.run_at, delay_ms, options.idempotency_key.as_deref(), false).await?;
        match answer {
            Answer::Ok(id) => {
                tracing::debug!(name, %id, "task enqueued");
                Ok(id)
            }
            Answer::Exists(id) => {
                tracing::debug!(name, %id, "idempotent enqueue: existing task id returned");
                Ok(id)
            }
            Answer::UnknownNode(id) => Err(TaskError::UnknownNode(id)),
            Answer::NoLivePeers => Err(TaskError::NoLivePeers),
            other => Err(TaskError::Cluster(ClusterError::Corrupt(format!("enqueue answered {other:?}")))),
        }
    }

    /// Creates the periodic instance of `definition` for this node if absent (§C3.4):
    /// `periodic:{name}` for "any", `periodic:{name}:{node}` for "all". Answers the id and
    /// whether it was created; `explicit` turns an existing instance into
    /// `PeriodicAlreadyScheduled`.
    pub(crate) async fn seed(&self, definition: &TaskDefinition, explicit: bool) -> Result<(String, bool), TaskError> {
        let frequency = definition.frequency.map(duration_ms).unwrap_or(1);
        let (id, target) = match definition.scope {
            TaskScope::Any => (format!("periodic:{}", definition.name), None),
            TaskScope::All => {
                let node = self.ctx.node_id().to_string();
                (format!("periodic:{}:{node}", definition.name), Some(node))
            }
        };
        let options = EnqueueOptions::default();
        let mut record = self.new_record(
            id,
            definition,
            target,
            definition.max_attempts,
            &Value::Object(Default::default()),
            &options,
        )?;
        record.periodic = true;
        record.frequency = Some(frequency);
        match self.run_enqueue(record, EnqueueMode::Ready, None, Some(frequency), None, true).await? {
            Answer::Ok(id) => {
                tracing::info!(name = %definition.name, %id, "periodic task seeded");
                Ok((id, true))
            }
            Answer::Exists(_) if explicit => Err(TaskError::PeriodicAlreadyScheduled(definition.name.clone())),
            Answer::Exists(id) => {
                tracing::debug!(name = %definition.name, %id, "periodic task already scheduled");
                Ok((id, false))
            }
            Answer::UnknownNode(id) => Err(TaskError::UnknownNode(id)),
            other => Err(TaskError::Cluster(ClusterError::Corrupt(format!("seed answered {other:?}")))),
        }
    }

    fn new_record(
        &self,
        id: String,
        definition: &TaskDefinition,
        target: Option<String>,
        max_attempts: u32,
        params: &Value,
        options: &EnqueueOptions,
    ) -> Result<TaskRecord, TaskError> {
        let params = serde_json::value::to_raw_value(params).map_err(|e| TaskError::InvalidParams(e.to_string()))?;
        let scope = match definition.scope {
            TaskScope::Any => "any",
            TaskScope::All => "all",
        };
        Ok(TaskRecord {
            target,
            max_attempts,
            idempotency_key: options.idempotency_key.clone(),
            ..TaskRecord::new(id, definition.name.clone(), scope, params)
        })
    }

    async fn run_enqueue(
        &self,
        record: TaskRecord,
        mode: EnqueueMode,
        run_at: Option<i64>,
        delay_ms: Option<i64>,
        idempotency_key: Option<&str>,
        create_if_absent: bool,
    ) -> Result<Answer, TaskError> {
        let ttl = duration_ms(self.ctx.settings.tasks.idempotency_ttl);
        match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = self.now_memory();
                Ok(with_memory_tasks(m, |t| {
                    t.enqueue(now, record, mode, run_at, delay_ms, idempotency_key.map(|k| (k, ttl)), create_if_absent)
                }))
            }
            Backend::Redis(r) => {
                let text = serde_json::to_string(&record).map_err(|e| TaskError::InvalidParams(e.to_string()))?;
                let mut con = r.con();
                let parts: Vec<String> = r.check(
                    scripts::ENQUEUE
                        .arg(r.keys.prefix())
                        .arg(text)
                        .arg(if mode == EnqueueMode::All { "all" } else { "ready" })
                        .arg(run_at.map(|v| v.to_string()).unwrap_or_default())
                        .arg(delay_ms.map(|v| v.to_string()).unwrap_or_default())
                        .arg(idempotency_key.unwrap_or(""))
                        .arg(ttl.max(1))
                        .arg(if create_if_absent { "1" } else { "0" })
                        .invoke_async(&mut con)
                        .await,
                )?;
                // Behind Sentinel, acknowledge only what a replica has: a failover right after
                // must not lose the task.
                r.wait_for_replica(&mut con).await;
                Answer::from_redis(parts)
            }
        }
    }

    /// Removes a task still waiting (delayed or ready); false if not found or claimed.
    pub async fn cancel(&self, id: &str) -> Result<bool, TaskError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(guard(&m.tasks).cancel(id)),
            Backend::Redis(r) => {
                let n: i64 = r.check(scripts::CANCEL.arg(r.keys.prefix()).arg(id).invoke_async(&mut r.con()).await)?;
                Ok(n > 0)
            }
        }
    }

    /// Dead-letter entries from index `start` to `stop` (inclusive; `-1` is the last).
    pub async fn failed(&self, start: isize, stop: isize) -> Result<Vec<FailedEntry>, TaskError> {
        let raw: Vec<String> = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.tasks).failed(start, stop),
            Backend::Redis(r) => {
                let mut con = r.con();
                r.check(
                    redis::cmd("LRANGE").arg(r.keys.tasks("failed")).arg(start).arg(stop).query_async(&mut con).await,
                )?
            }
        };
        Ok(raw
            .into_iter()
            .filter_map(|text| {
                FailedEntry::parse(text)
                    .map_err(|text| tracing::warn!(entry = %text, "unreadable dead-letter entry skipped"))
                    .ok()
            })
            .collect())
    }

    /// Re-enqueues a dead-lettered task to its original target with `attempt` 0 and removes
    /// the entry; false when the entry is gone.
    pub async fn retry_failed(&self, entry: &FailedEntry) -> Result<bool, TaskError> {
        let answer = match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = self.now_memory();
                with_memory_tasks(m, |t| t.retry_failed(now, &entry.raw))
            }
            Backend::Redis(r) => {
                r.check(scripts::RETRY_FAILED.arg(r.keys.prefix()).arg(&entry.raw).invoke_async(&mut r.con()).await)?
            }
        };
        match answer.as_str() {
            "ok" => Ok(true),
            "gone" => Ok(false),
            "exists" => Err(TaskError::TaskExists(entry.task.as_ref().map(|t| t.id.clone()).unwrap_or_default())),
            "unknownNode" => Err(TaskError::UnknownNode(
                entry.task.as_ref().and_then(|t| t.target.clone()).unwrap_or_else(|| "(all)".to_string()),
            )),
            _ => Err(TaskError::CorruptEntry),
        }
    }

    /// Removes a dead-letter entry; false when it is gone.
    pub async fn remove_failed(&self, entry: &FailedEntry) -> Result<bool, TaskError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(guard(&m.tasks).remove_failed(&entry.raw)),
            Backend::Redis(r) => {
                let mut con = r.con();
                let n: i64 = r.check(
                    redis::cmd("LREM").arg(r.keys.tasks("failed")).arg(1).arg(&entry.raw).query_async(&mut con).await,
                )?;
                Ok(n > 0)
            }
        }
    }

    /// Deletes the periodic instance(s) of `name`; a claimed one is deleted at its
    /// completion instead of being re-scheduled. Answers how many instances there were.
    pub async fn stop_periodic(&self, name: &str) -> Result<usize, TaskError> {
        let n = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.tasks).stop_periodic(name),
            Backend::Redis(r) => {
                let n: i64 =
                    r.check(scripts::STOP_PERIODIC.arg(r.keys.prefix()).arg(name).invoke_async(&mut r.con()).await)?;
                usize::try_from(n).unwrap_or(0)
            }
        };
        tracing::info!(name, instances = n, "periodic task stopped");
        Ok(n)
    }

    /// One task record, if it exists (waiting, delayed or claimed).
    pub async fn record(&self, id: &str) -> Result<Option<TaskRecord>, TaskError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(guard(&m.tasks).record(id)),
            Backend::Redis(r) => {
                let mut con = r.con();
                let text: Option<String> =
                    r.check(redis::cmd("HGET").arg(r.keys.tasks("data")).arg(id).query_async(&mut con).await)?;
                text.map(|t| {
                    serde_json::from_str(&t).map_err(|_| TaskError::Cluster(ClusterError::Corrupt(id.to_string())))
                })
                .transpose()
            }
        }
    }

    /// Every task record, optionally only those of one name (diagnostic: reads the whole
    /// data hash). Unreadable records are reported and skipped.
    pub async fn records(&self, name: Option<&str>) -> Result<Vec<TaskRecord>, TaskError> {
        let all: Vec<TaskRecord> = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.tasks).all_records(),
            Backend::Redis(r) => {
                let mut con = r.con();
                let map: HashMap<String, String> =
                    r.check(redis::cmd("HGETALL").arg(r.keys.tasks("data")).query_async(&mut con).await)?;
                map.into_iter()
                    .filter_map(|(id, text)| match serde_json::from_str(&text) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            tracing::warn!(%id, error = %e, "unreadable task record");
                            None
                        }
                    })
                    .collect()
            }
        };
        Ok(all.into_iter().filter(|r| name.is_none_or(|n| r.name == n)).collect())
    }

    /// Queue lengths per place and worker statuses.
    pub async fn inspect(&self) -> Result<Inspection, TaskError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(guard(&m.tasks).inspect()),
            Backend::Redis(r) => inspect_redis(r).await,
        }
    }
}

async fn inspect_redis(r: &RedisBackend) -> Result<Inspection, TaskError> {
    let mut con = r.con();
    let peers: Vec<String> =
        r.check(redis::cmd("LRANGE").arg(r.keys.peers()).arg(0).arg(-1).query_async(&mut con).await)?;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .llen(r.keys.tasks("global"))
        .zcard(r.keys.tasks("delayed"))
        .hlen(r.keys.tasks("processing"))
        .llen(r.keys.tasks("failed"))
        .hgetall(r.keys.tasks("workerStatus"));
    for peer in &peers {
        pipe.llen(r.keys.node_tasks(peer));
    }
    let values: Vec<redis::Value> = r.check(pipe.query_async(&mut con).await)?;
    let mut it = values.into_iter();
    let mut next = || it.next().unwrap_or(redis::Value::Nil);
    let num = |v: redis::Value| redis::from_redis_value::<u64>(v).unwrap_or(0);
    let global = num(next());
    let delayed = num(next());
    let processing = num(next());
    let failed = num(next());
    let workers = redis::from_redis_value::<BTreeMap<String, String>>(next()).unwrap_or_default();
    let locals: Vec<u64> = peers.iter().map(|_| num(next())).collect();
    Ok(Inspection { global, delayed, processing, failed, local: peers.into_iter().zip(locals).collect(), workers })
}

/// How the task runtime behaves; [`Default`] gives the spec's defaults (§C11).
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// Workers per node (5).
    pub workers: u32,
    /// Idle poll and promotion period (200 ms).
    pub cycle_time: Duration,
    /// Most due ids one promotion moves (100).
    pub promotion_batch: usize,
    /// How often the node pings (1000 ms).
    pub ping_interval: Duration,
    /// A peer whose last ping is older is dead (5000 ms).
    pub dead_after: Duration,
    /// How often the dead-peer check runs (1000 ms).
    pub dead_check_interval: Duration,
    /// How long a graceful stop waits for running tasks; `None` waits forever (30 s).
    pub shutdown_timeout: Option<Duration>,
    /// After cancelling what is still running at the deadline, how long to wait (1 s).
    pub cancel_grace: Duration,
    /// Delay before retry n (1 s, 5 s, 30 s, then 60 s).
    pub retry_backoff: Vec<Duration>,
    /// Lifetime of an idempotency key (24 h).
    pub idempotency_ttl: Duration,
    /// Bounces of an unknown name before it is dead-lettered (100).
    pub bounce_limit: u32,
    /// Delay of a bounced task before another node may claim it (1 s).
    pub bounce_delay: Duration,
    /// Claims by nodes that died before a task counts as a crash loop (5).
    pub max_crash_attempts: u32,
    /// Every n-th claim of a node tries the global queue first (10).
    pub global_first_every: u32,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            workers: 5,
            cycle_time: Duration::from_millis(200),
            promotion_batch: 100,
            ping_interval: Duration::from_millis(1000),
            dead_after: Duration::from_millis(5000),
            dead_check_interval: Duration::from_millis(1000),
            shutdown_timeout: Some(Duration::from_secs(30)),
            cancel_grace: Duration::from_secs(1),
            retry_backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(60),
            ],
            idempotency_ttl: Duration::from_secs(24 * 3600),
            bounce_limit: 100,
            bounce_delay: Duration::from_secs(1),
            max_crash_attempts: 5,
            global_first_every: 10,
        }
    }
}
