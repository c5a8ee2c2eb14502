//! The `/actionHero` channel guard (spec §C7.2) and chat delivery through it (§C6.5, §6.2,
//! §6.3 v5): publishes without the cluster's token are refused, external clients cannot
//! subscribe there, a chat broadcast reaches the room's connections on their
//! `/client/websocket/connection/{id}` channels (never the sender), and a payload carrying
//! another token is dropped by the receiving node.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use actioncluster::chat::connection_channel;
use actioncluster::{ChatError, ChatPayload, Config, Node, RoomAdd, RoomMatch};
use common::bayeux;
use common::redis_server::RedisServer;
use common::ws::Ws;
use common::{WAIT, within};
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;

const TOKEN: &str = "test-token";
const MISMATCH: &str = "message token miss-match on protected actionHero channel";

fn config(token: &str, redis: Option<&RedisServer>) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout: common::DEFAULT_TIMEOUT,
        server_token: token.to_string(),
        redis_url: redis.map(RedisServer::url),
        ..Config::default()
    }
}

async fn node(token: &str, redis: Option<&RedisServer>) -> Node {
    within(WAIT, "node start", Node::start(config(token, redis))).await.expect("node starts")
}

/// A websocket Bayeux client subscribed to its own connection channel, as a v5 browser was.
/// The subscription opens its chat connection (in `defaultRoom`, welcomed); these tests move
/// connections with the Rust API, so `next` skips the welcome and `defaultRoom` traffic.
struct ChatClient {
    ws: Ws,
    id: String,
    pending: VecDeque<Value>,
}

impl ChatClient {
    async fn open(addr: SocketAddr) -> Self {
        let mut ws = Ws::open(addr).await;
        let id = ws.handshake().await;
        ws.subscribe(&id, &format!("/client/websocket/connection/{id}")).await;
        ws.send_connect(&id).await;
        let mut client = Self { ws, id, pending: VecDeque::new() };
        // Opened: the node's later registry changes cannot race the opening.
        let welcome = client.next_any().await;
        assert_eq!(welcome["context"], json!("api"), "{welcome}");
        client
    }

    /// The next chat message delivered to this client outside `defaultRoom` (bounded by WAIT).
    async fn next(&mut self) -> Value {
        loop {
            let m = self.next_any().await;
            if m["room"] != json!("defaultRoom") {
                return m;
            }
        }
    }

    /// The next message on the connection channel.
    async fn next_any(&mut self) -> Value {
        loop {
            if let Some(m) = self.pending.pop_front() {
                assert_eq!(m["channel"], json!(format!("/client/websocket/connection/{}", self.id)), "{m}");
                return m["data"].clone();
            }
            for m in self.ws.recv().await {
                if m["channel"] == json!("/meta/connect") {
                    self.ws.send_connect(&self.id).await;
                } else if !bayeux::is_meta(&m) {
                    self.pending.push_back(m);
                }
            }
        }
    }
}

/// One publish over HTTP; the reply, successful or not.
async fn publish(addr: SocketAddr, channel: &str, data: Value) -> Value {
    bayeux::send_one(addr, json!({"channel": channel, "data": data})).await
}

fn props(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_protected_channels_need_the_token_and_a_server_id() {
    let node = node(TOKEN, None).await;
    let addr = node.local_addr();
    let refused = format!("403:/actionHero/chat:{MISMATCH}");
    for data in [
        json!({"message": "no token"}),
        json!({"serverToken": "wrong", "serverId": "rogue:1", "message": "x"}),
        json!({"serverToken": TOKEN, "message": "token but no serverId"}),
        json!("a string"),
    ] {
        let reply = publish(addr, "/actionHero/chat", data.clone()).await;
        assert_eq!(reply["successful"], json!(false), "{data}: {reply}");
        assert_eq!(reply["error"], json!(refused), "{data}");
    }
    let reply = publish(addr, "/actionHero/cluster", json!({"serverId": "x"})).await;
    assert_eq!(reply["error"], json!(format!("403:/actionHero/cluster:{MISMATCH}")));
    // The token is the credential, wherever the publish comes from.
    let ok = publish(addr, "/actionHero/chat", json!({"serverToken": TOKEN, "serverId": "peer:1"})).await;
    assert_eq!(ok["successful"], json!(true), "{ok}");
    // The node's own in-process publishes pass the same guard.
    let err = node.publish("/actionHero/chat", json!({"serverToken": "wrong", "serverId": "me"})).await.unwrap_err();
    assert_eq!(err.to_string(), refused);
    // Other channels are not guarded.
    assert_eq!(publish(addr, "/chat/lobby", json!({"m": 1})).await["successful"], json!(true));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_clients_cannot_subscribe_to_protected_channels_nor_read_them_through_root_wildcards() {
    let node = node(TOKEN, None).await;
    let addr = node.local_addr();
    let client_id = bayeux::handshake(addr).await;
    for pattern in ["/actionHero/**", "/actionHero/*", "/actionHero/chat/*"] {
        let reply = bayeux::subscribe_reply(addr, &client_id, json!(pattern)).await;
        assert_eq!(reply["successful"], json!(false), "{pattern}: {reply}");
        assert_eq!(reply["error"], json!(format!("403:{pattern}:actionHero does not allow wildcard subscriptions")));
    }
    let reply = bayeux::subscribe_reply(addr, &client_id, json!(["/chat/a", "/actionHero/**"])).await;
    assert_eq!(reply["successful"], json!(false), "one refused channel refuses the batch: {reply}");
    let reply = bayeux::subscribe_reply(addr, &client_id, json!("/actionHero/chat")).await;
    assert_eq!(reply["error"], json!("403:/actionHero/chat:Forbidden channel"), "payloads there carry the token");
    for open in ["/chat/**", "/*"] {
        let reply = bayeux::subscribe_reply(addr, &client_id, json!(open)).await;
        assert_eq!(reply["successful"], json!(true), "{open}: {reply}");
    }
    // Faye's root wildcard stays open, but protected payloads (they carry the token) are
    // published past it: a `/**` subscriber sees the marker that followed, not the chat.
    let everything = bayeux::subscriber(addr, &["/**"]).await;
    node.chat().broadcast("lobby", None, json!("secret-bearing"), None).await.unwrap();
    publish(addr, "/actionHero/chat", json!({"serverToken": TOKEN, "serverId": "peer:1"})).await;
    bayeux::publish(addr, "/marker", json!(1)).await;
    let seen = bayeux::connect_messages(addr, &everything).await;
    assert_eq!(bayeux::channels(&seen), ["/marker"], "{seen:?}");
    // In-process clients (the node's own) may.
    let local = node.client().build().await.unwrap();
    local.subscribe("/actionHero/**").await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_the_room_but_not_the_sender() {
    let node = node(TOKEN, None).await;
    let addr = node.local_addr();
    let chat = node.chat();
    let mut a = ChatClient::open(addr).await;
    let mut b = ChatClient::open(addr).await;
    let mut c = ChatClient::open(addr).await;
    chat.register(&a.id, props(&[("tier", json!("gold"))]));
    chat.register(&c.id, Map::new());
    // c hears the lobby without being in it (listenToRoom): node-local, not a membership.
    assert!(chat.listen(&c.id, "lobby").await.unwrap());
    assert_eq!(chat.join(&a.id, "lobby").await.unwrap(), RoomAdd::Added);
    // Delivery is judged when a node receives the broadcast; wait for a's announcement
    // before b appears, so b's registration cannot race it.
    let entered = c.next().await;
    assert_eq!((&entered["message"], &entered["from"]), (&json!("I have entered the room"), &json!(a.id)));
    chat.register(&b.id, Map::new());
    assert_eq!(chat.join(&b.id, "lobby").await.unwrap(), RoomAdd::Added);
    assert_eq!(chat.join(&b.id, "lobby").await.unwrap(), RoomAdd::AlreadyMember);
    assert_eq!(chat.join(&c.id, "games").await.unwrap(), RoomAdd::Added);
    let status = node.cluster().rooms().status("lobby").await.unwrap();
    assert_eq!(status.members, [a.id.clone(), b.id.clone()]);
    assert_eq!(chat.connection(&c.id).unwrap().room.as_deref(), Some("games"));

    // a and c hear b arrive (announced once: the second join did not change the list).
    for listener in [&mut a, &mut c] {
        let entered = listener.next().await;
        assert_eq!((&entered["message"], &entered["from"]), (&json!("I have entered the room"), &json!(b.id)));
    }

    chat.say(&b.id, json!("hello")).await.unwrap();
    let said = a.next().await;
    let mut keys: Vec<&str> = said.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["context", "from", "message", "room", "sentAt"], "{said}");
    assert_eq!(
        (&said["message"], &said["room"], &said["from"], &said["context"]),
        (&json!("hello"), &json!("lobby"), &json!(b.id), &json!("user"))
    );
    assert!(said["sentAt"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(c.next().await["message"], json!("hello"));

    // b never hears itself (neither its entrance nor its hello): the first thing it hears
    // is a's reply, which came after.
    chat.say(&a.id, json!("hi b")).await.unwrap();
    assert_eq!(b.next().await["message"], json!("hi b"));
    assert_eq!(c.next().await["message"], json!("hi b"));

    // A room match reaches only connections with that property.
    let gold = RoomMatch { key: "tier".into(), value: json!("gold") };
    chat.broadcast("lobby", None, json!("gold only"), Some(gold)).await.unwrap();
    chat.broadcast("lobby", None, json!("everyone"), None).await.unwrap();
    assert_eq!(a.next().await["message"], json!("gold only"));
    let everyone = a.next().await;
    assert_eq!((&everyone["message"], &everyone["from"]), (&json!("everyone"), &json!("0")));
    assert_eq!(b.next().await["message"], json!("everyone"), "b is not gold");
    assert_eq!(c.next().await["message"], json!("everyone"), "c is not gold");
    assert!(chat.silence(&c.id, "lobby").unwrap());

    // Leaving announces; an unregistered connection hears nothing more.
    assert!(chat.unregister(&b.id).await.unwrap());
    let left = a.next().await;
    assert_eq!((&left["message"], &left["from"]), (&json!("I have left the room"), &json!(b.id)));
    assert_eq!(node.cluster().rooms().status("lobby").await.unwrap().members, [a.id.clone()]);
    chat.say(&c.id, json!("to games")).await.unwrap();
    chat.broadcast("lobby", None, json!("after b left"), None).await.unwrap();
    chat.broadcast("lobby", None, json!("second"), None).await.unwrap();
    assert_eq!(a.next().await["message"], json!("after b left"), "a is not in games");
    // "second" delivered: the receive of "after b left" has finished on every recipient.
    assert_eq!(a.next().await["message"], json!("second"));
    node.publish(&connection_channel(&b.id), json!({"message": "barrier"})).await.unwrap();
    assert_eq!(b.next().await["message"], json!("barrier"), "b heard nothing after it left");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_crosses_nodes_and_a_wrong_token_is_dropped() {
    let redis = RedisServer::start().await;
    let x = node(TOKEN, Some(&redis)).await;
    let z = node(TOKEN, Some(&redis)).await;
    let rogue = node("another-token", Some(&redis)).await;
    let mut a = ChatClient::open(x.local_addr()).await;
    x.chat().register(&a.id, Map::new());
    assert_eq!(x.chat().join(&a.id, "lobby").await.unwrap(), RoomAdd::Added);

    // A member on another node speaks: delivered through the shared engine.
    z.chat().register("web-1", Map::new());
    assert_eq!(z.chat().join("web-1", "lobby").await.unwrap(), RoomAdd::Added);
    let entered = a.next().await;
    assert_eq!((&entered["message"], &entered["from"]), (&json!("I have entered the room"), &json!("web-1")));
    assert_eq!(x.cluster().rooms().status("lobby").await.unwrap().members_count, 2);

    // A node with another token publishes (its own guard accepts its own token); x drops it.
    let before = x.chat().token_mismatches();
    rogue.chat().broadcast("lobby", None, json!("rogue"), None).await.unwrap();
    z.chat().say("web-1", json!("legit")).await.unwrap();
    let next = a.next().await;
    assert_eq!(next["message"], json!("legit"), "the rogue payload was not delivered");
    assert_eq!(x.chat().token_mismatches(), before + 1, "x saw and dropped the rogue payload first");

    // The payload on the wire is the v5 shape, with the sender node's id and token.
    let local = x.client().build().await.unwrap();
    let mut wire = local.subscribe("/actionHero/chat").await.unwrap();
    z.chat().say("web-1", json!("shape")).await.unwrap();
    let delivery = within(WAIT, "chat payload", futures_util::StreamExt::next(&mut wire)).await.unwrap();
    let payload: ChatPayload = delivery.decode().unwrap();
    assert_eq!(payload.server_token, TOKEN);
    assert_eq!(payload.server_id, z.cluster().node_id().to_string());
    assert_eq!((payload.connection.id.as_str(), payload.connection.room.as_str()), ("web-1", "lobby"));
    assert_eq!(payload.connection.room_match_key, None);
    let raw = delivery.json();
    assert_eq!(raw["connection"]["roomMatchKey"], Value::Null);
    assert!(raw["connection"].as_object().unwrap().contains_key("roomMatchValue"));
    for n in [x, z, rogue] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_extension_refuses_its_chat_client_still_starts() {
    // The chat listener starts with the first room join, so such a node serves Bayeux as
    // before and only the chat calls fail, with the reason.
    let node = within(WAIT, "node start", Node::builder(config(TOKEN, None)).extension(common::RefuseAll).start())
        .await
        .expect("node starts without a chat session");
    node.chat().register("c1", Map::new());
    let err = node.chat().join("c1", "lobby").await.unwrap_err();
    assert!(matches!(err, ChatError::Subscribe(_)), "{err:?}");
    assert!(node.cluster().rooms().status("lobby").await.unwrap().members.is_empty());
    assert_eq!(node.chat().connection("c1").unwrap().room, None);
    assert!(matches!(node.chat().join("nobody", "lobby").await, Err(ChatError::UnknownConnection(_))));
    node.shutdown().await;
}

/// v5's rule: a connection channel is its client's own. Another client cannot subscribe to
/// it, directly or through a `/client` wildcard, and a root-wildcard subscriber does not
/// see what is delivered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_channel_belongs_to_its_client() {
    let node = node(TOKEN, None).await;
    let addr = node.local_addr();
    let mut owner = ChatClient::open(addr).await;
    let snoop = bayeux::handshake(addr).await;
    let theirs = connection_channel(&owner.id);
    let reply = bayeux::subscribe_reply(addr, &snoop, json!(theirs)).await;
    assert_eq!(reply["successful"], json!(false), "{reply}");
    assert_eq!(reply["error"], json!(format!("403:{theirs}:You cannot subscribe to another client's channel")));
    for pattern in ["/client/**", "/client/websocket/connection/*"] {
        let reply = bayeux::subscribe_reply(addr, &snoop, json!(pattern)).await;
        assert_eq!(reply["successful"], json!(false), "{pattern}: {reply}");
    }
    let everything = bayeux::subscriber(addr, &["/**"]).await;
    node.publish(&theirs, json!({"message": "private"})).await.unwrap();
    assert_eq!(owner.next().await["message"], json!("private"));
    bayeux::publish(addr, "/marker", json!(1)).await;
    let seen = bayeux::connect_messages(addr, &everything).await;
    assert_eq!(bayeux::channels(&seen), ["/marker"], "{seen:?}");
    node.shutdown().await;
}
