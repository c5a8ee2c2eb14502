//! The in-process engine: one node, no redis. Clients expire when not seen for twice the
//! connect timeout, as in Faye's memory engine.

use super::{Engine, EngineError, EngineObserver, SharedEnvelope};
use crate::protocol::{channel, client_id};
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
}

struct Inner {
    clients: DashMap<Arc<str>, ClientEntry>,
    channels: DashMap<Arc<str>, HashSet<Arc<str>>>,
    observer: OnceLock<Arc<dyn EngineObserver>>,
    expire_after: Duration,
}

/// In-process engine for a stand-alone node.
#[derive(Clone)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

impl MemoryEngine {
    /// An engine whose clients expire after `2 × timeout` without a ping.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                clients: DashMap::new(),
                channels: DashMap::new(),
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
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match inner.upgrade() {
                    Some(inner) => inner.expire(),
                    None => return,
                }
            }
        });
    }

    async fn create_client(&self) -> Result<String, EngineError> {
        loop {
            let id: Arc<str> = client_id::generate().into();
            if let dashmap::Entry::Vacant(slot) = self.inner.clients.entry(id.clone()) {
                slot.insert(ClientEntry {
                    last_seen: Instant::now(),
                    subscriptions: HashSet::new(),
                    queue: VecDeque::new(),
                });
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

    async fn subscribe(&self, client_id: &str, channel: &str) -> Result<bool, EngineError> {
        let (id, channel): (Arc<str>, Arc<str>) = {
            let Some(mut entry) = self.inner.clients.get_mut(client_id) else {
                return Ok(false);
            };
            let id = entry.key().clone();
            let channel: Arc<str> = channel.into();
            if !entry.subscriptions.insert(channel.clone()) {
                return Ok(false);
            }
            (id, channel)
        };
        self.inner.channels.entry(channel.clone()).or_default().insert(id.clone());
        if let Some(o) = self.inner.observer() {
            o.subscribed(&id, &channel);
        }
        Ok(true)
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
        let patterns = channel::expand(envelope.channel());
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
        for id in recipients {
            let queued = match self.inner.clients.get_mut(&*id) {
                Some(mut entry) => {
                    entry.queue.push_back(envelope.clone());
                    true
                }
                None => false,
            };
            if queued && let Some(o) = self.inner.observer() {
                o.messages_waiting(&id);
            }
        }
        Ok(())
    }

    fn queued_messages(&self) -> Option<u64> {
        Some(self.inner.clients.iter().map(|e| e.queue.len() as u64).sum())
    }

    async fn take_queued(&self, client_id: &str) -> Result<Vec<SharedEnvelope>, EngineError> {
        Ok(match self.inner.clients.get_mut(client_id) {
            Some(mut entry) => entry.queue.drain(..).collect(),
            None => Vec::new(),
        })
    }

    async fn requeue(&self, client_id: &str, envelopes: Vec<SharedEnvelope>) -> Result<(), EngineError> {
        let requeued = match self.inner.clients.get_mut(client_id) {
            Some(mut entry) => {
                for env in envelopes.into_iter().rev() {
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
