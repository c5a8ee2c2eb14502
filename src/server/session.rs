//! Per-client state on this node: the socket a client is bound to, its held connect, and
//! the wake-up that tells a waiting connection that messages are queued.

use super::ServerEvent;
use crate::engine::{EngineObserver, SharedEnvelope};
use bytes::Bytes;
use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// One write for a socket: a JSON array, plus the delivered messages it carries so that a
/// socket that dies before writing it can hand them back to the engine.
#[derive(Debug)]
pub struct OutFrame {
    /// The JSON array to write.
    pub bytes: Bytes,
    /// Client the deliveries in this frame belong to.
    pub client_id: Option<Arc<str>>,
    /// The delivered messages encoded in `bytes`.
    pub deliveries: Vec<SharedEnvelope>,
}

/// A persistent connection (websocket or EventSource) that messages can be pushed to. It
/// holds no queue of its own: a bound connection takes its client's queue through a
/// [`SocketFeed`] when it is ready to write (one frame at a time), so messages wait in the
/// engine, where they count against the client's bound.
#[derive(Debug, Clone, Copy)]
pub struct SocketHandle {
    /// Unique per connection, to tell one socket's binding from another's.
    pub id: u64,
}

/// What woke a [`SocketFeed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEvent {
    /// Messages may be queued: take them when the socket is ready to write.
    Wake,
    /// The engine lost the client: send [`crate::server::Server::lost_reply`] if any, then stop.
    Lost,
    /// The binding ended (another connection took the client, or it was destroyed).
    Stopped,
}

/// The deliveries of one client to the connection bound to it: a wake-up to wait on and the
/// client's queue to take from, with nothing buffered here.
#[derive(Clone)]
pub struct SocketFeed {
    pub(crate) session: Arc<Session>,
    stop: CancellationToken,
}

impl std::fmt::Debug for SocketFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketFeed").field("client_id", &self.session.client_id).finish()
    }
}

impl SocketFeed {
    /// The client this feed delivers to.
    pub fn client_id(&self) -> &Arc<str> {
        &self.session.client_id
    }

    /// Waits for the next event. Cancel-safe: a wake-up that arrives while nobody waits is
    /// kept for the next call.
    pub async fn wait(&self) -> FeedEvent {
        if self.stop.is_cancelled() {
            return FeedEvent::Stopped;
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => FeedEvent::Stopped,
            _ = self.session.lost.cancelled() => FeedEvent::Lost,
            _ = self.session.wake.notified() => FeedEvent::Wake,
        }
    }

    /// True once the binding ended.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

struct BoundSocket {
    id: u64,
    stop: CancellationToken,
}

#[derive(Default)]
struct SessionState {
    socket: Option<BoundSocket>,
    /// The connect held right now, by number, and its release token.
    held_connect: Option<(u64, CancellationToken)>,
    /// Connects begun so far: numbers the held one.
    connects: u64,
    /// The engine lost the client (see [`Session::lose`]).
    lost: bool,
    /// Lost with no connect held: its socket's pump (or the next connect) owes it the
    /// unknown-client reply.
    reply_owed: bool,
    /// The held connect whose reply must be the unknown-client error.
    lost_reply_for: Option<u64>,
}

/// A client known to this node because it connected here.
pub(crate) struct Session {
    pub(crate) client_id: Arc<str>,
    pub(crate) wake: Notify,
    pub(crate) closed: CancellationToken,
    /// Cancelled when the engine lost the client (its data is gone from the store).
    pub(crate) lost: CancellationToken,
    /// With `bind_client_ip`: the address that handshook this client here.
    pub(crate) owner_ip: OnceLock<IpAddr>,
    state: Mutex<SessionState>,
}

impl Session {
    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        // A poisoned lock only means another task panicked mid-update of plain fields.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while a socket is bound: deliveries go through it, not through connect replies.
    pub(crate) fn has_socket(&self) -> bool {
        self.state().socket.is_some()
    }

    /// Registers a new held connect, releasing the previous one; returns its number (for
    /// [`Session::end_connect`]) and its release token.
    pub(crate) fn begin_connect(&self) -> (u64, CancellationToken) {
        let token = self.closed.child_token();
        let mut state = self.state();
        state.connects += 1;
        let number = state.connects;
        if state.lost {
            // Lost before this connect began: answer at once, with the 401 unless the
            // socket's pump already sent it.
            if std::mem::take(&mut state.reply_owed) {
                state.lost_reply_for = Some(number);
            }
            token.cancel();
            return (number, token);
        }
        if let Some((_, old)) = state.held_connect.replace((number, token.clone())) {
            old.cancel();
        }
        (number, token)
    }

    /// The held connect `number` is answered; true if the client was lost meanwhile, so its
    /// reply must be the unknown-client error. Exactly one of this and the socket pump's
    /// [`Session::take_owed_reply`] answers a lost client.
    pub(crate) fn end_connect(&self, number: u64) -> bool {
        let mut state = self.state();
        if state.held_connect.as_ref().is_some_and(|(n, _)| *n == number) {
            state.held_connect = None;
        }
        if state.lost_reply_for == Some(number) {
            state.lost_reply_for = None;
            return true;
        }
        false
    }

    /// The engine no longer knows this client: release its held connect (whose reply becomes
    /// the unknown-client error) or, with none held, leave that reply to its socket's pump.
    pub(crate) fn lose(&self) {
        let held = {
            let mut state = self.state();
            if state.lost {
                return;
            }
            state.lost = true;
            let held = state.held_connect.take();
            state.reply_owed = held.is_none();
            state.lost_reply_for = held.as_ref().map(|(n, _)| *n);
            held
        };
        if let Some((_, token)) = held {
            token.cancel();
        }
        self.lost.cancel();
    }

    /// True once, for the socket pump of a lost client that had no connect held.
    pub(crate) fn take_owed_reply(&self) -> bool {
        std::mem::take(&mut self.state().reply_owed)
    }

    /// Binds a socket (ending the previous binding, if another socket held it); true if it
    /// was not bound to this one already.
    pub(crate) fn bind_socket(&self, handle: &SocketHandle) -> bool {
        let mut state = self.state();
        if state.socket.as_ref().is_some_and(|s| s.id == handle.id) {
            return false;
        }
        let stop = self.closed.child_token();
        if let Some(old) = state.socket.replace(BoundSocket { id: handle.id, stop }) {
            old.stop.cancel();
        }
        true
    }

    /// The feed of the socket `socket_id`, if it is the one bound.
    pub(crate) fn feed(self: &Arc<Self>, socket_id: u64) -> Option<SocketFeed> {
        let state = self.state();
        let bound = state.socket.as_ref().filter(|s| s.id == socket_id && !s.stop.is_cancelled())?;
        Some(SocketFeed { session: self.clone(), stop: bound.stop.clone() })
    }

    /// Unbinds the socket `socket_id` if it is the bound one, releasing the held connect.
    pub(crate) fn unbind_socket(&self, socket_id: u64) {
        let mut state = self.state();
        if state.socket.as_ref().is_some_and(|s| s.id == socket_id) {
            if let Some(old) = state.socket.take() {
                old.stop.cancel();
            }
            if let Some((_, held)) = state.held_connect.take() {
                held.cancel();
            }
        }
    }
}

/// Every session on this node; the engine's observer.
pub(crate) struct Sessions {
    map: DashMap<Arc<str>, Arc<Session>>,
    metrics: Arc<crate::telemetry::Metrics>,
    pub(crate) events: broadcast::Sender<ServerEvent>,
}

impl Sessions {
    pub(crate) fn new(metrics: Arc<crate::telemetry::Metrics>) -> Self {
        Self { map: DashMap::new(), metrics, events: broadcast::channel(4096).0 }
    }

    pub(crate) fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.map.get(client_id).map(|s| s.clone())
    }

    pub(crate) fn get_or_create(&self, client_id: &str) -> Arc<Session> {
        if let Some(s) = self.get(client_id) {
            return s;
        }
        // One allocation of the id, shared by the map's key and the session.
        let id: Arc<str> = Arc::from(client_id);
        self.map
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Session {
                    client_id: id,
                    wake: Notify::new(),
                    closed: CancellationToken::new(),
                    lost: CancellationToken::new(),
                    owner_ip: OnceLock::new(),
                    state: Mutex::new(SessionState::default()),
                })
            })
            .clone()
    }

    pub(crate) fn emit(&self, make: impl FnOnce() -> ServerEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(make());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

impl EngineObserver for Sessions {
    fn messages_waiting(&self, client_id: &str) {
        if let Some(s) = self.map.get(client_id) {
            s.wake.notify_one();
        }
    }

    fn client_destroyed(&self, client_id: &str) {
        if let Some((_, s)) = self.map.remove(client_id) {
            s.closed.cancel();
        }
        self.emit(|| ServerEvent::Disconnect { client_id: client_id.to_string() });
    }

    fn client_closed(&self, client_id: &str) {
        if let Some((_, s)) = self.map.remove(client_id) {
            s.closed.cancel();
        }
    }

    fn slow_consumer(&self, client_id: &str, queued_bytes: usize) {
        self.metrics.slow_consumer();
        // Once per client: the engine destroys it right after.
        tracing::warn!(client_id, queued_bytes, "slow consumer: its queue outgrew the limit; disconnecting it");
    }

    fn held_clients(&self) -> Vec<Arc<str>> {
        self.map.iter().map(|s| s.key().clone()).collect()
    }

    fn client_lost(&self, client_id: &str) {
        if let Some((_, s)) = self.map.remove(client_id) {
            tracing::debug!(client_id, "client lost by the engine; telling it to handshake again");
            s.lose();
        }
    }

    fn redrain_all(&self) {
        for s in self.map.iter() {
            s.wake.notify_one();
        }
    }

    fn subscribed(&self, client_id: &str, channel: &str) {
        self.metrics.subscriptions(channel, 1);
        self.emit(|| ServerEvent::Subscribe { client_id: client_id.to_string(), channel: channel.to_string() });
    }

    fn unsubscribed(&self, client_id: &str, channel: &str) {
        self.metrics.subscriptions(channel, -1);
        self.emit(|| ServerEvent::Unsubscribe { client_id: client_id.to_string(), channel: channel.to_string() });
    }
}
