//! Malformed input against a running node: raw HTTP requests, raw websocket frames and
//! protocol sequences a well-behaved client never sends. Each gets a 4xx, a Bayeux error (an
//! unsuccessful reply) or, where Faye does so, a silently ignored frame or a closed socket:
//! never a 5xx, never a hang (every wait is bounded), never a dead node. Two well-behaved
//! clients (long-polling and websocket) stay connected throughout, and are checked together
//! with fresh clients at the start, in the middle and at the end of each test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bayeux::{self, send, send_one};
use common::ws::Ws;
use common::{TestNode, WAIT, within};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The node's body / websocket message limit in these tests.
const MAX_BODY: usize = 256 * 1024;

async fn start() -> TestNode {
    TestNode::with_config(|c| {
        c.max_body_bytes = MAX_BODY;
        c.timeout = Duration::from_secs(2);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Well-behaved clients

/// A long-polling client and a websocket client, each subscribed to `/health` and kept
/// connected by a background task (a new connect after every connect reply, as Faye's client
/// does), forwarding what they receive.
struct Watchers {
    addr: SocketAddr,
    lp: mpsc::UnboundedReceiver<Value>,
    ws: mpsc::UnboundedReceiver<Value>,
    tasks: Vec<JoinHandle<()>>,
}

impl Watchers {
    async fn start(addr: SocketAddr) -> Self {
        let (lp_tx, lp) = mpsc::unbounded_channel();
        let lp_id = bayeux::subscriber(addr, &["/health"]).await;
        let lp_task = tokio::spawn(async move {
            loop {
                let replies = send(addr, &bayeux::connect_msg(&lp_id)).await;
                assert_eq!(replies.first().map(|r| &r["successful"]), Some(&json!(true)), "{replies:?}");
                for m in replies.into_iter().skip(1) {
                    if lp_tx.send(m).is_err() {
                        return;
                    }
                }
            }
        });
        let (ws_tx, ws) = mpsc::unbounded_channel();
        let mut socket = Ws::open(addr).await;
        let ws_id = socket.handshake().await;
        socket.subscribe(&ws_id, "/health").await;
        socket.send_connect(&ws_id).await;
        let ws_task = tokio::spawn(async move {
            loop {
                for m in socket.recv().await {
                    if m["channel"] == json!("/meta/connect") {
                        assert_eq!(m["successful"], json!(true), "{m}");
                        socket.send_connect(&ws_id).await;
                    } else if !bayeux::is_meta(&m) && ws_tx.send(m).is_err() {
                        return;
                    }
                }
            }
        });
        Self { addr, lp, ws, tasks: vec![lp_task, ws_task] }
    }

    /// Both watchers are still connected and receive a publish; a fresh client handshakes,
    /// subscribes, publishes and receives over long-polling and over a websocket.
    async fn check(&mut self, tag: &str) {
        for t in &self.tasks {
            assert!(!t.is_finished(), "[{tag}] a well-behaved client lost its connection");
        }
        bayeux::publish(self.addr, "/health", json!({ "tag": tag })).await;
        for (name, rx) in [("long-polling", &mut self.lp), ("websocket", &mut self.ws)] {
            within(WAIT, &format!("[{tag}] {name} watcher receives"), async {
                loop {
                    let m = rx.recv().await.unwrap_or_else(|| panic!("[{tag}] {name} watcher ended"));
                    if m["data"]["tag"] == json!(tag) {
                        return;
                    }
                }
            })
            .await;
        }

        let channel = format!("/fresh/{}", tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let id = bayeux::subscriber(self.addr, &[&channel]).await;
        bayeux::publish(self.addr, &channel, json!("lp")).await;
        let got = bayeux::connect_messages(self.addr, &id).await;
        assert_eq!(got.len(), 1, "[{tag}] fresh long-polling client: {got:?}");
        assert_eq!(got[0]["data"], json!("lp"));
        assert_eq!(bayeux::disconnect(self.addr, &id).await["successful"], json!(true));

        let mut ws = Ws::open(self.addr).await;
        let id = ws.handshake().await;
        ws.subscribe(&id, &channel).await;
        ws.send_connect(&id).await;
        let reply = send_one(self.addr, json!({"channel": channel, "data": "ws", "clientId": id})).await;
        assert_eq!(reply["successful"], json!(true), "{reply}");
        let (delivered, _) = ws.deliveries(1).await;
        assert_eq!(delivered[0]["data"], json!("ws"), "[{tag}] fresh websocket client");
        ws.close().await;
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP

/// How a raw HTTP exchange ended.
#[derive(Debug)]
enum Outcome {
    /// A response: status and body.
    Response(u16, Vec<u8>),
    /// The server closed (or reset) the connection without a response.
    Closed(String),
}

/// What a case must get.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Exactly this status.
    Status(u16),
    /// A 4xx.
    ClientError,
    /// A 4xx, or (bytes that are not HTTP at all) the connection closed without a response.
    ClientErrorOrClose,
    /// 200 with a JSON array of replies, each unsuccessful with a `code:params:message` error.
    Bayeux,
    /// 200 with `[]`.
    Empty,
    /// Either a 4xx or a Bayeux error, depending on which layer refuses it.
    Refused,
    /// A request a lenient server may accept (Faye does): any 2xx or 4xx.
    NotServerError,
}

/// Reads one HTTP/1.1 response (head, then a Content-Length or chunked body).
async fn read_response(stream: &mut TcpStream, head_only: bool) -> Outcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Outcome::Closed("EOF".into()),
            Ok(0) => {
                return Outcome::Closed(format!("EOF inside a response head: {:?}", String::from_utf8_lossy(&buf)));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Outcome::Closed(e.to_string()),
            Err(e) => return Outcome::Closed(format!("{e} inside a response head")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body = buf[head_end..].to_vec();
    if head_only {
        return Outcome::Response(status, Vec::new());
    }
    loop {
        let complete = if chunked { body.ends_with(b"0\r\n\r\n") } else { body.len() >= length };
        if complete {
            return Outcome::Response(status, body);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Outcome::Response(status, body),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `bytes` (half-closing after them when asked) and reads the response, concurrently,
/// so a server that answers before reading everything cannot block us.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>, half_close: bool, head_only: bool) -> Outcome {
    let stream = TcpStream::connect(addr).await.expect("TCP connect");
    let std = stream.into_std().unwrap();
    let write_side = TcpStream::from_std(std.try_clone().unwrap()).unwrap();
    let mut read_side = TcpStream::from_std(std).unwrap();
    let writer = tokio::spawn(async move {
        let mut w = write_side;
        let _ = w.write_all(&bytes).await;
        if half_close {
            let _ = w.shutdown().await;
        }
        // Keep the socket open until the exchange is over.
        std::future::pending::<()>().await;
    });
    let outcome = read_response(&mut read_side, head_only).await;
    writer.abort();
    outcome
}

/// A request with `Host` and, when there is a body, `Content-Length` added.
fn req(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() && !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("content-length")) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn json_post(body: &[u8]) -> Vec<u8> {
    req("POST", "/faye", &["Content-Type: application/json"], body)
}

fn form_post(body: &str) -> Vec<u8> {
    req("POST", "/faye", &["Content-Type: application/x-www-form-urlencoded"], body.as_bytes())
}

fn get(path: &str) -> Vec<u8> {
    req("GET", path, &[], b"")
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    half_close: bool,
    head_only: bool,
    want: Want,
}

fn case(name: impl Into<String>, bytes: Vec<u8>, want: Want) -> Case {
    Case { name: name.into(), bytes, half_close: false, head_only: false, want }
}

/// Checks one outcome; returns a description of what is wrong, if anything.
fn judge(case: &Case, outcome: &Outcome) -> Option<String> {
    let (status, body) = match outcome {
        Outcome::Response(status, body) => (*status, body),
        Outcome::Closed(how) => {
            return match case.want {
                Want::ClientErrorOrClose => None,
                _ => Some(format!("closed without a response ({how})")),
            };
        }
    };
    if status >= 500 {
        return Some(format!("server error {status}: {:?}", String::from_utf8_lossy(body)));
    }
    let is_4xx = (400..500).contains(&status);
    match case.want {
        Want::Status(s) if status == s => None,
        Want::ClientError | Want::ClientErrorOrClose | Want::Refused if is_4xx => None,
        Want::NotServerError if is_4xx || (200..300).contains(&status) => None,
        Want::Empty if status == 200 && serde_json::from_slice::<Value>(body).ok() == Some(json!([])) => None,
        Want::Bayeux | Want::Refused if status == 200 => {
            // A callback-polling reply wraps the array: `/**/callback([...]);`.
            let json = match (body.strip_prefix(b"/**/"), body.iter().position(|&b| b == b'(')) {
                (Some(_), Some(open)) if body.ends_with(b");") => &body[open + 1..body.len() - 2],
                _ => &body[..],
            };
            let replies: Vec<Value> = match serde_json::from_slice::<Value>(json) {
                Ok(Value::Array(items)) if !items.is_empty() => items,
                other => return Some(format!("not a non-empty JSON array: {other:?}")),
            };
            replies.iter().find_map(|r| {
                let error = r["error"].as_str().unwrap_or("");
                let e = error.as_bytes();
                let coded = e.len() > 4 && e[..3].iter().all(u8::is_ascii_digit) && e[3] == b':';
                (r["successful"] != json!(false) || !coded).then(|| format!("not a Bayeux error reply: {r}"))
            })
        }
        want => Some(format!("wanted {want:?}, got {status}: {:?}", String::from_utf8_lossy(body))),
    }
}

async fn run_cases(addr: SocketAddr, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let outcome = within(WAIT, &format!("case {:?}", case.name), async {
            exchange(addr, case.bytes.clone(), case.half_close, case.head_only).await
        })
        .await;
        if let Some(problem) = judge(&case, &outcome) {
            failures.push(format!("{}: {problem}", case.name));
        }
    }
    failures
}

/// Requests that are not HTTP, or not HTTP a server should accept.
fn http_framing_cases() -> Vec<Case> {
    use Want::*;
    let mut big_headers = b"POST /faye HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..16 {
        big_headers.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(64 * 1024)).as_bytes());
    }
    big_headers.extend_from_slice(b"\r\n");
    let mut many_headers = b"POST /faye HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        many_headers.extend_from_slice(format!("X-H-{i}: v\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\n");
    let noise: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut tls_hello = vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03];
    tls_hello.extend_from_slice(&[0x42; 160]);
    let handshake = br#"{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}"#;

    let mut cases = vec![
        case("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), ClientErrorOrClose),
        case("request line without a path", b"POST\r\n\r\n".to_vec(), ClientErrorOrClose),
        case("binary noise", noise, ClientErrorOrClose),
        case("TLS ClientHello on plain HTTP", tls_hello, ClientErrorOrClose),
        case("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), ClientErrorOrClose),
        case("unknown HTTP version", b"POST /faye HTTP/7.3\r\nHost: x\r\n\r\n".to_vec(), ClientErrorOrClose),
        case("lower-case method", req("post", "/faye", &["Content-Type: application/json"], b"{}"), ClientErrorOrClose),
        case("header without a colon", req("POST", "/faye", &["NoColonHere"], b"{}"), ClientErrorOrClose),
        case("control byte in a header", req("POST", "/faye", &["X-A: a\x01b"], b"{}"), ClientErrorOrClose),
        case(
            "space before a header colon",
            req("POST", "/faye", &["Content-Type : application/json"], b"{}"),
            ClientErrorOrClose,
        ),
        case("obsolete header folding", req("POST", "/faye", &["X-A: a", " folded"], b"{}"), ClientErrorOrClose),
        case("1 MiB of headers", big_headers, ClientErrorOrClose),
        case("2000 headers", many_headers, ClientErrorOrClose),
        case("100 KiB URI", get(&format!("/faye?message={}", "A".repeat(100 * 1024))), ClientErrorOrClose),
        case("raw non-ASCII byte in the path", get("/faye/\u{ff}"), ClientErrorOrClose),
        case("Content-Length not a number", req("POST", "/faye", &["Content-Length: abc"], b"{}"), ClientErrorOrClose),
        case("negative Content-Length", req("POST", "/faye", &["Content-Length: -1"], b"{}"), ClientErrorOrClose),
        case(
            "Content-Length overflowing u64",
            req("POST", "/faye", &["Content-Length: 99999999999999999999999"], b"{}"),
            ClientErrorOrClose,
        ),
        case(
            "two different Content-Lengths",
            req("POST", "/faye", &["Content-Length: 2", "Content-Length: 3"], b"{}x"),
            ClientErrorOrClose,
        ),
        case(
            "Content-Length of 10 GB",
            req("POST", "/faye", &["Content-Type: application/json", "Content-Length: 10000000000"], b"{}"),
            Status(413),
        ),
        case("body over the limit", json_post(&vec![b' '; MAX_BODY + 1]), Status(413)),
        case(
            "chunked body over the limit",
            {
                let mut r =
                    req("POST", "/faye", &["Content-Type: application/json", "Transfer-Encoding: chunked"], b"");
                for _ in 0..(MAX_BODY / 4096 + 2) {
                    r.extend_from_slice(format!("1000\r\n{}\r\n", " ".repeat(4096)).as_bytes());
                }
                r.extend_from_slice(b"0\r\n\r\n");
                r
            },
            Status(413),
        ),
        case(
            "invalid chunk size",
            req(
                "POST",
                "/faye",
                &["Content-Type: application/json", "Transfer-Encoding: chunked"],
                b"zz\r\n{}\r\n0\r\n\r\n",
            ),
            ClientErrorOrClose,
        ),
        case(
            "Content-Length and chunked together",
            req(
                "POST",
                "/faye",
                &["Content-Type: application/json", "Content-Length: 5", "Transfer-Encoding: chunked"],
                b"1\r\n{\r\n0\r\n\r\n",
            ),
            ClientErrorOrClose,
        ),
        case(
            "unknown Transfer-Encoding",
            req("POST", "/faye", &["Content-Type: application/json", "Transfer-Encoding: gzip"], b"{}"),
            ClientErrorOrClose,
        ),
        Case {
            name: "truncated body, then EOF".into(),
            bytes: req("POST", "/faye", &["Content-Type: application/json", "Content-Length: 100"], b"{\"channel\":"),
            half_close: true,
            head_only: false,
            want: ClientErrorOrClose,
        },
        Case {
            name: "truncated head, then EOF".into(),
            bytes: b"POST /faye HTTP/1.1\r\nHost: x\r\nContent-Ty".to_vec(),
            half_close: true,
            head_only: false,
            want: ClientErrorOrClose,
        },
        case(
            "body longer than its Content-Length",
            req("POST", "/faye", &["Content-Type: application/json", "Content-Length: 2"], b"{}garbage"),
            Bayeux,
        ),
        case("PUT", req("PUT", "/faye", &["Content-Type: application/json"], handshake), Status(400)),
        case("DELETE", req("DELETE", "/faye", &[], b""), Status(400)),
        case("PATCH", req("PATCH", "/faye", &["Content-Type: application/json"], handshake), Status(400)),
        case("TRACE", req("TRACE", "/faye", &[], b""), Status(400)),
        case("made-up method", req("BREW", "/faye", &[], b""), Status(400)),
        Case {
            name: "HEAD".into(),
            bytes: req("HEAD", "/faye", &[], b""),
            half_close: false,
            head_only: true,
            want: Status(400),
        },
        case("CONNECT", b"CONNECT /faye HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), ClientErrorOrClose),
        case(
            "websocket upgrade without a key",
            req("GET", "/faye", &["Upgrade: websocket", "Connection: Upgrade"], b""),
            Status(400),
        ),
        case(
            "EventSource for an unknown client",
            req("GET", "/faye/nobody", &["Accept: text/event-stream"], b""),
            Status(400),
        ),
        case("EventSource without a client id", req("GET", "/faye/", &["Accept: text/event-stream"], b""), Status(400)),
        case("path outside the mount", get("/elsewhere"), Status(404)),
        case("path traversal under the mount", get("/faye/../../etc/passwd"), ClientError),
    ];
    for c in &mut cases {
        c.name = format!("http framing: {}", c.name);
    }
    cases
}

/// Well-framed requests whose content is not a Bayeux request.
fn body_cases() -> Vec<Case> {
    use Want::*;
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_data = format!(r#"{{"channel":"/deep/*","data":{}{}}}"#, "[".repeat(50_000), "]".repeat(50_000));
    let deep_unsubscribed =
        format!(r#"{{"channel":"/deep/nobody","data":{}{}}}"#, "{\"a\":".repeat(20_000), "}".repeat(20_000));
    let thousand_bad = format!("[{}]", vec!["1"; 1000].join(","));
    let json_cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("empty body", b"".to_vec(), Status(400)),
        ("whitespace body", b" \r\n\t ".to_vec(), Status(400)),
        ("invalid UTF-8", b"\xff\xfe\xfd".to_vec(), Status(400)),
        ("UTF-8 BOM before the JSON", b"\xef\xbb\xbf{\"channel\":\"/meta/handshake\"}".to_vec(), Status(400)),
        ("UTF-16 JSON", b"\xff\xfe{\x00}\x00".to_vec(), Status(400)),
        ("invalid UTF-8 inside a string", b"{\"channel\":\"/a\xff\",\"data\":1}".to_vec(), ClientError),
        ("raw NUL inside a string", b"{\"channel\":\"/a\x00\",\"data\":1}".to_vec(), Status(400)),
        ("truncated JSON", br#"{"channel":"/meta/handshake""#.to_vec(), Status(400)),
        ("trailing garbage", br#"{"channel":"/a","data":1} x"#.to_vec(), Status(400)),
        ("two objects", br#"{"channel":"/a","data":1}{"channel":"/a","data":1}"#.to_vec(), Status(400)),
        ("single quotes", b"{'channel':'/a'}".to_vec(), Status(400)),
        ("number", b"12".to_vec(), Status(400)),
        ("huge number", b"1e999".to_vec(), Status(400)),
        ("negative zero", b"-0".to_vec(), Status(400)),
        ("true", b"true".to_vec(), Status(400)),
        ("string", br#""/meta/handshake""#.to_vec(), Status(400)),
        ("null", b"null".to_vec(), Empty),
        ("empty array", b"[]".to_vec(), Empty),
        ("array of numbers", b"[1,2,3]".to_vec(), Bayeux),
        ("array of null", b"[null]".to_vec(), Bayeux),
        ("array of arrays", b"[[],[{}]]".to_vec(), Bayeux),
        ("array of strings", br#"["/meta/handshake"]"#.to_vec(), Bayeux),
        ("1000 numbers in a batch", thousand_bad.into_bytes(), Bayeux),
        ("empty object", b"{}".to_vec(), Bayeux),
        ("channel a number", br#"{"channel":5}"#.to_vec(), Bayeux),
        ("channel true", br#"{"channel":true,"data":1}"#.to_vec(), Bayeux),
        ("channel an object", br#"{"channel":{"a":"/meta/handshake"}}"#.to_vec(), Bayeux),
        ("channel null", br#"{"channel":null,"data":1}"#.to_vec(), Bayeux),
        ("channel empty", br#"{"channel":"","data":1}"#.to_vec(), Bayeux),
        ("channel with a NUL escape", br#"{"channel":"/a\u0000","data":1}"#.to_vec(), Bayeux),
        ("channel with a lone surrogate", br#"{"channel":"/a\ud800","data":1}"#.to_vec(), Refused),
        ("subscription an object, no channel", br#"{"subscription":{}}"#.to_vec(), Bayeux),
        (
            "subscribe with an object",
            br#"{"channel":"/meta/subscribe","clientId":"x","subscription":{}}"#.to_vec(),
            Bayeux,
        ),
        (
            "subscribe with numbers",
            br#"{"channel":"/meta/subscribe","clientId":"x","subscription":[1]}"#.to_vec(),
            Bayeux,
        ),
        (
            "supportedConnectionTypes a string",
            br#"{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":"long-polling"}"#.to_vec(),
            Bayeux,
        ),
        (
            "supportedConnectionTypes [null]",
            br#"{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":[null]}"#.to_vec(),
            Bayeux,
        ),
        (
            "version false",
            br#"{"channel":"/meta/handshake","version":false,"supportedConnectionTypes":["long-polling"]}"#.to_vec(),
            Bayeux,
        ),
        (
            "clientId an object",
            br#"{"channel":"/meta/connect","clientId":{"a":1},"connectionType":"long-polling"}"#.to_vec(),
            Bayeux,
        ),
        (
            "clientId 1e999",
            br#"{"channel":"/meta/connect","clientId":1e999,"connectionType":"long-polling"}"#.to_vec(),
            Bayeux,
        ),
        (
            "connectionType a number",
            br#"{"channel":"/meta/connect","clientId":"x","connectionType":7}"#.to_vec(),
            Bayeux,
        ),
        ("error a number", br#"{"channel":"/a","data":1,"error":5}"#.to_vec(), Bayeux),
        ("unknown meta channel", br#"{"channel":"/meta/nope"}"#.to_vec(), Bayeux),
        ("bare /meta", br#"{"channel":"/meta"}"#.to_vec(), Bayeux),
        ("duplicate channel keys", br#"{"channel":"/meta/handshake","channel":"/a/*","data":1}"#.to_vec(), Bayeux),
        // serde_json skips a too-deep element without recursing: one malformed message.
        ("array nested 100000 deep", deep_array.into_bytes(), Refused),
        ("data nested 50000 deep on a pattern", deep_data.into_bytes(), Refused),
        // Valid JSON that Faye accepts (JSON.parse has no depth limit short of the stack).
        ("data nested 20000 deep", deep_unsubscribed.into_bytes(), NotServerError),
        ("data 1e9999", br#"{"channel":"/odd/nobody","data":1e9999}"#.to_vec(), NotServerError),
        ("data with a lone surrogate", br#"{"channel":"/odd/nobody","data":"\ud800"}"#.to_vec(), NotServerError),
    ];
    let mut cases: Vec<Case> =
        json_cases.into_iter().map(|(n, b, w)| case(format!("JSON body: {n}"), json_post(&b), w)).collect();

    let form: Vec<(&str, String, Want)> = vec![
        ("no message field", "foo=bar".into(), Status(400)),
        ("empty message", "message=".into(), Status(400)),
        ("bad percent-encoding", "message=%ZZ%".into(), Status(400)),
        ("percent-encoded invalid UTF-8", "message=%FF%FE".into(), Status(400)),
        ("JSON in a form body", r#"{"channel":"/meta/handshake"}"#.into(), Status(400)),
        ("invalid callback", format!("jsonp=alert(1)&message={}", common::http::urlencode("[]")), Status(400)),
        ("array of numbers", format!("message={}", common::http::urlencode("[1,2]")), Bayeux),
    ];
    cases.extend(form.into_iter().map(|(n, b, w)| case(format!("form body: {n}"), form_post(&b), w)));
    cases.push(case(
        "JSON body with a UTF-16 charset",
        req("POST", "/faye", &["Content-Type: application/json; charset=utf-16"], b"\xff\xfe[\x00]\x00"),
        Status(400),
    ));

    let queries: Vec<(&str, String)> = vec![
        ("no message", "/faye".into()),
        ("empty message", "/faye?message=".into()),
        ("truncated JSON", "/faye?message=%7B%22channel".into()),
        ("bad percent-encoding", "/faye?message=%ZZ%".into()),
        ("percent-encoded invalid UTF-8", "/faye?message=%FF".into()),
        ("invalid callback", "/faye?message=null&jsonp=alert(1)".into()),
        ("callback starting with a digit", "/faye?message=null&jsonp=1a".into()),
        ("callback with a NUL", "/faye?message=null&jsonp=a%00b".into()),
        ("callback a..b", "/faye?message=null&jsonp=a..b".into()),
        ("message a number", "/faye?message=12".into()),
    ];
    cases.extend(queries.into_iter().map(|(n, path)| case(format!("GET query: {n}"), get(&path), Status(400))));
    let deep = format!("/faye?message={}{}", "%5B".repeat(10_000), "%5D".repeat(10_000));
    cases.push(case("GET query: message nested 10000 deep", get(&deep), Refused));
    cases.push(case("GET query: array of numbers", get("/faye?message=%5B1%2C2%5D&jsonp=cb"), Bayeux));
    cases
}

#[tokio::test]
async fn malformed_http_requests_get_a_4xx_or_a_bayeux_error() {
    let node = start().await;
    let addr = node.addr;
    let mut watchers = Watchers::start(addr).await;
    watchers.check("http start").await;

    let mut failures = run_cases(addr, http_framing_cases()).await;
    watchers.check("http middle").await;
    failures.extend(run_cases(addr, body_cases()).await);
    watchers.check("http end").await;
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    drop(watchers);
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Raw websocket frames

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// One frame; masked unless `masked` is false; `rsv` sets the reserved bits.
fn frame_ext(fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_ext(fin, 0, opcode, true, payload)
}

fn text(payload: &[u8]) -> Vec<u8> {
    frame(true, OP_TEXT, payload)
}

/// A websocket opened by hand over TCP, to send frames no client library would.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame from the server.
#[derive(Debug)]
#[allow(dead_code)] // the fields show in failure messages
enum Got {
    Text(String),
    Other(u8),
    Close(Option<u16>),
    Ended(String),
}

impl RawWs {
    async fn open(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
        let request = "GET /faye HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("upgrade request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = within(WAIT, "upgrade response", async {
            loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let n = stream.read(&mut chunk).await.expect("read upgrade response");
                assert!(n > 0, "closed during the upgrade");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let rest = buf[end..].to_vec();
        Self { stream, buf: rest }
    }

    /// Writes raw bytes; the server may already have closed, which is fine.
    async fn write(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    async fn fill(&mut self, n: usize) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        while self.buf.len() < n {
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err("EOF".into()),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// The next frame from the server (unmasked, as servers send them).
    async fn next(&mut self) -> Got {
        if let Err(e) = self.fill(2).await {
            return Got::Ended(e);
        }
        let opcode = self.buf[0] & 0x0f;
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                if let Err(e) = self.fill(4).await {
                    return Got::Ended(e);
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if let Err(e) = self.fill(10).await {
                    return Got::Ended(e);
                }
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if let Err(e) = self.fill(header + len).await {
            return Got::Ended(e);
        }
        let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
        match opcode {
            OP_TEXT => Got::Text(String::from_utf8_lossy(&payload).into_owned()),
            OP_CLOSE => Got::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
            other => Got::Other(other),
        }
    }

    /// The next text frame as a JSON array, skipping pings/pongs; `Err` if the socket ended.
    async fn next_batch(&mut self) -> Result<Vec<Value>, String> {
        within(WAIT, "a websocket frame", async {
            loop {
                match self.next().await {
                    Got::Text(t) => {
                        return serde_json::from_str::<Value>(&t)
                            .ok()
                            .and_then(|v| v.as_array().cloned())
                            .ok_or_else(|| format!("frame is not a JSON array: {t:?}"));
                    }
                    Got::Other(_) => continue,
                    got => return Err(format!("{got:?}")),
                }
            }
        })
        .await
    }

    /// Waits for the server to end the socket; returns the close code it sent, if any.
    async fn closed(&mut self) -> Result<Option<u16>, String> {
        within(WAIT, "the server to close the socket", async {
            loop {
                match self.next().await {
                    Got::Close(code) => return Ok(code),
                    Got::Ended(_) => return Ok(None),
                    Got::Other(_) => continue,
                    Got::Text(t) => return Err(format!("a text frame instead of a close: {t:?}")),
                }
            }
        })
        .await
    }
}

fn handshake_frame() -> Vec<u8> {
    text(br#"{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["websocket"],"id":"probe"}"#)
}

fn is_probe_reply(batch: &[Value]) -> bool {
    batch.len() == 1 && batch[0]["id"] == json!("probe") && batch[0]["successful"] == json!(true)
}

/// What a websocket case must get.
#[derive(Debug, Clone, Copy)]
enum WsWant {
    /// No reply, the socket stays open: the next (valid) frame is the first answered.
    Ignored,
    /// A reply frame of Bayeux errors (every reply unsuccessful).
    Errors,
    /// A reply frame holding a successful handshake.
    Handshake,
    /// The server closes the socket: a close frame with one of these codes, or when none is
    /// given, any close frame or the end of the connection.
    Closed(&'static [u16]),
}

async fn ws_case(addr: SocketAddr, name: &str, frames: Vec<Vec<u8>>, want: WsWant) -> Option<String> {
    let mut ws = RawWs::open(addr).await;
    for f in &frames {
        ws.write(f).await;
    }
    let problem = match want {
        WsWant::Ignored => {
            ws.write(&handshake_frame()).await;
            match ws.next_batch().await {
                Ok(batch) if is_probe_reply(&batch) => None,
                other => Some(format!("wanted the frame ignored, got {other:?}")),
            }
        }
        WsWant::Errors => match ws.next_batch().await {
            Ok(batch)
                if !batch.is_empty()
                    && batch.iter().all(|r| r["successful"] == json!(false) && r["error"].is_string()) =>
            {
                None
            }
            other => Some(format!("wanted Bayeux errors, got {other:?}")),
        },
        WsWant::Handshake => match ws.next_batch().await {
            Ok(batch) if batch.len() == 1 && batch[0]["successful"] == json!(true) => None,
            other => Some(format!("wanted a handshake reply, got {other:?}")),
        },
        WsWant::Closed(codes) => match ws.closed().await {
            Ok(Some(code)) if codes.is_empty() || codes.contains(&code) => None,
            Ok(None) if codes.is_empty() => None,
            other => Some(format!("wanted a close frame with one of {codes:?}, got {other:?}")),
        },
    };
    problem.map(|p| format!("websocket: {name}: {p}"))
}

#[tokio::test]
async fn malformed_websocket_frames_are_ignored_or_close_the_socket() {
    let node = start().await;
    let addr = node.addr;
    let mut watchers = Watchers::start(addr).await;
    watchers.check("ws start").await;

    // Protocol violations close the socket with a close frame saying why, as Faye's driver
    // does: 1002 protocol error, 1007 invalid payload data, 1009 a message over the limit.
    const PROTOCOL: &[u16] = &[1002];
    const INVALID_DATA: &[u16] = &[1007];
    const TOO_BIG: &[u16] = &[1009];
    let over_limit = vec![b' '; MAX_BODY + 1];
    let third = vec![b' '; MAX_BODY / 3 + 1];
    let mut huge_length = vec![0x81, 0xff];
    huge_length.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
    huge_length.extend_from_slice(&MASK);
    let valid = br#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["websocket"]}]"#;
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));

    let first_half: Vec<(&str, Vec<Vec<u8>>, WsWant)> = vec![
        ("text that is not JSON", vec![text(b"hello")], WsWant::Ignored),
        ("a JSON number", vec![text(b"12")], WsWant::Ignored),
        ("a JSON string", vec![text(b"\"/meta/handshake\"")], WsWant::Ignored),
        ("JSON true", vec![text(b"true")], WsWant::Ignored),
        ("truncated JSON", vec![text(br#"{"channel":"#)], WsWant::Ignored),
        ("an array nested 50000 deep", vec![text(deep.as_bytes())], WsWant::Errors),
        ("an empty text frame", vec![text(b"")], WsWant::Ignored),
        ("binary garbage", vec![frame(true, OP_BINARY, b"\x00\xff\xfe\x01")], WsWant::Ignored),
        (
            "non-JSON split over fragments",
            vec![frame(false, OP_TEXT, b"abc"), frame(true, OP_CONT, b"def")],
            WsWant::Ignored,
        ),
        ("[1,2,3]", vec![text(b"[1,2,3]")], WsWant::Errors),
        ("{\"channel\":5}", vec![text(br#"{"channel":5}"#)], WsWant::Errors),
        ("{\"subscription\":{}}", vec![text(br#"{"subscription":{}}"#)], WsWant::Errors),
        (
            "connect before handshake",
            vec![text(br#"{"channel":"/meta/connect","clientId":"nobody","connectionType":"websocket"}"#)],
            WsWant::Errors,
        ),
        ("a valid batch in a binary frame", vec![frame(true, OP_BINARY, valid)], WsWant::Handshake),
        (
            "a valid batch in three fragments",
            vec![
                frame(false, OP_TEXT, &valid[..10]),
                frame(false, OP_CONT, &valid[10..40]),
                frame(true, OP_CONT, &valid[40..]),
            ],
            WsWant::Handshake,
        ),
        ("a valid ping, then a batch", vec![frame(true, OP_PING, b"hi"), text(valid)], WsWant::Handshake),
    ];
    let second_half: Vec<(&str, Vec<Vec<u8>>, WsWant)> = vec![
        ("invalid UTF-8 in a text frame", vec![text(b"[\"\xff\xfe\"]")], WsWant::Closed(INVALID_DATA)),
        (
            "invalid UTF-8 across fragments",
            vec![frame(false, OP_TEXT, b"[\"\xe2"), frame(true, OP_CONT, b"\x28\"]")],
            WsWant::Closed(INVALID_DATA),
        ),
        ("an unmasked client frame", vec![frame_ext(true, 0, OP_TEXT, false, valid)], WsWant::Closed(PROTOCOL)),
        ("reserved bit RSV1 set", vec![frame_ext(true, 4, OP_TEXT, true, valid)], WsWant::Closed(PROTOCOL)),
        ("reserved data opcode 0x3", vec![frame(true, 0x3, b"x")], WsWant::Closed(PROTOCOL)),
        ("reserved control opcode 0xB", vec![frame(true, 0xB, b"x")], WsWant::Closed(PROTOCOL)),
        ("a continuation with nothing to continue", vec![frame(true, OP_CONT, valid)], WsWant::Closed(PROTOCOL)),
        (
            "a new text frame inside a fragmented one",
            vec![frame(false, OP_TEXT, b"[1"), text(b",2]")],
            WsWant::Closed(PROTOCOL),
        ),
        ("a fragmented ping", vec![frame(false, OP_PING, b"x")], WsWant::Closed(PROTOCOL)),
        ("a ping with 126 bytes", vec![frame(true, OP_PING, &[b'p'; 126])], WsWant::Closed(PROTOCOL)),
        ("a close with code 999", vec![frame(true, OP_CLOSE, &999u16.to_be_bytes())], WsWant::Closed(&[1002])),
        ("a close with a 1-byte payload", vec![frame(true, OP_CLOSE, b"\x03")], WsWant::Closed(PROTOCOL)),
        ("a message over the limit", vec![text(&over_limit)], WsWant::Closed(TOO_BIG)),
        (
            "fragments adding up to over the limit",
            vec![frame(false, OP_TEXT, &third), frame(false, OP_CONT, &third), frame(true, OP_CONT, &third)],
            WsWant::Closed(TOO_BIG),
        ),
        ("a frame header claiming 2^63 bytes", vec![huge_length], WsWant::Closed(&[1002, 1009])),
        ("HTTP after the upgrade", vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()], WsWant::Closed(PROTOCOL)),
    ];

    let mut failures = Vec::new();
    for (name, frames, want) in first_half {
        failures.extend(ws_case(addr, name, frames, want).await);
    }
    watchers.check("ws middle").await;
    for (name, frames, want) in second_half {
        failures.extend(ws_case(addr, name, frames, want).await);
    }
    watchers.check("ws end").await;
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    drop(watchers);
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Protocol sequences

fn assert_error(reply: &Value, error: &str) {
    assert_eq!(reply["successful"], json!(false), "{reply}");
    assert_eq!(reply["error"], json!(error), "{reply}");
}

#[tokio::test]
async fn out_of_order_and_wrong_protocol_sequences_get_bayeux_errors() {
    let node = start().await;
    let addr = node.addr;
    let other_node = start().await;
    let mut watchers = Watchers::start(addr).await;
    watchers.check("sequence start").await;

    // Connect before any handshake, and without a client id.
    let never_issued = "0123456789abcdefghijklmnopqrstu";
    let reply = send_one(addr, bayeux::connect_msg(never_issued)).await;
    assert_error(&reply, &format!("401:{never_issued}:Unknown client"));
    assert_eq!(reply["advice"]["reconnect"], json!("handshake"), "{reply}");
    assert!(reply.get("clientId").is_none(), "{reply}");
    let reply = send_one(addr, json!({"channel": "/meta/connect", "connectionType": "long-polling"})).await;
    assert_error(&reply, "402:clientId:Missing required parameter");
    for channel in ["/meta/subscribe", "/meta/unsubscribe"] {
        let reply = send_one(addr, json!({"channel": channel, "clientId": never_issued, "subscription": "/a"})).await;
        assert_error(&reply, &format!("401:{never_issued}:Unknown client"));
    }

    // A client id issued by another node is unknown here.
    let foreign = bayeux::handshake(other_node.addr).await;
    let reply = bayeux::subscribe_reply(addr, &foreign, json!("/a")).await;
    assert_error(&reply, &format!("401:{foreign}:Unknown client"));
    let reply = send_one(addr, bayeux::connect_msg(&foreign)).await;
    assert_error(&reply, &format!("401:{foreign}:Unknown client"));

    // Disconnect twice; after it the id is unknown to every meta channel.
    let id = bayeux::handshake(addr).await;
    assert_eq!(bayeux::disconnect(addr, &id).await["successful"], json!(true));
    assert_error(&bayeux::disconnect(addr, &id).await, &format!("401:{id}:Unknown client"));
    assert_error(&send_one(addr, bayeux::connect_msg(&id)).await, &format!("401:{id}:Unknown client"));
    assert_error(&bayeux::subscribe_reply(addr, &id, json!("/a")).await, &format!("401:{id}:Unknown client"));
    assert_error(
        &send_one(addr, json!({"channel": "/meta/disconnect"})).await,
        "402:clientId:Missing required parameter",
    );

    // Every bad connectionType.
    let id = bayeux::handshake(addr).await;
    for bad in [
        "foo",
        "Long-Polling",
        "LONG-POLLING",
        "long-polling ",
        " long-polling",
        "long_polling",
        "websocket\u{0}",
        "long-polling,websocket",
    ] {
        let reply = send_one(addr, json!({"channel": "/meta/connect", "clientId": id, "connectionType": bad})).await;
        assert_error(&reply, &format!("301:{bad}:Connection types not supported"));
        assert_eq!(reply["advice"]["reconnect"], json!("handshake"), "{reply}");
    }
    for missing in [json!(""), Value::Null] {
        let reply =
            send_one(addr, json!({"channel": "/meta/connect", "clientId": id, "connectionType": missing})).await;
        assert_error(&reply, "402:connectionType:Missing required parameter");
    }
    for wrong_type in [json!(5), json!(true), json!(["long-polling"]), json!({"type": "long-polling"})] {
        let reply =
            send_one(addr, json!({"channel": "/meta/connect", "clientId": id, "connectionType": wrong_type})).await;
        assert_error(&reply, "400:connectionType:Bad request");
    }

    // Handshakes, subscribes and publishes missing what they need.
    let hs = |v: Value| json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": v});
    assert_error(&send_one(addr, hs(json!([]))).await, "301::Connection types not supported");
    assert_error(&send_one(addr, hs(json!(["foo", "bar"]))).await, "301:foo,bar:Connection types not supported");
    assert_error(
        &send_one(addr, json!({"channel": "/meta/handshake", "supportedConnectionTypes": ["long-polling"]})).await,
        "402:version:Missing required parameter",
    );
    assert_error(&bayeux::subscribe_reply(addr, &id, json!("")).await, "402:subscription:Missing required parameter");
    assert_error(&bayeux::subscribe_reply(addr, &id, json!("/meta/**")).await, "403:/meta/**:Forbidden channel");
    assert_error(&bayeux::subscribe_reply(addr, &id, json!("/a/**/b")).await, "405:/a/**/b:Invalid channel");
    assert_error(&send_one(addr, json!({"channel": "/meta/foo", "data": 1})).await, "403:/meta/foo:Forbidden channel");
    assert_error(&send_one(addr, json!({"channel": "/a/*", "data": 1})).await, "405:/a/*:Invalid channel");
    assert_error(&send_one(addr, json!({"channel": "/a"})).await, "402:data:Missing required parameter");

    watchers.check("sequence middle").await;

    // 1,000 messages in one batch, over HTTP: one reply each, in order, and each delivered.
    let sub = bayeux::subscriber(addr, &["/batch"]).await;
    let batch: Vec<Value> = (0..1000).map(|i| json!({"channel": "/batch", "data": i, "id": i.to_string()})).collect();
    let replies = send(addr, &Value::Array(batch)).await;
    assert_eq!(replies.len(), 1000);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!((&r["id"], &r["successful"]), (&json!(i.to_string()), &json!(true)), "{r}");
    }
    let mut delivered = Vec::new();
    within(WAIT, "1000 deliveries", async {
        while delivered.len() < 1000 {
            delivered.extend(bayeux::connect_messages(addr, &sub).await);
        }
    })
    .await;
    let data: Vec<i64> = delivered.iter().map(|m| m["data"].as_i64().unwrap()).collect();
    assert_eq!(data, (0..1000).collect::<Vec<i64>>());

    // 1,000 subscriptions in one batch (a fresh client: 1,000 is as many as one may hold),
    // then 1,000 messages in one websocket frame.
    let sub = bayeux::handshake(addr).await;
    let many: Vec<Value> = (0..1000)
        .map(|i| json!({"channel": "/meta/subscribe", "clientId": sub, "subscription": format!("/many/{i}")}))
        .collect();
    let replies = send(addr, &Value::Array(many)).await;
    assert!(
        replies.len() == 1000 && replies.iter().all(|r| r["successful"] == json!(true)),
        "{:?}",
        replies.iter().take(3).collect::<Vec<_>>()
    );
    let mut ws = Ws::open(addr).await;
    let frame: Vec<Value> = (0..1000).map(|i| json!({"channel": format!("/many/{i}"), "data": i})).collect();
    let replies = ws.request(&Value::Array(frame)).await;
    assert!(
        replies.len() == 1000 && replies.iter().all(|r| r["successful"] == json!(true)),
        "{:?}",
        replies.iter().take(3).collect::<Vec<_>>()
    );
    let got = bayeux::connect_messages(addr, &sub).await;
    assert_eq!(got.len(), 1000, "each of the 1000 subscriptions delivers once");
    ws.close().await;

    watchers.check("sequence end").await;
    drop(watchers);
    other_node.shutdown().await;
    node.shutdown().await;
}

/// Regression: `advice.timeout` of 1e300 ms (or f64::MAX) made `Duration::from_secs_f64` panic
/// in the connect handler, killing the request (the client saw the connection drop).
#[tokio::test]
async fn connect_with_an_absurd_advice_timeout_is_answered() {
    let node = start().await;
    let addr = node.addr;
    let mut watchers = Watchers::start(addr).await;
    watchers.check("advice start").await;
    // Each connect is answered, at once since a message is waiting.
    let id = bayeux::subscriber(addr, &["/absurd"]).await;
    for timeout in [json!(1e300), json!(f64::MAX), json!(-1), json!("NaN"), json!(null), json!({"a": 1})] {
        bayeux::publish(addr, "/absurd", json!(timeout.to_string())).await;
        let message = json!({"channel": "/meta/connect", "clientId": id, "connectionType": "long-polling",
                             "advice": {"timeout": timeout}});
        let replies = send(addr, &message).await;
        assert_eq!(replies[0]["successful"], json!(true), "advice.timeout {timeout}: {replies:?}");
        assert_eq!(replies.len(), 2, "advice.timeout {timeout}: {replies:?}");
    }
    let mut message = bayeux::connect_msg(&id);
    message["advice"] = json!("not an object");
    bayeux::publish(addr, "/absurd", json!("string advice")).await;
    assert_eq!(send(addr, &message).await.len(), 2);

    watchers.check("advice end").await;
    drop(watchers);
    node.shutdown().await;
}
