//! Spec section 4, Meta channels: handshake, connect (hold, release, advice), subscribe and
//! unsubscribe, disconnect, client expiry, server events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use actioncluster::ServerEvent;
use common::bayeux::{self, CONNECTION_TYPES, connect_msg, handshake, publish, send, send_one, send_within, subscribe};
use common::{TestNode, WAIT, next_event, wait_event, within};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn connect_with(client_id: &str, connection_type: &str) -> Value {
    json!({"channel": "/meta/connect", "clientId": client_id, "connectionType": connection_type})
}

// ---- handshake ----

#[tokio::test]
async fn handshake_reply_has_client_id_version_types_successful_and_advice() {
    let node = TestNode::start().await;
    let reply = send_one(
        node.addr,
        json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"], "id": "1"}),
    )
    .await;
    let client_id = reply["clientId"].as_str().expect("clientId").to_string();
    assert_eq!(
        reply,
        json!({
            "id": "1",
            "channel": "/meta/handshake",
            "successful": true,
            "version": "1.0",
            "supportedConnectionTypes": CONNECTION_TYPES,
            "clientId": client_id,
            "advice": {"reconnect": "retry", "interval": 0, "timeout": node.timeout_ms()},
        })
    );
}

#[tokio::test]
async fn handshake_supported_connection_types_is_the_server_list() {
    let node = TestNode::start().await;
    for offered in [vec!["websocket"], vec!["callback-polling", "long-polling"], vec!["in-process"]] {
        let reply = send_one(node.addr, bayeux::handshake_msg(&offered)).await;
        assert_eq!(reply["successful"], json!(true), "{reply}");
        assert_eq!(reply["supportedConnectionTypes"], json!(CONNECTION_TYPES), "offered {offered:?}");
    }
}

#[tokio::test]
async fn handshake_needs_only_one_type_in_common() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, bayeux::handshake_msg(&["foo", "eventsource", "bar"])).await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
}

#[tokio::test]
async fn handshake_accepts_any_version_string() {
    // Faye only checks that `version` is present.
    let node = TestNode::start().await;
    for version in ["0.9", "2.0", "1.0beta"] {
        let mut msg = bayeux::handshake_msg(&["long-polling"]);
        msg["version"] = json!(version);
        let reply = send_one(node.addr, msg).await;
        assert_eq!(reply["successful"], json!(true), "{version}: {reply}");
        assert_eq!(reply["version"], json!("1.0"));
    }
}

#[tokio::test]
async fn handshake_ignores_minimum_version() {
    let node = TestNode::start().await;
    let mut msg = bayeux::handshake_msg(&["long-polling"]);
    msg["minimumVersion"] = json!("9.0");
    let reply = send_one(node.addr, msg).await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
}

// ---- connect ----

#[tokio::test]
async fn connect_reply_has_client_id_and_retry_advice() {
    let node = TestNode::with_timeout(Duration::from_millis(500)).await;
    let id = handshake(node.addr).await;
    let replies = send(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "id": "c"}),
    )
    .await;
    assert_eq!(
        replies,
        vec![json!({
            "id": "c",
            "clientId": id,
            "channel": "/meta/connect",
            "successful": true,
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 500},
        })]
    );
}

#[tokio::test]
async fn advice_timeout_is_the_configured_timeout_in_ms() {
    let node = TestNode::with_timeout(Duration::from_millis(1500)).await;
    let reply = bayeux::handshake_reply(node.addr).await;
    assert_eq!(reply["advice"], json!({"reconnect": "retry", "interval": 0, "timeout": 1500}));
}

#[tokio::test]
async fn connect_is_held_until_a_message_arrives() {
    // Hold time 10 s: a reply well before that can only be the message's doing.
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let listener = bayeux::subscriber(node.addr, &["/held"]).await;
    let addr = node.addr;
    let started = Instant::now();
    let id = listener.clone();
    let mut pending = tokio::spawn(async move { bayeux::connect(addr, &id).await });

    // Still held after a while: nothing to deliver.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut pending).await.is_err(),
        "connect answered before any message was published"
    );

    // Another client publishes while the connect is pending.
    let publisher = handshake(node.addr).await;
    let reply = send_one(node.addr, json!({"channel": "/held", "data": "wake", "clientId": publisher})).await;
    assert_eq!(reply["successful"], json!(true));

    let replies = within(Duration::from_secs(5), "held connect released by the publish", pending).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(6), "released by the message, not by the timeout");
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["channel"], json!("/meta/connect"));
    assert_eq!(replies[0]["successful"], json!(true));
    assert_eq!(replies[0]["clientId"], json!(listener));
    assert_eq!(replies[0]["advice"], json!({"reconnect": "retry", "interval": 0, "timeout": 10000}));
    assert_eq!(replies[1], json!({"channel": "/held", "data": "wake"}));
}

#[tokio::test]
async fn connect_with_queued_messages_returns_at_once() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let id = bayeux::subscriber(node.addr, &["/q"]).await;
    publish(node.addr, "/q", json!(1)).await;
    let replies = send_within(node.addr, &connect_msg(&id), Duration::from_secs(5)).await;
    assert_eq!(bayeux::channels(&replies), ["/meta/connect", "/q"]);
}

#[tokio::test]
async fn connect_is_released_empty_after_the_timeout() {
    let node = TestNode::with_timeout(Duration::from_secs(1)).await;
    let id = handshake(node.addr).await;
    let started = Instant::now();
    let replies = send_within(node.addr, &connect_msg(&id), Duration::from_secs(6)).await;
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(900), "released after {held:?}, before the 1 s timeout");
    assert!(held < Duration::from_secs(4), "held {held:?}");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["successful"], json!(true));
    assert_eq!(replies[0]["advice"], json!({"reconnect": "retry", "interval": 0, "timeout": 1000}));
}

#[tokio::test]
async fn client_advice_timeout_shortens_the_hold() {
    let node = TestNode::with_timeout(Duration::from_secs(20)).await;
    let id = handshake(node.addr).await;
    let started = Instant::now();
    let replies = send_within(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "advice": {"timeout": 300}}),
        Duration::from_secs(5),
    )
    .await;
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(250), "released after {held:?}, before the asked 300 ms");
    assert_eq!(bayeux::channels(&replies), ["/meta/connect"]);
    // The advice still tells the server's values.
    assert_eq!(replies[0]["advice"], json!({"reconnect": "retry", "interval": 0, "timeout": 20000}));
}

#[tokio::test]
async fn client_advice_timeout_zero_returns_at_once() {
    // CometD clients send `advice: {timeout: 0}` on their first connect.
    let node = TestNode::with_timeout(Duration::from_secs(20)).await;
    let id = handshake(node.addr).await;
    let replies = send_within(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "advice": {"timeout": 0}}),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(replies[0]["successful"], json!(true), "{replies:?}");
}

#[tokio::test]
async fn eventsource_connect_advice_has_interval_timeout_and_timeout_zero() {
    let node = TestNode::with_timeout(Duration::from_secs(3)).await;
    let id = handshake(node.addr).await;
    let replies = send_within(node.addr, &connect_with(&id, "eventsource"), Duration::from_secs(2)).await;
    assert_eq!(
        replies,
        vec![json!({
            "clientId": id,
            "channel": "/meta/connect",
            "successful": true,
            "advice": {"reconnect": "retry", "interval": 3000, "timeout": 0},
        })]
    );
}

#[tokio::test]
async fn eventsource_connect_is_not_held() {
    let node = TestNode::with_timeout(Duration::from_secs(20)).await;
    let id = handshake(node.addr).await;
    let started = Instant::now();
    send_within(node.addr, &connect_with(&id, "eventsource"), Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn failed_eventsource_connect_advice_is_handshake_only() {
    let node = TestNode::start().await;
    let reply = send_one(node.addr, connect_with("nobody", "eventsource")).await;
    assert_eq!(reply["advice"], json!({"reconnect": "handshake"}));
}

#[tokio::test]
async fn connect_accepts_every_server_connection_type() {
    let node = TestNode::with_timeout(Duration::from_secs(20)).await;
    let id = handshake(node.addr).await;
    for ty in CONNECTION_TYPES {
        let replies = send_within(
            node.addr,
            &json!({"channel": "/meta/connect", "clientId": id, "connectionType": ty, "advice": {"timeout": 0}}),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(replies[0]["successful"], json!(true), "{ty}: {replies:?}");
    }
}

#[tokio::test]
async fn connect_keeps_the_client_alive() {
    // Timeout 1 s: expiry would come about 2 s after the last ping. Connecting for 4 s keeps
    // the client.
    let node = TestNode::with_timeout(Duration::from_secs(1)).await;
    let mut events = node.events();
    let id = handshake(node.addr).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let replies = send_within(node.addr, &connect_msg(&id), Duration::from_secs(4)).await;
        assert_eq!(replies[0]["successful"], json!(true), "connect after {:?}: {replies:?}", started.elapsed());
    }
    while let Ok(ev) = events.try_recv() {
        assert_ne!(ev, ServerEvent::Disconnect { client_id: id.clone() }, "a connecting client expired");
    }
}

// ---- subscribe / unsubscribe ----

#[tokio::test]
async fn subscribe_array_subscribes_every_channel() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = bayeux::subscribe_reply(node.addr, &id, json!(["/one", "/two/*"])).await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
    publish(node.addr, "/one", json!(1)).await;
    publish(node.addr, "/two/x", json!(2)).await;
    let delivered = bayeux::connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/one", "/two/x"]);
}

#[tokio::test]
async fn subscribe_stops_at_the_first_invalid_channel() {
    let node = TestNode::start().await;
    let mut events = node.events();
    let id = handshake(node.addr).await;
    let reply = bayeux::subscribe_reply(node.addr, &id, json!(["/first", "/meta/bad", "/third"])).await;
    assert_eq!(reply["error"], json!("403:/meta/bad:Forbidden channel"), "{reply}");
    assert_eq!(reply["subscription"], json!(["/first", "/meta/bad", "/third"]));
    // /first was subscribed, /third was not.
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Subscribe { .. })).await;
    assert_eq!(ev, ServerEvent::Subscribe { client_id: id.clone(), channel: "/first".into() });
    publish(node.addr, "/third", json!(3)).await;
    publish(node.addr, "/first", json!(1)).await;
    let delivered = bayeux::connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/first"]);
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/u", "/marker"]).await;
    let reply = bayeux::unsubscribe(node.addr, &id, "/u").await;
    assert_eq!(
        reply,
        json!({"clientId": id, "channel": "/meta/unsubscribe", "successful": true, "subscription": "/u"})
    );
    publish(node.addr, "/u", json!(1)).await;
    publish(node.addr, "/marker", json!(2)).await;
    let delivered = bayeux::connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/marker"]);
}

#[tokio::test]
async fn unsubscribe_from_a_channel_not_subscribed_succeeds() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = bayeux::unsubscribe(node.addr, &id, "/never").await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
}

#[tokio::test]
async fn subscribing_twice_delivers_once_and_one_unsubscribe_ends_it() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/twice", "/twice", "/marker"]).await;
    publish(node.addr, "/twice", json!(1)).await;
    let delivered = bayeux::connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/twice"]);
    bayeux::unsubscribe(node.addr, &id, "/twice").await;
    publish(node.addr, "/twice", json!(2)).await;
    publish(node.addr, "/marker", json!(3)).await;
    let delivered = bayeux::connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/marker"]);
}

#[tokio::test]
async fn publish_with_unknown_client_id_is_accepted() {
    // Faye does not check the publisher's clientId.
    let node = TestNode::start().await;
    let listener = bayeux::subscriber(node.addr, &["/p"]).await;
    let reply = send_one(node.addr, json!({"channel": "/p", "clientId": "stranger", "data": 1})).await;
    assert_eq!(reply, json!({"clientId": "stranger", "channel": "/p", "successful": true}));
    assert_eq!(bayeux::connect_messages(node.addr, &listener).await, vec![json!({"channel": "/p", "data": 1})]);
}

// ---- disconnect ----

#[tokio::test]
async fn disconnect_reply_is_successful_with_client_id() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let reply = send_one(node.addr, json!({"channel": "/meta/disconnect", "clientId": id, "id": "d"})).await;
    assert_eq!(reply, json!({"id": "d", "clientId": id, "channel": "/meta/disconnect", "successful": true}));
}

#[tokio::test]
async fn disconnect_destroys_the_client() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    assert_eq!(bayeux::disconnect(node.addr, &id).await["successful"], json!(true));
    let replies = bayeux::connect(node.addr, &id).await;
    assert_eq!(
        replies,
        vec![json!({
            "channel": "/meta/connect",
            "successful": false,
            "error": format!("401:{id}:Unknown client"),
            "advice": {"reconnect": "handshake"},
        })]
    );
    let again = bayeux::disconnect(node.addr, &id).await;
    assert_eq!(again["error"], json!(format!("401:{id}:Unknown client")));
}

#[tokio::test]
async fn disconnect_fires_the_disconnect_event() {
    let node = TestNode::start().await;
    let mut events = node.events();
    let id = handshake(node.addr).await;
    bayeux::disconnect(node.addr, &id).await;
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Disconnect { .. })).await;
    assert_eq!(ev, ServerEvent::Disconnect { client_id: id });
}

#[tokio::test]
async fn disconnect_unsubscribes_the_client_with_events() {
    // Faye's engine unsubscribes each channel of a destroyed client (firing `unsubscribe`),
    // then fires `disconnect`.
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/d1", "/d2/**"]).await;
    let mut events = node.events();
    bayeux::disconnect(node.addr, &id).await;
    let mut unsubscribed = Vec::new();
    loop {
        match next_event(&mut events).await {
            ServerEvent::Unsubscribe { client_id, channel } if client_id == id => unsubscribed.push(channel),
            ServerEvent::Disconnect { client_id } if client_id == id => break,
            _ => {}
        }
    }
    unsubscribed.sort();
    assert_eq!(unsubscribed, ["/d1", "/d2/**"]);
}

#[tokio::test]
async fn disconnect_releases_a_held_connect() {
    // Faye: destroying a client closes its connection, flushing the pending connect.
    let node = TestNode::with_timeout(Duration::from_secs(20)).await;
    let id = handshake(node.addr).await;
    let addr = node.addr;
    let cid = id.clone();
    let mut pending = tokio::spawn(async move { bayeux::connect(addr, &cid).await });
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut pending).await.is_err(), "connect not held");
    bayeux::disconnect(node.addr, &id).await;
    let replies = within(Duration::from_secs(5), "held connect released by disconnect", pending).await.unwrap();
    assert_eq!(replies[0]["channel"], json!("/meta/connect"), "{replies:?}");
}

#[tokio::test]
async fn disconnected_client_gets_no_more_messages() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/gone"]).await;
    let mut events = node.events();
    bayeux::disconnect(node.addr, &id).await;
    publish(node.addr, "/gone", json!(1)).await;
    // The publish reached no one: a fresh subscriber with the same subscription proves the
    // server still delivers on that channel.
    let other = bayeux::subscriber(node.addr, &["/gone"]).await;
    publish(node.addr, "/gone", json!(2)).await;
    let delivered = bayeux::connect_messages(node.addr, &other).await;
    assert_eq!(delivered, vec![json!({"channel": "/gone", "data": 2})]);
    let sub = bayeux::subscribe_reply(node.addr, &id, json!("/gone")).await;
    assert_eq!(sub["error"], json!(format!("401:{id}:Unknown client")));
    let _ = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Disconnect { .. })).await;
}

// ---- expiry ----

#[tokio::test]
async fn client_that_never_connects_expires_after_about_twice_the_timeout() {
    let node = TestNode::with_timeout(Duration::from_secs(1)).await;
    let mut events = node.events();
    let started = Instant::now();
    let id = handshake(node.addr).await;
    let ev = wait_event(&mut events, Duration::from_secs(8), |e| matches!(e, ServerEvent::Disconnect { .. })).await;
    let after = started.elapsed();
    assert_eq!(ev, ServerEvent::Disconnect { client_id: id.clone() });
    assert!(after >= Duration::from_millis(1500), "expired after {after:?}; expected about 2 s");
    assert!(after <= Duration::from_secs(5), "expired after {after:?}; expected about 2 s");
    let replies = bayeux::connect(node.addr, &id).await;
    assert_eq!(replies[0]["error"], json!(format!("401:{id}:Unknown client")));
}

#[tokio::test]
async fn client_expires_about_twice_the_timeout_after_its_last_connect() {
    let node = TestNode::with_timeout(Duration::from_secs(1)).await;
    let id = handshake(node.addr).await;
    let replies = send_within(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "advice": {"timeout": 0}}),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(replies[0]["successful"], json!(true));
    let mut events = node.events();
    let started = Instant::now();
    let ev = wait_event(&mut events, Duration::from_secs(8), |e| matches!(e, ServerEvent::Disconnect { .. })).await;
    assert_eq!(ev, ServerEvent::Disconnect { client_id: id });
    assert!(started.elapsed() >= Duration::from_millis(1000), "expired after {:?}", started.elapsed());
}

// ---- server events ----

#[tokio::test]
async fn handshake_fires_the_handshake_event() {
    let node = TestNode::start().await;
    let mut events = node.events();
    let id = handshake(node.addr).await;
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Handshake { .. })).await;
    assert_eq!(ev, ServerEvent::Handshake { client_id: id });
}

#[tokio::test]
async fn failed_handshake_fires_no_event() {
    let node = TestNode::start().await;
    let mut events = node.events();
    send_one(node.addr, bayeux::handshake_msg(&["nope"])).await;
    let id = handshake(node.addr).await;
    let ev = next_event(&mut events).await;
    assert_eq!(ev, ServerEvent::Handshake { client_id: id }, "the failed handshake fired nothing before");
}

#[tokio::test]
async fn subscribe_fires_the_subscribe_event() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let mut events = node.events();
    subscribe(node.addr, &id, "/ev/*").await;
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Subscribe { .. })).await;
    assert_eq!(ev, ServerEvent::Subscribe { client_id: id, channel: "/ev/*".into() });
}

#[tokio::test]
async fn repeated_subscribe_fires_no_second_event() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let mut events = node.events();
    subscribe(node.addr, &id, "/again").await;
    subscribe(node.addr, &id, "/again").await;
    subscribe(node.addr, &id, "/marker").await;
    let first = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Subscribe { .. })).await;
    let second = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Subscribe { .. })).await;
    assert_eq!(first, ServerEvent::Subscribe { client_id: id.clone(), channel: "/again".into() });
    assert_eq!(second, ServerEvent::Subscribe { client_id: id, channel: "/marker".into() });
}

#[tokio::test]
async fn unsubscribe_fires_the_unsubscribe_event() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/ev"]).await;
    let mut events = node.events();
    bayeux::unsubscribe(node.addr, &id, "/ev").await;
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Unsubscribe { .. })).await;
    assert_eq!(ev, ServerEvent::Unsubscribe { client_id: id, channel: "/ev".into() });
}

#[tokio::test]
async fn unsubscribe_from_a_channel_not_subscribed_fires_no_event() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/marker"]).await;
    let mut events = node.events();
    bayeux::unsubscribe(node.addr, &id, "/never").await;
    bayeux::unsubscribe(node.addr, &id, "/marker").await;
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Unsubscribe { .. })).await;
    assert_eq!(ev, ServerEvent::Unsubscribe { client_id: id, channel: "/marker".into() });
}

#[tokio::test]
async fn publish_fires_the_publish_event_with_the_publisher() {
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let mut events = node.events();
    send_one(node.addr, json!({"channel": "/ev/p", "clientId": id, "data": {"n": [1, 2]}})).await;
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Publish { .. })).await;
    assert_eq!(ev, ServerEvent::Publish { client_id: Some(id), channel: "/ev/p".into(), data: json!({"n": [1, 2]}) });
}

#[tokio::test]
async fn publish_without_client_id_fires_the_event_without_publisher() {
    let node = TestNode::start().await;
    let mut events = node.events();
    publish(node.addr, "/ev/anon", json!("x")).await;
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Publish { .. })).await;
    assert_eq!(ev, ServerEvent::Publish { client_id: None, channel: "/ev/anon".into(), data: json!("x") });
}

#[tokio::test]
async fn rejected_publish_fires_no_event() {
    let node = TestNode::start().await;
    let mut events = node.events();
    send_one(node.addr, json!({"channel": "/bad name", "data": 1})).await;
    send_one(node.addr, json!({"channel": "/no-data"})).await;
    send_one(node.addr, json!({"channel": "/meta/x", "data": 1})).await;
    publish(node.addr, "/ok", json!(1)).await;
    let ev = wait_event(&mut events, WAIT, |e| matches!(e, ServerEvent::Publish { .. })).await;
    assert_eq!(ev, ServerEvent::Publish { client_id: None, channel: "/ok".into(), data: json!(1) });
}
