//! What the one-task websocket must keep: a shutdown answers held connects (with the advice
//! to reconnect) before closing 1001; a disconnect is answered before the close 1000; and
//! messages taken for a socket that dies before writing them go back to the client's queue;
//! and a socket stops reading while 64 of its batches wait (held connects).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ws::Ws;
use common::{TestNode, WAIT, skip_on_reference, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_held_connect_then_closes_1001() {
    if skip_on_reference("stops our node") {
        return;
    }
    let node = TestNode::start().await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, "/news").await;
    ws.send_connect(&id).await;
    // The connect is held; a publish proves the socket is bound before the node stops.
    node.publish("/news", json!("before")).await;
    let (delivered, _) = ws.deliveries(1).await;
    assert_eq!(delivered[0]["data"], json!("before"));

    let stopping = tokio::spawn(node.shutdown());
    let reply = ws.recv().await;
    assert_eq!(reply[0]["channel"], json!("/meta/connect"), "{reply:?}");
    assert_eq!(reply[0]["successful"], json!(true), "{reply:?}");
    assert_eq!(reply[0]["advice"]["reconnect"], json!("retry"), "{reply:?}");
    assert_eq!(ws.close_code_within(WAIT).await, Ok(1001), "going away");
    within(WAIT, "the node to stop", stopping).await.unwrap();
}

#[tokio::test]
async fn a_disconnect_is_answered_then_the_socket_closes_1000() {
    if skip_on_reference("Faye's close code differs") {
        return;
    }
    let node = TestNode::start().await;
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.send_connect(&id).await;
    let reply = ws.request(&json!({"channel": "/meta/disconnect", "clientId": id})).await;
    let disconnect = reply.iter().find(|m| m["channel"] == json!("/meta/disconnect")).expect("a disconnect reply");
    assert_eq!(disconnect["successful"], json!(true), "{reply:?}");
    assert_eq!(ws.close_code_within(WAIT).await, Ok(1000), "normal closure");
}

/// A websocket whose receive buffer is tiny, so the server cannot write much to it.
async fn narrow_websocket(addr: SocketAddr) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/faye"), stream).await.unwrap();
    ws
}

async fn request(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, message: Value) -> Vec<Value> {
    ws.send(WsMessage::Text(message.to_string().into())).await.unwrap();
    loop {
        match within(WAIT, "a reply", ws.next()).await {
            Some(Ok(WsMessage::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_the_socket_could_not_write_goes_back_to_the_queue() {
    if skip_on_reference("reads our node's metrics") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_queue_bytes = 256 * 1024 * 1024).await;
    let mut first = narrow_websocket(node.addr).await;
    let handshake = json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["websocket"]});
    let id = request(&mut first, handshake).await[0]["clientId"].as_str().unwrap().to_string();
    let reply =
        request(&mut first, json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "/big"})).await;
    assert_eq!(reply[0]["successful"], json!(true));
    let connect =
        json!({"channel": "/meta/connect", "clientId": id, "connectionType": "websocket", "advice": {"timeout": 0}});
    assert_eq!(request(&mut first, connect).await[0]["successful"], json!(true));

    // One message far larger than what the kernel buffers between the two ends can hold:
    // the server takes it from the queue and stalls part way through writing it.
    let big = "b".repeat(12 * 1024 * 1024);
    node.publish("/big", json!(big)).await;
    within(WAIT, "the message to leave the queue for the socket", async {
        while queued_messages(node.addr).await > 0.0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The client goes away without reading: the write fails, and the message must go back.
    drop(first);
    within(WAIT, "the message to come back to the queue", async {
        while queued_messages(node.addr).await < 1.0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // The same client on a new socket receives it whole.
    let mut second = Ws::open(node.addr).await;
    second.send_connect(&id).await;
    let (delivered, _) = second.deliveries(1).await;
    assert_eq!(delivered[0]["channel"], json!("/big"));
    assert_eq!(delivered[0]["data"].as_str().map(str::len), Some(big.len()), "the message arrives whole");
}

async fn queued_messages(addr: SocketAddr) -> f64 {
    let reply = common::http::request(addr, "GET", "/metrics", &[], "").await;
    reply
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("actioncluster_queued_messages "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// The bound on batches that wait per socket (`MAX_WAITING_BATCHES` in the transport).
const MAX_WAITING_BATCHES: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_reads_no_further_while_64_of_its_batches_wait() {
    if skip_on_reference("our per-socket bound") {
        return;
    }
    let node = TestNode::start().await; // connects are held 2 s
    let mut ws = Ws::open(node.addr).await;
    let anchor = ws.handshake().await;
    let mut held = Vec::new();
    for _ in 0..MAX_WAITING_BATCHES {
        held.push(ws.handshake().await);
    }
    // Each batch waits on its second connect's hold. The first connect keeps the socket bound
    // to one client (a new binding would let the previous client's connect go).
    for (i, client) in held.iter().enumerate() {
        ws.send(&json!([
            {"channel": "/meta/connect", "clientId": anchor, "connectionType": "websocket", "id": format!("a{i}")},
            {"channel": "/meta/connect", "clientId": client, "connectionType": "websocket", "id": format!("c{i}")},
        ]))
        .await;
    }
    // Answered without waiting whenever it is read.
    ws.send(&json!([{"channel": "/meta/nope", "id": "probe"}])).await;

    let mut order = Vec::new();
    while order.len() < 2 * MAX_WAITING_BATCHES + 1 {
        for reply in ws.recv().await {
            order.push(reply["id"].as_str().expect("a reply id").to_string());
        }
    }
    let probe_at = order.iter().position(|id| id == "probe").expect("the probe is answered");
    assert!(
        order[..probe_at].iter().any(|id| id.starts_with('c')),
        "the 65th batch was read while 64 waited: replies in order {order:?}"
    );
    for i in 0..MAX_WAITING_BATCHES {
        assert!(order.contains(&format!("c{i}")), "c{i} answered: {order:?}");
    }
    ws.close().await;
    node.shutdown().await;
}
