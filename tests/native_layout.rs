//! Nodes sharing one redis in the native layout (`--redis-layout native`): cross-node
//! delivery, wildcards, unsubscribing through another node, sessions that move between
//! nodes (long-polling hops, graceful shutdown, kill -9), redis losing its data, garbage
//! collection, slow consumers and the guard against mixing layouts. Each test starts its own
//! redis-server through the shared helper.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/native_cases.rs"]
mod native_cases;
#[path = "common/node_process.rs"]
mod node_process;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/wire.rs"]
mod wire;

use actioncluster::{Config, Node, NodeError, RedisLayout, ServerEvent};
use native_cases::{data_of, metric};
use node_process::NodeProcess;
use redis_server::RedisServer;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wire::{LpClient, WAIT, WsClient, publish};

fn config(redis: &RedisServer, timeout: Duration, gc_interval: Duration) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout,
        gc_interval,
        redis_url: Some(redis.url()),
        redis_layout: RedisLayout::Native,
        shutdown_grace: Duration::from_secs(10),
        ..Config::default()
    }
}

async fn node(redis: &RedisServer) -> Node {
    Node::start(config(redis, Duration::from_secs(10), Duration::from_secs(3600))).await.expect("native node starts")
}

/// Publishes `0..n` on `channel` through `addr`, one every `pace`, until `stop`; returns the
/// acknowledged numbers with the instant of each acknowledgement.
async fn publish_numbers(
    addr: std::net::SocketAddr,
    channel: &'static str,
    n: i64,
    pace: Duration,
) -> Vec<(i64, Instant)> {
    let mut acked = Vec::new();
    for i in 0..n {
        let reply = publish(addr, channel, json!(i)).await;
        if reply["successful"] == json!(true) {
            acked.push((i, Instant::now()));
        }
        tokio::time::sleep(pace).await; // the publishing rate, not a synchronisation
    }
    acked
}

#[tokio::test]
async fn messages_cross_nodes_over_long_polling_and_websocket() {
    let redis = RedisServer::start().await;
    native_cases::messages_cross_nodes_over_long_polling_and_websocket(&config(
        &redis,
        Duration::from_secs(10),
        Duration::from_secs(3600),
    ))
    .await;
}

#[tokio::test]
async fn wildcards_match_across_nodes_and_each_client_gets_a_message_once() {
    let redis = RedisServer::start().await;
    native_cases::wildcards_match_across_nodes_and_each_client_gets_a_message_once(&config(
        &redis,
        Duration::from_secs(10),
        Duration::from_secs(3600),
    ))
    .await;
}

#[tokio::test]
async fn unsubscribing_through_another_node_stops_delivery() {
    let redis = RedisServer::start().await;
    native_cases::unsubscribing_through_another_node_stops_delivery(&config(
        &redis,
        Duration::from_secs(10),
        Duration::from_secs(3600),
    ))
    .await;
}

#[tokio::test]
async fn long_polling_client_hopping_between_nodes_gets_every_message_once_in_order() {
    let redis = RedisServer::start().await;
    native_cases::long_polling_client_hopping_between_nodes_gets_every_message_once_in_order(&config(
        &redis,
        Duration::from_secs(10),
        Duration::from_secs(3600),
    ))
    .await;
}

async fn read_until_closed(ws: &mut WsClient, received: &mut Vec<i64>, done: &AtomicBool) -> bool {
    while !done.load(Ordering::Relaxed) {
        match ws.next_message_or_close().await {
            Some(m) => received.extend(m["data"].as_i64()),
            None => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_websocket_sessions_to_the_other_node_losing_nothing() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(WsClient::subscribed(a_addr, "/flow").await);
    }
    // Every client is bound and receiving before the flow starts.
    publish(b_addr, "/flow", json!(-1)).await;
    for ws in &mut clients {
        assert_eq!(ws.next_message().await["data"], json!(-1));
    }
    const N: i64 = 400;
    let publisher = tokio::spawn(publish_numbers(b_addr, "/flow", N, Duration::from_millis(2)));
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for mut ws in clients {
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut received = Vec::new();
            if read_until_closed(&mut ws, &mut received, &done).await {
                // Node A closed the socket (1001): reconnect to B, as the balancer would send it.
                let mut ws = WsClient::resume(b_addr, &ws.client_id).await;
                while received.last() != Some(&(N - 1)) {
                    match ws.next_message_or_close().await {
                        Some(m) => received.extend(m["data"].as_i64()),
                        None => panic!("node B closed the socket"),
                    }
                }
            }
            received
        }));
    }
    // Stop A once the flow is under way.
    while metric(&b.server().render_metrics(true), "actioncluster_messages_published_total") < 100 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.shutdown().await;
    let acked = publisher.await.unwrap();
    assert_eq!(acked.len() as i64, N, "every publish was acknowledged");
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        let received = tokio::time::timeout(Duration::from_secs(30), reader).await.expect("reader ends").unwrap();
        assert_eq!(received, (0..N).collect::<Vec<_>>(), "none lost, none twice, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_clients_move_on_and_lose_only_what_was_published_before_they_came_back() {
    let redis = RedisServer::start().await;
    let mut doomed = NodeProcess::on_redis(&redis.url(), &["--redis-layout", "native", "--timeout", "10"]).await;
    let survivor = node(&redis).await;
    let (a_addr, b_addr) = (doomed.addr, survivor.local_addr());
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(WsClient::subscribed(a_addr, "/flow").await);
    }
    publish(b_addr, "/flow", json!(-1)).await;
    for ws in &mut clients {
        assert_eq!(ws.next_message().await["data"], json!(-1));
    }
    const N: i64 = 600;
    let publisher = tokio::spawn(publish_numbers(b_addr, "/flow", N, Duration::from_millis(5)));
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for mut ws in clients {
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut received = Vec::new();
            assert!(read_until_closed(&mut ws, &mut received, &done).await, "the socket to the killed node closes");
            let closed_at = Instant::now();
            let mut ws = WsClient::resume(b_addr, &ws.client_id).await;
            // The first delivery after the move proves the session is back.
            let mut resumed_at = None;
            while received.last() != Some(&(N - 1)) {
                match ws.next_message_or_close().await {
                    Some(m) => {
                        resumed_at.get_or_insert_with(Instant::now);
                        received.extend(m["data"].as_i64());
                    }
                    None => panic!("the surviving node closed the socket"),
                }
            }
            (received, closed_at, resumed_at)
        }));
    }
    while metric(&survivor.server().render_metrics(true), "actioncluster_messages_published_total") < 150 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = Instant::now();
    doomed.signal("-KILL");
    doomed.wait_exit().await;
    let acked = publisher.await.unwrap();
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        let (received, _closed_at, _resumed_at) =
            tokio::time::timeout(Duration::from_secs(30), reader).await.expect("reader ends").unwrap();
        let unique: HashSet<_> = received.iter().collect();
        assert_eq!(unique.len(), received.len(), "nothing twice");
        let mut sorted = received.clone();
        sorted.sort();
        assert_eq!(sorted, received, "in order");
        let lost: Vec<i64> = acked.iter().map(|(i, _)| *i).filter(|i| !received.contains(i)).collect();
        // Only messages acknowledged after the kill may be lost, and they form one window.
        for i in &lost {
            let at = acked.iter().find(|(n, _)| n == i).map(|(_, at)| *at).unwrap();
            assert!(at >= killed_at, "message {i} was acknowledged before the kill but lost");
        }
        if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
            assert_eq!((last - first + 1) as usize, lost.len(), "one contiguous window: {lost:?}");
        }
        eprintln!("kill -9: lost {} of {} acknowledged messages", lost.len(), acked.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_does_not_silence_subscribers() {
    let mut redis = RedisServer::start().await;
    let (n1, n2) = (node(&redis).await, node(&redis).await);
    let mut ws = WsClient::subscribed(n1.local_addr(), "/lost/*").await;
    let lp = LpClient::handshake(n1.local_addr()).await;
    lp.subscribe(n1.local_addr(), "/lost/*").await;
    assert!(lp.connect(n1.local_addr(), 0).await.is_empty());
    // Traffic before the loss moves n1's inbox well past the numbers a new inbox starts from.
    for i in 0..100 {
        publish(n2.local_addr(), "/lost/x", json!(format!("before{i}"))).await;
    }
    let mut before = 0;
    while before < 100 {
        ws.next_message().await;
        before += 1;
    }
    let mut lp_before = 0;
    while lp_before < 100 {
        lp_before += lp.connect(n1.local_addr(), 1000).await.len();
    }

    redis.kill().await;
    redis.restart().await; // no persistence: every key is gone

    // The nodes notice redis forgot them and record their clients again, by themselves.
    let mut con = redis.connection().await;
    let client_key = |id: &str| format!("faye/native/client/{{{id}}}");
    let recorded = tokio::time::timeout(WAIT, async {
        loop {
            let ws_owner: Option<String> =
                redis::cmd("HGET").arg(client_key(&ws.client_id)).arg("owner").query_async(&mut con).await.unwrap();
            let lp_owner: Option<String> =
                redis::cmd("HGET").arg(client_key(&lp.client_id)).arg("owner").query_async(&mut con).await.unwrap();
            if ws_owner.is_some() && lp_owner.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // polling redis state: no event to await
        }
    })
    .await;
    assert!(recorded.is_ok(), "the subscribers' sessions are recorded again");
    // The clients were never told to re-handshake: the same ids keep working, and every
    // message acknowledged from now on arrives.
    for i in 0..50 {
        let ack = publish(n2.local_addr(), "/lost/x", json!(i)).await;
        assert_eq!(ack["successful"], json!(true));
    }
    let mut got = Vec::new();
    while !got.contains(&json!(49)) {
        got.push(ws.next_message().await["data"].clone());
    }
    assert_eq!(got, (0..50).map(|i| json!(i)).collect::<Vec<_>>(), "websocket: all 50, once, in order");
    let mut lp_got = Vec::new();
    while !lp_got.contains(&json!(49)) {
        lp_got.extend(data_of(&lp.connect(n1.local_addr(), 1000).await));
    }
    assert_eq!(lp_got, (0..50).map(|i| json!(i)).collect::<Vec<_>>(), "long-polling: all 50, once, in order");
}

#[tokio::test]
async fn expired_clients_are_collected_by_another_node() {
    let redis = RedisServer::start().await;
    let t = Duration::from_millis(500);
    let creator = Node::start(config(&redis, t, Duration::from_secs(3600))).await.unwrap();
    let collector = Node::start(config(&redis, t, Duration::from_millis(200))).await.unwrap();
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
    let score: Option<f64> =
        redis::cmd("ZSCORE").arg("faye/native/clients").arg(&id).query_async(&mut con).await.unwrap();
    assert_eq!(score, None);
    let interest: Vec<String> =
        redis::cmd("HKEYS").arg("faye/native/interest/gc/me").query_async(&mut con).await.unwrap();
    assert!(interest.is_empty(), "the owner's interest is uncounted: {interest:?}");
}

#[tokio::test]
async fn a_publish_costs_redis_the_same_whatever_the_number_of_subscribers() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis).await;
    let mut con = redis.connection().await;
    let mut per_publish = Vec::new();
    for subscribers in [1usize, 20, 200] {
        let mut clients = Vec::new();
        for _ in 0..subscribers {
            let c = LpClient::handshake(n1.local_addr()).await;
            c.subscribe(n1.local_addr(), &format!("/cost/{subscribers}")).await;
            clients.push(c);
        }
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut con).await.unwrap();
        for i in 0..10 {
            publish(n1.local_addr(), &format!("/cost/{subscribers}"), json!(i)).await;
        }
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.unwrap();
        let calls = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        // The commands a publish runs inside its script.
        per_publish.push((calls("hkeys") + calls("xadd")) as f64 / 10.0);
    }
    assert!(per_publish[0] > 0.0, "the script's commands are counted: {per_publish:?}");
    assert_eq!(
        per_publish[0], per_publish[2],
        "redis work per publish does not grow with subscribers: {per_publish:?}"
    );
}

#[tokio::test]
async fn a_slow_consumer_is_destroyed_and_counted() {
    let redis = RedisServer::start().await;
    let mut c = config(&redis, Duration::from_secs(10), Duration::from_secs(3600));
    c.max_queue_bytes = 2000;
    let n1 = Node::start(c).await.unwrap();
    let slow = LpClient::handshake(n1.local_addr()).await;
    slow.subscribe(n1.local_addr(), "/flood").await;
    let mut events = n1.events();
    for i in 0..100 {
        publish(n1.local_addr(), "/flood", json!({"i": i, "pad": "x".repeat(50)})).await;
    }
    let id = slow.client_id.clone();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ServerEvent::Disconnect { client_id }) = events.recv().await
                && client_id == id
            {
                return;
            }
        }
    })
    .await
    .expect("the slow consumer is destroyed");
    assert_eq!(metric(&n1.server().render_metrics(true), "actioncluster_slow_consumers_total"), 1);
    let reply = slow.connect_raw(n1.local_addr(), 0).await;
    assert_eq!(reply[0]["successful"], json!(false), "{reply}");
    assert_eq!(reply[0]["advice"]["reconnect"], json!("handshake"));
}

#[tokio::test]
async fn a_namespace_serves_one_layout_only() {
    let redis = RedisServer::start().await;
    let faye_node =
        Node::start(Config { redis_layout: RedisLayout::Faye, ..config(&redis, WAIT, WAIT) }).await.unwrap();
    // faye-redis's keys exist once a client does.
    let _faye_client = LpClient::handshake(faye_node.local_addr()).await;
    let refused = Node::start(config(&redis, WAIT, WAIT)).await.err().expect("a native node is refused");
    let text = refused.to_string();
    assert!(matches!(refused, NodeError::Engine(_)), "{refused:?}");
    assert!(text.contains("in use by the faye layout"), "{text}");
    // Another namespace is free.
    let native = Node::start(Config { namespace: "other".into(), ..config(&redis, WAIT, WAIT) }).await.unwrap();
    let refused = Node::start(Config {
        namespace: "other".into(),
        redis_layout: RedisLayout::Faye,
        ..config(&redis, WAIT, WAIT)
    })
    .await
    .err()
    .expect("a faye-layout node is refused on a native namespace");
    assert!(refused.to_string().contains("in use by the native layout"), "{refused}");
    drop(native);

    // The binary says it in one line and exits with 2.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_actioncluster"))
        .args(["--host", "127.0.0.1", "--port", "0", "--redis", &redis.url(), "--redis-layout", "native"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--redis-layout faye"), "{stderr}");
}

#[tokio::test]
async fn a_node_that_misses_inbox_entries_counts_them() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis).await;
    let mut con = redis.connection().await;
    let nodes: Vec<String> =
        redis::cmd("ZRANGE").arg("faye/native/nodes").arg(0).arg(-1).query_async(&mut con).await.unwrap();
    assert_eq!(nodes.len(), 1);
    let inbox = format!("faye/native/inbox/{}", nodes[0]);
    // Entries trimmed by the length bound before the node could read them, in one step, as
    // when a node falls too far behind.
    let mut pipe = redis::pipe();
    pipe.atomic();
    for i in 0..20 {
        pipe.cmd("XADD")
            .arg(&inbox)
            .arg("1-*")
            .arg("t")
            .arg("m")
            .arg("d")
            .arg(json!({"channel": "/nobody", "data": i}).to_string());
    }
    pipe.cmd("XTRIM").arg(&inbox).arg("MAXLEN").arg(1);
    let _: redis::Value = pipe.query_async(&mut con).await.unwrap();
    let counted = tokio::time::timeout(WAIT, async {
        loop {
            if metric(&n1.server().render_metrics(true), "actioncluster_inbox_entries_lost_total") == 19 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // polling a counter: no event to await
        }
    })
    .await;
    assert!(counted.is_ok(), "the 19 entries it never read are counted");
    // And the node keeps reading: a later message is delivered.
    let client = LpClient::handshake(n1.local_addr()).await;
    client.subscribe(n1.local_addr(), "/after").await;
    publish(n1.local_addr(), "/after", json!("still here")).await;
    assert_eq!(data_of(&client.connect(n1.local_addr(), 1000).await), vec![json!("still here")]);
}
