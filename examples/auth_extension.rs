//! Authentication and per-channel authorization as a server extension.
//!
//! Every client sends a token in `ext.token` (a Faye client adds it with a client-side
//! extension). The server refuses a handshake without a known token (`401::Unauthorized`),
//! and a subscribe or publish outside the token's channel patterns
//! (`403:<channel>:Forbidden channel`). Tokens never leave the server: the outgoing hook
//! strips `ext.token` from every delivered message (a delivered message otherwise carries
//! its publisher's `ext`).
//!
//! ```text
//! cargo run --example auth_extension -- [PORT]
//! curl -s -H 'Content-Type: application/json' http://127.0.0.1:8000/faye -d \
//!   '{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"],"ext":{"token":"alice-secret"}}'
//! ```
//!
//! On the browser side (Faye 1.4):
//!
//! ```js
//! client.addExtension({ outgoing: (message, callback) => {
//!   message.ext = Object.assign({}, message.ext, { token: 'alice-secret' });
//!   callback(message);
//! } });
//! ```

use actioncluster::protocol::channel;
use actioncluster::{BayeuxError, Extension, Message, RequestContext};
use serde_json::value::RawValue;
use std::collections::HashMap;

/// The error of a handshake, subscribe or publish without a known token.
pub const UNAUTHORIZED: &str = "401::Unauthorized";

/// What one token may do: channel names or patterns (`/chat/**`, `/news/*`, `/alerts`).
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Subscriptions the token may make.
    pub subscribe: Vec<String>,
    /// Channels the token may publish to.
    pub publish: Vec<String>,
}

/// Checks `ext.token` on handshake, subscribe and publish against per-token channel rules,
/// and strips the token from everything the server sends.
#[derive(Debug, Clone, Default)]
pub struct AuthExtension {
    grants: HashMap<String, Grant>,
}

impl AuthExtension {
    /// An extension that knows no token: every remote handshake is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `token` subscribe to `subscribe` and publish to `publish` (names or patterns).
    pub fn grant(mut self, token: &str, subscribe: &[&str], publish: &[&str]) -> Self {
        self.grants.insert(
            token.to_string(),
            Grant {
                subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
                publish: publish.iter().map(|s| s.to_string()).collect(),
            },
        );
        self
    }

    /// The demo's tokens: alice chats, the monitor reads everything, the admin does anything.
    pub fn demo() -> Self {
        Self::new().grant("alice-secret", &["/chat/**"], &["/chat/**"]).grant("monitor-secret", &["/**"], &[]).grant(
            "admin-secret",
            &["/**"],
            &["/**"],
        )
    }

    /// True when `token` may subscribe to `requested` (a name or a pattern).
    pub fn may_subscribe(&self, token: &str, requested: &str) -> bool {
        self.grants.get(token).is_some_and(|g| g.subscribe.iter().any(|allowed| covers(allowed, requested)))
    }

    /// True when `token` may publish to the channel `name`.
    pub fn may_publish(&self, token: &str, name: &str) -> bool {
        self.grants.get(token).is_some_and(|g| g.publish.iter().any(|allowed| channel::matches(allowed, name)))
    }

    /// The error to put on `message`, if it is not allowed.
    fn verdict(&self, message: &Message) -> Option<String> {
        let name = message.channel_str();
        let publish = !(name.starts_with(channel::META_PREFIX) || name == "/meta");
        if !(publish || name == channel::meta::HANDSHAKE || name == channel::meta::SUBSCRIBE) {
            return None; // connect, unsubscribe, disconnect: the client id is the credential
        }
        let Some(token) = token_of(message).filter(|t| self.grants.contains_key(t)) else {
            return Some(UNAUTHORIZED.to_string());
        };
        match name {
            channel::meta::HANDSHAKE => None,
            channel::meta::SUBSCRIBE => {
                // In order, as the server subscribes; an invalid name is left to the server
                // (405 Invalid channel), which stops there.
                let requested = message.subscription.as_ref()?.channels();
                requested
                    .iter()
                    .take_while(|c| channel::is_valid(c))
                    .find(|c| !self.may_subscribe(&token, c))
                    .map(|c| BayeuxError::channel_forbidden(c).to_string())
            }
            // A publish. Invalid names are left to the server (405 Invalid channel).
            _ if !channel::is_valid_name(name) => None,
            _ if self.may_publish(&token, name) => None,
            _ => Some(BayeuxError::channel_forbidden(name).to_string()),
        }
    }
}

/// True when every channel that `requested` can match is matched by `allowed`.
fn covers(allowed: &str, requested: &str) -> bool {
    if channel::is_valid_name(requested) {
        return channel::matches(allowed, requested);
    }
    if allowed == requested {
        return true;
    }
    // A pattern `prefix/*` or `prefix/**` is covered by `base/**` when prefix is base or
    // below it: then every channel it matches lies under base, as `prefix/x` does.
    let prefix = requested.strip_suffix("/**").or_else(|| requested.strip_suffix("/*"));
    match prefix {
        Some(prefix) if allowed.ends_with("/**") && channel::is_valid_pattern(requested) => {
            channel::matches(allowed, &format!("{prefix}/x"))
        }
        _ => false,
    }
}

/// `ext.token` when it is a string.
fn token_of(message: &Message) -> Option<String> {
    let ext: serde_json::Value = serde_json::from_str(message.ext.as_ref()?.get()).ok()?;
    ext.get("token")?.as_str().map(str::to_string)
}

impl Extension for AuthExtension {
    fn incoming(&self, message: &mut Message, request: &RequestContext) {
        // The node's own publishes (Node::publish, in-process clients) are trusted.
        if request.local || message.error.is_some() {
            return;
        }
        if let Some(error) = self.verdict(message) {
            message.error = Some(error);
        }
    }

    fn outgoing(&self, message: &mut Message, _recipient: Option<&str>) {
        let Some(raw) = message.ext.as_ref() else { return };
        if !raw.get().contains("token") {
            return; // the common case: no need to parse
        }
        let Ok(serde_json::Value::Object(mut ext)) = serde_json::from_str(raw.get()) else { return };
        if ext.remove("token").is_some() {
            message.ext = if ext.is_empty() {
                None
            } else {
                RawValue::from_string(serde_json::Value::Object(ext).to_string()).ok()
            };
        }
    }

    fn rewrites_outgoing(&self) -> bool {
        true
    }
}

#[cfg(not(test))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use actioncluster::{Config, Node};
    let port = std::env::args().nth(1).map(|p| p.parse()).transpose()?.unwrap_or(8000);
    let node = Node::builder(Config { port, ..Config::default() }).extension(AuthExtension::demo()).start().await?;
    println!("auth example listening on {} (tokens: alice-secret, monitor-secret, admin-secret)", node.endpoint());
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}
