//! Chat between the connections of all nodes (spec §6.2, §6.3 v5, §C6.5): the node-level
//! half of rooms, which needs both the Bayeux server and the cluster layers.
//!
//! - Memberships live in [`Rooms`](crate::cluster::Rooms) (shared, per-node index); listening
//!   rooms and connection properties only in this node's registry, as in the original.
//! - A broadcast is one publish on `/actionHero/chat` of the v5 payload
//!   `{"serverToken","serverId","message","sentAt","connection":{"id","room","roomMatchKey","roomMatchValue"}}`
//!   through this node's server (on the redis engine every node receives it).
//! - The node's in-process client (one per node, shared) subscribes to `/actionHero/chat` when
//!   the first connection joins or listens to a room (a node that never hosts a chat
//!   connection runs no extra session, and a server auth extension that refuses in-process
//!   clients only fails the chat calls, not the node; let `RequestContext::local` through to
//!   use chat). It drops payloads
//!   whose token is not this node's (`message token miss-match from {serverId}`), and hands
//!   the others to its own registered connections: same room or a listening room, never the
//!   sender, and with a room match only connections whose property equals the value. A
//!   connection receives `{"message","room","from","context":"user","sentAt"}` on its channel
//!   `/client/websocket/connection/{id}`.
//!
//! Chat is at-most-once (item 28 accepted for chat): nothing work-related depends on it.
//!
//! Plain Bayeux clients drive their own connection through their connection channel:
//! [`connection_channels`].

pub mod connection_channels;
pub(crate) mod node_client;
pub(crate) mod web_clients;

use crate::client::{ClientError, Delivery, Subscription};
use crate::cluster::{Cluster, ClusterError, RoomAdd};
use crate::config::DEFAULT_SERVER_TOKEN;
use crate::protocol::BayeuxError;
use crate::server::Server;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// The channel the nodes exchange chat on.
pub const CHAT_CHANNEL: &str = "/actionHero/chat";

/// The room connections join by default (`general.defaultChatRoom`) and a server-side
/// broadcast uses.
pub const DEFAULT_ROOM: &str = "defaultRoom";

/// Sender id of a broadcast made by the server rather than a connection.
pub const SERVER_SENDER: &str = "0";

/// Announcement broadcast when a join changed the room's list.
pub const ENTERED: &str = "I have entered the room";

/// Announcement broadcast when a leave changed the room's list.
pub const LEFT: &str = "I have left the room";

/// The channel a connection receives its chat on (v5's per-websocket-client channel).
pub fn connection_channel(connection_id: &str) -> String {
    format!("/client/websocket/connection/{connection_id}")
}

/// Why a chat operation failed.
#[derive(Debug, Error)]
pub enum ChatError {
    /// The connection is not registered on this node.
    #[error("unknown connection {0}")]
    UnknownConnection(String),
    /// `say` from a connection that is in no room.
    #[error("connection {0} is not in a room")]
    NotInRoom(String),
    /// The membership could not be read or written.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The server refused the chat publish.
    #[error("chat publish refused: {0}")]
    Publish(#[from] BayeuxError),
    /// The node's chat client could not subscribe to `/actionHero/chat` (is a server
    /// extension refusing in-process clients?).
    #[error("chat subscription failed: {0}")]
    Subscribe(#[from] ClientError),
}

/// Restricts a broadcast to connections whose property `key` equals `value`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomMatch {
    /// The connection property compared.
    pub key: String,
    /// The value it must have (a missing property counts as `null`).
    pub value: Value,
}

/// The sender part of the `/actionHero/chat` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSender {
    /// The sender's connection id (`"0"` for the server).
    pub id: String,
    /// The room the message is for.
    pub room: String,
    /// The property a recipient must have, if restricted.
    #[serde(rename = "roomMatchKey", default)]
    pub room_match_key: Option<String>,
    /// The value that property must have.
    #[serde(rename = "roomMatchValue", default)]
    pub room_match_value: Option<Value>,
}

/// The v5 payload published on `/actionHero/chat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatPayload {
    /// The cluster's shared secret; receivers drop payloads without theirs.
    #[serde(rename = "serverToken")]
    pub server_token: String,
    /// The publishing node's id.
    #[serde(rename = "serverId")]
    pub server_id: String,
    /// What was said (any JSON).
    pub message: Value,
    /// When it was sent, ms since the epoch (the sender's clock).
    #[serde(rename = "sentAt")]
    pub sent_at: i64,
    /// Who sent it, to which room.
    pub connection: ChatSender,
}

/// A snapshot of one registered connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatConnection {
    /// The connection id.
    pub id: String,
    /// Its current room, if it joined one.
    pub room: Option<String>,
    /// Rooms it also hears (node-local, not in the room lists).
    pub listening: BTreeSet<String>,
    /// Properties a room match compares against.
    pub properties: Map<String, Value>,
    /// An HTTP (web) client: its chat goes to its web-message mailbox, not to a channel.
    pub web: bool,
}

struct Inner {
    server: Server,
    cluster: Cluster,
    token: String,
    connections: Mutex<HashMap<String, ChatConnection>>,
    /// Serialises this node's membership changes (each is a cluster call or two, then a
    /// registry update), so two joins of one connection cannot interleave.
    membership: tokio::sync::Mutex<()>,
    token_mismatches: AtomicU64,
    /// The node's in-process client the listener subscribes with.
    client: node_client::NodeClient,
    shutdown: CancellationToken,
    /// Set once the listener is subscribed.
    listening: tokio::sync::OnceCell<()>,
}

/// This node's chat: the local connection registry, room changes with their announcements,
/// broadcasts, and delivery of what other nodes (and this one) broadcast. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").field("connections", &self.registry().len()).finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch by this node's clock (chat's `sentAt`, `connectedAt`).
pub(crate) use crate::clock::unix_ms as now_ms;

/// True when a payload between the nodes (`/actionHero/…`) carries this cluster's `token`;
/// otherwise logs v5's `message token miss-match from {serverId}` for the receiver to drop it.
pub(crate) fn carries_token(payload: &Value, token: &str) -> bool {
    if payload.get("serverToken").and_then(Value::as_str) == Some(token) {
        return true;
    }
    let server_id = payload.get("serverId").and_then(Value::as_str).unwrap_or("unknown");
    tracing::warn!(server_id, "message token miss-match from {server_id}");
    false
}

impl Chat {
    /// The chat of a node: publishes through `server`, memberships in `cluster`; the node's
    /// in-process `client` listens on `/actionHero/chat` (until `shutdown`) once a connection
    /// joins or listens to a room. `server_token` must be the same on every
    /// node.
    pub(crate) fn new(
        server: Server,
        cluster: Cluster,
        client: node_client::NodeClient,
        server_token: String,
        shutdown: CancellationToken,
    ) -> Chat {
        if cluster.is_redis() && server_token == DEFAULT_SERVER_TOKEN {
            tracing::warn!("chat: the default server token is in use on a redis cluster; set --server-token");
        }
        Chat {
            inner: Arc::new(Inner {
                server,
                cluster,
                token: server_token,
                connections: Mutex::new(HashMap::new()),
                membership: tokio::sync::Mutex::new(()),
                token_mismatches: AtomicU64::new(0),
                client,
                shutdown,
                listening: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// Subscribes this node to `/actionHero/chat` the first time it is needed (a failed
    /// attempt is retried by the next call).
    async fn ensure_listening(&self) -> Result<(), ChatError> {
        self.inner
            .listening
            .get_or_try_init(|| async {
                let subscription = self.inner.client.subscribe(CHAT_CHANNEL).await?;
                self.spawn_receiver(subscription);
                tracing::debug!(channel = CHAT_CHANNEL, "chat listening");
                Ok::<_, ChatError>(())
            })
            .await
            .map(|_| ())
            .inspect_err(|e| tracing::warn!(error = %e, "chat: cannot listen on /actionHero/chat"))
    }

    fn spawn_receiver(&self, mut subscription: Subscription) {
        let receiver = self.clone();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = subscription.next() => match next {
                        Some(delivery) => receiver.receive(&delivery).await,
                        None => {
                            tracing::warn!("chat: the /actionHero/chat subscription ended; no more chat deliveries on this node");
                            break;
                        }
                    },
                }
            }
        });
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, ChatConnection>> {
        self.inner.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to the connection's entry, created (in no room) when missing.
    fn upsert(&self, connection_id: &str, change: impl FnOnce(&mut ChatConnection)) {
        let mut registry = self.registry();
        let entry = registry
            .entry(connection_id.to_string())
            .or_insert_with(|| ChatConnection { id: connection_id.to_string(), ..ChatConnection::default() });
        change(entry);
    }

    /// Registers a connection of this node (or replaces its properties), in no room yet.
    pub fn register(&self, connection_id: &str, properties: Map<String, Value>) {
        self.upsert(connection_id, |entry| entry.properties = properties);
        tracing::debug!(connection_id, "chat connection registered");
    }

    /// Registers an HTTP client of this node (its browser fingerprint as id), in no room yet:
    /// what it hears is stored in its web-message mailbox (§7), not published.
    pub fn register_web(&self, connection_id: &str) {
        self.upsert(connection_id, |entry| entry.web = true);
        tracing::debug!(connection_id, "chat web connection registered");
    }

    /// The registered connection, as it is now.
    pub fn connection(&self, connection_id: &str) -> Option<ChatConnection> {
        self.registry().get(connection_id).cloned()
    }

    /// Forgets a connection: it leaves its room (announced when the list changed) and is
    /// dropped from the registry even if the room update fails (the error is returned).
    /// `false` when it was not registered.
    pub async fn unregister(&self, connection_id: &str) -> Result<bool, ChatError> {
        let _membership = self.inner.membership.lock().await;
        let Some(connection) = self.registry().remove(connection_id) else { return Ok(false) };
        if let Some(room) = connection.room {
            self.leave_room(connection_id, &room).await?;
        }
        tracing::debug!(connection_id, "chat connection unregistered");
        Ok(true)
    }

    /// Moves the connection into `room` (leaving its current room first: "change room"),
    /// announcing `I have entered the room` when the room's list changed.
    pub async fn join(&self, connection_id: &str, room: &str) -> Result<RoomAdd, ChatError> {
        self.current_room(connection_id)?; // unknown connections fail before any work
        self.ensure_listening().await?;
        let _membership = self.inner.membership.lock().await;
        let current = self.current_room(connection_id)?;
        if let Some(old) = current.filter(|old| old != room) {
            self.leave_room(connection_id, &old).await?;
            self.set_room(connection_id, None);
        }
        let rooms = self.inner.cluster.rooms();
        let added = match rooms.add(room, connection_id).await {
            Err(ClusterError::InOtherRoom(stale)) => {
                // The index holds a membership this registry forgot (an earlier unregister
                // whose room update failed): finish that leave, then join.
                tracing::debug!(connection_id, stale, "chat: leaving a stale room before joining");
                self.leave_room(connection_id, &stale).await?;
                rooms.add(room, connection_id).await?
            }
            other => other?,
        };
        self.set_room(connection_id, Some(room));
        if added == RoomAdd::Added {
            self.broadcast(room, Some(connection_id), Value::from(ENTERED), None).await?;
        }
        Ok(added)
    }

    /// Takes the connection out of its room, announcing `I have left the room` when the
    /// room's list changed (`true`).
    pub async fn leave(&self, connection_id: &str) -> Result<bool, ChatError> {
        let _membership = self.inner.membership.lock().await;
        let Some(room) = self.current_room(connection_id)? else { return Ok(false) };
        let changed = self.leave_room(connection_id, &room).await?;
        self.set_room(connection_id, None);
        Ok(changed)
    }

    /// The connection also hears `room` (`listenToRoom`); `true` if it was not already.
    pub async fn listen(&self, connection_id: &str, room: &str) -> Result<bool, ChatError> {
        self.current_room(connection_id)?; // unknown connections fail before any work
        self.ensure_listening().await?;
        let mut registry = self.registry();
        let entry =
            registry.get_mut(connection_id).ok_or_else(|| ChatError::UnknownConnection(connection_id.into()))?;
        Ok(entry.listening.insert(room.to_string()))
    }

    /// The connection stops hearing `room` (`silenceRoom`); `true` if it was listening.
    pub fn silence(&self, connection_id: &str, room: &str) -> Result<bool, ChatError> {
        let mut registry = self.registry();
        let entry =
            registry.get_mut(connection_id).ok_or_else(|| ChatError::UnknownConnection(connection_id.into()))?;
        Ok(entry.listening.remove(room))
    }

    /// The connection says `message` to its room (`say`).
    pub async fn say(&self, connection_id: &str, message: Value) -> Result<(), ChatError> {
        let room = self.current_room(connection_id)?.ok_or_else(|| ChatError::NotInRoom(connection_id.into()))?;
        self.broadcast(&room, Some(connection_id), message, None).await
    }

    /// Publishes `message` to `room` on every node: one publish on `/actionHero/chat`.
    /// `from` is the sending connection (`None`: the server, id `"0"`); `room_match`
    /// restricts the recipients to connections with that property value.
    pub async fn broadcast(
        &self,
        room: &str,
        from: Option<&str>,
        message: Value,
        room_match: Option<RoomMatch>,
    ) -> Result<(), ChatError> {
        let (room_match_key, room_match_value) = match room_match {
            Some(m) => (Some(m.key), Some(m.value)),
            None => (None, None),
        };
        let payload = ChatPayload {
            server_token: self.inner.token.clone(),
            server_id: self.inner.cluster.node_id().to_string(),
            message,
            sent_at: now_ms(),
            connection: ChatSender {
                id: from.unwrap_or(SERVER_SENDER).to_string(),
                room: room.to_string(),
                room_match_key,
                room_match_value,
            },
        };
        let data = serde_json::to_value(&payload).map_err(|_| BayeuxError::bad_request(vec!["data".into()]))?;
        self.inner.server.publish_local(CHAT_CHANNEL, &data).await?;
        tracing::trace!(room, from = %payload.connection.id, "chat broadcast");
        Ok(())
    }

    /// How many `/actionHero/chat` payloads this node dropped for a wrong token.
    pub fn token_mismatches(&self) -> u64 {
        self.inner.token_mismatches.load(Ordering::Relaxed)
    }

    fn current_room(&self, connection_id: &str) -> Result<Option<String>, ChatError> {
        let registry = self.registry();
        let entry = registry.get(connection_id).ok_or_else(|| ChatError::UnknownConnection(connection_id.into()))?;
        Ok(entry.room.clone())
    }

    fn set_room(&self, connection_id: &str, room: Option<&str>) {
        if let Some(entry) = self.registry().get_mut(connection_id) {
            entry.room = room.map(str::to_string);
        }
    }

    /// Removes the membership and announces the departure when the list changed.
    async fn leave_room(&self, connection_id: &str, room: &str) -> Result<bool, ChatError> {
        let changed = self.inner.cluster.rooms().remove(room, connection_id).await?;
        if changed {
            self.broadcast(room, Some(connection_id), Value::from(LEFT), None).await?;
        }
        Ok(changed)
    }

    /// One `/actionHero/chat` delivery: checked, then handed to the matching connections.
    async fn receive(&self, delivery: &Delivery) {
        let raw = delivery.json();
        if !carries_token(&raw, &self.inner.token) {
            self.inner.token_mismatches.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload: ChatPayload = match serde_json::from_value(raw) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "chat: malformed /actionHero/chat payload dropped");
                return;
            }
        };
        let recipients = self.recipients(&payload.connection);
        if recipients.is_empty() {
            return;
        }
        tracing::trace!(room = %payload.connection.room, recipients = recipients.len(), "chat delivering");
        let out = serde_json::json!({
            "message": payload.message,
            "room": payload.connection.room,
            "from": payload.connection.id,
            "context": "user",
            "sentAt": payload.sent_at,
        });
        for (id, web) in &recipients {
            if *web {
                self.store_for_web_client(id, &out).await;
            } else if let Err(e) = self.inner.server.publish_local(&connection_channel(id), &out).await {
                tracing::warn!(connection_id = %id, error = %e, "chat: delivery to a connection failed");
            }
        }
    }

    /// A web client's chat goes to its mailbox. Its fingerprint may be held by several nodes
    /// (§C6.6): only the first holder in node-id order stores, so it is stored once.
    async fn store_for_web_client(&self, id: &str, out: &Value) {
        let cluster = &self.inner.cluster;
        match cluster.rooms().holders(id).await {
            Ok(holders) => {
                if holders.first().is_some_and(|first| **first != *cluster.node_id()) {
                    return;
                }
            }
            Err(e) => tracing::warn!(connection_id = %id, error = %e, "chat: holders unknown; storing here"),
        }
        if let Err(e) = cluster.web_messages().store(id, out).await {
            tracing::warn!(connection_id = %id, error = %e, "chat: web message not stored");
        }
    }

    /// The §6.2 rule: same room or listening, never the sender, and the room match if any.
    /// Each recipient with whether it is a web client.
    fn recipients(&self, sender: &ChatSender) -> Vec<(String, bool)> {
        self.registry()
            .values()
            .filter(|c| c.id != sender.id)
            .filter(|c| c.room.as_deref() == Some(sender.room.as_str()) || c.listening.contains(&sender.room))
            .filter(|c| match &sender.room_match_key {
                None => true,
                Some(key) => {
                    let expected = sender.room_match_value.as_ref().unwrap_or(&Value::Null);
                    c.properties.get(key).unwrap_or(&Value::Null) == expected
                }
            })
            .map(|c| (c.id.clone(), c.web))
            .collect()
    }
}
