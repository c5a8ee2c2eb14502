//! The operator's dashboard at `/dashboard`: one HTML page with its script and style sheet,
//! embedded in the binary, and the JSON it polls. Off unless a password is set; every request
//! needs HTTP Basic auth (any user name, that password), and an address that keeps failing is
//! refused for a minute. The data comes from the node through [`DashboardSource`].

use super::{Body, Shared, bad_request, full, read_body, text};
use crate::config::Secret;
use crate::server::protected_channels::same_token;
use base64::Engine as _;
use bytes::Bytes;
use dashmap::DashMap;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the dashboard lives (outside the Bayeux mount).
pub(crate) const PREFIX: &str = "/dashboard";

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// Failed logins one address may make per window before it is refused outright.
const MAX_FAILURES: u32 = 10;
/// The window of [`MAX_FAILURES`].
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it the oldest knowledge is dropped.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// What the dashboard shows, supplied by the node (the transport does not know the cluster).
#[async_trait::async_trait]
pub trait DashboardSource: Send + Sync {
    /// Everything the page shows, refreshed every poll.
    async fn overview(&self) -> Result<Value, String>;
    /// One channel's figures on this node (the page's search box).
    async fn channel(&self, name: &str) -> Result<Value, String>;
    /// Puts a dead-letter entry (by its stored text) back in the queue; false when gone.
    async fn retry_failed(&self, raw: &str) -> Result<bool, String>;
    /// Deletes a dead-letter entry (by its stored text); false when gone.
    async fn remove_failed(&self, raw: &str) -> Result<bool, String>;
}

/// The dashboard of one node: its password, its data, and the failed logins by address.
pub struct Dashboard {
    password: Secret,
    source: Arc<dyn DashboardSource>,
    failures: DashMap<IpAddr, (u32, Instant)>,
}

impl Dashboard {
    /// A dashboard guarded by `password`, showing `source`.
    pub fn new(password: Secret, source: Arc<dyn DashboardSource>) -> Self {
        Self { password, source, failures: DashMap::new() }
    }

    /// `Some(wait)` while `ip` is locked out.
    fn locked_out(&self, ip: IpAddr) -> Option<Duration> {
        let entry = self.failures.get(&ip)?;
        let (count, since) = *entry;
        let elapsed = since.elapsed();
        (count >= MAX_FAILURES && elapsed < FAILURE_WINDOW).then(|| FAILURE_WINDOW - elapsed)
    }

    fn failed(&self, ip: IpAddr) {
        if self.failures.len() >= MAX_TRACKED_ADDRESSES {
            self.failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if self.failures.len() >= MAX_TRACKED_ADDRESSES {
                self.failures.clear();
            }
        }
        let mut entry = self.failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    /// True when the request carries `Basic base64(any-user:password)`.
    fn authorized(&self, headers: &hyper::HeaderMap) -> bool {
        let Some(encoded) =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else { return false };
        same_token(&decoded[colon + 1..], self.password.0.as_bytes())
    }
}

/// True for the dashboard's paths.
pub(crate) fn is_dashboard_path(path: &str) -> bool {
    path == PREFIX || path.strip_prefix(PREFIX).is_some_and(|rest| rest.starts_with('/'))
}

/// Answers a request under `/dashboard`.
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let Some(dashboard) = &shared.settings.dashboard else {
        return text(StatusCode::NOT_FOUND, "Not found");
    };
    let ip = remote.ip().to_canonical();
    if let Some(wait) = dashboard.locked_out(ip) {
        let mut resp = text(StatusCode::TOO_MANY_REQUESTS, "Too many failed logins from this address; try later");
        if let Ok(v) = HeaderValue::from_str(&(wait.as_secs() + 1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    if !dashboard.authorized(req.headers()) {
        if req.headers().contains_key(header::AUTHORIZATION) {
            dashboard.failed(ip);
            tracing::info!(%remote, "dashboard: wrong password");
        }
        let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized: the dashboard needs its password");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"actioncluster dashboard\", charset=\"UTF-8\""),
        );
        return secured(resp);
    }
    let path = req.uri().path().to_string();
    let route = path.strip_prefix(PREFIX).unwrap_or("");
    let resp = match (req.method().clone(), route) {
        (Method::GET, "" | "/") => asset(INDEX_HTML, "text/html; charset=utf-8"),
        (Method::GET, "/app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
        (Method::GET, "/app.css") => asset(APP_CSS, "text/css; charset=utf-8"),
        (Method::GET, "/api/overview") => json_result(dashboard.source.overview().await),
        (Method::GET, "/api/channel") => {
            let name = req.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "name").map(|(_, v)| v.into_owned())
            });
            match name.filter(|n| n.starts_with('/')) {
                Some(name) => json_result(dashboard.source.channel(&name).await),
                None => bad_request("expected ?name=/a/channel"),
            }
        }
        (Method::POST, "/api/failed/retry" | "/api/failed/remove") => {
            let retry = route.ends_with("/retry");
            failed_action(shared, dashboard, req, retry).await
        }
        _ => text(StatusCode::NOT_FOUND, "Not found"),
    };
    secured(resp)
}

/// Retry or remove one dead-letter entry: `{"raw": "<entry text>"}`. A custom header is
/// required, which another site's form cannot send, so the browser's remembered Basic
/// credentials cannot be used against it.
async fn failed_action(shared: &Shared, dashboard: &Dashboard, req: Request<Incoming>, retry: bool) -> Response<Body> {
    if req.headers().get("x-dashboard").is_none_or(|v| v.as_bytes() != b"1") {
        return text(StatusCode::FORBIDDEN, "Forbidden: send the X-Dashboard: 1 header");
    }
    let body = match read_body(req, shared.settings.max_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let raw = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["raw"].as_str().map(str::to_string));
    let Some(raw) = raw else { return bad_request("expected {\"raw\": \"<dead-letter entry>\"}") };
    let result =
        if retry { dashboard.source.retry_failed(&raw).await } else { dashboard.source.remove_failed(&raw).await };
    json_result(result.map(|done| serde_json::json!({ "done": done })))
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_result(result: Result<Value, String>) -> Response<Body> {
    match result {
        Ok(doc) => {
            let mut resp = Response::new(full(Bytes::from(doc.to_string())));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(reason) => {
            tracing::warn!(%reason, "dashboard data unavailable");
            let mut resp = Response::new(full(Bytes::from(serde_json::json!({ "error": reason }).to_string())));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
    }
}

/// Headers every dashboard answer carries: nothing cached, no framing, only our own assets.
fn secured(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    resp
}
