//! Minimal Bayeux-over-HTTP and websocket helpers for the engine tests: real HTTP requests
//! to a node, no client library in between.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// POSTs a Bayeux body to `addr`'s `/faye`; returns the HTTP status and the parsed reply.
pub async fn post(addr: SocketAddr, body: &Value) -> (u16, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let req = Request::post("/faye")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req)).await.expect("reply in time").expect("reply");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A long-polling client speaking raw Bayeux to one or more nodes.
pub struct LpClient {
    pub client_id: String,
}

impl LpClient {
    /// Handshakes with `addr`.
    pub async fn handshake(addr: SocketAddr) -> Self {
        let (_, reply) = post(
            addr,
            &json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]}),
        )
        .await;
        let client_id = reply[0]["clientId"].as_str().expect("clientId").to_string();
        Self { client_id }
    }

    /// Subscribes through `addr`; panics unless successful.
    pub async fn subscribe(&self, addr: SocketAddr, channel: &str) {
        let (_, reply) =
            post(addr, &json!({"channel": "/meta/subscribe", "clientId": self.client_id, "subscription": channel}))
                .await;
        assert_eq!(reply[0]["successful"], json!(true), "subscribe {channel}: {reply}");
    }

    /// One connect through `addr` with a hold of `hold_ms`; returns the reply array.
    pub async fn connect_raw(&self, addr: SocketAddr, hold_ms: u64) -> Value {
        post(
            addr,
            &json!({"channel": "/meta/connect", "clientId": self.client_id, "connectionType": "long-polling",
                    "advice": {"timeout": hold_ms}}),
        )
        .await
        .1
    }

    /// One connect through `addr`; returns the delivered (non-meta) messages.
    pub async fn connect(&self, addr: SocketAddr, hold_ms: u64) -> Vec<Value> {
        let reply = self.connect_raw(addr, hold_ms).await;
        let arr = reply.as_array().cloned().unwrap_or_default();
        assert_eq!(arr.first().map(|r| r["successful"].clone()), Some(json!(true)), "connect failed: {reply}");
        arr.into_iter().filter(|m| !m["channel"].as_str().unwrap_or("").starts_with("/meta/")).collect()
    }
}

/// Publishes over HTTP through `addr`; returns the reply message.
pub async fn publish(addr: SocketAddr, channel: &str, data: Value) -> Value {
    let (_, reply) = post(addr, &json!({"channel": channel, "data": data})).await;
    reply[0].clone()
}

/// A long-polling client subscribed to `/hop` on `addrs[1]` whose connects go round
/// `addrs[..connect_over]` while `n` numbers are published round all of `addrs`: asserts it
/// gets every number once, in order, and returns how many connects it made.
pub async fn hop_between_nodes(addrs: &[SocketAddr], connect_over: usize, n: i64) -> usize {
    let client = LpClient::handshake(addrs[0]).await;
    client.subscribe(addrs[1], "/hop").await;
    let pub_addrs = addrs.to_vec();
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            let ack = publish(pub_addrs[i as usize % pub_addrs.len()], "/hop", json!(i)).await;
            assert_eq!(ack["successful"], json!(true));
        }
    });
    let mut received = Vec::new();
    let mut request = 0usize;
    let collect = async {
        while (received.len() as i64) < n {
            let got = client.connect(addrs[request % connect_over], 200).await;
            request += 1;
            received.extend(got.into_iter().map(|m| m["data"].as_i64().unwrap()));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect).await.expect("all messages arrive");
    publisher.await.unwrap();
    assert_eq!(received, (0..n).collect::<Vec<_>>(), "every message once, in order");
    request
}

/// A websocket Bayeux client.
pub struct WsClient {
    pub client_id: String,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    /// Delivered messages read while waiting for something else.
    pending: Vec<Value>,
}

impl WsClient {
    /// Opens a websocket to `addr`, handshakes, subscribes to `channel` and sends a connect.
    pub async fn subscribed(addr: SocketAddr, channel: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/faye")).await.expect("ws connect");
        let mut c = Self { client_id: String::new(), ws, pending: Vec::new() };
        c.handshake_and_subscribe(channel).await;
        c
    }

    /// On the same socket: handshakes (a new client id), subscribes to `channel` and sends a
    /// connect, as a Faye client does after `reconnect: "handshake"` advice.
    pub async fn handshake_and_subscribe(&mut self, channel: &str) {
        self.send(json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["websocket"]}))
            .await;
        let hs = self.next_reply("/meta/handshake").await;
        self.client_id = hs["clientId"].as_str().unwrap_or_else(|| panic!("no clientId in {hs}")).to_string();
        self.send(json!({"channel": "/meta/subscribe", "clientId": self.client_id, "subscription": channel})).await;
        let sub = self.next_reply("/meta/subscribe").await;
        assert_eq!(sub["successful"], json!(true), "{sub}");
        self.send(json!({"channel": "/meta/connect", "clientId": self.client_id, "connectionType": "websocket"})).await;
    }

    /// Opens a websocket to `addr` for a client that handshook elsewhere (a reconnect after
    /// its node went away) and sends its connect.
    pub async fn resume(addr: SocketAddr, client_id: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/faye")).await.expect("ws connect");
        let mut c = Self { client_id: client_id.to_string(), ws, pending: Vec::new() };
        c.send(json!({"channel": "/meta/connect", "clientId": client_id, "connectionType": "websocket"})).await;
        c
    }

    /// The next delivered message, or `None` once the server closed the socket.
    pub async fn next_message_or_close(&mut self) -> Option<Value> {
        tokio::time::timeout(WAIT, async {
            loop {
                if !self.pending.is_empty() {
                    return Some(self.pending.remove(0));
                }
                let batch = match self.ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        serde_json::from_str::<Value>(&t).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => continue,
                };
                for m in batch {
                    if !m["channel"].as_str().unwrap_or("").starts_with("/meta/") {
                        self.pending.push(m);
                    } else if m["channel"] == json!("/meta/connect") && m["successful"] == json!(true) {
                        let id = self.client_id.clone();
                        let _ = self
                            .ws
                            .send(WsMessage::Text(
                                json!({"channel": "/meta/connect", "clientId": id, "connectionType": "websocket"})
                                    .to_string()
                                    .into(),
                            ))
                            .await;
                    }
                }
            }
        })
        .await
        .expect("a message or a close in time")
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(WsMessage::Text(v.to_string().into())).await.expect("ws send");
    }

    async fn read_batch(&mut self) -> Vec<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("ws message in time");
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    return serde_json::from_str::<Value>(&t)
                        .ok()
                        .and_then(|v| v.as_array().cloned())
                        .unwrap_or_default();
                }
                Some(Ok(_)) => continue,
                other => panic!("websocket ended: {other:?}"),
            }
        }
    }

    /// The next reply on `channel` (a message carrying `successful`); deliveries read on the
    /// way are kept for [`WsClient::next_message`]. Panics if nothing arrives within [`WAIT`].
    pub async fn next_reply(&mut self, channel: &str) -> Value {
        loop {
            for m in self.read_batch().await {
                if m["channel"] == json!(channel) && m.get("successful").is_some() {
                    return m;
                }
                if !m["channel"].as_str().unwrap_or("").starts_with("/meta/") {
                    self.pending.push(m);
                }
            }
        }
    }

    /// The next delivered (non-meta) message; panics if none arrives within [`WAIT`].
    pub async fn next_message(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.next_message_unbounded()).await.expect("a delivered message in time")
    }

    async fn next_message_unbounded(&mut self) -> Value {
        loop {
            if !self.pending.is_empty() {
                return self.pending.remove(0);
            }
            for m in self.read_batch().await {
                if !m["channel"].as_str().unwrap_or("").starts_with("/meta/") {
                    self.pending.push(m);
                } else if m["channel"] == json!("/meta/connect") {
                    // Held connect released: send the next one, as a Faye client does.
                    let id = self.client_id.clone();
                    self.send(json!({"channel": "/meta/connect", "clientId": id, "connectionType": "websocket"})).await;
                }
            }
        }
    }
}
