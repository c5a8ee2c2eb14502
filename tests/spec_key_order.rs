//! Replies keep Faye's key order, byte for byte as a client reading raw JSON sees it: the
//! handshake reply reads `id, channel, successful, version, supportedConnectionTypes,
//! clientId, advice`, an error sits where Faye's server puts it. Runs against node.js Faye
//! too (`ACTIONCLUSTER_SPEC_REFERENCE=1`), which is where these orders come from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bayeux::{self, CONNECTION_TYPES};
use common::{RefuseAll, TestNode, skip_on_reference};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Value, json};
use std::net::SocketAddr;

/// The keys of one JSON object, in the order they were written.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// Sends `message` and returns the key order of each reply object, as written on the wire.
async fn key_orders(addr: SocketAddr, message: Value) -> Vec<Vec<String>> {
    key_orders_raw(addr, &message.to_string()).await
}

/// As [`key_orders`] for a body given as text (`json!` sorts keys; this keeps them).
async fn key_orders_raw(addr: SocketAddr, body: &str) -> Vec<Vec<String>> {
    let reply = bayeux::post_raw(addr, body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let objects: Vec<Keys> = serde_json::from_str(&reply.text()).expect("a JSON array of objects");
    objects.into_iter().map(|k| k.0).collect()
}

async fn one(addr: SocketAddr, message: Value) -> Vec<String> {
    let mut orders = key_orders(addr, message).await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    orders.remove(0)
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn meta_and_publish_replies_keep_fayes_key_order() {
    let node = TestNode::start().await;
    let addr = node.addr;

    let hs = json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": CONNECTION_TYPES, "id": "1"});
    assert_eq!(
        one(addr, hs).await,
        keys(&["id", "channel", "successful", "version", "supportedConnectionTypes", "clientId", "advice"])
    );
    let client_id = bayeux::handshake(addr).await;
    let id = client_id.as_str();

    let cases = [
        (
            json!({"channel": "/meta/handshake", "version": "1.0", "id": "2"}),
            vec!["id", "channel", "successful", "version", "supportedConnectionTypes", "error", "advice"],
        ),
        (
            json!({"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"], "id": "2b"}),
            vec!["id", "channel", "successful", "version", "error", "supportedConnectionTypes", "advice"],
        ),
        (
            json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["carrier-pigeon"], "id": "2c"}),
            vec!["id", "channel", "successful", "version", "supportedConnectionTypes", "error", "advice"],
        ),
        (
            json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "id": "3",
                   "advice": {"timeout": 0}}),
            vec!["id", "clientId", "channel", "successful", "advice"],
        ),
        (
            json!({"channel": "/meta/connect", "clientId": "nobody", "connectionType": "long-polling", "id": "4"}),
            vec!["id", "channel", "successful", "error", "advice"],
        ),
        (
            json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "/k", "id": "5"}),
            vec!["id", "clientId", "channel", "successful", "subscription"],
        ),
        (
            json!({"channel": "/meta/subscribe", "clientId": "nobody", "subscription": "/k", "id": "6"}),
            vec!["id", "clientId", "channel", "successful", "error", "subscription"],
        ),
        (
            json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "/meta/x", "id": "7"}),
            vec!["id", "clientId", "channel", "successful", "subscription", "error"],
        ),
        (
            json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "bad", "id": "8"}),
            vec!["id", "clientId", "channel", "successful", "subscription", "error"],
        ),
        (
            json!({"channel": "/meta/unsubscribe", "clientId": id, "subscription": "/k", "id": "9"}),
            vec!["id", "clientId", "channel", "successful", "subscription"],
        ),
        (
            json!({"channel": "/k", "clientId": id, "data": 1, "id": "10"}),
            vec!["id", "clientId", "channel", "successful"],
        ),
        (json!({"channel": "/k/*", "data": 1, "id": "11"}), vec!["id", "channel", "successful", "error"]),
        (json!({"channel": "/meta/nothing", "id": "12"}), vec!["id", "channel", "successful", "error"]),
        (
            json!({"channel": "/meta/disconnect", "clientId": "nobody", "id": "13"}),
            vec!["id", "channel", "successful", "error"],
        ),
        (
            json!({"channel": "/meta/disconnect", "clientId": id, "id": "14"}),
            vec!["id", "clientId", "channel", "successful"],
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(one(addr, message.clone()).await, keys(&expected), "reply to {message}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_delivery_reads_like_the_faye_clients_publish_without_client_id() {
    let node = TestNode::start().await;
    let addr = node.addr;
    let subscriber = bayeux::subscriber(addr, &["/order"]).await;
    let publisher = bayeux::handshake(addr).await;
    // As Faye's client writes a publish: channel, data, clientId, id, ext (Faye's server
    // delivers the publisher's object minus clientId, in the publisher's order).
    let publish =
        format!(r#"{{"channel":"/order","data":{{"n":1}},"clientId":"{publisher}","id":"p1","ext":{{"k":1}}}}"#);
    let replies = key_orders_raw(addr, &publish).await;
    assert_eq!(replies, vec![keys(&["id", "clientId", "channel", "successful"])]);
    let orders = key_orders(addr, bayeux::connect_msg(&subscriber)).await;
    assert_eq!(orders.len(), 2, "{orders:?}");
    assert_eq!(orders[1], keys(&["channel", "data", "id", "ext"]));
    node.shutdown().await;
}

#[tokio::test]
async fn an_error_set_by_an_extension_comes_before_successful() {
    if skip_on_reference("the reference server runs no extension") {
        return;
    }
    let node = TestNode::with_extension(RefuseAll, |_| {}).await;
    let hs = json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": CONNECTION_TYPES, "id": "1"});
    assert_eq!(
        one(node.addr, hs).await,
        keys(&["id", "channel", "error", "successful", "version", "supportedConnectionTypes", "advice"])
    );
    node.shutdown().await;
}
