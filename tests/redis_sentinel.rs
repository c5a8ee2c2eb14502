//! Redis behind Sentinel (`--redis redis+sentinel://…`): a master, a replica and three
//! sentinels, all started here on free loopback ports. The master is SIGKILLed under traffic;
//! the nodes follow the failover without a restart (engine in both layouts, its pub/sub
//! listener or inbox reader, and the cluster layers), clients recover by themselves, and
//! every message published after the new master is elected reaches every subscriber. Tasks
//! acknowledged before the failover are still there after it (`WAIT 1`). The figures printed
//! are the failover row of RELIABILITY.md.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/wire.rs"]
mod wire;

use actioncluster::{
    Client, Cluster, ClusterSettings, Config, EnqueueOptions, Node, RedisLayout, TaskDefinition, TransportPreference,
};
use futures_util::StreamExt;
use redis_server::{SentinelSet, poll_until};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config(url: &str, layout: RedisLayout) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout: Duration::from_secs(10),
        redis_url: Some(url.to_string()),
        redis_layout: layout,
        ..Config::default()
    }
}

/// A subscriber that records every number it receives on `/ha/numbers`.
async fn subscriber(node: &Node, preference: TransportPreference) -> Arc<Mutex<Vec<(i64, Instant)>>> {
    let client = Client::builder(node.endpoint())
        .transport(preference)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(15))
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .build()
        .await
        .expect("client connects");
    let mut sub = client.subscribe("/ha/numbers").await.expect("subscribed");
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        let _client = client; // kept alive as long as the subscription reads
        while let Some(m) = sub.next().await {
            if let Some(i) = m.json().as_i64() {
                sink.lock().unwrap().push((i, Instant::now()));
            }
        }
    });
    received
}

/// One publish as the publisher saw it.
struct Sent {
    i: i64,
    started: Instant,
    acked: bool,
}

async fn failover_under_traffic(layout: RedisLayout) {
    // RUST_LOG=actioncluster=debug shows the nodes following the failover.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut set = SentinelSet::start().await;
    let url = set.url();
    let n1 = Node::start(config(&url, layout)).await.expect("node 1 starts on sentinel");
    let n2 = Node::start(config(&url, layout)).await.expect("node 2 starts on sentinel");
    let subscribers = [
        subscriber(&n1, TransportPreference::WebSocket).await,
        subscriber(&n2, TransportPreference::WebSocket).await,
        subscriber(&n1, TransportPreference::LongPolling).await,
        subscriber(&n2, TransportPreference::LongPolling).await,
    ];
    // Publishes alternate between the nodes, one every 10 ms, until told to stop.
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (sent, stop) = (sent.clone(), stop.clone());
        let addrs = [n1.local_addr(), n2.local_addr()];
        tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let reply = wire::publish(addrs[i as usize % 2], "/ha/numbers", json!(i)).await;
                let acked = reply["successful"] == json!(true);
                sent.lock().unwrap().push(Sent { i, started, acked });
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await; // the publishing rate
            }
        })
    };
    let acked_count = |after: Option<Instant>| {
        sent.lock().unwrap().iter().filter(|s| s.acked && after.is_none_or(|t| s.started >= t)).count()
    };
    poll_until(Duration::from_secs(15), "50 publishes before the kill", || async {
        (acked_count(None) >= 50).then_some(())
    })
    .await;

    let killed_at = Instant::now();
    let old = set.kill_master().await;
    let new = set.wait_for_new_master(old, Duration::from_secs(30)).await;
    let elected_at = Instant::now();
    // Traffic recovers by itself: 100 publishes started after the election are acknowledged.
    poll_until(Duration::from_secs(30), "publishes to succeed after the failover", || async {
        (acked_count(Some(elected_at)) >= 100).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();

    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let must_arrive: BTreeSet<i64> = sent.iter().filter(|s| s.acked && s.started >= elected_at).map(|s| s.i).collect();
    let acked_all: BTreeSet<i64> = sent.iter().filter(|s| s.acked).map(|s| s.i).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<usize> = subscribers
            .iter()
            .map(|r| {
                let got: BTreeSet<i64> = r.lock().unwrap().iter().map(|(i, _)| *i).collect();
                must_arrive.difference(&got).count()
            })
            .collect();
        if missing.iter().all(|m| *m == 0) || Instant::now() >= deadline {
            eprintln!("post-election messages missing per subscriber: {missing:?}");
            if std::env::var("HA_DEBUG").is_ok() {
                let client = redis::Client::open(format!("redis://127.0.0.1:{new}/0")).unwrap();
                let mut con = client.get_multiplexed_async_connection().await.unwrap();
                let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.unwrap();
                eprintln!("{stats}");
                let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut con).await.unwrap();
                eprintln!("{clients}");
                let keys: Vec<String> = redis::cmd("KEYS").arg("faye/native/*").query_async(&mut con).await.unwrap();
                for key in keys {
                    let t: String = redis::cmd("TYPE").arg(&key).query_async(&mut con).await.unwrap();
                    let v: redis::Value = match t.as_str() {
                        "stream" => redis::cmd("XINFO").arg("STREAM").arg(&key).query_async(&mut con).await.unwrap(),
                        "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut con).await.unwrap(),
                        "zset" => redis::cmd("ZRANGE")
                            .arg(&key)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES")
                            .query_async(&mut con)
                            .await
                            .unwrap(),
                        _ => redis::Value::Nil,
                    };
                    eprintln!("{key} {t}: {v:?}");
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling under the deadline
    }
    for (n, received) in subscribers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: BTreeSet<i64> = received.lock().unwrap().iter().map(|(i, _)| *i).collect();
            let missing: Vec<i64> = must_arrive.difference(&got).copied().collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "subscriber {n} misses {} messages published after the election: {missing:?} (got {} in all)",
                missing.len(),
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await; // polling under the deadline
        }
        let got: Vec<i64> = received.lock().unwrap().iter().map(|(i, _)| *i).collect();
        let unique: BTreeSet<i64> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "subscriber {n}: nothing delivered twice");
        let lost: Vec<i64> = acked_all.difference(&unique).copied().collect();
        eprintln!("subscriber {n}: {} of {} acknowledged publishes lost: {lost:?}", lost.len(), acked_all.len());
    }
    // Recovery: the first delivery of a message published after the kill, slowest subscriber.
    let started_of = |i: i64| sent.iter().find(|s| s.i == i).map(|s| s.started);
    let recovery = subscribers
        .iter()
        .map(|r| {
            r.lock()
                .unwrap()
                .iter()
                .filter(|(i, _)| started_of(*i).is_some_and(|t| t >= killed_at))
                .map(|(_, at)| *at)
                .min()
                .expect("a delivery after the kill")
                - killed_at
        })
        .max()
        .unwrap();
    let first_ack_after_kill = sent
        .iter()
        .filter(|s| s.acked && s.started >= killed_at)
        .map(|s| s.started)
        .min()
        .expect("acks after the kill");
    let in_window: Vec<&Sent> = sent.iter().filter(|s| s.started >= killed_at && s.started < elected_at).collect();
    let recovered_after = sent
        .iter()
        .filter(|s| s.started >= killed_at)
        .skip_while(|s| !(s.acked && s.started >= elected_at))
        .map(|s| s.started)
        .next()
        .unwrap_or(first_ack_after_kill);
    eprintln!(
        "{layout:?} layout failover: master {old} killed, {new} elected after {:?}; first publish acknowledged again {:?} after the kill; \
         first delivery of a message published after the kill (slowest subscriber) {recovery:?} after it; \
         publishes during the failover: {} sent, {} acknowledged; total sent {}, acknowledged {}",
        elected_at - killed_at,
        recovered_after - killed_at,
        in_window.len(),
        in_window.iter().filter(|s| s.acked).count(),
        sent.len(),
        acked_all.len(),
    );
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faye_layout_follows_a_failover_under_traffic() {
    failover_under_traffic(RedisLayout::Faye).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_layout_follows_a_failover_under_traffic() {
    failover_under_traffic(RedisLayout::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_acknowledged_before_a_failover_survive_it() {
    let mut set = SentinelSet::start().await;
    let cluster = Cluster::redis_with(&set.url(), "enqueuer", ClusterSettings::default()).await.expect("on sentinel");
    cluster.tasks().define(TaskDefinition::new("ha-job", |_ctx| async { Ok(()) }));
    // Enqueue back to back (no workers run: every task stays queued) across the kill.
    let acked = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let enqueuer = {
        let (cluster, acked, failed, stop) = (cluster.clone(), acked.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match cluster.tasks().enqueue("ha-job", json!({ "i": i }), EnqueueOptions::default()).await {
                    Ok(id) => acked.lock().unwrap().push((id, Instant::now())),
                    Err(_) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await; // the enqueue rate
            }
        })
    };
    let count =
        |after: Option<Instant>| acked.lock().unwrap().iter().filter(|(_, t)| after.is_none_or(|a| *t >= a)).count();
    poll_until(Duration::from_secs(15), "100 tasks before the kill", || async { (count(None) >= 100).then_some(()) })
        .await;
    let killed_at = Instant::now();
    let old = set.kill_master().await;
    set.wait_for_new_master(old, Duration::from_secs(30)).await;
    let elected_at = Instant::now();
    poll_until(Duration::from_secs(30), "enqueues to succeed after the failover", || async {
        (count(Some(elected_at)) >= 20).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    enqueuer.await.unwrap();

    let stored: BTreeSet<String> =
        cluster.tasks().records(Some("ha-job")).await.expect("records").into_iter().map(|r| r.id).collect();
    let acked = acked.lock().unwrap().clone();
    let missing: Vec<&String> = acked.iter().map(|(id, _)| id).filter(|id| !stored.contains(*id)).collect();
    let before_kill = acked.iter().filter(|(_, t)| *t < killed_at).count();
    eprintln!(
        "tasks across a failover: {} acknowledged ({before_kill} before the kill), {} enqueues failed during it, {} lost",
        acked.len(),
        failed.load(std::sync::atomic::Ordering::Relaxed),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged tasks lost in the failover: {missing:?}");
}

#[tokio::test]
async fn a_sentinel_url_without_a_master_name_is_refused() {
    let err = Node::start(config("redis+sentinel://127.0.0.1:1", RedisLayout::Faye)).await.err().expect("refused");
    assert!(err.to_string().contains("MASTER_NAME"), "{err}");
}
