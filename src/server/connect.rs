//! `/meta/connect`: keeps the client alive and holds the reply until messages are queued
//! for it or the timeout passes; then the reply leaves with every queued message.

use super::session::Session;
use super::{Item, Server, SocketHandle};
use crate::engine::{EngineError, SharedEnvelope};
use crate::protocol::{BayeuxError, CONNECTION_TYPES, Message};
use std::sync::Arc;
use std::time::Duration;

/// How a held connect ended.
pub(super) enum Released {
    /// Answer it, followed by these messages.
    Deliver(Vec<SharedEnvelope>),
    /// The engine lost the client while it was held: answer with the unknown-client error.
    Lost,
}

/// A connect that passed validation and now waits to be answered.
pub(super) struct ConnectWait {
    session: Arc<Session>,
    hold: Duration,
}

impl ConnectWait {
    pub(super) fn client_id(&self) -> Arc<str> {
        self.session.client_id.clone()
    }

    /// Waits until messages are queued (long-polling) or the hold ends; returns what to
    /// deliver, or [`Released::Lost`] when the engine lost the client meanwhile. A client
    /// bound to a socket gets its messages through the socket, so its connect only waits out
    /// the hold.
    pub(super) async fn wait(self, server: &Server) -> Released {
        let session = self.session.clone();
        let (number, release) = session.begin_connect();
        let delivered = self.hold_until_released(server, &release).await;
        if session.end_connect(number) {
            if !delivered.is_empty() {
                // Taken just before the loss: give them back rather than drop them.
                server.requeue(&session.client_id, delivered).await;
            }
            return Released::Lost;
        }
        Released::Deliver(delivered)
    }

    async fn hold_until_released(
        self,
        server: &Server,
        release: &tokio_util::sync::CancellationToken,
    ) -> Vec<SharedEnvelope> {
        let session = self.session;
        let shutdown = server.shutdown_token().clone();
        let deadline = tokio::time::sleep(self.hold);
        tokio::pin!(deadline);
        loop {
            if !session.has_socket() {
                match server.inner.engine.take_queued(&session.client_id).await {
                    Ok(messages) if !messages.is_empty() => return messages,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(client_id = %session.client_id, error = %e, "cannot read queued messages");
                        return Vec::new();
                    }
                }
            }
            if self.hold.is_zero() {
                return Vec::new();
            }
            tokio::select! {
                _ = session.wake.notified(), if !session.has_socket() => {
                    // Let a burst of publishes land before flushing (Faye's MAX_DELAY = 0).
                    tokio::task::yield_now().await;
                }
                _ = &mut deadline => return Vec::new(),
                _ = release.cancelled() => return Vec::new(),
                _ = shutdown.cancelled() => return Vec::new(), // see Server::finish: advice to go elsewhere
            }
        }
    }
}

impl Server {
    pub(super) async fn connect(
        &self,
        message: &Message,
        socket: Option<&SocketHandle>,
    ) -> Result<Item, (Message, EngineError)> {
        let mut reply = message.reply();
        let client_id = message.client_id.as_deref().unwrap_or("");
        let exists = if client_id.is_empty() {
            false
        } else {
            self.inner.engine.client_exists(client_id).await.map_err(|e| (message.reply(), e))?
        };
        let connection_type = message.connection_type.as_deref().unwrap_or("");
        // Later checks override earlier ones, as in Faye.
        if !exists {
            reply.error = Some(BayeuxError::client_unknown(client_id).to_string());
        }
        if client_id.is_empty() {
            reply.error = Some(BayeuxError::parameter_missing("clientId").to_string());
        }
        if !CONNECTION_TYPES.contains(&connection_type) {
            reply.error = Some(BayeuxError::conntype_mismatch(vec![connection_type.to_string()]).to_string());
        }
        if connection_type.is_empty() {
            reply.error = Some(BayeuxError::parameter_missing("connectionType").to_string());
        }
        if reply.error.is_some() {
            reply.client_id = None;
            self.advise(&mut reply, Some(connection_type));
            return Ok(Item::Ready(reply));
        }

        if let Some(access) = &self.inner.settings.access
            && access.expired(&*self.inner.engine, client_id).await.map_err(|e| (message.reply(), e))?
        {
            // The session ends; a fresh handshake (with a fresh token) starts a new one.
            tracing::debug!(client_id, "token expired: session ended");
            self.inner.engine.destroy_client(client_id).await.map_err(|e| (message.reply(), e))?;
            let _ = access.forget(&*self.inner.engine, client_id).await;
            reply.error = Some(super::access::TOKEN_EXPIRED.to_string());
            reply.client_id = None;
            reply.advice = Some(crate::protocol::advice::handshake());
            return Ok(Item::Ready(reply));
        }
        self.inner.engine.ping(client_id).await.map_err(|e| (message.reply(), e))?;
        // An EventSource connect is a keepalive: its deliveries go through the stream, which
        // claimed the client where it was opened.
        if connection_type != "eventsource" {
            self.inner.engine.claim(client_id).await.map_err(|e| (message.reply(), e))?;
        }
        if let Some(socket) = socket {
            self.bind(client_id, socket);
        }
        let session = self.inner.sessions.get_or_create(client_id);
        let hold = if connection_type == "eventsource" {
            Duration::ZERO
        } else {
            match message.advice_timeout_ms() {
                // A client-sent hold too large for a Duration (e.g. 1e300 ms) is capped, not a panic.
                Some(ms) => Duration::try_from_secs_f64(ms / 1000.0)
                    .unwrap_or(Duration::MAX)
                    .min(self.inner.settings.timeout * 4),
                None => self.inner.settings.timeout,
            }
        };
        self.advise(&mut reply, Some(connection_type));
        Ok(Item::Connect(reply, ConnectWait { session, hold }))
    }
}

#[cfg(test)]
impl ConnectWait {
    /// A wait of one second on `session`, for tests of its future's size.
    pub(super) fn probe(session: Arc<Session>) -> Self {
        Self { session, hold: Duration::from_secs(1) }
    }
}
