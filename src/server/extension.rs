//! Server extensions: hooks that see (and may rewrite or reject) every incoming message and
//! every outgoing reply or delivered message, as Faye's `addExtension` does.

use crate::protocol::Message;
use std::net::SocketAddr;

/// Where a batch of messages came from.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// Remote address of the connection, when there is one.
    pub remote_addr: Option<SocketAddr>,
    /// `Origin` header of the request, when sent.
    pub origin: Option<String>,
    /// True for in-process clients: they may subscribe to `/service/**` and `/meta/**`.
    pub local: bool,
}

/// A server extension. Every method has a default that leaves messages alone.
pub trait Extension: Send + Sync + 'static {
    /// Sees each incoming message before the server acts on it. Setting `message.error`
    /// (e.g. `403::Forbidden`) rejects it: it is not acted on and the reply carries the error.
    fn incoming(&self, _message: &mut Message, _request: &RequestContext) {}

    /// Takes a publish for the server's own use (spec §6.3: a client's verbs on its
    /// connection channel are "intercepted and not relayed"): when an extension answers true
    /// for a publish that passed `incoming` and validation, the publisher gets a successful
    /// reply and nobody receives the message. The extension hands it to its own handler.
    /// `Err(error)` refuses the publish with that Bayeux error (e.g. the handler is full).
    fn consumes(&self, _message: &Message, _request: &RequestContext) -> Result<bool, String> {
        Ok(false)
    }

    /// Sees each reply and each delivered message before it is written. `recipient` is the
    /// client a delivered message goes to, `None` for replies.
    fn outgoing(&self, _message: &mut Message, _recipient: Option<&str>) {}

    /// True when `outgoing` may change messages. While no extension says so, a delivered
    /// message is sent as the bytes encoded once at publish time.
    fn rewrites_outgoing(&self) -> bool {
        false
    }
}
