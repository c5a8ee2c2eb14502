//! What a client costs in memory on the server while it holds no connection (a
//! long-polling client between two polls), and what each subscription adds, on a server
//! with the memory engine: the growth of this process's resident memory over 20,000 such
//! clients. Prints the figures (BENCHMARKS.md quotes them) and fails when they grow well
//! past today's. (Resident memory rather than a counting allocator: the crate forbids
//! `unsafe`, which a global allocator needs.)
//!
//! One test in this file: the figures are for the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use actioncluster::engine::Engine;
use actioncluster::engine::memory::MemoryEngine;
use actioncluster::protocol::codec;
use actioncluster::server::ServerSettings;
use actioncluster::telemetry::Metrics;
use actioncluster::{RequestContext, Server};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Resident memory of this process, in bytes.
fn rss() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024.0
}

async fn send(server: &Server, json: String) -> serde_json::Value {
    let messages = codec::decode(json.as_bytes(), 1 << 20).expect("a valid batch");
    let reply = server.process_and_finish(messages, &RequestContext::default()).await;
    serde_json::from_slice(&reply).expect("a JSON reply")
}

const HANDSHAKE: &str =
    r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]"#;

#[tokio::test(flavor = "current_thread")]
async fn a_client_without_a_connection_and_each_subscription_cost_little() {
    const CLIENTS: usize = 20_000;
    const CHANNELS: usize = 100;
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(Duration::from_secs(3600)));
    let server =
        Server::new(engine, ServerSettings::default(), vec![], CancellationToken::new(), Arc::new(Metrics::default()));
    // Warm up: the first client grows what every later one shares.
    let warm = send(&server, HANDSHAKE.into()).await;
    assert_eq!(warm[0]["successful"], true);
    let mut ids: Vec<String> = Vec::with_capacity(CLIENTS);
    // The test's own list of ids, allocated before the first reading.
    for _ in 0..CLIENTS {
        ids.push(String::with_capacity(32));
    }

    let before = rss();
    for id in ids.iter_mut() {
        let reply = send(&server, HANDSHAKE.into()).await;
        id.push_str(reply[0]["clientId"].as_str().expect("a client id"));
    }
    // A connect without hold: connected once, then holding nothing, as a long-polling client
    // between two polls.
    for id in &ids {
        let connect = format!(
            r#"[{{"channel":"/meta/connect","clientId":"{id}","connectionType":"long-polling","advice":{{"timeout":0}}}}]"#
        );
        let reply = send(&server, connect).await;
        assert_eq!(reply[0]["successful"], true, "{reply}");
    }
    let per_client = (rss() - before) / CLIENTS as f64;

    // One subscription each (channel i mod 100), then four more each.
    let subscribed = rss();
    for (i, id) in ids.iter().enumerate() {
        let subscribe =
            format!(r#"[{{"channel":"/meta/subscribe","clientId":"{id}","subscription":"/idle/{}"}}]"#, i % CHANNELS);
        let reply = send(&server, subscribe).await;
        assert_eq!(reply[0]["successful"], true, "{reply}");
    }
    let first_subscription = (rss() - subscribed) / CLIENTS as f64;
    let more = rss();
    for (i, id) in ids.iter().enumerate() {
        for k in 1..=4 {
            let channel = (i + k * 7) % CHANNELS;
            let subscribe =
                format!(r#"[{{"channel":"/meta/subscribe","clientId":"{id}","subscription":"/more/{channel}"}}]"#);
            let reply = send(&server, subscribe).await;
            assert_eq!(reply[0]["successful"], true, "{reply}");
        }
    }
    let next_subscriptions = (rss() - more) / (CLIENTS * 4) as f64;
    println!(
        "resident bytes: {per_client:.0} per client with no connection, {first_subscription:.0} for its first \
         subscription, {next_subscriptions:.0} for each further one"
    );
    // The bounds leave room for table growth landing on either side of a reading; they fail
    // when a change makes a session or a subscription several times dearer.
    assert!(per_client < 1536.0, "a client with no connection costs {per_client:.0} bytes");
    assert!(first_subscription < 384.0, "a first subscription costs {first_subscription:.0} bytes");
    assert!(next_subscriptions < 128.0, "a further subscription costs {next_subscriptions:.0} bytes");
}
