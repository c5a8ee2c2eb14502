//! The Rust client against our node in-process: publish/subscribe over both transports,
//! transport selection, wildcards, unsubscribing, callbacks and disconnecting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use actioncluster::{ClientError, ConnectionState, ConnectionType, ServerEvent, TransportPreference};
use client_support::{NoUpgradeProxy, WAIT, builder, client, event, next, node, subscribed};
use futures_util::StreamExt;
use serde_json::json;

async fn round_trip(preference: TransportPreference, expected: ConnectionType) {
    let node = node().await;
    let subscriber = client(&node, preference).await;
    let publisher = client(&node, preference).await;
    for c in [&subscriber, &publisher] {
        match c.state() {
            ConnectionState::Connected { connection_type, client_id } => {
                assert_eq!(connection_type, expected);
                assert_eq!(client_id.len(), 31);
            }
            other => panic!("not connected: {other:?}"),
        }
    }

    let mut sub = subscriber.subscribe("/chat/lobby").await.unwrap();
    assert_eq!(sub.pattern(), "/chat/lobby");
    publisher.publish("/chat/lobby", json!({ "text": "hello" })).await.unwrap();
    let message = next(&mut sub).await;
    assert_eq!(message.channel, "/chat/lobby");
    assert_eq!(message.json(), json!({ "text": "hello" }));

    // Many publishes arrive complete and in order, batched or not.
    let publishes = (0..50).map(|n| publisher.publish("/chat/lobby", json!({ "n": n })));
    for result in futures_util::future::join_all(publishes).await {
        result.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 50 {
        seen.push(next(&mut sub).await.decode::<serde_json::Value>().unwrap()["n"].as_i64().unwrap());
    }
    assert_eq!(seen, (0..50).collect::<Vec<_>>());

    // A message published on the node reaches the client too, and a client receives its own.
    node.publish("/chat/lobby", json!("from the node")).await.unwrap();
    assert_eq!(next(&mut sub).await.json(), json!("from the node"));
    subscriber.publish("/chat/lobby", json!([1, 2, 3])).await.unwrap();
    assert_eq!(next(&mut sub).await.json(), json!([1, 2, 3]));

    subscriber.disconnect().await.unwrap();
    publisher.disconnect().await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn publish_subscribe_websocket() {
    round_trip(TransportPreference::WebSocket, ConnectionType::WebSocket).await;
}

#[tokio::test]
async fn publish_subscribe_long_polling() {
    round_trip(TransportPreference::LongPolling, ConnectionType::LongPolling).await;
}

#[tokio::test]
async fn auto_prefers_websocket() {
    round_trip(TransportPreference::Auto, ConnectionType::WebSocket).await;
}

#[tokio::test]
async fn auto_falls_back_to_long_polling_when_the_upgrade_fails() {
    let node = node().await;
    let proxy = NoUpgradeProxy::start(node.local_addr()).await;
    let client = builder(&proxy.endpoint(), TransportPreference::Auto).build().await.unwrap();
    assert!(matches!(client.state(), ConnectionState::Connected { connection_type: ConnectionType::LongPolling, .. }));
    let mut sub = client.subscribe("/fallback").await.unwrap();
    client.publish("/fallback", json!({ "via": "proxy" })).await.unwrap();
    assert_eq!(next(&mut sub).await.json(), json!({ "via": "proxy" }));

    // Forcing websocket through the same proxy fails instead.
    let forced = builder(&proxy.endpoint(), TransportPreference::WebSocket).build().await;
    assert!(matches!(forced, Err(ClientError::Transport(_))), "{forced:?}");
    client.disconnect().await.unwrap();
    node.shutdown().await;
}

async fn wildcards(preference: TransportPreference) {
    let node = node().await;
    let client = client(&node, preference).await;
    let mut one_level = client.subscribe("/chat/*").await.unwrap();
    let mut all_levels = client.subscribe("/chat/**").await.unwrap();
    let mut exact = client.subscribe("/chat/a").await.unwrap();
    let mut everything = client.subscribe("/**").await.unwrap();

    client.publish("/chat/a/b", json!("deep")).await.unwrap();
    client.publish("/other", json!("other")).await.unwrap();
    client.publish("/chat/a", json!("shallow")).await.unwrap();

    // One message per publish reaches each matching subscription, in publish order; the
    // ones a pattern does not match never show up before the later ones it does match.
    assert_eq!(next(&mut one_level).await.json(), json!("shallow"));
    assert_eq!(next(&mut exact).await.json(), json!("shallow"));
    let deep = next(&mut all_levels).await;
    assert_eq!((deep.channel.as_str(), deep.json()), ("/chat/a/b", json!("deep")));
    assert_eq!(next(&mut all_levels).await.json(), json!("shallow"));
    let all: Vec<_> = vec![
        next(&mut everything).await.json(),
        next(&mut everything).await.json(),
        next(&mut everything).await.json(),
    ];
    assert_eq!(all, vec![json!("deep"), json!("other"), json!("shallow")]);

    client.disconnect().await.unwrap();
    // Streams end once the client is closed, with nothing extra queued.
    for sub in [&mut one_level, &mut all_levels, &mut exact, &mut everything] {
        assert!(tokio::time::timeout(WAIT, sub.next()).await.unwrap().is_none());
    }
    node.shutdown().await;
}

#[tokio::test]
async fn wildcard_subscriptions_websocket() {
    wildcards(TransportPreference::WebSocket).await;
}

#[tokio::test]
async fn wildcard_subscriptions_long_polling() {
    wildcards(TransportPreference::LongPolling).await;
}

async fn unsubscribe_on_drop(preference: TransportPreference) {
    let node = node().await;
    let mut events = node.events();
    let client = client(&node, preference).await;
    let id = client.client_id().unwrap();

    let first = client.subscribe("/room").await.unwrap();
    let mut second = client.subscribe("/room").await.unwrap();
    subscribed(&mut events, &id, "/room").await;

    // Two local subscriptions share the server's one: dropping the first keeps it.
    drop(first);
    client.publish("/room", json!(1)).await.unwrap();
    assert_eq!(next(&mut second).await.json(), json!(1));

    // Dropping the last one unsubscribes on the server.
    drop(second);
    let channel = event(&mut events, |e| match e {
        ServerEvent::Unsubscribe { client_id, channel } if *client_id == id => Some(channel.clone()),
        _ => None,
    })
    .await;
    assert_eq!(channel, "/room");

    // Subscribing again works, and the explicit form waits for the server.
    let mut again = client.subscribe("/room").await.unwrap();
    client.publish("/room", json!(2)).await.unwrap();
    assert_eq!(next(&mut again).await.json(), json!(2));
    again.unsubscribe().await.unwrap();
    let channel = event(&mut events, |e| match e {
        ServerEvent::Unsubscribe { client_id, channel } if *client_id == id => Some(channel.clone()),
        _ => None,
    })
    .await;
    assert_eq!(channel, "/room");

    client.disconnect().await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_on_drop_websocket() {
    unsubscribe_on_drop(TransportPreference::WebSocket).await;
}

#[tokio::test]
async fn unsubscribe_on_drop_long_polling() {
    unsubscribe_on_drop(TransportPreference::LongPolling).await;
}

#[tokio::test]
async fn callback_subscription() {
    let node = node().await;
    let mut events = node.events();
    let client = client(&node, TransportPreference::Auto).await;
    let id = client.client_id().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = client
        .subscribe_with("/news/*", move |message| {
            let _ = tx.send((message.channel.clone(), message.json()));
        })
        .await
        .unwrap();
    assert_eq!(handle.pattern(), "/news/*");
    client.publish("/news/today", json!({ "headline": "x" })).await.unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, ("/news/today".to_string(), json!({ "headline": "x" })));

    handle.unsubscribe();
    event(&mut events, |e| matches!(e, ServerEvent::Unsubscribe { client_id, .. } if *client_id == id).then_some(()))
        .await;
    // The callback's sender went away with the task.
    assert!(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().is_none());
    client.disconnect().await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn disconnect_closes_the_session() {
    let node = node().await;
    let mut events = node.events();
    let client = client(&node, TransportPreference::WebSocket).await;
    let clone = client.clone();
    let id = client.client_id().unwrap();
    let mut sub = client.subscribe("/x").await.unwrap();

    clone.disconnect().await.unwrap();
    let gone = event(&mut events, |e| match e {
        ServerEvent::Disconnect { client_id } => Some(client_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(gone, id);
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(tokio::time::timeout(WAIT, sub.next()).await.unwrap().is_none());
    assert!(matches!(client.publish("/x", json!(1)).await, Err(ClientError::Disconnected)));
    assert!(matches!(client.subscribe("/y").await, Err(ClientError::Disconnected)));
    client.disconnect().await.unwrap(); // idempotent
    node.shutdown().await;
}

#[tokio::test]
async fn dropping_every_handle_disconnects() {
    let node = node().await;
    let mut events = node.events();
    let client = client(&node, TransportPreference::LongPolling).await;
    let id = client.client_id().unwrap();
    drop(client);
    let gone = event(&mut events, |e| match e {
        ServerEvent::Disconnect { client_id } => Some(client_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(gone, id);
    node.shutdown().await;
}
