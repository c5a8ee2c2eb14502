//! The in-process engine: one node, no redis. Clients expire when not seen for twice the
//! connect timeout, as in Faye's memory engine. Each client's queue is bounded in bytes: a
//! client whose queue outgrows the bound (a slow consumer) is destroyed.

use super::local::LocalClients;
use super::{Engine, EngineError, EngineObserver, SharedEnvelope, SubscribeOutcome};
use crate::protocol::client_id;
use async_trait::async_trait;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Inner {
    clients: LocalClients,
    /// Access control's credentials by client id; empty unless tokens are configured.
    credentials: dashmap::DashMap<Arc<str>, (bytes::Bytes, Instant)>,
    observer: OnceLock<Arc<dyn EngineObserver>>,
    expire_after: Duration,
}

/// In-process engine for a stand-alone node.
#[derive(Clone)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

impl MemoryEngine {
    /// An engine whose clients expire after `2 × timeout` without a ping; queues are unbounded.
    pub fn new(timeout: Duration) -> Self {
        Self::with_queue_limit(timeout, 0)
    }

    /// As [`MemoryEngine::new`], destroying any client whose queue grows past
    /// `max_queue_bytes` (encoded size; `0` leaves queues unbounded).
    pub fn with_queue_limit(timeout: Duration, max_queue_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                clients: LocalClients::new(max_queue_bytes),
                credentials: dashmap::DashMap::new(),
                observer: OnceLock::new(),
                expire_after: timeout * 2,
            }),
        }
    }
}

impl Inner {
    fn observer(&self) -> Option<&Arc<dyn EngineObserver>> {
        self.observer.get()
    }

    fn destroy(&self, client_id: &str) -> bool {
        self.credentials.remove(client_id);
        let Some(removed) = self.clients.remove(client_id) else {
            return false;
        };
        if let Some(o) = self.observer() {
            for sub in &removed.subscriptions {
                o.unsubscribed(&removed.id, sub);
            }
            o.client_destroyed(&removed.id);
        }
        true
    }

    fn expire(&self) {
        let Some(cutoff) = Instant::now().checked_sub(self.expire_after) else { return };
        for id in self.clients.unseen_since(cutoff) {
            // Re-check: a ping may have arrived meanwhile.
            if self.clients.is_unseen_since(&id, cutoff) {
                tracing::debug!(client_id = %id, "client expired");
                self.destroy(&id);
            }
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn attach(&self, observer: Arc<dyn EngineObserver>) {
        let _ = self.inner.observer.set(observer);
    }

    fn start(&self, shutdown: CancellationToken) {
        let inner = Arc::downgrade(&self.inner);
        let period = (self.inner.expire_after / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        crate::periodic::every(period, shutdown, move || {
            let inner = inner.upgrade();
            async move {
                let Some(inner) = inner else { return false };
                inner.expire();
                true
            }
        });
    }

    async fn create_client(&self) -> Result<String, EngineError> {
        loop {
            let id = client_id::generate();
            if self.inner.clients.insert(&id) {
                return Ok(id);
            }
        }
    }

    async fn destroy_client(&self, client_id: &str) -> Result<bool, EngineError> {
        Ok(self.inner.destroy(client_id))
    }

    async fn set_credentials(
        &self,
        client_id: &str,
        credentials: Option<bytes::Bytes>,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        match credentials {
            Some(c) if self.inner.clients.contains(client_id) => {
                self.inner.credentials.insert(Arc::from(client_id), (c, Instant::now() + ttl));
            }
            _ => {
                self.inner.credentials.remove(client_id);
            }
        }
        Ok(())
    }

    async fn credentials(&self, client_id: &str) -> Result<Option<bytes::Bytes>, EngineError> {
        Ok(self.inner.credentials.get(client_id).filter(|e| e.1 > Instant::now()).map(|e| e.0.clone()))
    }

    async fn client_exists(&self, client_id: &str) -> Result<bool, EngineError> {
        Ok(self.inner.clients.contains(client_id))
    }

    async fn ping(&self, client_id: &str) -> Result<(), EngineError> {
        self.inner.clients.touch(client_id);
        Ok(())
    }

    async fn subscribe_limited(
        &self,
        client_id: &str,
        channel: &str,
        max: usize,
    ) -> Result<SubscribeOutcome, EngineError> {
        let outcome = self.inner.clients.subscribe(client_id, channel, max);
        if outcome == SubscribeOutcome::Added
            && let Some(o) = self.inner.observer()
        {
            o.subscribed(client_id, channel);
        }
        Ok(outcome)
    }

    async fn unsubscribe(&self, client_id: &str, channel: &str) -> Result<bool, EngineError> {
        let removed = self.inner.clients.unsubscribe(client_id, channel);
        if removed && let Some(o) = self.inner.observer() {
            o.unsubscribed(client_id, channel);
        }
        Ok(removed)
    }

    async fn publish(&self, envelope: SharedEnvelope) -> Result<(), EngineError> {
        let patterns = envelope.patterns();
        let observer = self.inner.observer();
        let slow = self.inner.clients.fan_out(&envelope, &patterns, |id| {
            if let Some(o) = observer {
                o.messages_waiting(id);
            }
        });
        for (id, queued_bytes) in slow {
            if let Some(o) = observer {
                o.slow_consumer(&id, queued_bytes);
            }
            self.inner.destroy(&id);
        }
        Ok(())
    }

    fn queued_messages(&self) -> Option<u64> {
        Some(self.inner.clients.queued_messages())
    }

    async fn take_queued(&self, client_id: &str) -> Result<Vec<SharedEnvelope>, EngineError> {
        Ok(self.inner.clients.take(client_id))
    }

    async fn requeue(&self, client_id: &str, envelopes: Vec<SharedEnvelope>) -> Result<(), EngineError> {
        if self.inner.clients.requeue(client_id, envelopes)
            && let Some(o) = self.inner.observer()
        {
            o.messages_waiting(client_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Envelope;
    use crate::protocol::Message;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        waiting: Mutex<Vec<String>>,
        destroyed: Mutex<Vec<String>>,
    }
    impl EngineObserver for Recorder {
        fn messages_waiting(&self, id: &str) {
            self.waiting.lock().unwrap().push(id.to_string());
        }
        fn client_destroyed(&self, id: &str) {
            self.destroyed.lock().unwrap().push(id.to_string());
        }
    }

    fn msg(channel: &str) -> SharedEnvelope {
        let m: Message = serde_json::from_str(&format!(r#"{{"channel":"{channel}","data":1}}"#)).unwrap();
        Envelope::new(&m)
    }

    #[tokio::test]
    async fn publish_reaches_each_matching_client_once() {
        let engine = MemoryEngine::new(Duration::from_secs(10));
        let rec = Arc::new(Recorder::default());
        engine.attach(rec.clone());
        let a = engine.create_client().await.unwrap();
        let b = engine.create_client().await.unwrap();
        engine.subscribe(&a, "/x/**").await.unwrap();
        engine.subscribe(&a, "/x/y").await.unwrap();
        engine.subscribe(&b, "/x/*").await.unwrap();
        engine.publish(msg("/x/y")).await.unwrap();
        engine.publish(msg("/x/y/z")).await.unwrap();
        assert_eq!(engine.take_queued(&a).await.unwrap().len(), 2);
        assert_eq!(engine.take_queued(&b).await.unwrap().len(), 1);
        assert!(engine.take_queued(&a).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn clients_expire_after_twice_the_timeout() {
        let engine = MemoryEngine::new(Duration::from_secs(10));
        let rec = Arc::new(Recorder::default());
        engine.attach(rec.clone());
        let token = CancellationToken::new();
        engine.start(token.clone());
        let a = engine.create_client().await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        engine.ping(&a).await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(engine.client_exists(&a).await.unwrap(), "ping postpones expiry");
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(!engine.client_exists(&a).await.unwrap());
        assert_eq!(rec.destroyed.lock().unwrap().as_slice(), [a]);
        token.cancel();
    }

    #[derive(Default)]
    struct SlowRecorder {
        slow: Mutex<Vec<(String, usize)>>,
        destroyed: Mutex<Vec<String>>,
    }
    impl EngineObserver for SlowRecorder {
        fn messages_waiting(&self, _: &str) {}
        fn client_destroyed(&self, id: &str) {
            self.destroyed.lock().unwrap().push(id.to_string());
        }
        fn slow_consumer(&self, id: &str, bytes: usize) {
            self.slow.lock().unwrap().push((id.to_string(), bytes));
        }
    }

    #[tokio::test]
    async fn a_queue_past_its_bound_destroys_the_client() {
        let size = msg("/q").encoded.len();
        let engine = MemoryEngine::with_queue_limit(Duration::from_secs(10), size * 3);
        let rec = Arc::new(SlowRecorder::default());
        engine.attach(rec.clone());
        let slow = engine.create_client().await.unwrap();
        let fast = engine.create_client().await.unwrap();
        engine.subscribe(&slow, "/q").await.unwrap();
        engine.subscribe(&fast, "/q").await.unwrap();
        for _ in 0..3 {
            engine.publish(msg("/q")).await.unwrap();
            assert_eq!(engine.take_queued(&fast).await.unwrap().len(), 1, "draining keeps a client under its bound");
        }
        assert!(rec.slow.lock().unwrap().is_empty(), "at the bound is not past it");
        engine.publish(msg("/q")).await.unwrap();
        assert_eq!(rec.slow.lock().unwrap().as_slice(), [(slow.clone(), size * 4)]);
        assert_eq!(rec.destroyed.lock().unwrap().as_slice(), std::slice::from_ref(&slow));
        assert!(!engine.client_exists(&slow).await.unwrap());
        assert_eq!(engine.queued_messages(), Some(1), "the slow client's queue is gone");
        assert!(engine.client_exists(&fast).await.unwrap());
    }

    #[tokio::test]
    async fn subscriptions_stop_at_the_limit() {
        let engine = MemoryEngine::new(Duration::from_secs(10));
        let a = engine.create_client().await.unwrap();
        assert_eq!(engine.subscribe_limited(&a, "/a", 2).await.unwrap(), SubscribeOutcome::Added);
        assert_eq!(engine.subscribe_limited(&a, "/b", 2).await.unwrap(), SubscribeOutcome::Added);
        assert_eq!(engine.subscribe_limited(&a, "/c", 2).await.unwrap(), SubscribeOutcome::LimitReached);
        assert_eq!(engine.subscribe_limited(&a, "/a", 2).await.unwrap(), SubscribeOutcome::Existing);
        engine.publish(msg("/c")).await.unwrap();
        assert!(engine.take_queued(&a).await.unwrap().is_empty(), "the refused subscription was not made");
        engine.unsubscribe(&a, "/a").await.unwrap();
        assert_eq!(engine.subscribe_limited(&a, "/c", 2).await.unwrap(), SubscribeOutcome::Added);
    }

    #[tokio::test]
    async fn root_wildcard_can_be_left_out() {
        let engine = MemoryEngine::new(Duration::from_secs(10));
        let all = engine.create_client().await.unwrap();
        let service = engine.create_client().await.unwrap();
        engine.subscribe(&all, "/**").await.unwrap();
        engine.subscribe(&service, "/service/**").await.unwrap();
        let m: Message = serde_json::from_str(r#"{"channel":"/service/x","data":1}"#).unwrap();
        engine.publish(Envelope::new_without_root_wildcard(&m)).await.unwrap();
        assert!(engine.take_queued(&all).await.unwrap().is_empty());
        assert_eq!(engine.take_queued(&service).await.unwrap().len(), 1);
        engine.publish(Envelope::new(&m)).await.unwrap();
        assert_eq!(engine.take_queued(&all).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn requeue_puts_messages_back_first() {
        let engine = MemoryEngine::new(Duration::from_secs(10));
        let a = engine.create_client().await.unwrap();
        engine.subscribe(&a, "/q").await.unwrap();
        engine.publish(msg("/q")).await.unwrap();
        let first = engine.take_queued(&a).await.unwrap();
        engine.publish(msg("/q")).await.unwrap();
        engine.requeue(&a, first.clone()).await.unwrap();
        let all = engine.take_queued(&a).await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(Arc::ptr_eq(&all[0], &first[0]));
    }
}
