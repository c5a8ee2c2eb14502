//! Nodes sharing one redis (faye-redis layout): cross-node delivery, clients hopping between
//! nodes, redis restarts, pub/sub connection kills and garbage collection. Each test starts
//! its own redis-server through the shared helper.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/wire.rs"]
mod wire;

use actioncluster::{Config, Node, ServerEvent};
use redis_server::RedisServer;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use wire::{LpClient, WAIT, WsClient, publish};

async fn node(redis: &RedisServer, timeout: Duration, gc_interval: Duration) -> Node {
    Node::start(Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout,
        gc_interval,
        redis_url: Some(redis.url()),
        ..Config::default()
    })
    .await
    .expect("node starts on redis")
}

async fn two_nodes(redis: &RedisServer) -> (Node, Node) {
    let t = Duration::from_secs(10);
    (node(redis, t, Duration::from_secs(3600)).await, node(redis, t, Duration::from_secs(3600)).await)
}

#[tokio::test]
async fn long_polling_client_receives_what_another_node_publishes() {
    let redis = RedisServer::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let client = LpClient::handshake(n1.local_addr()).await;
    client.subscribe(n1.local_addr(), "/chat/**").await;
    let addr = n1.local_addr();
    let held = tokio::spawn(async move { client.connect(addr, 5000).await });
    let ack = publish(n2.local_addr(), "/chat/room", json!({"text": "hi"})).await;
    assert_eq!(ack["successful"], json!(true));
    let got = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["data"], json!({"text": "hi"}));
    assert_eq!(got[0]["channel"], json!("/chat/room"));
}

#[tokio::test]
async fn websocket_client_receives_what_another_node_publishes() {
    let redis = RedisServer::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let mut ws = WsClient::subscribed(n1.local_addr(), "/ws/*").await;
    for i in 0..20 {
        let ack = publish(n2.local_addr(), "/ws/x", json!({"i": i})).await;
        assert_eq!(ack["successful"], json!(true));
    }
    for i in 0..20 {
        let m = ws.next_message().await;
        assert_eq!(m["data"], json!({"i": i}), "in order");
    }
}

#[tokio::test]
async fn wildcard_subscriptions_match_across_nodes() {
    let redis = RedisServer::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let one = LpClient::handshake(n1.local_addr()).await;
    one.subscribe(n1.local_addr(), "/a/*").await;
    let many = LpClient::handshake(n2.local_addr()).await;
    many.subscribe(n2.local_addr(), "/a/**").await;
    publish(n1.local_addr(), "/a/b/c", json!("deep")).await;
    publish(n2.local_addr(), "/a/b", json!("shallow")).await;
    let got_one = one.connect(n1.local_addr(), 300).await;
    let got_many = many.connect(n2.local_addr(), 300).await;
    let data = |v: &[Value]| v.iter().map(|m| m["data"].clone()).collect::<Vec<_>>();
    assert_eq!(data(&got_one), vec![json!("shallow")]);
    assert_eq!(data(&got_many), vec![json!("deep"), json!("shallow")]);
}

#[tokio::test]
async fn client_hopping_between_nodes_loses_nothing_and_gets_nothing_twice() {
    let redis = RedisServer::start().await;
    let t = Duration::from_secs(10);
    let nodes = [
        node(&redis, t, Duration::from_secs(3600)).await,
        node(&redis, t, Duration::from_secs(3600)).await,
        node(&redis, t, Duration::from_secs(3600)).await,
    ];
    let addrs: Vec<_> = nodes.iter().map(|n| n.local_addr()).collect();
    let request = wire::hop_between_nodes(&addrs, 3, 200).await;
    assert!(request >= 3, "the client really hopped");
}

#[tokio::test]
async fn redis_restart_mid_traffic_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start_durable().await;
    let (n1, n2) = two_nodes(&redis).await;
    let client = LpClient::handshake(n1.local_addr()).await;
    client.subscribe(n1.local_addr(), "/durable").await;

    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..30 {
        if i == 10 {
            redis.kill().await;
            // While redis is away the node answers at once with a Bayeux error, not a hang.
            let reply = tokio::time::timeout(WAIT, async { publish(n2.local_addr(), "/durable", json!(-1)).await })
                .await
                .expect("an answer while redis is down");
            assert_eq!(reply["successful"], json!(false));
            assert!(reply["error"].as_str().unwrap_or("").starts_with("500:"), "{reply}");
            let connect = client.connect_raw(n1.local_addr(), 100).await;
            assert_eq!(connect[0]["successful"], json!(false), "{connect}");
            assert_eq!(connect[0]["advice"]["reconnect"], json!("retry"), "keeps its identity: {connect}");
            redis.restart().await;
        }
        let reply = publish(n2.local_addr(), "/durable", json!(i)).await;
        if reply["successful"] == json!(true) {
            acked.push(i);
        } else {
            refused += 1;
        }
    }
    assert!(acked.len() >= 20, "service resumed after the restart (acked {acked:?}, refused {refused})");

    let mut received: Vec<i64> = Vec::new();
    let collect = async {
        loop {
            let reply = client.connect_raw(n1.local_addr(), 300).await;
            let arr = reply.as_array().cloned().unwrap_or_default();
            if arr.first().map(|r| r["successful"].clone()) != Some(json!(true)) {
                // Follow the advice: retry after its interval.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            received
                .extend(arr.iter().filter(|m| m["channel"] == json!("/durable")).filter_map(|m| m["data"].as_i64()));
            if acked.iter().all(|a| received.contains(a)) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), collect).await.expect("every acknowledged message arrives");
    let unique: HashSet<_> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "no duplicates: {received:?}");
    assert!(!received.contains(&-1), "a refused publish is not delivered");
}

#[tokio::test]
async fn killed_pubsub_connection_is_healed_and_queues_redrained() {
    let redis = RedisServer::start().await;
    let (n1, _n2) = two_nodes(&redis).await;
    let mut ws = WsClient::subscribed(n1.local_addr(), "/gap").await;
    // Prove the socket is bound: a normal publish arrives.
    publish(n1.local_addr(), "/gap", json!("before")).await;
    assert_eq!(ws.next_message().await["data"], json!("before"));

    // A message whose notification was lost (as when redis drops a slow subscriber): queued
    // for the client, never announced.
    let mut con = redis.connection().await;
    let queue = format!("faye/clients/{}/messages", ws.client_id);
    let _: i64 = redis::cmd("RPUSH")
        .arg(&queue)
        .arg(json!({"channel": "/gap", "data": "stranded"}).to_string())
        .query_async(&mut con)
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut con).await.unwrap();
    assert!(killed >= 2, "both nodes' listeners were connected ({killed})");
    assert_eq!(ws.next_message().await["data"], json!("stranded"), "re-drained after the listener came back");

    // And the listener really is back: new notifications flow again.
    publish(n1.local_addr(), "/gap", json!("after")).await;
    assert_eq!(ws.next_message().await["data"], json!("after"));
}

#[tokio::test]
async fn expired_clients_are_collected_by_another_node() {
    let redis = RedisServer::start().await;
    let t = Duration::from_millis(500);
    let creator = node(&redis, t, Duration::from_secs(3600)).await;
    let collector = node(&redis, t, Duration::from_millis(200)).await;
    let mut events = collector.events();
    let client = LpClient::handshake(creator.local_addr()).await;
    client.subscribe(creator.local_addr(), "/gc/me").await;
    let id = client.client_id.clone();
    let collected = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ServerEvent::Disconnect { client_id }) = events.recv().await
                && client_id == id
            {
                return;
            }
        }
    })
    .await;
    assert!(collected.is_ok(), "the collector node destroyed the expired client");
    let mut con = redis.connection().await;
    let score: Option<f64> = redis::cmd("ZSCORE").arg("faye/clients").arg(&id).query_async(&mut con).await.unwrap();
    assert_eq!(score, None);
    let members: Vec<String> = redis::cmd("SMEMBERS").arg("faye/channels/gc/me").query_async(&mut con).await.unwrap();
    assert!(members.is_empty(), "{members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_drains_share_batches_and_each_client_gets_its_own_queue() {
    use actioncluster::engine::redis::{RedisEngine, RedisSettings};
    use actioncluster::engine::{Engine, Envelope};
    use actioncluster::telemetry::Metrics;
    use std::sync::Arc;

    let redis = RedisServer::start().await;
    let engine = RedisEngine::connect(RedisSettings {
        url: redis.url(),
        namespace: "faye".into(),
        timeout: Duration::from_secs(30),
        gc_interval: Duration::from_secs(3600),
        metrics: Arc::new(Metrics::default()),
        max_queue_bytes: 0,
    })
    .await
    .unwrap();
    // More clients than one batch holds, each with its own channel and one shared channel.
    const CLIENTS: usize = 600;
    let mut ids = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let id = engine.create_client().await.unwrap();
        assert!(engine.subscribe(&id, &format!("/own/{i}")).await.unwrap());
        assert!(engine.subscribe(&id, "/shared").await.unwrap());
        ids.push(id);
    }
    let message = |channel: &str, data: Value| {
        let m: actioncluster::Message =
            serde_json::from_value(json!({"channel": channel, "data": data, "id": "1"})).unwrap();
        Envelope::new(&m)
    };
    for i in 0..CLIENTS {
        engine.publish(message(&format!("/own/{i}"), json!(i))).await.unwrap();
    }
    engine.publish(message("/shared", json!("all"))).await.unwrap();

    // Every client drained at once: the drains ride on shared script calls, and each answer
    // must still be its own client's queue.
    let drains = ids.iter().map(|id| engine.take_queued(id));
    let taken = futures_util::future::join_all(drains).await;
    for (i, queue) in taken.into_iter().enumerate() {
        let data: Vec<Value> = queue
            .unwrap()
            .iter()
            .map(|e| serde_json::from_slice::<Value>(&e.encoded).unwrap()["data"].clone())
            .collect();
        assert_eq!(data, [json!(i), json!("all")], "client {i}");
    }
    for id in &ids {
        assert!(engine.take_queued(id).await.unwrap().is_empty(), "a drained queue is empty");
    }
}
