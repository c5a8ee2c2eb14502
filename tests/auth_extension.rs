//! The authentication/authorization extension of examples/auth_extension.rs on a real node:
//! handshake needs a known `ext.token`; subscribe and publish are limited to the token's
//! channel patterns; a delivered message never carries the publisher's token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/auth_extension.rs"]
mod auth;

use actioncluster::{Config, Node, ServerEvent};
use auth::{AuthExtension, UNAUTHORIZED};
use common::bayeux::{self, send, send_one};
use common::ws::Ws;
use common::{WAIT, http};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

const ALICE: &str = "alice-secret"; // subscribe and publish /chat/**
const MONITOR: &str = "monitor-secret"; // subscribe /**, publish nothing
const ADMIN: &str = "admin-secret"; // anything
const BOB: &str = "bob-secret"; // subscribe /chat/**, publish /chat/** and /news/*

async fn node() -> Node {
    let config = Config { host: "127.0.0.1".into(), port: 0, timeout: Duration::from_secs(2), ..Config::default() };
    let auth = AuthExtension::demo().grant(BOB, &["/chat/**"], &["/chat/**", "/news/*"]);
    tokio::time::timeout(WAIT, Node::builder(config).extension(auth).start()).await.expect("start in time").unwrap()
}

fn with_token(mut message: Value, token: Option<&str>) -> Value {
    if let Some(token) = token {
        message["ext"] = json!({ "token": token });
    }
    message
}

fn handshake_msg(token: Option<&str>) -> Value {
    with_token(bayeux::handshake_msg(&["long-polling", "websocket"]), token)
}

/// Handshakes with `token`, asserting success; returns the client id.
async fn handshake(addr: SocketAddr, token: &str) -> String {
    let reply = send_one(addr, handshake_msg(Some(token))).await;
    assert_eq!(reply["successful"], json!(true), "handshake with {token}: {reply}");
    reply["clientId"].as_str().expect("clientId").to_string()
}

async fn subscribe(addr: SocketAddr, client_id: &str, token: Option<&str>, subscription: Value) -> Value {
    let message = json!({"channel": "/meta/subscribe", "clientId": client_id, "subscription": subscription});
    send_one(addr, with_token(message, token)).await
}

async fn publish(addr: SocketAddr, token: Option<&str>, channel: &str, data: Value) -> Value {
    send_one(addr, with_token(json!({"channel": channel, "data": data}), token)).await
}

fn assert_refused(reply: &Value, error: &str) {
    assert_eq!(reply["successful"], json!(false), "{reply}");
    assert_eq!(reply["error"], json!(error), "{reply}");
}

#[tokio::test]
async fn handshake_without_a_known_token_is_refused() {
    let node = node().await;
    let addr = node.local_addr();
    let mut events = node.events();
    let mut refused = vec![handshake_msg(None)];
    for ext in [json!({}), json!({"token": 5}), json!({"token": null}), json!({"token": "nope"}), json!("alice-secret")]
    {
        let mut m = handshake_msg(None);
        m["ext"] = ext;
        refused.push(m);
    }
    for message in refused {
        let reply = send_one(addr, message.clone()).await;
        assert_refused(&reply, UNAUTHORIZED);
        assert!(reply.get("clientId").is_none(), "no client id for {message}: {reply}");
        assert_eq!(reply["advice"]["reconnect"], json!("handshake"), "{reply}");
    }
    // No client was created for them: the first handshake event is the accepted one's.
    for token in [ALICE, MONITOR, ADMIN, BOB] {
        let id = handshake(addr, token).await;
        let event = common::next_event(&mut events).await;
        assert_eq!(event, ServerEvent::Handshake { client_id: id }, "{token}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_chat_token_subscribes_under_chat_only() {
    let node = node().await;
    let addr = node.local_addr();
    let alice = handshake(addr, ALICE).await;
    for allowed in ["/chat/room", "/chat/**", "/chat/*", "/chat/a/b/**"] {
        let reply = subscribe(addr, &alice, Some(ALICE), json!(allowed)).await;
        assert_eq!(reply["successful"], json!(true), "{allowed}: {reply}");
        assert_eq!(reply["subscription"], json!(allowed));
    }
    for forbidden in ["/admin/**", "/admin/x", "/admin/*", "/**", "/*", "/chatroom", "/chat"] {
        let reply = subscribe(addr, &alice, Some(ALICE), json!(forbidden)).await;
        assert_refused(&reply, &format!("403:{forbidden}:Forbidden channel"));
    }
    // An array stops at the first forbidden channel, and nothing of it is subscribed.
    let reply = subscribe(addr, &alice, Some(ALICE), json!(["/chat/ok", "/admin/b", "/secret/c"])).await;
    assert_refused(&reply, "403:/admin/b:Forbidden channel");
    // Without a token, or with another client's rights: refused even under /chat.
    assert_refused(&subscribe(addr, &alice, None, json!("/chat/other")).await, UNAUTHORIZED);
    assert_refused(&subscribe(addr, &alice, Some("guess"), json!("/chat/other")).await, UNAUTHORIZED);
    // Invalid channels are still the server's to refuse.
    assert_refused(&subscribe(addr, &alice, Some(ALICE), json!("/chat/**/x")).await, "405:/chat/**/x:Invalid channel");

    // The refused subscriptions were not made: of these publishes alice receives only the
    // /chat/room one (once, although several of her subscriptions match it).
    for channel in ["/admin/x", "/admin/b", "/secret/c", "/chatroom", "/chat", "/chat/room"] {
        let reply = publish(addr, Some(ADMIN), channel, json!(channel)).await;
        assert_eq!(reply["successful"], json!(true), "{reply}");
    }
    let got = bayeux::connect_messages(addr, &alice).await;
    assert_eq!(bayeux::channels(&got), ["/chat/room"], "{got:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn publishing_is_limited_to_the_tokens_channels() {
    let node = node().await;
    let addr = node.local_addr();
    let monitor = handshake(addr, MONITOR).await;
    assert_eq!(subscribe(addr, &monitor, Some(MONITOR), json!("/**")).await["successful"], json!(true));

    assert_eq!(publish(addr, Some(ALICE), "/chat/room", json!("alice")).await["successful"], json!(true));
    assert_eq!(publish(addr, Some(BOB), "/news/today", json!("bob")).await["successful"], json!(true));
    assert_refused(&publish(addr, Some(ALICE), "/admin/x", json!(1)).await, "403:/admin/x:Forbidden channel");
    assert_refused(&publish(addr, Some(ALICE), "/news/today", json!(2)).await, "403:/news/today:Forbidden channel");
    assert_refused(&publish(addr, Some(BOB), "/news/a/b", json!(3)).await, "403:/news/a/b:Forbidden channel");
    assert_refused(&publish(addr, Some(MONITOR), "/chat/room", json!(4)).await, "403:/chat/room:Forbidden channel");
    assert_refused(&publish(addr, None, "/chat/room", json!(5)).await, UNAUTHORIZED);
    assert_refused(&publish(addr, Some("nope"), "/chat/room", json!(6)).await, UNAUTHORIZED);
    assert_refused(&publish(addr, Some(ALICE), "/chat/*", json!(7)).await, "405:/chat/*:Invalid channel");
    // In one batch, each message is judged on its own.
    let replies = send(
        addr,
        &json!([
            with_token(json!({"channel": "/chat/batch", "data": "ok", "id": "a"}), Some(ALICE)),
            with_token(json!({"channel": "/admin/batch", "data": 8, "id": "b"}), Some(ALICE)),
        ]),
    )
    .await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["successful"], json!(true), "{replies:?}");
    assert_refused(&replies[1], "403:/admin/batch:Forbidden channel");
    // The node's own publishes are trusted.
    node.publish("/admin/notice", json!("from the server")).await.unwrap();

    let got = bayeux::connect_messages(addr, &monitor).await;
    let data: Vec<&Value> = got.iter().map(|m| &m["data"]).collect();
    assert_eq!(data, [&json!("alice"), &json!("bob"), &json!("ok"), &json!("from the server")], "{got:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn delivered_messages_do_not_carry_the_token() {
    let node = node().await;
    let addr = node.local_addr();
    // alice over long-polling, the monitor over a websocket.
    let alice = handshake(addr, ALICE).await;
    assert_eq!(subscribe(addr, &alice, Some(ALICE), json!("/chat/**")).await["successful"], json!(true));
    let mut ws = Ws::open(addr).await;
    let hs = ws.request(&handshake_msg(Some(MONITOR))).await;
    assert_eq!(hs[0]["successful"], json!(true), "{hs:?}");
    assert!(hs[0].get("ext").is_none(), "meta replies carry no ext: {hs:?}");
    let monitor = hs[0]["clientId"].as_str().unwrap().to_string();
    let sub = ws
        .request(&with_token(
            json!({"channel": "/meta/subscribe", "clientId": monitor, "subscription": "/**"}),
            Some(MONITOR),
        ))
        .await;
    assert_eq!(sub[0]["successful"], json!(true), "{sub:?}");
    ws.send_connect(&monitor).await;

    let first = json!({"channel": "/chat/room", "data": {"text": "hi"}, "id": "p1",
                       "ext": {"token": BOB, "trace": "t1"}});
    let reply = send_one(addr, first).await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
    assert!(reply.get("ext").is_none(), "{reply}");
    let second = json!({"channel": "/chat/room", "data": "only a token", "id": "p2", "ext": {"token": BOB}});
    assert_eq!(send_one(addr, second).await["successful"], json!(true));

    // Long-polling: read the raw reply, so a token anywhere in it would show.
    let raw = http::request(
        addr,
        "POST",
        "/faye",
        &[("content-type", "application/json")],
        bayeux::connect_msg(&alice).to_string(),
    )
    .await;
    assert!(!raw.text().contains("secret"), "token leaked to a subscriber: {}", raw.text());
    let got: Vec<Value> = bayeux::json_array(&raw).into_iter().filter(|m| !bayeux::is_meta(m)).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["ext"], json!({"trace": "t1"}), "other ext fields stay: {got:?}");
    assert_eq!(got[0]["data"], json!({"text": "hi"}));
    assert_eq!(got[0]["id"], json!("p1"));
    assert!(got[1].get("ext").is_none(), "an ext left empty is dropped: {got:?}");

    // Websocket.
    let (delivered, _) = ws.deliveries(2).await;
    let text = serde_json::to_string(&delivered).unwrap();
    assert!(!text.contains("secret"), "token leaked over the websocket: {text}");
    assert_eq!(delivered[0]["ext"], json!({"trace": "t1"}), "{delivered:?}");
    assert!(delivered[1].get("ext").is_none(), "{delivered:?}");
    ws.close().await;
    node.shutdown().await;
}

#[test]
fn pattern_rules() {
    let auth = AuthExtension::new().grant("t", &["/chat/**", "/news/*", "/alerts"], &["/chat/*"]);
    for ok in ["/chat/a", "/chat/a/b", "/chat/*", "/chat/**", "/chat/a/**", "/news/*", "/news/today", "/alerts"] {
        assert!(auth.may_subscribe("t", ok), "{ok}");
    }
    for no in ["/chat", "/chatroom/*", "/news/**", "/news/a/b", "/news/a/*", "/alerts/*", "/**", "/*", "/x"] {
        assert!(!auth.may_subscribe("t", no), "{no}");
    }
    assert!(auth.may_publish("t", "/chat/a"));
    assert!(!auth.may_publish("t", "/chat/a/b"));
    assert!(!auth.may_subscribe("other", "/chat/a") && !auth.may_publish("other", "/chat/a"));
}
