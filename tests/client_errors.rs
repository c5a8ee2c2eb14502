//! Failures surface as typed errors: the server's Bayeux error (code, params, text) for a
//! rejected publish or subscribe, and transport or URL errors on connect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use actioncluster::{Client, ClientError, Extension, Message, Node, RequestContext, TransportPreference};
use client_support::{builder, client, config, next, node};
use serde_json::json;

/// Rejects publishes to `/private/**` the way an authorising extension would.
struct PrivateChannels;

impl Extension for PrivateChannels {
    fn incoming(&self, message: &mut Message, _request: &RequestContext) {
        if message.channel_str().starts_with("/private/") {
            message.error = Some(format!("403:{}:Forbidden channel", message.channel_str()));
        }
    }
}

async fn rejected_publish(preference: TransportPreference) {
    let node = Node::builder(config(0)).extension(PrivateChannels).start().await.unwrap();
    let client = client(&node, preference).await;

    let error = client.publish("/meta/foo", json!(1)).await.unwrap_err();
    let bayeux = error.bayeux_error().expect("a Bayeux error");
    assert_eq!(
        (bayeux.code, bayeux.params.clone(), bayeux.message.as_str()),
        (403, vec!["/meta/foo".to_string()], "Forbidden channel")
    );
    assert!(matches!(error, ClientError::Rejected(_)));
    assert_eq!(error.to_string(), "the server rejected the request: 403:/meta/foo:Forbidden channel");

    let error = client.publish("/a/*", json!(1)).await.unwrap_err();
    assert_eq!(error.bayeux_error().unwrap().code, 405);
    let error = client.publish("/private/x", json!(1)).await.unwrap_err();
    assert_eq!(error.bayeux_error().unwrap().to_string(), "403:/private/x:Forbidden channel");

    let error = client.subscribe("/meta/foo").await.unwrap_err();
    assert_eq!(error.bayeux_error().unwrap().code, 403);
    let error = client.subscribe("/a/**/b").await.unwrap_err();
    assert_eq!(error.bayeux_error().unwrap().to_string(), "405:/a/**/b:Invalid channel");

    // The session is unharmed by rejections.
    let mut sub = client.subscribe("/public").await.unwrap();
    client.publish("/public", json!("still fine")).await.unwrap();
    assert_eq!(next(&mut sub).await.json(), json!("still fine"));
    client.disconnect().await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn rejected_publish_surfaces_the_bayeux_error_websocket() {
    rejected_publish(TransportPreference::WebSocket).await;
}

#[tokio::test]
async fn rejected_publish_surfaces_the_bayeux_error_long_polling() {
    rejected_publish(TransportPreference::LongPolling).await;
}

#[tokio::test]
async fn unreachable_server_fails_to_connect() {
    // A port that was free a moment ago and has no listener now.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/faye");
    for preference in [TransportPreference::Auto, TransportPreference::WebSocket, TransportPreference::LongPolling] {
        let result = builder(&url, preference).build().await;
        assert!(matches!(result, Err(ClientError::Transport(_))), "{preference:?}: {result:?}");
    }
}

#[tokio::test]
async fn bad_urls_are_rejected() {
    for url in ["https://127.0.0.1/faye", "nonsense", "ftp://x/faye"] {
        let result = Client::connect(url).await;
        assert!(matches!(result, Err(ClientError::InvalidUrl { .. })), "{url}: {result:?}");
    }
}

#[tokio::test]
async fn ws_urls_work_too() {
    let node = node().await;
    let url = format!("ws://{}/faye", node.local_addr());
    let client = Client::connect(url).await.unwrap();
    client.publish("/x", json!(null)).await.unwrap();
    client.disconnect().await.unwrap();
    node.shutdown().await;
}
