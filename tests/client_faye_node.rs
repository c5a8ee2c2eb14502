//! The Rust client against a real node.js Faye 1.4 server (npm `faye` from
//! compat-tests/node_modules): publish/subscribe over both transports, a rejected publish,
//! and a restart of the Faye server mid-stream. Skipped, with a note, where node or the npm
//! package is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use actioncluster::{ConnectionState, TransportPreference};
use client_support::{WAIT, builder, next};
use serde_json::json;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SERVER: &str = r#"
const http = require('http');
const faye = require('faye');
const bayeux = new faye.NodeAdapter({ mount: '/faye', timeout: 2 });
bayeux.addExtension({
  incoming(message, callback) {
    if (message.channel === '/private') message.error = '403:/private:Forbidden channel';
    callback(message);
  }
});
const server = http.createServer();
bayeux.attach(server);
server.listen(Number(process.argv[1] || 0), '127.0.0.1', () => console.log(server.address().port));
"#;

fn node_modules() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("compat-tests/node_modules");
    dir.join("faye/package.json").exists().then_some(dir)
}

/// A node.js Faye server on `port` (0: any), killed on drop.
struct FayeServer {
    child: Child,
    port: u16,
}

impl FayeServer {
    async fn start(modules: &PathBuf, port: u16) -> Option<FayeServer> {
        let mut child = Command::new("node")
            .arg("-e")
            .arg(SERVER)
            .arg(port.to_string())
            .env("NODE_PATH", modules)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let mut line = String::new();
        tokio::time::timeout(WAIT, BufReader::new(stdout).read_line(&mut line)).await.ok()?.ok()?;
        let port = line.trim().parse().ok()?;
        Some(FayeServer { child, port })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/faye", self.port)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn faye(port: u16) -> Option<FayeServer> {
    let Some(modules) = node_modules() else {
        eprintln!("skipped: compat-tests/node_modules/faye is not installed");
        return None;
    };
    let server = FayeServer::start(&modules, port).await;
    if server.is_none() {
        eprintln!("skipped: could not start node with the faye package");
    }
    server
}

async fn pub_sub(preference: TransportPreference) {
    let Some(server) = faye(0).await else { return };
    let subscriber = builder(&server.endpoint(), preference).build().await.unwrap();
    let publisher = builder(&server.endpoint(), preference).build().await.unwrap();
    let mut sub = subscriber.subscribe("/chat/**").await.unwrap();
    for n in 0..10 {
        publisher.publish(format!("/chat/room{}", n % 2), json!({ "n": n })).await.unwrap();
    }
    for n in 0..10 {
        let message = next(&mut sub).await;
        assert_eq!(message.channel, format!("/chat/room{}", n % 2));
        assert_eq!(message.json(), json!({ "n": n }));
    }
    let error = publisher.publish("/private", json!(1)).await.unwrap_err();
    assert_eq!(error.bayeux_error().unwrap().to_string(), "403:/private:Forbidden channel");
    let error = publisher.subscribe("/meta/x").await.unwrap_err();
    assert_eq!(error.bayeux_error().unwrap().code, 403);
    drop(sub);
    subscriber.disconnect().await.unwrap();
    publisher.disconnect().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn faye_server_websocket() {
    pub_sub(TransportPreference::WebSocket).await;
}

#[tokio::test]
async fn faye_server_long_polling() {
    pub_sub(TransportPreference::LongPolling).await;
}

async fn restart(preference: TransportPreference) {
    let Some(first) = faye(0).await else { return };
    let port = first.port;
    let client = builder(&first.endpoint(), preference).build().await.unwrap();
    let old_id = client.client_id().unwrap();
    let mut sub = client.subscribe("/news").await.unwrap();
    let mut state = client.watch_state();
    first.stop().await;
    state.wait_for(|s| *s == ConnectionState::Connecting).await.unwrap();

    let Some(second) = faye(port).await else { panic!("faye restarts on port {port}") };
    let reconnected = tokio::time::timeout(WAIT, state.wait_for(|s| matches!(s, ConnectionState::Connected { .. })))
        .await
        .unwrap()
        .unwrap();
    assert!(!matches!(reconnected, ConnectionState::Connected { ref client_id, .. } if *client_id == old_id));
    // The client's own publish is sent after the restored subscribe, so it comes back.
    client.publish("/news", json!("resumed")).await.unwrap();
    assert_eq!(next(&mut sub).await.json(), json!("resumed"));
    let other = builder(&second.endpoint(), preference).build().await.unwrap();
    other.publish("/news", json!("from another client")).await.unwrap();
    assert_eq!(next(&mut sub).await.json(), json!("from another client"));
    other.disconnect().await.unwrap();
    client.disconnect().await.unwrap();
    second.stop().await;
}

#[tokio::test]
async fn faye_server_restart_websocket() {
    restart(TransportPreference::WebSocket).await;
}

#[tokio::test]
async fn faye_server_restart_long_polling() {
    restart(TransportPreference::LongPolling).await;
}
