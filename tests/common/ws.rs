//! Bayeux over a websocket at ws://addr/faye (tokio-tungstenite's client).

use super::WAIT;
use super::bayeux::is_meta;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One websocket connection; reads are frame by frame, each frame a JSON array.
pub struct Ws {
    stream: Stream,
    /// Ping frames seen while reading.
    pub pings: usize,
}

/// What a read found.
#[derive(Debug)]
pub enum Frame {
    /// A text frame holding a JSON array.
    Batch(Vec<Value>),
    /// A ping frame.
    Ping,
    /// The socket was closed.
    Closed,
}

impl Ws {
    /// Opens ws://addr/faye.
    pub async fn open(addr: SocketAddr) -> Self {
        Self::open_path(addr, "/faye").await
    }

    /// Opens ws://addr<path>.
    pub async fn open_path(addr: SocketAddr, path: &str) -> Self {
        let url = format!("ws://{addr}{path}");
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("websocket open in time")
            .expect("websocket open");
        Self { stream, pings: 0 }
    }

    /// Sends `v` (an object or array) as one text frame.
    pub async fn send(&mut self, v: &Value) {
        self.stream.send(WsMessage::Text(v.to_string().into())).await.expect("websocket send");
    }

    /// Sends `text` verbatim as one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(WsMessage::Text(text.to_string().into())).await.expect("websocket send");
    }

    /// Reads until the server closes the socket (within `bound`); returns its close code, or
    /// a description of how the socket ended otherwise.
    pub async fn close_code_within(&mut self, bound: Duration) -> Result<u16, String> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(format!("still open after {bound:?}")),
                Ok(Some(Ok(WsMessage::Close(Some(frame))))) => return Ok(u16::from(frame.code)),
                Ok(Some(Ok(WsMessage::Close(None)))) => return Err("close frame without a code".into()),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(format!("read error: {e}")),
                Ok(None) => return Err("ended without a close frame".into()),
            }
        }
    }

    /// The next frame within `bound`, or `None` if none came.
    pub async fn next_frame_within(&mut self, bound: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()?;
            match next {
                Some(Ok(WsMessage::Text(t))) => match serde_json::from_str::<Value>(&t) {
                    Ok(Value::Array(items)) => return Some(Frame::Batch(items)),
                    other => panic!("websocket frame is not a JSON array: {t:?} ({other:?})"),
                },
                Some(Ok(WsMessage::Ping(_))) => {
                    self.pings += 1;
                    return Some(Frame::Ping);
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return Some(Frame::Closed),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next text frame's messages within `bound` (pings skipped), `None` if none came.
    pub async fn recv_within(&mut self, bound: Duration) -> Option<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame_within(left).await? {
                Frame::Batch(items) => return Some(items),
                Frame::Ping => continue,
                Frame::Closed => panic!("websocket closed while waiting for a frame"),
            }
        }
    }

    /// The next text frame's messages (must come within `WAIT`).
    pub async fn recv(&mut self) -> Vec<Value> {
        self.recv_within(WAIT).await.unwrap_or_else(|| panic!("no websocket frame within {WAIT:?}"))
    }

    /// Sends `v` and returns the next frame.
    pub async fn request(&mut self, v: &Value) -> Vec<Value> {
        self.send(v).await;
        self.recv().await
    }

    /// Handshakes over the socket; returns the client id.
    pub async fn handshake(&mut self) -> String {
        let replies = self
            .request(
                &json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["websocket"]}),
            )
            .await;
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0]["successful"], json!(true), "{replies:?}");
        replies[0]["clientId"].as_str().expect("clientId").to_string()
    }

    /// Subscribes over the socket, asserting success.
    pub async fn subscribe(&mut self, client_id: &str, channel: &str) {
        let replies =
            self.request(&json!({"channel": "/meta/subscribe", "clientId": client_id, "subscription": channel})).await;
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0]["successful"], json!(true), "{replies:?}");
    }

    /// Sends a websocket connect for `client_id` (its reply is held by the server).
    pub async fn send_connect(&mut self, client_id: &str) {
        self.send(&json!({"channel": "/meta/connect", "clientId": client_id, "connectionType": "websocket"})).await;
    }

    /// Reads frames until `n` delivered (non-meta) messages have arrived; meta replies seen on
    /// the way are returned separately.
    pub async fn deliveries(&mut self, n: usize) -> (Vec<Value>, Vec<Value>) {
        let mut delivered = Vec::new();
        let mut meta = Vec::new();
        while delivered.len() < n {
            for m in self.recv().await {
                if is_meta(&m) {
                    meta.push(m);
                } else {
                    delivered.push(m);
                }
            }
        }
        (delivered, meta)
    }

    /// Closes the socket and waits (bounded) for the server's side of the close handshake.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = self.stream.next().await {} }).await;
    }
}
