//! What a node runs for the task queue and membership (spec §C2, §C3.5–§C3.9): join, the
//! pinger (re-joining under a new incarnation after an eviction), the dead-peer check with
//! recovery, delayed promotion, the workers, and the graceful leave.
//!
//! Claims need membership: a worker claims only while the node is joined, and the claim
//! script itself refuses a node whose ping field is gone, so an evicted node cannot take
//! work. A run's completion carries the claim's token; after a recovery the token no longer
//! matches and the late result is discarded (fencing).

use super::record::new_token;
use super::scripts;
use super::{Answer, Outcome, TaskContext, TaskError, Tasks, with_memory_tasks};
use crate::cluster::{Backend, ClusterError, Ctx, duration_ms, guard};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A change of membership seen by this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum PeerEvent {
    /// This node joined (at start or after an eviction) under `id` and seeded its periodic
    /// tasks.
    Joined {
        /// The id joined under.
        id: String,
    },
    /// This node was evicted (its ping field was gone) and will re-join.
    Evicted {
        /// The id that was evicted.
        id: String,
    },
    /// The dead-peer check of this node removed a peer and recovered its work.
    Dead {
        /// The dead peer.
        id: String,
        /// Age of its last ping in ms, `None` when it had none (recovery was pending).
        last_ping_age_ms: Option<i64>,
        /// Claimed tasks handed back to the global queue.
        reclaimed: u64,
        /// Per-node tasks dropped with it.
        dropped: u64,
        /// Tasks dead-lettered (`targetGone`, `crashLoop`, `corrupt`).
        dead_lettered: u64,
    },
    /// This node left gracefully.
    Left {
        /// Its last id.
        id: String,
    },
}

/// The running parts of one node. Created idle with the cluster handle; `start` joins.
pub(crate) struct Runtime {
    ctx: Arc<Ctx>,
    tasks: Tasks,
    /// The id this node was configured with; incarnations append a suffix to it.
    base_id: String,
    /// Join count: 0 = not a member; bumped by every (re-)join.
    epoch: watch::Sender<u64>,
    /// Cancelled on eviction and at the shutdown deadline: every running handler's token
    /// is a child of the token current when it started.
    run_cancel: Mutex<CancellationToken>,
    /// Workers stop claiming once this is cancelled.
    stop_claiming: CancellationToken,
    /// Stops the pinger, the dead-peer check and the promoter.
    background: CancellationToken,
    /// Running handlers (waited for by a graceful stop).
    handlers: TaskTracker,
    /// Asks the pinger to re-join at once (a claim answered "evicted").
    rejoin: Notify,
    events: broadcast::Sender<PeerEvent>,
    started: AtomicBool,
    stopped: AtomicBool,
    claims: AtomicU64,
    /// Since when this node's pings have succeeded without a gap (`None` while they fail).
    /// The dead-peer check waits until that is `dead_after` old: right after an outage every
    /// peer's ping looks stale, and judging them before they could ping again would evict
    /// live nodes.
    healthy_since: Mutex<Option<tokio::time::Instant>>,
    /// The retry delays in ms (never empty), and as the completion script takes them.
    backoff_ms: Vec<i64>,
    backoff_arg: String,
}

impl Runtime {
    pub(crate) fn new(ctx: Arc<Ctx>, tasks: Tasks) -> Self {
        let base_id = ctx.node_id().to_string();
        let mut backoff_ms: Vec<i64> = ctx.settings.tasks.retry_backoff.iter().map(|d| duration_ms(*d)).collect();
        if backoff_ms.is_empty() {
            backoff_ms.push(1000);
        }
        let backoff_arg = backoff_ms.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        Self {
            backoff_ms,
            backoff_arg,
            ctx,
            tasks,
            base_id,
            epoch: watch::channel(0).0,
            run_cancel: Mutex::new(CancellationToken::new()),
            stop_claiming: CancellationToken::new(),
            background: CancellationToken::new(),
            handlers: TaskTracker::new(),
            rejoin: Notify::new(),
            events: broadcast::channel(256).0,
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            claims: AtomicU64::new(0),
            healthy_since: Mutex::new(None),
        }
    }

    pub(crate) fn events(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    /// True once joined and not stopped.
    pub(crate) fn is_member(&self) -> bool {
        *self.epoch.borrow() > 0 && !self.stopped.load(Ordering::Relaxed)
    }

    fn settings(&self) -> &super::TaskSettings {
        &self.ctx.settings.tasks
    }

    fn current_run_token(&self) -> CancellationToken {
        self.run_cancel.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Joins (retrying until redis answers or `shutdown`), seeds periodic definitions, and
    /// starts the pinger, the dead-peer check, the promoter and the workers. Idempotent.
    pub(crate) fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let stop = this.background.clone();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = stop.cancelled() => return,
                joined = this.join_until_done() => if !joined { return; }
            }
            this.seed_all().await;
            let _ = this.events.send(PeerEvent::Joined { id: this.ctx.node_id().to_string() });
            this.spawn_loops(shutdown);
        });
    }

    async fn join_until_done(&self) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            let id = self.ctx.node_id();
            match self.join(&id).await {
                Ok(()) => {
                    self.epoch.send_modify(|e| *e += 1);
                    *self.healthy_since.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(tokio::time::Instant::now());
                    tracing::info!(node = %id, "joined the cluster");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "cannot join the cluster yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.background.cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Seeds every periodic definition of this node (create-if-absent).
    pub(crate) async fn seed_all(&self) {
        let definitions: Vec<_> = {
            let defs = self.tasks.definitions.read().unwrap_or_else(PoisonError::into_inner);
            defs.values().filter(|d| d.frequency.is_some()).cloned().collect()
        };
        for definition in definitions {
            if let Err(e) = self.tasks.seed(&definition, false).await {
                tracing::warn!(name = %definition.name, error = %e, "periodic task not seeded");
            }
        }
    }

    fn spawn_loops(self: &Arc<Self>, shutdown: CancellationToken) {
        let stop = self.background.child_token();
        let halt = stop.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            halt.cancel();
        });
        let this = self.clone();
        tokio::spawn(this.ping_loop(stop.clone()));
        let this = self.clone();
        crate::periodic::every(self.settings().dead_check_interval, stop.clone(), move || {
            let this = this.clone();
            async move {
                this.check_dead().await;
                true
            }
        });
        let this = self.clone();
        crate::periodic::every(self.settings().cycle_time, stop.clone(), move || {
            let this = this.clone();
            async move {
                if this.is_member()
                    && let Err(e) = this.promote().await
                {
                    tracing::warn!(error = %e, "delayed promotion failed; retrying next cycle");
                }
                true
            }
        });
        for worker in 0..self.settings().workers {
            let this = self.clone();
            tokio::spawn(async move { this.worker_loop(worker).await });
        }
    }

    async fn ping_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings().ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => false,
                _ = self.rejoin.notified() => true,
                _ = stop.cancelled() => return,
            };
            if self.stopped.load(Ordering::Relaxed) {
                return;
            }
            let id = self.ctx.node_id();
            let evicted = match self.ping(&id).await {
                Ok(evicted) => {
                    self.healthy_since
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert_with(tokio::time::Instant::now);
                    evicted
                }
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "ping failed");
                    *self.healthy_since.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    false
                }
            };
            if evicted || (asked && !self.is_alive(&id).await.unwrap_or(true)) {
                self.reincarnate(&id).await;
            }
        }
    }

    /// After an eviction: stop claiming under the old id, cancel what runs (its completions
    /// will be rejected), re-join under a new incarnation, re-seed per-node periodic tasks.
    async fn reincarnate(&self, old: &str) {
        tracing::error!(node = %old, "evicted from the cluster (declared dead by a peer); re-joining under a new id");
        let _ = self.events.send(PeerEvent::Evicted { id: old.to_string() });
        self.epoch.send_replace(0);
        let old_token = std::mem::replace(
            &mut *self.run_cancel.lock().unwrap_or_else(PoisonError::into_inner),
            CancellationToken::new(),
        );
        old_token.cancel();
        let new_id = format!("{}:{}", self.base_id, crate::cluster::incarnation_suffix());
        self.ctx.set_node_id(&new_id);
        if self.join_until_done().await {
            self.seed_all().await;
            let _ = self.events.send(PeerEvent::Joined { id: new_id });
        }
    }

    async fn worker_loop(self: Arc<Self>, worker: u32) {
        let mut epoch = self.epoch.subscribe();
        let mut idle_reported = false;
        loop {
            if self.stop_claiming.is_cancelled() {
                break;
            }
            if *epoch.borrow_and_update() == 0 {
                tokio::select! {
                    changed = epoch.changed() => if changed.is_err() { break; },
                    _ = self.stop_claiming.cancelled() => break,
                }
                continue;
            }
            let node = self.ctx.node_id();
            let run_token = self.current_run_token();
            let every = u64::from(self.settings().global_first_every.max(1));
            let global_first = every > 1 && self.claims.fetch_add(1, Ordering::Relaxed) % every == every - 1;
            let token = new_token();
            match self.claim(&node, worker, &token, global_first).await {
                Ok(Answer::Claimed(record)) => {
                    idle_reported = false;
                    self.run(*record, &node, worker, token, run_token).await;
                }
                Ok(Answer::Evicted) => {
                    if *epoch.borrow() > 0 && *self.ctx.node_id() == *node {
                        self.rejoin.notify_one();
                    }
                    self.idle(&mut epoch).await;
                }
                Ok(_) => {
                    if !idle_reported {
                        idle_reported = true;
                        self.set_status(&node, worker, "idle").await;
                    }
                    self.idle(&mut epoch).await;
                }
                Err(e) => {
                    // The backend logs a redis outage once; per-claim failures stay at debug.
                    tracing::debug!(worker, error = %e, "claim failed; retrying next cycle");
                    self.idle(&mut epoch).await;
                }
            }
        }
        tracing::debug!(worker, "worker stopped claiming");
    }

    async fn idle(&self, epoch: &mut watch::Receiver<u64>) {
        tokio::select! {
            _ = tokio::time::sleep(self.settings().cycle_time) => {}
            _ = self.stop_claiming.cancelled() => {}
            _ = epoch.changed() => {}
        }
    }

    /// Runs one claimed task and completes it (retrying the completion while redis is
    /// unreachable, until it is accepted or found stale).
    async fn run(
        &self,
        record: super::TaskRecord,
        node: &str,
        worker: u32,
        token: String,
        run_token: CancellationToken,
    ) {
        let id = record.id.clone();
        let outcome = match self.tasks.definition(&record.name) {
            None => {
                tracing::warn!(task = %id, name = %record.name, "task name not defined on this node; handing it back");
                Outcome::Bounce(format!("task name, {}, not found on {node}", record.name))
            }
            Some(definition) => {
                let cancel = run_token.child_token();
                let context = TaskContext {
                    id: id.clone(),
                    name: record.name.clone(),
                    attempt: record.attempt,
                    params: record.params_value(),
                    parent_id: record.parent_id.clone(),
                    node_id: node.into(),
                    cancel: cancel.clone(),
                };
                tracing::debug!(task = %id, name = %record.name, attempt = record.attempt, "task started");
                let mut handle = self.handlers.spawn((definition.handler)(context));
                let result = match definition.timeout {
                    None => (&mut handle).await,
                    Some(limit) => match tokio::time::timeout(limit, &mut handle).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            // Signal first, so the handler can stop cleanly; abort after the
                            // grace if it does not.
                            cancel.cancel();
                            if tokio::time::timeout(self.settings().cancel_grace, &mut handle).await.is_err() {
                                handle.abort();
                            }
                            tracing::warn!(task = %id, ?limit, "task timed out");
                            Ok(Err(format!("timed out after {} ms", limit.as_millis()).into()))
                        }
                    },
                };
                match result {
                    Ok(Ok(())) => Outcome::Ok,
                    Ok(Err(e)) => Outcome::Error(e.to_string()),
                    Err(join) if join.is_panic() => Outcome::Error("task handler panicked".to_string()),
                    Err(_) => Outcome::Error("task handler was aborted".to_string()),
                }
            }
        };
        if run_token.is_cancelled() && !matches!(outcome, Outcome::Ok) {
            // Cancelled by a shutdown deadline or an eviction: the claim is handed back by
            // the leave (or was already recovered), so this run is not a failure.
            tracing::info!(task = %id, "run cancelled; its claim is handed back, not failed");
            return;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.complete(node, worker, &id, &token, &outcome).await {
                Ok(answer) => {
                    match answer.as_str() {
                        "stale" => {
                            tracing::warn!(task = %id, node, "completion rejected: the claim was taken back (stale token)")
                        }
                        "deadLettered" => tracing::warn!(task = %id, ?outcome, "task dead-lettered"),
                        "retry" => tracing::info!(task = %id, ?outcome, "task failed; retry scheduled"),
                        other => tracing::debug!(task = %id, answer = other, "task completed"),
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "completion failed; retrying");
                    if self.stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Graceful leave (§C2.7): stop claiming, wait for running tasks (bounded), cancel the
    /// rest, wait the grace, then run the leave script, which hands back what is still
    /// claimed and removes this node.
    pub(crate) async fn stop(&self) {
        if !self.started.load(Ordering::SeqCst) || self.stopped.swap(true, Ordering::SeqCst) {
            self.background.cancel();
            return;
        }
        self.stop_claiming.cancel();
        self.handlers.close();
        let waited = match self.settings().shutdown_timeout {
            None => {
                self.handlers.wait().await;
                true
            }
            Some(limit) => tokio::time::timeout(limit, self.handlers.wait()).await.is_ok(),
        };
        if !waited {
            tracing::warn!(running = self.handlers.len(), "shutdown deadline reached; cancelling running tasks");
            self.current_run_token().cancel();
            if tokio::time::timeout(self.settings().cancel_grace, self.handlers.wait()).await.is_err() {
                tracing::warn!(running = self.handlers.len(), "tasks ignored cancellation; handing their claims back");
            }
        }
        self.background.cancel();
        let id = self.ctx.node_id();
        if *self.epoch.borrow() == 0 {
            return;
        }
        match self.leave(&id).await {
            Ok((reclaimed, dropped, dead_lettered)) => {
                tracing::info!(node = %id, reclaimed, dropped, dead_lettered, "left the cluster");
                let _ = self.events.send(PeerEvent::Left { id: id.to_string() });
            }
            Err(e) => {
                tracing::error!(node = %id, error = %e, "leave failed; peers will recover this node's work after deadAfter")
            }
        }
        self.epoch.send_replace(0);
    }

    // ---- one operation per script, both backends ----

    async fn join(&self, id: &str) -> Result<(), TaskError> {
        match &self.ctx.backend {
            Backend::Memory(m) => {
                guard(&m.tasks).join(id);
                Ok(())
            }
            Backend::Redis(r) => {
                let _: String = r.check(scripts::JOIN.arg(r.keys.prefix()).arg(id).invoke_async(&mut r.con()).await)?;
                Ok(())
            }
        }
    }

    /// Answers true when the node was evicted.
    async fn ping(&self, id: &str) -> Result<bool, TaskError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(!guard(&m.tasks).live(id)),
            Backend::Redis(r) => {
                let answer: String =
                    r.check(scripts::PING.arg(r.keys.prefix()).arg(id).invoke_async(&mut r.con()).await)?;
                Ok(answer == "evicted")
            }
        }
    }

    pub(crate) async fn is_alive(&self, id: &str) -> Result<bool, ClusterError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(guard(&m.tasks).live(id)),
            Backend::Redis(r) => {
                let mut con = r.con();
                r.check(redis::cmd("HEXISTS").arg(r.keys.peer_pings()).arg(id).query_async(&mut con).await)
            }
        }
    }

    /// Live members in join order.
    pub(crate) async fn peers(&self) -> Result<Vec<String>, ClusterError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(guard(&m.tasks).peers.clone()),
            Backend::Redis(r) => {
                let mut pipe = redis::pipe();
                pipe.atomic().lrange(r.keys.peers(), 0, -1).hkeys(r.keys.peer_pings());
                let (mut listed, pinging): (Vec<String>, std::collections::HashSet<String>) =
                    r.check(pipe.query_async(&mut r.con()).await)?;
                let mut seen = std::collections::HashSet::new();
                listed.retain(|id| pinging.contains(id) && seen.insert(id.clone()));
                Ok(listed)
            }
        }
    }

    async fn check_dead(&self) {
        let Backend::Redis(r) = &self.ctx.backend else { return };
        let since = *self.healthy_since.lock().unwrap_or_else(PoisonError::into_inner);
        if since.is_none_or(|t| t.elapsed() < self.settings().dead_after) {
            return;
        }
        let result: Result<Vec<String>, ClusterError> = r.check(
            scripts::CHECK_DEAD
                .arg(r.keys.prefix())
                .arg(duration_ms(self.settings().dead_after))
                .arg(self.settings().max_crash_attempts)
                .arg(&*self.ctx.node_id())
                .invoke_async(&mut r.con())
                .await,
        );
        let flat = match result {
            Ok(flat) => flat,
            Err(e) => {
                tracing::warn!(error = %e, "dead-peer check failed; retrying next interval");
                return;
            }
        };
        for chunk in flat.chunks(5) {
            let [id, age, reclaimed, dropped, dead_lettered] = chunk else { continue };
            let age: i64 = age.parse().unwrap_or(-1);
            let num = |s: &String| s.parse::<u64>().unwrap_or(0);
            tracing::warn!(peer = %id, last_ping_age_ms = age, reclaimed = %reclaimed, dropped = %dropped,
                dead_lettered = %dead_lettered, "peer declared dead; its work was recovered");
            let _ = self.events.send(PeerEvent::Dead {
                id: id.clone(),
                last_ping_age_ms: (age >= 0).then_some(age),
                reclaimed: num(reclaimed),
                dropped: num(dropped),
                dead_lettered: num(dead_lettered),
            });
        }
    }

    async fn leave(&self, id: &str) -> Result<(u64, u64, u64), TaskError> {
        let max_crash = self.settings().max_crash_attempts;
        match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = self.ctx.settings.clock.now_ms();
                Ok(with_memory_tasks(m, |t| t.leave(now, id, max_crash)))
            }
            Backend::Redis(r) => {
                let counts: (u64, u64, u64) = r.check(
                    scripts::LEAVE.arg(r.keys.prefix()).arg(id).arg(max_crash).invoke_async(&mut r.con()).await,
                )?;
                Ok(counts)
            }
        }
    }

    async fn promote(&self) -> Result<usize, TaskError> {
        let batch = self.settings().promotion_batch.max(1);
        let node = self.ctx.node_id();
        match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = self.ctx.settings.clock.now_ms();
                Ok(with_memory_tasks(m, |t| t.promote(now, batch, &node)))
            }
            Backend::Redis(r) => {
                let n: usize = r.check(
                    scripts::PROMOTE.arg(r.keys.prefix()).arg(batch).arg(&*node).invoke_async(&mut r.con()).await,
                )?;
                Ok(n)
            }
        }
    }

    async fn claim(&self, node: &str, worker: u32, token: &str, global_first: bool) -> Result<Answer, TaskError> {
        match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = self.ctx.settings.clock.now_ms();
                Ok(with_memory_tasks(m, |t| t.claim(now, node, worker, token, global_first)))
            }
            Backend::Redis(r) => {
                let parts: Vec<String> = r.check(
                    scripts::CLAIM
                        .arg(r.keys.prefix())
                        .arg(node)
                        .arg(worker)
                        .arg(token)
                        .arg(if global_first { "1" } else { "0" })
                        .invoke_async(&mut r.con())
                        .await,
                )?;
                Answer::from_redis(parts)
            }
        }
    }

    async fn complete(
        &self,
        node: &str,
        worker: u32,
        id: &str,
        token: &str,
        outcome: &Outcome,
    ) -> Result<String, TaskError> {
        let s = self.settings();
        let bounce_limit = s.bounce_limit.max(1);
        match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = self.ctx.settings.clock.now_ms();
                Ok(with_memory_tasks(m, |t| {
                    t.complete(
                        now,
                        node,
                        worker,
                        id,
                        token,
                        outcome,
                        &self.backoff_ms,
                        bounce_limit,
                        duration_ms(s.bounce_delay),
                    )
                }))
            }
            Backend::Redis(r) => {
                let (kind, text) = outcome.parts();
                let answer: String = r.check(
                    scripts::COMPLETE
                        .arg(r.keys.prefix())
                        .arg(node)
                        .arg(worker)
                        .arg(id)
                        .arg(token)
                        .arg(kind)
                        .arg(text)
                        .arg(&self.backoff_arg)
                        .arg(bounce_limit)
                        .arg(duration_ms(s.bounce_delay))
                        .invoke_async(&mut r.con())
                        .await,
                )?;
                Ok(answer)
            }
        }
    }

    async fn set_status(&self, node: &str, worker: u32, status: &str) {
        let field = format!("{node}#{worker}");
        match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.tasks).set_worker_status(field, status.to_string()),
            Backend::Redis(r) => {
                let mut con = r.con();
                let result: Result<(), ClusterError> = r.check(
                    redis::cmd("HSET")
                        .arg(r.keys.tasks("workerStatus"))
                        .arg(field)
                        .arg(status)
                        .query_async(&mut con)
                        .await,
                );
                if let Err(e) = result {
                    tracing::debug!(error = %e, "worker status not written");
                }
            }
        }
    }
}
