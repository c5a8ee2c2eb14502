//! Engines hold clients, subscriptions and queued messages. The memory engine serves one
//! node; the redis engine (faye-redis layout) lets nodes share them with node.js Faye; the
//! native engine (native redis layout) lets our nodes share them with node-side fan-out.
//! Server and transport talk only to the [`Engine`] trait, so any engine plugs in unchanged.

pub(crate) mod credentials;
pub mod layout_guard;
pub(crate) mod local;
pub mod memory;
pub mod native;
pub mod redis;

use crate::protocol::Message;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// A published message ready for delivery: parsed once, encoded once. Every recipient's
/// queue holds the same `Arc`, and every reply splices in the same bytes.
#[derive(Debug)]
pub struct Envelope {
    /// The message as delivered: what the publisher sent, minus `clientId`.
    pub message: Message,
    /// `message` encoded as one JSON object.
    pub encoded: Bytes,
    /// False when subscribers of `/**` must not receive it (a `/service/**` publish on a
    /// node that forbids wildcard service delivery).
    root_wildcard: bool,
}

impl Envelope {
    /// Wraps a published message for delivery, dropping `clientId` and encoding it once.
    pub fn new(published: &Message) -> Arc<Self> {
        let message = published.for_delivery();
        let encoded = crate::protocol::codec::encode(&message);
        Arc::new(Self { message, encoded, root_wildcard: true })
    }

    /// As [`Envelope::new`], for a message that subscribers of `/**` must not receive
    /// (`forbid_wildcard_service`): it reaches only subscriptions naming its own part of the tree.
    pub fn new_without_root_wildcard(published: &Message) -> Arc<Self> {
        let message = published.for_delivery();
        let encoded = crate::protocol::codec::encode(&message);
        Arc::new(Self { message, encoded, root_wildcard: false })
    }

    /// Wraps a message read back from a queue (JSON of the whole published message). The
    /// bytes are reused as-is when they carry no `clientId`; otherwise they are re-encoded.
    pub fn from_json(json: Bytes) -> Option<Arc<Self>> {
        Self::from_json_with(json, true)
    }

    /// As [`Envelope::from_json`], saying whether subscribers of `/**` receive it.
    pub(crate) fn from_json_with(json: Bytes, root_wildcard: bool) -> Option<Arc<Self>> {
        let message: Message = serde_json::from_slice(&json).ok()?;
        if message.malformed.is_some() || message.channel.is_none() {
            return None;
        }
        if message.client_id.is_none() {
            Some(Arc::new(Self { message, encoded: json, root_wildcard }))
        } else {
            let message = message.for_delivery();
            let encoded = crate::protocol::codec::encode(&message);
            Some(Arc::new(Self { message, encoded, root_wildcard }))
        }
    }

    /// False when subscribers of `/**` must not receive it (see [`Envelope::new_without_root_wildcard`]).
    pub fn reaches_root_wildcard(&self) -> bool {
        self.root_wildcard
    }

    /// The channel it was published to.
    pub fn channel(&self) -> &str {
        self.message.channel_str()
    }

    /// The subscriptions that receive it: the expansion of its channel, without `/**` when
    /// it was published with [`Envelope::new_without_root_wildcard`].
    pub fn patterns(&self) -> Vec<String> {
        let mut patterns = crate::protocol::channel::expand(self.channel());
        if !self.root_wildcard {
            patterns.retain(|p| p != "/**");
        }
        patterns
    }
}

/// What a subscribe under a per-client limit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// The subscription is new.
    Added,
    /// The client was already subscribed to that channel.
    Existing,
    /// The client already holds the most subscriptions allowed; nothing changed.
    LimitReached,
}

/// Shared handle to an [`Envelope`].
pub type SharedEnvelope = Arc<Envelope>;

/// A publish already on its way to the backing store: resolves once it is stored.
pub type PublishReceipt = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EngineError>> + Send>>;

/// Why an engine operation failed.
#[derive(Debug, Clone, Error)]
pub enum EngineError {
    /// The backing store cannot be reached right now.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// Why a redis engine could not start.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// Redis could not be reached, or the URL is wrong.
    #[error(transparent)]
    Redis(#[from] crate::redis_conn::RedisConnError),
    /// The namespace is used by the other redis layout, or could not be checked.
    #[error(transparent)]
    Layout(#[from] layout_guard::LayoutError),
}

/// What an engine tells the node about its clients.
pub trait EngineObserver: Send + Sync + 'static {
    /// Messages were queued for this client; the node holding its connection should drain them.
    fn messages_waiting(&self, client_id: &str);
    /// The client was destroyed (disconnect or expiry).
    fn client_destroyed(&self, client_id: &str);
    /// The client subscribed to a channel it was not subscribed to.
    fn subscribed(&self, _client_id: &str, _channel: &str) {}
    /// The client left a channel it was subscribed to.
    fn unsubscribed(&self, _client_id: &str, _channel: &str) {}
    /// Another node destroyed the client: release whatever this node holds for it.
    fn client_closed(&self, _client_id: &str) {}
    /// Notifications may have been missed: every client held here should drain its queue.
    fn redrain_all(&self) {}
    /// The client's queue grew past the engine's bound (`queued_bytes` > the limit); the
    /// engine destroys it right after this call.
    fn slow_consumer(&self, _client_id: &str, _queued_bytes: usize) {}
    /// The clients this node holds (sessions, held connects, sockets): after the backing
    /// store may have lost its data, the engine checks that they still exist.
    fn held_clients(&self) -> Vec<Arc<str>> {
        Vec::new()
    }
    /// The backing store lost the client (a restart without persistence): answer it at once
    /// with the unknown-client error so it handshakes again, instead of holding it until its
    /// connect times out.
    fn client_lost(&self, client_id: &str) {
        self.client_closed(client_id);
    }
}

/// Storage of clients, subscriptions and message queues (Faye's engine interface).
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Registers the node's observer; called once before any other call.
    fn attach(&self, observer: Arc<dyn EngineObserver>);
    /// Starts background work (expiry, listeners) until `shutdown` is cancelled.
    fn start(&self, shutdown: CancellationToken);
    /// Creates a client with a fresh id and returns the id.
    async fn create_client(&self) -> Result<String, EngineError>;
    /// Destroys a client: its subscriptions and queue go; true if it existed.
    async fn destroy_client(&self, client_id: &str) -> Result<bool, EngineError>;
    /// True if the client exists and has not expired.
    async fn client_exists(&self, client_id: &str) -> Result<bool, EngineError>;
    /// Marks the client as seen now, postponing its expiry.
    async fn ping(&self, client_id: &str) -> Result<(), EngineError>;
    /// The client's deliveries go out through this node from now on (a connect that waits for
    /// messages, or a socket bound here). The native redis layout moves its session here.
    async fn claim(&self, _client_id: &str) -> Result<(), EngineError> {
        Ok(())
    }
    /// Subscribes without a limit; true if the subscription is new.
    async fn subscribe(&self, client_id: &str, channel: &str) -> Result<bool, EngineError> {
        Ok(self.subscribe_limited(client_id, channel, usize::MAX).await? == SubscribeOutcome::Added)
    }
    /// Subscribes unless the client already holds `max` subscriptions (re-subscribing to a
    /// channel it holds is not refused). Engines check and add in one step.
    async fn subscribe_limited(
        &self,
        client_id: &str,
        channel: &str,
        max: usize,
    ) -> Result<SubscribeOutcome, EngineError>;
    /// Unsubscribes; true if the client was subscribed.
    async fn unsubscribe(&self, client_id: &str, channel: &str) -> Result<bool, EngineError>;
    /// Queues the message for every client subscribed to a channel that matches it, once each.
    async fn publish(&self, envelope: SharedEnvelope) -> Result<(), EngineError>;
    /// Starts a publish now and returns without waiting for it, so that one connection's
    /// publishes can travel together; what the caller does next reaches the store after it.
    /// `None`: this engine cannot, and the caller awaits [`Engine::publish`].
    fn start_publish(&self, _envelope: &SharedEnvelope) -> Option<PublishReceipt> {
        None
    }
    /// Removes and returns every message queued for the client, oldest first.
    async fn take_queued(&self, client_id: &str) -> Result<Vec<SharedEnvelope>, EngineError>;
    /// Messages queued for clients in total, where that is cheap to know.
    fn queued_messages(&self) -> Option<u64> {
        None
    }
    /// Checks that the backing store answers (for `/healthz`).
    async fn health(&self) -> Result<(), EngineError> {
        Ok(())
    }
    /// Puts messages that could not be delivered back at the head of the client's queue.
    async fn requeue(&self, client_id: &str, envelopes: Vec<SharedEnvelope>) -> Result<(), EngineError>;
    /// Keeps what the client proved at its handshake (access control: its token's claims)
    /// where every node of the cluster reads it, for at most `ttl`; `None` forgets it.
    async fn set_credentials(
        &self,
        client_id: &str,
        credentials: Option<Bytes>,
        ttl: Duration,
    ) -> Result<(), EngineError>;
    /// What [`Engine::set_credentials`] kept for the client, if it is still there.
    async fn credentials(&self, client_id: &str) -> Result<Option<Bytes>, EngineError>;
    /// At shutdown, after the node released its clients: waits (at most `within`) for the
    /// sessions held here to move to other nodes. Engines with nothing to hand over return at once.
    async fn drain(&self, _within: Duration) {}
}
