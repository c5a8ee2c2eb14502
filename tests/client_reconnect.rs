//! The client across a server restart: the node on the client's port is shut down and a new
//! one started on the same port; the client re-handshakes (the new node answers 401 to the
//! old id), restores its subscriptions, sends the publishes queued during the outage, and
//! delivery resumes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use actioncluster::{ClientError, ConnectionState, Node, TransportPreference};
use client_support::{WAIT, builder, client, config, next, node};
use serde_json::json;
use std::time::Duration;

async fn restart_mid_stream(preference: TransportPreference) {
    let first = node().await;
    let port = first.local_addr().port();
    let client = client(&first, preference).await;
    let old_id = client.client_id().unwrap();
    let mut news = client.subscribe("/news/**").await.unwrap();
    let mut exact = client.subscribe("/alerts").await.unwrap();
    first.publish("/news/before", json!(0)).await.unwrap();
    assert_eq!(next(&mut news).await.json(), json!(0));

    let mut state = client.watch_state();
    first.shutdown().await;
    // The client notices the loss.
    state.wait_for(|s| *s == ConnectionState::Connecting).await.unwrap();

    // Publishes made during the outage wait for the new session instead of failing.
    let queued: Vec<_> = (1..=5)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.publish("/news/during", json!(n)).await })
        })
        .collect();

    let second = Node::start(config(port)).await.expect("a new node on the same port");
    let new_id = match tokio::time::timeout(WAIT, state.wait_for(|s| matches!(s, ConnectionState::Connected { .. })))
        .await
        .unwrap()
        .unwrap()
    {
        ConnectionState::Connected { client_id, .. } => client_id,
        other => panic!("{other:?}"),
    };
    assert_ne!(new_id, old_id, "the new node does not know the old id: a new handshake");

    for task in queued {
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    }
    // The queued publishes went out after the subscriptions were restored, so they come back.
    let mut during: Vec<i64> = Vec::new();
    for _ in 0..5 {
        let m = next(&mut news).await;
        assert_eq!(m.channel, "/news/during");
        during.push(m.json().as_i64().unwrap());
    }
    during.sort_unstable();
    assert_eq!(during, vec![1, 2, 3, 4, 5]);

    // Delivery from the new node resumes on every subscription.
    second.publish("/news/after", json!("after")).await.unwrap();
    second.publish("/alerts", json!("alert")).await.unwrap();
    assert_eq!(next(&mut news).await.json(), json!("after"));
    assert_eq!(next(&mut exact).await.json(), json!("alert"));

    client.disconnect().await.unwrap();
    second.shutdown().await;
}

#[tokio::test]
async fn server_restart_resubscribes_websocket() {
    restart_mid_stream(TransportPreference::WebSocket).await;
}

#[tokio::test]
async fn server_restart_resubscribes_long_polling() {
    restart_mid_stream(TransportPreference::LongPolling).await;
}

#[tokio::test]
async fn server_restart_resubscribes_auto() {
    restart_mid_stream(TransportPreference::Auto).await;
}

#[tokio::test]
async fn gives_up_after_the_configured_attempts() {
    let node = node().await;
    let client = builder(&node.endpoint(), TransportPreference::WebSocket)
        .max_reconnect_attempts(2)
        .backoff(Duration::from_millis(10), Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let mut sub = client.subscribe("/x").await.unwrap();
    let mut state = client.watch_state();
    node.shutdown().await;
    state.wait_for(|s| *s == ConnectionState::Closed).await.unwrap();
    assert!(tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut sub)).await.unwrap().is_none());
    assert!(matches!(client.publish("/x", json!(1)).await, Err(ClientError::Disconnected)));
}

#[tokio::test]
async fn a_publish_waiting_too_long_times_out() {
    let node = node().await;
    let client = builder(&node.endpoint(), TransportPreference::LongPolling)
        .request_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let mut state = client.watch_state();
    node.shutdown().await;
    state.wait_for(|s| *s == ConnectionState::Connecting).await.unwrap();
    let result = client.publish("/x", json!(1)).await;
    assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
}

#[tokio::test]
async fn an_unanswered_handshake_times_out() {
    let silent = client_support::SilentWsServer::start().await;
    let result = builder(&silent.endpoint(), TransportPreference::WebSocket)
        .request_timeout(Duration::from_millis(300))
        .build()
        .await;
    assert!(matches!(result, Err(ClientError::Transport(_))), "{result:?}");
}

/// Answers every connect with 401, as a server that keeps forgetting its clients would.
struct ForgetfulServer {
    handshakes: std::sync::Mutex<Vec<std::time::Instant>>,
    seen: tokio::sync::Notify,
}

impl actioncluster::Extension for ForgetfulServer {
    fn incoming(&self, message: &mut actioncluster::Message, _request: &actioncluster::RequestContext) {
        match message.channel_str() {
            "/meta/handshake" => {
                self.handshakes.lock().unwrap().push(std::time::Instant::now());
                self.seen.notify_one();
            }
            "/meta/connect" => message.error = Some("401::Unknown client".into()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn repeated_rehandshakes_back_off() {
    let forgetful = std::sync::Arc::new(ForgetfulServer { handshakes: Default::default(), seen: Default::default() });
    struct Shared(std::sync::Arc<ForgetfulServer>);
    impl actioncluster::Extension for Shared {
        fn incoming(&self, message: &mut actioncluster::Message, request: &actioncluster::RequestContext) {
            self.0.incoming(message, request);
        }
    }
    let node = Node::builder(config(0)).extension(Shared(forgetful.clone())).start().await.unwrap();
    let min = Duration::from_millis(200);
    let _client = builder(&node.endpoint(), TransportPreference::WebSocket)
        .backoff(min, Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while forgetful.handshakes.lock().unwrap().len() < 4 {
            forgetful.seen.notified().await;
        }
    })
    .await
    .expect("four handshakes");
    let times = forgetful.handshakes.lock().unwrap().clone();
    // The first re-handshake is immediate (a restarted server); later ones back off.
    assert!(times[2] - times[1] >= min / 2, "{:?}", times[2] - times[1]);
    assert!(times[3] - times[2] >= min, "{:?}", times[3] - times[2]);
    node.shutdown().await;
}
