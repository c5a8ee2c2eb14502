//! Operators' endpoints: `/metrics` (Prometheus text) reflects real traffic, `/healthz`
//! follows redis, and a shutdown releases held connects with advice to reconnect.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/wire.rs"]
mod wire;

use actioncluster::{Config, Node};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use wire::{LpClient, WAIT, WsClient, post, publish};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", addr.to_string()).body(Empty::<bytes::Bytes>::new()).unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

fn config() -> Config {
    Config { host: "127.0.0.1".into(), port: 0, timeout: Duration::from_secs(5), ..Config::default() }
}

#[tokio::test]
async fn metrics_count_real_traffic() {
    let node = Node::start(config()).await.unwrap();
    let addr = node.local_addr();
    let mut ws = WsClient::subscribed(addr, "/m/*").await;
    let lp = LpClient::handshake(addr).await;
    lp.subscribe(addr, "/m/x").await;
    for i in 0..3 {
        assert_eq!(publish(addr, "/m/x", json!(i)).await["successful"], json!(true));
    }
    assert_eq!(publish(addr, "/meta/nope", json!(1)).await["successful"], json!(false));
    for _ in 0..3 {
        ws.next_message().await;
    }
    assert_eq!(lp.connect(addr, 1000).await.len(), 3);

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "actioncluster_messages_published_total"), 3.0);
    assert_eq!(metric(&text, "actioncluster_messages_delivered_total"), 6.0);
    assert_eq!(metric(&text, "actioncluster_handshakes_total"), 2.0);
    assert_eq!(metric(&text, "actioncluster_subscriptions"), 2.0);
    assert_eq!(metric(&text, "actioncluster_clients"), 2.0);
    assert_eq!(metric(&text, "actioncluster_errors_total{code=\"403\"}"), 1.0);
    assert_eq!(metric(&text, "actioncluster_connections{transport=\"websocket\"}"), 1.0);
    assert_eq!(metric(&text, "actioncluster_queued_messages"), 0.0);
    assert!(!text.contains("redis"), "no redis metrics on the memory engine");
}

#[tokio::test]
async fn healthz_follows_redis() {
    let mut redis = redis_server::RedisServer::start().await;
    let node = Node::start(Config { redis_url: Some(redis.url()), ..config() }).await.unwrap();
    let addr = node.local_addr();
    assert_eq!(get(addr, "/healthz").await, (200, "ok".to_string()));
    publish(addr, "/r", json!(1)).await;
    let (_, text) = get(addr, "/metrics").await;
    assert!(metric(&text, "actioncluster_redis_commands_total") >= 2.0, "{text}");
    assert!(metric(&text, "actioncluster_redis_round_trip_seconds_count") >= 2.0);

    redis.kill().await;
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (503, "redis unreachable"));
    redis.restart().await;
    let back = tokio::time::timeout(WAIT, async {
        loop {
            if get(addr, "/healthz").await.0 == 200 {
                return;
            }
            // Reconnection backs off on its own schedule; ask again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "healthy again once redis is back");
}

#[tokio::test]
async fn shutdown_releases_held_connects_with_advice_to_reconnect() {
    let node = Node::start(Config { timeout: Duration::from_secs(30), ..config() }).await.unwrap();
    let addr = node.local_addr();
    let client = LpClient::handshake(addr).await;
    let held = tokio::spawn(async move {
        post(addr, &json!({"channel": "/meta/connect", "clientId": client.client_id, "connectionType": "long-polling"}))
            .await
    });
    // Wait until the connect is held (30 s) — the in-flight gauge says so — then shut down:
    // the connect must be answered now.
    let is_held = tokio::time::timeout(WAIT, async {
        loop {
            let (_, text) = get(addr, "/metrics").await;
            if metric(&text, "actioncluster_connections{transport=\"long-polling\"}") >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(is_held.is_ok(), "the connect reached the server");
    let shutdown = tokio::spawn(node.shutdown());
    let (status, reply) = tokio::time::timeout(WAIT, held).await.expect("released promptly").unwrap();
    assert_eq!(status, 200);
    assert_eq!(reply[0]["successful"], json!(true));
    assert_eq!(reply[0]["advice"]["reconnect"], json!("retry"));
    let interval = reply[0]["advice"]["interval"].as_u64().unwrap();
    assert!(interval <= 2000, "{interval}");
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown completes").unwrap();
}

/// `GET /status` on a redis node: its id among the live peers, the task queues (a delayed
/// task counted), the defined task names; after a graceful shutdown the node has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_peers_queues_and_workers() {
    use actioncluster::{EnqueueOptions, TaskDefinition};
    let redis = redis_server::RedisServer::start().await;
    let config = Config { redis_url: Some(redis.url()), task_workers: 2, ..config() };
    let node = Node::builder(config).task(TaskDefinition::new("report", |_| async { Ok(()) })).start().await.unwrap();
    let addr = node.local_addr();
    let mut events = node.cluster().peer_events();
    if !node.cluster().is_member() {
        tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap();
    }
    node.cluster()
        .tasks()
        .enqueue("report", json!({}), EnqueueOptions::delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let (code, body) = get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = node.cluster().node_id().to_string();
    assert_eq!(doc["nodeId"], json!(id));
    assert_eq!(doc["backend"], json!("redis"));
    assert_eq!(doc["peers"], json!([id]));
    assert_eq!(doc["tasks"]["queues"]["delayed"], json!(1));
    assert_eq!(doc["tasks"]["queues"]["global"], json!(0));
    assert_eq!(doc["tasks"]["queues"]["failed"], json!(0));
    assert_eq!(doc["tasks"]["defined"], json!(["report"]));
    let cluster = node.cluster().clone();
    node.shutdown().await;
    assert!(cluster.peers().await.unwrap().is_empty(), "a graceful shutdown leaves the cluster");
}

/// A stand-alone node answers `/status` from its memory backend.
#[tokio::test]
async fn status_on_a_memory_node() {
    let node = Node::start(config()).await.unwrap();
    let (code, body) = get(node.local_addr(), "/status").await;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["backend"], json!("memory"));
    assert_eq!(doc["tasks"]["queues"]["processing"], json!(0));
    node.shutdown().await;
}
