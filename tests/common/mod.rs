//! Helpers shared by the `spec_*` integration tests: [`TestNode`] (a node of ours on
//! 127.0.0.1:0, each test its own), raw HTTP ([`http`]), Bayeux over HTTP ([`bayeux`]),
//! websockets ([`ws`]) and EventSource streams ([`eventsource`]). Every wait is bounded.
//!
//! With `ACTIONCLUSTER_SPEC_REFERENCE=1` the same tests run against node.js Faye 1.4 instead
//! (tests/common/faye_reference.js, needing `node` and compat-tests/node_modules): that is how
//! the expectations were checked against the reference. Tests of settings Faye lacks skip
//! themselves there ([`skip_on_reference`]).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

#[path = "balancer.rs"]
pub mod balancer;
pub mod bayeux;
pub mod eventsource;
pub mod http;
#[path = "redis_server.rs"]
pub mod redis_server;
pub mod ws;

use actioncluster::{Config, Extension, Node, ServerEvent};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::broadcast;

/// Refuses every handshake, in-process ones included (an auth extension that forgot
/// `RequestContext::local`).
pub struct RefuseAll;

impl Extension for RefuseAll {
    fn incoming(&self, message: &mut actioncluster::Message, _request: &actioncluster::RequestContext) {
        if message.channel_str() == "/meta/handshake" {
            message.error = Some("403::Forbidden".to_string());
        }
    }
}

/// Upper bound on any single wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// The connect hold time most tests use.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// True when the tests run against node.js Faye rather than our node.
pub fn reference_mode() -> bool {
    std::env::var("ACTIONCLUSTER_SPEC_REFERENCE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// True when every [`TestNode`] is two nodes of ours on the native redis layout behind a
/// round-robin TCP balancer (`ACTIONCLUSTER_SPEC_ENGINE=native-pair`): each new connection
/// reaches the other node, so sessions move between nodes as with a balancer without
/// stickiness.
pub fn native_pair_mode() -> bool {
    std::env::var("ACTIONCLUSTER_SPEC_ENGINE").is_ok_and(|v| v == "native-pair")
}

/// For tests of one node's own state (its events, its limits): true (skip) in native-pair mode.
pub fn skip_on_native_pair(why: &str) -> bool {
    if native_pair_mode() {
        eprintln!("skipped on two native nodes: {why}");
        return true;
    }
    false
}

/// For tests of our own settings (no counterpart in Faye): true (skip) in reference mode.
pub fn skip_on_reference(why: &str) -> bool {
    if reference_mode() {
        eprintln!("skipped against the Faye reference: {why}");
        return true;
    }
    false
}

enum Kind {
    Ours(Box<Node>),
    NativePair { nodes: Vec<Node>, _balancer: balancer::Balancer, _redis: redis_server::RedisServer },
    Reference { _child: tokio::process::Child },
}

/// A running Bayeux endpoint at `http://addr/faye`.
pub struct TestNode {
    pub addr: SocketAddr,
    pub timeout: Duration,
    kind: Kind,
    events: broadcast::Sender<ServerEvent>,
}

impl TestNode {
    /// A node with the default test timeout (2 s).
    pub async fn start() -> Self {
        Self::with_timeout(DEFAULT_TIMEOUT).await
    }

    /// A node whose connects are held `timeout`.
    pub async fn with_timeout(timeout: Duration) -> Self {
        Self::with_config(|c| c.timeout = timeout).await
    }

    /// A node from the test config (127.0.0.1:0, 2 s timeout) changed by `f`.
    pub async fn with_config(f: impl FnOnce(&mut Config)) -> Self {
        Self::build(f, None::<NoExtension>).await
    }

    /// A node with one server extension.
    pub async fn with_extension(ext: impl Extension, f: impl FnOnce(&mut Config)) -> Self {
        Self::build(f, Some(ext)).await
    }

    async fn build<E: Extension>(f: impl FnOnce(&mut Config), ext: Option<E>) -> Self {
        let mut config = Config { host: "127.0.0.1".into(), port: 0, timeout: DEFAULT_TIMEOUT, ..Config::default() };
        f(&mut config);
        if reference_mode() {
            return Self::start_reference(&config).await;
        }
        if native_pair_mode() {
            return Self::start_native_pair(config, ext).await;
        }
        let timeout = config.timeout;
        let mut builder = Node::builder(config);
        if let Some(ext) = ext {
            builder = builder.extension(ext);
        }
        let node = builder.start().await.expect("node starts");
        let addr = node.local_addr();
        // Forward the node's events into our own channel so that `events()` behaves the same
        // in both modes.
        let (tx, _) = broadcast::channel(4096);
        forward_events(&node, &tx);
        Self { addr, timeout, kind: Kind::Ours(Box::new(node)), events: tx }
    }

    async fn start_native_pair<E: Extension>(mut config: Config, ext: Option<E>) -> Self {
        let redis = redis_server::RedisServer::start().await;
        config.redis_url = Some(redis.url());
        config.redis_layout = actioncluster::RedisLayout::Native;
        // Expiry on redis is garbage collection: run it often enough for "about twice the timeout".
        config.gc_interval = (config.timeout / 4).max(Duration::from_millis(100));
        let ext = ext.map(|e| std::sync::Arc::new(e));
        let (tx, _) = broadcast::channel(4096);
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let mut builder = Node::builder(config.clone());
            if let Some(ext) = &ext {
                builder = builder.extension(SharedExtension(ext.clone()));
            }
            let node = builder.start().await.expect("native node starts");
            forward_events(&node, &tx);
            nodes.push(node);
        }
        let balancer = balancer::Balancer::start(nodes.iter().map(|n| n.local_addr()).collect()).await;
        Self {
            addr: balancer.addr(),
            timeout: config.timeout,
            kind: Kind::NativePair { nodes, _balancer: balancer, _redis: redis },
            events: tx,
        }
    }

    async fn start_reference(config: &Config) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/faye_reference.js");
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(script).env("FAYE_TIMEOUT", config.timeout.as_secs_f64().to_string());
        if let Some(ping) = config.ping {
            cmd.env("FAYE_PING", ping.as_secs_f64().to_string());
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("node runs (reference mode)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port: u16 = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(p) = line.strip_prefix("LISTENING ") {
                    return p.trim().parse().expect("port");
                }
            }
            panic!("reference server exited before listening");
        })
        .await
        .expect("reference server listening in time");
        let (tx, _) = broadcast::channel(4096);
        let fwd = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(rest) = line.strip_prefix("EVENT ") else { continue };
                let v: Value = serde_json::from_str(rest).expect("event JSON");
                let s = |i: usize| v[i].as_str().unwrap_or_default().to_string();
                let ev = match v[0].as_str() {
                    Some("handshake") => ServerEvent::Handshake { client_id: s(1) },
                    Some("subscribe") => ServerEvent::Subscribe { client_id: s(1), channel: s(2) },
                    Some("unsubscribe") => ServerEvent::Unsubscribe { client_id: s(1), channel: s(2) },
                    Some("publish") => ServerEvent::Publish {
                        client_id: v[1].as_str().map(str::to_string),
                        channel: s(2),
                        data: v[3].clone(),
                    },
                    Some("disconnect") => ServerEvent::Disconnect { client_id: s(1) },
                    _ => continue,
                };
                let _ = fwd.send(ev);
            }
        });
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            timeout: config.timeout,
            kind: Kind::Reference { _child: child },
            events: tx,
        }
    }

    /// The node's server events from now on.
    pub fn events(&self) -> broadcast::Receiver<ServerEvent> {
        self.events.subscribe()
    }

    /// Publishes in-process (Node::publish).
    pub async fn publish(&self, channel: &str, data: Value) {
        match &self.kind {
            Kind::Ours(node) => tokio::time::timeout(WAIT, node.publish(channel, data))
                .await
                .expect("in-process publish in time")
                .expect("in-process publish"),
            Kind::NativePair { nodes, .. } => tokio::time::timeout(WAIT, nodes[0].publish(channel, data))
                .await
                .expect("in-process publish in time")
                .expect("in-process publish"),
            Kind::Reference { .. } => {
                let body = json!({"channel": channel, "data": data}).to_string();
                let reply = http::request(self.addr, "POST", "/__publish", &[], body).await;
                assert_eq!(reply.status, 200, "reference publish: {}", reply.text());
            }
        }
    }

    /// The configured hold time in milliseconds, as advice carries it.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }

    /// Stops the node.
    pub async fn shutdown(self) {
        match self.kind {
            Kind::Ours(node) => (*node).shutdown().await,
            Kind::NativePair { nodes, .. } => {
                for node in nodes {
                    node.shutdown().await;
                }
            }
            Kind::Reference { .. } => {}
        }
    }
}

struct NoExtension;
impl Extension for NoExtension {}

/// Forwards `node`'s events into `tx`, so `TestNode::events` behaves the same in every mode.
fn forward_events(node: &Node, tx: &broadcast::Sender<ServerEvent>) {
    let mut rx = node.events();
    let fwd = tx.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let _ = fwd.send(ev);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// One extension shared by both nodes of a native pair.
struct SharedExtension<E>(std::sync::Arc<E>);

impl<E: Extension> Extension for SharedExtension<E> {
    fn incoming(&self, message: &mut actioncluster::Message, request: &actioncluster::RequestContext) {
        self.0.incoming(message, request)
    }
    fn consumes(
        &self,
        message: &actioncluster::Message,
        request: &actioncluster::RequestContext,
    ) -> Result<bool, String> {
        self.0.consumes(message, request)
    }
    fn outgoing(&self, message: &mut actioncluster::Message, recipient: Option<&str>) {
        self.0.outgoing(message, recipient)
    }
    fn rewrites_outgoing(&self) -> bool {
        self.0.rewrites_outgoing()
    }
}

/// Waits (bounded) for the next event matching `pred`; panics with the events seen otherwise.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<ServerEvent>,
    bound: Duration,
    mut pred: impl FnMut(&ServerEvent) -> bool,
) -> ServerEvent {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(bound, async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(ev) => seen.push(ev),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await;
    match found {
        Ok(ev) => ev,
        Err(_) => panic!("no matching event within {bound:?}; saw {seen:?}"),
    }
}

/// The next event (bounded).
pub async fn next_event(rx: &mut broadcast::Receiver<ServerEvent>) -> ServerEvent {
    wait_event(rx, WAIT, |_| true).await
}

/// Events whose client id is `client_id`.
pub fn event_client(ev: &ServerEvent) -> Option<&str> {
    match ev {
        ServerEvent::Handshake { client_id }
        | ServerEvent::Subscribe { client_id, .. }
        | ServerEvent::Unsubscribe { client_id, .. }
        | ServerEvent::Disconnect { client_id } => Some(client_id),
        ServerEvent::Publish { client_id, .. } => client_id.as_deref(),
    }
}

/// Runs `fut` under `bound`, panicking with `what` if it takes longer.
pub async fn within<T>(bound: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(bound, fut).await.unwrap_or_else(|_| panic!("{what}: not done within {bound:?}"))
}
