//! `eventsource`: `GET <mount>/<clientId>` with `Accept: text/event-stream` opens a stream
//! bound to that client; deliveries are `data:` events, each a JSON array.

use super::websocket::next_socket_id;
use super::{Body, Shared, bad_request};
use crate::server::{OutFrame, Server, SocketHandle};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Reconnection delay advertised to the browser (`retry:`), ms.
const RETRY_MS: u64 = 5000;
/// Keepalive comment interval when no `ping` is configured.
const DEFAULT_PING: Duration = Duration::from_secs(10);

pub(crate) fn is_eventsource<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == "text/event-stream"))
}

pub(crate) async fn open(shared: Arc<Shared>, req: Request<Incoming>, _remote: SocketAddr) -> Response<Body> {
    let client_id = req.uri().path().rsplit('/').next().unwrap_or("").to_string();
    let (tx, rx) = mpsc::channel::<OutFrame>(16);
    let socket = SocketHandle { id: next_socket_id(), tx };
    if client_id.is_empty() || !shared.server.attach_socket(&client_id, &socket).await {
        return bad_request("EventSource for an unknown client");
    }
    tracing::debug!(client_id = %client_id, "eventsource opened");
    shared.server.metrics().connection_opened(crate::telemetry::Transport::EventSource);
    let ping = shared.settings.ping.unwrap_or(DEFAULT_PING);
    let body = EventStream {
        preamble: Some(Bytes::from(format!("retry: {RETRY_MS}\r\n\r\n"))),
        rx,
        ping: tokio::time::interval_at(tokio::time::Instant::now() + ping, ping),
        server: shared.server.clone(),
        client_id,
        socket_id: socket.id,
        shutdown: Box::pin(shared.shutdown.clone().cancelled_owned()),
    };
    let mut resp = Response::new(body.boxed());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    if let Some(origin) = shared.cors_origin(req.headers()) {
        h.insert("access-control-allow-credentials", HeaderValue::from_static("true"));
        h.insert("access-control-allow-origin", origin);
    }
    resp
}

struct EventStream {
    preamble: Option<Bytes>,
    rx: mpsc::Receiver<OutFrame>,
    ping: tokio::time::Interval,
    server: Server,
    client_id: String,
    socket_id: u64,
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(p) = self.preamble.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                let mut out = BytesMut::with_capacity(frame.bytes.len() + 10);
                out.put_slice(b"data: ");
                out.put_slice(&frame.bytes);
                out.put_slice(b"\r\n\r\n");
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if self.ping.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b":\r\n\r\n")))));
        }
        Poll::Pending
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.server.metrics().connection_closed(crate::telemetry::Transport::EventSource);
        self.server.detach_socket(&self.client_id, self.socket_id);
        // Frames accepted for this stream but never written go back to the client's queue.
        self.rx.close();
        let mut undelivered = Vec::new();
        while let Ok(frame) = self.rx.try_recv() {
            undelivered.extend(frame.deliveries);
        }
        if !undelivered.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let server = self.server.clone();
            let client_id = self.client_id.clone();
            rt.spawn(async move { server.requeue(&client_id, undelivered).await });
        }
    }
}
