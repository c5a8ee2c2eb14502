//! `websocket`: upgrade at the mount path. Each frame carries a batch; replies and pushed
//! deliveries leave through one writer, several messages per frame.

use super::{Body, ConnectionSlot, Shared, bad_request, full, text};
use crate::protocol::Message;
use crate::protocol::codec;
use crate::server::{OutFrame, RequestContext, SocketHandle};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// Batches of one websocket that may wait at once (held connects, publishes on their way to
/// the engine) before the socket's reading waits for one of them.
const MAX_WAITING_BATCHES: usize = 64;

/// Frames waiting for one socket's writer; a full queue makes the delivery pump wait.
const WRITE_QUEUE: usize = 16;

/// Once the reading side is done, how long the writer may take to flush what is queued (and
/// the close frame) before the connection is dropped: a peer that stopped reading must not
/// keep the task and its frames alive.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// Initial read and write buffer of each websocket.
const SOCKET_BUFFER_BYTES: usize = 4096;

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

pub(crate) fn upgrade(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    slot: ConnectionSlot,
) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return bad_request("websocket upgrade without Sec-WebSocket-Key");
    };
    if !shared.origin_allowed(req.headers()) {
        // Browsers send Origin on every websocket upgrade and apply no CORS to websockets:
        // the allow-list is the only thing between another site's page and this endpoint.
        tracing::debug!(%remote, origin = ?req.headers().get(header::ORIGIN), "websocket from an origin not in the allow-list");
        return text(StatusCode::FORBIDDEN, "Forbidden origin");
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let ctx = super::request_context(&req, remote);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let limit = shared.settings.max_body_bytes;
                // Small per-socket buffers: an idle connection should cost kilobytes, not the
                // 128 KiB tungstenite allocates by default (they grow for large messages).
                let config = WebSocketConfig::default()
                    .read_buffer_size(SOCKET_BUFFER_BYTES)
                    .write_buffer_size(SOCKET_BUFFER_BYTES)
                    .max_message_size(Some(limit))
                    .max_frame_size(Some(limit));
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                run(shared, ws, ctx).await;
                drop(slot); // the websocket no longer counts against max_connections
            }
            Err(e) => tracing::debug!(%remote, error = %e, "websocket upgrade failed"),
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
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

async fn run<S>(shared: Arc<Shared>, ws: WebSocketStream<S>, ctx: RequestContext)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let metrics = shared.server.metrics().clone();
    let _open = metrics.connection(crate::telemetry::Transport::WebSocket);
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel::<OutFrame>(WRITE_QUEUE);
    let (close_tx, close_rx) = mpsc::channel::<CloseFrame>(1);
    let socket = SocketHandle { id: next_socket_id(), tx };
    let mut writer = tokio::spawn(write_loop(shared.clone(), sink, rx, close_rx));
    let mut bound: Option<String> = None;
    let mut bound_closed: Option<CancellationToken> = None;
    // Made on the first batch that waits, so an idle socket does not carry it.
    let mut waiting_batches: Option<Arc<tokio::sync::Semaphore>> = None;

    loop {
        let next = tokio::select! {
            m = stream.next() => m,
            _ = cancelled(&bound_closed) => {
                // The client was destroyed (disconnect, expiry, another node): Faye closes its socket.
                let _ = close_tx.try_send(CloseFrame { code: CloseCode::Normal, reason: "client disconnected".into() });
                break;
            }
            _ = shared.shutdown.cancelled() => {
                let _ = close_tx.try_send(CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() });
                break;
            }
        };
        let payload: Bytes = match next {
            Some(Ok(WsMessage::Text(t))) => Bytes::from(t),
            Some(Ok(WsMessage::Binary(b))) => b,
            Some(Ok(WsMessage::Close(_))) | None => break,
            Some(Ok(_)) => continue, // ping/pong handled by tungstenite
            Some(Err(tungstenite::Error::Capacity(e))) => {
                tracing::debug!(error = %e, "websocket message over the limit");
                let _ = close_tx.try_send(CloseFrame { code: CloseCode::Size, reason: "message too big".into() });
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                // Tell a peer that broke the protocol why, as Faye's websocket driver does.
                let code = match &e {
                    tungstenite::Error::Utf8(_) => Some(CloseCode::Invalid),
                    tungstenite::Error::Protocol(_) => Some(CloseCode::Protocol),
                    _ => None,
                };
                if let Some(code) = code {
                    let _ = close_tx.try_send(CloseFrame { code, reason: "protocol error".into() });
                }
                break;
            }
        };
        let messages = match codec::decode(&payload, shared.settings.max_body_bytes) {
            Ok(m) if m.len() > shared.settings.max_batch_messages => {
                // Faye's websocket client sends one message per frame: this is no Faye client.
                tracing::debug!(
                    messages = m.len(),
                    limit = shared.settings.max_batch_messages,
                    "websocket batch over the limit"
                );
                let reason = format!("more than {} messages in one frame", shared.settings.max_batch_messages);
                let _ = close_tx.try_send(CloseFrame { code: CloseCode::Policy, reason: reason.into() });
                break;
            }
            Ok(m) => m,
            Err(e) => {
                // Faye answers nothing to a frame it cannot parse and keeps the socket open.
                tracing::debug!(error = %e, "ignoring a websocket frame that is not a Bayeux batch");
                continue;
            }
        };
        if let Some(cid) = connect_client_id(&messages) {
            if let Some(old) = bound.as_deref()
                && old != cid
            {
                shared.server.detach_socket(old, socket.id);
            }
            if bound.as_deref() != Some(cid.as_str()) {
                bound_closed = None;
            }
            bound = Some(cid);
        }
        let batch = shared.server.process(messages, &ctx, Some(&socket)).await;
        if bound_closed.is_none()
            && let Some(cid) = &bound
        {
            bound_closed = shared.server.client_closed_token(cid);
        }
        if batch.is_waiting() {
            // Held connects and publishes on their way finish beside the reading, but a peer
            // may have only so many of them at once: past that, reading waits (backpressure).
            let pending =
                waiting_batches.get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_WAITING_BATCHES)));
            let permit = tokio::select! {
                biased;
                p = pending.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = cancelled(&bound_closed) => break,
                _ = shared.shutdown.cancelled() => break,
            };
            let server = shared.server.clone();
            let tx = socket.tx.clone();
            tokio::spawn(async move {
                let bytes = server.finish(batch).await;
                let _ = tx.send(OutFrame { bytes, client_id: None, deliveries: Vec::new(), in_flight: None }).await;
                drop(permit);
            });
        } else {
            let bytes = shared.server.finish(batch).await;
            let frame = OutFrame { bytes, client_id: None, deliveries: Vec::new(), in_flight: None };
            // A peer that sends without reading fills the write queue: stop waiting for room
            // once its client is destroyed or the node shuts down. Biased: a reply that fits
            // goes out even when this very batch destroyed the client (a disconnect).
            let sent = tokio::select! {
                biased;
                r = socket.tx.send(frame) => r.is_ok(),
                _ = cancelled(&bound_closed) => false,
                _ = shared.shutdown.cancelled() => false,
            };
            if !sent {
                break;
            }
        }
    }
    if let Some(cid) = bound {
        shared.server.detach_socket(&cid, socket.id);
    }
    drop(socket);
    if tokio::time::timeout(WRITER_GRACE, &mut writer).await.is_err() {
        // The peer stopped reading; dropping the writer's half closes the connection.
        tracing::debug!("websocket writer stuck on a peer that does not read; dropping the connection");
        writer.abort();
    }
}

async fn write_loop<K>(
    shared: Arc<Shared>,
    mut sink: K,
    mut rx: mpsc::Receiver<OutFrame>,
    mut close_rx: mpsc::Receiver<CloseFrame>,
) where
    K: futures_util::Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    let ping_every = shared.settings.ping;
    let mut ping = ping_every.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
    loop {
        let frame = tokio::select! {
            biased;
            f = rx.recv() => match f {
                Some(f) => f,
                None => {
                    if let Ok(close) = close_rx.try_recv() {
                        let _ = sink.send(WsMessage::Close(Some(close))).await;
                    }
                    break;
                }
            },
            Some(close) = close_rx.recv() => {
                // Whatever was queued before the close (e.g. a disconnect reply) goes first.
                while let Ok(frame) = rx.try_recv() {
                    if write_frame(&mut sink, &frame).await.is_err() {
                        give_back(&shared, frame).await;
                        break;
                    }
                }
                let _ = sink.send(WsMessage::Close(Some(close))).await;
                break;
            }
            _ = async { match ping.as_mut() { Some(p) => { p.tick().await; } None => std::future::pending().await } } => {
                if sink.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if write_frame(&mut sink, &frame).await.is_err() {
            give_back(&shared, frame).await;
            break;
        }
    }
    // Whatever was queued for this socket but never written goes back to its client's queue.
    rx.close();
    while let Some(frame) = rx.recv().await {
        give_back(&shared, frame).await;
    }
    let _ = sink.close().await;
}

async fn write_frame<K>(sink: &mut K, frame: &OutFrame) -> Result<(), tungstenite::Error>
where
    K: futures_util::Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    let text = match Utf8Bytes::try_from(frame.bytes.clone()) {
        Ok(t) => t,
        Err(_) => Utf8Bytes::from(String::from_utf8_lossy(&frame.bytes).into_owned()),
    };
    sink.send(WsMessage::Text(text)).await
}

/// Resolves when the token (if any) is cancelled; never without one.
async fn cancelled(token: &Option<CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn give_back(shared: &Shared, frame: OutFrame) {
    if let Some(cid) = frame.client_id {
        shared.server.requeue(&cid, frame.deliveries).await;
    }
}
