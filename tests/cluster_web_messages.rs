//! Web messages (spec §C8) against both backends: disabled without a TTL, bare payloads
//! oldest first, TTL since the last store, the cap, and the §C10.10 race: stores during
//! fetches deliver every message exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/cluster_harness.rs"]
mod harness;
#[path = "common/redis_server.rs"]
mod redis_server;

use actioncluster::{ClusterError, ClusterSettings, Numeric, Scope};
use harness::{Harness, Kind, WAIT, both_backends};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn with_ttl(ttl: Duration) -> ClusterSettings {
    ClusterSettings { web_message_ttl: Some(ttl), ..ClusterSettings::default() }
}

both_backends!(
    disabled_without_ttl,
    store_and_fetch_bare_payloads,
    ttl_counts_from_the_last_store,
    cap_drops_oldest_and_counts,
    race_store_during_fetch_delivers_exactly_once,
);

async fn disabled_without_ttl(kind: Kind) {
    let h = Harness::new(kind).await;
    let w = h.cluster.web_messages();
    assert!(!w.enabled());
    let err = w.store("c1", &json!({"m": 1})).await.unwrap_err();
    assert!(matches!(err, ClusterError::Disabled));
    assert_eq!(err.to_string(), "Disabled");
    assert!(matches!(w.fetch_all("c1").await, Err(ClusterError::Disabled)));
}

async fn store_and_fetch_bare_payloads(kind: Kind) {
    let h = Harness::with(kind, with_ttl(Duration::from_secs(60))).await;
    let w = h.cluster.web_messages();
    assert!(w.enabled());
    assert_eq!(w.fetch_all("nobody").await.unwrap(), Vec::<Value>::new());
    let chat = json!({"message": "hello", "room": "defaultRoom", "from": "x", "context": "user", "sentAt": 1});
    w.store("c1", &chat).await.unwrap();
    w.store("c1", &json!("two")).await.unwrap();
    w.store("c2", &json!(3)).await.unwrap();
    w.store("c1", &json!([3])).await.unwrap();
    if let Some(mut raw) = h.raw().await {
        let items: Vec<String> =
            redis::cmd("LRANGE").arg("actionHero:webMessages:c1").arg(0).arg(-1).query_async(&mut raw).await.unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(serde_json::from_str::<Value>(&items[0]).unwrap(), chat, "the bare payload, no wrapper");
        let pttl: i64 = redis::cmd("PTTL").arg("actionHero:webMessages:c1").query_async(&mut raw).await.unwrap();
        assert!(pttl > 0 && pttl <= 60_000, "{pttl}");
    }
    assert_eq!(w.fetch_all("c1").await.unwrap(), vec![chat, json!("two"), json!([3])]);
    assert_eq!(w.fetch_all("c1").await.unwrap(), Vec::<Value>::new(), "fetch empties the mailbox");
    assert_eq!(w.fetch_all("c2").await.unwrap(), vec![json!(3)]);
    let other = h.node("node-b:2").await;
    other.web_messages().store("c3", &json!("via b")).await.unwrap();
    assert_eq!(w.fetch_all("c3").await.unwrap(), vec![json!("via b")], "mailboxes are cluster-wide");
}

async fn ttl_counts_from_the_last_store(kind: Kind) {
    let h = Harness::with(kind, with_ttl(Duration::from_millis(2_000))).await;
    let w = h.cluster.web_messages();
    w.store("c", &json!(1)).await.unwrap();
    h.advance(Duration::from_millis(1_200)).await;
    w.store("c", &json!(2)).await.unwrap();
    h.advance(Duration::from_millis(1_200)).await;
    assert_eq!(
        w.fetch_all("c").await.unwrap(),
        vec![json!(1), json!(2)],
        "2.4 s after the first, 1.2 s after the last"
    );
    w.store("c", &json!(3)).await.unwrap();
    h.advance(Duration::from_millis(2_100)).await;
    assert_eq!(w.fetch_all("c").await.unwrap(), Vec::<Value>::new(), "expired with the mailbox");
    w.store("c", &json!(4)).await.unwrap();
    assert_eq!(w.fetch_all("c").await.unwrap(), vec![json!(4)], "a new mailbox starts empty");
}

async fn cap_drops_oldest_and_counts(kind: Kind) {
    let settings = ClusterSettings { max_web_messages: Some(3), ..with_ttl(Duration::from_secs(60)) };
    let h = Harness::with(kind, settings).await;
    let w = h.cluster.web_messages();
    for i in 1..=5 {
        w.store("c", &json!(i)).await.unwrap();
    }
    assert_eq!(w.fetch_all("c").await.unwrap(), vec![json!(3), json!(4), json!(5)]);
    let stats = h.cluster.stats();
    assert_eq!(stats.get("webMessages:dropped", Scope::Cluster).await.unwrap(), Some(Numeric::Int(2)));
    assert_eq!(stats.get("webMessages:dropped", Scope::Node("node-a:1".into())).await.unwrap(), Some(Numeric::Int(2)));
}

/// Four nodes store into one mailbox while a fifth fetches in a loop: every message comes
/// out exactly once, each writer's in order.
async fn race_store_during_fetch_delivers_exactly_once(kind: Kind) {
    let h = Harness::with(kind, with_ttl(Duration::from_secs(60))).await;
    const WRITERS: usize = 4;
    const EACH: usize = 200;
    let done = Arc::new(AtomicBool::new(false));
    let fetcher = {
        let node = h.node("fetcher:9").await;
        let done = done.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                got.extend(node.web_messages().fetch_all("c").await.unwrap());
                if finished {
                    return got;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let node = h.node(&format!("writer:{w}")).await;
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                node.web_messages().store("c", &json!({"w": w, "i": i})).await.unwrap();
            }
        }));
    }
    for t in writers {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    done.store(true, Ordering::Release);
    let got = tokio::time::timeout(WAIT, fetcher).await.unwrap().unwrap();
    assert_eq!(got.len(), WRITERS * EACH, "every message exactly once");
    let mut next: HashMap<u64, u64> = HashMap::new();
    for m in &got {
        let (w, i) = (m["w"].as_u64().unwrap(), m["i"].as_u64().unwrap());
        let expected = next.entry(w).or_default();
        assert_eq!(i, *expected, "writer {w}: out of order or duplicated");
        *expected += 1;
    }
    assert!(next.values().all(|&n| n == EACH as u64));
}
