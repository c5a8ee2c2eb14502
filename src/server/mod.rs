//! Transport-agnostic Bayeux processing: a batch of messages in, replies (and delivered
//! messages) out; the extension pipeline; server events; socket delivery pumps.

pub mod access;
mod connect;
mod disconnect;
pub mod extension;
mod handshake;
mod limits;
pub mod protected_channels;
mod publish;
pub mod session;
mod subscribe;

use crate::engine::{Engine, EngineError, SharedEnvelope};
use crate::protocol::{BayeuxError, Message, advice, channel, codec};
use crate::telemetry::Metrics;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use access::{AccessControl, TokenKeyError};
pub use extension::{Extension, RequestContext};
pub use protected_channels::ProtectedChannels;
pub(crate) use session::Sessions;
pub use session::{FeedEvent, OutFrame, SocketFeed, SocketHandle};

/// How long a connect that failed on the engine (redis away) waits before its error reply,
/// so clients retry at that pace rather than in a tight loop.
const ENGINE_FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// Clients released by a shutdown are advised to reconnect within this many milliseconds.
const SHUTDOWN_RECONNECT_SPREAD_MS: u64 = 2000;

/// Something that happened on this node, for the application to observe.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A client completed a handshake.
    Handshake {
        /// The new client's id.
        client_id: String,
    },
    /// A client subscribed to a channel it was not subscribed to.
    Subscribe {
        /// The client.
        client_id: String,
        /// The channel or pattern.
        channel: String,
    },
    /// A client left a channel.
    Unsubscribe {
        /// The client.
        client_id: String,
        /// The channel or pattern.
        channel: String,
    },
    /// A message was published through this node.
    Publish {
        /// The publisher, when it sent a `clientId`.
        client_id: Option<String>,
        /// The channel.
        channel: String,
        /// The payload.
        data: serde_json::Value,
    },
    /// A client was destroyed (disconnect or expiry).
    Disconnect {
        /// The client.
        client_id: String,
    },
}

/// Settings of the Bayeux server layer.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// How long a connect is held (Faye's `timeout`).
    pub timeout: Duration,
    /// Advised pause between connects (Faye's `interval`).
    pub interval: Duration,
    /// Most subscriptions one client may hold.
    pub max_subscriptions: usize,
    /// Handshakes per second allowed from one address; `0` means no limit.
    pub handshake_rate: f64,
    /// Handshakes one address may make in a burst.
    pub handshake_burst: u32,
    /// Upper bound of the random `interval` added to `reconnect: "handshake"` advice, so
    /// clients a restarted node forgot do not all re-handshake at once; zero keeps Faye's advice.
    pub reconnect_jitter: Duration,
    /// Keep `/service/**` publishes from subscribers of `/**` (Faye delivers them).
    pub forbid_wildcard_service: bool,
    /// A client id works only from the IP address that handshook it (on the node that did).
    pub bind_client_ip: bool,
    /// Tokens, channel rules and the auth hook; `None` leaves every client open (Faye).
    pub access: Option<Arc<AccessControl>>,
}

impl Default for ServerSettings {
    /// Faye's behaviour: 45 s timeout, no interval, no limits beyond the generous defaults.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(45),
            interval: Duration::ZERO,
            max_subscriptions: 1000,
            handshake_rate: 0.0,
            handshake_burst: 1,
            reconnect_jitter: Duration::ZERO,
            forbid_wildcard_service: false,
            bind_client_ip: false,
            access: None,
        }
    }
}

struct Inner {
    engine: Arc<dyn Engine>,
    sessions: Arc<Sessions>,
    extensions: Vec<Arc<dyn Extension>>,
    rewrites_outgoing: bool,
    settings: ServerSettings,
    advice_retry: Box<RawValue>,
    advice_retry_eventsource: Box<RawValue>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    handshake_limiter: Option<limits::HandshakeLimiter>,
}

/// The Bayeux server: cheap to clone, shared by every transport.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

/// One processed message of a batch.
enum Item {
    Ready(Message),
    Connect(Message, connect::ConnectWait),
    /// A publish on its way to the engine; its reply waits for it.
    Publishing(Message, Box<publish::Publishing>),
}

/// The outcome of processing a batch: every effect has happened, in order; what remains is
/// to wait for held connects and encode the replies.
pub struct Batch {
    items: Vec<Item>,
}

impl Batch {
    /// True when a connect in the batch is still to be held, or a publish is on its way: the
    /// connection may go on with its next batch meanwhile.
    pub fn is_waiting(&self) -> bool {
        self.items.iter().any(|i| matches!(i, Item::Connect(..) | Item::Publishing(..)))
    }
}

impl Server {
    /// A server over `engine`; registers itself as the engine's observer.
    pub fn new(
        engine: Arc<dyn Engine>,
        settings: ServerSettings,
        extensions: Vec<Arc<dyn Extension>>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let sessions = Arc::new(Sessions::new(metrics.clone()));
        engine.attach(sessions.clone());
        let timeout_ms = settings.timeout.as_millis() as u64;
        let interval_ms = settings.interval.as_millis() as u64;
        let rewrites_outgoing = extensions.iter().any(|e| e.rewrites_outgoing());
        Self {
            inner: Arc::new(Inner {
                engine,
                sessions,
                extensions,
                rewrites_outgoing,
                advice_retry: advice::retry(interval_ms, timeout_ms),
                advice_retry_eventsource: advice::retry(timeout_ms, 0),
                handshake_limiter: limits::HandshakeLimiter::new(settings.handshake_rate, settings.handshake_burst),
                settings,
                shutdown,
                metrics,
            }),
        }
    }

    /// Subscribes to this node's server events.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<ServerEvent> {
        self.inner.sessions.events.subscribe()
    }

    /// The engine behind this server.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    /// This node's counters and gauges.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Renders `/metrics` (Prometheus text format).
    pub fn render_metrics(&self, redis_configured: bool) -> String {
        self.inner.metrics.render(self.session_count(), self.inner.engine.queued_messages(), redis_configured)
    }

    /// Checks that the engine's backing store answers (for `/healthz`).
    pub async fn health(&self) -> Result<(), EngineError> {
        self.inner.engine.health().await
    }

    /// Number of clients with a session on this node.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Applies every message of a batch in order. `socket` is the persistent connection the
    /// batch arrived on, if any (websocket); its connects bind the client to it.
    pub async fn process(&self, messages: Vec<Message>, ctx: &RequestContext, socket: Option<&SocketHandle>) -> Batch {
        let mut items = Vec::with_capacity(messages.len());
        for mut message in messages {
            if let Some(field) = message.malformed.take() {
                let mut reply = message.reply();
                reply.error = Some(BayeuxError::bad_request(vec![field]).to_string());
                items.push(Item::Ready(reply));
                continue;
            }
            for ext in &self.inner.extensions {
                ext.incoming(&mut message, ctx);
            }
            if let Some(reply) = self.foreign_client(&message, ctx) {
                items.push(Item::Ready(reply));
                continue;
            }
            let item = match self.handle(message, ctx, socket).await {
                Ok(item) => item,
                Err((mut reply, err)) => {
                    tracing::warn!(error = %err, "engine failure while handling a message");
                    reply.error = Some(BayeuxError::server_error(vec![]).to_string());
                    // Keep the client's identity: ask it to retry the same call shortly.
                    let interval_ms = (self.inner.settings.interval.as_millis() as u64).max(1000);
                    reply.advice = match reply.channel_str() {
                        channel::meta::CONNECT => {
                            // The pause is taken here rather than advised: a Faye client keeps
                            // an advised interval until advice replaces it, and Faye's 401
                            // advice (`reconnect` only) would not, delaying its re-handshake
                            // after redis returns empty.
                            tokio::select! {
                                _ = tokio::time::sleep(ENGINE_FAILURE_PAUSE) => {}
                                _ = self.inner.shutdown.cancelled() => {}
                            }
                            Some(self.inner.advice_retry.clone())
                        }
                        channel::meta::HANDSHAKE => Some(advice::handshake_after(interval_ms)),
                        _ => None,
                    };
                    Item::Ready(reply)
                }
            };
            items.push(item);
        }
        Batch { items }
    }

    /// Waits for the batch's held connects and encodes every reply into one JSON array, each
    /// connect reply followed by the messages it releases.
    ///
    /// A held connect can wait for a long time: its future is kept small (the publish
    /// settling is boxed, the batch's buffer is let go before the last item waits).
    pub async fn finish(&self, batch: Batch) -> Bytes {
        let parts = self.finish_parts(batch).await;
        codec::encode_array(parts.iter().map(|b| b.as_ref()))
    }

    /// As [`Server::finish`], each message encoded on its own instead of joined into one
    /// array: for callers that answer in another shape (the server publish API answers one
    /// object for one message).
    pub async fn finish_parts(&self, batch: Batch) -> Vec<Bytes> {
        let mut parts: Vec<Bytes> = Vec::with_capacity(batch.items.len());
        let mut items = batch.items;
        items.reverse();
        loop {
            // Only a boxed future waits here, never an item: the future of `finish` stays small.
            let waiting = match items.pop() {
                Some(item) => self.finish_item(item, &mut parts),
                None => break,
            };
            if items.is_empty() {
                items = Vec::new();
            }
            if let Some(waiting) = waiting {
                parts.extend(waiting.await);
            }
        }
        parts
    }

    /// Encodes a ready reply into `parts`; for a publish on its way or a held connect,
    /// returns the future of its encoded reply (and released messages).
    fn finish_item(
        &self,
        item: Item,
        parts: &mut Vec<Bytes>,
    ) -> Option<Pin<Box<dyn Future<Output = Vec<Bytes>> + Send + '_>>> {
        match item {
            Item::Ready(reply) => {
                parts.push(self.encode_reply(reply));
                None
            }
            Item::Publishing(reply, publishing) => Some(Box::pin(async move {
                let reply = self.settle_publish(reply, *publishing).await;
                vec![self.encode_reply(reply)]
            })),
            Item::Connect(reply, wait) => Some(Box::pin(self.finish_connect(reply, wait))),
        }
    }

    /// Waits for a held connect; returns its reply and the messages it releases. The reply
    /// and the wait are the whole of its state (an `async fn` would keep its arguments and
    /// their moved copies both: 952 bytes here against 1,272).
    #[allow(clippy::manual_async_fn)]
    fn finish_connect(
        &self,
        mut reply: Message,
        wait: connect::ConnectWait,
    ) -> impl Future<Output = Vec<Bytes>> + Send + '_ {
        async move {
            let client_id = wait.client_id();
            let delivered = match wait.wait(self).await {
                connect::Released::Deliver(delivered) => delivered,
                connect::Released::Lost => {
                    self.refuse_lost(&mut reply, &client_id);
                    return vec![self.encode_reply(reply)];
                }
            };
            if self.inner.shutdown.is_cancelled() {
                // Released by shutdown: reconnect (through the load balancer, to another node)
                // after a random pause, so the clients of a stopping node do not all arrive at once.
                let pause = rand::random_range(0..=SHUTDOWN_RECONNECT_SPREAD_MS);
                let timeout_ms = self.inner.settings.timeout.as_millis() as u64;
                reply.advice = Some(advice::retry(pause, timeout_ms));
            }
            let mut parts = Vec::with_capacity(1 + delivered.len());
            parts.push(self.encode_reply(reply));
            self.encode_deliveries_into(&delivered, &client_id, &mut parts);
            parts
        }
    }

    /// Processes a batch and returns its encoded replies.
    pub async fn process_and_finish(&self, messages: Vec<Message>, ctx: &RequestContext) -> Bytes {
        let batch = self.process(messages, ctx, None).await;
        self.finish(batch).await
    }

    async fn handle(
        &self,
        message: Message,
        ctx: &RequestContext,
        socket: Option<&SocketHandle>,
    ) -> Result<Item, (Message, EngineError)> {
        let name = message.channel_str();
        if name.starts_with(channel::META_PREFIX) || name == "/meta" {
            let mut reply = match name {
                channel::meta::HANDSHAKE => self.handshake(&message, ctx).await,
                channel::meta::CONNECT => return self.connect(&message, socket).await,
                channel::meta::SUBSCRIBE => self.subscribe(&message, ctx, true).await,
                channel::meta::UNSUBSCRIBE => self.subscribe(&message, ctx, false).await,
                channel::meta::DISCONNECT => self.disconnect(&message).await,
                _ => {
                    let mut reply = message.reply();
                    reply.error = Some(BayeuxError::channel_forbidden(name).to_string());
                    Ok(reply)
                }
            }
            .map_err(|e| (message.reply(), e))?;
            self.advise(&mut reply, message.connection_type.as_deref());
            Ok(Item::Ready(reply))
        } else {
            self.publish(message, ctx).await
        }
    }

    /// Adds Faye's advice to handshake and connect replies.
    fn advise(&self, reply: &mut Message, connection_type: Option<&str>) {
        let name = reply.channel_str();
        if name != channel::meta::HANDSHAKE && name != channel::meta::CONNECT {
            return;
        }
        if reply.advice.is_some() {
            return;
        }
        reply.advice = Some(if reply.error.is_some() {
            self.handshake_advice()
        } else if connection_type == Some("eventsource") {
            self.inner.advice_retry_eventsource.clone()
        } else {
            self.inner.advice_retry.clone()
        });
    }

    /// `reconnect: "handshake"`, with a random `interval` up to the configured jitter.
    fn handshake_advice(&self) -> Box<RawValue> {
        let jitter = self.inner.settings.reconnect_jitter.as_millis() as u64;
        if jitter == 0 { advice::handshake() } else { advice::handshake_after(rand::random_range(0..=jitter)) }
    }

    /// Turns a connect reply into Faye's unknown-client answer (`401`, `reconnect:
    /// "handshake"`), for a client the engine lost while this node held it.
    fn refuse_lost(&self, reply: &mut Message, client_id: &str) {
        reply.error = Some(BayeuxError::client_unknown(client_id).to_string());
        reply.client_id = None;
        // With an explicit interval: a Faye client merges advice, and an interval advised
        // earlier (say while redis was away) would otherwise delay the handshake.
        let jitter = self.inner.settings.reconnect_jitter.as_millis() as u64;
        reply.advice = Some(advice::handshake_after(rand::random_range(0..=jitter)));
    }

    /// With `bind_client_ip`: a message naming a client id that this node handed to another
    /// address is answered as if the client did not exist (`401`), and not acted on.
    fn foreign_client(&self, message: &Message, ctx: &RequestContext) -> Option<Message> {
        if !self.inner.settings.bind_client_ip || ctx.local {
            return None;
        }
        if message.channel_str() == channel::meta::HANDSHAKE {
            return None;
        }
        let client_id = message.client_id.as_deref().filter(|c| !c.is_empty())?;
        let owner = *self.inner.sessions.get(client_id)?.owner_ip.get()?;
        if ctx.remote_addr.map(|a| a.ip().to_canonical()) == Some(owner) {
            return None;
        }
        tracing::debug!(client_id, remote = ?ctx.remote_addr, "client id used from another address");
        let mut reply = message.reply();
        match message.channel_str() {
            channel::meta::CONNECT | channel::meta::DISCONNECT => reply.client_id = None,
            channel::meta::SUBSCRIBE | channel::meta::UNSUBSCRIBE => reply.subscription = message.subscription.clone(),
            _ => {}
        }
        reply.error = Some(BayeuxError::client_unknown(client_id).to_string());
        self.advise(&mut reply, message.connection_type.as_deref());
        Some(reply)
    }

    fn encode_reply(&self, mut reply: Message) -> Bytes {
        reply.successful = Some(reply.error.is_none());
        if let Some(error) = &reply.error {
            self.inner.metrics.error(error);
        }
        for ext in &self.inner.extensions {
            ext.outgoing(&mut reply, None);
        }
        codec::encode(&reply)
    }

    /// Appends the encoded deliveries for `client_id`: the shared bytes, or re-encoded
    /// copies when an extension rewrites outgoing messages.
    fn encode_deliveries_into(&self, delivered: &[SharedEnvelope], client_id: &str, out: &mut Vec<Bytes>) {
        self.inner.metrics.delivered(delivered.len());
        if self.inner.rewrites_outgoing {
            for env in delivered {
                let mut message = env.message.clone();
                for ext in &self.inner.extensions {
                    ext.outgoing(&mut message, Some(client_id));
                }
                out.push(codec::encode(&message));
            }
        } else {
            out.extend(delivered.iter().map(|e| e.encoded.clone()));
        }
    }

    /// Encodes deliveries as one JSON array (one socket write).
    pub(crate) fn encode_delivery_frame(&self, delivered: &[SharedEnvelope], client_id: &str) -> Bytes {
        if self.inner.rewrites_outgoing {
            let mut parts = Vec::with_capacity(delivered.len());
            self.encode_deliveries_into(delivered, client_id, &mut parts);
            codec::encode_array(parts.iter().map(|b| b.as_ref()))
        } else {
            self.inner.metrics.delivered(delivered.len());
            codec::encode_array(delivered.iter().map(|e| e.encoded.as_ref()))
        }
    }

    /// Binds a persistent connection to an existing client so deliveries are pushed to it.
    /// Returns false when the client does not exist.
    pub async fn attach_socket(&self, client_id: &str, socket: &SocketHandle) -> bool {
        match self.inner.engine.client_exists(client_id).await {
            Ok(true) => {
                if let Err(e) = self.inner.engine.claim(client_id).await {
                    tracing::warn!(client_id, error = %e, "cannot take the client's session over");
                    return false;
                }
                self.bind(client_id, socket);
                true
            }
            _ => false,
        }
    }

    fn bind(&self, client_id: &str, socket: &SocketHandle) {
        self.inner.sessions.get_or_create(client_id).bind_socket(socket);
    }

    /// The feed of deliveries to the socket `socket_id`, if it is bound to `client_id`.
    /// The socket waits on it and takes a frame with [`Server::take_frame`] whenever it is
    /// ready to write the next one.
    pub fn socket_feed(&self, client_id: &str, socket_id: u64) -> Option<SocketFeed> {
        self.inner.sessions.get(client_id)?.feed(socket_id)
    }

    /// A token cancelled when the client is destroyed, if it has a session on this node.
    pub fn client_closed_token(&self, client_id: &str) -> Option<CancellationToken> {
        self.inner.sessions.get(client_id).map(|s| s.closed.clone())
    }

    /// The socket `socket_id` closed or moved on to another client: stop delivering to it.
    pub fn detach_socket(&self, client_id: &str, socket_id: u64) {
        if let Some(session) = self.inner.sessions.get(client_id) {
            session.unbind_socket(socket_id);
        }
    }

    /// Takes the feed's client's queued messages as one frame (`None`: nothing queued). The
    /// messages leave the engine's queue here: a frame that is not written must go back
    /// with [`Server::requeue`].
    pub async fn take_frame(&self, feed: &SocketFeed) -> Result<Option<OutFrame>, EngineError> {
        let client_id = feed.client_id();
        let delivered = self.inner.engine.take_queued(client_id).await?;
        if delivered.is_empty() {
            return Ok(None);
        }
        Ok(Some(OutFrame {
            bytes: self.encode_delivery_frame(&delivered, client_id),
            client_id: Some(client_id.clone()),
            deliveries: delivered,
        }))
    }

    /// After [`FeedEvent::Lost`]: the unknown-client connect reply (`401`, handshake advice)
    /// to push, when no held connect carried it already.
    pub fn lost_reply(&self, feed: &SocketFeed) -> Option<Bytes> {
        if !feed.session.take_owed_reply() {
            return None;
        }
        let mut reply = Message { channel: Some(channel::meta::CONNECT.to_string()), ..Message::default() };
        self.refuse_lost(&mut reply, feed.client_id());
        Some(codec::encode_array(std::iter::once(self.encode_reply(reply).as_ref())))
    }

    /// Hands messages that could not be written back to the client's queue.
    pub async fn requeue(&self, client_id: &str, envelopes: Vec<SharedEnvelope>) {
        if envelopes.is_empty() {
            return;
        }
        if let Err(e) = self.inner.engine.requeue(client_id, envelopes).await {
            tracing::warn!(client_id, error = %e, "could not requeue undelivered messages");
        }
    }

    /// Publishes from Rust code on this node, as an in-process client would.
    pub async fn publish_local(&self, channel: &str, data: &serde_json::Value) -> Result<(), BayeuxError> {
        let message = Message {
            channel: Some(channel.to_string()),
            data: Some(
                serde_json::value::to_raw_value(data).map_err(|_| BayeuxError::bad_request(vec!["data".into()]))?,
            ),
            ..Message::default()
        };
        let ctx = RequestContext { local: true, ..RequestContext::default() };
        let batch = self.process(vec![message], &ctx, None).await;
        for item in batch.items {
            let reply = match item {
                Item::Ready(reply) => reply,
                Item::Publishing(reply, publishing) => self.settle_publish(reply, *publishing).await,
                Item::Connect(..) => continue,
            };
            if let Some(err) = &reply.error {
                return Err(BayeuxError::parse(err));
            }
        }
        Ok(())
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}

#[cfg(test)]
impl Server {
    /// A server on a fresh memory engine with default settings, for unit tests of the layers
    /// above (which may not name the engine).
    pub(crate) fn on_memory_engine() -> Self {
        let engine: Arc<dyn Engine> = Arc::new(crate::engine::memory::MemoryEngine::new(Duration::from_secs(45)));
        Server::new(engine, ServerSettings::default(), vec![], CancellationToken::new(), Arc::new(Metrics::default()))
    }
}

#[cfg(test)]
mod future_sizes {
    use super::*;

    /// A held connect waits for up to the timeout on every idle client: what it keeps alive
    /// is per-client memory. Bounds with some room over today's sizes (160 and 952 bytes on
    /// rustc 1.95), so a change that makes them balloon again fails here.
    #[tokio::test]
    async fn a_held_connect_keeps_little_state() {
        let engine: Arc<dyn Engine> = Arc::new(crate::engine::memory::MemoryEngine::new(Duration::from_secs(45)));
        let server = Server::new(
            engine,
            ServerSettings::default(),
            vec![],
            CancellationToken::new(),
            Arc::new(Metrics::default()),
        );
        let finish = server.finish(Batch { items: vec![] });
        assert!(std::mem::size_of_val(&finish) <= 256, "finish: {} bytes", std::mem::size_of_val(&finish));
        let session = server.inner.sessions.get_or_create("client");
        let held = server.finish_connect(Message::default(), connect::ConnectWait::probe(session));
        assert!(std::mem::size_of_val(&held) <= 1200, "held connect: {} bytes", std::mem::size_of_val(&held));
    }
}
