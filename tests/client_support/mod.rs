//! Helpers for the client tests: nodes on loopback, clients with test-sized timeouts, bounded
//! waits on real events, and a proxy that refuses websocket upgrades.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

use actioncluster::{Client, Config, Delivery, Node, ServerEvent, Subscription, TransportPreference};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Upper bound of every wait on an event.
pub const WAIT: Duration = Duration::from_secs(10);

/// The server's connect hold in these tests.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(2);

pub fn config(port: u16) -> Config {
    Config { host: "127.0.0.1".into(), port, timeout: SERVER_TIMEOUT, ..Config::default() }
}

/// A node on a free loopback port.
pub async fn node() -> Node {
    Node::start(config(0)).await.expect("node starts")
}

/// A client builder with test-sized timeouts and a fast backoff.
pub fn builder(url: &str, preference: TransportPreference) -> actioncluster::ClientBuilder {
    Client::builder(url)
        .transport(preference)
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(WAIT)
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
}

pub async fn client(node: &Node, preference: TransportPreference) -> Client {
    builder(&node.endpoint(), preference).build().await.expect("client connects")
}

/// The next message on `sub`, failing the test after [`WAIT`].
pub async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next()).await.expect("a message within the wait").expect("subscription open")
}

/// Waits for a server event that `pick` accepts.
pub async fn event<T>(
    events: &mut broadcast::Receiver<ServerEvent>,
    mut pick: impl FnMut(&ServerEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(found) = pick(&e) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("server event within the wait")
}

/// Waits until the node reports that `client_id` subscribed to `channel`.
pub async fn subscribed(events: &mut broadcast::Receiver<ServerEvent>, client_id: &str, channel: &str) {
    event(events, |e| match e {
        ServerEvent::Subscribe { client_id: c, channel: ch } if c == client_id && ch == channel => Some(()),
        _ => None,
    })
    .await
}

/// An HTTP proxy in front of `upstream` that forwards POSTs and answers every websocket
/// upgrade with 400, like a proxy that does not pass websockets.
pub struct NoUpgradeProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl NoUpgradeProxy {
    pub async fn start(upstream: SocketAddr) -> NoUpgradeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let service = service_fn(move |req| forward(req, upstream));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        NoUpgradeProxy { addr, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/faye", self.addr)
    }
}

impl Drop for NoUpgradeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(req: Request<Incoming>, upstream: SocketAddr) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"no websockets here")));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(resp);
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let stream = TcpStream::connect(upstream).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let upstream_req = Request::from_parts(parts, Full::new(body));
    let resp = sender.send_request(upstream_req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// A websocket server that accepts upgrades and never answers, like a wedged proxy.
pub struct SilentWsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentWsServer {
    pub async fn start() -> SilentWsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut sockets = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                    sockets.push(ws); // held open, never read or written
                }
            }
        });
        SilentWsServer { addr, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/faye", self.addr)
    }
}

impl Drop for SilentWsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
