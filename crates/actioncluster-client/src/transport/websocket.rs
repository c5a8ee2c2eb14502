//! `websocket`: one socket carries every batch as a text frame; replies and pushed messages
//! come back as JSON arrays, possibly several messages per frame.

use super::{Endpoint, Event, EventKind, Events, Limits, TransportError};
use crate::protocol::codec;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Utf8Bytes, protocol::CloseFrame};
use tokio_util::sync::{CancellationToken, DropGuard};

/// An open websocket: a writer task fed by `frames` and a reader task reporting to the driver.
#[derive(Debug)]
pub(crate) struct WebSocket {
    frames: mpsc::UnboundedSender<Bytes>,
    _stop: DropGuard,
}

impl WebSocket {
    /// Connects and upgrades; a refused upgrade is an error (the caller may fall back).
    pub(crate) async fn open(
        endpoint: &Endpoint,
        limits: Limits,
        generation: u64,
        events: Events,
    ) -> Result<WebSocket, TransportError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_message_bytes));
        let connecting = tokio_tungstenite::connect_async_with_config(endpoint.ws_url.as_str(), Some(config), true);
        let (socket, _response) = tokio::time::timeout(limits.connect_timeout, connecting)
            .await
            .map_err(|_| TransportError::ConnectTimeout(limits.connect_timeout))??;
        tracing::debug!(url = %endpoint.ws_url, "websocket open");
        let (mut sink, mut stream) = socket.split();
        let (frames, mut queue) = mpsc::unbounded_channel::<Bytes>();
        let stop = CancellationToken::new();

        let writer_stop = stop.clone();
        let writer_events = events.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = writer_stop.cancelled() => break,
                    frame = queue.recv() => frame,
                };
                let Some(frame) = frame else { break };
                let result = async {
                    sink.feed(text(frame)?).await?;
                    while let Ok(more) = queue.try_recv() {
                        sink.feed(text(more)?).await?;
                    }
                    sink.flush().await
                }
                .await;
                if let Err(e) = result {
                    let _ = writer_events.send(Event { generation, kind: EventKind::Lost(e.into()) });
                    return;
                }
            }
            let close = async {
                let _ = sink.send(WsMessage::Close(None)).await;
                let _ = sink.close().await;
            };
            let _ = tokio::time::timeout(limits.connect_timeout, close).await;
        });

        let reader_stop = stop.clone();
        let max = limits.max_message_bytes;
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = reader_stop.cancelled() => return,
                    next = stream.next() => next,
                };
                let payload: Bytes = match next {
                    Some(Ok(WsMessage::Text(t))) => Bytes::from(t),
                    Some(Ok(WsMessage::Binary(b))) => b,
                    Some(Ok(WsMessage::Close(frame))) => {
                        let reason = frame.map(|CloseFrame { code, reason }| format!("{code} {reason}"));
                        let _ =
                            events.send(Event { generation, kind: EventKind::Lost(TransportError::Closed(reason)) });
                        return;
                    }
                    Some(Ok(_)) => continue, // ping/pong: tungstenite answers pings itself
                    Some(Err(e)) => {
                        let _ = events.send(Event { generation, kind: EventKind::Lost(e.into()) });
                        return;
                    }
                    None => {
                        let _ = events.send(Event { generation, kind: EventKind::Lost(TransportError::Closed(None)) });
                        return;
                    }
                };
                match codec::decode(&payload, max) {
                    Ok(messages) if messages.is_empty() => {}
                    Ok(messages) => {
                        tracing::trace!(count = messages.len(), "websocket frame received");
                        let _ = events.send(Event { generation, kind: EventKind::Received { messages, batch: None } });
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an undecodable websocket frame"),
                }
            }
        });

        Ok(WebSocket { frames, _stop: stop.drop_guard() })
    }

    /// Queues one batch for the writer. A dead writer has already reported the loss.
    pub(crate) fn send(&self, body: Bytes) {
        let _ = self.frames.send(body);
    }
}

fn text(frame: Bytes) -> Result<WsMessage, tokio_tungstenite::tungstenite::Error> {
    Ok(WsMessage::Text(Utf8Bytes::try_from(frame)?))
}
