//! The native layout on a Redis Cluster (`--redis redis+cluster://…`): three masters started
//! here (`--cluster-enabled yes`, `redis-cli --cluster create`), the cluster layers on their
//! own plain redis (`--cluster-redis`). The cross-node cases of `native_layout.rs` pass on
//! it, clients and channels spread over all three shards, and the layouts and layers that
//! cannot run on a Redis Cluster are refused with one clear line (exit code 2).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/native_cases.rs"]
mod native_cases;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/wire.rs"]
mod wire;

use actioncluster::{Config, ConfigError, Node, NodeError, RedisLayout};
use redis_server::{RedisCluster, RedisServer};
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use wire::{WsClient, publish};

const BIN: &str = env!("CARGO_BIN_EXE_actioncluster");

/// A Redis Cluster for the engine plus a plain redis for the cluster layers.
struct Setup {
    cluster: RedisCluster,
    layers: RedisServer,
}

impl Setup {
    async fn start() -> Self {
        Self { cluster: RedisCluster::start().await, layers: RedisServer::start().await }
    }

    fn config(&self) -> Config {
        Config {
            host: "127.0.0.1".into(),
            port: 0,
            timeout: Duration::from_secs(10),
            gc_interval: Duration::from_secs(3600),
            redis_url: Some(self.cluster.url()),
            cluster_redis_url: Some(self.layers.url()),
            redis_layout: RedisLayout::Native,
            shutdown_grace: Duration::from_secs(10),
            ..Config::default()
        }
    }
}

#[tokio::test]
async fn messages_cross_nodes_over_long_polling_and_websocket() {
    let setup = Setup::start().await;
    native_cases::messages_cross_nodes_over_long_polling_and_websocket(&setup.config()).await;
}

#[tokio::test]
async fn wildcards_match_across_nodes_and_each_client_gets_a_message_once() {
    let setup = Setup::start().await;
    native_cases::wildcards_match_across_nodes_and_each_client_gets_a_message_once(&setup.config()).await;
}

#[tokio::test]
async fn unsubscribing_through_another_node_stops_delivery() {
    let setup = Setup::start().await;
    native_cases::unsubscribing_through_another_node_stops_delivery(&setup.config()).await;
}

#[tokio::test]
async fn long_polling_client_hopping_between_nodes_gets_every_message_once_in_order() {
    let setup = Setup::start().await;
    native_cases::long_polling_client_hopping_between_nodes_gets_every_message_once_in_order(&setup.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_clients_spread_over_all_three_shards() {
    let setup = Setup::start().await;
    let n1 = native_cases::node(&setup.config()).await;
    let n2 = native_cases::node(&setup.config()).await;
    // 24 clients on the two nodes, each on its own channel; ids spread them over the
    // partitions, one per master.
    const CLIENTS: usize = 24;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let node = if i % 2 == 0 { &n1 } else { &n2 };
        clients.push(WsClient::subscribed(node.local_addr(), &format!("/spread/{i}")).await);
    }
    // Every shard holds some of the layout: each master has clients of its partition.
    let mut per_shard = Vec::new();
    for node in &setup.cluster.nodes {
        let mut con = node.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("faye/native/*/clients").query_async(&mut con).await.unwrap();
        let mut n = 0;
        for key in keys {
            let card: i64 = redis::cmd("ZCARD").arg(&key).query_async(&mut con).await.unwrap();
            n += card;
        }
        per_shard.push(n);
    }
    assert_eq!(per_shard.iter().sum::<i64>(), CLIENTS as i64, "{per_shard:?}");
    assert!(per_shard.iter().all(|n| *n > 0), "clients on every shard: {per_shard:?}");
    // Publishes through the other node reach each channel's subscriber, in order.
    for round in 0..5 {
        for i in 0..CLIENTS {
            let via = if i % 2 == 0 { n2.local_addr() } else { n1.local_addr() };
            let ack = publish(via, &format!("/spread/{i}"), json!({"i": i, "round": round})).await;
            assert_eq!(ack["successful"], json!(true), "{ack}");
        }
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        for round in 0..5 {
            let m = ws.next_message().await;
            assert_eq!(m["channel"], json!(format!("/spread/{i}")));
            assert_eq!(m["data"], json!({"i": i, "round": round}));
        }
    }
    // A wildcard subscriber on one node hears every channel, from every shard.
    let mut all = WsClient::subscribed(n1.local_addr(), "/spread/*").await;
    for i in 0..CLIENTS {
        publish(n2.local_addr(), &format!("/spread/{i}"), json!(i)).await;
    }
    for i in 0..CLIENTS {
        assert_eq!(all.next_message().await["data"], json!(i));
    }
    eprintln!("clients per shard: {per_shard:?}; keys per shard: {:?}", setup.cluster.key_counts().await);
}

#[tokio::test]
async fn what_cannot_run_on_a_redis_cluster_is_refused() {
    let url = "redis+cluster://127.0.0.1:1";
    // Checked before any connection: nothing listens there.
    let faye = Config { redis_url: Some(url.into()), redis_layout: RedisLayout::Faye, ..Config::default() };
    assert!(matches!(Node::start(faye).await, Err(NodeError::Config(ConfigError::ClusterNeedsNativeLayout))));
    let no_layers = Config { redis_url: Some(url.into()), redis_layout: RedisLayout::Native, ..Config::default() };
    assert!(matches!(Node::start(no_layers).await, Err(NodeError::Config(ConfigError::ClusterLayersNeedOwnRedis))));

    let out = Command::new(BIN).args(["--host", "127.0.0.1", "--port", "0", "--redis", url]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("--redis-layout native"), "{err}");

    let out = Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", "0", "--redis", url, "--redis-layout", "native"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("--cluster-redis"), "{err}");
}
