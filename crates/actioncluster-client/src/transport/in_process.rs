//! `in-process`: batches go straight to a Bayeux server in the same process through the
//! [`InProcessServer`] trait, with long-polling's semantics (a held connect's reply carries
//! the queued messages) and no socket.

use super::{Event, EventKind, Events, TransportError};
use crate::protocol::{Message, codec};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A Bayeux server the client reaches without a socket: something that processes one batch
/// of messages and returns the JSON array of replies, as one long-polling request would.
/// The server side implements it (the client layer knows only the protocol), e.g. over
/// `actioncluster::Server::process_and_finish` with a request context marked local.
#[async_trait::async_trait]
pub trait InProcessServer: Send + Sync + 'static {
    /// Processes one batch and returns its replies (held connects included) as a JSON array.
    async fn process(&self, messages: Vec<Message>) -> Bytes;
}

/// The in-process transport: one task per batch, cancelled when the transport is dropped.
pub(crate) struct InProcess {
    server: Arc<dyn InProcessServer>,
    generation: u64,
    events: Events,
    max_message_bytes: usize,
    stop: CancellationToken,
    _guard: DropGuard,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl InProcess {
    pub(crate) fn new(
        server: Arc<dyn InProcessServer>,
        max_message_bytes: usize,
        generation: u64,
        events: Events,
    ) -> InProcess {
        let stop = CancellationToken::new();
        InProcess { server, generation, events, max_message_bytes, _guard: stop.clone().drop_guard(), stop }
    }

    pub(crate) fn send(&self, body: Bytes, reply_timeout: Duration, batch: u64) {
        let (server, events, stop) = (self.server.clone(), self.events.clone(), self.stop.clone());
        let (generation, max) = (self.generation, self.max_message_bytes);
        tokio::spawn(async move {
            let kind = match codec::decode(&body, max) {
                Err(e) => EventKind::Lost(e.into()),
                Ok(messages) => {
                    let outcome = tokio::select! {
                        _ = stop.cancelled() => return,
                        outcome = tokio::time::timeout(reply_timeout, server.process(messages)) => outcome,
                    };
                    match outcome {
                        Err(_) => EventKind::Lost(TransportError::ReplyTimeout(reply_timeout)),
                        Ok(reply) => match codec::decode(&reply, max) {
                            Ok(messages) => EventKind::Received { messages, batch: Some(batch) },
                            Err(e) => EventKind::Lost(e.into()),
                        },
                    }
                }
            };
            let _ = events.send(Event { generation, kind });
        });
    }
}
