//! The one task that owns the connection. It runs the handshake / connect cycle, follows the
//! server's advice, backs off with jitter while the server is unreachable, re-handshakes when
//! the server forgot the client and then restores the subscriptions, and settles every
//! caller's request with the server's acknowledgement or an error.
//!
//! It is a small state machine: every input (a command from a handle, an event from the
//! transport, a timer) updates the state, then [`Driver::advance`] takes the next step:
//! open a transport, handshake, send queued requests, keep a connect in flight.

use super::transport::{self, Event, EventKind, Events, Limits, Target, Transport, TransportError};
use super::{ClientError, ClientExtension, ConnectionState, Delivery, TransportPreference};
use crate::protocol::channel::{self, meta};
use crate::protocol::{BAYEUX_VERSION, BayeuxError, Message, Subscription, codec};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A batch is split so that no frame or POST body grows far beyond this.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Commands drained from the handles per wake-up, so that a burst goes out as one batch.
const COMMAND_BURST: usize = 256;

/// The connect timeout the client assumes until the server advises one (Faye's default).
const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// What a caller waits on.
pub(crate) type Reply = oneshot::Sender<Result<(), ClientError>>;

/// Client options, set through [`super::ClientBuilder`].
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) preference: TransportPreference,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_reconnect_attempts: Option<u32>,
    pub(crate) extensions: Vec<Arc<dyn ClientExtension>>,
    pub(crate) subscription_capacity: usize,
    pub(crate) max_message_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            preference: TransportPreference::Auto,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_reconnect_attempts: None,
            extensions: Vec::new(),
            subscription_capacity: 1024,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What a handle asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Publish { channel: String, data: Box<RawValue>, reply: Reply },
    Subscribe { pattern: String, id: u64, sink: mpsc::Sender<Delivery>, reply: Reply },
    Unsubscribe { pattern: String, id: u64, reply: Option<Reply> },
    Disconnect { reply: Reply },
}

/// A request the server is to acknowledge, by message id.
struct Request {
    kind: Kind,
    /// The transport generation it was sent on; `None` while queued.
    sent: Option<u64>,
}

enum Kind {
    Handshake,
    Connect,
    Publish { channel: String, data: Box<RawValue>, reply: Reply },
    Subscribe { pattern: String },
    Unsubscribe { pattern: String, reply: Option<Reply> },
    Disconnect { reply: Option<Reply> },
}

/// The local subscribers of one channel or pattern; the server knows the pattern once.
#[derive(Default)]
struct Pattern {
    /// Subscribers whose subscription the server acknowledged.
    active: Vec<(u64, mpsc::Sender<Delivery>)>,
    /// Subscribers waiting for the acknowledgement.
    waiting: Vec<(u64, mpsc::Sender<Delivery>, Reply)>,
    /// The server acknowledged the pattern in the current session.
    acked: bool,
    /// The subscribe request under way.
    request: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reconnect {
    Retry,
    Handshake,
    None,
}

/// The server's latest advice; fields it leaves out keep their previous values (as in Faye).
#[derive(Debug, Clone, Copy)]
struct Advice {
    reconnect: Reconnect,
    interval: Duration,
    timeout: Duration,
}

impl Advice {
    fn update(&mut self, raw: &RawValue) {
        #[derive(Deserialize)]
        struct Wire {
            reconnect: Option<String>,
            interval: Option<f64>,
            timeout: Option<f64>,
        }
        let Ok(wire) = serde_json::from_str::<Wire>(raw.get()) else { return };
        match wire.reconnect.as_deref() {
            Some("retry") => self.reconnect = Reconnect::Retry,
            Some("handshake") => self.reconnect = Reconnect::Handshake,
            Some("none") => self.reconnect = Reconnect::None,
            _ => {}
        }
        let ms = |v: f64| Duration::from_millis(v.clamp(0.0, 86_400_000.0) as u64);
        if let Some(v) = wire.interval.filter(|v| v.is_finite()) {
            self.interval = ms(v);
        }
        if let Some(v) = wire.timeout.filter(|v| v.is_finite()) {
            self.timeout = ms(v);
        }
    }
}

/// The delay before retry number `attempt` (1-based): `min` doubled per attempt, capped at
/// `max`, then drawn from the upper half of that (`unit` in `[0, 1)`), so that clients of a
/// restarted server spread their reconnects instead of storming it.
pub(crate) fn backoff(min: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let ceiling = min.saturating_mul(1u32 << doublings).min(max);
    ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

pub(crate) struct Driver {
    target: Target,
    options: Arc<Options>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    events_tx: Events,
    events: mpsc::UnboundedReceiver<Event>,
    state: watch::Sender<ConnectionState>,
    /// The first handshake's outcome goes here (`ClientBuilder::build` waits on it).
    ready: Option<oneshot::Sender<Result<(), ClientError>>>,
    transport: Option<Transport>,
    opening: bool,
    generation: u64,
    client_id: Option<String>,
    /// The server confirmed `client_id` on the current transport (handshake or connect
    /// reply). Until then queued requests wait, so that after a reconnect they go out on a
    /// live session, behind the restored subscriptions.
    confirmed: bool,
    /// The handshake in flight and when its reply is overdue.
    handshake: Option<(u64, Instant)>,
    /// Re-handshakes asked for by connect replies since the last successful connect: a
    /// server that forgets the client right after each handshake is retried with backoff.
    rehandshakes: u32,
    /// The connect in flight and when its reply is overdue.
    connect: Option<(u64, Instant)>,
    /// The advised pause before the next connect.
    next_connect: Option<Instant>,
    /// Backing off until then: nothing is sent before.
    retry_at: Option<Instant>,
    /// A disconnect is under way; the client closes at the latest then.
    closing: Option<Instant>,
    closed: bool,
    advice: Advice,
    requests: HashMap<u64, Request>,
    /// The long-polling POST of queued requests under way, by batch tag.
    post_in_flight: Option<u64>,
    next_batch: u64,
    outbox: VecDeque<u64>,
    patterns: BTreeMap<String, Pattern>,
    next_id: u64,
    failures: u32,
}

impl Driver {
    pub(crate) fn new(
        target: Target,
        options: Arc<Options>,
        commands: mpsc::UnboundedReceiver<Command>,
        state: watch::Sender<ConnectionState>,
        ready: oneshot::Sender<Result<(), ClientError>>,
    ) -> Driver {
        let (events_tx, events) = mpsc::unbounded_channel();
        Driver {
            target,
            options,
            commands,
            commands_open: true,
            events_tx,
            events,
            state,
            ready: Some(ready),
            transport: None,
            opening: false,
            generation: 0,
            client_id: None,
            confirmed: false,
            handshake: None,
            rehandshakes: 0,
            connect: None,
            next_connect: None,
            retry_at: None,
            closing: None,
            closed: false,
            advice: Advice { reconnect: Reconnect::Retry, interval: Duration::ZERO, timeout: DEFAULT_SERVER_TIMEOUT },
            requests: HashMap::new(),
            post_in_flight: None,
            next_batch: 0,
            outbox: VecDeque::new(),
            patterns: BTreeMap::new(),
            next_id: 0,
            failures: 0,
        }
    }

    /// Runs until the client is closed.
    pub(crate) async fn run(mut self) {
        self.advance();
        while !self.closed {
            let wake = self.next_wake();
            let sleep_until = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                command = self.commands.recv(), if self.commands_open => match command {
                    Some(command) => {
                        self.on_command(command);
                        for _ in 0..COMMAND_BURST {
                            match self.commands.try_recv() {
                                Ok(command) => self.on_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.on_handles_dropped(),
                },
                Some(event) = self.events.recv() => self.on_event(event),
                _ = tokio::time::sleep_until(sleep_until), if wake.is_some() => self.on_wake(),
            }
            self.advance();
        }
        tracing::debug!("client driver stopped");
    }

    /// Takes the next step the state allows.
    fn advance(&mut self) {
        if self.closed || self.retry_at.is_some() {
            return;
        }
        if self.transport.is_none() {
            if !self.opening {
                self.open();
            }
            return;
        }
        if self.client_id.is_none() {
            if self.handshake.is_none() {
                self.send_handshake();
            }
            return;
        }
        if !self.confirmed {
            // Resuming after a reconnect: ask at once (connect without hold) whether the
            // server still knows us; a 401 leads to a new handshake.
            if self.connect.is_none() {
                self.send_connect(true);
            }
            return;
        }
        self.flush();
        if self.closing.is_none() && self.connect.is_none() && self.next_connect.is_none() {
            self.send_connect(false);
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        [
            self.retry_at,
            self.next_connect,
            self.connect.map(|(_, at)| at),
            self.handshake.map(|(_, at)| at),
            self.closing,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_wake(&mut self) {
        let now = Instant::now();
        if self.closing.is_some_and(|at| at <= now) {
            tracing::debug!("no disconnect reply in time; closing");
            self.close(ClientError::Disconnected);
            return;
        }
        if let Some((_, at)) = self.connect
            && at <= now
        {
            let waited = self.reply_timeout();
            self.failed(TransportError::ReplyTimeout(waited));
        }
        if let Some((_, at)) = self.handshake
            && at <= now
        {
            self.failed(TransportError::ReplyTimeout(self.options.request_timeout));
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
        }
        if self.next_connect.is_some_and(|at| at <= now) {
            self.next_connect = None;
        }
    }

    // ----- commands -----

    fn on_command(&mut self, command: Command) {
        if self.closing.is_some() || self.closed {
            match command {
                Command::Publish { reply, .. } | Command::Subscribe { reply, .. } => {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
                Command::Unsubscribe { reply, .. } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                Command::Disconnect { reply } => {
                    let _ = reply.send(Ok(()));
                }
            }
            return;
        }
        match command {
            Command::Publish { channel, data, reply } => {
                self.enqueue(Kind::Publish { channel, data, reply });
            }
            Command::Subscribe { pattern, id, sink, reply } => {
                let state = self.patterns.entry(pattern.clone()).or_default();
                if state.acked {
                    state.active.push((id, sink));
                    let _ = reply.send(Ok(()));
                } else {
                    state.waiting.push((id, sink, reply));
                    if state.request.is_none() && self.client_id.is_some() {
                        let request = self.enqueue(Kind::Subscribe { pattern: pattern.clone() });
                        if let Some(state) = self.patterns.get_mut(&pattern) {
                            state.request = Some(request);
                        }
                    }
                }
            }
            Command::Unsubscribe { pattern, id, reply } => self.unsubscribe(pattern, id, reply),
            Command::Disconnect { reply } => {
                if self.client_id.is_some() && self.transport.is_some() {
                    self.enqueue(Kind::Disconnect { reply: Some(reply) });
                    self.closing = Some(Instant::now() + self.options.request_timeout);
                } else {
                    let _ = reply.send(Ok(()));
                    self.close(ClientError::Disconnected);
                }
            }
        }
    }

    fn unsubscribe(&mut self, pattern: String, id: u64, reply: Option<Reply>) {
        let answer = |reply: Option<Reply>| {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
        };
        let Some(state) = self.patterns.get_mut(&pattern) else { return answer(reply) };
        state.active.retain(|(sub, _)| *sub != id);
        state.waiting.retain(|(sub, _, _)| *sub != id);
        if !state.active.is_empty() || !state.waiting.is_empty() {
            return answer(reply);
        }
        let Some(state) = self.patterns.remove(&pattern) else { return answer(reply) };
        if let Some(request) = state.request
            && self.requests.get(&request).is_some_and(|r| r.sent.is_none())
        {
            // The subscribe was never sent: forgetting it is enough.
            self.requests.remove(&request);
            self.outbox.retain(|r| *r != request);
            return answer(reply);
        }
        if (state.acked || state.request.is_some()) && self.client_id.is_some() {
            self.enqueue(Kind::Unsubscribe { pattern, reply });
        } else {
            answer(reply);
        }
    }

    fn on_handles_dropped(&mut self) {
        self.commands_open = false;
        if self.closing.is_some() {
            return;
        }
        if self.client_id.is_some() && self.transport.is_some() {
            tracing::debug!("every handle dropped; disconnecting");
            self.enqueue(Kind::Disconnect { reply: None });
            self.closing = Some(Instant::now() + self.options.connect_timeout);
        } else {
            self.close(ClientError::Disconnected);
        }
    }

    fn enqueue(&mut self, kind: Kind) -> u64 {
        let id = self.new_id();
        self.requests.insert(id, Request { kind, sent: None });
        self.outbox.push_back(id);
        id
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ----- sending -----

    fn open(&mut self) {
        self.generation += 1;
        self.opening = true;
        let limits =
            Limits { connect_timeout: self.options.connect_timeout, max_message_bytes: self.options.max_message_bytes };
        tracing::debug!(generation = self.generation, preference = ?self.options.preference, "opening transport");
        tokio::spawn(transport::open(
            self.target.clone(),
            self.options.preference,
            limits,
            self.generation,
            self.events_tx.clone(),
        ));
    }

    /// How long a reply may take: the server holds a connect for its advised timeout.
    fn reply_timeout(&self) -> Duration {
        let held = self.advice.timeout;
        if held.is_zero() { self.options.connect_timeout } else { held.mul_f64(1.2).max(held + Duration::from_secs(1)) }
    }

    fn send_handshake(&mut self) {
        let id = self.new_id();
        let types = match self.options.preference {
            #[cfg(feature = "in-process")]
            _ if matches!(self.target, Target::Local(_)) => vec!["in-process".to_string()],
            TransportPreference::Auto => vec!["websocket".to_string(), "long-polling".to_string()],
            TransportPreference::WebSocket => vec!["websocket".to_string()],
            TransportPreference::LongPolling => vec!["long-polling".to_string()],
        };
        let message = Message {
            channel: Some(meta::HANDSHAKE.to_string()),
            version: Some(BAYEUX_VERSION.to_string()),
            supported_connection_types: Some(types),
            ..Message::default()
        };
        self.requests.insert(id, Request { kind: Kind::Handshake, sent: Some(self.generation) });
        self.handshake = Some((id, Instant::now() + self.options.request_timeout));
        tracing::debug!("handshaking");
        let encoded = self.encode(with_id(message, id));
        self.send_batch(&[encoded], self.options.request_timeout);
    }

    /// `probe`: ask the server not to hold the reply (client advice `timeout: 0`).
    fn send_connect(&mut self, probe: bool) {
        let (Some(client_id), Some(transport)) = (&self.client_id, &self.transport) else { return };
        let (client_id, connection_type) = (client_id.clone(), transport.connection_type());
        let id = self.new_id();
        let message = Message {
            channel: Some(meta::CONNECT.to_string()),
            client_id: Some(client_id),
            connection_type: Some(connection_type.as_str().to_string()),
            advice: if probe { RawValue::from_string(r#"{"timeout":0}"#.to_string()).ok() } else { None },
            ..Message::default()
        };
        self.requests.insert(id, Request { kind: Kind::Connect, sent: Some(self.generation) });
        self.connect = Some((id, Instant::now() + self.reply_timeout()));
        let encoded = self.encode(with_id(message, id));
        self.send_batch(&[encoded], self.reply_timeout());
    }

    /// Sends the queued requests in order. Over long-polling one such POST is in flight at a
    /// time (requests queued meanwhile go together in the next), because POSTs on separate
    /// connections may be processed out of order; a websocket keeps order by itself.
    fn flush(&mut self) {
        let Some(client_id) = self.client_id.clone() else { return };
        let long_polling = self.transport.as_ref().is_some_and(Transport::is_request_response);
        if long_polling && self.post_in_flight.is_some() {
            return;
        }
        let mut parts: Vec<Bytes> = Vec::new();
        let mut size = 0;
        while let Some(id) = self.outbox.pop_front() {
            let Some(request) = self.requests.get(&id) else { continue };
            let message = match &request.kind {
                Kind::Publish { reply, .. } if reply.is_closed() => {
                    // The caller gave up (timeout or dropped future): do not publish late.
                    self.requests.remove(&id);
                    continue;
                }
                Kind::Publish { channel, data, .. } => {
                    Message { channel: Some(channel.clone()), data: Some(data.clone()), ..Message::default() }
                }
                Kind::Subscribe { pattern } => Message {
                    channel: Some(meta::SUBSCRIBE.to_string()),
                    subscription: Some(Subscription::One(pattern.clone())),
                    ..Message::default()
                },
                Kind::Unsubscribe { pattern, .. } => Message {
                    channel: Some(meta::UNSUBSCRIBE.to_string()),
                    subscription: Some(Subscription::One(pattern.clone())),
                    ..Message::default()
                },
                Kind::Disconnect { .. } => {
                    Message { channel: Some(meta::DISCONNECT.to_string()), ..Message::default() }
                }
                Kind::Handshake | Kind::Connect => continue,
            };
            let encoded = self.encode(with_id(Message { client_id: Some(client_id.clone()), ..message }, id));
            if size + encoded.len() > MAX_BATCH_BYTES && !parts.is_empty() {
                if long_polling {
                    self.outbox.push_front(id);
                    break;
                }
                self.send_batch(&parts, self.options.request_timeout);
                parts.clear();
                size = 0;
            }
            if let Some(request) = self.requests.get_mut(&id) {
                request.sent = Some(self.generation);
            }
            size += encoded.len() + 1;
            parts.push(encoded);
        }
        if !parts.is_empty() {
            let tag = self.send_batch(&parts, self.options.request_timeout);
            if long_polling {
                self.post_in_flight = Some(tag);
            }
        }
    }

    /// Runs the outgoing extensions and encodes.
    fn encode(&self, mut message: Message) -> Bytes {
        for extension in &self.options.extensions {
            extension.outgoing(&mut message);
        }
        codec::encode(&message)
    }

    /// Hands one batch of encoded messages to the transport; returns the batch's tag.
    /// `timeout` bounds a long-polling POST.
    fn send_batch(&mut self, parts: &[Bytes], timeout: Duration) -> u64 {
        self.next_batch += 1;
        let tag = self.next_batch;
        if let Some(transport) = &self.transport {
            tracing::trace!(count = parts.len(), "sending batch");
            transport.send(codec::encode_array(parts.iter().map(|p| p.as_ref())), timeout, tag);
        }
        tag
    }

    // ----- transport events -----

    fn on_event(&mut self, event: Event) {
        if let EventKind::Received { messages, batch } = event.kind {
            if batch.is_some() && batch == self.post_in_flight {
                self.post_in_flight = None;
            }
            // Replies are matched by id, so even a late one from an older transport counts.
            return self.on_messages(messages);
        }
        if event.generation != self.generation {
            return; // from a transport already given up
        }
        match event.kind {
            EventKind::Opened(transport) => {
                self.opening = false;
                tracing::debug!(connection_type = %transport.connection_type(), "transport open");
                self.transport = Some(transport);
                self.publish_state();
            }
            EventKind::OpenFailed(error) => {
                self.opening = false;
                self.failed(error);
            }
            EventKind::Lost(error) if self.transport.is_some() => self.failed(error),
            EventKind::Lost(_) | EventKind::Received { .. } => {}
        }
    }

    /// The transport failed: requeue what was in flight, then back off and reconnect.
    fn failed(&mut self, error: TransportError) {
        let error = Arc::new(error);
        self.transport = None;
        self.confirmed = false;
        self.post_in_flight = None;
        self.generation += 1; // later reports of the failed transport are stale
        self.handshake = None;
        self.connect = None;
        self.next_connect = None;
        let mut in_flight: Vec<u64> = Vec::new();
        self.requests.retain(|id, request| match request.kind {
            Kind::Handshake | Kind::Connect => false,
            _ => {
                if request.sent.take().is_some() {
                    in_flight.push(*id);
                }
                true
            }
        });
        in_flight.sort_unstable();
        for id in in_flight.into_iter().rev() {
            self.outbox.push_front(id);
        }
        if self.ready.is_some() {
            return self.close(ClientError::Transport(error));
        }
        if self.closing.is_some() {
            return self.close(ClientError::Disconnected);
        }
        self.failures += 1;
        if self.options.max_reconnect_attempts.is_some_and(|max| self.failures > max) {
            tracing::warn!(%error, attempts = self.failures, "giving up reconnecting");
            return self.close(ClientError::Transport(error));
        }
        let delay = self.backoff();
        tracing::warn!(%error, attempt = self.failures, ?delay, "connection lost; reconnecting");
        self.retry_at = Some(Instant::now() + delay);
        self.publish_state();
    }

    fn backoff(&self) -> Duration {
        backoff(self.options.backoff_min, self.options.backoff_max, self.failures, rand::random::<f64>())
    }

    fn on_messages(&mut self, messages: Vec<Message>) {
        for mut message in messages {
            for extension in &self.options.extensions {
                extension.incoming(&mut message);
            }
            if self.closed {
                return;
            }
            if message.successful.is_some() {
                self.on_reply(message);
            } else {
                self.deliver(message);
            }
        }
    }

    fn deliver(&mut self, message: Message) {
        let (Some(channel), Some(data)) = (message.channel, message.data) else { return };
        if channel::is_meta(&channel) {
            return;
        }
        let delivery = Delivery { channel, data, ext: message.ext };
        tracing::trace!(channel = %delivery.channel, "message received");
        for (pattern, state) in self.patterns.iter_mut() {
            if !channel::matches(pattern, &delivery.channel) {
                continue;
            }
            state.active.retain(|(_, sink)| match sink.try_send(delivery.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(%pattern, channel = %delivery.channel, "subscriber too slow; message dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }

    fn on_reply(&mut self, message: Message) {
        let Some(id) = message.id.as_deref().and_then(parse_id) else {
            if let Some(error) = &message.error {
                tracing::warn!(%error, "the server reported an error without a message id");
            }
            return;
        };
        let Some(request) = self.requests.remove(&id) else {
            tracing::trace!(id, "reply to a request no longer pending");
            return;
        };
        if let Some(advice) = &message.advice {
            self.advice.update(advice);
        }
        let ok = message.successful == Some(true);
        let error = BayeuxError::parse(message.error.as_deref().unwrap_or(""));
        match request.kind {
            Kind::Handshake => self.on_handshake_reply(ok, message.client_id, error),
            Kind::Connect => self.on_connect_reply(id, ok, error),
            Kind::Publish { channel, data, reply } => {
                if ok {
                    let _ = reply.send(Ok(()));
                } else if error.code == 401 {
                    // The session is gone: publish again once re-handshaken.
                    self.requests.insert(id, Request { kind: Kind::Publish { channel, data, reply }, sent: None });
                    self.outbox.push_front(id);
                    self.rehandshake();
                } else {
                    tracing::debug!(%channel, %error, "publish rejected");
                    let _ = reply.send(Err(ClientError::Rejected(error)));
                }
            }
            Kind::Subscribe { pattern } => self.on_subscribe_reply(id, pattern, ok, error),
            Kind::Unsubscribe { pattern, reply } => {
                if !ok {
                    tracing::debug!(%pattern, %error, "unsubscribe rejected");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(if ok { Ok(()) } else { Err(ClientError::Rejected(error)) });
                }
            }
            Kind::Disconnect { reply } => {
                if let Some(reply) = reply {
                    let _ = reply.send(if ok { Ok(()) } else { Err(ClientError::Rejected(error)) });
                }
                self.close(ClientError::Disconnected);
            }
        }
    }

    fn on_handshake_reply(&mut self, ok: bool, client_id: Option<String>, error: BayeuxError) {
        self.handshake = None;
        if let (true, Some(client_id)) = (ok, client_id) {
            tracing::debug!(%client_id, "handshake successful");
            if self.advice.reconnect == Reconnect::Handshake {
                self.advice.reconnect = Reconnect::Retry;
            }
            self.client_id = Some(client_id);
            self.confirmed = true;
            self.failures = 0;
            self.publish_state();
            self.resubscribe();
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(Ok(()));
            }
            return;
        }
        tracing::warn!(%error, "handshake rejected");
        let rejected = ClientError::HandshakeRejected(error);
        if self.ready.is_some() || self.advice.reconnect == Reconnect::None {
            return self.close(rejected);
        }
        // The server refused this client: callers waiting for a session hear why.
        let queued: Vec<u64> = self.outbox.drain(..).collect();
        for id in queued {
            match self.requests.remove(&id).map(|r| r.kind) {
                Some(Kind::Publish { reply, .. }) | Some(Kind::Disconnect { reply: Some(reply) }) => {
                    let _ = reply.send(Err(rejected.clone()));
                }
                _ => {}
            }
        }
        for state in self.patterns.values_mut() {
            for (_, _, reply) in state.waiting.drain(..) {
                let _ = reply.send(Err(rejected.clone()));
            }
        }
        self.patterns.retain(|_, state| !state.active.is_empty());
        self.failures += 1;
        if self.options.max_reconnect_attempts.is_some_and(|max| self.failures > max) {
            return self.close(rejected);
        }
        self.retry_at = Some(Instant::now() + self.backoff().max(self.advice.interval));
    }

    fn on_connect_reply(&mut self, id: u64, ok: bool, error: BayeuxError) {
        if self.connect.is_some_and(|(current, _)| current == id) {
            self.connect = None;
        }
        if self.closing.is_some() {
            return;
        }
        let now = Instant::now();
        let forgotten = self.advice.reconnect == Reconnect::Handshake || (!ok && error.code == 401);
        match self.advice.reconnect {
            Reconnect::None => {
                tracing::info!("the server advised not to reconnect");
                self.close(ClientError::Disconnected)
            }
            _ if forgotten => {
                tracing::debug!(%error, "the server asked for a new handshake");
                self.rehandshakes += 1;
                self.rehandshake();
                let mut delay = self.advice.interval;
                if self.rehandshakes > 1 {
                    let (min, max) = (self.options.backoff_min, self.options.backoff_max);
                    delay = delay.max(backoff(min, max, self.rehandshakes - 1, rand::random::<f64>()));
                }
                if !delay.is_zero() {
                    self.retry_at = Some(now + delay);
                }
            }
            Reconnect::Retry | Reconnect::Handshake if !ok => {
                self.failures += 1;
                let delay = self.backoff().max(self.advice.interval);
                tracing::warn!(%error, ?delay, "connect rejected; retrying");
                self.retry_at = Some(now + delay);
            }
            Reconnect::Retry | Reconnect::Handshake => {
                self.failures = 0;
                self.rehandshakes = 0;
                if !self.confirmed {
                    self.confirmed = true;
                    self.publish_state();
                }
                if !self.advice.interval.is_zero() {
                    self.next_connect = Some(now + self.advice.interval);
                }
            }
        }
    }

    fn on_subscribe_reply(&mut self, id: u64, pattern: String, ok: bool, error: BayeuxError) {
        let Some(state) = self.patterns.get_mut(&pattern) else {
            if ok {
                // Every subscriber left while the subscribe was under way.
                self.enqueue(Kind::Unsubscribe { pattern, reply: None });
            }
            return;
        };
        if state.request != Some(id) {
            return; // a superseded request; the current one will settle the pattern
        }
        state.request = None;
        if ok {
            state.acked = true;
            for (sub, sink, reply) in state.waiting.drain(..) {
                if reply.send(Ok(())).is_ok() {
                    state.active.push((sub, sink));
                }
            }
            if state.active.is_empty() {
                self.patterns.remove(&pattern);
                self.enqueue(Kind::Unsubscribe { pattern, reply: None });
            }
        } else if error.code == 401 {
            self.rehandshake();
        } else {
            tracing::debug!(%pattern, %error, "subscribe rejected");
            for (_, _, reply) in state.waiting.drain(..) {
                let _ = reply.send(Err(ClientError::Rejected(error.clone())));
            }
            if !state.active.is_empty() {
                tracing::warn!(%pattern, %error, "the server refused to restore a subscription; it ends");
            }
            self.patterns.remove(&pattern);
        }
    }

    /// The server no longer knows this client: forget the session; the next handshake
    /// restores the subscriptions and sends what is queued.
    fn rehandshake(&mut self) {
        if self.client_id.is_none() {
            return;
        }
        tracing::debug!("re-handshaking");
        self.client_id = None;
        self.confirmed = false;
        self.connect = None;
        self.next_connect = None;
        if self.closing.is_some() {
            return self.close(ClientError::Disconnected);
        }
        self.requests.retain(|_, request| !matches!(request.kind, Kind::Connect | Kind::Subscribe { .. }));
        // Unsubscribes are moot: the new session starts with only the live patterns.
        let mut moot = Vec::new();
        self.requests.retain(|_, request| {
            if let Kind::Unsubscribe { reply, .. } = &mut request.kind {
                moot.extend(reply.take());
                return false;
            }
            true
        });
        for reply in moot {
            let _ = reply.send(Ok(()));
        }
        let requests = &self.requests;
        self.outbox.retain(|id| requests.contains_key(id));
        for state in self.patterns.values_mut() {
            state.acked = false;
            state.request = None;
        }
        self.publish_state();
    }

    /// After a handshake: one subscribe per pattern with subscribers, ahead of the queue.
    fn resubscribe(&mut self) {
        for state in self.patterns.values_mut() {
            // Callers that gave up waiting for their subscribe are not restored.
            state.waiting.retain(|(_, _, reply)| !reply.is_closed());
        }
        self.patterns.retain(|_, state| !state.active.is_empty() || !state.waiting.is_empty());
        let patterns: Vec<String> = self.patterns.keys().cloned().collect();
        let mut ids = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let id = self.new_id();
            self.requests.insert(id, Request { kind: Kind::Subscribe { pattern: pattern.clone() }, sent: None });
            if let Some(state) = self.patterns.get_mut(&pattern) {
                state.request = Some(id);
                state.acked = false;
            }
            ids.push(id);
        }
        if !ids.is_empty() {
            tracing::debug!(count = ids.len(), "restoring subscriptions");
        }
        for id in ids.into_iter().rev() {
            self.outbox.push_front(id);
        }
    }

    fn publish_state(&self) {
        let state = match (&self.client_id, &self.transport, self.closed) {
            (_, _, true) => ConnectionState::Closed,
            (Some(client_id), Some(transport), false) if self.confirmed => ConnectionState::Connected {
                client_id: client_id.clone(),
                connection_type: transport.connection_type(),
            },
            _ => ConnectionState::Connecting,
        };
        self.state.send_if_modified(|current| {
            if *current == state {
                false
            } else {
                *current = state;
                true
            }
        });
    }

    /// Stops for good: every pending request and waiting subscriber hears `error`, every
    /// subscription stream ends.
    fn close(&mut self, error: ClientError) {
        if self.closed {
            return;
        }
        tracing::debug!(%error, "client closing");
        self.closed = true;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error.clone()));
        }
        for (_, request) in self.requests.drain() {
            match request.kind {
                Kind::Publish { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Kind::Unsubscribe { reply: Some(reply), .. } | Kind::Disconnect { reply: Some(reply) } => {
                    let _ = reply.send(Ok(()));
                }
                _ => {}
            }
        }
        for (_, state) in std::mem::take(&mut self.patterns) {
            for (_, _, reply) in state.waiting {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.outbox.clear();
        self.transport = None;
        self.commands.close();
        self.publish_state();
    }
}

fn with_id(message: Message, id: u64) -> Message {
    Message { id: RawValue::from_string(format!("\"{id}\"")).ok(), ..message }
}

/// Our ids are decimal strings; accept a number too.
fn parse_id(raw: &RawValue) -> Option<u64> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.parse().ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff(min, max, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(min, max, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(min, max, 3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(min, max, 30, 1.0), max);
        assert_eq!(backoff(min, max, u32::MAX, 0.0), Duration::from_secs(1));
        for unit in [0.0, 0.3, 0.99] {
            let d = backoff(min, max, 4, unit);
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800), "{d:?}");
        }
    }

    #[test]
    fn advice_merges() {
        let mut advice =
            Advice { reconnect: Reconnect::Retry, interval: Duration::ZERO, timeout: Duration::from_secs(60) };
        advice.update(&RawValue::from_string(r#"{"reconnect":"retry","interval":0,"timeout":45000}"#.into()).unwrap());
        assert_eq!(advice.timeout, Duration::from_secs(45));
        advice.update(&RawValue::from_string(r#"{"reconnect":"handshake"}"#.into()).unwrap());
        assert_eq!((advice.reconnect, advice.timeout), (Reconnect::Handshake, Duration::from_secs(45)));
        advice.update(&RawValue::from_string(r#"{"reconnect":"none","interval":-5}"#.into()).unwrap());
        assert_eq!((advice.reconnect, advice.interval), (Reconnect::None, Duration::ZERO));
    }

    #[test]
    fn ids() {
        let m = with_id(Message::default(), 42);
        assert_eq!(m.id.as_ref().unwrap().get(), "\"42\"");
        assert_eq!(parse_id(m.id.as_deref().unwrap()), Some(42));
        assert_eq!(parse_id(&RawValue::from_string("7".into()).unwrap()), Some(7));
        assert_eq!(parse_id(&RawValue::from_string("\"x\"".into()).unwrap()), None);
    }
}
