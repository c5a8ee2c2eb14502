//! Spec section 3, Errors: the exact error texts of the reference, which replies carry
//! advice, and errors set by an extension.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use actioncluster::{Extension, Message, RequestContext};
use common::TestNode;
use common::bayeux::{self, CONNECTION_TYPES, handshake, send, send_one};
use serde_json::{Value, json};

fn server_types() -> Value {
    json!(CONNECTION_TYPES)
}

#[tokio::test]
async fn publish_to_meta_channel_is_403() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/meta/foo", "data": 1})).await;
    assert_eq!(reply, json!({"channel": "/meta/foo", "successful": false, "error": "403:/meta/foo:Forbidden channel"}));
}

#[tokio::test]
async fn publish_to_invalid_channel_is_405() {
    let node = TestNode::start().await;
    for name in ["/foo bar", "foo", "/a/*", "/caf\u{e9}"] {
        let reply = send_one(node.addr, json!({"channel": name, "data": 1})).await;
        assert_eq!(
            reply,
            json!({"channel": name, "successful": false, "error": format!("405:{name}:Invalid channel")}),
            "{name}"
        );
    }
}

#[tokio::test]
async fn publish_without_data_is_402() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/foo", "id": "p"})).await;
    assert_eq!(
        reply,
        json!({"id": "p", "channel": "/foo", "successful": false, "error": "402:data:Missing required parameter"})
    );
}

#[tokio::test]
async fn publish_with_null_data_is_accepted() {
    // Faye tests `data === undefined`: an explicit null is data.
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/foo", "data": null})).await;
    assert_eq!(reply, json!({"channel": "/foo", "successful": true}));
}

#[tokio::test]
async fn publish_to_invalid_channel_without_data_is_402() {
    // Faye checks the channel first and `data` second; the later error wins.
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/foo bar"})).await;
    assert_eq!(reply["error"], json!("402:data:Missing required parameter"));
}

#[tokio::test]
async fn connect_with_unknown_client_is_401_with_handshake_advice_and_no_client_id() {
    let node = TestNode::start().await;
    let id = "abcdefghijklmnopqrstuvwxyz01234";
    let reply = send_one(
        node.addr,
        json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "id": "c1"}),
    )
    .await;
    assert_eq!(
        reply,
        json!({
            "id": "c1",
            "channel": "/meta/connect",
            "successful": false,
            "error": format!("401:{id}:Unknown client"),
            "advice": {"reconnect": "handshake"},
        })
    );
}

#[tokio::test]
async fn connect_without_client_id_is_402() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/meta/connect", "connectionType": "long-polling"})).await;
    assert_eq!(
        reply,
        json!({
            "channel": "/meta/connect",
            "successful": false,
            "error": "402:clientId:Missing required parameter",
            "advice": {"reconnect": "handshake"},
        })
    );
}

#[tokio::test]
async fn connect_with_unsupported_connection_type_is_301() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply =
        send_one(node.addr, json!({"channel": "/meta/connect", "clientId": id, "connectionType": "carrier-pigeon"}))
            .await;
    assert_eq!(
        reply,
        json!({
            "channel": "/meta/connect",
            "successful": false,
            "error": "301:carrier-pigeon:Connection types not supported",
            "advice": {"reconnect": "handshake"},
        })
    );
}

#[tokio::test]
async fn connect_without_connection_type_is_402() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = send_one(node.addr, json!({"channel": "/meta/connect", "clientId": id})).await;
    assert_eq!(
        reply,
        json!({
            "channel": "/meta/connect",
            "successful": false,
            "error": "402:connectionType:Missing required parameter",
            "advice": {"reconnect": "handshake"},
        })
    );
}

#[tokio::test]
async fn subscribe_with_unknown_client_is_401_without_advice() {
    // Faye keeps the clientId on a failed subscribe reply (only connect and disconnect drop it).
    let node = TestNode::start().await;
    let reply =
        send_one(node.addr, json!({"channel": "/meta/subscribe", "clientId": "nobody", "subscription": "/a"})).await;
    assert_eq!(
        reply,
        json!({
            "clientId": "nobody",
            "channel": "/meta/subscribe",
            "successful": false,
            "error": "401:nobody:Unknown client",
            "subscription": "/a",
        })
    );
}

#[tokio::test]
async fn unsubscribe_with_unknown_client_is_401_without_advice() {
    let node = TestNode::start().await;
    let reply = send_one(
        node.addr,
        json!({"channel": "/meta/unsubscribe", "clientId": "nobody", "subscription": ["/a", "/b"]}),
    )
    .await;
    assert_eq!(
        reply,
        json!({
            "clientId": "nobody",
            "channel": "/meta/unsubscribe",
            "successful": false,
            "error": "401:nobody:Unknown client",
            "subscription": ["/a", "/b"],
        })
    );
}

#[tokio::test]
async fn disconnect_with_unknown_client_is_401_without_advice_or_client_id() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/meta/disconnect", "clientId": "nobody"})).await;
    assert_eq!(
        reply,
        json!({"channel": "/meta/disconnect", "successful": false, "error": "401:nobody:Unknown client"})
    );
}

#[tokio::test]
async fn disconnect_without_client_id_is_402() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/meta/disconnect"})).await;
    assert_eq!(
        reply,
        json!({"channel": "/meta/disconnect", "successful": false, "error": "402:clientId:Missing required parameter"})
    );
}

#[tokio::test]
async fn subscribe_without_client_id_is_402() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/meta/subscribe", "subscription": "/a"})).await;
    assert_eq!(reply["error"], json!("402:clientId:Missing required parameter"), "{reply}");
}

#[tokio::test]
async fn subscribe_to_meta_channel_is_403() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = bayeux::subscribe_reply(node.addr, &id, json!("/meta/foo")).await;
    assert_eq!(
        reply,
        json!({
            "clientId": id,
            "channel": "/meta/subscribe",
            "successful": false,
            "error": "403:/meta/foo:Forbidden channel",
            "subscription": "/meta/foo",
        })
    );
}

#[tokio::test]
async fn subscribe_to_service_channel_is_403() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = bayeux::subscribe_reply(node.addr, &id, json!("/service/foo")).await;
    assert_eq!(reply["error"], json!("403:/service/foo:Forbidden channel"), "{reply}");
    assert_eq!(reply["successful"], json!(false));
}

#[tokio::test]
async fn unsubscribe_from_meta_channel_is_403() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply =
        send_one(node.addr, json!({"channel": "/meta/unsubscribe", "clientId": id, "subscription": "/meta/foo"})).await;
    assert_eq!(reply["error"], json!("403:/meta/foo:Forbidden channel"), "{reply}");
}

#[tokio::test]
async fn subscribe_to_invalid_pattern_is_405() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = bayeux::subscribe_reply(node.addr, &id, json!("/a/**/b")).await;
    assert_eq!(
        reply,
        json!({
            "clientId": id,
            "channel": "/meta/subscribe",
            "successful": false,
            "error": "405:/a/**/b:Invalid channel",
            "subscription": "/a/**/b",
        })
    );
}

#[tokio::test]
async fn subscribe_without_subscription_is_402_and_echoes_empty_array() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = send_one(node.addr, json!({"channel": "/meta/subscribe", "clientId": id})).await;
    assert_eq!(
        reply,
        json!({
            "clientId": id,
            "channel": "/meta/subscribe",
            "successful": false,
            "error": "402:subscription:Missing required parameter",
            "subscription": [],
        })
    );
}

#[tokio::test]
async fn unsubscribe_without_subscription_is_402() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = send_one(node.addr, json!({"channel": "/meta/unsubscribe", "clientId": id})).await;
    assert_eq!(reply["error"], json!("402:subscription:Missing required parameter"), "{reply}");
    assert_eq!(reply["subscription"], json!([]));
}

#[tokio::test]
async fn subscribe_reply_echoes_subscription_string_or_array() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let one = bayeux::subscribe_reply(node.addr, &id, json!("/one")).await;
    assert_eq!(one, json!({"clientId": id, "channel": "/meta/subscribe", "successful": true, "subscription": "/one"}));
    let many = bayeux::subscribe_reply(node.addr, &id, json!(["/two", "/three/*"])).await;
    assert_eq!(
        many,
        json!({"clientId": id, "channel": "/meta/subscribe", "successful": true, "subscription": ["/two", "/three/*"]})
    );
    let unsub =
        send_one(node.addr, json!({"channel": "/meta/unsubscribe", "clientId": id, "subscription": ["/two", "/one"]}))
            .await;
    assert_eq!(
        unsub,
        json!({"clientId": id, "channel": "/meta/unsubscribe", "successful": true, "subscription": ["/two", "/one"]})
    );
}

#[tokio::test]
async fn handshake_without_version_is_402() {
    let node = TestNode::start().await;
    let reply =
        send_one(node.addr, json!({"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]})).await;
    assert_eq!(reply["error"], json!("402:version:Missing required parameter"), "{reply}");
    assert_eq!(reply["successful"], json!(false));
    assert!(reply.get("clientId").is_none(), "{reply}");
}

#[tokio::test]
async fn handshake_without_supported_connection_types_is_402() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/meta/handshake", "version": "1.0"})).await;
    assert_eq!(reply["error"], json!("402:supportedConnectionTypes:Missing required parameter"), "{reply}");
    assert!(reply.get("clientId").is_none(), "{reply}");
}

#[tokio::test]
async fn handshake_with_no_common_connection_type_is_301() {
    let node = TestNode::start().await;
    let reply = send_one(
        node.addr,
        json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["foo", "bar"]}),
    )
    .await;
    assert_eq!(reply["error"], json!("301:foo,bar:Connection types not supported"), "{reply}");
}

#[tokio::test]
async fn handshake_with_empty_connection_types_is_301_with_empty_param() {
    let node = TestNode::start().await;
    let reply =
        send_one(node.addr, json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": []}))
            .await;
    assert_eq!(reply["error"], json!("301::Connection types not supported"), "{reply}");
}

#[tokio::test]
async fn failed_handshake_carries_version_types_and_handshake_advice() {
    let node = TestNode::start().await;
    let reply = send_one(
        node.addr,
        json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["foo", "bar"], "id": "h"}),
    )
    .await;
    assert_eq!(
        reply,
        json!({
            "id": "h",
            "channel": "/meta/handshake",
            "successful": false,
            "version": "1.0",
            "supportedConnectionTypes": server_types(),
            "error": "301:foo,bar:Connection types not supported",
            "advice": {"reconnect": "handshake"},
        })
    );
}

#[tokio::test]
async fn advice_only_on_handshake_and_connect_replies() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let replies = send(
        node.addr,
        &json!([
            {"channel": "/meta/subscribe", "clientId": id, "subscription": "/a"},
            {"channel": "/meta/subscribe", "clientId": id, "subscription": "/meta/x"},
            {"channel": "/meta/unsubscribe", "clientId": id, "subscription": "/a"},
            {"channel": "/meta/unsubscribe", "clientId": "nobody", "subscription": "/a"},
            {"channel": "/a", "data": 1},
            {"channel": "/meta/x", "data": 1},
            {"channel": "/meta/disconnect", "clientId": "nobody"},
            {"channel": "/meta/disconnect", "clientId": id},
        ]),
    )
    .await;
    assert_eq!(replies.len(), 8, "{replies:?}");
    for r in &replies {
        assert!(r.get("advice").is_none(), "no advice expected on {r}");
    }
}

#[tokio::test]
async fn error_texts_follow_code_params_message_grammar() {
    // Faye's Grammar.ERROR: `ddd:` params joined by `,` `:` message.
    let node = TestNode::start().await;
    let replies = send(
        node.addr,
        &json!([
            {"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["x", "y", "z"]},
            {"channel": "/meta/connect", "clientId": "gone", "connectionType": "long-polling"},
            {"channel": "/meta/subscribe", "clientId": "gone", "subscription": "/a"},
            {"channel": "/meta/x", "data": 1},
            {"channel": "/a/*", "data": 1},
        ]),
    )
    .await;
    let errors: Vec<&str> = replies.iter().map(|r| r["error"].as_str().unwrap_or("")).collect();
    assert_eq!(
        errors,
        [
            "301:x,y,z:Connection types not supported",
            "401:gone:Unknown client",
            "401:gone:Unknown client",
            "403:/meta/x:Forbidden channel",
            "405:/a/*:Invalid channel",
        ]
    );
}

/// Rejects any incoming message whose `ext.reject` is a string, with that string as the error
/// (the reference server installs the same extension).
struct RejectByExt;

impl Extension for RejectByExt {
    fn incoming(&self, message: &mut Message, _request: &RequestContext) {
        let Some(ext) = message.ext.as_ref() else { return };
        let ext: Value = serde_json::from_str(ext.get()).unwrap_or(Value::Null);
        if let Some(reason) = ext["reject"].as_str() {
            message.error = Some(reason.to_string());
        }
    }
}

#[tokio::test]
async fn extension_error_rejects_a_publish_and_the_reply_carries_it() {
    let node = TestNode::with_extension(RejectByExt, |_| {}).await;
    let sub = bayeux::subscriber(node.addr, &["/guarded", "/marker"]).await;
    let reply = send_one(
        node.addr,
        json!({"channel": "/guarded", "data": 1, "id": "r", "ext": {"reject": "403::Publishing forbidden"}}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"id": "r", "channel": "/guarded", "successful": false, "error": "403::Publishing forbidden"})
    );
    bayeux::publish(node.addr, "/marker", json!("end")).await;
    let delivered = bayeux::connect_messages(node.addr, &sub).await;
    assert_eq!(bayeux::channels(&delivered), ["/marker"], "the rejected publish is not delivered");
}

#[tokio::test]
async fn extension_error_rejects_a_subscribe() {
    let node = TestNode::with_extension(RejectByExt, |_| {}).await;
    let id = handshake(node.addr).await;
    let reply = send_one(
        node.addr,
        json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "/x", "ext": {"reject": "403::Nope"}}),
    )
    .await;
    assert_eq!(reply["successful"], json!(false), "{reply}");
    assert_eq!(reply["error"], json!("403::Nope"));
    // The subscription was not made: a publish to /x is not delivered.
    bayeux::subscribe(node.addr, &id, "/marker").await;
    bayeux::publish(node.addr, "/x", json!(1)).await;
    bayeux::publish(node.addr, "/marker", json!(2)).await;
    let delivered = bayeux::connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/marker"]);
}

#[tokio::test]
async fn extension_error_rejects_a_handshake_with_handshake_advice() {
    let node = TestNode::with_extension(RejectByExt, |_| {}).await;
    let mut msg = bayeux::handshake_msg(&["long-polling"]);
    msg["ext"] = json!({"reject": "401::Authentication required"});
    let reply = send_one(node.addr, msg).await;
    assert_eq!(reply["successful"], json!(false), "{reply}");
    assert_eq!(reply["error"], json!("401::Authentication required"));
    assert!(reply.get("clientId").is_none(), "{reply}");
    assert_eq!(reply["advice"], json!({"reconnect": "handshake"}));
}
