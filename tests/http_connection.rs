//! The mount path's own HTTP/1.1 layer, over raw TCP: keep-alive and pipelining, the hand-off
//! of a connection to hyper (other paths, chunked bodies), refusals of bad requests, a peer
//! that leaves a held connect, and a shutdown that answers a held connect and closes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestNode, WAIT, http, within};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 connection, written and read byte for byte.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response as it came off the wire.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.expect("connect"), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = within(WAIT, "bytes from the server", self.stream.read(&mut chunk)).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response: `Content-Length` or chunked.
    async fn response(&mut self) -> RawResponse {
        let (status, headers, len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = resp.parse(&self.buf).expect("a valid response head") {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (resp.code.expect("status"), headers, len);
            }
            assert!(self.fill().await, "connection closed before a response head");
        };
        self.buf.drain(..len);
        let mut resp = RawResponse { status, headers, body: Vec::new() };
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "connection closed inside a chunked body");
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "connection closed inside a chunk");
                }
                resp.body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    return resp;
                }
            }
        }
        let len: usize = resp.header("content-length").map(|v| v.parse().unwrap()).unwrap_or(0);
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed inside a body");
        }
        resp.body = self.buf.drain(..len).collect();
        resp
    }

    /// True when the server closes the connection with nothing more to read.
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

fn post(body: &str) -> Vec<u8> {
    format!(
        "POST /faye HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn handshake_body() -> String {
    json!([{"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]}]).to_string()
}

fn connect_body(client_id: &str) -> String {
    json!([{"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}]).to_string()
}

fn client_id(resp: &RawResponse) -> String {
    let reply = resp.json();
    assert_eq!(reply[0]["successful"], json!(true), "{reply}");
    reply[0]["clientId"].as_str().expect("clientId").to_string()
}

#[tokio::test]
async fn one_connection_carries_bayeux_requests_then_other_paths_through_hyper() {
    let node = TestNode::start().await;
    let mut raw = Raw::connect(node.addr).await;
    raw.send(&post(&handshake_body())).await;
    let resp = raw.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json; charset=utf-8"));
    assert!(resp.header("date").is_some(), "a Date header");
    let id = client_id(&resp);
    let subscribe = json!([{"channel": "/meta/subscribe", "clientId": id, "subscription": "/news"}]).to_string();
    raw.send(&post(&subscribe)).await;
    assert_eq!(raw.response().await.json()[0]["successful"], json!(true));

    // Another path on the same connection: hyper serves it, and the rest of the connection.
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let health = raw.response().await;
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok"[..]));
    raw.send(&post(&subscribe)).await;
    assert_eq!(raw.response().await.json()[0]["successful"], json!(true), "a Bayeux request after the hand-off");
    node.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let node = TestNode::start().await;
    let mut raw = Raw::connect(node.addr).await;
    let mut both = post(&handshake_body());
    let unknown = json!([{"channel": "/meta/connect", "clientId": "nobody", "connectionType": "long-polling"}]);
    both.extend(post(&unknown.to_string()));
    raw.send(&both).await;
    let first = raw.response().await;
    client_id(&first);
    let second = raw.response().await.json();
    assert_eq!(second[0]["channel"], json!("/meta/connect"), "{second}");
    assert_eq!(second[0]["successful"], json!(false), "{second}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_chunked_body_is_read_by_hyper() {
    let node = TestNode::start().await;
    let mut raw = Raw::connect(node.addr).await;
    let body = handshake_body();
    let (a, b) = body.split_at(10);
    let request = format!(
        "POST /faye HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    raw.send(request.as_bytes()).await;
    let resp = raw.response().await;
    assert_eq!(resp.status, 200);
    client_id(&resp);
    node.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_the_connection_closed() {
    let node = TestNode::with_config(|c| c.max_body_bytes = 1000).await;
    // The body follows the head at once, as clients send it, and is still arriving when the
    // refusal is written: the refusal arrives whole, then the connection closes. (The server
    // reads and drops the rest of the body before closing; on loopback a close with the body
    // unread does not lose the refusal either, so this does not show that part.)
    let (mut rd, mut wr) = TcpStream::connect(node.addr).await.expect("connect").into_split();
    let body_len = 800_000;
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /faye HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
        );
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&vec![b' '; body_len]).await;
        wr
    });
    let mut got = Vec::new();
    let read = within(WAIT, "the refusal, then the close", rd.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(read.is_ok(), "the connection was reset ({read:?}); read so far: {text:?}");
    assert!(text.starts_with("HTTP/1.1 413 "), "{text:?}");
    assert!(text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{text:?}");
    drop(writer.await);
    node.shutdown().await;
}

#[tokio::test]
async fn malformed_heads_are_refused_with_400() {
    let node = TestNode::start().await;
    for head in [
        &b"POST /faye HTTP/1.1\r\nBad Header\r\n\r\n"[..],
        b"POST /faye HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /faye HTTP/1.1\r\nContent-Length: +2\r\n\r\n[]",
        b"POST /faye HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]",
    ] {
        let mut raw = Raw::connect(node.addr).await;
        raw.send(head).await;
        let resp = raw.response().await;
        assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(head));
        assert!(raw.closed().await);
    }
    node.shutdown().await;
}

/// The node's long-polling gauge (requests in flight, held connects among them).
async fn long_polls_in_flight(node: &TestNode) -> u64 {
    let metrics = http::request(node.addr, "GET", "/metrics", &[], "").await.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("actioncluster_connections{transport=\"long-polling\"} "))
        .expect("the long-polling gauge")
        .parse()
        .unwrap()
}

/// A connection whose client's connect is held (seen in the node's gauge).
async fn held_connect(node: &TestNode) -> Raw {
    let mut raw = Raw::connect(node.addr).await;
    raw.send(&post(&handshake_body())).await;
    let id = client_id(&raw.response().await);
    raw.send(&post(&connect_body(&id))).await;
    within(WAIT, "the connect to be held", async {
        while long_polls_in_flight(node).await != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    raw
}

#[tokio::test]
async fn a_peer_that_leaves_lets_its_held_connect_go() {
    let node = TestNode::with_timeout(Duration::from_secs(60)).await;
    let raw = held_connect(&node).await;
    drop(raw);
    within(WAIT, "the held connect to be let go", async {
        while long_polls_in_flight(&node).await != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_held_long_poll_then_closes() {
    let node = TestNode::with_timeout(Duration::from_secs(60)).await;
    let mut raw = held_connect(&node).await;
    let stopping = tokio::spawn(node.shutdown());
    let resp = raw.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    let reply = resp.json();
    assert_eq!(reply[0]["channel"], json!("/meta/connect"), "{reply}");
    assert_eq!(reply[0]["successful"], json!(true), "{reply}");
    assert!(raw.closed().await, "the connection closes after the reply");
    within(WAIT, "the node to stop", stopping).await.unwrap();
}

#[tokio::test]
async fn a_websocket_upgrade_on_a_connection_hyper_serves_works() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let node = TestNode::start().await;
    let mut raw = Raw::connect(node.addr).await;
    // The first request is not the mount's: hyper serves the connection from here on, and
    // the upgrade takes the socket back from it.
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(raw.response().await.status, 200);
    assert!(raw.buf.is_empty());
    let url = format!("ws://{}/faye", node.addr);
    let (mut ws, _) = within(WAIT, "the upgrade", tokio_tungstenite::client_async(url.as_str(), raw.stream))
        .await
        .expect("websocket upgrade through hyper");
    let handshake =
        json!([{"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["websocket"]}]);
    ws.send(WsMessage::Text(handshake.to_string().into())).await.expect("send");
    let reply = loop {
        match within(WAIT, "the handshake reply", ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => break serde_json::from_str::<Value>(&text).expect("JSON"),
            Some(Ok(_)) => continue,
            other => panic!("no reply: {other:?}"),
        }
    };
    assert_eq!(reply[0]["successful"], json!(true), "{reply}");
    drop(ws);
    node.shutdown().await;
}
