//! The operator's dashboard over HTTP: off without a password (404), Basic auth with any user
//! name and the password, a lockout after repeated failures, the embedded page, and the JSON
//! it polls (nodes, traffic series, channels, tasks with dead-letter retry and remove, rooms).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use actioncluster::config::Secret;
use actioncluster::{Config, EnqueueOptions, Node, TaskDefinition};
use base64::Engine as _;
use common::{WAIT, bayeux, http};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const PASSWORD: &str = "dash-secret";

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> http::Reply {
    let headers: Vec<(&str, &str)> = auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
    http::request(addr, "GET", path, &headers, "").await
}

async fn overview(addr: SocketAddr) -> Value {
    let reply = get(addr, "/dashboard/api/overview", Some(&basic("ops", PASSWORD))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// Polls the overview until `ready` holds (the node samples every 2 s).
async fn overview_until(addr: SocketAddr, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let doc = overview(addr).await;
            if ready(&doc) {
                return doc;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the dashboard never showed {what}"))
}

fn config(password: Option<&str>) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout: Duration::from_secs(2),
        dashboard_password: password.map(|p| Secret(p.into())),
        ..Config::default()
    }
}

#[tokio::test]
async fn without_a_password_the_dashboard_is_off() {
    let node = Node::start(config(None)).await.unwrap();
    for path in ["/dashboard", "/dashboard/", "/dashboard/api/overview", "/dashboard/app.js"] {
        let reply = get(node.local_addr(), path, Some(&basic("ops", PASSWORD))).await;
        assert_eq!(reply.status, 404, "{path}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn every_request_needs_the_password_and_failures_lock_out() {
    let node = Node::start(config(Some(PASSWORD))).await.unwrap();
    let addr = node.local_addr();
    for path in ["/dashboard", "/dashboard/api/overview", "/dashboard/app.js"] {
        let reply = get(addr, path, None).await;
        assert_eq!(reply.status, 401, "{path}");
        assert!(reply.header("www-authenticate").is_some_and(|h| h.starts_with("Basic ")), "{path}");
    }
    let page = get(addr, "/dashboard", Some(&basic("anyone", PASSWORD))).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>actioncluster dashboard</title>"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let script = get(addr, "/dashboard/app.js", Some(&basic("", PASSWORD))).await;
    assert_eq!(script.status, 200);
    assert!(script.header("content-type").is_some_and(|c| c.starts_with("text/javascript")));

    for _ in 0..10 {
        assert_eq!(get(addr, "/dashboard", Some(&basic("ops", "guess"))).await.status, 401);
    }
    let locked = get(addr, "/dashboard", Some(&basic("ops", PASSWORD))).await;
    assert_eq!(locked.status, 429, "ten failures lock the address out, the right password included");
    assert!(locked.header("retry-after").is_some());
    // The Bayeux endpoint is not affected.
    bayeux::handshake(addr).await;
    node.shutdown().await;
}

#[tokio::test]
async fn the_overview_shows_nodes_traffic_channels_rooms_and_tasks() {
    let healed = Arc::new(AtomicBool::new(false));
    let flaky = {
        let healed = healed.clone();
        TaskDefinition::new("flaky", move |_ctx| {
            let healed = healed.clone();
            async move { if healed.load(Ordering::SeqCst) { Ok(()) } else { Err("the disk is full".into()) } }
        })
    };
    let node = Node::builder(config(Some(PASSWORD))).task(flaky).start().await.unwrap();
    let addr = node.local_addr();
    let subscriber = bayeux::subscriber(addr, &["/busy/room"]).await;
    for i in 0..50 {
        bayeux::publish(addr, "/busy/room", json!(i)).await;
    }
    assert_eq!(bayeux::connect_messages(addr, &subscriber).await.len(), 50);
    node.cluster().rooms().add("lobby", "conn-1").await.unwrap();
    node.cluster().tasks().enqueue("flaky", json!({"n": 1}), EnqueueOptions::default()).await.unwrap();

    let doc = overview_until(addr, "the publish burst, the client and the failed task", |d| {
        d["series"]["published"].as_array().is_some_and(|s| s.iter().any(|v| v.as_f64() > Some(0.0)))
            && d["tasks"]["failed"].as_array().is_some_and(|f| !f.is_empty())
            && d["nodes"][0]["clients"] == json!(1)
    })
    .await;
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{doc}");
    assert_eq!(nodes[0]["id"], json!(&*node.cluster().node_id()));
    assert_eq!(nodes[0]["layout"], json!("memory"));
    assert_eq!(nodes[0]["clients"], json!(1));
    assert_eq!(doc["channels"]["bySubscribers"][0]["channel"], json!("/busy/room"), "{doc}");
    assert_eq!(doc["channels"]["bySubscribers"][0]["subscribers"], json!(1));
    assert_eq!(doc["rooms"]["rooms"], json!([{"room": "lobby", "members": 1}]));
    assert_eq!(doc["redis"]["configured"], json!(false));
    let failed = &doc["tasks"]["failed"][0];
    assert_eq!(failed["task"], json!("flaky"));
    assert_eq!(failed["error"], json!("the disk is full"));

    let search = get(addr, "/dashboard/api/channel?name=%2Fbusy%2Froom", Some(&basic("ops", PASSWORD))).await;
    assert_eq!(search.json()["subscribers"], json!(1));
    assert_eq!(search.json()["published"], json!(50));

    // Retry: refused without the page's header (another site's form cannot send it).
    let raw = failed["raw"].as_str().unwrap().to_string();
    let auth = basic("ops", PASSWORD);
    let body = json!({"raw": raw}).to_string();
    let forged =
        http::request(addr, "POST", "/dashboard/api/failed/retry", &[("authorization", auth.as_str())], body.clone())
            .await;
    assert_eq!(forged.status, 403);
    healed.store(true, Ordering::SeqCst);
    let retried = http::request(
        addr,
        "POST",
        "/dashboard/api/failed/retry",
        &[("authorization", auth.as_str()), ("x-dashboard", "1")],
        body.clone(),
    )
    .await;
    assert_eq!(retried.json(), json!({"done": true}), "{}", retried.text());
    let doc = overview_until(addr, "an empty dead letter after the retry", |d| {
        d["tasks"]["queues"]["failed"] == json!(0) && d["tasks"]["queues"]["global"] == json!(0)
    })
    .await;
    assert_eq!(doc["tasks"]["failed"], json!([]));
    let again = http::request(
        addr,
        "POST",
        "/dashboard/api/failed/remove",
        &[("authorization", auth.as_str()), ("x-dashboard", "1")],
        body,
    )
    .await;
    assert_eq!(again.json(), json!({"done": false}), "the entry is gone");
    bayeux::disconnect(addr, &subscriber).await;
    node.shutdown().await;
}

#[tokio::test]
async fn remove_deletes_a_dead_letter_entry() {
    let fails = TaskDefinition::new("fails", |_ctx| async { Err("always".into()) });
    let node = Node::builder(config(Some(PASSWORD))).task(fails).start().await.unwrap();
    let addr = node.local_addr();
    node.cluster().tasks().enqueue("fails", json!({}), EnqueueOptions::default()).await.unwrap();
    let doc =
        overview_until(addr, "the failed task", |d| d["tasks"]["failed"].as_array().is_some_and(|f| !f.is_empty()))
            .await;
    let raw = doc["tasks"]["failed"][0]["raw"].as_str().unwrap();
    let auth = basic("ops", PASSWORD);
    let removed = http::request(
        addr,
        "POST",
        "/dashboard/api/failed/remove",
        &[("authorization", auth.as_str()), ("x-dashboard", "1")],
        json!({"raw": raw}).to_string(),
    )
    .await;
    assert_eq!(removed.json(), json!({"done": true}));
    assert!(node.cluster().tasks().failed(0, -1).await.unwrap().is_empty());
    node.shutdown().await;
}
