//! The cross-node cases of the native layout, run on one redis (`native_layout.rs`) and on a
//! Redis Cluster (`native_cluster.rs`): each takes the node configuration to start its nodes
//! from.
#![allow(dead_code)]

use crate::wire::{self, LpClient, WAIT, WsClient, publish};
use actioncluster::{Config, Node};
use serde_json::{Value, json};

/// A node started from `config`.
pub async fn node(config: &Config) -> Node {
    Node::start(config.clone()).await.expect("native node starts")
}

pub fn data_of(messages: &[Value]) -> Vec<Value> {
    messages.iter().map(|m| m["data"].clone()).collect()
}

pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Reads websocket deliveries of `/flow` into `received` until the socket closes or `done`.
pub async fn messages_cross_nodes_over_long_polling_and_websocket(config: &Config) {
    let (n1, n2) = (node(config).await, node(config).await);
    let lp = LpClient::handshake(n1.local_addr()).await;
    lp.subscribe(n1.local_addr(), "/chat/**").await;
    let addr = n1.local_addr();
    let held = tokio::spawn(async move { lp.connect(addr, 5000).await });
    let mut ws = WsClient::subscribed(n1.local_addr(), "/chat/*").await;
    for i in 0..20 {
        let ack = publish(n2.local_addr(), "/chat/room", json!({"i": i})).await;
        assert_eq!(ack["successful"], json!(true), "{ack}");
    }
    let got = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(got[0]["data"], json!({"i": 0}));
    assert_eq!(got[0]["channel"], json!("/chat/room"));
    for i in 0..20 {
        assert_eq!(ws.next_message().await["data"], json!({"i": i}), "in order");
    }
}

pub async fn wildcards_match_across_nodes_and_each_client_gets_a_message_once(config: &Config) {
    let (n1, n2) = (node(config).await, node(config).await);
    let one = LpClient::handshake(n1.local_addr()).await;
    one.subscribe(n1.local_addr(), "/a/*").await;
    let many = LpClient::handshake(n2.local_addr()).await;
    // Three of its patterns match /a/b: it must still get each message once.
    for pattern in ["/a/**", "/a/b", "/**"] {
        many.subscribe(n2.local_addr(), pattern).await;
    }
    // Make both clients owned by their nodes (a connect moves a session to the node).
    assert!(one.connect(n1.local_addr(), 0).await.is_empty());
    assert!(many.connect(n2.local_addr(), 0).await.is_empty());
    publish(n1.local_addr(), "/a/b/c", json!("deep")).await;
    publish(n2.local_addr(), "/a/b", json!("shallow")).await;
    publish(n1.local_addr(), "/z", json!("elsewhere")).await;
    assert_eq!(data_of(&one.connect(n1.local_addr(), 300).await), vec![json!("shallow")]);
    assert_eq!(
        data_of(&many.connect(n2.local_addr(), 300).await),
        vec![json!("deep"), json!("shallow"), json!("elsewhere")]
    );
}

pub async fn unsubscribing_through_another_node_stops_delivery(config: &Config) {
    let (n1, n2) = (node(config).await, node(config).await);
    let client = LpClient::handshake(n1.local_addr()).await;
    client.subscribe(n2.local_addr(), "/u/a").await;
    client.subscribe(n2.local_addr(), "/u/b").await;
    assert!(client.connect(n1.local_addr(), 0).await.is_empty());
    let (_, reply) = wire::post(
        n2.local_addr(),
        &json!({"channel": "/meta/unsubscribe", "clientId": client.client_id, "subscription": "/u/a"}),
    )
    .await;
    assert_eq!(reply[0]["successful"], json!(true), "{reply}");
    publish(n2.local_addr(), "/u/a", json!("gone")).await;
    publish(n2.local_addr(), "/u/b", json!("kept")).await;
    assert_eq!(data_of(&client.connect(n1.local_addr(), 300).await), vec![json!("kept")]);
}

pub async fn long_polling_client_hopping_between_nodes_gets_every_message_once_in_order(config: &Config) {
    let nodes = [node(config).await, node(config).await, node(config).await];
    let addrs: Vec<_> = nodes.iter().map(|n| n.local_addr()).collect();
    let request = wire::hop_between_nodes(&addrs, 2, 200).await;
    let moved: u64 =
        nodes.iter().map(|n| metric(&n.server().render_metrics(true), "actioncluster_sessions_moved_total")).sum();
    assert!(moved >= 2, "the session really moved between nodes ({moved} moves in {request} connects)");
}
