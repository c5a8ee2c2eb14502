//! Spec section 2, Channels: grammar, meta/service rules, expansion of a published name into
//! the patterns that match it, one delivery per client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use actioncluster::ServerEvent;
use common::bayeux::{self, connect_messages, handshake, publish, send_one, subscribe, subscribe_reply};
use common::{TestNode, WAIT};
use serde_json::json;

const NAMES_ACCEPTED: &[&str] = &["/a", "/a/b/c", "/Foo/BAR/baz09", "/a-b_c!d~e(f)g$h@i", "/!/~/(/)/$/@/-/_", "/0"];

const PATTERNS_ACCEPTED: &[&str] = &["/*", "/**", "/a/*", "/a/**", "/a/b-c/*", "/a/b/**"];

const NAMES_REJECTED: &[&str] = &[
    "a",
    "/",
    "//",
    "//a",
    "/a/",
    "/a//b",
    "/a b",
    "/caf\u{e9}",
    "/a.b",
    "/a:b",
    "/a+b",
    "/a%20b",
    "/a#b",
    "/a?b",
    "/a,b",
    "/a/**/b",
    "/a/*/b",
    "/a*",
    "/a/b*",
    "/a/***",
    "/**/a",
    "*",
    "**",
];

#[tokio::test]
async fn valid_channel_names_can_be_subscribed() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    for name in NAMES_ACCEPTED {
        let reply = subscribe_reply(node.addr, &id, json!(name)).await;
        assert_eq!(reply["successful"], json!(true), "{name}: {reply}");
    }
}

#[tokio::test]
async fn wildcard_patterns_can_be_subscribed() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    for name in PATTERNS_ACCEPTED {
        let reply = subscribe_reply(node.addr, &id, json!(name)).await;
        assert_eq!(reply["successful"], json!(true), "{name}: {reply}");
    }
}

#[tokio::test]
async fn valid_channel_names_can_be_published_to() {
    let node = TestNode::start().await;
    for name in NAMES_ACCEPTED {
        let reply = send_one(node.addr, json!({"channel": name, "data": 1})).await;
        assert_eq!(reply, json!({"channel": name, "successful": true}), "{name}");
    }
}

#[tokio::test]
async fn invalid_channel_names_cannot_be_subscribed() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    for name in NAMES_REJECTED {
        let reply = subscribe_reply(node.addr, &id, json!(name)).await;
        assert_eq!(reply["successful"], json!(false), "{name}: {reply}");
        assert_eq!(reply["error"], json!(format!("405:{name}:Invalid channel")), "{name}");
    }
}

#[tokio::test]
async fn invalid_channel_names_cannot_be_published_to() {
    let node = TestNode::start().await;
    for name in NAMES_REJECTED {
        let reply = send_one(node.addr, json!({"channel": name, "data": 1})).await;
        assert_eq!(reply["successful"], json!(false), "{name}: {reply}");
        assert_eq!(reply["error"], json!(format!("405:{name}:Invalid channel")), "{name}");
    }
}

#[tokio::test]
async fn publish_to_a_pattern_is_invalid_channel() {
    let node = TestNode::start().await;
    for name in PATTERNS_ACCEPTED {
        let reply = send_one(node.addr, json!({"channel": name, "data": 1})).await;
        assert_eq!(reply["error"], json!(format!("405:{name}:Invalid channel")), "{name}: {reply}");
    }
}

#[tokio::test]
async fn meta_channels_cannot_be_subscribed() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    for name in ["/meta/foo", "/meta/connect", "/meta/*", "/meta/**", "/meta", "/meta/a/b"] {
        let reply = subscribe_reply(node.addr, &id, json!(name)).await;
        assert_eq!(reply["error"], json!(format!("403:{name}:Forbidden channel")), "{name}: {reply}");
        assert_eq!(reply["successful"], json!(false));
    }
}

#[tokio::test]
async fn service_channels_cannot_be_subscribed() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    for name in ["/service/foo", "/service/*", "/service/**", "/service", "/service/a/b"] {
        let reply = subscribe_reply(node.addr, &id, json!(name)).await;
        assert_eq!(reply["error"], json!(format!("403:{name}:Forbidden channel")), "{name}: {reply}");
    }
}

#[tokio::test]
async fn root_wildcards_can_be_subscribed() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    for name in ["/**", "/*"] {
        let reply = subscribe_reply(node.addr, &id, json!(name)).await;
        assert_eq!(reply["successful"], json!(true), "{name}: {reply}");
    }
}

#[tokio::test]
async fn channels_merely_starting_with_meta_or_service_are_ordinary() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    for name in ["/metadata", "/services", "/a/meta", "/a/service/x"] {
        let reply = subscribe_reply(node.addr, &id, json!(name)).await;
        assert_eq!(reply["successful"], json!(true), "{name}: {reply}");
    }
}

#[tokio::test]
async fn publish_to_meta_channel_is_403() {
    let node = TestNode::start().await;
    for name in ["/meta/foo", "/meta", "/meta/a/b", "/meta/*"] {
        let reply = send_one(node.addr, json!({"channel": name, "data": 1})).await;
        assert_eq!(
            reply,
            json!({"channel": name, "successful": false, "error": format!("403:{name}:Forbidden channel")}),
            "{name}"
        );
    }
}

#[tokio::test]
async fn publish_to_service_channel_is_acknowledged() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, json!({"channel": "/service/echo", "data": {"x": 1}, "id": "s1"})).await;
    assert_eq!(reply, json!({"id": "s1", "channel": "/service/echo", "successful": true}));
}

#[tokio::test]
async fn publish_to_service_channel_fires_publish_event() {
    let node = TestNode::start().await;
    let mut events = node.events();
    publish(node.addr, "/service/echo", json!({"x": 1})).await;
    let ev = common::wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Publish { .. })).await;
    assert_eq!(ev, ServerEvent::Publish { client_id: None, channel: "/service/echo".into(), data: json!({"x": 1}) });
}

#[tokio::test]
async fn publish_to_service_channel_reaches_double_wildcard_subscribers() {
    // Faye quirk: `/**` is in the expansion of every name, `/service/...` included.
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/**"]).await;
    publish(node.addr, "/service/echo", json!("svc")).await;
    let delivered = connect_messages(node.addr, &id).await;
    assert_eq!(delivered, vec![json!({"channel": "/service/echo", "data": "svc"})]);
}

#[tokio::test]
async fn publish_to_service_channel_does_not_reach_single_wildcard_subscribers() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/*", "/marker"]).await;
    publish(node.addr, "/service/echo", json!("svc")).await;
    publish(node.addr, "/marker", json!("end")).await;
    // `/marker` matches both subscriptions and still arrives once.
    let delivered = connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/marker"], "{delivered:?}");
}

/// Subscribes a fresh client to `pattern` (and to `/zz-marker`), publishes to `/a/b/c` then to
/// the marker, and returns the channels delivered to that client, in order.
async fn delivered_for(pattern: &str) -> Vec<String> {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    subscribe(node.addr, &id, pattern).await;
    subscribe(node.addr, &id, "/zz-marker").await;
    publish(node.addr, "/a/b/c", json!("abc")).await;
    publish(node.addr, "/zz-marker", json!("end")).await;
    let delivered = connect_messages(node.addr, &id).await;
    let mut channels = bayeux::channels(&delivered);
    // A `/**` subscriber also gets the marker through `/**`; still once.
    assert_eq!(channels.iter().filter(|c| *c == "/zz-marker").count(), 1, "{delivered:?}");
    channels.retain(|c| c != "/zz-marker");
    channels
}

#[tokio::test]
async fn publish_reaches_exact_name_subscribers() {
    assert_eq!(delivered_for("/a/b/c").await, ["/a/b/c"]);
}

#[tokio::test]
async fn publish_reaches_root_double_wildcard_subscribers() {
    assert_eq!(delivered_for("/**").await, ["/a/b/c"]);
}

#[tokio::test]
async fn publish_reaches_parent_single_wildcard_subscribers() {
    assert_eq!(delivered_for("/a/b/*").await, ["/a/b/c"]);
}

#[tokio::test]
async fn publish_reaches_grandparent_double_wildcard_subscribers() {
    assert_eq!(delivered_for("/a/**").await, ["/a/b/c"]);
}

#[tokio::test]
async fn publish_reaches_parent_double_wildcard_subscribers() {
    assert_eq!(delivered_for("/a/b/**").await, ["/a/b/c"]);
}

#[tokio::test]
async fn publish_does_not_reach_grandparent_single_wildcard_subscribers() {
    assert!(delivered_for("/a/*").await.is_empty());
}

#[tokio::test]
async fn publish_does_not_reach_child_wildcard_subscribers() {
    assert!(delivered_for("/a/b/c/*").await.is_empty());
    assert!(delivered_for("/a/b/c/**").await.is_empty());
}

#[tokio::test]
async fn publish_does_not_reach_root_single_wildcard_subscribers_of_deeper_names() {
    assert!(delivered_for("/*").await.is_empty());
}

#[tokio::test]
async fn publish_does_not_reach_other_names() {
    assert!(delivered_for("/a/b").await.is_empty());
    assert!(delivered_for("/a/b/d").await.is_empty());
    assert!(delivered_for("/A/b/c").await.is_empty());
}

#[tokio::test]
async fn root_single_wildcard_matches_one_segment_names() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/*"]).await;
    publish(node.addr, "/top", json!(1)).await;
    let delivered = connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/top"]);
}

#[tokio::test]
async fn client_with_several_matching_subscriptions_gets_one_copy() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/a/b/c", "/a/b/*", "/a/**", "/a/b/**", "/**"]).await;
    publish(node.addr, "/a/b/c", json!("once")).await;
    publish(node.addr, "/a/b/c", json!("twice")).await;
    let delivered = connect_messages(node.addr, &id).await;
    let data: Vec<_> = delivered.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, [json!("once"), json!("twice")], "{delivered:?}");
}

#[tokio::test]
async fn each_matching_client_gets_its_own_copy() {
    let node = TestNode::start().await;
    let a = bayeux::subscriber(node.addr, &["/x/y"]).await;
    let b = bayeux::subscriber(node.addr, &["/x/*"]).await;
    let c = bayeux::subscriber(node.addr, &["/**", "/x/**"]).await;
    publish(node.addr, "/x/y", json!("all")).await;
    for id in [&a, &b, &c] {
        let delivered = connect_messages(node.addr, id).await;
        assert_eq!(delivered, vec![json!({"channel": "/x/y", "data": "all"})], "client {id}");
    }
}
