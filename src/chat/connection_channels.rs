//! Chat for plain Bayeux clients through their own connection channel (spec §6.3, v5's
//! websocket server; item 29 fixed with v6's rebroadcast): any Faye client takes part in rooms
//! without server-side code.
//!
//! - A client that subscribes to `/client/websocket/connection/{its clientId}` becomes a chat
//!   connection of the node that answered the subscribe: registered in [`Chat`], put in
//!   `defaultRoom` (announced), and greeted on that channel with
//!   `{"welcome": "...", "room": "defaultRoom", "context": "api", "messageCount": 0}`.
//! - What the client publishes there, `{"event": verb, ...}`, is consumed by the node (the
//!   publisher gets a successful reply, nobody receives the message) and answered on the same
//!   channel with `{"context": "response", "messageCount": n, ...}` where `n` counts the
//!   client's messages, as v5's client library matches answers. Verbs: `say` (`message`),
//!   `roomView`, `roomChange` (`room`), `listenToRoom` (`room`), `silenceRoom` (`room`),
//!   `detailsView`, `setIP` (`ip`) and `action` (this broker serves no actions: an error).
//!   Failures answer `{"context": "response", "error": "..."}`; v5's texts where it had them.
//! - Only the client itself may publish there (the protected-channels guard refuses others).
//! - On a redis cluster the client's messages may reach a node that does not hold its
//!   connection (its long-poll went to another node). That node asks the room indexes who
//!   holds it and republishes the message on `/actionHero/websockets/rebroadcast` as
//!   `{"serverId","serverToken","originalMessage":{"channel","clientId","data"}}`; the holder
//!   handles it. When no live node holds it (its node died and was purged), the receiving
//!   node adopts the connection: opens it as on a subscribe, then handles the message.
//! - The connection ends with the client: on `/meta/disconnect`, and when a periodic sweep
//!   finds the client gone from the engine (expired, maybe by another node's collection). It
//!   leaves its room (announced).
//!
//! One task per node handles the work in arrival order, so a client's verbs apply in the
//! order it sent them. The queue is bounded; a full queue refuses the publish with a Bayeux
//! error instead of dropping it.

use super::node_client::NodeClient;
use super::{Chat, DEFAULT_ROOM, carries_token, connection_channel, now_ms};
use crate::client::Subscription;
use crate::cluster::Cluster;
use crate::protocol::{BayeuxError, Message, channel};
use crate::server::protected_channels::CONNECTION_PREFIX;
use crate::server::{Extension, RequestContext, Server};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

/// The channel a node republishes a client's message on when another node holds the
/// connection (v6).
pub const REBROADCAST_CHANNEL: &str = "/actionHero/websockets/rebroadcast";

/// Answer to the `action` verb: this broker runs no actions.
pub const NO_ACTIONS: &str = "unknown action or invalid apiVersion";

/// Work items waiting at most; beyond, publishes on connection channels are refused.
const QUEUE_CAPACITY: usize = 10_000;

/// Client checks a sweep runs at once.
const SWEEP_CONCURRENCY: usize = 32;

/// What the node's connection task does next.
#[derive(Debug)]
enum Work {
    /// The client subscribed to its connection channel.
    Open(String),
    /// The client published `data` on its connection channel (`relayed`: another node
    /// republished it on the rebroadcast channel).
    Verb { client_id: String, data: Value, relayed: bool },
    /// The client disconnected.
    Close(String),
}

/// The server extension feeding the connection task: successful subscribes to a connection
/// channel, the verbs published there (consumed), and disconnects.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionChannelTap {
    queue: mpsc::Sender<Work>,
}

/// The receiving end of a [`ConnectionChannelTap`], handed to [`spawn`].
#[derive(Debug)]
pub(crate) struct ConnectionWork {
    queue: mpsc::Sender<Work>,
    work: mpsc::Receiver<Work>,
}

/// A tap for the server and the work queue it fills.
pub(crate) fn tap() -> (ConnectionChannelTap, ConnectionWork) {
    let (queue, work) = mpsc::channel(QUEUE_CAPACITY);
    (ConnectionChannelTap { queue: queue.clone() }, ConnectionWork { queue, work })
}

impl Extension for ConnectionChannelTap {
    fn incoming(&self, message: &mut Message, request: &RequestContext) {
        if request.local || message.error.is_some() || message.channel_str() != channel::meta::DISCONNECT {
            return;
        }
        if let Some(client_id) = message.client_id.as_deref().filter(|c| !c.is_empty())
            && let Err(e) = self.queue.try_send(Work::Close(client_id.to_string()))
        {
            // The sweep ends the connection later.
            tracing::warn!(client_id, error = %e, "chat connections: disconnect not queued");
        }
    }

    fn consumes(&self, message: &Message, request: &RequestContext) -> Result<bool, String> {
        if request.local {
            return Ok(false);
        }
        let name = message.channel_str();
        let Some(owner) = name.strip_prefix(CONNECTION_PREFIX) else { return Ok(false) };
        let data = message.data.as_deref().and_then(|d| serde_json::from_str(d.get()).ok()).unwrap_or(Value::Null);
        let work = Work::Verb { client_id: owner.to_string(), data, relayed: false };
        match self.queue.try_send(work) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(_)) => {
                tracing::warn!(channel = name, "chat connections: queue full, verb refused");
                Err(BayeuxError {
                    code: 500,
                    params: vec![name.to_string()],
                    message: "node busy - retry later".into(),
                }
                .to_string())
            }
            Err(TrySendError::Closed(_)) => {
                Err(BayeuxError { code: 500, params: vec![name.to_string()], message: "node stopping".into() }
                    .to_string())
            }
        }
    }

    fn outgoing(&self, message: &mut Message, recipient: Option<&str>) {
        if recipient.is_some() || message.successful != Some(true) || message.channel_str() != channel::meta::SUBSCRIBE
        {
            return;
        }
        let Some(client_id) = message.client_id.as_deref() else { return };
        let own = connection_channel(client_id);
        if message.subscription.as_ref().is_some_and(|s| s.channels().contains(&own))
            && let Err(e) = self.queue.try_send(Work::Open(client_id.to_string()))
        {
            // Its first verb opens it (adoption).
            tracing::warn!(client_id, error = %e, "chat connections: open not queued");
        }
    }
}

/// What the node keeps of a connection beside its chat registration.
#[derive(Debug)]
struct Held {
    connected_at: i64,
    remote_ip: Value,
    message_count: u64,
}

/// Everything the connection task needs.
pub(crate) struct ConnectionChannels {
    pub(crate) chat: Chat,
    pub(crate) server: Server,
    pub(crate) cluster: Cluster,
    /// The node's in-process client, to listen on the rebroadcast channel.
    pub(crate) client: NodeClient,
    pub(crate) server_token: String,
    pub(crate) welcome: String,
    pub(crate) sweep_interval: Duration,
}

/// Starts the node's connection task; it ends with `shutdown`.
pub(crate) fn spawn(setup: ConnectionChannels, work: ConnectionWork, shutdown: CancellationToken) {
    let task = Task {
        setup,
        held: HashMap::new(),
        queue: work.queue,
        rebroadcast_listening: false,
        shutdown: shutdown.clone(),
    };
    tokio::spawn(task.run(work.work, shutdown));
}

struct Task {
    setup: ConnectionChannels,
    held: HashMap<String, Held>,
    queue: mpsc::Sender<Work>,
    /// Set once this node listens on the rebroadcast channel (redis clusters only).
    rebroadcast_listening: bool,
    shutdown: CancellationToken,
}

fn failure(error: impl std::fmt::Display) -> Map<String, Value> {
    let mut answer = Map::new();
    answer.insert("error".into(), Value::from(error.to_string()));
    answer
}

fn ok(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Map<String, Value> {
    let mut answer = Map::new();
    answer.insert("status".into(), Value::from("OK"));
    answer.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
    answer
}

/// A non-empty string field of a verb.
fn text<'a>(data: &'a Value, field: &str) -> Option<&'a str> {
    data.get(field).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl Task {
    async fn run(mut self, mut work: mpsc::Receiver<Work>, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(self.setup.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = work.recv() => match next {
                    Some(Work::Open(client_id)) => self.open(&client_id).await,
                    Some(Work::Verb { client_id, data, relayed }) => self.verb(client_id, data, relayed).await,
                    Some(Work::Close(client_id)) => self.close(&client_id).await,
                    None => break,
                },
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    /// Registers the client as a connection in the default room and greets it.
    async fn open(&mut self, client_id: &str) {
        if self.held.contains_key(client_id) {
            return;
        }
        self.setup.chat.register(client_id, Map::new());
        self.held.insert(
            client_id.to_string(),
            Held { connected_at: now_ms(), remote_ip: Value::from(0), message_count: 0 },
        );
        self.ensure_rebroadcast_listener().await;
        let chat = &self.setup.chat;
        if let Err(e) = chat.join(client_id, DEFAULT_ROOM).await {
            tracing::warn!(client_id, error = %e, "chat connections: could not join the default room");
        }
        let room = chat.connection(client_id).and_then(|c| c.room);
        let welcome = json!({"welcome": self.setup.welcome, "room": room, "context": "api", "messageCount": 0});
        self.send(client_id, &welcome).await;
        tracing::debug!(client_id, "chat connection opened");
    }

    async fn close(&mut self, client_id: &str) {
        if self.held.remove(client_id).is_none() {
            return;
        }
        if let Err(e) = self.setup.chat.unregister(client_id).await {
            tracing::warn!(client_id, error = %e, "chat connections: leaving the room failed");
        }
        tracing::debug!(client_id, "chat connection closed");
    }

    /// Ends the connections whose client the engine no longer knows. The checks run a few
    /// dozen at a time (one redis round trip each), not one after another.
    async fn sweep(&mut self) {
        let engine = self.setup.server.engine().clone();
        let ids: Vec<String> = self.held.keys().cloned().collect();
        let checked: Vec<(String, Result<bool, _>)> = futures_util::stream::iter(ids)
            .map(|id| {
                let engine = engine.clone();
                async move {
                    let exists = engine.client_exists(&id).await;
                    (id, exists)
                }
            })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .collect()
            .await;
        let mut unanswered = 0;
        for (id, exists) in checked {
            match exists {
                Ok(true) => {}
                Ok(false) => self.close(&id).await,
                Err(_) => unanswered += 1,
            }
        }
        if unanswered > 0 {
            tracing::warn!(
                unanswered,
                "chat connections: the engine did not answer for some clients; checked again next sweep"
            );
        }
    }

    async fn verb(&mut self, client_id: String, data: Value, relayed: bool) {
        if !self.held.contains_key(&client_id) {
            if relayed {
                return; // another node's message for a connection that is not ours either
            }
            if self.held_elsewhere(&client_id).await {
                self.rebroadcast(&client_id, data).await;
                return;
            }
            match self.setup.server.engine().client_exists(&client_id).await {
                Ok(true) => self.open(&client_id).await,
                Ok(false) => {
                    tracing::debug!(client_id, "chat connections: verb from an unknown client dropped");
                    return;
                }
                Err(e) => {
                    tracing::warn!(client_id, error = %e, "chat connections: verb dropped, the engine did not answer");
                    return;
                }
            }
        }
        let Some(held) = self.held.get_mut(&client_id) else { return };
        held.message_count += 1;
        let count = held.message_count;
        let mut answer = self.answer(&client_id, &data).await;
        answer.insert("context".into(), Value::from("response"));
        answer.insert("messageCount".into(), Value::from(count));
        self.send(&client_id, &Value::Object(answer)).await;
    }

    /// Runs one verb; the answer without `context` and `messageCount`.
    async fn answer(&mut self, client_id: &str, data: &Value) -> Map<String, Value> {
        let chat = &self.setup.chat;
        let Some(event) = data.get("event").and_then(Value::as_str) else {
            return failure("event is required");
        };
        match event {
            "say" => match data.get("message").filter(|m| !m.is_null()) {
                None => failure("message is required to use the say method"),
                Some(message) => match chat.say(client_id, message.clone()).await {
                    Ok(()) => ok([]),
                    Err(e) => failure(e),
                },
            },
            "roomView" => {
                let Some(room) = chat.connection(client_id).and_then(|c| c.room) else {
                    return failure("connection is not in a room");
                };
                match self.setup.cluster.rooms().status(&room).await {
                    Ok(status) => ok([("room", Value::from(room)), ("roomStatus", json!(status))]),
                    Err(e) => failure(e),
                }
            }
            "roomChange" => match text(data, "room") {
                None => failure("room is required to use the roomChange method"),
                Some(room) => match chat.join(client_id, room).await {
                    Ok(_) => ok([("room", Value::from(room))]),
                    Err(e) => failure(e),
                },
            },
            "listenToRoom" | "silenceRoom" => {
                let Some(room) = text(data, "room") else {
                    return failure(format!("room is required to use the {event} method"));
                };
                let changed = if event == "listenToRoom" {
                    chat.listen(client_id, room).await
                } else {
                    chat.silence(client_id, room)
                };
                let mut answer = match changed {
                    Ok(true) => ok([]),
                    Ok(false) if event == "listenToRoom" => failure("you are already listening to this room"),
                    Ok(false) => failure("you are not listening to this room"),
                    Err(e) => failure(e),
                };
                answer.insert("room".into(), Value::from(room));
                answer
            }
            "detailsView" => {
                let room = chat.connection(client_id).and_then(|c| c.room);
                let Some(held) = self.held.get(client_id) else { return failure("connection closed") };
                ok([(
                    "details",
                    json!({
                        "params": {},
                        "id": client_id,
                        "remoteIP": held.remote_ip,
                        "connectedAt": held.connected_at,
                        "room": room,
                        "totalActions": 0,
                        "pendingActions": 0,
                    }),
                )])
            }
            "setIP" => {
                let ip = data.get("ip").cloned().unwrap_or(Value::Null);
                if let Some(held) = self.held.get_mut(client_id) {
                    held.remote_ip = ip;
                }
                ok([])
            }
            "action" => failure(NO_ACTIONS),
            other => failure(format!("{other} is not a known event")),
        }
    }

    /// True when a live node other than this one holds the connection (redis only).
    async fn held_elsewhere(&self, client_id: &str) -> bool {
        if !self.setup.cluster.is_redis() {
            return false;
        }
        let me = self.setup.cluster.node_id();
        match self.setup.cluster.rooms().holders(client_id).await {
            Ok(holders) => holders.iter().any(|h| **h != *me),
            Err(e) => {
                tracing::warn!(client_id, error = %e, "chat connections: holders unknown; handling the verb here");
                false
            }
        }
    }

    async fn rebroadcast(&self, client_id: &str, data: Value) {
        let payload = json!({
            "serverId": self.setup.cluster.node_id().to_string(),
            "serverToken": self.setup.server_token,
            "originalMessage": {"channel": connection_channel(client_id), "clientId": client_id, "data": data},
        });
        match self.setup.server.publish_local(REBROADCAST_CHANNEL, &payload).await {
            Ok(()) => tracing::debug!(client_id, "chat connections: verb rebroadcast to the holding node"),
            Err(e) => tracing::warn!(client_id, error = %e, "chat connections: rebroadcast refused"),
        }
    }

    /// On a redis cluster, listens on the rebroadcast channel once this node holds a
    /// connection (a failed start is retried by the next open).
    async fn ensure_rebroadcast_listener(&mut self) {
        if self.rebroadcast_listening || !self.setup.cluster.is_redis() {
            return;
        }
        match self.setup.client.subscribe(REBROADCAST_CHANNEL).await {
            Ok(subscription) => {
                self.rebroadcast_listening = true;
                tokio::spawn(relay_rebroadcasts(
                    subscription,
                    self.queue.clone(),
                    self.setup.server_token.clone(),
                    self.setup.cluster.clone(),
                    self.shutdown.clone(),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "chat connections: cannot listen on the rebroadcast channel"),
        }
    }

    async fn send(&self, client_id: &str, message: &Value) {
        if let Err(e) = self.setup.server.publish_local(&connection_channel(client_id), message).await {
            tracing::warn!(client_id, error = %e, "chat connections: answer not delivered");
        }
    }
}

/// Hands the rebroadcast messages carrying this cluster's token to the connection task.
async fn relay_rebroadcasts(
    mut subscription: Subscription,
    queue: mpsc::Sender<Work>,
    token: String,
    cluster: Cluster,
    shutdown: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = subscription.next() => match next {
                Some(delivery) => delivery,
                None => {
                    tracing::warn!("chat connections: the rebroadcast subscription ended");
                    return;
                }
            },
        };
        let raw = delivery.json();
        if !carries_token(&raw, &token) {
            continue;
        }
        let server_id = raw.get("serverId").and_then(Value::as_str).unwrap_or("unknown");
        if *server_id == *cluster.node_id() {
            continue;
        }
        let original = &raw["originalMessage"];
        let Some(client_id) =
            original.get("channel").and_then(Value::as_str).and_then(|c| c.strip_prefix(CONNECTION_PREFIX))
        else {
            tracing::warn!(server_id, "chat connections: malformed rebroadcast dropped");
            continue;
        };
        let work = Work::Verb { client_id: client_id.to_string(), data: original["data"].clone(), relayed: true };
        if queue.send(work).await.is_err() {
            return;
        }
    }
}
