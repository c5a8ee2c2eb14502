//! A Bayeux client for Rust programs, talking to any Faye-compatible server (ours or a node.js
//! Faye server), shaped after async-nats: [`Client`] is a cheap cloneable handle that sends
//! commands to one driver task owning the connection; a [`Subscription`] is a `Stream` of
//! [`Delivery`] values that unsubscribes when dropped.
//!
//! The driver handshakes (websocket first, long-polling when the upgrade fails, or the
//! transport you force), keeps a `/meta/connect` open, follows the server's advice, backs off
//! with jitter when the server is unreachable, re-handshakes when the server forgot the client
//! (401, restart) and then restores every subscription. Each publish resolves to the server's
//! acknowledgement or an error, never silence.
//!
//! ```no_run
//! use actioncluster_client::Client;
//! use futures_util::StreamExt;
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), actioncluster_client::ClientError> {
//! let client = Client::connect("http://127.0.0.1:8000/faye").await?;
//! let mut chat = client.subscribe("/chat/**").await?;
//! client.publish("/chat/lobby", json!({ "text": "hello" })).await?;
//! if let Some(message) = chat.next().await {
//!     println!("{}: {}", message.channel, message.json());
//! }
//! client.disconnect().await?;
//! # Ok(()) }
//! ```
//!
//! Only the wire model, [`actioncluster_protocol`] (re-exported as [`protocol`]), is shared
//! with the server. The `in-process` feature (on by default) adds the transport a node uses to
//! give Rust code on it a client without a socket. The repository's `ARCHITECTURE.md` shows
//! where this crate sits.

mod driver;
mod transport;

/// The Bayeux wire model this client speaks.
pub use actioncluster_protocol as protocol;
pub use actioncluster_protocol::{BayeuxError, Message};

use driver::{Command, Driver, Options};
use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

#[cfg(feature = "in-process")]
pub use transport::InProcessServer;
pub use transport::TransportError;

/// Which transport the client uses to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportPreference {
    /// Websocket first; long-polling when the websocket upgrade fails. Tried again in this
    /// order on every reconnect.
    #[default]
    Auto,
    /// Websocket only.
    WebSocket,
    /// HTTP long-polling only (POST with `application/json`).
    LongPolling,
}

/// The Bayeux connection type a connected client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionType {
    /// `websocket`
    WebSocket,
    /// `long-polling`
    LongPolling,
    /// `in-process`: a server in the same process, no socket.
    InProcess,
}

impl ConnectionType {
    /// The name sent as `connectionType`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::WebSocket => "websocket",
            ConnectionType::LongPolling => "long-polling",
            ConnectionType::InProcess => "in-process",
        }
    }
}

impl fmt::Display for ConnectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the client's session stands, as the driver last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening a transport, handshaking, or backing off before the next attempt.
    Connecting,
    /// Handshaken: the server knows the client by `client_id`.
    Connected {
        /// The id the server gave this session.
        client_id: String,
        /// The transport in use.
        connection_type: ConnectionType,
    },
    /// Closed for good: disconnected, told not to reconnect, or out of retries.
    Closed,
}

/// Why a client operation failed.
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    /// The URL is not an `http://` or `ws://` URL the client can use.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server answered the request with a Bayeux error (code and text inside).
    #[error("the server rejected the request: {0}")]
    Rejected(#[source] BayeuxError),
    /// The server refused the handshake (for example an extension rejected its credentials).
    #[error("the server rejected the handshake: {0}")]
    HandshakeRejected(#[source] BayeuxError),
    /// The server could not be reached (first connect) or reconnect attempts ran out.
    #[error("connection failed: {0}")]
    Transport(#[source] Arc<TransportError>),
    /// No acknowledgement within the configured request timeout. A publish that had been
    /// sent may still have reached subscribers.
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    /// The client is closed: `disconnect` was called, the server advised not to reconnect,
    /// or the driver has stopped.
    #[error("the client is disconnected")]
    Disconnected,
    /// The data to publish could not be serialized to JSON.
    #[error("the data could not be serialized: {0}")]
    Serialize(#[source] Arc<serde_json::Error>),
}

impl ClientError {
    /// The Bayeux error the server sent, when the server rejected the request.
    pub fn bayeux_error(&self) -> Option<&BayeuxError> {
        match self {
            ClientError::Rejected(e) | ClientError::HandshakeRejected(e) => Some(e),
            _ => None,
        }
    }
}

/// A client extension: sees every message the client sends and receives, like Faye's
/// `client.addExtension`, e.g. to add an auth token to `ext`.
pub trait ClientExtension: Send + Sync + 'static {
    /// Sees each outgoing message (handshake, connect, subscribe, publish, ...) before it is
    /// sent, with `clientId` and `id` already set.
    fn outgoing(&self, _message: &mut Message) {}

    /// Sees each incoming message (replies and delivered messages) before the client acts.
    fn incoming(&self, _message: &mut Message) {}
}

/// A message delivered to a subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The channel it was published to (not the pattern subscribed to).
    pub channel: String,
    /// The published `data`, as raw JSON.
    pub data: Box<RawValue>,
    /// The `ext` that came with it, if any.
    pub ext: Option<Box<RawValue>>,
}

impl Delivery {
    /// The data as a JSON value (`Null` in the unlikely case the server sent invalid JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The data deserialized into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// Builds a [`Client`] with options other than the defaults.
#[derive(Clone)]
pub struct ClientBuilder {
    target: Target,
    options: Options,
}

/// What the builder connects to.
#[derive(Clone)]
enum Target {
    Url(String),
    #[cfg(feature = "in-process")]
    InProcess(Arc<dyn InProcessServer>),
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Url(url) => url.as_str(),
            #[cfg(feature = "in-process")]
            Target::InProcess(_) => "in-process",
        };
        f.debug_struct("ClientBuilder").field("target", &target).finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Which transport to use (default: websocket with long-polling fallback).
    pub fn transport(mut self, preference: TransportPreference) -> Self {
        self.options.preference = preference;
        self
    }

    /// Upper bound on opening a TCP connection or websocket (default 10 s). Also the grace
    /// added to the server's connect timeout before a silent connection counts as dead.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// How long `publish`, `subscribe`, `unsubscribe` and `disconnect` wait for the server's
    /// acknowledgement, across reconnects, before returning [`ClientError::Timeout`]
    /// (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = timeout;
        self
    }

    /// Reconnect backoff: the first retry waits about `min`, each further one doubles, up to
    /// `max`; each delay is drawn uniformly from its upper half (jitter). Default 500 ms, 30 s.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.options.backoff_min = min;
        self.options.backoff_max = max.max(min);
        self
    }

    /// Consecutive failed reconnect attempts after which the client closes with
    /// [`ClientError::Transport`] (default: retry forever, as Faye does).
    pub fn max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.options.max_reconnect_attempts = Some(attempts);
        self
    }

    /// Adds an extension; extensions run in the order added.
    pub fn extension(mut self, extension: impl ClientExtension) -> Self {
        self.options.extensions.push(Arc::new(extension));
        self
    }

    /// Messages buffered per subscription before further ones are dropped with a warning
    /// (default 1024): a slow subscriber must not stall the connection.
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.options.subscription_capacity = capacity.max(1);
        self
    }

    /// Largest reply body or websocket message accepted from the server (default 16 MiB).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.options.max_message_bytes = bytes;
        self
    }

    /// Starts the driver and waits for the first handshake. Fails when the server cannot be
    /// reached or rejects the handshake; after that, the driver reconnects by itself.
    pub async fn build(self) -> Result<Client, ClientError> {
        let (target, name) = match self.target {
            Target::Url(url) => (transport::Target::Remote(transport::Endpoint::parse(&url)?), url),
            #[cfg(feature = "in-process")]
            Target::InProcess(server) => (transport::Target::Local(server), "in-process".to_string()),
        };
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let (ready_tx, ready_rx) = oneshot::channel();
        let options = Arc::new(self.options);
        let driver = Driver::new(target, options.clone(), commands_rx, state_tx, ready_tx);
        let span = tracing::debug_span!("bayeux_client", endpoint = %name);
        tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        ready_rx.await.map_err(|_| ClientError::Disconnected)??;
        Ok(Client {
            shared: Arc::new(Shared {
                commands: commands_tx,
                state: state_rx,
                options,
                next_subscriber: AtomicU64::new(1),
            }),
        })
    }
}

struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    options: Arc<Options>,
    next_subscriber: AtomicU64,
}

/// A connection to a Bayeux server. Cloning is cheap; all clones share one session, and the
/// driver task runs until [`Client::disconnect`] or until every clone and subscription is
/// dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("state", &*self.shared.state.borrow()).finish()
    }
}

impl Client {
    /// Connects with default options.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), actioncluster_client::ClientError> {
    /// let client = actioncluster_client::Client::connect("http://127.0.0.1:8000/faye").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Client, ClientError> {
        Self::builder(url).build().await
    }

    /// A builder for options: transport, timeouts, extensions, backoff.
    ///
    /// ```no_run
    /// use actioncluster_client::{Client, TransportPreference};
    /// use std::time::Duration;
    /// # async fn run() -> Result<(), actioncluster_client::ClientError> {
    /// let client = Client::builder("http://127.0.0.1:8000/faye")
    ///     .transport(TransportPreference::LongPolling)
    ///     .request_timeout(Duration::from_secs(5))
    ///     .backoff(Duration::from_millis(200), Duration::from_secs(10))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder { target: Target::Url(url.into()), options: Options::default() }
    }

    /// A builder for a client of a server in the same process: no socket, the same API.
    /// The transport preference does not apply.
    ///
    /// ```no_run
    /// use actioncluster_client::{Client, InProcessServer, Message};
    /// use std::sync::Arc;
    ///
    /// struct Local; // e.g. a wrapper around the node's server
    /// #[async_trait::async_trait]
    /// impl InProcessServer for Local {
    ///     async fn process(&self, messages: Vec<Message>) -> bytes::Bytes {
    ///         unimplemented!("hand the batch to the server, return its reply array")
    ///     }
    /// }
    ///
    /// # async fn run() -> Result<(), actioncluster_client::ClientError> {
    /// let client = Client::in_process(Arc::new(Local)).build().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "in-process")]
    pub fn in_process(server: Arc<dyn InProcessServer>) -> ClientBuilder {
        ClientBuilder { target: Target::InProcess(server), options: Options::default() }
    }

    /// Publishes `data` to `channel` and returns once the server acknowledged it. A Bayeux
    /// error from the server comes back as [`ClientError::Rejected`]; while the connection is
    /// down the publish waits (up to the request timeout) and is sent after reconnecting.
    ///
    /// ```no_run
    /// # async fn run(client: actioncluster_client::Client) -> Result<(), actioncluster_client::ClientError> {
    /// client.publish("/chat/lobby", serde_json::json!({ "text": "hi" })).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, channel: impl Into<String>, data: impl Serialize) -> Result<(), ClientError> {
        let data = serde_json::value::to_raw_value(&data).map_err(|e| ClientError::Serialize(Arc::new(e)))?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { channel: channel.into(), data, reply })?;
        self.wait(rx).await
    }

    /// Subscribes to a channel or pattern (`/chat/*`, `/chat/**`) and returns once the server
    /// acknowledged it. The subscription survives reconnects and re-handshakes.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn run(client: actioncluster_client::Client) -> Result<(), actioncluster_client::ClientError> {
    /// let mut sub = client.subscribe("/chat/**").await?;
    /// while let Some(message) = sub.next().await {
    ///     println!("{} {}", message.channel, message.json());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, pattern: impl Into<String>) -> Result<Subscription, ClientError> {
        let pattern = pattern.into();
        let id = self.shared.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let (sink, messages) = mpsc::channel(self.shared.options.subscription_capacity);
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe { pattern: pattern.clone(), id, sink, reply })?;
        self.wait(rx).await?;
        Ok(Subscription { pattern, id, messages, commands: Some(self.shared.commands.clone()) })
    }

    /// Subscribes and calls `callback` for each message on a spawned task; dropping the
    /// returned handle unsubscribes.
    ///
    /// ```no_run
    /// # async fn run(client: actioncluster_client::Client) -> Result<(), actioncluster_client::ClientError> {
    /// let _sub = client.subscribe_with("/news", |m| println!("{}", m.json())).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with<F>(
        &self,
        pattern: impl Into<String>,
        mut callback: F,
    ) -> Result<CallbackSubscription, ClientError>
    where
        F: FnMut(Delivery) + Send + 'static,
    {
        use futures_util::StreamExt;
        let mut subscription = self.subscribe(pattern).await?;
        let pattern = subscription.pattern.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                callback(message);
            }
        });
        Ok(CallbackSubscription { pattern, task })
    }

    /// Sends `/meta/disconnect`, waits for the reply, and stops the driver. Requests still
    /// unacknowledged then fail with [`ClientError::Disconnected`]; subscriptions end.
    ///
    /// ```no_run
    /// # async fn run(client: actioncluster_client::Client) -> Result<(), actioncluster_client::ClientError> {
    /// client.disconnect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Disconnect { reply }).is_err() {
            return Ok(()); // already closed
        }
        match self.wait(rx).await {
            Err(ClientError::Disconnected) => Ok(()),
            other => other,
        }
    }

    /// The current session state.
    ///
    /// ```no_run
    /// # fn run(client: actioncluster_client::Client) {
    /// println!("{:?}", client.state());
    /// # }
    /// ```
    pub fn state(&self) -> ConnectionState {
        self.shared.state.borrow().clone()
    }

    /// The client id of the current session, if handshaken.
    ///
    /// ```no_run
    /// # fn run(client: actioncluster_client::Client) {
    /// if let Some(id) = client.client_id() { println!("connected as {id}"); }
    /// # }
    /// ```
    pub fn client_id(&self) -> Option<String> {
        match &*self.shared.state.borrow() {
            ConnectionState::Connected { client_id, .. } => Some(client_id.clone()),
            _ => None,
        }
    }

    /// A watcher that sees every later state change (reconnects, re-handshakes, close).
    ///
    /// ```no_run
    /// # async fn run(client: actioncluster_client::Client) {
    /// let mut watcher = client.watch_state();
    /// while let Some(state) = watcher.changed().await {
    ///     println!("{state:?}");
    /// }
    /// # }
    /// ```
    pub fn watch_state(&self) -> StateWatcher {
        let mut rx = self.shared.state.clone();
        rx.mark_unchanged();
        StateWatcher { rx }
    }

    fn send(&self, command: Command) -> Result<(), ClientError> {
        self.shared.commands.send(command).map_err(|_| ClientError::Disconnected)
    }

    async fn wait(&self, rx: oneshot::Receiver<Result<(), ClientError>>) -> Result<(), ClientError> {
        let limit = self.shared.options.request_timeout;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }
}

/// Follows a client's [`ConnectionState`] changes.
#[derive(Debug)]
pub struct StateWatcher {
    rx: watch::Receiver<ConnectionState>,
}

impl StateWatcher {
    /// Waits for the next change and returns the new state; `None` once the driver is gone.
    pub async fn changed(&mut self) -> Option<ConnectionState> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Waits until the state satisfies `predicate` (checking the current state first).
    pub async fn wait_for(&mut self, mut predicate: impl FnMut(&ConnectionState) -> bool) -> Option<ConnectionState> {
        self.rx.wait_for(|s| predicate(s)).await.ok().map(|s| s.clone())
    }
}

/// A subscription: a `Stream` of the messages published to channels matching its pattern.
/// Dropping it unsubscribes (the server is told once no other subscription of this client
/// uses the same pattern). The stream ends when the client closes.
#[derive(Debug)]
pub struct Subscription {
    pattern: String,
    id: u64,
    messages: mpsc::Receiver<Delivery>,
    commands: Option<mpsc::UnboundedSender<Command>>,
}

impl Subscription {
    /// The channel or pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Unsubscribes and waits for the server's acknowledgement (dropping the subscription
    /// does the same without waiting).
    ///
    /// ```no_run
    /// # async fn run(client: actioncluster_client::Client) -> Result<(), actioncluster_client::ClientError> {
    /// let sub = client.subscribe("/news").await?;
    /// sub.unsubscribe().await?;
    /// # Ok(()) }
    /// ```
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        let Some(commands) = self.commands.take() else { return Ok(()) };
        let (reply, rx) = oneshot::channel();
        let command = Command::Unsubscribe { pattern: self.pattern.clone(), id: self.id, reply: Some(reply) };
        if commands.send(command).is_err() {
            return Ok(()); // the client is closed: nothing is subscribed any more
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.messages.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(Command::Unsubscribe { pattern: self.pattern.clone(), id: self.id, reply: None });
        }
    }
}

/// A subscription whose messages go to a callback on a spawned task. Dropping it (or calling
/// [`CallbackSubscription::unsubscribe`]) stops the task and unsubscribes.
#[derive(Debug)]
pub struct CallbackSubscription {
    pattern: String,
    task: tokio::task::JoinHandle<()>,
}

impl CallbackSubscription {
    /// The channel or pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Stops the callback and unsubscribes.
    pub fn unsubscribe(self) {
        drop(self);
    }
}

impl Drop for CallbackSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}
