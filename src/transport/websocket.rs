//! `websocket`: upgrade at the mount path. Each frame carries a batch; replies and pushed
//! deliveries go out one frame at a time, several messages per frame.
//!
//! One task per socket reads, writes, waits for held connects and takes its client's queue,
//! in one `select!`. Nothing is buffered per socket while it is idle: bytes are read into the
//! stack and copied to the heap only while a frame is incomplete, frames are written straight
//! from the shared encoded bytes, and deliveries stay in the engine's queue (where they count
//! against the client's bound) until the socket is ready to write them. The cold parts
//! (processing a batch, taking the queue) are boxed so the task's idle state stays small.

mod frame;

use super::io::{Io, Prefixed, poll_read_chunk};
use super::{Body, ConnectionSlot, Shared, bad_request, full, text};
use crate::protocol::Message;
use crate::protocol::codec;
use crate::server::{Batch, FeedEvent, OutFrame, RequestContext, SocketFeed, SocketHandle};
use bytes::{Bytes, BytesMut};
use frame::{FrameError, Incoming, close};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::body::Incoming as IncomingBody;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

/// Batches of one websocket that may wait at once (held connects, publishes on their way to
/// the engine) before the socket's reading waits for one of them.
const MAX_WAITING_BATCHES: usize = 64;

/// Replies waiting to be written before reading pauses: a peer that sends without reading
/// cannot make the server queue replies without bound.
const MAX_QUEUED_REPLIES: usize = 16;

/// Once the socket is closing, how long flushing what is queued (and the close frame) may
/// take before the connection is dropped: a peer that stopped reading must not keep the task
/// and its frames alive.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a failed read of the client's queue (redis away) waits before the next try.
const TAKE_RETRY: Duration = Duration::from_millis(500);

static NEXT_SOCKET_ID: AtomicU64 = AtomicU64::new(1);

/// A unique id for a persistent connection (websocket or EventSource).
pub(crate) fn next_socket_id() -> u64 {
    NEXT_SOCKET_ID.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The answer to an upgrade request.
pub(crate) enum Handshake {
    /// The `101 Switching Protocols` to answer, and the socket's request context.
    Accept(Response<Body>, RequestContext),
    /// The refusal to answer instead.
    Refuse(Response<Body>),
}

/// Checks an upgrade request.
pub(crate) fn handshake<B>(shared: &Shared, req: &Request<B>, remote: SocketAddr) -> Handshake {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return Handshake::Refuse(bad_request("websocket upgrade without Sec-WebSocket-Key"));
    };
    if !shared.origin_allowed(req.headers()) {
        // Browsers send Origin on every websocket upgrade and apply no CORS to websockets:
        // the allow-list is the only thing between another site's page and this endpoint.
        tracing::debug!(%remote, origin = ?req.headers().get(header::ORIGIN), "websocket from an origin not in the allow-list");
        return Handshake::Refuse(text(StatusCode::FORBIDDEN, "Forbidden origin"));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Handshake::Accept(resp, super::request_context(req, remote))
}

/// Runs an upgraded socket until it closes. `early` holds bytes the client sent after its
/// upgrade request, read before the socket was handed over.
pub(crate) async fn run_upgraded(shared: Arc<Shared>, io: Io, early: BytesMut, ctx: RequestContext) {
    let mut reader = frame::Reader::default();
    reader.push(&early);
    drop(early);
    let conn = Conn { io, reader, out: None, replies: VecDeque::new(), pong: None, ping_due: false };
    run(&shared, conn, ctx).await;
}

/// An upgrade that reached hyper (a connection hyper already serves): answered by hyper, the
/// socket taken back from it afterwards.
pub(crate) fn upgrade(
    shared: Arc<Shared>,
    mut req: Request<IncomingBody>,
    remote: SocketAddr,
    slot: ConnectionSlot,
) -> Response<Body> {
    let (resp, ctx) = match handshake(&shared, &req, remote) {
        Handshake::Accept(resp, ctx) => (resp, ctx),
        Handshake::Refuse(refusal) => return refusal,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // The socket itself, unwrapped: the HTTP layer's read buffer is let go at once
                // (bytes the client sent early are kept).
                let (io, early) = match upgraded.downcast::<TokioIo<Prefixed>>() {
                    Ok(parts) => {
                        let (mut early, io) = parts.io.into_inner().into_parts();
                        early.extend_from_slice(&parts.read_buf);
                        (io, early)
                    }
                    Err(upgraded) => (Io::Other(Box::new(TokioIo::new(upgraded))), BytesMut::new()),
                };
                run_upgraded(shared, io, early, ctx).await;
                drop(slot); // the websocket no longer counts against max_connections
            }
            Err(e) => tracing::debug!(%remote, error = %e, "websocket upgrade failed"),
        }
    });
    resp
}

/// The client id of the first `/meta/connect` in a batch: the socket belongs to it.
fn connect_client_id(messages: &[Message]) -> Option<String> {
    messages
        .iter()
        .find(|m| m.channel.as_deref() == Some(crate::protocol::channel::meta::CONNECT))
        .and_then(|m| m.client_id.clone())
        .filter(|c| !c.is_empty())
}

/// A reply being finished beside the reading (a held connect, a publish on its way).
type Waiting = Pin<Box<dyn Future<Output = Bytes> + Send>>;
/// A read of the client's queue in progress.
/// (The engine's error as text: the transport layer does not reach into the engine.)
type Taking = Pin<Box<dyn Future<Output = Result<Option<OutFrame>, String>> + Send>>;

/// Why the socket ends, and the close frame to send (if any).
struct Ending {
    close: Option<(u16, &'static str)>,
    /// Let held connects and publishes finish and write their replies first (shutdown: they
    /// carry the advice to reconnect elsewhere).
    finish_waiting: bool,
}

impl Ending {
    fn close(code: u16, reason: &'static str) -> Self {
        Self { close: Some((code, reason)), finish_waiting: false }
    }
}

/// What one decoded frame led to.
enum Processed {
    /// Replies to write now.
    Reply(Bytes),
    /// Replies that wait for held connects or publishes.
    Waiting(Batch),
    /// Not a Bayeux batch: Faye answers nothing and keeps the socket open.
    Ignored,
    /// More messages in one frame than accepted: no Faye client does that.
    TooMany,
}

/// Decodes and applies one frame's batch. Boxed by the caller: its future is large and
/// exists only while a frame is being handled.
async fn process(
    shared: &Shared,
    payload: Bytes,
    ctx: &RequestContext,
    socket: SocketHandle,
    bound: &mut Option<String>,
) -> Processed {
    let messages = match codec::decode(&payload, shared.settings.max_body_bytes) {
        Ok(m) if m.len() > shared.settings.max_batch_messages => {
            tracing::debug!(
                messages = m.len(),
                limit = shared.settings.max_batch_messages,
                "websocket batch over the limit"
            );
            return Processed::TooMany;
        }
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "ignoring a websocket frame that is not a Bayeux batch");
            return Processed::Ignored;
        }
    };
    drop(payload);
    if let Some(cid) = connect_client_id(&messages) {
        if let Some(old) = bound.as_deref()
            && old != cid
        {
            shared.server.detach_socket(old, socket.id);
        }
        *bound = Some(cid);
    }
    let batch = shared.server.process(messages, ctx, Some(&socket)).await;
    if batch.is_waiting() { Processed::Waiting(batch) } else { Processed::Reply(shared.server.finish(batch).await) }
}

async fn run(shared: &Arc<Shared>, mut conn: Conn, ctx: RequestContext) {
    let server = &shared.server;
    let metrics = server.metrics().clone();
    let _open = metrics.connection(crate::telemetry::Transport::WebSocket);
    let socket = SocketHandle { id: next_socket_id() };
    let max_message = shared.settings.max_body_bytes;
    let mut bound: Option<String> = None;
    let mut bound_closed: Option<CancellationToken> = None;
    let mut feed: Option<SocketFeed> = None;
    // The feed woke (or was just bound): take the queue once the socket is ready to write.
    let mut take_due = false;
    let mut taking: Option<Taking> = None;
    let mut retry: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut waiting: FuturesUnordered<Waiting> = FuturesUnordered::new();
    let mut ping = shared.settings.ping.map(|p| (p, Box::pin(tokio::time::sleep(p))));

    let ending = loop {
        if take_due
            && taking.is_none()
            && conn.is_writable_idle()
            && let Some(f) = &feed
        {
            take_due = false;
            let (server, f) = (server.clone(), f.clone());
            taking = Some(Box::pin(async move { server.take_frame(&f).await.map_err(|e| e.to_string()) }));
        }
        let can_read = waiting.len() < MAX_WAITING_BATCHES && conn.replies.len() < MAX_QUEUED_REPLIES;
        let can_wait_feed = feed.is_some() && !take_due && taking.is_none() && retry.is_none();
        let event = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => {
                break Ending { close: Some((close::AWAY, "server shutting down")), finish_waiting: true };
            }
            // The client was destroyed (disconnect, expiry, slow consumer, another node):
            // Faye closes its socket.
            _ = cancelled(&bound_closed) => break Ending::close(close::NORMAL, "client disconnected"),
            r = std::future::poll_fn(|cx| conn.poll_io(cx, can_read, max_message)) => r,
            Some(reply) = waiting.next(), if !waiting.is_empty() => {
                conn.replies.push_back(reply);
                continue;
            }
            r = maybe(taking.as_mut()), if taking.is_some() => {
                taking = None;
                match r {
                    Ok(Some(frame)) => conn.out = Some(Outgoing::deliveries(frame)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read queued messages");
                        retry = Some(Box::pin(tokio::time::sleep(TAKE_RETRY)));
                    }
                }
                continue;
            }
            _ = maybe(retry.as_mut()), if retry.is_some() => {
                retry = None;
                take_due = true;
                continue;
            }
            ev = feed_event(feed.as_ref()), if can_wait_feed => {
                match ev {
                    // Let a burst of publishes land before taking (Faye's MAX_DELAY = 0).
                    FeedEvent::Wake => {
                        tokio::task::yield_now().await;
                        take_due = true;
                    }
                    FeedEvent::Lost => {
                        // No connect was held to carry the news: push it, as a connect reply.
                        if let Some(reply) = feed.as_ref().and_then(|f| server.lost_reply(f)) {
                            conn.replies.push_back(reply);
                        }
                        feed = None;
                    }
                    FeedEvent::Stopped => feed = None,
                }
                continue;
            }
            _ = maybe(ping.as_mut().map(|(_, s)| s)), if ping.is_some() => {
                if let Some((every, sleep)) = ping.as_mut() {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *every);
                }
                conn.ping_due = true;
                continue;
            }
        };
        let payload = match event {
            IoEvent::Message(payload) => payload,
            IoEvent::Written => continue,
            IoEvent::PeerClosed(code) => {
                // Answer a close frame with one (the same code), as RFC 6455 asks.
                break Ending::close(code.unwrap_or(close::NORMAL), "");
            }
            IoEvent::Eof => break Ending { close: None, finish_waiting: false },
            IoEvent::Invalid(e) => {
                tracing::debug!(error = %e, "websocket read failed");
                // Tell a peer that broke the protocol why, as Faye's websocket driver does.
                let reason = match e {
                    FrameError::TooBig { .. } => "message too big",
                    _ => "protocol error",
                };
                break Ending::close(e.close_code(), reason);
            }
            IoEvent::Failed(e) => {
                tracing::debug!(error = %e, "websocket i/o failed");
                break Ending { close: None, finish_waiting: false };
            }
        };
        let before = bound.clone();
        let processed = Box::pin(process(shared, payload, &ctx, socket, &mut bound)).await;
        if bound != before {
            bound_closed = None;
            feed = None;
        }
        if let Some(cid) = &bound {
            if bound_closed.is_none() {
                bound_closed = server.client_closed_token(cid);
            }
            if feed.is_none()
                && let Some(f) = server.socket_feed(cid, socket.id)
            {
                feed = Some(f);
                take_due = true; // whatever was queued before the binding
            }
        }
        match processed {
            Processed::Reply(bytes) => conn.replies.push_back(bytes),
            Processed::Waiting(batch) => {
                let server = server.clone();
                waiting.push(Box::pin(async move { server.finish(batch).await }));
            }
            Processed::Ignored => {}
            Processed::TooMany => break Ending::close(close::POLICY, "more messages in one frame than accepted"),
        }
    };

    // Stop deliveries to this socket and release its held connects.
    if let Some(cid) = bound.take() {
        server.detach_socket(&cid, socket.id);
    }
    drop(feed);
    let closing = async {
        // A read of the queue under way completes, and what it took goes back.
        if let Some(taking) = taking.take()
            && let Ok(Some(frame)) = taking.await
            && let Some(cid) = frame.client_id
        {
            server.requeue(&cid, frame.deliveries).await;
        }
        if ending.finish_waiting {
            while let Some(reply) = waiting.next().await {
                conn.replies.push_back(reply);
            }
        }
        drop(waiting);
        let flushed = std::future::poll_fn(|cx| conn.poll_flush_all(cx)).await;
        if flushed.is_ok()
            && let Some((code, reason)) = ending.close
        {
            conn.out = Some(Outgoing::control(frame::OP_CLOSE, frame::close_payload(code, reason)));
            if std::future::poll_fn(|cx| conn.poll_flush_all(cx)).await.is_ok() {
                let _ = std::future::poll_fn(|cx| Pin::new(&mut conn.io).poll_shutdown(cx)).await;
            }
        }
    };
    if tokio::time::timeout(CLOSE_GRACE, Box::pin(closing)).await.is_err() {
        // The peer stopped reading; dropping the socket closes the connection.
        tracing::debug!("websocket peer does not read; dropping the connection");
    }
    // Whatever was taken for this socket but never written goes back to its client's queue.
    if let Some(Outgoing { frame: Some(frame), .. }) = conn.out.take()
        && let Some(cid) = frame.client_id
    {
        server.requeue(&cid, frame.deliveries).await;
    }
}

/// Awaits the future if there is one; never resolves without one.
async fn maybe<F: Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The feed's next event; never resolves without a feed.
async fn feed_event(feed: Option<&SocketFeed>) -> FeedEvent {
    match feed {
        Some(f) => f.wait().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the token (if any) is cancelled; never without one.
async fn cancelled(token: &Option<CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

/// One frame being written: its header, then its payload straight from the shared bytes.
struct Outgoing {
    header: [u8; 10],
    header_len: u8,
    /// Bytes of header + payload written so far.
    written: usize,
    payload: Bytes,
    /// The deliveries it carries, handed back to the queue if it is never written.
    frame: Option<OutFrame>,
}

impl Outgoing {
    fn control(opcode: u8, payload: Bytes) -> Self {
        let (header, header_len) = frame::header(opcode, payload.len());
        Self { header, header_len, written: 0, payload, frame: None }
    }

    fn text(payload: Bytes) -> Self {
        Self::control(frame::OP_TEXT, payload)
    }

    fn deliveries(mut frame: OutFrame) -> Self {
        let mut out = Self::text(std::mem::take(&mut frame.bytes));
        out.frame = Some(frame);
        out
    }

    fn len(&self) -> usize {
        self.header_len as usize + self.payload.len()
    }
}

/// What the socket's I/O produced.
enum IoEvent {
    /// A whole message from the peer.
    Message(Bytes),
    /// Everything queued was written: the next frame (deliveries) may be taken.
    Written,
    /// The peer sent a close frame (with this code).
    PeerClosed(Option<u16>),
    /// The peer closed the connection without a close frame.
    Eof,
    /// The peer broke the protocol.
    Invalid(FrameError),
    /// Reading or writing failed.
    Failed(io::Error),
}

/// The socket and what is on its way in and out.
struct Conn {
    io: Io,
    reader: frame::Reader,
    /// The frame being written.
    out: Option<Outgoing>,
    /// Replies to write, in order.
    replies: VecDeque<Bytes>,
    /// The payload of the latest ping to answer (RFC 6455 lets a pong answer only the latest).
    pong: Option<Bytes>,
    /// A keepalive ping is due.
    ping_due: bool,
}

impl Conn {
    /// True when nothing is being written or waits to be: deliveries may be taken.
    fn is_writable_idle(&self) -> bool {
        self.out.is_none() && self.replies.is_empty() && self.pong.is_none() && !self.ping_due
    }

    /// The next frame to write, control frames first.
    fn next_out(&mut self) -> Option<Outgoing> {
        if let Some(p) = self.pong.take() {
            return Some(Outgoing::control(frame::OP_PONG, p));
        }
        if std::mem::take(&mut self.ping_due) {
            return Some(Outgoing::control(frame::OP_PING, Bytes::new()));
        }
        self.replies.pop_front().map(Outgoing::text)
    }

    /// Writes what is queued, one frame at a time. `Ready(Ok(true))` when something was
    /// written and nothing is left.
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut wrote = false;
        loop {
            if self.out.is_none() {
                self.out = self.next_out();
            }
            let Some(out) = self.out.as_mut() else {
                if wrote {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                }
                return Poll::Ready(Ok(wrote));
            };
            while out.written < out.len() {
                let header_len = out.header_len as usize;
                let n = if out.written < header_len {
                    let bufs = [IoSlice::new(&out.header[out.written..header_len]), IoSlice::new(&out.payload)];
                    ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &bufs))?
                } else {
                    ready!(Pin::new(&mut self.io).poll_write(cx, &out.payload[out.written - header_len..]))?
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                out.written += n;
            }
            self.out = None;
            wrote = true;
        }
    }

    /// Writes everything queued and flushes.
    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_queued(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Drives the socket: writes what is queued, then (when `can_read`) reads until a whole
    /// message arrives.
    fn poll_io(&mut self, cx: &mut Context<'_>, can_read: bool, max_message: usize) -> Poll<IoEvent> {
        loop {
            match self.poll_write_queued(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(IoEvent::Failed(e)),
                Poll::Ready(Ok(true)) => return Poll::Ready(IoEvent::Written),
                Poll::Ready(Ok(false)) | Poll::Pending => {}
            }
            if !can_read {
                return Poll::Pending;
            }
            match self.reader.next(max_message) {
                Err(e) => return Poll::Ready(IoEvent::Invalid(e)),
                Ok(Some(Incoming::Message(m))) => return Poll::Ready(IoEvent::Message(m)),
                Ok(Some(Incoming::Close(code))) => return Poll::Ready(IoEvent::PeerClosed(code)),
                Ok(Some(Incoming::Ping(p))) => {
                    self.pong = Some(p);
                    continue;
                }
                Ok(None) => {}
            }
            // Into the stack: an idle socket keeps no read buffer.
            let reader = &mut self.reader;
            match poll_read_chunk(&mut self.io, cx, |bytes| reader.push(bytes)) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(IoEvent::Failed(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(IoEvent::Eof),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}
