//! Web clients' chat (spec §6.2's HTTP action `chat`, §7, §C8): `/api/chat` with v5's methods
//! and texts, the fingerprint and room cookies, chat delivered into the web mailbox and
//! fetched with `messages`, the client ending `ttl` after its last request, web chat off
//! without a TTL, and a fingerprint held by two nodes getting each message once (§C6.6).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use actioncluster::chat::connection_channel;
use actioncluster::{Client, Config, Node, Subscription};
use common::http::{self, Reply, urlencode};
use common::redis_server::RedisServer;
use common::{WAIT, within};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

fn config(ttl: Option<Duration>, redis: Option<&RedisServer>) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout: common::DEFAULT_TIMEOUT,
        server_token: "test-token".into(),
        web_message_ttl: ttl,
        redis_url: redis.map(RedisServer::url),
        ..Config::default()
    }
}

async fn node(ttl: Option<Duration>, redis: Option<&RedisServer>) -> Node {
    within(WAIT, "node start", Node::start(config(ttl, redis))).await.expect("node starts")
}

/// `GET /api/chat?{query}` with the fingerprint cookie.
async fn chat(addr: SocketAddr, fingerprint: &str, query: &str) -> Reply {
    let cookie = format!("sessionID={fingerprint}");
    http::request(addr, "GET", &format!("/api/chat?{query}"), &[("cookie", &cookie)], "").await
}

/// A successful chat request's JSON.
async fn ok(addr: SocketAddr, fingerprint: &str, query: &str) -> Value {
    let reply = chat(addr, fingerprint, query).await;
    let body = reply.json();
    assert_eq!(reply.status, 200, "{query}: {body}");
    assert!(body.get("error").is_none(), "{query}: {body}");
    assert_eq!(body["requestorInformation"]["id"], json!(fingerprint));
    body
}

/// A Faye client whose connection is open (welcome received) on `addr`.
async fn faye(addr: SocketAddr) -> (Client, String, Subscription) {
    let client = Client::connect(format!("http://{addr}/faye")).await.unwrap();
    let id = client.client_id().unwrap();
    let mut inbox = client.subscribe(connection_channel(&id)).await.unwrap();
    let welcome = within(WAIT, "welcome", inbox.next()).await.unwrap().json();
    assert_eq!(welcome["context"], json!("api"));
    (client, id, inbox)
}

async fn verb(client: &Client, id: &str, inbox: &mut Subscription, data: Value) -> Value {
    client.publish(connection_channel(id), data).await.unwrap();
    loop {
        let m = within(WAIT, "answer", inbox.next()).await.unwrap().json();
        if m["context"] == json!("response") {
            return m;
        }
    }
}

/// The next chat message (context `user`) of `room` on a Faye client's channel.
async fn heard(inbox: &mut Subscription, room: &str) -> Value {
    loop {
        let m = within(WAIT, "chat", inbox.next()).await.unwrap().json();
        if m["context"] == json!("user") && m["room"] == json!(room) {
            return m;
        }
    }
}

/// Fetches the web client's mailbox until a message satisfies `until`; everything fetched.
async fn messages_until(addr: SocketAddr, fingerprint: &str, until: impl Fn(&Value) -> bool) -> Vec<Value> {
    within(WAIT, "web messages", async {
        let mut all = Vec::new();
        loop {
            let body = ok(addr, fingerprint, "method=messages").await;
            let batch = body["messages"].as_array().unwrap().clone();
            let done = batch.iter().any(&until);
            all.extend(batch);
            if done {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ttl_web_chat_is_off() {
    let node = node(None, None).await;
    let reply = http::request(node.local_addr(), "GET", "/api/chat?method=roomView", &[], "").await;
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["error"], json!("Error: chatting via web clients is not enabled"));
    let cookie = reply.header("set-cookie").expect("a fingerprint is issued");
    let issued = cookie.strip_prefix("sessionID=").unwrap().split(';').next().unwrap();
    assert_eq!(body["requestorInformation"]["id"], json!(issued));
    assert_eq!(body["requestorInformation"]["receivedParams"], json!({"method": "roomView"}));
    assert_eq!(body["serverInformation"]["serverName"], json!("actioncluster"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_clients_chat_with_faye_clients_through_their_mailbox() {
    let node = node(Some(Duration::from_millis(1500)), None).await;
    let addr = node.local_addr();
    let web = "web-fingerprint-1";
    let changed = ok(addr, web, "method=roomChange&room=lobby").await;
    assert_eq!(changed["room"], json!("lobby"));
    let reply = chat(addr, web, "method=detailsView").await;
    assert!(reply.header("set-cookie").is_none(), "a known fingerprint keeps its cookie");
    assert_eq!(reply.json()["details"], json!({"id": web, "room": "lobby"}));
    let room_cookie = chat(addr, web, "method=roomChange&room=lobby").await;
    assert!(
        room_cookie.header_all("set-cookie").iter().any(|c| c.starts_with("__room=lobby")),
        "{:?}",
        room_cookie.headers
    );

    // A Faye client joins the lobby and speaks: the web client's mailbox gets it.
    let (faye_client, faye_id, mut inbox) = faye(addr).await;
    verb(&faye_client, &faye_id, &mut inbox, json!({"event": "roomChange", "room": "lobby"})).await;
    verb(&faye_client, &faye_id, &mut inbox, json!({"event": "say", "message": "hi web"})).await;
    let got = messages_until(addr, web, |m| m["message"] == json!("hi web")).await;
    let entered = got.iter().find(|m| m["message"] == json!("I have entered the room")).expect("entrance stored");
    assert_eq!(entered["from"], json!(faye_id));
    let said = got.iter().find(|m| m["message"] == json!("hi web")).unwrap();
    assert_eq!((&said["room"], &said["from"], &said["context"]), (&json!("lobby"), &json!(faye_id), &json!("user")));
    assert_eq!(ok(addr, web, "method=messages").await["messages"], json!([]), "fetching empties the mailbox");

    // The web client speaks (a form body here) and the Faye client hears it.
    let body = format!("method=say&message={}", urlencode("hello faye"));
    let cookie = format!("sessionID={web}");
    let reply = http::request(
        addr,
        "POST",
        "/api/chat",
        &[("cookie", &cookie), ("content-type", "application/x-www-form-urlencoded")],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let m = heard(&mut inbox, "lobby").await;
    assert_eq!((&m["message"], &m["from"]), (&json!("hello faye"), &json!(web)));
    let view = ok(addr, web, "method=roomView").await;
    assert_eq!(view["roomStatus"], json!({"room": "lobby", "members": [web, faye_id], "membersCount": 2}));

    // v5's errors, with a 400.
    for (query, error) in [
        ("", "Error: method is a required parameter for this action"),
        ("method=fly", "Error: fly is not a known chat method"),
        ("method=say", "Error: message is required to use the say method"),
        ("method=roomChange", "Error: room is required to use the roomChange method"),
    ] {
        let reply = chat(addr, web, query).await;
        assert_eq!((reply.status, reply.json()["error"].clone()), (400, json!(error)), "{query}");
    }
    // `/api?action=chat` is the same action; other actions are not served.
    assert_eq!(ok(addr, web, "method=detailsView&action=chat").await["details"]["room"], json!("lobby"));
    let other = http::request(addr, "GET", "/api?action=status", &[], "").await;
    assert_eq!((other.status, other.json()["error"].clone()), (404, json!("Error: status is not a known action.")));
    let via_api = http::request(
        addr,
        "POST",
        "/api",
        &[("cookie", &cookie), ("content-type", "application/json")],
        json!({"action": "chat", "method": "detailsView"}).to_string(),
    )
    .await;
    assert_eq!(via_api.json()["details"]["id"], json!(web));
    // A cookie naming a Bayeux client's connection is not taken: a fresh fingerprint is issued.
    let hijack = chat(addr, &faye_id, "method=detailsView").await;
    assert!(hijack.header("set-cookie").is_some_and(|c| c.starts_with("sessionID=")));
    assert_ne!(hijack.json()["requestorInformation"]["id"], json!(faye_id));

    // Silent for longer than the TTL: the web client ends and leaves the lobby (announced).
    let left = heard(&mut inbox, "lobby").await;
    assert_eq!((&left["message"], &left["from"]), (&json!("I have left the room"), &json!(web)));
    assert_eq!(node.cluster().rooms().status("lobby").await.unwrap().members, [faye_id]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fingerprint_on_two_nodes_gets_each_message_once() {
    let redis = RedisServer::start().await;
    let x = node(Some(Duration::from_secs(30)), Some(&redis)).await;
    let y = node(Some(Duration::from_secs(30)), Some(&redis)).await;
    let web = "shared-fingerprint";
    for n in [&x, &y] {
        ok(n.local_addr(), web, "method=roomChange&room=lobby").await;
        assert!(n.chat().connection(web).is_some_and(|c| c.web));
    }
    let (faye_client, faye_id, mut inbox) = faye(x.local_addr()).await;
    verb(&faye_client, &faye_id, &mut inbox, json!({"event": "roomChange", "room": "lobby"})).await;
    for word in ["one", "two", "three"] {
        verb(&faye_client, &faye_id, &mut inbox, json!({"event": "say", "message": word})).await;
    }
    let got = messages_until(y.local_addr(), web, |m| m["message"] == json!("three")).await;
    // Both nodes received every broadcast; one stored it.
    let mut extra = Vec::new();
    verb(&faye_client, &faye_id, &mut inbox, json!({"event": "say", "message": "barrier"})).await;
    extra.extend(messages_until(x.local_addr(), web, |m| m["message"] == json!("barrier")).await);
    let all: Vec<&Value> = got.iter().chain(&extra).filter(|m| m["from"] == json!(faye_id)).collect();
    for word in ["one", "two", "three", "barrier"] {
        assert_eq!(all.iter().filter(|m| m["message"] == json!(word)).count(), 1, "{word}: {all:?}");
    }
    x.shutdown().await;
    y.shutdown().await;
}
