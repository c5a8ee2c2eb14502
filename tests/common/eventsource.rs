//! An EventSource reader: `GET /faye/<clientId>` with `Accept: text/event-stream`, then the
//! `data:` events of the stream, each parsed as a JSON array.

use super::WAIT;
use super::http;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// An open event stream.
pub struct EventStream {
    pub status: u16,
    pub headers: HeaderMap,
    body: Incoming,
    buf: String,
    /// Comment lines (keepalives) seen so far.
    pub comments: usize,
}

impl EventStream {
    /// Opens the stream for `client_id` (returns once the response head has arrived).
    pub async fn open(addr: SocketAddr, client_id: &str) -> Self {
        let resp = http::open(
            addr,
            "GET",
            &format!("/faye/{client_id}"),
            &[("accept", "text/event-stream"), ("cache-control", "no-cache")],
            bytes::Bytes::new(),
        )
        .await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Self { status, headers, body: resp.into_body(), buf: String::new(), comments: 0 }
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Takes one complete event (terminated by a blank line) out of the buffer.
    fn take_event(&mut self) -> Option<String> {
        let normalized = self.buf.replace("\r\n", "\n").replace('\r', "\n");
        let end = normalized.find("\n\n")?;
        let event = normalized[..end].to_string();
        self.buf = normalized[end + 2..].to_string();
        Some(event)
    }

    /// The next `data:` event within `bound` (retry and comment-only events skipped).
    pub async fn next_data_within(&mut self, bound: Duration) -> Option<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            while let Some(event) = self.take_event() {
                let mut data = Vec::new();
                for line in event.lines() {
                    if let Some(rest) = line.strip_prefix("data:") {
                        data.push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
                    } else if line.starts_with(':') {
                        self.comments += 1;
                    }
                }
                if !data.is_empty() {
                    let text = data.join("\n");
                    return match serde_json::from_str::<Value>(&text) {
                        Ok(Value::Array(items)) => Some(items),
                        other => panic!("event data is not a JSON array: {text:?} ({other:?})"),
                    };
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.ok()?;
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.push_str(std::str::from_utf8(&data).expect("UTF-8 event stream"));
                    }
                }
                Some(Err(e)) => panic!("event stream failed: {e}"),
                None => panic!("event stream ended; unparsed rest {:?}", self.buf),
            }
        }
    }

    /// The next `data:` event (must come within `WAIT`).
    pub async fn next_data(&mut self) -> Vec<Value> {
        self.next_data_within(WAIT).await.unwrap_or_else(|| panic!("no event within {WAIT:?}"))
    }

    /// Reads until a keepalive comment arrives within `bound`; true if one did.
    pub async fn keepalive_within(&mut self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        let before = self.comments;
        loop {
            while let Some(event) = self.take_event() {
                if event.lines().any(|l| l.starts_with(':')) {
                    self.comments += 1;
                }
            }
            if self.comments > before {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.push_str(std::str::from_utf8(&data).expect("UTF-8 event stream"));
                    }
                }
                Ok(_) => return false,
            }
        }
    }

    /// Reads (discarding) until the stream ends within `bound`; true if it did.
    pub async fn ended_within(&mut self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
