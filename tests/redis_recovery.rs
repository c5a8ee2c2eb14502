//! Recovery after redis loses its data (faye-redis layout). A redis restarted without
//! persistence no longer knows the clients a node holds: every held client, on every
//! transport, must be told at once with Faye's unknown-client reply (`401`, `reconnect:
//! "handshake"`) rather than kept silent until its connect times out; then it handshakes
//! again and receives. With AOF on, nothing is lost: sessions and queues survive.
//!
//! The nodes hold connects for 60 s and every wait here is bounded by 15 s, so a node that
//! kept its clients until the timeout fails these tests.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;
#[path = "common/wire.rs"]
mod wire;

use actioncluster::{Config, Node};
use common::eventsource::EventStream;
use common::redis_server::RedisServer;
use serde_json::{Value, json};
use std::time::Duration;
use wire::{LpClient, WAIT, WsClient, post, publish};

/// Longer than any wait of these tests: a held connect answered only at its timeout fails them.
const HOLD: Duration = Duration::from_secs(60);

async fn node(redis: &RedisServer) -> Node {
    Node::start(Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout: HOLD,
        gc_interval: Duration::from_secs(3600),
        redis_url: Some(redis.url()),
        // Every test client comes from 127.0.0.1: no per-address handshake limit.
        handshake_rate: 0.0,
        ..Config::default()
    })
    .await
    .expect("node starts on redis")
}

/// Waits (bounded) until `node` holds `n` sessions: its clients' connects have arrived. No
/// event announces a held connect; the session count is the observable state.
async fn sessions(node: &Node, n: usize) {
    common::within(WAIT, "sessions on the node", async {
        while node.server().session_count() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn assert_unknown_client(reply: &Value, client_id: &str) {
    assert_eq!(reply["channel"], json!("/meta/connect"), "{reply}");
    assert_eq!(reply["successful"], json!(false), "{reply}");
    assert_eq!(reply["error"], json!(format!("401:{client_id}:Unknown client")), "{reply}");
    assert_eq!(reply["advice"]["reconnect"], json!("handshake"), "{reply}");
    assert!(reply.get("clientId").is_none(), "a refused connect carries no clientId: {reply}");
}

/// Publishes through `addr` until redis answers again (publishes are refused while it is away).
async fn publish_acked(addr: std::net::SocketAddr, channel: &str, data: Value) {
    common::within(WAIT, "a publish acknowledged after the restart", async {
        loop {
            if publish(addr, channel, data.clone()).await["successful"] == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn websocket_client_is_told_to_handshake_again_when_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    let (n1, n2) = (node(&redis).await, node(&redis).await);
    let mut ws = WsClient::subscribed(n1.local_addr(), "/recover").await;
    publish(n2.local_addr(), "/recover", json!("before")).await;
    assert_eq!(ws.next_message().await["data"], json!("before"));
    let old_id = ws.client_id.clone();

    redis.restart().await;

    // The held connect is answered now, with Faye's unknown-client reply.
    let reply = ws.next_reply("/meta/connect").await;
    assert_unknown_client(&reply, &old_id);

    // As a Faye client does: handshake again on the same socket, resubscribe, receive.
    ws.handshake_and_subscribe("/recover").await;
    assert_ne!(ws.client_id, old_id);
    publish_acked(n2.local_addr(), "/recover", json!("after")).await;
    assert_eq!(ws.next_message().await["data"], json!("after"));
}

#[tokio::test]
async fn held_long_polling_connect_is_answered_401_when_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    let (n1, n2) = (node(&redis).await, node(&redis).await);
    let client = LpClient::handshake(n1.local_addr()).await;
    client.subscribe(n1.local_addr(), "/recover").await;
    let addr = n1.local_addr();
    let id = client.client_id.clone();
    let held = tokio::spawn(async move {
        post(addr, &json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling"})).await
    });
    sessions(&n1, 1).await;

    redis.restart().await;

    let (status, reply) = common::within(WAIT, "the held connect answered", held).await.unwrap();
    assert_eq!(status, 200);
    assert_unknown_client(&reply[0], &client.client_id);

    let again = LpClient::handshake(n1.local_addr()).await;
    again.subscribe(n1.local_addr(), "/recover").await;
    publish_acked(n2.local_addr(), "/recover", json!("after")).await;
    let got = again.connect(n1.local_addr(), 1000).await;
    assert_eq!(got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(), vec![json!("after")]);
}

#[tokio::test]
async fn eventsource_client_is_sent_401_when_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    let n1 = node(&redis).await;
    let client = LpClient::handshake(n1.local_addr()).await;
    client.subscribe(n1.local_addr(), "/recover").await;
    let mut stream = EventStream::open(n1.local_addr(), &client.client_id).await;
    assert_eq!(stream.status, 200);
    // The EventSource client's connect (answered at once: its messages come on the stream).
    let (_, reply) = post(
        n1.local_addr(),
        &json!({"channel": "/meta/connect", "clientId": client.client_id, "connectionType": "eventsource"}),
    )
    .await;
    assert_eq!(reply[0]["successful"], json!(true), "{reply}");
    publish(n1.local_addr(), "/recover", json!("before")).await;
    assert_eq!(stream.next_data().await[0]["data"], json!("before"));

    redis.restart().await;

    // No connect is held: the news comes on the stream, as a connect reply Faye acts on.
    let pushed = stream.next_data().await;
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_unknown_client(&pushed[0], &client.client_id);
}

/// The reconnect storm after a restart: every held client is told at once, all handshake
/// again together and all receive. `RELIABILITY_CLIENTS` sets how many (default 40).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_held_clients_are_all_told_at_once_and_all_come_back() {
    let n: usize = std::env::var("RELIABILITY_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let mut redis = RedisServer::start().await;
    let n1 = node(&redis).await;
    let mut sockets = Vec::new();
    for _ in 0..n {
        sockets.push(WsClient::subscribed(n1.local_addr(), "/many").await);
    }
    sessions(&n1, n).await;

    redis.restart().await;
    let back = std::time::Instant::now();

    let (resubscribed_tx, mut resubscribed) = tokio::sync::mpsc::unbounded_channel();
    let (release_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let resubscribed_tx = resubscribed_tx.clone();
        let mut release = release_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let id = ws.client_id.clone();
            assert_unknown_client(&ws.next_reply("/meta/connect").await, &id);
            let told = back.elapsed();
            ws.handshake_and_subscribe("/many").await;
            resubscribed_tx.send(()).unwrap();
            release.recv().await.unwrap();
            assert_eq!(ws.next_message().await["data"], json!("after"));
            told
        }));
    }
    common::within(WAIT, "every client handshaken and subscribed again", async {
        for _ in 0..n {
            resubscribed.recv().await.unwrap();
        }
    })
    .await;
    let all_back = back.elapsed();
    release_tx.send(()).unwrap();
    publish_acked(n1.local_addr(), "/many", json!("after")).await;
    let mut last_told = Duration::ZERO;
    for t in tasks {
        last_told = last_told.max(common::within(WAIT, "a client receives", t).await.unwrap());
    }
    eprintln!(
        "RELIABILITY {}",
        json!({"scenario": "reconnect-storm-after-redis-restart", "clients": n,
               "all_told_ms": last_told.as_millis() as u64, "all_resubscribed_ms": all_back.as_millis() as u64,
               "lost": 0})
    );
}

#[tokio::test]
async fn with_aof_a_restart_keeps_sessions_and_queued_messages() {
    let mut redis = RedisServer::start_durable().await;
    let (n1, n2) = (node(&redis).await, node(&redis).await);
    let mut ws = WsClient::subscribed(n1.local_addr(), "/durable").await;
    publish(n2.local_addr(), "/durable", json!("before")).await;
    assert_eq!(ws.next_message().await["data"], json!("before"));
    // A long-polling client that is not connected: what is published waits in its queue.
    let lp = LpClient::handshake(n1.local_addr()).await;
    lp.subscribe(n1.local_addr(), "/durable").await;
    for i in 0..3 {
        assert_eq!(publish(n2.local_addr(), "/durable", json!(i)).await["successful"], json!(true));
    }
    for i in 0..3 {
        assert_eq!(ws.next_message().await["data"], json!(i));
    }

    redis.restart().await;

    // The websocket client is still known: no 401, and it receives under the same id.
    publish_acked(n2.local_addr(), "/durable", json!("after")).await;
    assert_eq!(ws.next_message().await["data"], json!("after"));
    // The long-polling client's queue survived the restart.
    let got: Vec<Value> = lp.connect(n1.local_addr(), 1000).await.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(got, vec![json!(0), json!(1), json!(2), json!("after")]);
}
