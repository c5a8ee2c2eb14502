//! Chat for plain Bayeux clients through their own connection channel (spec §6.3, v5's
//! websocket verbs; item 29 fixed with v6's rebroadcast): subscribing opens the connection
//! (default room, welcome), verbs published there are consumed and answered with the v5
//! shapes and message counts, only the client may publish there, and the connection ends with
//! the client (disconnect, or the sweep when the engine forgot it). On a redis cluster a verb
//! reaching a node that does not hold the connection is rebroadcast to the holder, or adopted
//! when no live node holds it.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use actioncluster::chat::connection_channel;
use actioncluster::{Client, Config, Node, Subscription};
use common::bayeux;
use common::redis_server::RedisServer;
use common::{WAIT, within};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "test-token";
const WELCOME: &str = "Hello! Welcome to the actionHero api";

fn config(redis: Option<&RedisServer>) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout: common::DEFAULT_TIMEOUT,
        server_token: TOKEN.into(),
        redis_url: redis.map(RedisServer::url),
        connection_sweep_interval: Duration::from_millis(100),
        ..Config::default()
    }
}

async fn node(redis: Option<&RedisServer>) -> Node {
    within(WAIT, "node start", Node::start(config(redis))).await.expect("node starts")
}

/// A Faye-style client with its connection open: the Rust client subscribed to its own
/// connection channel, the welcome received.
struct Connection {
    client: Client,
    id: String,
    inbox: Subscription,
    sent: u64,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Self {
        let client = Client::connect(format!("http://{addr}/faye")).await.unwrap();
        let id = client.client_id().unwrap();
        let inbox = client.subscribe(connection_channel(&id)).await.unwrap();
        let mut connection = Connection { client, id, inbox, sent: 0 };
        let welcome = connection.next().await;
        assert_eq!(welcome, json!({"welcome": WELCOME, "room": "defaultRoom", "context": "api", "messageCount": 0}));
        connection
    }

    /// The next message on the connection channel.
    async fn next(&mut self) -> Value {
        within(WAIT, "connection message", self.inbox.next()).await.expect("subscription open").json()
    }

    /// The next chat message (context `user`) for `room`, skipping others' chat elsewhere.
    async fn said_in(&mut self, room: &str) -> Value {
        loop {
            let m = self.next().await;
            assert_eq!(m["context"], json!("user"), "only chat is expected here: {m}");
            if m["room"] == json!(room) {
                return m;
            }
        }
    }

    /// Publishes a verb and returns its answer: the very next message on the channel (the
    /// verb itself is consumed, never echoed), carrying this client's message count.
    async fn ask(&mut self, verb: Value) -> Value {
        self.client.publish(connection_channel(&self.id), verb.clone()).await.unwrap();
        self.sent += 1;
        let answer = loop {
            let m = self.next().await;
            if m["context"] != json!("user") {
                break m;
            }
        };
        assert_eq!(answer["context"], json!("response"), "{verb} -> {answer}");
        assert_eq!(answer["messageCount"], json!(self.sent), "{verb} -> {answer}");
        answer
    }
}

fn error_of(answer: &Value) -> &str {
    answer["error"].as_str().unwrap_or_else(|| panic!("an error answer: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_drive_rooms_and_are_answered_in_v5_shapes() {
    let node = node(None).await;
    let addr = node.local_addr();
    let mut a = Connection::open(addr).await;
    let mut b = Connection::open(addr).await;
    let entered = a.said_in("defaultRoom").await;
    assert_eq!((&entered["message"], &entered["from"]), (&json!("I have entered the room"), &json!(b.id)));

    let changed = a.ask(json!({"event": "roomChange", "room": "lobby"})).await;
    assert_eq!(changed["status"], json!("OK"));
    assert_eq!(changed["room"], json!("lobby"));
    let left = b.said_in("defaultRoom").await;
    assert_eq!((&left["message"], &left["from"]), (&json!("I have left the room"), &json!(a.id)));
    let view = a.ask(json!({"event": "roomView"})).await;
    assert_eq!(view["roomStatus"], json!({"room": "lobby", "members": [a.id], "membersCount": 1}));
    assert_eq!(view["room"], json!("lobby"));

    b.ask(json!({"event": "roomChange", "room": "lobby"})).await;
    assert_eq!(a.said_in("lobby").await["from"], json!(b.id));
    assert_eq!(b.ask(json!({"event": "say", "message": {"text": "hi"}})).await["status"], json!("OK"));
    let said = a.said_in("lobby").await;
    assert_eq!(
        (&said["message"], &said["from"], &said["context"]),
        (&json!({"text": "hi"}), &json!(b.id), &json!("user"))
    );

    // Listening rooms.
    let listen = a.ask(json!({"event": "listenToRoom", "room": "games"})).await;
    assert_eq!((&listen["status"], &listen["room"]), (&json!("OK"), &json!("games")));
    let again = a.ask(json!({"event": "listenToRoom", "room": "games"})).await;
    assert_eq!(error_of(&again), "you are already listening to this room");
    assert_eq!(a.ask(json!({"event": "silenceRoom", "room": "games"})).await["status"], json!("OK"));
    let silent = a.ask(json!({"event": "silenceRoom", "room": "games"})).await;
    assert_eq!(error_of(&silent), "you are not listening to this room");

    // Details and setIP.
    let details = a.ask(json!({"event": "detailsView"})).await["details"].clone();
    assert_eq!((&details["id"], &details["room"], &details["remoteIP"]), (&json!(a.id), &json!("lobby"), &json!(0)));
    assert!(details["connectedAt"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(a.ask(json!({"event": "setIP", "ip": "10.1.2.3"})).await["status"], json!("OK"));
    assert_eq!(a.ask(json!({"event": "detailsView"})).await["details"]["remoteIP"], json!("10.1.2.3"));

    // Bad verbs get reasons, and still count.
    for (verb, reason) in [
        (json!({"event": "say"}), "message is required to use the say method"),
        (json!({"event": "roomChange"}), "room is required to use the roomChange method"),
        (json!({"event": "listenToRoom", "room": ""}), "room is required to use the listenToRoom method"),
        (json!({"event": "action", "params": {"action": "status"}}), "unknown action or invalid apiVersion"),
        (json!({"event": "fly"}), "fly is not a known event"),
        (json!({"message": "no event"}), "event is required"),
        (json!("not an object"), "event is required"),
    ] {
        assert_eq!(error_of(&a.ask(verb.clone()).await), reason, "{verb}");
    }

    // Only the client publishes on its own channel.
    let err =
        b.client.publish(connection_channel(&a.id), json!({"event": "say", "message": "as a"})).await.unwrap_err();
    assert_eq!(
        err.bayeux_error().map(ToString::to_string),
        Some(format!("403:{}:Only its own client may publish on a connection channel", connection_channel(&a.id)))
    );

    // Disconnecting ends the connection: it leaves its room, announced.
    a.client.disconnect().await.unwrap();
    let left = b.said_in("lobby").await;
    assert_eq!((&left["message"], &left["from"]), (&json!("I have left the room"), &json!(a.id)));
    assert_eq!(node.cluster().rooms().status("lobby").await.unwrap().members, [b.id.clone()]);
    assert!(node.chat().connection(&a.id).is_none());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_the_engine_forgot_leaves_its_room() {
    let node = node(None).await;
    let addr = node.local_addr();
    let mut watcher = Connection::open(addr).await;
    // A long-polling client that subscribes and never connects again.
    let gone = bayeux::handshake(addr).await;
    bayeux::subscribe(addr, &gone, &connection_channel(&gone)).await;
    assert_eq!(watcher.said_in("defaultRoom").await["from"], json!(gone));
    // Another node's collection (or expiry) destroys it: the sweep notices.
    assert!(node.server().engine().destroy_client(&gone).await.unwrap());
    let left = watcher.said_in("defaultRoom").await;
    assert_eq!((&left["message"], &left["from"]), (&json!("I have left the room"), &json!(gone)));
    assert!(node.chat().connection(&gone).is_none());
    node.shutdown().await;
}

/// Waits until `messages` of the long-polling client `client_id` (connecting to `addr`) hold
/// one matching `pick`, and answers it.
async fn poll_for(addr: SocketAddr, client_id: &str, pick: impl Fn(&Value) -> bool) -> Value {
    within(WAIT, "message via long-polling", async {
        loop {
            for m in bayeux::connect_messages(addr, client_id).await {
                if pick(&m["data"]) {
                    return m["data"].clone();
                }
            }
        }
    })
    .await
}

/// The long-polling client `client_id` publishes a verb on its connection channel at `addr`.
async fn verb(addr: SocketAddr, client_id: &str, data: Value) -> Value {
    let message = json!({"channel": connection_channel(client_id), "clientId": client_id, "data": data});
    bayeux::send_one(addr, message).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_reaching_another_node_are_rebroadcast_or_adopted() {
    let redis = RedisServer::start().await;
    let x = node(Some(&redis)).await;
    let z = node(Some(&redis)).await;
    let (x_addr, z_addr) = (x.local_addr(), z.local_addr());
    // The client opens its connection on x.
    let c = bayeux::handshake(x_addr).await;
    bayeux::subscribe(x_addr, &c, &connection_channel(&c)).await;
    let welcome = poll_for(x_addr, &c, |d| d["context"] == json!("api")).await;
    assert_eq!(welcome["room"], json!("defaultRoom"));

    // Its next message goes through z (another node of the cluster): z does not hold the
    // connection, x does; x answers with its count.
    let reply = verb(z_addr, &c, json!({"event": "roomChange", "room": "lobby"})).await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
    let answer = poll_for(z_addr, &c, |d| d["context"] == json!("response")).await;
    assert_eq!((&answer["room"], &answer["messageCount"]), (&json!("lobby"), &json!(1)));
    assert_eq!(x.chat().connection(&c).and_then(|k| k.room).as_deref(), Some("lobby"));
    assert!(z.chat().connection(&c).is_none(), "z did not take the connection over");

    // x leaves the cluster (its room index is purged); the client's session lives on in
    // redis and its next verb, through z, makes z adopt the connection: welcome, then answer.
    x.shutdown().await;
    let reply = verb(z_addr, &c, json!({"event": "detailsView"})).await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
    let mut seen = Vec::new();
    let answer = within(WAIT, "adopted answer", async {
        loop {
            for m in bayeux::connect_messages(z_addr, &c).await {
                if m["data"]["context"] == json!("response") {
                    return m["data"].clone();
                }
                seen.push(m["data"].clone());
            }
        }
    })
    .await;
    assert!(seen.iter().any(|m| m["welcome"] == json!(WELCOME)), "welcomed by z first: {seen:?}");
    assert_eq!((&answer["details"]["id"], &answer["messageCount"]), (&json!(c), &json!(1)));
    assert_eq!(z.chat().connection(&c).and_then(|k| k.room).as_deref(), Some("defaultRoom"));
    z.shutdown().await;
}
