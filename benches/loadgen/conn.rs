//! Connections to the endpoint: a websocket at the mount path, or a keep-alive HTTP/1.1
//! connection for long-polling, each from a chosen loopback source address (127.0.0.x) so
//! that many clients do not run out of ephemeral ports.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type BoxError = Box<dyn Error + Send + Sync>;
pub type Ws = WebSocketStream<TcpStream>;

/// A Bayeux endpoint URL (`http://host:port/path`), resolved once.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    /// `host:port`, for the Host header.
    pub authority: String,
    pub addr: SocketAddr,
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, BoxError> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| format!("endpoint {url:?}: only http:// (or ws://) URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
        let addr = with_port
            .to_socket_addrs()?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("endpoint {url:?}: no IPv4 address for {authority}"))?;
        Ok(Self { url: url.to_string(), authority: authority.to_string(), addr, path: path.to_string() })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.authority, self.path)
    }
}

/// The `n`th of `count` loopback source addresses (127.0.0.1, 127.0.0.2, ...), or none
/// (the kernel's choice) when the endpoint is not on loopback or `count` is 0.
pub fn source_address(endpoint: &Endpoint, n: usize, count: usize) -> Option<IpAddr> {
    if count == 0 || !endpoint.addr.ip().is_loopback() {
        return None;
    }
    let i = (n % count) as u32 + 1;
    Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i)))
}

pub async fn tcp(addr: SocketAddr, local: Option<IpAddr>) -> Result<TcpStream, BoxError> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a websocket. `small` buffers suit idle clients (thousands of them).
pub async fn websocket(endpoint: &Endpoint, local: Option<IpAddr>, small: bool) -> Result<Ws, BoxError> {
    let stream = tcp(endpoint.addr, local).await?;
    let config = if small {
        WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
    } else {
        WebSocketConfig::default().read_buffer_size(64 * 1024)
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(endpoint.ws_url(), stream, Some(config)).await?;
    Ok(ws)
}

/// One keep-alive HTTP/1.1 connection for long-polling requests.
pub struct Http {
    sender: SendRequest<Full<Bytes>>,
    endpoint: Endpoint,
}

impl Http {
    pub async fn open(endpoint: &Endpoint, local: Option<IpAddr>) -> Result<Self, BoxError> {
        let stream = tcp(endpoint.addr, local).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender, endpoint: endpoint.clone() })
    }

    /// POSTs a JSON body to the mount path and returns the reply body (an error unless 200).
    pub async fn post(&mut self, body: String) -> Result<Bytes, BoxError> {
        self.sender.ready().await?;
        let request = hyper::Request::post(&self.endpoint.path)
            .header(hyper::header::HOST, &self.endpoint.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])).into());
        }
        Ok(body)
    }
}

/// An EventSource stream (`GET <mount>/<clientId>`, `Accept: text/event-stream`) on its own
/// connection, read event by event.
pub struct EventStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    pub async fn open(endpoint: &Endpoint, local: Option<IpAddr>, client_id: &str) -> Result<Self, BoxError> {
        let stream = tcp(endpoint.addr, local).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = hyper::Request::get(format!("{}/{client_id}", endpoint.path.trim_end_matches('/')))
            .header(hyper::header::HOST, &endpoint.authority)
            .header(hyper::header::ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::new()))?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(format!("EventSource: HTTP {}", response.status()).into());
        }
        Ok(Self { body: response.into_body(), buf: Vec::new() })
    }

    /// The `data` of the next event that has one (`None`: the stream ended).
    pub async fn next_event(&mut self) -> Result<Option<String>, BoxError> {
        loop {
            while let Some(end) = find_event_end(&self.buf) {
                let event: Vec<u8> = self.buf.drain(..end.0 + end.1).take(end.0).collect();
                let text = String::from_utf8(event)?;
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
                    .collect();
                if !data.is_empty() {
                    return Ok(Some(data.join("\n")));
                }
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Where the first event ends: its length and the blank line's (CRLF or LF).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}
