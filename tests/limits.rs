//! Production limits, each hit on purpose: messages per batch (HTTP 400 / websocket close
//! 1008), subscriptions per client (403), connections per node (the accept loop waits),
//! handshakes per address (429 with advice), per-client queue bytes (slow consumers are
//! destroyed), and a storm of 10,000 clients re-handshaking at once.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use actioncluster::ServerEvent;
use bytes::Bytes;
use common::bayeux::{self, handshake, send};
use common::http::{self, request};
use common::ws::Ws;
use common::{TestNode, WAIT, skip_on_reference, wait_event, within};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const JSON: (&str, &str) = ("content-type", "application/json");

fn publishes(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({"channel": "/b", "data": i})).collect())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

async fn metrics(addr: SocketAddr) -> String {
    let reply = request(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(reply.status, 200);
    reply.text()
}

// ---- messages per batch ----

#[tokio::test]
async fn http_batch_over_the_limit_is_400_with_the_reason() {
    if skip_on_reference("Faye has no batch limit") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_batch_messages = 5).await;
    assert_eq!(send(node.addr, &publishes(5)).await.len(), 5, "a batch at the limit is served");

    let reply = request(node.addr, "POST", "/faye", &[JSON], publishes(6).to_string()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.text(), "Bad request");
    assert_eq!(reply.header("x-bayeux-error"), Some("6 messages in one request; at most 5 are accepted"));

    let query = format!("/faye?message={}&jsonp=cb", http::urlencode(&publishes(6).to_string()));
    let reply = request(node.addr, "GET", &query, &[], "").await;
    assert_eq!(reply.status, 400, "callback-polling too: {}", reply.text());
}

#[tokio::test]
async fn websocket_batch_over_the_limit_closes_1008() {
    if skip_on_reference("Faye has no batch limit") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_batch_messages = 5).await;
    let mut ws = Ws::open(node.addr).await;
    assert_eq!(ws.request(&publishes(5)).await.len(), 5, "a frame at the limit is answered");
    ws.send(&publishes(6)).await;
    assert_eq!(ws.close_code_within(WAIT).await, Ok(1008), "policy violation");
}

// ---- subscriptions per client ----

#[tokio::test]
async fn subscribe_past_the_limit_is_refused_and_earlier_ones_stay() {
    if skip_on_reference("Faye has no subscription limit") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_subscriptions_per_client = 3).await;
    let id = handshake(node.addr).await;
    let reply = bayeux::subscribe_reply(node.addr, &id, json!(["/a", "/b", "/c", "/d", "/e"])).await;
    assert_eq!(reply["successful"], json!(false), "{reply}");
    assert_eq!(reply["error"], json!("403:/d:Too many subscriptions (at most 3 per client)"));
    assert_eq!(reply["subscription"], json!(["/a", "/b", "/c", "/d", "/e"]));

    // Subscribing again to a channel it holds is not a new subscription.
    bayeux::subscribe(node.addr, &id, "/a").await;
    bayeux::publish(node.addr, "/c", json!("kept")).await;
    bayeux::publish(node.addr, "/d", json!("refused")).await;
    let got = bayeux::connect_messages(node.addr, &id).await;
    assert_eq!(got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(), vec![json!("kept")]);

    let reply = bayeux::unsubscribe(node.addr, &id, "/a").await;
    assert_eq!(reply["successful"], json!(true));
    bayeux::subscribe(node.addr, &id, "/d").await;
}

// ---- connections per node ----

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    if skip_on_reference("Faye has no connection limit") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_connections = 2).await;
    let first = Ws::open(node.addr).await;
    let mut second = Ws::open(node.addr).await;
    second.handshake().await;

    // The third connection is made (the listen backlog holds it) but not served yet.
    let addr = node.addr;
    let mut third = tokio::spawn(async move { bayeux::handshake_reply(addr).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third).await.is_err(),
        "a connection past the limit must wait"
    );
    first.close().await;
    let reply = within(WAIT, "the waiting connection is served once one closes", third).await.unwrap();
    assert_eq!(reply["successful"], json!(true));
}

// ---- handshakes per address ----

#[tokio::test]
async fn handshakes_past_the_rate_are_refused_with_advice_to_wait() {
    if skip_on_reference("Faye has no handshake rate limit") {
        return;
    }
    let node = TestNode::with_config(|c| {
        c.handshake_rate = 1.0;
        c.handshake_burst = 3;
    })
    .await;
    let batch = Value::Array((0..5).map(|_| bayeux::handshake_msg(&["long-polling"])).collect());
    let replies = send(node.addr, &batch).await;
    let ok: Vec<bool> = replies.iter().map(|r| r["successful"] == json!(true)).collect();
    assert_eq!(ok, [true, true, true, false, false], "{replies:?}");
    let refused = &replies[3];
    assert_eq!(refused["error"], json!("429::Too many handshakes from this address"));
    assert!(refused.get("clientId").is_none(), "{refused}");
    assert_eq!(refused["version"], json!("1.0"), "failed handshakes still carry the version");
    assert!(refused["supportedConnectionTypes"].is_array());
    assert_eq!(refused["advice"]["reconnect"], json!("handshake"));
    let interval = refused["advice"]["interval"].as_u64().expect("an interval to wait");
    // One token per second: the next one comes within 1 s, plus a random spread of up to 1 s.
    assert!((1..=2001).contains(&interval), "interval {interval}");

    assert_eq!(metric(&metrics(node.addr).await, "actioncluster_errors_total{code=\"429\"}"), 2.0);
    // Another address is not affected: the in-process publish path has none at all.
    node.publish("/x", json!(1)).await;
}

// ---- slow consumers ----

#[tokio::test]
async fn a_subscriber_that_never_connects_is_destroyed_as_a_slow_consumer() {
    if skip_on_reference("Faye has no queue bound") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_queue_bytes = 64 * 1024).await;
    let mut events = node.events();
    let slow = bayeux::subscriber(node.addr, &["/flood"]).await;
    let steady = bayeux::subscriber(node.addr, &["/other"]).await;
    let payload = "x".repeat(1024);
    let mut destroyed = false;
    for _ in 0..1000 {
        bayeux::publish(node.addr, "/flood", json!(payload)).await;
        while let Ok(ev) = events.try_recv() {
            destroyed |= ev == (ServerEvent::Disconnect { client_id: slow.clone() });
        }
        if destroyed {
            break;
        }
    }
    if !destroyed {
        wait_event(&mut events, WAIT, |ev| *ev == ServerEvent::Disconnect { client_id: slow.clone() }).await;
    }
    // The client is gone with its queue; the node's queues hold nothing for it.
    let reply = &bayeux::connect(node.addr, &slow).await[0];
    assert_eq!(reply["error"], json!(format!("401:{slow}:Unknown client")));
    let text = metrics(node.addr).await;
    assert_eq!(metric(&text, "actioncluster_slow_consumers_total"), 1.0);
    assert_eq!(metric(&text, "actioncluster_queued_messages"), 0.0);
    // Others are unaffected.
    bayeux::publish(node.addr, "/other", json!("still here")).await;
    assert_eq!(bayeux::connect_messages(node.addr, &steady).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stops_reading_is_destroyed_and_its_socket_dropped() {
    if skip_on_reference("Faye has no queue bound") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_queue_bytes = 256 * 1024).await;
    let mut events = node.events();
    let mut ws = Ws::open(node.addr).await;
    let id = ws.handshake().await;
    ws.subscribe(&id, "/flood").await;
    // A connect without hold: its reply confirms the socket is bound to the client.
    let connect =
        json!({"channel": "/meta/connect", "clientId": id, "connectionType": "websocket", "advice": {"timeout": 0}});
    assert_eq!(ws.request(&connect).await[0]["successful"], json!(true));
    // From here the test never reads: the kernel buffers fill, the node's writer stalls, and
    // the client's queue grows in the engine until it passes the bound.
    let payload = "y".repeat(64 * 1024);
    let mut destroyed = false;
    for _ in 0..4000 {
        node.publish("/flood", json!(payload)).await;
        tokio::task::yield_now().await;
        while let Ok(ev) = events.try_recv() {
            destroyed |= ev == (ServerEvent::Disconnect { client_id: id.clone() });
        }
        if destroyed {
            break;
        }
    }
    if !destroyed {
        wait_event(&mut events, WAIT, |ev| *ev == ServerEvent::Disconnect { client_id: id.clone() }).await;
    }
    let text = metrics(node.addr).await;
    assert_eq!(metric(&text, "actioncluster_slow_consumers_total"), 1.0);
    assert_eq!(metric(&text, "actioncluster_queued_messages"), 0.0);
    // The node lets go of the socket: reading now drains what was buffered, then it ends.
    let ended = ws.close_code_within(WAIT + Duration::from_secs(10)).await;
    assert!(
        ended.is_ok() || ended.as_ref().is_err_and(|e| !e.starts_with("still open")),
        "the socket must end: {ended:?}"
    );
}

#[tokio::test]
async fn on_redis_a_subscriber_whose_queue_outgrows_the_bound_is_destroyed() {
    if skip_on_reference("Faye has no queue bound") {
        return;
    }
    let redis = common::redis_server::RedisServer::start().await;
    let node = actioncluster::Node::start(actioncluster::Config {
        host: "127.0.0.1".into(),
        port: 0,
        redis_url: Some(redis.url()),
        max_queue_bytes: 64 * 1024,
        ..actioncluster::Config::default()
    })
    .await
    .unwrap();
    let addr = node.local_addr();
    let mut events = node.events();
    let slow = bayeux::subscriber(addr, &["/flood"]).await;
    let steady = bayeux::subscriber(addr, &["/flood"]).await;
    let payload = "z".repeat(1024);
    let mut destroyed = false;
    for n in 0..1000 {
        bayeux::publish(addr, "/flood", json!(payload)).await;
        if n % 16 == 0 {
            // The steady subscriber drains its queue now and then and stays under the bound.
            bayeux::connect(addr, &steady).await;
        }
        while let Ok(ev) = events.try_recv() {
            destroyed |= ev == (ServerEvent::Disconnect { client_id: slow.clone() });
        }
        if destroyed {
            break;
        }
    }
    assert!(destroyed, "the slow subscriber was not destroyed");
    let mut con = redis.connection().await;
    let queued: bool =
        redis::cmd("EXISTS").arg(format!("faye/clients/{slow}/messages")).query_async(&mut con).await.unwrap();
    assert!(!queued, "its queue is gone from redis");
    let reply = &bayeux::connect(addr, &slow).await[0];
    assert_eq!(reply["error"], json!(format!("401:{slow}:Unknown client")));
    let reply = &bayeux::connect(addr, &steady).await[0];
    assert_eq!(reply["successful"], json!(true), "the steady subscriber is still there: {reply}");
    assert_eq!(metric(&metrics(addr).await, "actioncluster_slow_consumers_total"), 1.0);
    node.shutdown().await;
}

// ---- reconnect storms ----

#[tokio::test]
async fn reconnect_jitter_spreads_the_advice_to_handshake_again() {
    if skip_on_reference("reconnect jitter is ours") {
        return;
    }
    let node = TestNode::with_config(|c| c.reconnect_jitter = Duration::from_secs(2)).await;
    let batch = Value::Array((0..200).map(|n| bayeux::connect_msg(&format!("{n:0>31}"))).collect());
    let intervals: Vec<u64> = send(node.addr, &batch)
        .await
        .iter()
        .map(|r| {
            assert_eq!(r["advice"]["reconnect"], json!("handshake"), "{r}");
            r["advice"]["interval"].as_u64().expect("an interval")
        })
        .collect();
    assert!(intervals.iter().all(|i| *i <= 2000), "{intervals:?}");
    let distinct: std::collections::HashSet<u64> = intervals.iter().copied().collect();
    assert!(distinct.len() > 20, "spread: {distinct:?}");

    // A failed handshake is advised the same way; a successful one keeps Faye's advice.
    let failed = bayeux::send_one(
        node.addr,
        json!({"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]}),
    )
    .await;
    assert_eq!(failed["advice"]["reconnect"], json!("handshake"));
    assert!(failed["advice"]["interval"].as_u64().is_some_and(|i| i <= 2000), "{failed}");
    let ok = bayeux::handshake_reply(node.addr).await;
    assert_eq!(ok["advice"], json!({"reconnect": "retry", "interval": 0, "timeout": node.timeout_ms()}));
}

/// A pool of keep-alive HTTP/1.1 connections shared by many concurrent clients.
struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
    slots: tokio::sync::Semaphore,
}

impl Pool {
    async fn new(addr: SocketAddr, size: usize) -> Arc<Self> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            idle.push(sender);
        }
        Arc::new(Self { addr, idle: Mutex::new(idle), slots: tokio::sync::Semaphore::new(size) })
    }

    /// POSTs one JSON message on a free connection; returns the reply array.
    async fn post(&self, message: &Value) -> Vec<Value> {
        let _slot = self.slots.acquire().await.unwrap();
        let mut sender = self.idle.lock().unwrap().pop().expect("a free connection per slot");
        sender.ready().await.expect("keep-alive connection still usable");
        let req = hyper::Request::post("/faye")
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(message.to_string())))
            .unwrap();
        let resp = sender.send_request(req).await.expect("reply");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        self.idle.lock().unwrap().push(sender);
        serde_json::from_slice(&body).expect("JSON array")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_reconnecting_at_once_are_all_served() {
    if skip_on_reference("reconnect jitter is ours") {
        return;
    }
    const CLIENTS: usize = 10_000;
    let node = TestNode::with_config(|c| {
        // Every test client shares 127.0.0.1: the per-address handshake limit would (rightly)
        // spread them over minutes.
        c.handshake_rate = 0.0;
        c.reconnect_jitter = Duration::from_millis(500);
        c.timeout = Duration::from_secs(30);
    })
    .await;
    let pool = Pool::new(node.addr, 200).await;
    let intervals = Arc::new(Mutex::new(Vec::with_capacity(CLIENTS)));

    // Clients of a node that restarted: their ids are unknown here. Each follows Faye's
    // client: connect -> 401 with advice -> wait the advised interval -> handshake -> connect.
    let storm = (0..CLIENTS).map(|n| {
        let pool = pool.clone();
        let intervals = intervals.clone();
        tokio::spawn(async move {
            let stale = format!("{n:0>31}");
            let reply = pool.post(&bayeux::connect_msg(&stale)).await;
            assert_eq!(reply[0]["error"], json!(format!("401:{stale}:Unknown client")));
            assert_eq!(reply[0]["advice"]["reconnect"], json!("handshake"));
            let interval = reply[0]["advice"]["interval"].as_u64().expect("jittered interval");
            intervals.lock().unwrap().push(interval);
            tokio::time::sleep(Duration::from_millis(interval)).await;

            let reply = pool.post(&bayeux::handshake_msg(&["long-polling"])).await;
            assert_eq!(reply[0]["successful"], json!(true), "{reply:?}");
            let id = reply[0]["clientId"].as_str().unwrap().to_string();
            let mut connect = bayeux::connect_msg(&id);
            connect["advice"] = json!({"timeout": 0});
            let reply = pool.post(&connect).await;
            assert_eq!(reply[0]["successful"], json!(true), "{reply:?}");
        })
    });
    let storm: Vec<_> = storm.collect();
    within(Duration::from_secs(60), "10,000 reconnects", async {
        for task in storm {
            task.await.expect("client task");
        }
    })
    .await;

    let intervals = intervals.lock().unwrap().clone();
    assert_eq!(intervals.len(), CLIENTS);
    assert!(intervals.iter().all(|i| *i <= 500), "within the jitter bound");
    let distinct: std::collections::HashSet<u64> = intervals.iter().copied().collect();
    assert!(distinct.len() > 100, "spread, not one value: {} distinct", distinct.len());

    // The node still serves.
    let id = bayeux::subscriber(node.addr, &["/after"]).await;
    bayeux::publish(node.addr, "/after", json!("storm over")).await;
    assert_eq!(bayeux::connect_messages(node.addr, &id).await[0]["data"], json!("storm over"));
    let text = metrics(node.addr).await;
    assert_eq!(metric(&text, "actioncluster_handshakes_total"), (CLIENTS + 1) as f64);
}
