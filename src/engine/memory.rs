//! The in-process engine: one node, no redis. Clients expire when not seen for twice the
//! connect timeout, as in Faye's memory engine. Each client's queue is bounded in bytes: a
//! client whose queue outgrows the bound (a slow consumer) is destroyed.

use super::{Engine, EngineError, EngineObserver, SharedEnvelope, SubscribeOutcome};
use crate::protocol::client_id;
use async_trait::async_trait;
use dashmap::DashMap;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct ClientEntry {
    last_seen: Instant,
    subscriptions: HashSet<Arc<str>>,
    queue: VecDeque<SharedEnvelope>,
    /// Encoded size of everything in `queue`.
    queued_bytes: usize,
}

impl ClientEntry {
    fn new() -> Self {
        Self { last_seen: Instant::now(), subscriptions: HashSet::new(), queue: VecDeque::new(), queued_bytes: 0 }
    }
}

struct Inner {
    clients: DashMap<Arc<str>, ClientEntry>,
    channels: DashMap<Arc<str>, HashSet<Arc<str>>>,
    observer: OnceLock<Arc<dyn EngineObserver>>,
    expire_after: Duration,
    /// A client whose queue holds more than this many bytes is destroyed.
    max_queue_bytes: usize,
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
                clients: DashMap::new(),
                channels: DashMap::new(),
                observer: OnceLock::new(),
                expire_after: timeout * 2,
                max_queue_bytes: if max_queue_bytes == 0 { usize::MAX } else { max_queue_bytes },
            }),
        }
    }
}

impl Inner {
    fn observer(&self) -> Option<&Arc<dyn EngineObserver>> {
        self.observer.get()
    }

    fn destroy(&self, client_id: &str) -> bool {
        let Some((id, entry)) = self.clients.remove(client_id) else {
            return false;
        };
        for sub in &entry.subscriptions {
            self.remove_from_channel(sub, &id);
            if let Some(o) = self.observer() {
                o.unsubscribed(&id, sub);
            }
        }
        if let Some(o) = self.observer() {
            o.client_destroyed(&id);
        }
        true
    }

    fn remove_from_channel(&self, channel: &str, client_id: &str) {
        let now_empty = match self.channels.get_mut(channel) {
            Some(mut set) => {
                set.remove(client_id);
                set.is_empty()
            }
            None => false,
        };
        if now_empty {
            self.channels.remove_if(channel, |_, set| set.is_empty());
        }
    }

    fn expire(&self) {
        let now = Instant::now();
        let stale: Vec<Arc<str>> = self
            .clients
            .iter()
            .filter(|e| now.duration_since(e.last_seen) > self.expire_after)
            .map(|e| e.key().clone())
            .collect();
        for id in stale {
            // Re-check under the entry: a ping may have arrived meanwhile.
            let still_stale =
                self.clients.get(&*id).is_some_and(|e| now.duration_since(e.last_seen) > self.expire_after);
            if still_stale {
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
            let id: Arc<str> = client_id::generate().into();
            if let dashmap::Entry::Vacant(slot) = self.inner.clients.entry(id.clone()) {
                slot.insert(ClientEntry::new());
                return Ok(id.to_string());
            }
        }
    }

    async fn destroy_client(&self, client_id: &str) -> Result<bool, EngineError> {
        Ok(self.inner.destroy(client_id))
    }

    async fn client_exists(&self, client_id: &str) -> Result<bool, EngineError> {
        Ok(self.inner.clients.contains_key(client_id))
    }

    async fn ping(&self, client_id: &str) -> Result<(), EngineError> {
        if let Some(mut e) = self.inner.clients.get_mut(client_id) {
            e.last_seen = Instant::now();
        }
        Ok(())
    }

    async fn subscribe_limited(
        &self,
        client_id: &str,
        channel: &str,
        max: usize,
    ) -> Result<SubscribeOutcome, EngineError> {
        let (id, channel): (Arc<str>, Arc<str>) = {
            let Some(mut entry) = self.inner.clients.get_mut(client_id) else {
                return Ok(SubscribeOutcome::Existing);
            };
            if entry.subscriptions.contains(channel) {
                return Ok(SubscribeOutcome::Existing);
            }
            if entry.subscriptions.len() >= max {
                return Ok(SubscribeOutcome::LimitReached);
            }
            let id = entry.key().clone();
            let channel: Arc<str> = channel.into();
            entry.subscriptions.insert(channel.clone());
            (id, channel)
        };
        self.inner.channels.entry(channel.clone()).or_default().insert(id.clone());
        if let Some(o) = self.inner.observer() {
            o.subscribed(&id, &channel);
        }
        Ok(SubscribeOutcome::Added)
    }

    async fn unsubscribe(&self, client_id: &str, channel: &str) -> Result<bool, EngineError> {
        let removed = match self.inner.clients.get_mut(client_id) {
            Some(mut entry) => entry.subscriptions.remove(channel),
            None => false,
        };
        self.inner.remove_from_channel(channel, client_id);
        if removed && let Some(o) = self.inner.observer() {
            o.unsubscribed(client_id, channel);
        }
        Ok(removed)
    }

    async fn publish(&self, envelope: SharedEnvelope) -> Result<(), EngineError> {
        let patterns = envelope.patterns();
        let mut recipients: Vec<Arc<str>> = Vec::new();
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        for pattern in &patterns {
            if let Some(set) = self.inner.channels.get(pattern.as_str()) {
                for id in set.iter() {
                    if seen.insert(id.clone()) {
                        recipients.push(id.clone());
                    }
                }
            }
        }
        let size = envelope.encoded.len();
        let mut slow: Vec<(Arc<str>, usize)> = Vec::new();
        for id in recipients {
            let queued = match self.inner.clients.get_mut(&*id) {
                Some(mut entry) => {
                    entry.queue.push_back(envelope.clone());
                    entry.queued_bytes = entry.queued_bytes.saturating_add(size);
                    if entry.queued_bytes > self.inner.max_queue_bytes {
                        slow.push((id.clone(), entry.queued_bytes));
                    }
                    true
                }
                None => false,
            };
            if queued && let Some(o) = self.inner.observer() {
                o.messages_waiting(&id);
            }
        }
        // Outside every entry guard: destroying takes the client's and its channels' locks.
        for (id, queued_bytes) in slow {
            if let Some(o) = self.inner.observer() {
                o.slow_consumer(&id, queued_bytes);
            }
            self.inner.destroy(&id);
        }
        Ok(())
    }

    fn queued_messages(&self) -> Option<u64> {
        Some(self.inner.clients.iter().map(|e| e.queue.len() as u64).sum())
    }

    async fn take_queued(&self, client_id: &str) -> Result<Vec<SharedEnvelope>, EngineError> {
        Ok(match self.inner.clients.get_mut(client_id) {
            Some(mut entry) => {
                entry.queued_bytes = 0;
                entry.queue.drain(..).collect()
            }
            None => Vec::new(),
        })
    }

    async fn requeue(&self, client_id: &str, envelopes: Vec<SharedEnvelope>) -> Result<(), EngineError> {
        let requeued = match self.inner.clients.get_mut(client_id) {
            Some(mut entry) => {
                for env in envelopes.into_iter().rev() {
                    entry.queued_bytes = entry.queued_bytes.saturating_add(env.encoded.len());
                    entry.queue.push_front(env);
                }
                true
            }
            None => false,
        };
        if requeued && let Some(o) = self.inner.observer() {
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
