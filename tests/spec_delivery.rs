//! Spec section 5, Delivery: what a delivered message looks like, long-polling batching,
//! websocket and EventSource delivery, in-process publishing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bayeux::{self, connect_messages, connect_msg, handshake, publish, send, send_one, subscribe};
use common::eventsource::EventStream;
use common::ws::{Frame, Ws};
use common::{TestNode, WAIT, within};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

// ---- message shape ----

#[tokio::test]
async fn delivered_message_is_the_published_one_minus_client_id() {
    let node = TestNode::start().await;
    let listener = bayeux::subscriber(node.addr, &["/shape"]).await;
    let publisher = handshake(node.addr).await;
    let published = json!({
        "channel": "/shape",
        "clientId": publisher,
        "id": "m-1",
        "data": {"text": "hi", "n": [1, 2.5, null, true], "nested": {"deep": "x"}},
        "ext": {"auth": {"token": "t"}},
        "custom": "kept",
        "another": {"a": [1]},
    });
    send_one(node.addr, published.clone()).await;
    let delivered = connect_messages(node.addr, &listener).await;
    let mut expected = published;
    expected.as_object_mut().unwrap().remove("clientId");
    assert_eq!(delivered, vec![expected]);
}

#[tokio::test]
async fn delivered_message_keeps_unknown_fields() {
    let node = TestNode::start().await;
    let listener = bayeux::subscriber(node.addr, &["/extra"]).await;
    send_one(node.addr, json!({"channel": "/extra", "data": 1, "priority": 5, "tags": ["a", "b"]})).await;
    let delivered = connect_messages(node.addr, &listener).await;
    assert_eq!(delivered, vec![json!({"channel": "/extra", "data": 1, "priority": 5, "tags": ["a", "b"]})]);
}

#[tokio::test]
async fn delivered_message_without_id_has_no_id() {
    let node = TestNode::start().await;
    let listener = bayeux::subscriber(node.addr, &["/plain"]).await;
    publish(node.addr, "/plain", json!("x")).await;
    let delivered = connect_messages(node.addr, &listener).await;
    assert_eq!(delivered, vec![json!({"channel": "/plain", "data": "x"})]);
}

#[tokio::test]
async fn delivered_data_keeps_unicode_and_escapes() {
    let node = TestNode::start().await;
    let listener = bayeux::subscriber(node.addr, &["/text"]).await;
    let data = json!({"s": "caf\u{e9} \u{1f600} \"quoted\" \\ \n\t \u{2028}", "big": 12345678901234u64, "f": 0.1});
    publish(node.addr, "/text", data.clone()).await;
    let delivered = connect_messages(node.addr, &listener).await;
    assert_eq!(delivered[0]["data"], data);
}

#[tokio::test]
async fn publish_without_client_id_is_accepted_and_delivered() {
    let node = TestNode::start().await;
    let listener = bayeux::subscriber(node.addr, &["/anon"]).await;
    let reply = send_one(node.addr, json!({"channel": "/anon", "data": 7})).await;
    assert_eq!(reply, json!({"channel": "/anon", "successful": true}));
    assert_eq!(connect_messages(node.addr, &listener).await, vec![json!({"channel": "/anon", "data": 7})]);
}

#[tokio::test]
async fn meta_replies_never_echo_ext() {
    let node = TestNode::start().await;
    let ext = json!({"auth": "secret"});
    let mut hs = bayeux::handshake_msg(&["long-polling"]);
    hs["ext"] = ext.clone();
    let hs_reply = send_one(node.addr, hs).await;
    assert!(hs_reply.get("ext").is_none(), "{hs_reply}");
    let id = hs_reply["clientId"].as_str().unwrap().to_string();
    let replies = send(
        node.addr,
        &json!([
            {"channel": "/meta/subscribe", "clientId": id, "subscription": "/e", "ext": ext},
            {"channel": "/not-subscribed", "clientId": id, "data": 1, "ext": ext},
            {"channel": "/meta/unsubscribe", "clientId": id, "subscription": "/e", "ext": ext},
            {"channel": "/meta/subscribe", "clientId": "nobody", "subscription": "/e", "ext": ext},
            {"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "ext": ext, "advice": {"timeout": 0}},
            {"channel": "/meta/disconnect", "clientId": id, "ext": ext},
        ]),
    )
    .await;
    assert_eq!(replies.len(), 6, "{replies:?}");
    for r in &replies {
        assert!(r.get("ext").is_none(), "reply echoes ext: {r}");
    }
}

// ---- long-polling ----

#[tokio::test]
async fn long_polling_batches_messages_published_before_connect_into_one_reply() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let listener = bayeux::subscriber(node.addr, &["/batch/*"]).await;
    for i in 0..5 {
        publish(node.addr, &format!("/batch/{i}"), json!(i)).await;
    }
    let started = Instant::now();
    let replies = bayeux::send_within(node.addr, &connect_msg(&listener), Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        bayeux::channels(&replies),
        ["/meta/connect", "/batch/0", "/batch/1", "/batch/2", "/batch/3", "/batch/4"],
        "{replies:?}"
    );
    let data: Vec<Value> = replies[1..].iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, [json!(0), json!(1), json!(2), json!(3), json!(4)]);
}

#[tokio::test]
async fn messages_published_in_one_batch_arrive_together_in_order() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let listener = bayeux::subscriber(node.addr, &["/b"]).await;
    let batch: Vec<Value> = (0..20).map(|i| json!({"channel": "/b", "data": i})).collect();
    send(node.addr, &Value::Array(batch)).await;
    let delivered = connect_messages(node.addr, &listener).await;
    let data: Vec<i64> = delivered.iter().map(|m| m["data"].as_i64().unwrap()).collect();
    assert_eq!(data, (0..20).collect::<Vec<_>>());
}

#[tokio::test]
async fn queued_messages_are_delivered_once() {
    let node = TestNode::with_timeout(Duration::from_secs(1)).await;
    let listener = bayeux::subscriber(node.addr, &["/once"]).await;
    publish(node.addr, "/once", json!(1)).await;
    assert_eq!(connect_messages(node.addr, &listener).await.len(), 1);
    // The next connect finds the queue empty and is released by the timeout.
    assert!(connect_messages(node.addr, &listener).await.is_empty());
}

#[tokio::test]
async fn connect_and_publish_in_one_request_returns_the_message() {
    // A batch that publishes and then connects: the connect finds the message waiting.
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let id = bayeux::subscriber(node.addr, &["/self"]).await;
    let replies = bayeux::send_within(
        node.addr,
        &json!([
            {"channel": "/self", "clientId": id, "data": "mine"},
            {"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling"},
        ]),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(bayeux::channels(&replies), ["/self", "/meta/connect", "/self"], "{replies:?}");
    assert_eq!(replies[2], json!({"channel": "/self", "data": "mine"}));
}

// ---- websocket ----

#[tokio::test]
async fn websocket_subscribe_and_receive() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, "/ws/chat").await;
    ws.send_connect(&id).await;
    let publisher = handshake(node.addr).await;
    send_one(node.addr, json!({"channel": "/ws/chat", "clientId": publisher, "data": "hello", "id": "w1"})).await;
    let (delivered, _) = ws.deliveries(1).await;
    assert_eq!(delivered, vec![json!({"channel": "/ws/chat", "data": "hello", "id": "w1"})]);
}

#[tokio::test]
async fn websocket_frame_with_several_messages_gets_all_replies_in_one_frame() {
    let node = TestNode::start().await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    let replies = ws
        .request(&json!([
            {"id": "1", "channel": "/meta/subscribe", "clientId": id, "subscription": "/f/a"},
            {"id": "2", "channel": "/meta/subscribe", "clientId": id, "subscription": ["/f/b", "/f/c"]},
            {"id": "3", "channel": "/f/x", "clientId": id, "data": 1},
            {"id": "4", "channel": "/meta/unsubscribe", "clientId": id, "subscription": "/f/c"},
            {"id": "5", "channel": "/meta/foo", "data": 1},
        ]))
        .await;
    let ids: Vec<&str> = replies.iter().map(|r| r["id"].as_str().unwrap_or("?")).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"], "{replies:?}");
    let ok: Vec<bool> = replies.iter().map(|r| r["successful"] == json!(true)).collect();
    assert_eq!(ok, [true, true, true, true, false]);
}

#[tokio::test]
async fn websocket_delivers_without_a_new_connect() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, "/stream").await;
    ws.send_connect(&id).await;
    for i in 0..3 {
        publish(node.addr, "/stream", json!(i)).await;
        let (delivered, meta) = ws.deliveries(1).await;
        assert_eq!(delivered, vec![json!({"channel": "/stream", "data": i})]);
        assert!(meta.is_empty(), "the connect stays held while messages flow: {meta:?}");
    }
}

#[tokio::test]
async fn websocket_keeps_delivering_after_the_connect_is_released() {
    // Faye: the socket stays bound to the client after its connect reply went out.
    let node = TestNode::with_timeout(Duration::from_secs(1)).await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, "/after").await;
    ws.send_connect(&id).await;
    let released = ws.recv_within(Duration::from_secs(5)).await.expect("connect released by the timeout");
    assert_eq!(bayeux::channels(&released), ["/meta/connect"], "{released:?}");
    assert_eq!(released[0]["successful"], json!(true));
    publish(node.addr, "/after", json!("still")).await;
    let (delivered, _) = ws.deliveries(1).await;
    assert_eq!(delivered, vec![json!({"channel": "/after", "data": "still"})]);
}

#[tokio::test]
async fn websocket_connect_reply_is_held_until_the_timeout() {
    let node = TestNode::with_timeout(Duration::from_secs(1)).await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    let started = Instant::now();
    ws.send_connect(&id).await;
    let replies = ws.recv_within(Duration::from_secs(5)).await.expect("connect reply");
    assert!(started.elapsed() >= Duration::from_millis(900), "released after {:?}", started.elapsed());
    assert_eq!(
        replies,
        vec![json!({
            "clientId": id,
            "channel": "/meta/connect",
            "successful": true,
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 1000},
        })]
    );
}

#[tokio::test]
async fn websocket_connect_flushes_messages_queued_before_it() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, "/early").await;
    publish(node.addr, "/early", json!(1)).await;
    publish(node.addr, "/early", json!(2)).await;
    ws.send_connect(&id).await;
    let (delivered, _) = ws.deliveries(2).await;
    assert_eq!(delivered, vec![json!({"channel": "/early", "data": 1}), json!({"channel": "/early", "data": 2})]);
}

#[tokio::test]
async fn websocket_unknown_client_connect_gets_401_on_the_socket() {
    let node = TestNode::start().await;
    let mut ws = Ws::open(node.addr).await;
    let replies =
        ws.request(&json!({"channel": "/meta/connect", "clientId": "nobody", "connectionType": "websocket"})).await;
    assert_eq!(
        replies,
        vec![json!({
            "channel": "/meta/connect",
            "successful": false,
            "error": "401:nobody:Unknown client",
            "advice": {"reconnect": "handshake"},
        })]
    );
}

#[tokio::test]
async fn websocket_and_long_polling_clients_exchange_messages() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let mut ws = Ws::open(node.addr).await;
    let ws_id = ws.handshake().await;
    ws.subscribe(&ws_id, "/mix/to-ws").await;
    ws.send_connect(&ws_id).await;
    let lp_id = bayeux::subscriber(node.addr, &["/mix/to-lp"]).await;

    send_one(node.addr, json!({"channel": "/mix/to-ws", "clientId": lp_id, "data": "from-lp"})).await;
    let (delivered, _) = ws.deliveries(1).await;
    assert_eq!(delivered, vec![json!({"channel": "/mix/to-ws", "data": "from-lp"})]);

    let replies = ws.request(&json!({"channel": "/mix/to-lp", "clientId": ws_id, "data": "from-ws"})).await;
    assert_eq!(replies, vec![json!({"channel": "/mix/to-lp", "clientId": ws_id, "successful": true})]);
    let delivered = connect_messages(node.addr, &lp_id).await;
    assert_eq!(delivered, vec![json!({"channel": "/mix/to-lp", "data": "from-ws"})]);
}

#[tokio::test]
async fn websocket_second_client_id_takes_the_socket_from_the_first() {
    // Faye: a connect for another client id on the same socket flushes the first client's
    // held connect and unbinds it; its messages then wait in its queue for its next connect.
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let mut ws = Ws::open(node.addr).await;
    let a = ws.handshake().await;
    let b = ws.handshake().await;
    ws.subscribe(&a, "/sock/a").await;
    ws.subscribe(&b, "/sock/b").await;
    ws.send_connect(&a).await;
    // Make sure A is bound: a message for A arrives on the socket.
    publish(node.addr, "/sock/a", json!("a1")).await;
    let (delivered, _) = ws.deliveries(1).await;
    assert_eq!(delivered, vec![json!({"channel": "/sock/a", "data": "a1"})]);

    ws.send_connect(&b).await;
    // A's held connect is released.
    let released = ws.recv().await;
    assert_eq!(bayeux::channels(&released), ["/meta/connect"], "{released:?}");
    assert_eq!(released[0]["clientId"], json!(a));

    publish(node.addr, "/sock/a", json!("a2")).await;
    publish(node.addr, "/sock/b", json!("b1")).await;
    let (delivered, _) = ws.deliveries(1).await;
    assert_eq!(delivered, vec![json!({"channel": "/sock/b", "data": "b1"})], "A's message is not on B's socket");

    let for_a = connect_messages(node.addr, &a).await;
    assert_eq!(for_a, vec![json!({"channel": "/sock/a", "data": "a2"})]);
}

#[tokio::test]
async fn websocket_close_keeps_the_client_and_queues_its_messages() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, "/closed").await;
    ws.send_connect(&id).await;
    publish(node.addr, "/closed", json!(1)).await;
    ws.deliveries(1).await;
    ws.close().await;
    // The client lives on (until it expires); later messages wait for its next connect.
    let replies = bayeux::send_within(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling", "advice": {"timeout": 0}}),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(replies[0]["successful"], json!(true), "{replies:?}");
    publish(node.addr, "/closed", json!(2)).await;
    let delivered = connect_messages(node.addr, &id).await;
    assert_eq!(delivered, vec![json!({"channel": "/closed", "data": 2})]);
}

#[tokio::test]
async fn websocket_ping_sends_ping_frames() {
    let node = TestNode::with_config(|c| {
        c.timeout = Duration::from_secs(10);
        c.ping = Some(Duration::from_millis(300));
    })
    .await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.send_connect(&id).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next_frame_within(left).await {
            Some(Frame::Ping) => break,
            Some(Frame::Batch(b)) => assert!(b.iter().all(bayeux::is_meta), "unexpected {b:?}"),
            Some(Frame::Closed) => panic!("socket closed"),
            None => panic!("no ping frame within 5 s with ping = 300 ms"),
        }
    }
}

// ---- EventSource ----

#[tokio::test]
async fn eventsource_stream_receives_data_events() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let id = bayeux::subscriber(node.addr, &["/es"]).await;
    let mut es = EventStream::open(node.addr, &id).await;
    assert_eq!(es.status, 200);
    assert!(es.header("content-type").is_some_and(|t| t.starts_with("text/event-stream")), "{:?}", es.headers);
    let replies = bayeux::send_within(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "eventsource"}),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(bayeux::channels(&replies), ["/meta/connect"]);
    publish(node.addr, "/es", json!({"n": 1})).await;
    let first = es.next_data().await;
    assert_eq!(first, vec![json!({"channel": "/es", "data": {"n": 1}})]);
    publish(node.addr, "/es", json!({"n": 2})).await;
    let second = es.next_data().await;
    assert_eq!(second, vec![json!({"channel": "/es", "data": {"n": 2}})]);
}

#[tokio::test]
async fn eventsource_connect_sends_queued_messages_down_the_stream() {
    // Faye: the connect finds the stream bound to the client, so waiting messages go to the
    // stream and the connect reply comes back alone.
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let id = bayeux::subscriber(node.addr, &["/es/q"]).await;
    let mut es = EventStream::open(node.addr, &id).await;
    assert_eq!(es.status, 200);
    publish(node.addr, "/es/q", json!("waiting")).await;
    let replies = bayeux::send_within(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "eventsource"}),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(bayeux::channels(&replies), ["/meta/connect"], "{replies:?}");
    let mut got = Vec::new();
    while got.is_empty() {
        got.extend(es.next_data().await.into_iter().filter(|m| !bayeux::is_meta(m)));
    }
    assert_eq!(got, vec![json!({"channel": "/es/q", "data": "waiting"})]);
}

#[tokio::test]
async fn eventsource_publish_from_the_client_arrives_as_a_post() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let es_id = bayeux::subscriber(node.addr, &["/es/in"]).await;
    let mut es = EventStream::open(node.addr, &es_id).await;
    bayeux::send_within(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": es_id, "connectionType": "eventsource"}),
        Duration::from_secs(5),
    )
    .await;
    let other = bayeux::subscriber(node.addr, &["/es/out"]).await;
    let reply = send_one(node.addr, json!({"channel": "/es/out", "clientId": es_id, "data": "from-es"})).await;
    assert_eq!(reply["successful"], json!(true));
    assert_eq!(connect_messages(node.addr, &other).await, vec![json!({"channel": "/es/out", "data": "from-es"})]);
    publish(node.addr, "/es/in", json!("to-es")).await;
    assert_eq!(es.next_data().await, vec![json!({"channel": "/es/in", "data": "to-es"})]);
}

// ---- in-process publishing ----

#[tokio::test]
async fn in_process_publish_reaches_long_polling_subscribers() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let id = bayeux::subscriber(node.addr, &["/inproc/*"]).await;
    node.publish("/inproc/x", json!({"from": "rust"})).await;
    let delivered = connect_messages(node.addr, &id).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["channel"], json!("/inproc/x"));
    assert_eq!(delivered[0]["data"], json!({"from": "rust"}));
    assert!(delivered[0].get("clientId").is_none());
}

#[tokio::test]
async fn in_process_publish_releases_a_held_connect() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let id = bayeux::subscriber(node.addr, &["/inproc/held"]).await;
    let addr = node.addr;
    let cid = id.clone();
    let mut pending = tokio::spawn(async move { bayeux::connect(addr, &cid).await });
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut pending).await.is_err(), "connect not held");
    node.publish("/inproc/held", json!(1)).await;
    let replies = within(Duration::from_secs(5), "connect released by in-process publish", pending).await.unwrap();
    assert_eq!(bayeux::channels(&replies), ["/meta/connect", "/inproc/held"]);
}

#[tokio::test]
async fn in_process_publish_reaches_websocket_subscribers() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, "/inproc/ws").await;
    ws.send_connect(&id).await;
    node.publish("/inproc/ws", json!([1, 2, 3])).await;
    let (delivered, _) = ws.deliveries(1).await;
    assert_eq!(delivered[0]["channel"], json!("/inproc/ws"));
    assert_eq!(delivered[0]["data"], json!([1, 2, 3]));
}

#[tokio::test]
async fn in_process_publish_reaches_eventsource_subscribers() {
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let id = bayeux::subscriber(node.addr, &["/inproc/es"]).await;
    let mut es = EventStream::open(node.addr, &id).await;
    bayeux::send_within(
        node.addr,
        &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "eventsource"}),
        Duration::from_secs(5),
    )
    .await;
    node.publish("/inproc/es", json!("x")).await;
    let got = within(WAIT, "event", es.next_data()).await;
    assert_eq!(got[0]["channel"], json!("/inproc/es"));
    assert_eq!(got[0]["data"], json!("x"));
}

#[tokio::test]
async fn in_process_publish_to_service_channel_reaches_double_wildcard_subscribers() {
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/**"]).await;
    node.publish("/service/internal", json!("svc")).await;
    let delivered = connect_messages(node.addr, &id).await;
    assert_eq!(bayeux::channels(&delivered), ["/service/internal"]);
}

#[tokio::test]
async fn subscribe_over_http_receive_after_resubscribe() {
    // A client that unsubscribes and subscribes again receives again.
    let node = TestNode::start().await;
    let id = bayeux::subscriber(node.addr, &["/re"]).await;
    bayeux::unsubscribe(node.addr, &id, "/re").await;
    subscribe(node.addr, &id, "/re").await;
    publish(node.addr, "/re", json!(1)).await;
    assert_eq!(connect_messages(node.addr, &id).await, vec![json!({"channel": "/re", "data": 1})]);
}

#[tokio::test]
async fn websocket_malformed_frame_keeps_the_socket_open() {
    // Faye logs the parse error and answers nothing; the socket stays usable.
    let node = TestNode::start().await;
    let mut ws = Ws::open(node.addr).await;
    ws.send_text("{not json").await;
    ws.send_text("\"a string\"").await;
    ws.send(&bayeux::handshake_msg(&["websocket"])).await;
    let first = ws.recv().await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["channel"], json!("/meta/handshake"), "the malformed frames got a reply: {first:?}");
    assert_eq!(first[0]["successful"], json!(true));
}

#[tokio::test]
async fn websocket_oversized_message_closes_with_1009() {
    if common::skip_on_reference("Faye has no message limit") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_body_bytes = 1024).await;
    let mut ws = Ws::open(node.addr).await;
    let big = json!({"channel": "/big", "data": "x".repeat(4096)});
    ws.send(&big).await;
    assert_eq!(ws.close_code_within(WAIT).await, Ok(1009), "close code");
}

#[tokio::test]
async fn eventsource_ping_sends_keepalive_comments() {
    let node = TestNode::with_config(|c| {
        c.timeout = Duration::from_secs(10);
        c.ping = Some(Duration::from_millis(300));
    })
    .await;
    let id = handshake(node.addr).await;
    let mut es = EventStream::open(node.addr, &id).await;
    assert_eq!(es.status, 200);
    assert!(es.keepalive_within(Duration::from_secs(5)).await, "no keepalive comment within 5 s with ping = 300 ms");
}

#[tokio::test]
async fn unsubscribe_of_one_client_leaves_the_others_subscribed() {
    let node = TestNode::start().await;
    let a = bayeux::subscriber(node.addr, &["/shared", "/marker"]).await;
    let b = bayeux::subscriber(node.addr, &["/shared"]).await;
    bayeux::unsubscribe(node.addr, &a, "/shared").await;
    publish(node.addr, "/shared", json!(1)).await;
    publish(node.addr, "/marker", json!(2)).await;
    assert_eq!(bayeux::channels(&connect_messages(node.addr, &a).await), ["/marker"]);
    assert_eq!(connect_messages(node.addr, &b).await, vec![json!({"channel": "/shared", "data": 1})]);
}

#[tokio::test]
async fn in_process_publish_fires_the_publish_event() {
    let node = TestNode::start().await;
    let mut events = node.events();
    node.publish("/inproc/event", json!({"k": 1})).await;
    let ev = common::wait_event(&mut events, WAIT, |e| matches!(e, actioncluster::ServerEvent::Publish { .. })).await;
    let actioncluster::ServerEvent::Publish { channel, data, .. } = ev else { unreachable!() };
    assert_eq!(channel, "/inproc/event");
    assert_eq!(data, json!({"k": 1}));
}

#[tokio::test]
async fn disconnect_ends_the_eventsource_stream() {
    // Faye closes the connection (and its socket) of a destroyed client.
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let id = handshake(node.addr).await;
    let mut es = EventStream::open(node.addr, &id).await;
    assert_eq!(es.status, 200);
    bayeux::disconnect(node.addr, &id).await;
    assert!(es.ended_within(Duration::from_secs(5)).await, "stream still open after disconnect");
}

#[tokio::test]
async fn websocket_disconnect_closes_the_socket_after_the_reply() {
    // Faye: the disconnect reply is written, then the destroyed client's socket is closed.
    let node = TestNode::with_timeout(Duration::from_secs(10)).await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.send_connect(&id).await;
    let replies = ws.request(&json!({"channel": "/meta/disconnect", "clientId": id})).await;
    let disconnect: Vec<&Value> = replies.iter().filter(|r| r["channel"] == json!("/meta/disconnect")).collect();
    let disconnect = if disconnect.is_empty() {
        // The held connect's reply may come first.
        ws.recv().await.into_iter().find(|r| r["channel"] == json!("/meta/disconnect")).expect("disconnect reply")
    } else {
        disconnect[0].clone()
    };
    assert_eq!(disconnect["successful"], json!(true));
    let ended = loop {
        match ws.next_frame_within(Duration::from_secs(5)).await {
            Some(Frame::Closed) => break true,
            Some(_) => continue,
            None => break false,
        }
    };
    assert!(ended, "socket still open 5 s after disconnect");
}
