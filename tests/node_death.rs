//! Node death behind a load balancer (faye-redis layout): two node processes share one
//! redis behind the test balancer (tests/common/balancer.rs); websocket and long-polling
//! subscribers all sit on node A while a publisher on node B publishes steadily. Node A is
//! killed (SIGKILL) or stopped (SIGTERM); its subscribers reconnect through the balancer to
//! node B under the same client ids (redis still knows them) and receive again.
//!
//! Killed: what node A had taken from a queue but not yet written is gone (the loss window);
//! stopped: nothing acknowledged is lost. Figures are printed as one `RELIABILITY {json}` line
//! (scripts/reliability.sh collects them); `RELIABILITY_SECS` lengthens the run.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/balancer.rs"]
mod balancer;
#[path = "common/node_process.rs"]
mod node_process;
#[path = "common/redis_server.rs"]
mod redis_server;

use actioncluster::{Client, ConnectionState, TransportPreference};
use balancer::Balancer;
use futures_util::StreamExt;
use node_process::NodeProcess;
use redis_server::RedisServer;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound of every wait on an event.
const WAIT: Duration = Duration::from_secs(20);

/// What one subscriber received: sequence number -> times received.
type Inbox = Arc<Mutex<HashMap<u64, u32>>>;

struct Subscriber {
    client: Client,
    mode: &'static str,
    inbox: Inbox,
    /// Notified on every delivery.
    delivered: Arc<tokio::sync::Notify>,
    /// Milliseconds after the fault at which the first message published after the fault arrived.
    resumed_ms: Arc<Mutex<Option<u128>>>,
}

async fn subscriber(
    url: &str,
    preference: TransportPreference,
    channel: &str,
    fault: Arc<Mutex<Option<Instant>>>,
) -> Subscriber {
    let client = Client::builder(url)
        .transport(preference)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(WAIT)
        .backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .await
        .expect("the subscriber connects through the balancer");
    let mut sub = client.subscribe(channel).await.expect("subscribed");
    let inbox: Inbox = Arc::default();
    let resumed_ms: Arc<Mutex<Option<u128>>> = Arc::default();
    let delivered = Arc::new(tokio::sync::Notify::new());
    let (inbox2, resumed2, delivered2) = (inbox.clone(), resumed_ms.clone(), delivered.clone());
    tokio::spawn(async move {
        while let Some(delivery) = sub.next().await {
            let v = delivery.json();
            let Some(seq) = v["seq"].as_u64() else { continue };
            *inbox2.lock().unwrap().entry(seq).or_default() += 1;
            let after_fault = v["after_fault"].as_bool() == Some(true);
            if let Some(at) = *fault.lock().unwrap()
                && after_fault
            {
                resumed2.lock().unwrap().get_or_insert(at.elapsed().as_millis());
            }
            delivered2.notify_waiters();
        }
    });
    let mode = if preference == TransportPreference::WebSocket { "websocket" } else { "long-polling" };
    Subscriber { client, mode, inbox, delivered, resumed_ms }
}

/// How node A goes away.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Term,
}

async fn node_goes_away(fault: Fault) {
    let secs: u64 = std::env::var("RELIABILITY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let redis = RedisServer::start().await;
    let args = ["--timeout", "5", "--log", "error"];
    let mut a = NodeProcess::on_redis(&redis.url(), &args).await;
    let b = NodeProcess::on_redis(&redis.url(), &args).await;
    // Subscribers all land on A; B joins the rotation afterwards (where they will go).
    let lb = Balancer::start(vec![a.addr]).await;
    let url = format!("http://{}/faye", lb.addr());
    let fault_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let channel = "/death";
    let mut subs = Vec::new();
    for preference in [TransportPreference::WebSocket, TransportPreference::LongPolling] {
        for _ in 0..3 {
            subs.push(subscriber(&url, preference, channel, fault_at.clone()).await);
        }
    }
    lb.add(b.addr);
    let publisher = Client::builder(format!("http://{}/faye", b.addr))
        .transport(TransportPreference::WebSocket)
        .request_timeout(WAIT)
        .build()
        .await
        .expect("the publisher connects to B");

    let start = Instant::now();
    let total = Duration::from_secs(secs);
    let fault_after = total / 4;
    let mut acked = Vec::new();
    let mut refused = 0u64;
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let mut faulted = false;
    while start.elapsed() < total {
        ticker.tick().await;
        if !faulted && start.elapsed() >= fault_after {
            faulted = true;
            *fault_at.lock().unwrap() = Some(Instant::now());
            a.signal(if fault == Fault::Kill { "-KILL" } else { "-TERM" });
        }
        let data = json!({"seq": seq, "after_fault": faulted});
        match tokio::time::timeout(WAIT, publisher.publish(channel, data)).await {
            Ok(Ok(())) => acked.push(seq),
            _ => refused += 1,
        }
        seq += 1;
    }
    a.wait_exit().await;

    // Every subscriber is back on B and has everything published in the last quarter.
    let tail: Vec<u64> = acked.iter().copied().filter(|s| *s >= seq * 3 / 4).collect();
    for s in &subs {
        let mut state = s.client.watch_state();
        tokio::time::timeout(WAIT, state.wait_for(|st| matches!(st, ConnectionState::Connected { .. })))
            .await
            .expect("the subscriber reconnects through the balancer");
        tokio::time::timeout(WAIT, async {
            loop {
                let next = s.delivered.notified();
                if tail.iter().all(|t| s.inbox.lock().unwrap().contains_key(t)) {
                    return;
                }
                next.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("a {} subscriber receives again after node A went away", s.mode));
    }
    let mut report = serde_json::Map::new();
    for mode in ["websocket", "long-polling"] {
        let of_mode: Vec<&Subscriber> = subs.iter().filter(|s| s.mode == mode).collect();
        let lost: usize =
            of_mode.iter().map(|s| acked.iter().filter(|a| !s.inbox.lock().unwrap().contains_key(a)).count()).sum();
        let duplicated: u32 =
            of_mode.iter().map(|s| s.inbox.lock().unwrap().values().map(|n| n - 1).sum::<u32>()).sum();
        let worst = of_mode.iter().map(|s| *s.resumed_ms.lock().unwrap()).max().flatten();
        report.insert(mode.into(), json!({"lost": lost, "duplicated": duplicated, "worst_recovery_ms": worst}));
    }
    let name = if fault == Fault::Kill { "node-kill-9" } else { "node-sigterm" };
    report.insert("scenario".into(), json!(name));
    report.insert("published".into(), json!(seq));
    report.insert("acked".into(), json!(acked.len()));
    report.insert("refused".into(), json!(refused));
    report.insert("subscribers".into(), json!(subs.len()));
    eprintln!("RELIABILITY {}", serde_json::Value::Object(report.clone()));
    if fault == Fault::Term {
        for mode in ["websocket", "long-polling"] {
            assert_eq!(report[mode]["lost"], json!(0), "a graceful stop loses nothing acknowledged: {report:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_subscribers_reconnect_to_the_other_node_and_receive_again() {
    node_goes_away(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_stopped_node_loses_nothing_acknowledged() {
    node_goes_away(Fault::Term).await;
}
