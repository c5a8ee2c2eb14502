//! The shared cache (spec §C4) against both backends, and the §C10.8 races: save vs load (no
//! resurrection, no lost update), sweeper vs re-save, lock contention between nodes, and
//! increments from many nodes summing exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/cluster_harness.rs"]
mod harness;
#[path = "common/redis_server.rs"]
mod redis_server;

use actioncluster::{Cluster, ClusterError, Numeric, Scope};
use harness::{Harness, Kind, WAIT, both_backends};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn cached_objects(c: &Cluster) -> i64 {
    c.stats().get("cache:cachedObjects", Scope::Cluster).await.unwrap().map_or(0, |n| n.as_i64().unwrap())
}

async fn assert_count_exact(c: &Cluster) {
    assert_eq!(cached_objects(c).await, c.cache().size().await.unwrap() as i64, "cache:cachedObjects drifted");
}

both_backends!(
    save_and_load_every_json_type,
    missing_keys_and_destroy,
    expiry_and_sweeper,
    negative_ttl_is_already_expired,
    sliding_expiry_on_load,
    locks_between_nodes,
    lock_expiry_and_refresh,
    increment_semantics,
    cached_objects_counts_only_creations_and_deletions,
    race_save_vs_load_loses_no_update,
    race_destroy_vs_load_never_resurrects,
    race_sweeper_vs_resave,
    race_lock_contention_between_nodes,
    race_increments_from_many_nodes_sum_exactly,
);

async fn save_and_load_every_json_type(kind: Kind) {
    let h = Harness::new(kind).await;
    let cache = h.cluster.cache();
    let values = [
        json!("text"),
        json!(42),
        json!(-1.25),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
        json!({"list": [1, "two", {"three": []}], "nested": {"k": null}}),
    ];
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        let before = now_ms();
        assert!(cache.save(&key, v.clone(), None).await.unwrap());
        let first = cache.load(&key).await.unwrap();
        assert_eq!(&first.value, v);
        assert_eq!(first.expire_timestamp, None);
        assert!((first.created_at - before).abs() < 5_000, "createdAt {} vs now {before}", first.created_at);
        let read = first.read_at.unwrap();
        assert!(read >= first.created_at);
        let second = cache.load(&key).await.unwrap();
        assert_eq!(&second.value, v);
        assert_eq!(second.created_at, first.created_at);
        assert!(second.read_at.unwrap() >= read);
    }
    assert_eq!(cache.size().await.unwrap(), values.len() as u64);
    // Overwrite: new value, new createdAt.
    h.advance(Duration::from_millis(20)).await;
    let old = cache.load("k0").await.unwrap();
    assert!(cache.save("k0", json!("new"), None).await.unwrap());
    let new = cache.load("k0").await.unwrap();
    assert_eq!(new.value, json!("new"));
    assert!(new.created_at > old.created_at);

    if let Some(mut raw) = h.raw().await {
        // The original's layout: one hash, the wrapper with exactly these four fields.
        assert!(cache.save("layout", json!({"a": 1}), Some(60_000)).await.unwrap());
        let text: String =
            redis::cmd("HGET").arg("actionHero:cache").arg("layout").query_async(&mut raw).await.unwrap();
        let wrapper: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        let mut fields: Vec<&str> = wrapper.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["createdAt", "expireTimestamp", "readAt", "value"]);
        assert_eq!(wrapper["value"], json!({"a": 1}));
        assert_eq!(wrapper["readAt"], Value::Null);
        assert_eq!(wrapper["expireTimestamp"].as_i64().unwrap(), wrapper["createdAt"].as_i64().unwrap() + 60_000);
        let loaded = cache.load("layout").await.unwrap();
        let text: String =
            redis::cmd("HGET").arg("actionHero:cache").arg("layout").query_async(&mut raw).await.unwrap();
        let wrapper: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(wrapper["readAt"].as_i64(), loaded.read_at, "load writes readAt back");
    }
}

async fn missing_keys_and_destroy(kind: Kind) {
    let h = Harness::new(kind).await;
    let cache = h.cluster.cache();
    let err = cache.load("nope").await.unwrap_err();
    assert!(matches!(err, ClusterError::NotFound));
    assert_eq!(err.to_string(), "Object not found");
    assert!(!cache.destroy("nope").await.unwrap());
    cache.save("k", json!(1), None).await.unwrap();
    assert!(cache.destroy("k").await.unwrap());
    assert!(!cache.destroy("k").await.unwrap());
    assert!(matches!(cache.load("k").await, Err(ClusterError::NotFound)));
    assert_eq!(cache.size().await.unwrap(), 0);
}

async fn expiry_and_sweeper(kind: Kind) {
    let h = Harness::new(kind).await;
    let cache = h.cluster.cache();
    cache.save("short", json!("v"), Some(1_000)).await.unwrap();
    cache.save("forever", json!("w"), None).await.unwrap();
    let entry = cache.load("short").await.unwrap();
    assert_eq!(entry.expire_timestamp, Some(entry.created_at + 1_000));
    assert!(cache.sweep().await.unwrap().is_empty(), "nothing has expired yet");
    h.advance(Duration::from_millis(1_100)).await;
    let err = cache.load("short").await.unwrap_err();
    assert!(matches!(err, ClusterError::Expired));
    assert_eq!(err.to_string(), "Object expired");
    assert_eq!(cache.size().await.unwrap(), 2, "load does not delete; size counts expired entries");
    assert_eq!(cache.sweep().await.unwrap(), vec!["short".to_string()]);
    assert!(matches!(cache.load("short").await, Err(ClusterError::NotFound)));
    assert_eq!(cache.load("forever").await.unwrap().value, json!("w"));
    assert_eq!(cache.size().await.unwrap(), 1);
    assert_count_exact(&h.cluster).await;
}

async fn negative_ttl_is_already_expired(kind: Kind) {
    let h = Harness::new(kind).await;
    let cache = h.cluster.cache();
    assert!(cache.save("past", json!(1), Some(-1)).await.unwrap());
    assert!(matches!(cache.load("past").await, Err(ClusterError::Expired)));
    assert_eq!(cache.sweep().await.unwrap(), vec!["past".to_string()]);
    assert_eq!(cache.size().await.unwrap(), 0);
}

async fn sliding_expiry_on_load(kind: Kind) {
    let h = Harness::new(kind).await;
    let cache = h.cluster.cache();
    cache.save("s", json!("v"), Some(1_000)).await.unwrap();
    cache.save("n", json!("v"), None).await.unwrap();
    let e = cache.load_extending("s", Duration::from_secs(20)).await.unwrap();
    assert_eq!(e.expire_timestamp, Some(e.read_at.unwrap() + 20_000));
    assert_eq!(cache.load_extending("n", Duration::from_secs(20)).await.unwrap().expire_timestamp, None);
    h.advance(Duration::from_millis(1_100)).await;
    assert_eq!(cache.load("s").await.unwrap().value, json!("v"), "the extension outlives the original ttl");
    assert_eq!(cache.load("s").await.unwrap().expire_timestamp, e.expire_timestamp, "plain load keeps it");
}

async fn locks_between_nodes(kind: Kind) {
    let h = Harness::new(kind).await;
    let a = h.cluster.cache();
    let b_node = h.node("node-b:2").await;
    let b = b_node.cache();
    a.save("k", json!(1), None).await.unwrap();
    assert!(a.lock("k", Duration::from_secs(30)).await.unwrap());
    assert!(a.lock("k", Duration::from_secs(30)).await.unwrap(), "already ours");
    assert!(!b.lock("k", Duration::from_secs(30)).await.unwrap());
    assert!(a.check_lock("k", None).await.unwrap());
    assert!(!b.check_lock("k", None).await.unwrap());
    assert!(!b.check_lock("k", Some(Duration::from_millis(250))).await.unwrap(), "still held after waiting");
    let err = b.save("k", json!(2), None).await.unwrap_err();
    assert!(matches!(err, ClusterError::Locked));
    assert_eq!(err.to_string(), "Object Locked");
    assert!(matches!(b.destroy("k").await, Err(ClusterError::Locked)));
    assert!(matches!(b.increment("k", 1).await, Err(ClusterError::Locked)));
    assert_eq!(b.load("k").await.unwrap().value, json!(1), "loads are allowed under another node's lock");
    assert!(a.save("k", json!(3), None).await.unwrap(), "the holder may write");
    assert!(b.save("other", json!(1), None).await.unwrap(), "other keys are free");
    assert!(!b.unlock("k").await.unwrap(), "only the holder unlocks");
    assert!(a.unlock("k").await.unwrap());
    assert!(!a.unlock("k").await.unwrap());
    assert!(b.check_lock("k", None).await.unwrap());
    assert!(b.lock("k", Duration::from_secs(30)).await.unwrap());
    assert!(matches!(a.save("k", json!(4), None).await, Err(ClusterError::Locked)));
    assert!(matches!(a.lock("k", Duration::ZERO).await, Err(ClusterError::InvalidArgument(_))));
    if let Some(mut raw) = h.raw().await {
        let owner: String = redis::cmd("GET").arg("actionHero:cache:lock:k").query_async(&mut raw).await.unwrap();
        assert_eq!(owner, "node-b:2", "the lock holds the raw node id");
        let pttl: i64 = redis::cmd("PTTL").arg("actionHero:cache:lock:k").query_async(&mut raw).await.unwrap();
        assert!(pttl > 0 && pttl <= 30_000);
    }
}

async fn lock_expiry_and_refresh(kind: Kind) {
    let h = Harness::new(kind).await;
    let a = h.cluster.cache();
    let b_node = h.node("node-b:2").await;
    let b = b_node.cache();
    assert!(a.lock("k", Duration::from_millis(1_000)).await.unwrap());
    assert!(a.lock("k", Duration::from_secs(30)).await.unwrap(), "refresh");
    h.advance(Duration::from_millis(1_100)).await;
    assert!(!b.lock("k", Duration::from_secs(1)).await.unwrap(), "the refreshed ttl still holds");
    assert!(a.lock("k", Duration::from_millis(1_000)).await.unwrap(), "shorten again");
    h.advance(Duration::from_millis(1_100)).await;
    assert!(b.check_lock("k", None).await.unwrap(), "expired");
    assert!(b.lock("k", Duration::from_secs(30)).await.unwrap());
    assert!(!a.unlock("k").await.unwrap(), "a's expired lock does not release b's");
    assert!(!a.check_lock("k", None).await.unwrap());
}

async fn increment_semantics(kind: Kind) {
    let h = Harness::new(kind).await;
    let cache = h.cluster.cache();
    assert_eq!(cache.increment("n", 5).await.unwrap(), Numeric::Int(5));
    assert_eq!(cache.increment("n", -2).await.unwrap(), Numeric::Int(3));
    assert_eq!(cache.increment("n", 0.5).await.unwrap(), Numeric::Float(3.5));
    assert_eq!(cache.increment("n", 0.5).await.unwrap(), Numeric::Int(4));
    let n = cache.load("n").await.unwrap();
    assert_eq!(n.value, json!(4));
    assert_eq!(n.expire_timestamp, None);

    cache.save("t", json!(10), Some(60_000)).await.unwrap();
    let before = cache.load("t").await.unwrap();
    assert_eq!(cache.increment("t", 1).await.unwrap(), Numeric::Int(11));
    let after = cache.load("t").await.unwrap();
    assert_eq!(after.value, json!(11));
    assert_eq!(after.expire_timestamp, before.expire_timestamp, "expireTimestamp kept");
    assert_eq!(after.created_at, before.created_at);

    cache.save("e", json!(100), Some(-1)).await.unwrap();
    assert_eq!(cache.increment("e", 1).await.unwrap(), Numeric::Int(1), "an expired entry starts from 0");
    assert_eq!(cache.load("e").await.unwrap().expire_timestamp, None);

    cache.save("s", json!("text"), None).await.unwrap();
    let err = cache.increment("s", 1).await.unwrap_err();
    assert!(matches!(err, ClusterError::NotANumber));
    assert_eq!(err.to_string(), "NotANumber");
    assert_eq!(cache.load("s").await.unwrap().value, json!("text"), "unchanged");
    assert!(matches!(cache.increment("n", f64::NAN).await, Err(ClusterError::InvalidArgument(_))));
    assert_count_exact(&h.cluster).await;
}

async fn cached_objects_counts_only_creations_and_deletions(kind: Kind) {
    let h = Harness::new(kind).await;
    let c = &h.cluster;
    let cache = c.cache();
    cache.save("a", json!(1), None).await.unwrap();
    cache.save("a", json!(2), None).await.unwrap();
    cache.save("b", json!(1), None).await.unwrap();
    assert_eq!(cached_objects(c).await, 2, "an overwrite is not a new object");
    cache.destroy("a").await.unwrap();
    cache.destroy("a").await.unwrap();
    cache.destroy("zzz").await.unwrap();
    assert_eq!(cached_objects(c).await, 1, "a miss does not decrement");
    cache.save("c", json!(1), Some(-1)).await.unwrap();
    cache.increment("d", 1).await.unwrap();
    assert_eq!(cached_objects(c).await, 3);
    cache.sweep().await.unwrap();
    assert_eq!(cached_objects(c).await, 2);
    assert_count_exact(c).await;
    let all = c.stats().get_all().await.unwrap();
    assert_eq!(all["global"]["cache"]["cachedObjects"], json!(2));
}

/// Runs `op` in a loop on `nodes` further nodes (`{prefix}:{n}`), all released together with
/// `writer`, until the writer is done (each op runs at least once); the sum of what the ops
/// answered.
async fn race<Op, OpFut>(h: &Harness, prefix: &str, nodes: usize, op: Op, writer: impl Future<Output = ()>) -> usize
where
    Op: Fn(Cluster) -> OpFut + Clone + Send + 'static,
    OpFut: Future<Output = usize> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(tokio::sync::Barrier::new(nodes + 1));
    let mut tasks = Vec::new();
    for n in 0..nodes {
        let node = h.node(&format!("{prefix}:{n}")).await;
        let (stop, start, op) = (stop.clone(), start.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut total = 0;
            loop {
                total += op(node.clone()).await;
                if stop.load(Ordering::Relaxed) {
                    return total;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::timeout(WAIT, async {
        start.wait().await;
        writer.await;
    })
    .await
    .expect("writer finished");
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in tasks {
        total += tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
    total
}

/// A writer saves increasing values and immediately reads each back while other nodes load
/// the key in a loop: a load's readAt write-back must never put an older value back.
async fn race_save_vs_load_loses_no_update(kind: Kind) {
    let h = Harness::new(kind).await;
    h.cluster.cache().save("k", json!(-1), None).await.unwrap();
    let cache = h.cluster.cache().clone();
    let load = |node: Cluster| async move {
        node.cache().load("k").await.unwrap();
        1
    };
    let loads = race(&h, "reader", 3, load, async {
        for i in 0..300 {
            cache.save("k", json!(i), None).await.unwrap();
            assert_eq!(cache.load("k").await.unwrap().value, json!(i), "update {i} lost");
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(cache.load("k").await.unwrap().value, json!(299));
    assert!(loads >= 3);
}

/// A writer saves and destroys while other nodes load: a destroyed key never comes back.
async fn race_destroy_vs_load_never_resurrects(kind: Kind) {
    let h = Harness::new(kind).await;
    let cache = h.cluster.cache().clone();
    let load = |node: Cluster| async move {
        match node.cache().load("k").await {
            Ok(_) | Err(ClusterError::NotFound) => 0,
            Err(e) => panic!("unexpected {e}"),
        }
    };
    race(&h, "reader", 3, load, async {
        for i in 0..300 {
            cache.save("k", json!(i), None).await.unwrap();
            assert!(cache.destroy("k").await.unwrap());
            tokio::task::yield_now().await;
            match cache.load("k").await {
                Err(ClusterError::NotFound) => {}
                other => panic!("destroyed key {i} came back: {other:?}"),
            }
        }
    })
    .await;
    assert!(matches!(cache.load("k").await, Err(ClusterError::NotFound)));
    assert_eq!(cache.size().await.unwrap(), 0);
    assert_count_exact(&h.cluster).await;
}

/// Two nodes sweep continuously while a writer saves each key expired and at once re-saves
/// it fresh (so sweeps keep finding expired entries that are about to be replaced): no fresh
/// entry is ever swept.
async fn race_sweeper_vs_resave(kind: Kind) {
    let h = Harness::new(kind).await;
    let cache = h.cluster.cache().clone();
    const N: usize = 300;
    let sweep = |node: Cluster| async move { node.cache().sweep().await.unwrap().len() };
    let swept = race(&h, "sweeper", 2, sweep, async {
        for i in 0..N {
            let key = format!("k{i}");
            cache.save(&key, json!("old"), Some(-1)).await.unwrap();
            tokio::task::yield_now().await;
            cache.save(&key, json!("fresh"), None).await.unwrap();
        }
    })
    .await;
    cache.sweep().await.unwrap();
    for i in 0..N {
        assert_eq!(cache.load(&format!("k{i}")).await.unwrap().value, json!("fresh"), "fresh k{i} was swept");
    }
    assert_eq!(cache.size().await.unwrap(), N as u64);
    assert_count_exact(&h.cluster).await;
    assert!(swept <= N, "each expired entry is removed at most once ({swept})");
}

/// Five nodes fight over one lock: all try at once (exactly one wins), then for many rounds
/// no two nodes are ever inside the critical section together.
async fn race_lock_contention_between_nodes(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut nodes = Vec::new();
    for n in 0..5 {
        nodes.push(h.node(&format!("contender:{n}")).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(nodes.len()));
    let first: Vec<_> = nodes
        .iter()
        .cloned()
        .map(|node| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                node.cache().lock("first", Duration::from_secs(30)).await.unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in first {
        winners += usize::from(tokio::time::timeout(WAIT, t).await.unwrap().unwrap());
    }
    assert_eq!(winners, 1, "exactly one node takes a free lock");

    let inside: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let acquisitions = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = nodes
        .iter()
        .cloned()
        .map(|node| {
            let (inside, acquisitions) = (inside.clone(), acquisitions.clone());
            tokio::spawn(async move {
                for _ in 0..100 {
                    if !node.cache().lock("k", Duration::from_secs(30)).await.unwrap() {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    {
                        let mut holder = inside.lock().unwrap();
                        assert!(holder.is_none(), "{} entered while {holder:?} held the lock", node.node_id());
                        *holder = Some(node.node_id().to_string());
                    }
                    acquisitions.fetch_add(1, Ordering::Relaxed);
                    // The lock is really ours: a write under it is accepted.
                    node.cache().save("k", json!(node.node_id()), None).await.unwrap();
                    tokio::task::yield_now().await;
                    *inside.lock().unwrap() = None;
                    assert!(node.cache().unlock("k").await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    assert!(acquisitions.load(Ordering::Relaxed) > 0);
}

/// Four nodes × eight tasks increment one cache key: the total is exact.
async fn race_increments_from_many_nodes_sum_exactly(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut tasks = Vec::new();
    for n in 0..4 {
        let node = h.node(&format!("inc:{n}")).await;
        for _ in 0..8 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    node.cache().increment("ints", 1).await.unwrap();
                    node.cache().increment("halves", 0.5).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    let cache = h.cluster.cache();
    assert_eq!(cache.load("ints").await.unwrap().value, json!(800));
    assert_eq!(cache.increment("halves", 0).await.unwrap(), Numeric::Int(400));
    assert_eq!(cached_objects(&h.cluster).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entries_are_reported_not_trusted() {
    // Only redis can hold a record another program wrote; the memory backend stores typed
    // entries and cannot be corrupted.
    let h = Harness::new(Kind::Redis).await;
    let mut raw = h.raw().await.unwrap();
    let cache = h.cluster.cache();
    let bad: HashMap<&str, &str> = [
        ("not-json", "{oops"),
        ("not-object", "[1,2]"),
        ("no-value", r#"{"expireTimestamp":null,"createdAt":1,"readAt":null}"#),
        ("bad-expiry", r#"{"value":1,"expireTimestamp":"soon","createdAt":1,"readAt":null}"#),
        ("no-created", r#"{"value":1,"expireTimestamp":1,"readAt":null}"#),
    ]
    .into_iter()
    .collect();
    for (k, v) in &bad {
        let _: i64 = redis::cmd("HSET").arg("actionHero:cache").arg(k).arg(v).query_async(&mut raw).await.unwrap();
        let err = cache.load(k).await.unwrap_err();
        assert!(matches!(&err, ClusterError::Corrupt(key) if key == k), "{k}: {err:?}");
        assert_eq!(err.to_string(), format!("Corrupt({k})"));
        assert!(matches!(cache.increment(k, 1).await, Err(ClusterError::Corrupt(_))), "{k}");
    }
    assert!(cache.sweep().await.unwrap().is_empty(), "the sweeper never deletes what it cannot read");
    assert_eq!(cache.size().await.unwrap(), bad.len() as u64);
    let stored: String =
        redis::cmd("HGET").arg("actionHero:cache").arg("not-json").query_async(&mut raw).await.unwrap();
    assert_eq!(stored, "{oops", "left as it was");
    assert!(cache.destroy("not-json").await.unwrap(), "a corrupt entry can be destroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_is_configurable() {
    let redis = redis_server::RedisServer::start().await;
    let c = Cluster::redis(&redis.url(), "custom:", "10.0.0.5:8080").await.unwrap();
    c.cache().save("k", json!(1), None).await.unwrap();
    c.cache().lock("k", Duration::from_secs(10)).await.unwrap();
    c.stats().increment("x", 1).await.unwrap();
    let mut raw = redis.connection().await;
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut raw).await.unwrap();
    keys.sort_unstable();
    assert_eq!(keys, ["custom:cache", "custom:cache:lock:k", "custom:stats", "custom:stats:10.0.0.5-8080"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unavailable_is_a_typed_error() {
    let mut redis = redis_server::RedisServer::start().await;
    let c = Cluster::redis(&redis.url(), "actionHero:", "n:1").await.unwrap();
    c.cache().save("k", json!(1), None).await.unwrap();
    redis.kill().await;
    let err = tokio::time::timeout(WAIT, c.cache().load("k")).await.unwrap().unwrap_err();
    assert!(matches!(err, ClusterError::RedisUnavailable(_)), "{err:?}");
    assert!(err.to_string().starts_with("redis unavailable"));
    let unreachable = Cluster::redis(&redis.url(), "actionHero:", "n:1").await.unwrap_err();
    assert!(matches!(unreachable, ClusterError::Connect(_)), "{unreachable:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_task_runs_on_its_interval_and_stops() {
    let settings = actioncluster::ClusterSettings { sweeper_interval: Duration::from_millis(50), ..Default::default() };
    let clock = settings.clock.clone();
    let c = Cluster::memory_with("n:1", settings);
    c.cache().save("k", json!(1), Some(1_000)).await.unwrap();
    clock.advance(Duration::from_secs(2));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = c.start(shutdown.clone());
    tokio::time::timeout(WAIT, async {
        while c.cache().size().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the sweeper removed the expired entry");
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
