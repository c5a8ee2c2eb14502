//! Chat for HTTP clients (spec §6.2 "the HTTP action `chat`", §7, §C8): a browser named by
//! its fingerprint cookie is a chat connection for `--web-message-ttl` after its last request;
//! what it hears is stored in its web-message mailbox and fetched with `method=messages`.
//!
//! - Methods: `roomView` (`roomStatus`), `roomChange` (`room`; answers `room`, which the
//!   transport also sets as a cookie so another node puts the client back in its room), `detailsView`
//!   (`details: {id, room}`), `say` (`message`), `messages` (the mailbox, oldest first, emptied
//!   in one atomic step). Errors are v5's texts, `"error": "Error: ..."`, with HTTP 400.
//! - Without a TTL web chat is off: every request answers `chatting via web clients is not
//!   enabled` (§C8.1).
//! - A client without a (valid) fingerprint gets a fresh random one (the transport's cookie).
//! - The first request on a node registers the client there and joins `defaultRoom` (or its
//!   room cookie's room); a periodic sweep ends it `ttl` after its last request on this node (it leaves
//!   its room unless another node still holds the same fingerprint there, §C6.6).
//! - The answer carries v5's `serverInformation` and `requestorInformation`.
//!
//! The HTTP reading is the transport's (`transport::web_chat`); the node wires the two.

use super::{Chat, ChatError, DEFAULT_ROOM, now_ms};
use crate::cluster::Cluster;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest fingerprint accepted from a cookie.
const MAX_FINGERPRINT: usize = 128;

/// The answer to a web chat request. The cookies themselves are the transport's business.
#[derive(Debug)]
pub(crate) struct WebAnswer {
    /// HTTP status.
    pub(crate) status: u16,
    /// The JSON document.
    pub(crate) body: Value,
    /// A fingerprint issued to a client that had none (to set as its fingerprint cookie).
    pub(crate) new_fingerprint: Option<String>,
    /// The room it moved to (to set as its room cookie).
    pub(crate) room: Option<String>,
}

/// This node's web chat clients. Cheap to clone.
#[derive(Clone)]
pub(crate) struct WebClients {
    inner: Arc<Inner>,
}

struct Inner {
    chat: Chat,
    cluster: Cluster,
    /// `None`: web chat is off.
    ttl: Option<Duration>,
    /// Fingerprint → when this node forgets it.
    expiries: Mutex<HashMap<String, Instant>>,
}

/// A fingerprint from a cookie is used as a key and a room member: bounded and plain.
fn valid_fingerprint(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= MAX_FINGERPRINT
        && f.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'/' | b'='))
}

fn fresh_fingerprint() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl WebClients {
    /// The web clients of a node; with a TTL, a sweep (until `shutdown`) ends the idle ones.
    pub(crate) fn new(chat: Chat, cluster: Cluster, ttl: Option<Duration>, shutdown: CancellationToken) -> Self {
        let clients = WebClients { inner: Arc::new(Inner { chat, cluster, ttl, expiries: Mutex::default() }) };
        if let Some(ttl) = ttl {
            let sweeper = clients.clone();
            let every = (ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => sweeper.end_expired().await,
                    }
                }
            });
        }
        clients
    }

    fn expiries(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.inner.expiries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn end_expired(&self) {
        let now = Instant::now();
        let expired: Vec<String> = {
            let mut expiries = self.expiries();
            let ids: Vec<String> = expiries.iter().filter(|(_, at)| **at <= now).map(|(id, _)| id.clone()).collect();
            for id in &ids {
                expiries.remove(id);
            }
            ids
        };
        for id in expired {
            match self.inner.chat.unregister(&id).await {
                Ok(_) => tracing::debug!(connection_id = %id, "web chat client expired"),
                Err(e) => {
                    tracing::warn!(connection_id = %id, error = %e, "web chat client expired; leaving its room failed")
                }
            }
        }
    }

    /// One request of the chat action.
    pub(crate) async fn handle(
        &self,
        fingerprint: Option<&str>,
        room_cookie: Option<&str>,
        params: Map<String, Value>,
        remote_ip: &str,
    ) -> WebAnswer {
        let started = now_ms();
        let mut issued = None;
        // A cookie naming another kind of connection (a Bayeux client's id) would redirect that
        // connection's chat into a mailbox: such a cookie is replaced like an invalid one.
        let usable = |f: &&str| valid_fingerprint(f) && self.inner.chat.connection(f).is_none_or(|c| c.web);
        let id = match fingerprint.filter(usable) {
            Some(f) => f.to_string(),
            None => {
                let id = fresh_fingerprint();
                issued = Some(id.clone());
                id
            }
        };
        let mut response = Map::new();
        let outcome = match self.inner.ttl {
            None => Err("chatting via web clients is not enabled".to_string()),
            Some(ttl) => self.run(&id, room_cookie, ttl, &params, &mut response).await,
        };
        let status = match outcome {
            Ok(()) => 200,
            Err(reason) => {
                response.insert("error".into(), Value::from(format!("Error: {reason}")));
                400
            }
        };
        let finished = now_ms();
        response.insert(
            "serverInformation".into(),
            json!({
                "serverName": "actioncluster",
                "apiVersion": env!("CARGO_PKG_VERSION"),
                "requestDuration": finished - started,
                "currentTime": finished,
            }),
        );
        response.insert(
            "requestorInformation".into(),
            json!({"id": id, "remoteAddress": remote_ip, "receivedParams": params}),
        );
        // Only a successful roomChange answers `room`.
        let room = response.get("room").and_then(Value::as_str).map(str::to_string);
        WebAnswer { status, body: Value::Object(response), new_fingerprint: issued, room }
    }

    async fn run(
        &self,
        id: &str,
        room_cookie: Option<&str>,
        ttl: Duration,
        params: &Map<String, Value>,
        response: &mut Map<String, Value>,
    ) -> Result<(), String> {
        self.touch(id, room_cookie, ttl).await.map_err(|e| e.to_string())?;
        let chat = &self.inner.chat;
        let text = |field: &str| params.get(field).and_then(Value::as_str).filter(|s| !s.is_empty());
        let method = text("method").ok_or("method is a required parameter for this action")?;
        match method {
            "roomView" => {
                let room = chat.connection(id).and_then(|c| c.room).ok_or("connection is not in a room")?;
                let status = self.inner.cluster.rooms().status(&room).await.map_err(|e| e.to_string())?;
                response.insert("roomStatus".into(), json!(status));
            }
            "roomChange" => {
                let room = text("room").ok_or("room is required to use the roomChange method")?;
                chat.join(id, room).await.map_err(|e| e.to_string())?;
                response.insert("room".into(), Value::from(room));
            }
            "detailsView" => {
                let room = chat.connection(id).and_then(|c| c.room);
                response.insert("details".into(), json!({"id": id, "room": room}));
            }
            "say" => {
                let message = params
                    .get("message")
                    .filter(|m| !m.is_null())
                    .ok_or("message is required to use the say method")?;
                chat.say(id, message.clone()).await.map_err(|e| e.to_string())?;
            }
            "messages" => {
                let messages = self.inner.cluster.web_messages().fetch_all(id).await.map_err(|e| e.to_string())?;
                response.insert("messages".into(), Value::Array(messages));
            }
            other => return Err(format!("{other} is not a known chat method")),
        }
        Ok(())
    }

    /// Registers the client on this node at its first request (joining its room), and moves
    /// its expiry to `ttl` from now.
    async fn touch(&self, id: &str, room_cookie: Option<&str>, ttl: Duration) -> Result<(), ChatError> {
        self.expiries().insert(id.to_string(), Instant::now() + ttl);
        let chat = &self.inner.chat;
        if chat.connection(id).is_some_and(|c| c.room.is_some()) {
            return Ok(());
        }
        chat.register_web(id);
        let room = room_cookie.filter(|r| !r.is_empty()).unwrap_or(DEFAULT_ROOM);
        chat.join(id, room).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        assert!(valid_fingerprint("abc123") && valid_fingerprint("a-b_c.d+e/f="));
        assert!(!valid_fingerprint("") && !valid_fingerprint("a b") && !valid_fingerprint("a;b"));
        assert!(!valid_fingerprint(&"x".repeat(MAX_FINGERPRINT + 1)));
        let fresh = fresh_fingerprint();
        assert!(valid_fingerprint(&fresh) && fresh.len() == 32);
        assert_ne!(fresh, fresh_fingerprint());
    }
}
