//! Server extensions: an incoming hook can reject a message with a Bayeux error, an outgoing
//! hook can rewrite delivered messages (the encode-once path then steps aside).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/wire.rs"]
mod wire;

use actioncluster::{Config, Extension, Message, Node, RequestContext};
use serde_json::json;
use serde_json::value::RawValue;
use std::time::Duration;
use wire::{LpClient, post, publish};

/// Refuses subscriptions to `/private/**` unless `ext.token` is "secret".
struct Auth;

impl Extension for Auth {
    fn incoming(&self, message: &mut Message, _request: &RequestContext) {
        let subscribing_private = message.channel.as_deref() == Some("/meta/subscribe")
            && message.subscription.as_ref().is_some_and(|s| s.channels().iter().any(|c| c.starts_with("/private")));
        let token_ok = message.ext.as_ref().is_some_and(|e| e.get().contains("\"secret\""));
        if subscribing_private && !token_ok {
            message.error = Some("403::Forbidden".to_string());
        }
    }
}

/// Adds `"stamped": true` to every delivered message's data object.
struct Stamp;

impl Extension for Stamp {
    fn outgoing(&self, message: &mut Message, recipient: Option<&str>) {
        if recipient.is_none() {
            return;
        }
        if let Some(data) = &message.data
            && let Ok(mut v) = serde_json::from_str::<serde_json::Value>(data.get())
        {
            v["stamped"] = json!(true);
            v["to"] = json!(recipient);
            message.data = RawValue::from_string(v.to_string()).ok();
        }
    }
    fn rewrites_outgoing(&self) -> bool {
        true
    }
}

fn config() -> Config {
    Config { host: "127.0.0.1".into(), port: 0, timeout: Duration::from_secs(5), ..Config::default() }
}

#[tokio::test]
async fn incoming_extension_rejects_with_its_error_and_the_subscription_is_not_made() {
    let node = Node::builder(config()).extension(Auth).start().await.unwrap();
    let addr = node.local_addr();
    let client = LpClient::handshake(addr).await;
    let (_, reply) =
        post(addr, &json!({"channel": "/meta/subscribe", "clientId": client.client_id, "subscription": "/private/x"}))
            .await;
    assert_eq!(reply[0]["successful"], json!(false));
    assert_eq!(reply[0]["error"], json!("403::Forbidden"));
    // Not subscribed: a publish there reaches nobody.
    publish(addr, "/private/x", json!(1)).await;
    assert!(client.connect(addr, 200).await.is_empty());

    let (_, reply) = post(
        addr,
        &json!({"channel": "/meta/subscribe", "clientId": client.client_id, "subscription": "/private/x",
                "ext": {"token": "secret"}}),
    )
    .await;
    assert_eq!(reply[0]["successful"], json!(true), "{reply}");
    assert!(reply[0].get("ext").is_none(), "meta replies never echo ext");
    publish(addr, "/private/x", json!(2)).await;
    let got = client.connect(addr, 2000).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"], json!(2));
}

#[tokio::test]
async fn outgoing_extension_rewrites_each_recipients_copy() {
    let node = Node::builder(config()).extension(Stamp).start().await.unwrap();
    let addr = node.local_addr();
    let a = LpClient::handshake(addr).await;
    let b = LpClient::handshake(addr).await;
    a.subscribe(addr, "/s").await;
    b.subscribe(addr, "/s").await;
    publish(addr, "/s", json!({"n": 1})).await;
    let got_a = a.connect(addr, 2000).await;
    let got_b = b.connect(addr, 2000).await;
    assert_eq!(got_a[0]["data"], json!({"n": 1, "stamped": true, "to": a.client_id}));
    assert_eq!(got_b[0]["data"], json!({"n": 1, "stamped": true, "to": b.client_id}));
}
