//! Client extensions round trip: an outgoing client extension adds an auth token to `ext`,
//! a server extension checks it and stamps delivered messages, and an incoming client
//! extension sees the stamp.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use actioncluster::{ClientError, ClientExtension, Extension, Message, Node, RequestContext, TransportPreference};
use client_support::{WAIT, builder, config, next};
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn ext_json(message: &Message) -> Value {
    message.ext.as_ref().map(|e| serde_json::from_str(e.get()).unwrap()).unwrap_or(Value::Null)
}

fn raw(value: Value) -> Box<RawValue> {
    to_raw_value(&value).unwrap()
}

/// Server side: handshakes, subscribes and publishes need `ext.token == "secret"`; delivered
/// messages get `ext.stamp`.
struct TokenCheck {
    seen: mpsc::UnboundedSender<(String, Value)>,
}

impl Extension for TokenCheck {
    fn incoming(&self, message: &mut Message, _request: &RequestContext) {
        let channel = message.channel_str().to_string();
        if matches!(channel.as_str(), "/meta/connect" | "/meta/disconnect" | "/meta/unsubscribe") {
            return;
        }
        let ext = ext_json(message);
        let _ = self.seen.send((channel.clone(), ext.clone()));
        if ext["token"] != "secret" {
            message.error = Some(format!("403:{channel}:Invalid token"));
        }
    }

    fn outgoing(&self, message: &mut Message, recipient: Option<&str>) {
        if recipient.is_some() {
            let mut ext = ext_json(message);
            if !ext.is_object() {
                ext = json!({});
            }
            ext["stamp"] = json!("from the server");
            message.ext = Some(raw(ext));
        }
    }

    fn rewrites_outgoing(&self) -> bool {
        true
    }
}

/// Client side: the token on everything but connects; delivered messages' `ext` recorded.
struct Token {
    channels: &'static [&'static str],
    delivered: Option<mpsc::UnboundedSender<Value>>,
}

impl ClientExtension for Token {
    fn outgoing(&self, message: &mut Message) {
        let channel = message.channel_str();
        if self.channels.contains(&channel) || !channel.starts_with("/meta/") {
            message.ext = Some(raw(json!({ "token": "secret" })));
        }
    }

    fn incoming(&self, message: &mut Message) {
        if message.data.is_some()
            && let Some(delivered) = &self.delivered
        {
            let _ = delivered.send(ext_json(message));
        }
    }
}

const ALL: &[&str] = &["/meta/handshake", "/meta/subscribe"];

async fn round_trip(preference: TransportPreference) {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let node = Node::builder(config(0)).extension(TokenCheck { seen: seen_tx }).start().await.unwrap();
    let (delivered_tx, mut delivered) = mpsc::unbounded_channel();
    let client = builder(&node.endpoint(), preference)
        .extension(Token { channels: ALL, delivered: Some(delivered_tx) })
        .build()
        .await
        .unwrap();
    let mut sub = client.subscribe("/secure").await.unwrap();
    client.publish("/secure", json!({ "text": "hi" })).await.unwrap();

    let message = next(&mut sub).await;
    assert_eq!(message.json(), json!({ "text": "hi" }));
    // The publisher's ext travels with the message; the server's stamp is added to it.
    let ext: Value = serde_json::from_str(message.ext.as_ref().unwrap().get()).unwrap();
    assert_eq!(ext, json!({ "token": "secret", "stamp": "from the server" }));
    let observed = tokio::time::timeout(WAIT, delivered.recv()).await.unwrap().unwrap();
    assert_eq!(observed, ext);

    let mut checked = Vec::new();
    while checked.len() < 3 {
        let (channel, ext) = tokio::time::timeout(WAIT, seen.recv()).await.unwrap().unwrap();
        assert_eq!(ext["token"], "secret", "{channel}");
        checked.push(channel);
    }
    assert_eq!(checked, ["/meta/handshake", "/meta/subscribe", "/secure"]);

    // Without the extension the server refuses the handshake; the error says why.
    let refused = builder(&node.endpoint(), preference).build().await.unwrap_err();
    assert!(matches!(refused, ClientError::HandshakeRejected(_)), "{refused:?}");
    assert_eq!(refused.bayeux_error().unwrap().to_string(), "403:/meta/handshake:Invalid token");

    // With the token on the handshake only, subscribing is refused.
    let partial = builder(&node.endpoint(), preference)
        .extension(Token { channels: &["/meta/handshake"], delivered: None })
        .build()
        .await
        .unwrap();
    let error = partial.subscribe("/secure").await.unwrap_err();
    assert_eq!(error.bayeux_error().unwrap().to_string(), "403:/meta/subscribe:Invalid token");

    partial.disconnect().await.unwrap();
    client.disconnect().await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn extension_round_trip_websocket() {
    round_trip(TransportPreference::WebSocket).await;
}

#[tokio::test]
async fn extension_round_trip_long_polling() {
    round_trip(TransportPreference::LongPolling).await;
}
