//! The native redis layout: each node fans messages out to its own clients, and redis only
//! routes a publish to the nodes that want it.
//!
//! - A client's session (subscriptions, queue) lives on the node that holds its connection,
//!   its owner, in the same structure the memory engine uses (`LocalClients`). Redis
//!   records the owner, an epoch and the subscriptions, so any node can take the session over.
//! - For each channel or pattern, an interest hash counts how many of each node's clients
//!   subscribe to it. A publish (one script) appends the message once to the inbox stream of
//!   every interested node: its cost grows with patterns and nodes, not subscribers.
//! - Each node reads its inbox in order from its last offset, so a dropped connection loses
//!   nothing, and applies session changes (subscribe, move, destroy) that scripts append to
//!   the same stream: a change and the messages around it are seen in the order redis saw them.
//! - A client that shows up on another node is taken over (`scripts::TAKE_OVER`): the old
//!   owner hands over what it still held, which is delivered before anything newer.
//!
//! See `scripts.rs` for the inbox entries and the README's redis section for the key layout.

mod inbox;
mod keys;
mod partition;
mod pipeline;
mod scripts;

use super::layout_guard::{self, Layout};
use super::local::LocalClients;
use super::{ConnectError, Engine, EngineError, EngineObserver, PublishReceipt, SharedEnvelope, SubscribeOutcome};
use crate::clock::unix_ms as now_ms;
use crate::protocol::client_id;
use crate::redis_conn::{RedisEndpoint, RedisKind, TimedConnection};
use crate::telemetry::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use keys::Keys;
use redis::AsyncCommands;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use layout_guard::LayoutError;

/// Settings of a [`NativeEngine`].
#[derive(Debug, Clone)]
pub struct NativeSettings {
    /// `redis://host:port/db`, `rediss://…` or `redis+unix:///path`.
    pub url: String,
    /// Key prefix; the layout's keys live under `{namespace}/native/`.
    pub namespace: String,
    /// The connect timeout: clients count as gone after 1.6× and are collected after 2×
    /// without a connect.
    pub timeout: Duration,
    /// How often garbage collection of expired clients and dead nodes runs.
    pub gc_interval: Duration,
    /// Where round-trip latency, reconnects and slow consumers are counted.
    pub metrics: Arc<Metrics>,
    /// A client whose queue on its node holds more than this many bytes is destroyed as a
    /// slow consumer (`0`: no bound).
    pub max_queue_bytes: usize,
    /// Most entries a node's inbox keeps while its node does not read them (a node further
    /// behind loses the oldest; counted in `actioncluster_inbox_entries_lost_total`).
    pub inbox_max_len: usize,
}

/// How often a node records that it is alive, and checks that redis still knows it.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is not waited for when its clients move.
const PRESUMED_DEAD: Duration = Duration::from_secs(3);
/// Longest wait for a live previous owner to hand a moved session over.
const HANDOFF_WAIT: Duration = Duration::from_secs(3);
/// Lifetime of the garbage collection lock.
const GC_LOCK: Duration = Duration::from_secs(120);
/// Clients re-recorded per round trip after redis lost its data.
const REASSERT_BATCH: usize = 200;

/// One partition of the layout (see `partition.rs`): one on a single redis, one per master
/// on a Redis Cluster.
pub(crate) struct Part {
    keys: Keys,
    /// This node's inbox in this partition.
    inbox: String,
    /// Every command of the partition but the inbox reads goes through this one ordered
    /// pipeline.
    pipeline: pipeline::Pipeline,
    /// The partition's clients held here.
    local: LocalClients,
    /// Asks the partition's inbox reader to check whether redis lost the inbox (then it
    /// reads the new one from its start).
    inbox_check: AtomicBool,
}

impl Part {
    fn con(&self) -> pipeline::Pipeline {
        self.pipeline.clone()
    }
}

pub(crate) struct Inner {
    endpoint: RedisEndpoint,
    /// For commands outside any partition (layout claim, script loads, the GC lock, PING).
    direct: TimedConnection,
    metrics: Arc<Metrics>,
    /// Keys outside any partition.
    keys: Keys,
    /// The partitions; a client's is `partition::index(id, parts.len())`.
    parts: Vec<Part>,
    namespace: String,
    /// This node's id in the layout (random per start).
    node_id: String,
    timeout: Duration,
    gc_interval: Duration,
    inbox_max_len: usize,
    observer: OnceLock<Arc<dyn EngineObserver>>,
    /// False from the first failure of an outage until the next success: one warning each way.
    healthy: AtomicBool,
    /// Notified whenever a client leaves this node (graceful shutdown waits for them).
    departures: Notify,
    /// True once the first heartbeat recorded this node: a later one that finds it missing
    /// means redis lost its data.
    registered: AtomicBool,
}

/// Engine of the native redis layout.
#[derive(Clone)]
pub struct NativeEngine {
    inner: Arc<Inner>,
}

impl NativeEngine {
    /// Connects, and claims the namespace for the native layout (refused when faye-layout
    /// nodes use it). The inbox reader starts with [`Engine::start`].
    pub async fn connect(settings: NativeSettings) -> Result<Self, ConnectError> {
        let endpoint = RedisEndpoint::parse(&settings.url)?;
        let con = endpoint.commands().await?;
        let mut direct = TimedConnection { inner: con, metrics: settings.metrics.clone() };
        let node_id = client_id::generate();
        let keys = Keys::new(&settings.namespace);
        let on_cluster = endpoint.kind() == RedisKind::Cluster;
        let unavailable = |e: redis::RedisError| LayoutError::Unavailable {
            namespace: settings.namespace.clone(),
            source: EngineError::Unavailable(e.to_string()),
        };
        let part_keys = if on_cluster {
            layout_guard::claim_on_cluster(&mut direct, &settings.namespace, Layout::Native).await?;
            let tags = partition::cluster_tags(&mut direct, &keys.partitions()).await.map_err(unavailable)?;
            tracing::info!(partitions = %tags.join(","), "native layout on a Redis Cluster");
            tags.iter().map(|tag| Keys::partition(&settings.namespace, tag)).collect()
        } else {
            layout_guard::claim(&mut direct, &settings.namespace, Layout::Native).await?;
            vec![keys.clone()]
        };
        let parts = part_keys
            .into_iter()
            .map(|keys| Part {
                inbox: keys.inbox(&node_id),
                keys,
                pipeline: pipeline::Pipeline::start(direct.clone()),
                local: LocalClients::new(settings.max_queue_bytes),
                inbox_check: AtomicBool::new(false),
            })
            .collect();
        let inner = Arc::new(Inner {
            endpoint,
            direct,
            metrics: settings.metrics,
            keys,
            parts,
            namespace: settings.namespace,
            node_id,
            timeout: settings.timeout,
            gc_interval: settings.gc_interval,
            inbox_max_len: settings.inbox_max_len.max(1),
            observer: OnceLock::new(),
            healthy: AtomicBool::new(true),
            departures: Notify::new(),
            registered: AtomicBool::new(false),
        });
        inner
            .load_publish_script()
            .await
            .map_err(|e| LayoutError::Unavailable { namespace: inner.namespace.clone(), source: e })?;
        inner
            .heartbeat()
            .await
            .map_err(|e| LayoutError::Unavailable { namespace: inner.namespace.clone(), source: e })?;
        Ok(Self { inner })
    }

    /// This node's id in the layout.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Runs one garbage-collection pass now; returns how many clients were collected.
    pub async fn collect_garbage(&self) -> Result<usize, EngineError> {
        self.inner.gc().await
    }
}

impl Inner {
    /// The connection for commands outside any partition.
    fn direct(&self) -> TimedConnection {
        self.direct.clone()
    }

    /// The partition of a client.
    fn part(&self, client_id: &str) -> &Part {
        &self.parts[partition::index(client_id, self.parts.len())]
    }

    /// How many clients this node holds.
    fn local_len(&self) -> usize {
        self.parts.iter().map(|p| p.local.len()).sum()
    }

    fn check<T>(&self, result: redis::RedisResult<T>) -> Result<T, EngineError> {
        match result {
            Ok(v) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(url = %self.endpoint.url(), "redis reachable again");
                }
                Ok(v)
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(url = %self.endpoint.url(), error = %e, "redis unavailable; answering clients with errors until it returns");
                }
                Err(EngineError::Unavailable(e.to_string()))
            }
        }
    }

    fn observer(&self) -> Option<&Arc<dyn EngineObserver>> {
        self.observer.get()
    }

    /// Cutoff below which a client's last connect means it is gone (1.6 × timeout).
    fn exists_cutoff(&self) -> i64 {
        now_ms() - (self.timeout.as_millis() as i64 * 16 / 10)
    }

    /// Records that this node is alive. When redis no longer knew it (redis lost its data),
    /// claims the namespace again and records every client held here anew.
    async fn heartbeat(&self) -> Result<(), EngineError> {
        // Known only if every partition knows it (on a Redis Cluster one shard may lose its data).
        let mut known = 1;
        for part in &self.parts {
            let beat: i64 = self.check(
                scripts::HEARTBEAT
                    .key(part.keys.nodes())
                    .arg(&self.node_id)
                    .arg(now_ms())
                    .invoke_async(&mut part.con())
                    .await,
            )?;
            known = known.min(beat);
        }
        if known == 0 && self.registered.swap(true, Ordering::Relaxed) {
            tracing::warn!(clients = self.local_len(), "redis lost this node's records; recording its clients again");
            self.metrics.redis_reconnect();
            let claimed = if self.parts.len() > 1 || self.endpoint.kind() == RedisKind::Cluster {
                layout_guard::claim_on_cluster(&mut self.direct(), &self.namespace, Layout::Native).await
            } else {
                layout_guard::claim(&mut self.direct(), &self.namespace, Layout::Native).await
            };
            if let Err(e) = claimed {
                tracing::error!(error = %e, "cannot claim the namespace again after redis lost its data");
            }
            // Publishes are sent without waiting, so their script must be there beforehand.
            self.load_publish_script().await?;
            // Its inbox went too: read the new one from its start.
            for part in &self.parts {
                part.inbox_check.store(true, Ordering::Relaxed);
            }
            self.reassert().await?;
        }
        Ok(())
    }

    /// Loads the publish script, so that publishes sent back to back find it (one that does
    /// not sends the script itself, out of its connection's order).
    async fn load_publish_script(&self) -> Result<(), EngineError> {
        // Keyless: on a Redis Cluster it loads on every master.
        let loaded: redis::RedisResult<String> = scripts::PUBLISH.prepare_invoke().load_async(&mut self.direct()).await;
        self.check(loaded).map(|_| ())
    }

    /// Writes the records of every client held here that redis no longer has; lets go of
    /// those another node owns now.
    async fn reassert(&self) -> Result<(), EngineError> {
        for part in &self.parts {
            self.reassert_part(part).await?;
        }
        Ok(())
    }

    /// [`Inner::reassert`] for one partition (its pipelines stay in its slot).
    async fn reassert_part(&self, part: &Part) -> Result<(), EngineError> {
        let ids = part.local.ids();
        for chunk in ids.chunks(REASSERT_BATCH) {
            let mut pipe = redis::pipe();
            let mut sent = Vec::with_capacity(chunk.len());
            for id in chunk {
                let Some(subscriptions) = part.local.subscriptions(id) else { continue };
                // EVALSHA by hand: a pipeline cannot carry a script invocation. The script is
                // loaded first, below.
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(scripts::REASSERT.get_hash())
                    .arg(3)
                    .arg(part.keys.clients())
                    .arg(part.keys.client(id))
                    .arg(part.keys.client_subscriptions(id))
                    .arg(&**id)
                    .arg(&self.node_id)
                    .arg(now_ms())
                    .arg(part.keys.interest_prefix());
                for channel in &subscriptions {
                    cmd.arg(&**channel);
                }
                sent.push(id.clone());
            }
            let _: String = self.check(scripts::REASSERT.prepare_invoke().load_async(&mut self.direct()).await)?;
            let answers: Vec<i64> = self.check(pipe.query_async(&mut part.con()).await)?;
            for (id, answer) in sent.iter().zip(answers) {
                if answer == 0 {
                    self.let_go(id);
                }
            }
        }
        Ok(())
    }

    /// The client is no longer this node's: drop it and release what the node holds for it.
    fn let_go(&self, id: &str) -> Option<super::local::Removed> {
        let removed = self.part(id).local.remove(id)?;
        if let Some(o) = self.observer() {
            o.client_closed(id);
        }
        self.departures.notify_waiters();
        Some(removed)
    }

    async fn destroy(&self, client_id: &str) -> Result<bool, EngineError> {
        let part = self.part(client_id);
        let result: redis::RedisResult<Vec<redis::Value>> = scripts::DESTROY
            .key(part.keys.clients())
            .key(part.keys.client(client_id))
            .key(part.keys.client_subscriptions(client_id))
            .arg(client_id)
            .arg(part.keys.interest_prefix())
            .arg(part.keys.inbox_prefix())
            .arg(self.inbox_max_len)
            .invoke_async(&mut part.con())
            .await;
        let values = self.check(result)?;
        let existed = matches!(values.first(), Some(redis::Value::Int(1)));
        if part.local.remove(client_id).is_some() {
            self.departures.notify_waiters();
        }
        if let Some(o) = self.observer() {
            for v in values.iter().skip(1) {
                if let Ok(channel) = redis::from_redis_value_ref::<String>(v) {
                    o.unsubscribed(client_id, &channel);
                }
            }
            if existed {
                o.client_destroyed(client_id);
            }
        }
        Ok(existed)
    }

    /// Moves a client that connected here from its owner to this node.
    async fn take_over(self: &Arc<Self>, client_id: &str) -> Result<(), EngineError> {
        // Present before the script runs, so the `T` entry finds it however fast the reader is.
        let part = self.part(client_id);
        if !part.local.insert_moving(client_id) {
            return Ok(());
        }
        let result: redis::RedisResult<Vec<redis::Value>> = scripts::TAKE_OVER
            .key(part.keys.clients())
            .key(part.keys.client(client_id))
            .key(part.keys.client_subscriptions(client_id))
            .key(part.keys.nodes())
            .arg(client_id)
            .arg(&self.node_id)
            .arg(now_ms())
            .arg(part.keys.interest_prefix())
            .arg(part.keys.inbox_prefix())
            .arg(self.inbox_max_len)
            .invoke_async(&mut part.con())
            .await;
        let values = match self.check(result) {
            Ok(values) => values,
            Err(e) => {
                part.local.remove(client_id);
                return Err(e);
            }
        };
        let int = |i: usize| values.get(i).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok());
        if int(0) != Some(1) {
            // Destroyed meanwhile: nothing to take over.
            part.local.remove(client_id);
            return Ok(());
        }
        let previous = values.get(1).and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).unwrap_or_default();
        let epoch = u64::try_from(int(2).unwrap_or(0)).unwrap_or(0);
        let beat = int(3).unwrap_or(-1);
        if previous == self.node_id {
            // It was ours already (its entry here had gone): nothing to wait for.
            self.release(client_id, epoch, Vec::new());
            return Ok(());
        }
        tracing::debug!(client_id, from = %previous, epoch, "client moved here");
        self.metrics.session_moved();
        if beat < 0 || now_ms() - beat > PRESUMED_DEAD.as_millis() as i64 {
            // Its previous node is gone: what it held is lost, newer messages are not.
            self.release(client_id, epoch, Vec::new());
            return Ok(());
        }
        let inner = Arc::downgrade(self);
        let id = client_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(HANDOFF_WAIT).await;
            if let Some(inner) = inner.upgrade()
                && inner.part(&id).local.is_held(&id)
                && inner.release(&id, epoch, Vec::new())
            {
                tracing::warn!(client_id = %id, from = %previous, "previous node did not hand the session over in time");
            }
        });
        Ok(())
    }

    /// Wakes the connections of clients with newly queued messages.
    fn wake(&self, wakes: &mut Vec<Arc<str>>) {
        super::local::dedup_ids(wakes);
        if let Some(o) = self.observer() {
            for id in wakes.iter() {
                o.messages_waiting(id);
            }
        }
        wakes.clear();
    }

    /// Ends the hold of a moved client (see [`LocalClients::release`]) and wakes its connection.
    fn release(&self, client_id: &str, epoch: u64, earlier: Vec<SharedEnvelope>) -> bool {
        if !self.part(client_id).local.release(client_id, epoch, earlier) {
            return false;
        }
        if let Some(o) = self.observer() {
            o.messages_waiting(client_id);
        }
        true
    }

    /// Queues a message read from partition `part`'s inbox for every local client of that
    /// partition it matches; the clients to wake are added to `wakes` (woken once per read
    /// batch, so each socket gets the batch in one write).
    fn deliver(self: &Arc<Self>, part: usize, envelope: SharedEnvelope, wakes: &mut Vec<Arc<str>>) {
        let patterns = envelope.patterns();
        let observer = self.observer();
        let local = &self.parts[part].local;
        let slow = local.fan_out(&envelope, &patterns, |id| wakes.push(id.clone()));
        for (id, queued_bytes) in slow {
            if let Some(o) = observer {
                o.slow_consumer(&id, queued_bytes);
            }
            local.remove(&id);
            let inner = self.clone();
            tokio::spawn(async move {
                if let Err(e) = inner.destroy(&id).await {
                    tracing::warn!(client_id = %id, error = %e, "could not destroy a slow consumer in redis");
                }
            });
        }
    }

    /// One garbage collection pass under the layout's lock: expired clients, then the inboxes
    /// of nodes that stopped beating.
    async fn gc(&self) -> Result<usize, EngineError> {
        let mut con = self.direct();
        let lock = self.keys.gc_lock();
        let acquired: Option<String> = self.check(
            redis::cmd("SET")
                .arg(&lock)
                .arg(&self.node_id)
                .arg("NX")
                .arg("PX")
                .arg(GC_LOCK.as_millis() as u64)
                .query_async(&mut con)
                .await,
        )?;
        if acquired.is_none() {
            return Ok(0);
        }
        let now = now_ms();
        let cutoff = now - 2 * self.timeout.as_millis() as i64;
        let mut collected = 0;
        for part in &self.parts {
            let stale: Vec<String> = self.check(part.con().zrangebyscore(part.keys.clients(), 0, cutoff).await)?;
            for id in &stale {
                if self.destroy(id).await? {
                    collected += 1;
                }
            }
            let dead: Vec<String> = self.check(part.con().zrangebyscore(part.keys.nodes(), 0, cutoff).await)?;
            for node in dead.iter().filter(|n| **n != self.node_id) {
                let _: () = self.check(
                    redis::pipe()
                        .atomic()
                        .del(part.keys.inbox(node))
                        .zrem(part.keys.nodes(), node)
                        .query_async(&mut part.con())
                        .await,
                )?;
                tracing::info!(node = %node, "removed the inbox of a node that stopped");
            }
        }
        let _: redis::RedisResult<()> = con.del(&lock).await;
        if collected > 0 {
            tracing::debug!(collected, "garbage-collected expired clients");
        }
        Ok(collected)
    }
}

#[async_trait]
impl Engine for NativeEngine {
    fn attach(&self, observer: Arc<dyn EngineObserver>) {
        let _ = self.inner.observer.set(observer);
    }

    fn start(&self, shutdown: CancellationToken) {
        for part in 0..self.inner.parts.len() {
            tokio::spawn(inbox::run(Arc::downgrade(&self.inner), part, shutdown.clone()));
        }
        let inner = Arc::downgrade(&self.inner);
        crate::periodic::every(HEARTBEAT, shutdown.clone(), move || {
            let inner = inner.upgrade();
            async move {
                let Some(inner) = inner else { return false };
                if let Err(e) = inner.heartbeat().await {
                    tracing::debug!(error = %e, "heartbeat failed");
                }
                true
            }
        });
        let inner = Arc::downgrade(&self.inner);
        crate::periodic::every(self.inner.gc_interval, shutdown, move || {
            let inner = inner.upgrade();
            async move {
                let Some(inner) = inner else { return false };
                if let Err(e) = inner.gc().await {
                    tracing::debug!(error = %e, "garbage collection skipped");
                }
                true
            }
        });
    }

    async fn create_client(&self) -> Result<String, EngineError> {
        loop {
            let id = client_id::generate();
            let part = self.inner.part(&id);
            if !part.local.insert(&id) {
                continue;
            }
            let created: redis::RedisResult<i64> = scripts::CREATE
                .key(part.keys.clients())
                .key(part.keys.client(&id))
                .arg(&id)
                .arg(&self.inner.node_id)
                .arg(now_ms())
                .invoke_async(&mut part.con())
                .await;
            match self.inner.check(created) {
                Ok(1) => return Ok(id),
                Ok(_) => {
                    part.local.remove(&id);
                }
                Err(e) => {
                    part.local.remove(&id);
                    return Err(e);
                }
            }
        }
    }

    async fn destroy_client(&self, client_id: &str) -> Result<bool, EngineError> {
        self.inner.destroy(client_id).await
    }

    async fn set_credentials(
        &self,
        client_id: &str,
        credentials: Option<Bytes>,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let part = self.inner.part(client_id);
        let key = part.keys.client_credentials(client_id);
        self.inner.check(crate::engine::credentials::store(&mut part.con(), &key, credentials, ttl).await)
    }

    async fn credentials(&self, client_id: &str) -> Result<Option<Bytes>, EngineError> {
        let part = self.inner.part(client_id);
        let key = part.keys.client_credentials(client_id);
        self.inner.check(crate::engine::credentials::load(&mut part.con(), &key).await)
    }

    async fn client_exists(&self, client_id: &str) -> Result<bool, EngineError> {
        let part = self.inner.part(client_id);
        let score: Option<f64> = self.inner.check(part.con().zscore(part.keys.clients(), client_id).await)?;
        Ok(score.is_some_and(|s| s as i64 > self.inner.exists_cutoff()))
    }

    async fn ping(&self, client_id: &str) -> Result<(), EngineError> {
        let part = self.inner.part(client_id);
        let r: redis::RedisResult<i64> = redis::cmd("ZADD")
            .arg(part.keys.clients())
            .arg("XX")
            .arg(now_ms())
            .arg(client_id)
            .query_async(&mut part.con())
            .await;
        self.inner.check(r).map(|_| ())
    }

    /// The client's session moves here if another node owns it.
    async fn claim(&self, client_id: &str) -> Result<(), EngineError> {
        if self.inner.part(client_id).local.contains(client_id) {
            return Ok(());
        }
        self.inner.take_over(client_id).await
    }

    async fn subscribe_limited(
        &self,
        client_id: &str,
        channel: &str,
        max: usize,
    ) -> Result<SubscribeOutcome, EngineError> {
        let part = self.inner.part(client_id);
        let r: redis::RedisResult<i64> = scripts::SUBSCRIBE
            .key(part.keys.client(client_id))
            .key(part.keys.client_subscriptions(client_id))
            .key(part.keys.interest(channel))
            .arg(channel)
            .arg(client_id)
            .arg(max.min(i64::MAX as usize) as i64)
            .arg(part.keys.inbox_prefix())
            .arg(self.inner.inbox_max_len)
            .invoke_async(&mut part.con())
            .await;
        Ok(match self.inner.check(r)? {
            1 => {
                if let Some(o) = self.inner.observer() {
                    o.subscribed(client_id, channel);
                }
                SubscribeOutcome::Added
            }
            -1 => SubscribeOutcome::LimitReached,
            _ => SubscribeOutcome::Existing,
        })
    }

    async fn unsubscribe(&self, client_id: &str, channel: &str) -> Result<bool, EngineError> {
        let part = self.inner.part(client_id);
        let r: redis::RedisResult<i64> = scripts::UNSUBSCRIBE
            .key(part.keys.client(client_id))
            .key(part.keys.client_subscriptions(client_id))
            .key(part.keys.interest(channel))
            .arg(channel)
            .arg(client_id)
            .arg(part.keys.inbox_prefix())
            .arg(self.inner.inbox_max_len)
            .invoke_async(&mut part.con())
            .await;
        let removed = self.inner.check(r)? == 1;
        if removed && let Some(o) = self.inner.observer() {
            o.unsubscribed(client_id, channel);
        }
        Ok(removed)
    }

    async fn publish(&self, envelope: SharedEnvelope) -> Result<(), EngineError> {
        match self.start_publish(&envelope) {
            Some(receipt) => receipt.await,
            None => Ok(()),
        }
    }

    /// One `EVALSHA` of `scripts::PUBLISH` per partition, each queued on its partition's
    /// pipeline at once (one in all on a single redis).
    fn start_publish(&self, envelope: &SharedEnvelope) -> Option<PublishReceipt> {
        let patterns = envelope.patterns();
        let call = |keys: &Keys, command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(patterns.len());
            for pattern in &patterns {
                cmd.arg(keys.interest(pattern));
            }
            cmd.arg(keys.inbox_prefix())
                .arg(self.inner.inbox_max_len)
                .arg(envelope.encoded.as_ref())
                .arg(if envelope.reaches_root_wildcard() { "1" } else { "0" });
            cmd
        };
        let mut sent = Vec::with_capacity(self.inner.parts.len());
        for (i, part) in self.inner.parts.iter().enumerate() {
            let answer = part.pipeline.send(call(&part.keys, "EVALSHA", scripts::PUBLISH.get_hash()));
            // Redis lost its scripts (a restart): the script itself goes instead, which loads it.
            let reload = call(&part.keys, "EVAL", scripts::PUBLISH_SOURCE);
            sent.push((i, answer, reload));
        }
        let inner = self.inner.clone();
        Some(Box::pin(async move {
            let mut outcome = Ok(());
            for (i, answer, reload) in sent {
                let result = match answer.await {
                    Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        reload.query_async::<redis::Value>(&mut inner.parts[i].con()).await
                    }
                    Ok(result) => result,
                    Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "engine pipeline stopped",
                    ))),
                };
                if let Err(e) = inner.check(result) {
                    outcome = Err(e);
                }
            }
            outcome
        }))
    }

    async fn take_queued(&self, client_id: &str) -> Result<Vec<SharedEnvelope>, EngineError> {
        Ok(self.inner.part(client_id).local.take(client_id))
    }

    fn queued_messages(&self) -> Option<u64> {
        Some(self.inner.parts.iter().map(|p| p.local.queued_messages()).sum())
    }

    async fn health(&self) -> Result<(), EngineError> {
        let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut self.inner.direct()).await;
        self.inner.check(r).map(|_| ())
    }

    async fn requeue(&self, client_id: &str, envelopes: Vec<SharedEnvelope>) -> Result<(), EngineError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let count = envelopes.len();
        if self.inner.part(client_id).local.requeue(client_id, envelopes) {
            if let Some(o) = self.inner.observer() {
                o.messages_waiting(client_id);
            }
        } else {
            tracing::warn!(client_id, count, "undelivered messages of a client that left this node are dropped");
        }
        Ok(())
    }

    async fn drain(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let departed = self.inner.departures.notified();
            if self.inner.local_len() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, departed).await.is_err() {
                tracing::warn!(clients = self.inner.local_len(), "shutdown: clients still held here are dropped");
                break;
            }
        }
        // Leave: nodes taking over the rest need not wait for this one.
        for part in &self.inner.parts {
            let r: redis::RedisResult<()> = part.con().zrem(part.keys.nodes(), &self.inner.node_id).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "could not leave the node set");
            }
        }
    }
}
