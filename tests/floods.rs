//! Floods and bad input against a node process, measured from outside:
//! - a websocket subscriber that never reads while a publisher floods its channel: the
//!   node's RSS stays within `--max-queue-bytes` plus a fixed overhead, and another
//!   subscriber receives everything (its latency is printed, not asserted);
//! - 10,000 malformed HTTP bodies and websocket frames mixed with valid traffic: the node
//!   never crashes and the valid traffic loses nothing.
//!
//! Figures go out as `RELIABILITY {json}` lines; `RELIABILITY_SECS` lengthens the flood and
//! `RELIABILITY_MALFORMED` changes the number of bad inputs (scripts/reliability.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;
#[path = "common/node_process.rs"]
mod node_process;

use common::ws::Ws;
use common::{bayeux, within};
use futures_util::SinkExt;
use node_process::NodeProcess;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(30);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A websocket subscriber that reads: every delivery's data goes to the returned channel.
async fn reading_subscriber(addr: SocketAddr, channel: &str) -> mpsc::UnboundedReceiver<Value> {
    let mut ws = Ws::open(addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, channel).await;
    ws.send_connect(&id).await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            for m in ws.recv_within(Duration::from_secs(3600)).await.unwrap_or_default() {
                if m["channel"] == json!("/meta/connect") {
                    ws.send_connect(&id).await;
                } else if !bayeux::is_meta(&m) && tx.send(m["data"].clone()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// A long-polling subscriber: every delivery's data goes to the returned channel.
async fn polling_subscriber(addr: SocketAddr, channel: &str) -> mpsc::UnboundedReceiver<Value> {
    let id = bayeux::subscriber(addr, &[channel]).await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            for m in bayeux::connect_messages(addr, &id).await {
                if tx.send(m["data"].clone()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Receives until every `seq` in `want` arrived on `rx`; returns the ones seen twice.
async fn collect(rx: &mut mpsc::UnboundedReceiver<Value>, want: &HashSet<u64>, what: &str) -> usize {
    let mut seen = HashSet::new();
    let mut duplicated = 0;
    within(WAIT, what, async {
        while !want.iter().all(|s| seen.contains(s)) {
            let data = rx.recv().await.expect("subscriber running");
            if let Some(seq) = data["seq"].as_u64()
                && !seen.insert(seq)
            {
                duplicated += 1;
            }
        }
    })
    .await;
    duplicated
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_keeps_rss_bounded_and_others_keep_receiving() {
    const MAX_QUEUE: u64 = 1024 * 1024;
    /// Allocator slack, buffers and the runtime: what the node may grow beside the bound.
    const FIXED_OVERHEAD: u64 = 48 * 1024 * 1024;
    let secs = env_num("RELIABILITY_SECS", 3);
    let node = NodeProcess::start(&["--max-queue-bytes", &MAX_QUEUE.to_string(), "--log", "error"]).await;
    let addr = node.addr;

    // The stuck subscriber: handshakes, subscribes, connects, and never reads again.
    let mut stuck = Ws::open(addr).await;
    let stuck_id = stuck.handshake().await;
    stuck.subscribe(&stuck_id, "/flood").await;
    stuck.send_connect(&stuck_id).await;
    let mut healthy = reading_subscriber(addr, "/flood").await;
    let baseline = node.rss_bytes().expect("RSS readable");

    let payload = "x".repeat(4096);
    let start = Instant::now();
    let mut published = HashSet::new();
    let mut peak = baseline;
    let mut latencies = Vec::new();
    let mut seq = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        // Ten publishes at a time, then the healthy subscriber's share, sampling RSS as we go.
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"channel": "/flood", "data": {"seq": seq + i, "at": now_ms(), "pad": payload}}))
            .collect();
        let replies = bayeux::send(addr, &Value::Array(batch)).await;
        assert!(replies.iter().all(|r| r["successful"] == json!(true)), "{replies:?}");
        published.extend(seq..seq + 10);
        seq += 10;
        while let Ok(data) = healthy.try_recv() {
            if let (Some(s), Some(at)) = (data["seq"].as_u64(), data["at"].as_u64()) {
                published.remove(&s);
                latencies.push(now_ms().saturating_sub(at));
            }
        }
        peak = peak.max(node.rss_bytes().unwrap_or(0));
    }
    let left = published.clone();
    collect(&mut healthy, &left, "the healthy subscriber receives every message").await;
    peak = peak.max(node.rss_bytes().unwrap_or(0));
    latencies.sort_unstable();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "RELIABILITY {}",
        json!({"scenario": "flood-stuck-subscriber", "published": seq, "healthy_lost": 0,
               "max_queue_bytes": MAX_QUEUE, "rss_baseline": baseline, "rss_peak": peak, "rss_growth": growth,
               "healthy_latency_ms_p50": percentile(&latencies, 0.5),
               "healthy_latency_ms_p99": percentile(&latencies, 0.99)})
    );
    assert!(
        growth <= MAX_QUEUE + FIXED_OVERHEAD,
        "RSS grew by {growth} bytes, more than the queue bound {MAX_QUEUE} plus {FIXED_OVERHEAD}"
    );
    drop(stuck);
}

/// A malformed variant of a valid Bayeux body, chosen by `rng`.
fn malformed(rng: &mut rand::rngs::StdRng, client_id: &str) -> Vec<u8> {
    let valid = [
        json!([{"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/x"}]).to_string(),
        json!([{"channel": "/junk", "clientId": client_id, "data": {"a": [1, 2, 3]}}]).to_string(),
        json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]})
            .to_string(),
        json!([{"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}]).to_string(),
    ];
    let mut body = valid[rng.random_range(0..valid.len())].clone().into_bytes();
    match rng.random_range(0..8) {
        0 => body.truncate(rng.random_range(0..body.len())),
        1 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..body.len());
                body[i] = rng.random();
            }
        }
        2 => {
            let i = rng.random_range(0..body.len());
            let junk: Vec<u8> = (0..rng.random_range(1..32)).map(|_| rng.random()).collect();
            body.splice(i..i, junk);
        }
        3 => body = (0..rng.random_range(0..256)).map(|_| rng.random()).collect(),
        4 => {
            body = format!("{}{}", "[".repeat(rng.random_range(1..5000)), "]".repeat(rng.random_range(0..5000)))
                .into_bytes()
        }
        5 => {
            let wrong = [
                r#"{"channel": 5}"#,
                r#"[{"channel": null, "data": 1}]"#,
                r#"[{"channel": "/a", "clientId": []}]"#,
                r#"[{"channel": "/meta/subscribe", "subscription": {"a": 1}}]"#,
                r#"[1e999999]"#,
                r#""\ud800""#,
                r#"[{"channel": "/meta/connect", "advice": {"timeout": "soon"}}]"#,
                "null",
                "[]",
                "",
            ];
            body = wrong[rng.random_range(0..wrong.len())].as_bytes().to_vec();
        }
        6 => body.extend_from_slice(b"}}}]]]"),
        _ => body.retain(|b| *b != b'"'),
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_inputs_mixed_with_valid_traffic_crash_nothing_and_lose_nothing() {
    let total = env_num("RELIABILITY_MALFORMED", 10_000);
    let mut node = NodeProcess::start(&["--log", "error"]).await;
    let addr = node.addr;
    let mut ws_sub = reading_subscriber(addr, "/valid").await;
    let mut lp_sub = polling_subscriber(addr, "/valid").await;
    let victim = bayeux::handshake(addr).await;

    // Bad input from four tasks: half HTTP bodies, half websocket frames (text and binary).
    let per_task = total / 4;
    let mut bad = Vec::new();
    for task in 0..4u64 {
        let victim = victim.clone();
        bad.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(task);
            if task % 2 == 0 {
                for _ in 0..per_task {
                    let body = malformed(&mut rng, &victim);
                    let reply =
                        common::http::request(addr, "POST", "/faye", &[("content-type", "application/json")], body)
                            .await;
                    assert!(reply.status == 200 || (400..500).contains(&reply.status), "status {}", reply.status);
                }
            } else {
                let url = format!("ws://{addr}/faye");
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                for i in 0..per_task {
                    let body = malformed(&mut rng, &victim);
                    let frame = match String::from_utf8(body) {
                        Ok(text) if i % 2 == 0 => WsMessage::Text(text.into()),
                        Ok(text) => WsMessage::Binary(text.into_bytes().into()),
                        Err(e) => WsMessage::Binary(e.into_bytes().into()),
                    };
                    if ws.send(frame).await.is_err() {
                        // The node closed this socket (a frame it will not take): open another.
                        ws = tokio_tungstenite::connect_async(&url).await.unwrap().0;
                    }
                }
            }
        }));
    }
    // Valid traffic at the same time.
    let mut acked = HashSet::new();
    let mut seq = 0u64;
    while bad.iter().any(|t| !t.is_finished()) || seq < 100 {
        let reply = bayeux::publish(addr, "/valid", json!({"seq": seq})).await;
        assert_eq!(reply["successful"], json!(true), "{reply}");
        acked.insert(seq);
        seq += 1;
    }
    for t in bad {
        t.await.expect("a bad-input task panicked");
    }
    let ws_dup = collect(&mut ws_sub, &acked, "the websocket subscriber receives every valid message").await;
    let lp_dup = collect(&mut lp_sub, &acked, "the long-polling subscriber receives every valid message").await;
    assert!(node.running(), "the node crashed: {}", node.log());
    assert!(!node.log().contains("panicked"), "the node logged a panic: {}", node.log());
    eprintln!(
        "RELIABILITY {}",
        json!({"scenario": "malformed-input", "malformed": per_task * 4, "acked": acked.len(),
               "lost": 0, "duplicated": ws_dup + lp_dup, "crashes": 0})
    );
}
