//! Stats (spec §C5) against both backends: counters in the cluster and node hashes, gauges
//! in node hashes summed at read time, nested `get_all`, node deletion, exact sums from many
//! nodes; the node id rule in keys and the node's wiring.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/cluster_harness.rs"]
mod harness;
#[path = "common/redis_server.rs"]
mod redis_server;

use actioncluster::{ClusterError, Config, Node, Numeric, Scope};
use harness::{Harness, Kind, WAIT, both_backends};
use serde_json::json;

both_backends!(
    counters_go_to_cluster_and_node,
    gauges_are_summed_over_live_nodes,
    float_and_mixed_increments,
    race_increments_from_many_nodes_sum_exactly,
);

async fn counters_go_to_cluster_and_node(kind: Kind) {
    let h = Harness::new(kind).await;
    let a = h.cluster.stats();
    let b_node = h.node("node-b:2").await;
    let b = b_node.stats();
    assert_eq!(a.get("a:b", Scope::Cluster).await.unwrap(), None);
    a.increment("a:b", 1).await.unwrap();
    a.increment("a:b", 1).await.unwrap();
    a.increment("a:c", 2.5).await.unwrap();
    b.increment("a:b", 5).await.unwrap();
    assert_eq!(a.get("a:b", Scope::Cluster).await.unwrap(), Some(Numeric::Int(7)));
    assert_eq!(a.get("a:b", Scope::Node("node-a:1".into())).await.unwrap(), Some(Numeric::Int(2)));
    assert_eq!(a.get("a:b", Scope::Node("node-b:2".into())).await.unwrap(), Some(Numeric::Int(5)));
    assert_eq!(a.get("a:b", Scope::Node("nobody:0".into())).await.unwrap(), None);
    assert_eq!(
        a.get_all().await.unwrap(),
        json!({"global": {"a": {"b": 7, "c": 2.5}}, "local": {"a": {"b": 2, "c": 2.5}}})
    );
    assert_eq!(b.get_all().await.unwrap()["local"], json!({"a": {"b": 5}}));
    assert!(a.delete_node("node-b:2").await.unwrap());
    assert!(!a.delete_node("node-b:2").await.unwrap());
    assert_eq!(a.get("a:b", Scope::Node("node-b:2".into())).await.unwrap(), None);
    assert_eq!(a.get("a:b", Scope::Cluster).await.unwrap(), Some(Numeric::Int(7)), "counters stay cluster-wide");
}

async fn gauges_are_summed_over_live_nodes(kind: Kind) {
    let h = Harness::new(kind).await;
    let a = h.cluster.stats();
    let b_node = h.node("node-b:2").await;
    let b = b_node.stats();
    a.set("connections:active", 5).await.unwrap();
    b.set("connections:active", 7).await.unwrap();
    b.set("connections:active", 8).await.unwrap();
    assert_eq!(a.get("connections:active", Scope::Cluster).await.unwrap(), Some(Numeric::Int(5)), "only self live");
    let live = ["node-a:1", "node-b:2"];
    assert_eq!(a.get_across("connections:active", &live).await.unwrap(), Some(Numeric::Int(13)));
    assert_eq!(a.get_across("connections:active", &["node-b:2"]).await.unwrap(), Some(Numeric::Int(8)));
    let all = a.get_all_across(&live).await.unwrap();
    assert_eq!(all, json!({"global": {"connections": {"active": 13}}, "local": {"connections": {"active": 5}}}));
    if let Some(mut raw) = h.raw().await {
        let in_cluster: bool = redis::cmd("HEXISTS")
            .arg("actionHero:stats")
            .arg("connections:active")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(!in_cluster, "gauges never go to the cluster hash");
    }
    assert!(a.delete_node("node-b:2").await.unwrap());
    assert_eq!(a.get_across("connections:active", &live).await.unwrap(), Some(Numeric::Int(5)), "dead node gone");
    a.set("ratio", 0.25).await.unwrap();
    assert_eq!(a.get("ratio", Scope::Node("node-a:1".into())).await.unwrap(), Some(Numeric::Float(0.25)));
}

async fn float_and_mixed_increments(kind: Kind) {
    let h = Harness::new(kind).await;
    let s = h.cluster.stats();
    for _ in 0..3 {
        s.increment("f", 0.5).await.unwrap();
    }
    assert_eq!(s.get("f", Scope::Cluster).await.unwrap(), Some(Numeric::Float(1.5)));
    s.increment("f", 1).await.unwrap();
    assert_eq!(s.get("f", Scope::Cluster).await.unwrap(), Some(Numeric::Float(2.5)), "integer delta on a float");
    s.increment("f", 0.5).await.unwrap();
    assert_eq!(s.get("f", Scope::Node("node-a:1".into())).await.unwrap(), Some(Numeric::Int(3)));
    s.increment("i", 2.0).await.unwrap();
    s.increment("i", -5).await.unwrap();
    assert_eq!(s.get("i", Scope::Cluster).await.unwrap(), Some(Numeric::Int(-3)));
    assert!(matches!(s.increment("i", f64::INFINITY).await, Err(ClusterError::InvalidArgument(_))));
}

/// Four nodes × eight tasks: cluster and node totals are exact.
async fn race_increments_from_many_nodes_sum_exactly(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for n in 0..4 {
        let node = h.node(&format!("10.0.0.{n}:80")).await;
        ids.push(node.node_id().to_string());
        for _ in 0..8 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    node.stats().increment("hits", 1).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    let s = h.cluster.stats();
    assert_eq!(s.get("hits", Scope::Cluster).await.unwrap(), Some(Numeric::Int(800)));
    for id in ids {
        assert_eq!(s.get("hits", Scope::Node(id.clone())).await.unwrap(), Some(Numeric::Int(200)), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ids_have_dashes_inside_keys_only() {
    let h = Harness::new(Kind::Redis).await;
    let node = h.node("10.0.0.5:8080").await;
    node.stats().increment("x:y", 1).await.unwrap();
    let mut raw = h.raw().await.unwrap();
    let v: String =
        redis::cmd("HGET").arg("actionHero:stats:10.0.0.5-8080").arg("x:y").query_async(&mut raw).await.unwrap();
    assert_eq!(v, "1");
    let v: String = redis::cmd("HGET").arg("actionHero:stats").arg("x:y").query_async(&mut raw).await.unwrap();
    assert_eq!(v, "1");
    assert_eq!(&*node.node_id(), "10.0.0.5:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_number_is_refused_with_nothing_written() {
    // Only redis can hold a value another program wrote.
    let h = Harness::new(Kind::Redis).await;
    let mut raw = h.raw().await.unwrap();
    let _: i64 = redis::cmd("HSET").arg("actionHero:stats").arg("bad").arg("x").query_async(&mut raw).await.unwrap();
    let s = h.cluster.stats();
    let err = s.increment("bad", 1).await.unwrap_err();
    assert!(matches!(err, ClusterError::NotANumber), "{err:?}");
    assert_eq!(s.get("bad", Scope::Node("node-a:1".into())).await.unwrap(), None, "the node hash was not written");
    assert!(matches!(s.get("bad", Scope::Cluster).await, Err(ClusterError::NotANumber)));
    s.increment("good", 1).await.unwrap();
    assert_eq!(s.get_all().await.unwrap()["global"], json!({"good": 1}), "get_all leaves the bad field out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_builds_its_cluster_from_its_redis_url() {
    let redis = redis_server::RedisServer::start().await;
    let config = Config { host: "127.0.0.1".into(), port: 0, redis_url: Some(redis.url()), ..Config::default() };
    let node = Node::start(config).await.unwrap();
    let port = node.local_addr().port();
    let cluster = node.cluster();
    assert!(cluster.is_redis());
    // Default id: host:port:pid:incarnation (§C1.4).
    let prefix = format!("127.0.0.1:{port}:{}:", std::process::id());
    assert!(cluster.node_id().starts_with(&prefix), "{}", cluster.node_id());
    assert_eq!(cluster.node_id().len(), prefix.len() + 4);
    cluster.stats().increment("hits", 1).await.unwrap();
    cluster.cache().save("k", json!("v"), None).await.unwrap();
    let mut raw = redis.connection().await;
    let hits: String = redis::cmd("HGET")
        .arg(format!("actionHero:stats:{}", cluster.node_id().replace(':', "-")))
        .arg("hits")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(hits, "1");
    let exists: bool = redis::cmd("HEXISTS").arg("actionHero:cache").arg("k").query_async(&mut raw).await.unwrap();
    assert!(exists);
    node.shutdown().await;

    let config = Config { host: "127.0.0.1".into(), port: 0, ..Config::default() };
    let node = Node::start(config).await.unwrap();
    assert!(!node.cluster().is_redis());
    node.cluster().cache().save("k", json!(1), None).await.unwrap();
    assert_eq!(node.cluster().cache().load("k").await.unwrap().value, json!(1));
    node.shutdown().await;
}
