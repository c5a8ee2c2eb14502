//! The redis engine: clients, subscriptions and queues in redis with faye-redis 0.2.0's key
//! layout and notifications, so node.js Faye nodes and ours share one cluster. Unlike
//! faye-redis it publishes in one round trip, drains and destroys atomically, gives back
//! what a dying connection could not write, and re-drains after a pub/sub gap.

mod keys;
mod listener;
mod recovery;
mod scripts;

use super::{ConnectError, Engine, EngineError, EngineObserver, Envelope, SharedEnvelope, SubscribeOutcome};
use crate::protocol::client_id;
use crate::redis_conn::{CommandConnection, RedisEndpoint, TimedConnection};
use crate::telemetry::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use keys::Keys;
use redis::AsyncCommands;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How a node reaches redis and which part of it it uses.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db`, `rediss://…` or `redis+unix:///path`.
    pub url: String,
    /// Key prefix; `faye` gives `faye/clients`, the empty string faye-redis's default layout.
    pub namespace: String,
    /// The connect timeout (Faye's `timeout`): clients count as gone after 1.6× and are
    /// collected after 2× without a ping.
    pub timeout: Duration,
    /// How often garbage collection of expired clients runs (faye-redis: 60 s).
    pub gc_interval: Duration,
    /// Where round-trip latency and reconnects are counted.
    pub metrics: Arc<Metrics>,
    /// A client whose queue redis estimates above this many bytes is destroyed as a slow
    /// consumer (`0`: no bound).
    pub max_queue_bytes: usize,
}

/// Lock lifetime for garbage collection, as faye-redis (120 s).
const GC_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) struct Inner {
    endpoint: RedisEndpoint,
    con: CommandConnection,
    metrics: Arc<Metrics>,
    keys: Keys,
    timeout: Duration,
    gc_interval: Duration,
    max_queue_bytes: usize,
    observer: OnceLock<Arc<dyn EngineObserver>>,
    /// False from the first failure of an outage until the next success: one warning each way.
    healthy: AtomicBool,
    listening: AtomicBool,
    /// The queue of the drain batcher, started with the first drain.
    drains: OnceLock<mpsc::UnboundedSender<DrainRequest>>,
    /// The `run_id` of the redis process last seen (see recovery.rs).
    run_id: std::sync::Mutex<Option<String>>,
}

/// One client's drain waiting for the next batch.
struct DrainRequest {
    queue: String,
    reply: oneshot::Sender<Result<Vec<Vec<u8>>, EngineError>>,
}

/// Most queues taken by one script call.
const DRAIN_BATCH: usize = 256;

/// Takes the queues of every client whose drain was asked while the previous batch was in
/// flight, in one script call: under load one round trip serves many clients; alone, a drain
/// goes out at once.
async fn drain_batches(inner: std::sync::Weak<Inner>, mut requests: mpsc::UnboundedReceiver<DrainRequest>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < DRAIN_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let mut invocation = scripts::TAKE_QUEUES.prepare_invoke();
        for request in &batch {
            invocation.key(&request.queue);
        }
        let result: redis::RedisResult<Vec<Vec<Vec<u8>>>> = invocation.invoke_async(&mut inner.con()).await;
        match inner.check(result) {
            Ok(lists) if lists.len() == batch.len() => {
                for (request, list) in batch.into_iter().zip(lists) {
                    let _ = request.reply.send(Ok(list));
                }
            }
            Ok(lists) => {
                tracing::warn!(asked = batch.len(), answered = lists.len(), "drain batch answer of the wrong length");
                for request in batch {
                    let _ = request
                        .reply
                        .send(Err(EngineError::Unavailable("drain batch answer of the wrong length".into())));
                }
            }
            Err(e) => {
                for request in batch {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Engine backed by redis (faye-redis compatible).
#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

use crate::clock::unix_ms as now_ms;

impl Inner {
    fn mark_ok(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(url = %self.endpoint.url(), "redis reachable again");
        }
    }

    fn mark_down(&self, error: &str) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(url = %self.endpoint.url(), error, "redis unavailable; answering clients with errors until it returns");
        }
    }

    fn listener_up(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    fn listener_down(&self) {
        if self.listening.swap(false, Ordering::Relaxed) {
            tracing::warn!("redis pub/sub connection lost; reconnecting");
        }
    }

    fn check<T>(&self, result: redis::RedisResult<T>) -> Result<T, EngineError> {
        match result {
            Ok(v) => {
                self.mark_ok();
                Ok(v)
            }
            Err(e) => {
                self.mark_down(&e.to_string());
                Err(EngineError::Unavailable(e.to_string()))
            }
        }
    }

    fn con(&self) -> TimedConnection {
        TimedConnection { inner: self.con.clone(), metrics: self.metrics.clone() }
    }

    /// Cutoff below which a client's last ping means it is gone (1.6 × timeout).
    fn exists_cutoff(&self) -> i64 {
        now_ms() - (self.timeout.as_millis() as i64 * 16 / 10)
    }

    async fn destroy(&self, client_id: &str) -> Result<bool, EngineError> {
        let result: redis::RedisResult<Vec<redis::Value>> =
            scripts::DESTROY.arg(self.keys.namespace()).arg(client_id).invoke_async(&mut self.con()).await;
        let values = self.check(result)?;
        let existed = matches!(values.first(), Some(redis::Value::Int(1)));
        if let Some(o) = self.observer.get() {
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

    /// One garbage collection pass under faye-redis's lock, so node.js and Rust nodes never
    /// collect the same clients at once.
    async fn gc(&self) -> Result<usize, EngineError> {
        let lock = self.keys.lock("gc");
        let now = now_ms();
        let expiry = now + GC_LOCK_TIMEOUT.as_millis() as i64 + 1;
        let mut con = self.con();
        let acquired: bool = self.check(con.set_nx(&lock, expiry).await)?;
        if !acquired {
            let current: Option<String> = self.check(con.get(&lock).await)?;
            let Some(current) = current else { return Ok(0) };
            let held_until = current.parse::<i64>().unwrap_or(i64::MAX);
            if now < held_until {
                return Ok(0);
            }
            let old: Option<String> = self.check(con.getset(&lock, expiry).await)?;
            if old.as_deref() != Some(current.as_str()) {
                return Ok(0);
            }
        }
        let cutoff = now - 2 * self.timeout.as_millis() as i64;
        let stale: Vec<String> = self.check(con.zrangebyscore(self.keys.clients(), 0, cutoff).await)?;
        let mut collected = 0;
        for id in &stale {
            if self.destroy(id).await? {
                collected += 1;
            }
        }
        if now_ms() < expiry {
            let _: redis::RedisResult<()> = con.del(&lock).await;
        }
        if collected > 0 {
            tracing::debug!(collected, "garbage-collected expired clients");
        }
        Ok(collected)
    }
}

impl RedisEngine {
    /// Connects the command connection; the pub/sub listener starts with [`Engine::start`].
    pub async fn connect(settings: RedisSettings) -> Result<Self, ConnectError> {
        let endpoint = RedisEndpoint::parse(&settings.url)?;
        endpoint.refuse_cluster(
            "the faye layout (faye-redis's keys and scripts)",
            "use --redis-layout native, or a plain or Sentinel redis",
        )?;
        let mut con = endpoint.commands().await?;
        crate::engine::layout_guard::claim(&mut con, &settings.namespace, crate::engine::layout_guard::Layout::Faye)
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                con,
                metrics: settings.metrics,
                keys: Keys::new(&settings.namespace),
                timeout: settings.timeout,
                gc_interval: settings.gc_interval,
                max_queue_bytes: settings.max_queue_bytes,
                observer: OnceLock::new(),
                healthy: AtomicBool::new(true),
                listening: AtomicBool::new(false),
                drains: OnceLock::new(),
                run_id: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Runs one garbage-collection pass now; returns how many clients were collected.
    pub async fn collect_garbage(&self) -> Result<usize, EngineError> {
        self.inner.gc().await
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn attach(&self, observer: Arc<dyn EngineObserver>) {
        let _ = self.inner.observer.set(observer);
    }

    fn start(&self, shutdown: CancellationToken) {
        tokio::spawn(listener::run(Arc::downgrade(&self.inner), shutdown.clone()));
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
            let added: redis::RedisResult<i64> = redis::cmd("ZADD")
                .arg(self.inner.keys.clients())
                .arg("NX")
                .arg(now_ms())
                .arg(&id)
                .query_async(&mut self.inner.con())
                .await;
            if self.inner.check(added)? == 1 {
                return Ok(id);
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
        let key = self.inner.keys.client_credentials(client_id);
        self.inner.check(crate::engine::credentials::store(&mut self.inner.con(), &key, credentials, ttl).await)
    }

    async fn credentials(&self, client_id: &str) -> Result<Option<Bytes>, EngineError> {
        let key = self.inner.keys.client_credentials(client_id);
        self.inner.check(crate::engine::credentials::load(&mut self.inner.con(), &key).await)
    }

    async fn client_exists(&self, client_id: &str) -> Result<bool, EngineError> {
        let score: Option<f64> =
            self.inner.check(self.inner.con().zscore(self.inner.keys.clients(), client_id).await)?;
        Ok(score.is_some_and(|s| s as i64 > self.inner.exists_cutoff()))
    }

    async fn ping(&self, client_id: &str) -> Result<(), EngineError> {
        // XX: a ping never resurrects a destroyed client.
        let r: redis::RedisResult<i64> = redis::cmd("ZADD")
            .arg(self.inner.keys.clients())
            .arg("XX")
            .arg(now_ms())
            .arg(client_id)
            .query_async(&mut self.inner.con())
            .await;
        self.inner.check(r).map(|_| ())
    }

    async fn subscribe_limited(
        &self,
        client_id: &str,
        channel: &str,
        max: usize,
    ) -> Result<SubscribeOutcome, EngineError> {
        let r: redis::RedisResult<i64> = scripts::SUBSCRIBE_LIMITED
            .key(self.inner.keys.client_channels(client_id))
            .key(self.inner.keys.channel(channel))
            .arg(channel)
            .arg(client_id)
            .arg(max.min(i64::MAX as usize) as i64)
            .invoke_async(&mut self.inner.con())
            .await;
        Ok(match self.inner.check(r)? {
            1 => {
                if let Some(o) = self.inner.observer.get() {
                    o.subscribed(client_id, channel);
                }
                SubscribeOutcome::Added
            }
            -1 => SubscribeOutcome::LimitReached,
            _ => SubscribeOutcome::Existing,
        })
    }

    async fn unsubscribe(&self, client_id: &str, channel: &str) -> Result<bool, EngineError> {
        let (removed, _): (i64, i64) = self.inner.check(
            redis::pipe()
                .atomic()
                .srem(self.inner.keys.client_channels(client_id), channel)
                .srem(self.inner.keys.channel(channel), client_id)
                .query_async(&mut self.inner.con())
                .await,
        )?;
        if removed == 1
            && let Some(o) = self.inner.observer.get()
        {
            o.unsubscribed(client_id, channel);
        }
        Ok(removed == 1)
    }

    async fn publish(&self, envelope: SharedEnvelope) -> Result<(), EngineError> {
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        invocation
            .arg(self.inner.keys.namespace())
            .arg(envelope.encoded.as_ref())
            .arg(self.inner.exists_cutoff())
            .arg(self.inner.max_queue_bytes);
        for c in envelope.patterns() {
            invocation.arg(c);
        }
        let r: redis::RedisResult<Vec<redis::Value>> = invocation.invoke_async(&mut self.inner.con()).await;
        let result = self.inner.check(r)?;
        // After the recipient count: pairs of (client id, estimated queue bytes) over the bound.
        for pair in result.get(1..).unwrap_or_default().chunks_exact(2) {
            let Ok(id) = redis::from_redis_value_ref::<String>(&pair[0]) else { continue };
            let bytes = redis::from_redis_value_ref::<i64>(&pair[1]).unwrap_or(0);
            if let Some(o) = self.inner.observer.get() {
                o.slow_consumer(&id, usize::try_from(bytes).unwrap_or(0));
            }
            self.inner.destroy(&id).await?;
        }
        Ok(())
    }

    async fn health(&self) -> Result<(), EngineError> {
        let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut self.inner.con()).await;
        self.inner.check(r).map(|_| ())
    }

    async fn take_queued(&self, client_id: &str) -> Result<Vec<SharedEnvelope>, EngineError> {
        let drains = self.inner.drains.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(drain_batches(Arc::downgrade(&self.inner), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let request = DrainRequest { queue: self.inner.keys.client_messages(client_id), reply };
        if drains.send(request).is_err() {
            return Err(EngineError::Unavailable("drain batcher stopped".into()));
        }
        let raw = answer.await.map_err(|_| EngineError::Unavailable("drain batcher stopped".into()))??;
        let mut out = Vec::with_capacity(raw.len());
        for json in raw {
            match Envelope::from_json(json.into()) {
                Some(env) => out.push(env),
                None => tracing::warn!(client_id, "dropping a queued message that is not a Bayeux message"),
            }
        }
        Ok(out)
    }

    async fn requeue(&self, client_id: &str, envelopes: Vec<SharedEnvelope>) -> Result<(), EngineError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut invocation = scripts::REQUEUE.prepare_invoke();
        invocation
            .key(self.inner.keys.client_messages(client_id))
            .key(self.inner.keys.clients())
            .arg(client_id)
            .arg(self.inner.keys.messages_channel());
        for env in &envelopes {
            invocation.arg(env.encoded.as_ref());
        }
        let r: redis::RedisResult<i64> = invocation.invoke_async(&mut self.inner.con()).await;
        self.inner.check(r).map(|_| ())
    }
}
