//! The auth hook: the node asks the app's HTTP endpoint about each handshake, subscribe and
//! publish, over a pooled HTTP/1.1 client. Anything but `200 {"allow": true}` within the
//! timeout denies: the hook fails closed. Allows may be reused for a while per (client,
//! channel, operation).

use crate::telemetry::Metrics;
use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest answer read from the hook.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Cached allows kept at most; past it, expired ones are dropped, then all of them.
const MAX_CACHED: usize = 100_000;

/// Longest reason taken from a hook's denial.
const MAX_REASON_CHARS: usize = 200;

/// What the hook is asked.
#[derive(Debug, Serialize)]
pub(crate) struct HookRequest<'a> {
    /// `handshake`, `subscribe` or `publish`.
    pub(crate) operation: &'static str,
    /// The client, except at handshake.
    pub(crate) client_id: Option<&'a str>,
    /// The channel, except at handshake.
    pub(crate) channel: Option<&'a str>,
    /// The message's `ext`, as sent.
    pub(crate) ext: Option<&'a serde_json::value::RawValue>,
    /// The client's address.
    pub(crate) ip: Option<String>,
    /// The token's `sub`, when the client has one.
    pub(crate) user: Option<&'a str>,
}

/// The hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookVerdict {
    /// `{"allow": true}`.
    Allow,
    /// `{"allow": false, "error": reason}`.
    Deny(String),
    /// No usable answer (status, timeout, malformed body, unreachable): denied.
    Failed(String),
}

/// The pooled client and the allow cache.
pub(crate) struct AuthHook {
    url: hyper::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    cache_for: Duration,
    allowed: DashMap<String, Instant>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AuthHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthHook").field("url", &self.url).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl AuthHook {
    /// A hook at `url` (validated with the config).
    pub(crate) fn new(url: &str, timeout: Duration, cache_for: Duration, metrics: Arc<Metrics>) -> Option<Self> {
        let url = url.parse().ok()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Some(Self { url, client, timeout, cache_for, allowed: DashMap::new(), metrics })
    }

    /// Asks the hook (or the cache, for subscribes and publishes).
    pub(crate) async fn ask(&self, request: &HookRequest<'_>) -> HookVerdict {
        let cache_key = match (request.client_id, request.channel) {
            (Some(client), Some(channel)) if !self.cache_for.is_zero() => {
                Some(format!("{}\u{0}{client}\u{0}{channel}", request.operation))
            }
            _ => None,
        };
        if let Some(key) = &cache_key
            && self.allowed.get(key).is_some_and(|until| *until > Instant::now())
        {
            return HookVerdict::Allow;
        }
        let started = Instant::now();
        let verdict = match tokio::time::timeout(self.timeout, self.call(request)).await {
            Ok(verdict) => verdict,
            Err(_) => HookVerdict::Failed(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        let outcome = match &verdict {
            HookVerdict::Allow => "allow",
            HookVerdict::Deny(_) => "deny",
            HookVerdict::Failed(reason) => {
                tracing::warn!(operation = request.operation, reason = %reason, "auth hook failed: denied");
                "error"
            }
        };
        self.metrics.auth_hook_call(outcome, started.elapsed());
        if let (Some(key), HookVerdict::Allow) = (cache_key, &verdict) {
            self.remember(key);
        }
        verdict
    }

    fn remember(&self, key: String) {
        if self.allowed.len() >= MAX_CACHED {
            let now = Instant::now();
            self.allowed.retain(|_, until| *until > now);
            if self.allowed.len() >= MAX_CACHED {
                self.allowed.clear();
            }
        }
        self.allowed.insert(key, Instant::now() + self.cache_for);
    }

    async fn call(&self, request: &HookRequest<'_>) -> HookVerdict {
        let body = match serde_json::to_vec(request) {
            Ok(body) => body,
            Err(e) => return HookVerdict::Failed(format!("cannot encode the request: {e}")),
        };
        let http = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let http = match http {
            Ok(http) => http,
            Err(e) => return HookVerdict::Failed(e.to_string()),
        };
        let response = match self.client.request(http).await {
            Ok(response) => response,
            Err(e) => return HookVerdict::Failed(format!("unreachable: {e}")),
        };
        let status = response.status();
        let body = match Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return HookVerdict::Failed(format!("cannot read the answer: {e}")),
        };
        if status != hyper::StatusCode::OK {
            return HookVerdict::Failed(format!("answered HTTP {}", status.as_u16()));
        }
        parse_answer(&body)
    }
}

/// Reads `{"allow": bool, "error": reason}`.
fn parse_answer(body: &[u8]) -> HookVerdict {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return HookVerdict::Failed("the answer is not a JSON object".into());
    };
    match answer.get("allow") {
        Some(Value::Bool(true)) => HookVerdict::Allow,
        Some(Value::Bool(false)) => {
            let reason = answer.get("error").and_then(Value::as_str).map(sanitize).unwrap_or_default();
            HookVerdict::Deny(if reason.is_empty() { "Forbidden".into() } else { reason })
        }
        _ => HookVerdict::Failed("the answer has no boolean \"allow\"".into()),
    }
}

/// A reason fit for a Bayeux error's message part: printable, no apostrophe (Faye's client
/// cannot parse an error holding one), bounded.
pub(crate) fn sanitize(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control() && *c != '\'')
        .take(MAX_REASON_CHARS)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        assert_eq!(parse_answer(br#"{"allow": true}"#), HookVerdict::Allow);
        assert_eq!(
            parse_answer(br#"{"allow": false, "error": "not your room"}"#),
            HookVerdict::Deny("not your room".into())
        );
        assert_eq!(parse_answer(br#"{"allow": false}"#), HookVerdict::Deny("Forbidden".into()));
        assert!(matches!(parse_answer(br#"{"allow": "yes"}"#), HookVerdict::Failed(_)));
        assert!(matches!(parse_answer(b"allow"), HookVerdict::Failed(_)));
        assert!(matches!(parse_answer(b"[true]"), HookVerdict::Failed(_)));
        assert_eq!(sanitize("it's\nnot yours"), "itsnot yours");
    }
}
