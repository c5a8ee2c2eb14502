//! `long-polling`: every batch is a POST of `application/json`; the reply array carries the
//! replies, and a connect's reply is followed by the messages queued for the client. Kept-alive
//! HTTP/1.1 connections are reused, so the held connect and a publish use two of them.

use super::{Endpoint, Event, EventKind, Events, Limits, TransportError};
use crate::protocol::codec;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections kept for reuse; more are closed when they come back.
const MAX_IDLE: usize = 4;

/// The long-polling transport: stateless but for a small pool of idle connections.
#[derive(Debug)]
pub(crate) struct LongPolling {
    http: Arc<Http>,
    generation: u64,
    events: Events,
    stop: CancellationToken,
    _guard: DropGuard,
}

#[derive(Debug)]
struct Http {
    endpoint: Endpoint,
    limits: Limits,
    idle: Mutex<Vec<Sender>>,
}

impl LongPolling {
    pub(crate) fn new(endpoint: Endpoint, limits: Limits, generation: u64, events: Events) -> LongPolling {
        let stop = CancellationToken::new();
        LongPolling {
            http: Arc::new(Http { endpoint, limits, idle: Mutex::new(Vec::new()) }),
            generation,
            events,
            _guard: stop.clone().drop_guard(),
            stop,
        }
    }

    /// POSTs one batch on its own task; the reply (or the failure) becomes an event.
    pub(crate) fn send(&self, body: Bytes, reply_timeout: Duration, batch: u64) {
        let http = self.http.clone();
        let events = self.events.clone();
        let generation = self.generation;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = tokio::time::timeout(reply_timeout, http.post(body)) => outcome,
            };
            let kind = match outcome {
                Err(_) => EventKind::Lost(TransportError::ReplyTimeout(reply_timeout)),
                Ok(Err(e)) => EventKind::Lost(e),
                Ok(Ok(reply)) => match codec::decode(&reply, http.limits.max_message_bytes) {
                    Ok(messages) => EventKind::Received { messages, batch: Some(batch) },
                    Err(e) => EventKind::Lost(e.into()),
                },
            };
            let _ = events.send(Event { generation, kind });
        });
    }
}

impl Http {
    async fn post(&self, body: Bytes) -> Result<Bytes, TransportError> {
        // A kept-alive connection the server closed meanwhile fails before any reply; such a
        // request was not processed, so it is retried once on a fresh connection.
        if let Some(mut sender) = self.take_idle()
            && sender.ready().await.is_ok()
        {
            match self.post_on(sender, body.clone()).await {
                Err(TransportError::Http(e)) if e.is_canceled() || e.is_incomplete_message() => {
                    tracing::debug!(error = %e, "kept-alive connection was closed; retrying on a new one");
                }
                other => return other,
            }
        }
        let sender = self.open().await?;
        self.post_on(sender, body).await
    }

    async fn post_on(&self, mut sender: Sender, body: Bytes) -> Result<Bytes, TransportError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.path.as_str())
            .header(HOST, self.endpoint.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| TransportError::Body(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let reply = Limited::new(response.into_body(), self.limits.max_message_bytes)
            .collect()
            .await
            .map_err(|e| TransportError::Body(e.to_string()))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(TransportError::Status(status.as_u16()));
        }
        self.put_idle(sender);
        Ok(reply)
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    async fn open(&self) -> Result<Sender, TransportError> {
        let limit = self.limits.connect_timeout;
        let connecting = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port));
        let stream =
            tokio::time::timeout(limit, connecting).await.map_err(|_| TransportError::ConnectTimeout(limit))??;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "long-polling connection ended");
            }
        });
        Ok(sender)
    }
}
