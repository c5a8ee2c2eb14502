//! Spec section 1, Messages: body shapes, reply fields, batch order and effect, version,
//! client ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestNode;
use common::bayeux::{self, handshake, post_raw, send, send_one, subscribe};
use serde_json::{Value, json};
use std::collections::HashSet;

fn assert_bad_request(reply: &common::http::Reply) {
    assert_eq!(reply.status, 400, "body {:?}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(reply.text(), "Bad request");
}

#[tokio::test]
async fn null_body_replies_empty_array() {
    let node = TestNode::start().await;
    let reply = post_raw(node.addr, "null").await;
    assert_eq!(bayeux::json_array(&reply), Vec::<Value>::new());
}

#[tokio::test]
async fn empty_array_body_replies_empty_array() {
    let node = TestNode::start().await;
    let reply = post_raw(node.addr, "[]").await;
    assert_eq!(bayeux::json_array(&reply), Vec::<Value>::new());
    assert_eq!(reply.text(), "[]");
}

#[tokio::test]
async fn object_body_is_one_message_with_one_reply() {
    let node = TestNode::start().await;
    let replies = send(node.addr, &json!({"channel": "/a", "data": 1})).await;
    assert_eq!(replies, vec![json!({"channel": "/a", "successful": true})]);
}

#[tokio::test]
async fn array_body_gets_one_reply_per_message() {
    let node = TestNode::start().await;
    let replies = send(
        node.addr,
        &json!([{"channel": "/a", "data": 1}, {"channel": "/b", "data": 2}, {"channel": "/c", "data": 3}]),
    )
    .await;
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(replies.iter().all(|r| r["successful"] == json!(true)), "{replies:?}");
}

#[tokio::test]
async fn json_string_body_is_bad_request() {
    let node = TestNode::start().await;
    assert_bad_request(&post_raw(node.addr, r#""/meta/handshake""#).await);
}

#[tokio::test]
async fn json_number_body_is_bad_request() {
    let node = TestNode::start().await;
    assert_bad_request(&post_raw(node.addr, "42").await);
}

#[tokio::test]
async fn json_boolean_body_is_bad_request() {
    let node = TestNode::start().await;
    assert_bad_request(&post_raw(node.addr, "true").await);
}

#[tokio::test]
async fn malformed_json_body_is_bad_request() {
    let node = TestNode::start().await;
    assert_bad_request(&post_raw(node.addr, r#"[{"channel": "/a", "data": 1}"#).await);
}

#[tokio::test]
async fn empty_body_is_bad_request() {
    let node = TestNode::start().await;
    assert_bad_request(&post_raw(node.addr, "").await);
}

#[tokio::test]
async fn reply_echoes_id_client_id_and_channel() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = send_one(
        node.addr,
        json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "/x", "id": "42", "ext": {"t": 1}}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"id": "42", "clientId": id, "channel": "/meta/subscribe", "successful": true, "subscription": "/x"})
    );
    let reply =
        send_one(node.addr, json!({"channel": "/x", "clientId": id, "id": "43", "data": {"k": "v"}, "ext": {"t": 1}}))
            .await;
    assert_eq!(reply, json!({"id": "43", "clientId": id, "channel": "/x", "successful": true}));
}

#[tokio::test]
async fn reply_has_no_id_when_request_has_none() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/x", "data": 1})).await;
    assert_eq!(bayeux::keys(&reply), ["channel", "successful"]);
}

// Faye copies `id` only when it is truthy, and as the JSON value it was (a number stays a
// number).
#[tokio::test]
async fn numeric_id_is_echoed_as_number() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/x", "data": 1, "id": 7})).await;
    assert_eq!(reply["id"], json!(7));
}

#[tokio::test]
async fn successful_is_false_exactly_when_error_is_present() {
    let node = TestNode::start().await;
    let replies = send(
        node.addr,
        &json!([
            {"channel": "/ok", "data": 1},
            {"channel": "/meta/nope", "data": 1},
            {"channel": "/no data"},
            {"channel": "/meta/subscribe", "clientId": "unknown", "subscription": "/a"},
        ]),
    )
    .await;
    assert_eq!(replies.len(), 4, "{replies:?}");
    for r in &replies {
        let has_error = r.get("error").is_some();
        assert_eq!(r["successful"], json!(!has_error), "{r}");
        if has_error {
            assert!(r["error"].is_string(), "{r}");
        }
    }
    assert_eq!(replies.iter().filter(|r| r["successful"] == json!(true)).count(), 1);
}

#[tokio::test]
async fn message_without_channel_is_invalid_channel_with_empty_param() {
    // Faye: no channel is not a meta channel and does not match the grammar: 405 with an
    // empty parameter; with no `data` either, the later 402 check wins.
    let node = TestNode::start().await;
    let replies = send(node.addr, &json!([{"data": 1, "id": "1"}, {"id": "2"}])).await;
    assert_eq!(
        replies,
        vec![
            json!({"id": "1", "successful": false, "error": "405::Invalid channel"}),
            json!({"id": "2", "successful": false, "error": "402:data:Missing required parameter"}),
        ]
    );
}

#[tokio::test]
async fn replies_of_a_batch_come_in_request_order() {
    let node = TestNode::start().await;
    let client = handshake(node.addr).await;
    let replies = send(
        node.addr,
        &json!([
            {"id": "1", "channel": "/a", "data": 1},
            {"id": "2", "channel": "/meta/subscribe", "clientId": client, "subscription": "/b"},
            {"id": "3", "channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]},
            {"id": "4", "channel": "/meta/subscribe", "clientId": "nobody", "subscription": "/c"},
            {"id": "5", "channel": "/meta/unsubscribe", "clientId": client, "subscription": "/b"},
            {"id": "6", "channel": "/c", "data": 2},
        ]),
    )
    .await;
    let ids: Vec<&str> = replies.iter().map(|r| r["id"].as_str().unwrap_or("?")).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6"], "{replies:?}");
    let channels = bayeux::channels(&replies);
    assert_eq!(channels, ["/a", "/meta/subscribe", "/meta/handshake", "/meta/subscribe", "/meta/unsubscribe", "/c"]);
}

#[tokio::test]
async fn batch_subscribe_then_publish_takes_effect_in_order() {
    let node = TestNode::start().await;
    let client = handshake(node.addr).await;
    let replies = send(
        node.addr,
        &json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/order"},
            {"channel": "/order", "data": "after-subscribe"},
        ]),
    )
    .await;
    assert!(replies.iter().all(|r| r["successful"] == json!(true)), "{replies:?}");
    let delivered = bayeux::connect_messages(node.addr, &client).await;
    assert_eq!(bayeux::channels(&delivered), ["/order"]);
    assert_eq!(delivered[0]["data"], json!("after-subscribe"));
}

#[tokio::test]
async fn batch_publish_then_subscribe_does_not_deliver_the_earlier_message() {
    let node = TestNode::start().await;
    let client = handshake(node.addr).await;
    subscribe(node.addr, &client, "/marker").await;
    send(
        node.addr,
        &json!([
            {"channel": "/order", "data": "before-subscribe"},
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/order"},
            {"channel": "/marker", "data": "end"},
        ]),
    )
    .await;
    let delivered = bayeux::connect_messages(node.addr, &client).await;
    assert_eq!(bayeux::channels(&delivered), ["/marker"], "{delivered:?}");
}

#[tokio::test]
async fn batch_unsubscribe_then_publish_does_not_deliver() {
    let node = TestNode::start().await;
    let client = handshake(node.addr).await;
    subscribe(node.addr, &client, "/order").await;
    subscribe(node.addr, &client, "/marker").await;
    send(
        node.addr,
        &json!([
            {"channel": "/order", "data": "while-subscribed"},
            {"channel": "/meta/unsubscribe", "clientId": client, "subscription": "/order"},
            {"channel": "/order", "data": "after-unsubscribe"},
            {"channel": "/marker", "data": "end"},
        ]),
    )
    .await;
    let delivered = bayeux::connect_messages(node.addr, &client).await;
    let data: Vec<&Value> = delivered.iter().map(|m| &m["data"]).collect();
    assert_eq!(data, [&json!("while-subscribed"), &json!("end")], "{delivered:?}");
}

#[tokio::test]
async fn batch_disconnect_then_subscribe_sees_the_client_gone() {
    let node = TestNode::start().await;
    let client = handshake(node.addr).await;
    let replies = send(
        node.addr,
        &json!([
            {"channel": "/meta/disconnect", "clientId": client},
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/a"},
        ]),
    )
    .await;
    assert_eq!(replies[0]["successful"], json!(true), "{replies:?}");
    assert_eq!(replies[1]["error"], json!(format!("401:{client}:Unknown client")), "{replies:?}");
}

#[tokio::test]
async fn bad_message_in_a_batch_does_not_stop_the_rest() {
    let node = TestNode::start().await;
    let client = handshake(node.addr).await;
    let replies = send(
        node.addr,
        &json!([
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/meta/x"},
            {"channel": "/bad channel", "data": 1},
            {"channel": "/meta/subscribe", "clientId": client, "subscription": "/good"},
            {"channel": "/good", "data": "delivered"},
        ]),
    )
    .await;
    let ok: Vec<bool> = replies.iter().map(|r| r["successful"] == json!(true)).collect();
    assert_eq!(ok, [false, false, true, true], "{replies:?}");
    let delivered = bayeux::connect_messages(node.addr, &client).await;
    assert_eq!(bayeux::channels(&delivered), ["/good"]);
}

#[tokio::test]
async fn handshake_reply_carries_version_1_0() {
    let node = TestNode::start().await;
    let reply = bayeux::handshake_reply(node.addr).await;
    assert_eq!(reply["version"], json!("1.0"));
}

#[tokio::test]
async fn client_id_is_31_lowercase_base36_chars() {
    let node = TestNode::start().await;
    for _ in 0..50 {
        let id = handshake(node.addr).await;
        assert_eq!(id.len(), 31, "{id:?}");
        assert!(id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()), "{id:?}");
    }
}

#[tokio::test]
async fn client_ids_are_unique() {
    let node = TestNode::start().await;
    let batch: Vec<Value> = (0..100).map(|_| bayeux::handshake_msg(&["long-polling"])).collect();
    let mut ids = HashSet::new();
    for _ in 0..3 {
        for r in send(node.addr, &Value::Array(batch.clone())).await {
            assert!(ids.insert(r["clientId"].as_str().expect("clientId").to_string()), "duplicate id {r}");
        }
    }
    assert_eq!(ids.len(), 300);
}

#[tokio::test]
async fn client_ids_look_random() {
    // 160 random bits: no position is constant over many ids (a counter or timestamp would
    // keep the leading characters fixed). The first character of a 160-bit number in base 36
    // is at most 'y' and is '0'..'9' about 40% of the time, so it varies too.
    let node = TestNode::start().await;
    let batch: Vec<Value> = (0..64).map(|_| bayeux::handshake_msg(&["long-polling"])).collect();
    let ids: Vec<String> = send(node.addr, &Value::Array(batch))
        .await
        .into_iter()
        .map(|r| r["clientId"].as_str().expect("clientId").to_string())
        .collect();
    for pos in 0..31 {
        let distinct: HashSet<u8> = ids.iter().map(|id| id.as_bytes()[pos]).collect();
        assert!(distinct.len() > 1, "character {pos} is the same in all {} ids: {ids:?}", ids.len());
    }
}
