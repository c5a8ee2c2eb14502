//! The guard on `/actionHero…` channels (spec §C7.2, actionHero v6): the nodes talk to each
//! other there (`/actionHero/chat`, later `/actionHero/cluster`), so
//!
//! - a publish to a channel beginning with `/actionHero` must carry `data.serverToken` equal
//!   to this node's configured token and a `data.serverId`; others are refused with
//!   `403:{channel}:message token miss-match on protected actionHero channel`;
//! - external (not in-process) clients may not subscribe there: a pattern with `*` under
//!   `/actionHero` is refused with `403:{pattern}:actionHero does not allow wildcard
//!   subscriptions`; an exact protected channel with Faye's `403:{channel}:Forbidden
//!   channel`, because every payload there carries the server token and a subscriber would
//!   learn it.
//! - The root wildcards `/**` and `/*` stay open (Faye clients use them), so instead the
//!   server publishes `/actionHero…` messages without the `/**` expansion (as it does for
//!   `forbid_wildcard_service`): root-wildcard subscribers, in-process ones included, never
//!   receive them. (`/*` covers only the one-segment name `/actionHero`, which the nodes do
//!   not use.)
//!
//! - A connection's chat channel `/client/websocket/connection/{id}` is that client's own
//!   (v5): an external client may subscribe only to the one whose id is its Bayeux client id,
//!   and never through a wildcard under `/client`; others get `403:{channel}:You cannot
//!   subscribe to another client's channel`. Messages there skip the `/**` expansion too, so
//!   nobody reads another connection's chat through a root wildcard. An external client may
//!   publish (its chat verbs) only on its own connection channel; publishing on another's is
//!   refused with `403:{channel}:Only its own client may publish on a connection channel` (v5
//!   took any client's message there as the connection's own, which let one client speak for
//!   another; the text has no apostrophe, so Faye clients parse the error's code).
//!
//! Every node installs it; the node's own publishes carry the token and pass.

use super::extension::{Extension, RequestContext};
use crate::protocol::{BayeuxError, Message, channel};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Channels beginning with this (literally, as v6 compared) are protected.
pub const PROTECTED_PREFIX: &str = "/actionHero";

/// Error text of a refused publish on a protected channel.
pub const TOKEN_MISMATCH: &str = "message token miss-match on protected actionHero channel";

/// Error text of a refused wildcard subscription covering protected channels.
pub const WILDCARD_REFUSED: &str = "actionHero does not allow wildcard subscriptions";

/// Prefix of the per-connection chat channels (`/client/websocket/connection/{id}`).
pub const CONNECTION_PREFIX: &str = "/client/websocket/connection/";

/// Error text of a subscription to another client's connection channel.
pub const OTHER_CLIENTS_CHANNEL: &str = "You cannot subscribe to another client's channel";

/// Error text of a publish by an external client to another client's connection channel.
pub const OTHER_CLIENTS_PUBLISH: &str = "Only its own client may publish on a connection channel";

/// True for a channel (or pattern) beginning with `/actionHero`.
pub fn is_protected(name: &str) -> bool {
    name.starts_with(PROTECTED_PREFIX)
}

/// True for channels whose messages must not reach root-wildcard (`/**`) subscribers: the
/// protected `/actionHero…` channels and the per-connection chat channels.
pub fn is_private(name: &str) -> bool {
    is_protected(name) || name.starts_with(CONNECTION_PREFIX)
}

/// True when a pattern other than the root wildcards covers some connection channel.
fn covers_connection_channels(pattern: &str) -> bool {
    pattern != "/**" && channel::is_pattern(pattern) && channel::matches(pattern, "/client/websocket/connection/x")
}

/// The server extension guarding `/actionHero…` channels with the cluster's shared token.
#[derive(Clone)]
pub struct ProtectedChannels {
    token: String,
}

impl std::fmt::Debug for ProtectedChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ProtectedChannels").finish_non_exhaustive()
    }
}

/// The fields of a protected payload that are checked.
#[derive(Deserialize)]
struct Credentials<'a> {
    #[serde(rename = "serverToken", borrow, default)]
    server_token: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "serverId", borrow, default)]
    server_id: Option<std::borrow::Cow<'a, str>>,
}

/// Compares without an early exit, so response timing does not reveal a token's prefix.
pub(crate) fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refusal(name: &str, text: &str) -> String {
    BayeuxError { code: 403, params: vec![name.to_string()], message: text.to_string() }.to_string()
}

impl ProtectedChannels {
    /// A guard accepting `token` (the node's configured server token).
    pub fn new(token: impl Into<String>) -> Self {
        Self { token: token.into() }
    }

    /// True when the payload carries this node's token and a non-empty server id.
    fn authorised(&self, data: Option<&RawValue>) -> bool {
        let Some(data) = data else { return false };
        match serde_json::from_str::<Credentials<'_>>(data.get()) {
            Ok(Credentials { server_token: Some(token), server_id: Some(id) }) => {
                !id.is_empty() && same_token(token.as_bytes(), self.token.as_bytes())
            }
            _ => false,
        }
    }

    /// The refusal of one subscription by an external client, if refused.
    fn subscription_refusal(name: &str, client_id: Option<&str>) -> Option<String> {
        if let Some(owner) = name.strip_prefix(CONNECTION_PREFIX) {
            let own = !owner.contains('*') && client_id.is_some_and(|id| id == owner);
            return (!own).then(|| refusal(name, OTHER_CLIENTS_CHANNEL));
        }
        if covers_connection_channels(name) {
            return Some(refusal(name, OTHER_CLIENTS_CHANNEL));
        }
        if !is_protected(name) {
            None
        } else if name.contains('*') {
            Some(refusal(name, WILDCARD_REFUSED))
        } else {
            Some(BayeuxError::channel_forbidden(name).to_string())
        }
    }
}

impl Extension for ProtectedChannels {
    fn incoming(&self, message: &mut Message, request: &RequestContext) {
        if message.error.is_some() {
            return;
        }
        let name = message.channel_str();
        if name == channel::meta::SUBSCRIBE {
            if request.local {
                return;
            }
            let client_id = message.client_id.as_deref();
            let refused = message
                .subscription
                .as_ref()
                .and_then(|s| s.channels().iter().find_map(|c| Self::subscription_refusal(c, client_id)));
            if let Some(error) = refused {
                tracing::debug!(client_id = ?message.client_id, remote = ?request.remote_addr, %error, "subscription to protected actionHero channels refused");
                message.error = Some(error);
            }
        } else if let Some(owner) = name.strip_prefix(CONNECTION_PREFIX) {
            if !request.local && message.client_id.as_deref() != Some(owner) {
                tracing::debug!(channel = name, client_id = ?message.client_id, remote = ?request.remote_addr, "publish on another client's connection channel refused");
                message.error = Some(refusal(name, OTHER_CLIENTS_PUBLISH));
            }
        } else if is_protected(name) && !self.authorised(message.data.as_deref()) {
            tracing::debug!(channel = name, client_id = ?message.client_id, remote = ?request.remote_addr, local = request.local, "publish on protected actionHero channel refused");
            message.error = Some(refusal(name, TOKEN_MISMATCH));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Subscription;

    fn publish(channel: &str, data: &str) -> Message {
        Message {
            channel: Some(channel.to_string()),
            data: RawValue::from_string(data.to_string()).ok(),
            ..Message::default()
        }
    }

    fn subscribe(pattern: &str) -> Message {
        Message {
            channel: Some("/meta/subscribe".to_string()),
            subscription: Some(Subscription::One(pattern.to_string())),
            ..Message::default()
        }
    }

    fn verdict(message: &mut Message, local: bool) -> Option<String> {
        ProtectedChannels::new("s3cret").incoming(message, &RequestContext { local, ..RequestContext::default() });
        message.error.clone()
    }

    #[test]
    fn publishes_need_the_token_and_a_server_id() {
        let refused = Some("403:/actionHero/chat:message token miss-match on protected actionHero channel".into());
        assert_eq!(
            verdict(&mut publish("/actionHero/chat", r#"{"serverToken":"s3cret","serverId":"h:1"}"#), false),
            None
        );
        assert_eq!(verdict(&mut publish("/actionHero/chat", r#"{"serverToken":"s3cret"}"#), false), refused);
        assert_eq!(
            verdict(&mut publish("/actionHero/chat", r#"{"serverToken":"wrong","serverId":"h"}"#), true),
            refused
        );
        assert_eq!(
            verdict(&mut publish("/actionHero/chat", r#"{"serverToken":"s3cre","serverId":"h"}"#), false),
            refused
        );
        assert_eq!(verdict(&mut publish("/actionHero/chat", r#""s3cret""#), false), refused);
        assert_eq!(verdict(&mut publish("/actionHero/chat", r#"{"serverToken":1,"serverId":"h"}"#), false), refused);
        assert_eq!(
            verdict(&mut publish("/actionHero/chat", r#"{"serverToken":"s3cret","serverId":""}"#), false),
            refused
        );
        assert!(verdict(&mut publish("/actionHeroes", "{}"), false).is_some(), "a literal prefix, as v6 compared");
        assert_eq!(verdict(&mut publish("/chat/actionHero", "{}"), false), None);
    }

    #[test]
    fn external_clients_cannot_subscribe_to_protected_channels() {
        for pattern in ["/actionHero/**", "/actionHero/*", "/actionHero/chat/*"] {
            assert_eq!(
                verdict(&mut subscribe(pattern), false),
                Some(format!("403:{pattern}:actionHero does not allow wildcard subscriptions")),
                "{pattern}"
            );
            assert_eq!(verdict(&mut subscribe(pattern), true), None, "{pattern} in-process");
        }
        assert_eq!(
            verdict(&mut subscribe("/actionHero/chat"), false),
            Some("403:/actionHero/chat:Forbidden channel".into())
        );
        for open in ["/chat/**", "/**", "/*"] {
            assert_eq!(verdict(&mut subscribe(open), false), None, "{open}: Faye's root wildcards stay open");
        }
        let mut many = subscribe("/a");
        many.subscription = Some(Subscription::Many(vec!["/a".into(), "/actionHero/**".into()]));
        assert!(verdict(&mut many, false).is_some());
    }

    #[test]
    fn a_connection_channel_is_its_clients_own() {
        let mut own = subscribe("/client/websocket/connection/abc");
        own.client_id = Some("abc".into());
        assert_eq!(verdict(&mut own, false), None);
        let mut other = subscribe("/client/websocket/connection/xyz");
        other.client_id = Some("abc".into());
        assert_eq!(
            verdict(&mut other, false),
            Some("403:/client/websocket/connection/xyz:You cannot subscribe to another client's channel".into())
        );
        for pattern in ["/client/**", "/client/websocket/**", "/client/websocket/connection/*"] {
            let mut m = subscribe(pattern);
            m.client_id = Some("abc".into());
            assert!(verdict(&mut m, false).is_some(), "{pattern}");
        }
        for open in ["/client/other", "/client/*", "/**"] {
            let mut m = subscribe(open);
            m.client_id = Some("abc".into());
            assert_eq!(verdict(&mut m, false), None, "{open}");
        }
        let mut own_publish = publish("/client/websocket/connection/abc", r#"{"event":"say"}"#);
        own_publish.client_id = Some("abc".into());
        assert_eq!(verdict(&mut own_publish, false), None);
        let mut other_publish = publish("/client/websocket/connection/xyz", r#"{"event":"say"}"#);
        other_publish.client_id = Some("abc".into());
        assert_eq!(
            verdict(&mut other_publish, false),
            Some("403:/client/websocket/connection/xyz:Only its own client may publish on a connection channel".into())
        );
        assert_eq!(
            verdict(&mut publish("/client/websocket/connection/xyz", "{}"), true),
            None,
            "the node's own replies"
        );
        assert!(is_private("/client/websocket/connection/abc") && is_private("/actionHero/chat"));
        assert!(!is_private("/client/other"));
    }

    #[test]
    fn token_comparison() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abc", b"abd"));
        assert!(!same_token(b"abc", b"ab"));
    }
}
