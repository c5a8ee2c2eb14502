//! The client's transports: each carries batches of Bayeux messages to the server and hands
//! every received message (replies and deliveries alike) to the driver as events.

#[cfg(feature = "in-process")]
mod in_process;
mod long_polling;
mod websocket;

use super::{ClientError, ConnectionType, TransportPreference};
use crate::protocol::Message;
use crate::protocol::codec::CodecError;
use bytes::Bytes;
use hyper::Uri;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

#[cfg(feature = "in-process")]
pub(crate) use in_process::InProcess;
#[cfg(feature = "in-process")]
pub use in_process::InProcessServer;
pub(crate) use long_polling::LongPolling;
#[cfg(feature = "in-process")]
use std::sync::Arc;
pub(crate) use websocket::WebSocket;

/// Why a transport could not carry a request or its reply.
#[derive(Debug, Error)]
pub enum TransportError {
    /// Opening the connection took longer than the connect timeout.
    #[error("connecting timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// No reply within the time the server's advice allows.
    #[error("no reply within {0:?}")]
    ReplyTimeout(Duration),
    /// A socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// An HTTP protocol error.
    #[error("http error: {0}")]
    Http(#[from] hyper::Error),
    /// The server answered a long-polling request with a status other than 200.
    #[error("the server answered HTTP {0}")]
    Status(u16),
    /// Reading a reply body failed or it exceeded the size limit.
    #[error("reading the reply failed: {0}")]
    Body(String),
    /// A websocket error, including a refused upgrade.
    #[error("websocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server closed the websocket.
    #[error("the server closed the websocket{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    /// The reply was not a Bayeux message array.
    #[error("undecodable reply: {0}")]
    Decode(#[from] CodecError),
}

/// The server's address in the forms the transports need.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `host:port` for the `Host` header.
    pub(crate) authority: String,
    /// Host to connect to.
    pub(crate) host: String,
    /// Port to connect to.
    pub(crate) port: u16,
    /// Path (and query) of the Bayeux endpoint.
    pub(crate) path: String,
    /// The websocket URL of the same endpoint.
    pub(crate) ws_url: String,
}

impl Endpoint {
    /// Accepts `http://host[:port]/path` or `ws://host[:port]/path`.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let invalid = |reason| ClientError::InvalidUrl { url: url.to_string(), reason };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme_str() {
            Some("http" | "ws") => {}
            Some("https" | "wss") => return Err(invalid("TLS is not supported by this client; use http:// or ws://")),
            _ => return Err(invalid("the scheme must be http:// or ws://")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map(|p| p.as_str()).filter(|p| !p.is_empty()).unwrap_or("/").to_string();
        Ok(Endpoint {
            authority: authority.as_str().to_string(),
            ws_url: format!("ws://{}{}", authority.as_str(), path),
            host,
            port,
            path,
        })
    }
}

/// Where the client connects: a URL, or a server in the same process.
#[derive(Clone)]
pub(crate) enum Target {
    Remote(Endpoint),
    #[cfg(feature = "in-process")]
    Local(Arc<dyn InProcessServer>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Remote(endpoint) => write!(f, "{}", endpoint.ws_url),
            #[cfg(feature = "in-process")]
            Target::Local(_) => f.write_str("in-process"),
        }
    }
}

/// What a transport reports to the driver. `generation` names the transport instance, so
/// reports from a transport the driver already gave up on are recognised.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) generation: u64,
    pub(crate) kind: EventKind,
}

#[derive(Debug)]
pub(crate) enum EventKind {
    /// The transport is open.
    Opened(Transport),
    /// No transport could be opened.
    OpenFailed(TransportError),
    /// Messages arrived: replies and delivered messages; `batch` names the long-polling
    /// POST they answer.
    Received { messages: Vec<Message>, batch: Option<u64> },
    /// The transport failed; whatever was in flight on it is lost.
    Lost(TransportError),
}

pub(crate) type Events = mpsc::UnboundedSender<Event>;

/// Settings every transport needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_message_bytes: usize,
}

/// An open transport. Dropping it stops its tasks and closes its connections.
#[derive(Debug)]
pub(crate) enum Transport {
    WebSocket(WebSocket),
    LongPolling(LongPolling),
    #[cfg(feature = "in-process")]
    InProcess(InProcess),
}

impl Transport {
    pub(crate) fn connection_type(&self) -> ConnectionType {
        match self {
            Transport::WebSocket(_) => ConnectionType::WebSocket,
            Transport::LongPolling(_) => ConnectionType::LongPolling,
            #[cfg(feature = "in-process")]
            Transport::InProcess(_) => ConnectionType::InProcess,
        }
    }

    /// True when each batch is its own request (no ordering between concurrent ones).
    pub(crate) fn is_request_response(&self) -> bool {
        !matches!(self, Transport::WebSocket(_))
    }

    /// Sends one batch (a JSON array). Replies arrive as [`EventKind::Received`]; a failure
    /// as [`EventKind::Lost`]. `reply_timeout` bounds a long-polling request; `batch` tags its
    /// reply.
    pub(crate) fn send(&self, body: Bytes, reply_timeout: Duration, batch: u64) {
        match self {
            Transport::WebSocket(ws) => ws.send(body),
            Transport::LongPolling(lp) => lp.send(body, reply_timeout, batch),
            #[cfg(feature = "in-process")]
            Transport::InProcess(local) => local.send(body, reply_timeout, batch),
        }
    }
}

/// Opens a transport as `preference` says, reporting the outcome as an event.
pub(crate) async fn open(
    target: Target,
    preference: TransportPreference,
    limits: Limits,
    generation: u64,
    events: Events,
) {
    #[cfg_attr(not(feature = "in-process"), allow(clippy::infallible_destructuring_match))]
    let endpoint = match target {
        Target::Remote(endpoint) => endpoint,
        #[cfg(feature = "in-process")]
        Target::Local(server) => {
            let local = InProcess::new(server, limits.max_message_bytes, generation, events.clone());
            let _ = events.send(Event { generation, kind: EventKind::Opened(Transport::InProcess(local)) });
            return;
        }
    };
    let kind = match preference {
        TransportPreference::LongPolling => {
            EventKind::Opened(Transport::LongPolling(LongPolling::new(endpoint, limits, generation, events.clone())))
        }
        TransportPreference::WebSocket => match WebSocket::open(&endpoint, limits, generation, events.clone()).await {
            Ok(ws) => EventKind::Opened(Transport::WebSocket(ws)),
            Err(e) => EventKind::OpenFailed(e),
        },
        TransportPreference::Auto => match WebSocket::open(&endpoint, limits, generation, events.clone()).await {
            Ok(ws) => EventKind::Opened(Transport::WebSocket(ws)),
            Err(e) => {
                tracing::debug!(error = %e, "websocket unavailable, falling back to long-polling");
                EventKind::Opened(Transport::LongPolling(LongPolling::new(
                    endpoint,
                    limits,
                    generation,
                    events.clone(),
                )))
            }
        },
    };
    let _ = events.send(Event { generation, kind });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8000/faye").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("127.0.0.1", 8000, "/faye"));
        assert_eq!(e.ws_url, "ws://127.0.0.1:8000/faye");
        let e = Endpoint::parse("ws://localhost").unwrap();
        assert_eq!((e.port, e.path.as_str(), e.authority.as_str()), (80, "/", "localhost"));
        let e = Endpoint::parse("http://[::1]:9/b").unwrap();
        assert_eq!(e.host, "::1");
        assert!(Endpoint::parse("https://x/faye").is_err());
        assert!(Endpoint::parse("ftp://x/faye").is_err());
        assert!(Endpoint::parse("/faye").is_err());
    }
}
