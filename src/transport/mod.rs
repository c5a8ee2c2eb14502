//! HTTP and websocket at the mount path: a bounded accept loop, one task per connection,
//! dispatch to Faye's connection types, graceful shutdown.

pub mod callback_polling;
pub mod dashboard;
pub mod eventsource;
mod http1;
mod io;
pub mod long_polling;
pub mod server_api;
#[cfg(feature = "tls")]
pub mod tls;
pub mod web_chat;
pub mod websocket;

use crate::server::Server;
use bytes::Bytes;
pub use dashboard::{Dashboard, DashboardSource};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioTimer;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
pub use web_chat::{WebChatRequest, WebChatResponse, WebChatService};

/// Response body of every reply: a whole buffer or an event stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Settings of the HTTP/websocket layer.
#[derive(Clone)]
pub struct TransportSettings {
    /// The mount path, e.g. `/faye`.
    pub mount: String,
    /// Largest accepted request body or websocket message, in bytes.
    pub max_body_bytes: usize,
    /// Most messages in one request body or websocket message (HTTP 400 / close 1008 beyond).
    pub max_batch_messages: usize,
    /// Origins allowed cross-origin access; `None` echoes any `Origin`, as Faye does.
    pub cors_origins: Option<Vec<String>>,
    /// Keepalive interval for websockets and EventSource streams.
    pub ping: Option<Duration>,
    /// The browser client script served at `<mount>.js` and `<mount>/client.js`.
    pub client_script: Option<PathBuf>,
    /// Most connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// True when the node runs on redis (adds redis metrics, and `/healthz` pings it).
    pub redis_configured: bool,
    /// Bearer key of the server publish API (`POST /server/publish`); `None` turns it off.
    pub api_key: Option<crate::config::Secret>,
    /// Serve HTTPS/WSS with this acceptor.
    #[cfg(feature = "tls")]
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// What `GET /status` reports (the node's cluster view); `None` answers 404.
    pub status: Option<Arc<dyn StatusSource>>,
    /// The chat action of web clients at `/api/chat`; `None` answers 404.
    pub web_chat: Option<Arc<dyn WebChatService>>,
    /// The operator's dashboard at `/dashboard`; `None` answers 404.
    pub dashboard: Option<Arc<Dashboard>>,
}

/// The read-only operator view behind `GET /status`, supplied by the node (the transport
/// does not know the cluster layers).
#[async_trait::async_trait]
pub trait StatusSource: Send + Sync {
    /// The JSON document, or why it cannot be produced (answered as 503).
    async fn status(&self) -> Result<serde_json::Value, String>;
}

/// A connection's share of `max_connections`: held by the connection task and, after an
/// upgrade, by the websocket task, so a websocket counts until it closes.
pub(crate) type ConnectionSlot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) server: Server,
    pub(crate) settings: TransportSettings,
    mount: String,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Shared {
    /// True when the path is the mount or under it (Faye's endpoint pattern).
    fn is_bayeux_path(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix(self.mount.as_str()) else {
            return false;
        };
        rest.is_empty()
            || rest.starts_with('/')
            || (rest.starts_with('.') && !rest[1..].contains(['/', '.']) && rest.len() > 1)
    }

    fn is_script_path(&self, path: &str) -> bool {
        path == format!("{}.js", self.mount) || path == format!("{}/client.js", self.mount)
    }

    /// True when the request's `Origin` (if any) may use the endpoint: always without an
    /// allow-list; with one, only the listed origins (requests without `Origin` pass).
    pub(crate) fn origin_allowed(&self, headers: &hyper::HeaderMap) -> bool {
        match (&self.settings.cors_origins, headers.get(header::ORIGIN)) {
            (Some(list), Some(origin)) => list.iter().any(|o| o.as_bytes() == origin.as_bytes()),
            _ => true,
        }
    }

    /// The `Origin` to echo in CORS headers: the request's, unless an allow-list leaves it out.
    pub(crate) fn cors_origin(&self, headers: &hyper::HeaderMap) -> Option<HeaderValue> {
        headers.get(header::ORIGIN).filter(|_| self.origin_allowed(headers)).cloned()
    }
}

/// Accepts connections on `listener` until `shutdown`; each connection runs on `tracker`.
pub fn serve(
    listener: TcpListener,
    server: Server,
    settings: TransportSettings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mount = settings.mount.trim_end_matches('/').to_string();
    let mut settings = settings;
    settings.client_script = resolve_client_script(settings.client_script.take(), &mount);
    let limit = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let shared = Arc::new(Shared { server, settings, mount, shutdown: shutdown.clone(), tracker: tracker.clone() });
    tracker.spawn(async move {
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.cancelled() => return,
            };
            let (stream, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let permit: ConnectionSlot = Arc::new(permit);
            let shared = shared.clone();
            shared.tracker.clone().spawn(async move {
                #[cfg(feature = "tls")]
                if let Some(acceptor) = shared.settings.tls.clone() {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => http1::serve(shared, io::Io::Other(Box::new(tls)), remote, permit).await,
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                    return;
                }
                http1::serve(shared, io::Io::Tcp(stream), remote, permit).await;
            });
        }
    });
}

/// Serves the rest of a connection with hyper: every request that is not the mount path's
/// Bayeux traffic (metrics, health, status, the dashboard, the server API, the client script).
async fn serve_with_hyper<I>(shared: Arc<Shared>, io: I, remote: SocketAddr, slot: ConnectionSlot)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = svc_shared.clone();
        let slot = slot.clone();
        async move { Ok::<_, Infallible>(handle(shared, req, remote, slot).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        }
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    remote: SocketAddr,
    slot: ConnectionSlot,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if !shared.is_bayeux_path(&path) {
        return match (req.method(), path.as_str()) {
            (&Method::GET, "/metrics") => metrics(&shared),
            (&Method::GET, "/healthz") => healthz(&shared).await,
            (&Method::GET, "/status") => status(&shared).await,
            (_, server_api::PUBLISH_PATH) => server_api::publish(&shared, req, remote).await,
            (_, p) if dashboard::is_dashboard_path(p) => dashboard::handle(&shared, req, remote).await,
            (&Method::GET | &Method::POST, p) if web_chat::is_api_path(p) => {
                web_chat::handle(&shared, req, remote).await
            }
            _ => text(StatusCode::NOT_FOUND, "Not found"),
        };
    }
    if shared.is_script_path(&path) {
        return client_script(&shared).await;
    }
    if websocket::is_upgrade(&req) && !is_preflight(&req) {
        return websocket::upgrade(shared, req, remote, slot);
    }
    handle_mount(shared, req, remote).await
}

/// A CORS preflight (answered before anything else at the mount path).
fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        || req.headers().get("access-control-request-method").is_some_and(|v| v.as_bytes() == b"POST")
}

/// A Bayeux request at the mount path (anything but a websocket upgrade or the client
/// script), whoever parsed it: the mount's own HTTP/1.1 layer or hyper.
fn handle_mount<B>(shared: Arc<Shared>, req: Request<B>, remote: SocketAddr) -> MountReply
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Not an `async fn`: each kind's future is the only state, not the request beside it.
    if is_preflight(&req) {
        return Box::pin(std::future::ready(preflight(&shared, &req)));
    }
    if eventsource::is_eventsource(&req) {
        return Box::pin(eventsource::open(shared, req, remote));
    }
    match *req.method() {
        Method::GET => callback_polling::handle(shared, req, remote),
        Method::POST => Box::pin(long_polling::handle(shared, req, remote)),
        _ => Box::pin(std::future::ready(bad_request("unrecognized request type"))),
    }
}

/// The reply to a Bayeux request, on its way (a held connect waits here).
type MountReply = std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>;

/// Where an app migrating from Faye keeps the browser client, relative to its working
/// directory: served at `<mount>.js` without a flag when the file is there.
const FAYE_BROWSER_CLIENT: &str = "node_modules/faye/client/faye-browser-min.js";

/// The browser client to serve: `--client-script` if given, else Faye's own from
/// `node_modules` when present; logs which, or that none is served.
fn resolve_client_script(configured: Option<PathBuf>, mount: &str) -> Option<PathBuf> {
    let (path, source) = match configured {
        Some(path) => (path, "--client-script"),
        None if std::path::Path::new(FAYE_BROWSER_CLIENT).is_file() => {
            let path = std::path::absolute(FAYE_BROWSER_CLIENT).unwrap_or_else(|_| PathBuf::from(FAYE_BROWSER_CLIENT));
            (path, "found in the working directory")
        }
        None => {
            tracing::info!(
                "no browser client served at {mount}.js: no --client-script, and no {FAYE_BROWSER_CLIENT} in the working directory"
            );
            return None;
        }
    };
    tracing::info!(path = %path.display(), source, "serving the browser client at {mount}.js and {mount}/client.js");
    Some(path)
}

async fn client_script(shared: &Shared) -> Response<Body> {
    let Some(path) = &shared.settings.client_script else {
        return text(StatusCode::NOT_FOUND, "Not found");
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/javascript; charset=utf-8")
            .header(header::CACHE_CONTROL, "public, max-age=3600")
            .body(full(Bytes::from(bytes)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the client script");
            text(StatusCode::NOT_FOUND, "Not found")
        }
    }
}

/// `GET /metrics`: Prometheus text format.
fn metrics(shared: &Shared) -> Response<Body> {
    let body = shared.server.render_metrics(shared.settings.redis_configured);
    let mut resp = Response::new(full(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

/// `GET /status`: the node's cluster view as JSON (peers, queue lengths, failed count,
/// worker states); 503 with the reason when redis cannot answer.
async fn status(shared: &Shared) -> Response<Body> {
    let Some(source) = &shared.settings.status else {
        return text(StatusCode::NOT_FOUND, "Not found");
    };
    match source.status().await {
        Ok(doc) => {
            let mut resp = Response::new(full(Bytes::from(doc.to_string())));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
            resp
        }
        Err(reason) => {
            tracing::debug!(%reason, "status unavailable");
            let mut resp = Response::new(full(Bytes::from(format!("status unavailable: {reason}"))));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            resp
        }
    }
}

/// `GET /healthz`: 200 while the node serves (and reaches redis when configured), 503 otherwise.
async fn healthz(shared: &Shared) -> Response<Body> {
    if shared.shutdown.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match shared.server.health().await {
        Ok(()) => text(StatusCode::OK, "ok"),
        Err(e) => {
            tracing::debug!(error = %e, "health check failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "redis unreachable")
        }
    }
}

fn preflight<B>(shared: &Shared, req: &Request<B>) -> Response<Body> {
    if shared.settings.cors_origins.is_some()
        && (req.headers().get(header::ORIGIN).is_none() || !shared.origin_allowed(req.headers()))
    {
        tracing::debug!(origin = ?req.headers().get(header::ORIGIN), "preflight from an origin not in the allow-list");
        return text(StatusCode::FORBIDDEN, "Forbidden origin");
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .or_else(|| req.headers().get(header::REFERER))
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    let mut resp = Response::new(full(Bytes::new()));
    let h = resp.headers_mut();
    h.insert("access-control-allow-credentials", HeaderValue::from_static("true"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("Accept, Authorization, Content-Type, Pragma, X-Requested-With"),
    );
    h.insert("access-control-allow-methods", HeaderValue::from_static("POST, GET"));
    h.insert("access-control-allow-origin", origin);
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    resp
}

/// A whole-buffer body.
pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed()
}

/// A plain-text reply.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Faye's 400: `Bad request` in plain text; the reason goes to the log and to a header.
pub(crate) fn bad_request(reason: &str) -> Response<Body> {
    tracing::debug!(reason, "bad request");
    let mut resp = text(StatusCode::BAD_REQUEST, "Bad request");
    if let Ok(v) = HeaderValue::from_str(&reason.replace(['\r', '\n'], " ")) {
        resp.headers_mut().insert("x-bayeux-error", v);
    }
    resp
}

/// 413 for a body over the limit.
pub(crate) fn too_large() -> Response<Body> {
    text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
}

/// Headers every Bayeux reply carries, plus CORS when the request had an `Origin`.
pub(crate) fn bayeux_headers(resp: &mut Response<Body>, content_type: &'static str, origin: Option<&HeaderValue>) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if let Some(origin) = origin {
        h.insert("access-control-allow-credentials", HeaderValue::from_static("true"));
        h.insert("access-control-allow-origin", origin.clone());
    }
}

/// Parses a Bayeux body and applies it through the server, mapping codec errors to HTTP; what
/// is left is [`Server::finish`] (held connects, encoding the replies).
pub(crate) async fn process_batch(
    shared: &Shared,
    json: Bytes,
    ctx: &crate::server::RequestContext,
) -> Result<crate::server::Batch, Response<Body>> {
    use crate::protocol::codec::{self, CodecError};
    // The body is let go once decoded: a held connect does not keep it.
    let decoded = codec::decode(&json, shared.settings.max_body_bytes);
    drop(json);
    match decoded {
        Ok(messages) if messages.len() > shared.settings.max_batch_messages => Err(bad_request(&format!(
            "{} messages in one request; at most {} are accepted",
            messages.len(),
            shared.settings.max_batch_messages
        ))),
        Ok(messages) => Ok(shared.server.process(messages, ctx, None).await),
        Err(CodecError::TooLarge { .. }) => Err(too_large()),
        Err(e) => Err(bad_request(&e.to_string())),
    }
}

/// The request context of an HTTP request.
pub(crate) fn request_context<B>(req: &Request<B>, remote: SocketAddr) -> crate::server::RequestContext {
    crate::server::RequestContext {
        remote_addr: Some(remote),
        origin: req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string),
        local: false,
    }
}

/// Reads a request body up to the limit.
pub(crate) async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(bad_request(&format!("could not read the body: {e}"))),
    }
}

#[cfg(test)]
mod future_sizes {
    use super::*;
    fn shared() -> Arc<Shared> {
        let server = Server::on_memory_engine();
        let shutdown = CancellationToken::new();
        let settings = TransportSettings {
            mount: "/faye".into(),
            max_body_bytes: 1 << 20,
            max_batch_messages: 100,
            cors_origins: None,
            ping: None,
            client_script: None,
            max_connections: 10,
            redis_configured: false,
            api_key: None,
            #[cfg(feature = "tls")]
            tls: None,
            status: None,
            web_chat: None,
            dashboard: None,
        };
        Arc::new(Shared { server, settings, mount: "/faye".into(), shutdown, tracker: TaskTracker::new() })
    }

    /// An idle long-polling client is a held request: the reply future and the connection
    /// task are what it costs beside its session and the held connect itself. Bounds with
    /// some room over today's sizes in a debug build (232 and 792 bytes on rustc 1.95; before
    /// the mount had its own HTTP/1.1 layer, the reply future alone was 5,424), so a change
    /// that makes them balloon fails here.
    #[tokio::test]
    async fn a_held_long_poll_keeps_little_state() {
        let shared = shared();
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let req = Request::post("/faye").body(Full::new(Bytes::from_static(b"[]"))).unwrap();
        let reply = long_polling::handle(shared.clone(), req, remote);
        let reply_size = std::mem::size_of_val(&reply);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let slot: ConnectionSlot = Arc::new(Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap());
        let conn = http1::serve(shared, io::Io::Tcp(stream), remote, slot);
        let conn_size = std::mem::size_of_val(&conn);
        drop(client);
        assert!(reply_size <= 400, "long-polling reply future: {reply_size} bytes");
        assert!(conn_size <= 1000, "connection task: {conn_size} bytes");
    }
}
