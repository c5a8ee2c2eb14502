//! `eventsource`: `GET <mount>/<clientId>` with `Accept: text/event-stream` opens a stream
//! bound to that client; deliveries are `data:` events, each a JSON array.

use super::websocket::next_socket_id;
use super::{Body, Shared, bad_request};
use crate::server::{FeedEvent, Server, SocketFeed, SocketHandle};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

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

pub(crate) async fn open<B>(shared: Arc<Shared>, req: Request<B>, _remote: SocketAddr) -> Response<Body> {
    let client_id = req.uri().path().rsplit('/').next().unwrap_or("");
    let socket = SocketHandle { id: next_socket_id() };
    if client_id.is_empty() || !Box::pin(shared.server.attach_socket(client_id, &socket)).await {
        return bad_request("EventSource for an unknown client");
    }
    let Some(feed) = shared.server.socket_feed(client_id, socket.id) else {
        return bad_request("EventSource for an unknown client");
    };
    tracing::debug!(client_id = %client_id, "eventsource opened");
    shared.server.metrics().connection_opened(crate::telemetry::Transport::EventSource);
    let ping = shared.settings.ping.unwrap_or(DEFAULT_PING);
    let body = EventStream {
        preamble: Some(Bytes::from_static(PREAMBLE)),
        // Whatever was queued before the stream opened goes out first.
        next: Mutex::new(next_frame(shared.server.clone(), feed.clone(), true)),
        ping: tokio::time::interval_at(tokio::time::Instant::now() + ping, ping),
        server: shared.server.clone(),
        feed,
        socket_id: socket.id,
        shutdown: Box::pin(shared.shutdown.clone().cancelled_owned()),
        ended: false,
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

/// The first bytes of every stream: the browser's reconnection delay.
const PREAMBLE: &[u8] = b"retry: 5000\r\n\r\n";
const _: () = assert!(RETRY_MS == 5000, "PREAMBLE spells RETRY_MS");

/// What the stream sends next.
enum Next {
    /// A JSON array of deliveries (or the unknown-client reply).
    Data(Bytes),
    /// The binding ended: end the stream.
    End,
}

type NextFrame = Pin<Box<dyn Future<Output = Next> + Send>>;

/// Waits for the client's next messages and takes them, one frame at a time: the stream
/// asks for the next only once hyper took the previous one, so a slow reader leaves them
/// in the engine's queue, where they count against the client's bound. Nothing is buffered
/// here.
fn next_frame(server: Server, feed: SocketFeed, take_first: bool) -> NextFrame {
    Box::pin(async move {
        let mut take = take_first;
        loop {
            if !take {
                match feed.wait().await {
                    FeedEvent::Wake => tokio::task::yield_now().await, // let a burst land
                    FeedEvent::Lost => {
                        return match server.lost_reply(&feed) {
                            Some(reply) => Next::Data(reply),
                            None => Next::End,
                        };
                    }
                    FeedEvent::Stopped => return Next::End,
                }
            }
            take = false;
            match server.take_frame(&feed).await {
                Ok(Some(frame)) => return Next::Data(frame.bytes),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(client_id = %feed.client_id(), error = %e, "cannot read queued messages");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    take = true;
                }
            }
        }
    })
}

struct EventStream {
    preamble: Option<Bytes>,
    /// In a mutex only because a response body must be `Sync`; never contended.
    next: Mutex<NextFrame>,
    ping: tokio::time::Interval,
    server: Server,
    feed: SocketFeed,
    socket_id: u64,
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(p) = self.preamble.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if self.ended || self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let next = this.next.get_mut().unwrap_or_else(PoisonError::into_inner);
        match next.as_mut().poll(cx) {
            Poll::Ready(Next::Data(bytes)) => {
                *next = next_frame(this.server.clone(), this.feed.clone(), false);
                let mut out = BytesMut::with_capacity(bytes.len() + 10);
                out.put_slice(b"data: ");
                out.put_slice(&bytes);
                out.put_slice(b"\r\n\r\n");
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            Poll::Ready(Next::End) => {
                this.ended = true;
                return Poll::Ready(None);
            }
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
        self.server.detach_socket(self.feed.client_id(), self.socket_id);
    }
}
