//! The client on a node without a socket (`Node::client()`), with the same API as a remote client, talking to remote
//! clients of the same node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use actioncluster::{ConnectionState, ConnectionType};
use actioncluster::{ServerEvent, TransportPreference};
use client_support::{client, event, next, node};
use serde_json::json;

#[tokio::test]
async fn in_process_client_talks_to_remote_clients() {
    let node = node().await;
    let mut events = node.events();
    let local = node.client().build().await.unwrap();
    assert!(matches!(local.state(), ConnectionState::Connected { connection_type: ConnectionType::InProcess, .. }));
    let local_id = local.client_id().unwrap();
    let remote = client(&node, TransportPreference::WebSocket).await;

    // Remote to local.
    let mut inbox = local.subscribe("/to-local/**").await.unwrap();
    remote.publish("/to-local/a", json!({ "from": "remote" })).await.unwrap();
    let message = next(&mut inbox).await;
    assert_eq!((message.channel.as_str(), message.json()), ("/to-local/a", json!({ "from": "remote" })));

    // Local to remote, in order.
    let mut outbox = remote.subscribe("/to-remote").await.unwrap();
    for n in 0..20 {
        local.publish("/to-remote", json!(n)).await.unwrap();
    }
    for n in 0..20 {
        assert_eq!(next(&mut outbox).await.json(), json!(n));
    }

    // Errors surface the same way.
    let error = local.publish("/a/*", json!(1)).await.unwrap_err();
    assert_eq!(error.bayeux_error().unwrap().code, 405);

    // Unsubscribe on drop and disconnect go through the server like any client's.
    drop(inbox);
    event(&mut events, |e| {
        matches!(e, ServerEvent::Unsubscribe { client_id, channel } if *client_id == local_id && channel == "/to-local/**")
            .then_some(())
    })
    .await;
    local.disconnect().await.unwrap();
    event(&mut events, |e| matches!(e, ServerEvent::Disconnect { client_id } if *client_id == local_id).then_some(()))
        .await;
    remote.disconnect().await.unwrap();
    node.shutdown().await;
}
