//! Bayeux over HTTP long-polling: POST JSON to the mount, parse the JSON array reply.

use super::WAIT;
use super::http::{self, Reply};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// The server's connection types, in Faye's order.
pub const CONNECTION_TYPES: [&str; 6] =
    ["long-polling", "cross-origin-long-polling", "callback-polling", "websocket", "eventsource", "in-process"];

/// POSTs `body` verbatim as `application/json` to `/faye`.
pub async fn post_raw(addr: SocketAddr, body: &str) -> Reply {
    http::request(addr, "POST", "/faye", &[("content-type", "application/json")], body.to_string()).await
}

/// POSTs `body` as `application/json` to `/faye`, expects 200 with a JSON array, returns it.
pub async fn send(addr: SocketAddr, body: &Value) -> Vec<Value> {
    send_within(addr, body, WAIT).await
}

/// As [`send`] with an explicit bound on the whole exchange.
pub async fn send_within(addr: SocketAddr, body: &Value, bound: Duration) -> Vec<Value> {
    let reply =
        http::request_within(addr, "POST", "/faye", &[("content-type", "application/json")], body.to_string(), bound)
            .await;
    json_array(&reply)
}

/// Checks that `reply` is a 200 JSON reply and returns its array.
pub fn json_array(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "status of a Bayeux reply; body {:?}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json; charset=utf-8"));
    match reply.json() {
        Value::Array(items) => items,
        other => panic!("reply is not a JSON array: {other}"),
    }
}

/// Sends one message and returns the single reply to it.
pub async fn send_one(addr: SocketAddr, message: Value) -> Value {
    let replies = send(addr, &message).await;
    assert_eq!(replies.len(), 1, "one reply expected to {message}: {replies:?}");
    replies.into_iter().next().expect("one reply")
}

/// A handshake message offering `types`.
pub fn handshake_msg(types: &[&str]) -> Value {
    json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": types})
}

/// Handshakes over HTTP; returns the reply (asserted successful).
pub async fn handshake_reply(addr: SocketAddr) -> Value {
    let reply = send_one(addr, handshake_msg(&["long-polling", "callback-polling"])).await;
    assert_eq!(reply["successful"], json!(true), "handshake failed: {reply}");
    reply
}

/// Handshakes over HTTP; returns the new client id.
pub async fn handshake(addr: SocketAddr) -> String {
    handshake_reply(addr).await["clientId"].as_str().expect("clientId in handshake reply").to_string()
}

/// Subscribes `client_id` to `subscription` (a string or an array); returns the reply.
pub async fn subscribe_reply(addr: SocketAddr, client_id: &str, subscription: Value) -> Value {
    send_one(addr, json!({"channel": "/meta/subscribe", "clientId": client_id, "subscription": subscription})).await
}

/// Subscribes `client_id` to `channel`, asserting success.
pub async fn subscribe(addr: SocketAddr, client_id: &str, channel: &str) {
    let reply = subscribe_reply(addr, client_id, json!(channel)).await;
    assert_eq!(reply["successful"], json!(true), "subscribe {channel}: {reply}");
}

/// Unsubscribes `client_id` from `channel`; returns the reply.
pub async fn unsubscribe(addr: SocketAddr, client_id: &str, channel: &str) -> Value {
    send_one(addr, json!({"channel": "/meta/unsubscribe", "clientId": client_id, "subscription": channel})).await
}

/// A new client subscribed to each of `channels`.
pub async fn subscriber(addr: SocketAddr, channels: &[&str]) -> String {
    let id = handshake(addr).await;
    for c in channels {
        subscribe(addr, &id, c).await;
    }
    id
}

/// Publishes `data` on `channel` without a clientId; returns the reply (asserted successful).
pub async fn publish(addr: SocketAddr, channel: &str, data: Value) -> Value {
    let reply = send_one(addr, json!({"channel": channel, "data": data})).await;
    assert_eq!(reply["successful"], json!(true), "publish to {channel}: {reply}");
    reply
}

/// A long-polling connect message.
pub fn connect_msg(client_id: &str) -> Value {
    json!({"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"})
}

/// One long-polling connect; returns the whole reply array (connect reply + messages).
pub async fn connect(addr: SocketAddr, client_id: &str) -> Vec<Value> {
    send(addr, &connect_msg(client_id)).await
}

/// One long-polling connect that must succeed; returns the delivered (non-meta) messages.
pub async fn connect_messages(addr: SocketAddr, client_id: &str) -> Vec<Value> {
    let replies = connect(addr, client_id).await;
    let first = replies.first().unwrap_or_else(|| panic!("empty reply to connect"));
    assert_eq!(first["channel"], json!("/meta/connect"), "connect reply comes first: {replies:?}");
    assert_eq!(first["successful"], json!(true), "connect failed: {replies:?}");
    for r in &replies[1..] {
        assert!(!is_meta(r), "only the first element is a meta reply: {replies:?}");
    }
    replies[1..].to_vec()
}

/// Disconnects `client_id`; returns the reply.
pub async fn disconnect(addr: SocketAddr, client_id: &str) -> Value {
    send_one(addr, json!({"channel": "/meta/disconnect", "clientId": client_id})).await
}

/// True for replies on `/meta/...` channels.
pub fn is_meta(message: &Value) -> bool {
    message["channel"].as_str().is_some_and(|c| c.starts_with("/meta/"))
}

/// The channels of `messages`, in order.
pub fn channels(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["channel"].as_str().unwrap_or("<none>").to_string()).collect()
}

/// The object's keys, sorted.
pub fn keys(message: &Value) -> Vec<String> {
    let mut k: Vec<String> = message.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}
