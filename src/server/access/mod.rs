//! Access control for Bayeux clients, all of it off unless configured: handshake tokens
//! (JWT in `ext.auth.token`), channel rules (who may subscribe and publish where) and the
//! auth hook (the app's HTTP endpoint asked about each operation). A client's token claims
//! are kept with the engine, so every node of a cluster applies the same rights to it.

mod hook;
mod rules;
mod token;

use super::RequestContext;
use crate::config::AccessConfig;
use crate::engine::{Engine, EngineError};
use crate::protocol::{Message, advice};
use crate::telemetry::Metrics;
use bytes::Bytes;
use dashmap::DashMap;
use hook::{AuthHook, HookRequest, HookVerdict};
pub(crate) use rules::Operation;
use rules::{Caller, Rules};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use token::TokenKeyError;
use token::TokenVerifier;

/// How long a token without `exp` stays usable from other nodes (its claims' lifetime in
/// redis); a client that outlives it is asked to handshake again there.
const CLAIMS_TTL_WITHOUT_EXP: Duration = Duration::from_secs(24 * 3600);

/// Claims read from the engine that this node keeps at most; past it the cache starts over.
const MAX_CACHED_CLAIMS: usize = 200_000;

/// A refusal: the reply's error, and the advice it carries.
#[derive(Debug)]
pub(crate) struct Denial {
    /// The Bayeux error, e.g. `403:/a:Forbidden channel`.
    pub(crate) error: String,
    /// Advice for the client (`reconnect: none` for a refused handshake).
    pub(crate) advice: Option<Box<RawValue>>,
}

impl Denial {
    fn unauthorized(reason: &str, advice: Box<RawValue>) -> Self {
        Self { error: format!("401::{reason}"), advice: Some(advice) }
    }

    fn forbidden(channel: &str, reason: &str) -> Self {
        Self { error: format!("403:{channel}:{reason}"), advice: None }
    }
}

/// What a client proved at its handshake.
#[derive(Debug)]
struct Claims {
    claims: Map<String, Value>,
    /// `exp`, in seconds since the epoch.
    expires: Option<u64>,
}

impl Claims {
    fn new(claims: Map<String, Value>) -> Self {
        let expires = claims.get("exp").and_then(Value::as_f64).map(|e| e.max(0.0) as u64);
        Self { claims, expires }
    }

    fn expired(&self) -> bool {
        self.expires.is_some_and(|exp| exp <= now_secs())
    }

    fn user(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    /// The token's own channel list for `operation`, when it restricts the session.
    fn channels(&self, operation: Operation) -> Option<Vec<String>> {
        let list = self.claims.get("channels")?.get(operation.name())?.as_array()?;
        Some(list.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A node's access control: built from [`AccessConfig`] when it restricts clients.
pub struct AccessControl {
    verifier: Option<TokenVerifier>,
    allow_anonymous: bool,
    rules: Rules,
    hook: Option<AuthHook>,
    /// Claims by client id, as read from the engine (`None`: the client has none).
    claims: DashMap<Arc<str>, Option<Arc<Claims>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
            .field("tokens", &self.verifier.is_some())
            .field("allow_anonymous", &self.allow_anonymous)
            .field("rules", &self.rules)
            .field("hook", &self.hook)
            .finish_non_exhaustive()
    }
}

impl AccessControl {
    /// The access control `config` asks for; `None` when it restricts nothing (Faye's open
    /// behaviour). Fails when the token key cannot be loaded.
    pub fn new(config: &AccessConfig, metrics: Arc<Metrics>) -> Result<Option<Self>, TokenKeyError> {
        if !config.restricts_clients() {
            return Ok(None);
        }
        let verifier = config.token_key.as_ref().map(TokenVerifier::new).transpose()?;
        let hook = config
            .auth_hook
            .as_deref()
            .and_then(|url| AuthHook::new(url, config.auth_hook_timeout, config.auth_hook_cache, metrics.clone()));
        metrics.access_control_enabled();
        Ok(Some(Self {
            verifier,
            allow_anonymous: config.allow_anonymous,
            rules: Rules::new(&config.rules),
            hook,
            claims: DashMap::new(),
            metrics,
        }))
    }

    /// Checks a handshake: its token (when tokens are configured), then the hook. Returns
    /// the claims to keep for the new client.
    pub(crate) async fn handshake(
        &self,
        message: &Message,
        ctx: &RequestContext,
    ) -> Result<Option<Map<String, Value>>, Denial> {
        let result = self.check_handshake(message, ctx).await;
        if result.is_err() {
            self.metrics.access_denied("handshake");
        }
        result
    }

    async fn check_handshake(
        &self,
        message: &Message,
        ctx: &RequestContext,
    ) -> Result<Option<Map<String, Value>>, Denial> {
        let mut claims = None;
        if let Some(verifier) = &self.verifier {
            match auth_token(message) {
                Some(token) => match verifier.verify(&token) {
                    Ok(c) => claims = Some(c),
                    Err(e) => {
                        // The reason stays in the log: the client learns only that it was refused.
                        tracing::debug!(remote = ?ctx.remote_addr, reason = %e, "handshake refused: token");
                        return Err(Denial::unauthorized("Unauthorized", advice::none()));
                    }
                },
                None if self.allow_anonymous => {}
                None => return Err(Denial::unauthorized("Unauthorized", advice::none())),
            }
        }
        if let Some(hook) = &self.hook {
            let user = claims.as_ref().and_then(|c| c.get("sub")).and_then(Value::as_str);
            let request = HookRequest {
                operation: "handshake",
                client_id: None,
                channel: None,
                ext: message.ext.as_deref(),
                ip: ctx.remote_addr.map(|a| a.ip().to_canonical().to_string()),
                user,
            };
            match hook.ask(&request).await {
                HookVerdict::Allow => {}
                HookVerdict::Deny(reason) => return Err(Denial::unauthorized(&reason, advice::none())),
                // The app may be back soon: retry the handshake later rather than give up.
                HookVerdict::Failed(_) => {
                    return Err(Denial::unauthorized("Authorization unavailable", advice::handshake_after(1000)));
                }
            }
        }
        Ok(claims)
    }

    /// Keeps a new client's claims with the engine, for every node.
    pub(crate) async fn remember(
        &self,
        engine: &dyn Engine,
        client_id: &str,
        claims: Map<String, Value>,
    ) -> Result<(), EngineError> {
        let claims = Claims::new(claims);
        let ttl = match claims.expires {
            Some(exp) => Duration::from_secs(exp.saturating_sub(now_secs()).max(1)),
            None => CLAIMS_TTL_WITHOUT_EXP,
        };
        let bytes = Bytes::from(serde_json::to_vec(&claims.claims).unwrap_or_default());
        engine.set_credentials(client_id, Some(bytes), ttl).await?;
        self.cache(client_id, Some(Arc::new(claims)));
        Ok(())
    }

    /// The client disconnected: forget its claims here and in the engine.
    pub(crate) async fn forget(&self, engine: &dyn Engine, client_id: &str) -> Result<(), EngineError> {
        self.claims.remove(client_id);
        if self.verifier.is_some() {
            engine.set_credentials(client_id, None, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// True when the client's token has expired: its session ends at this connect.
    pub(crate) async fn expired(&self, engine: &dyn Engine, client_id: &str) -> Result<bool, EngineError> {
        if self.verifier.is_none() {
            return Ok(false);
        }
        Ok(self.claims_of(engine, client_id).await?.is_some_and(|c| c.expired()))
    }

    /// May this message's sender subscribe to (or publish on) `channel`? Checks, in order:
    /// the token's validity and its own channel list, the channel rules, then the hook.
    pub(crate) async fn check(
        &self,
        engine: &dyn Engine,
        operation: Operation,
        channel: &str,
        message: &Message,
        ctx: &RequestContext,
    ) -> Result<Result<(), Denial>, EngineError> {
        let verdict = self.check_operation(engine, operation, channel, message, ctx).await?;
        if verdict.is_err() {
            self.metrics.access_denied(operation.name());
        }
        Ok(verdict)
    }

    async fn check_operation(
        &self,
        engine: &dyn Engine,
        operation: Operation,
        channel: &str,
        message: &Message,
        ctx: &RequestContext,
    ) -> Result<Result<(), Denial>, EngineError> {
        if ctx.local {
            let allowed = self.rules.allows(operation, channel, Caller::Server);
            return Ok(if allowed { Ok(()) } else { Err(Denial::forbidden(channel, "Forbidden channel")) });
        }
        let client_id = message.client_id.as_deref().filter(|c| !c.is_empty());
        let claims = match (&self.verifier, client_id) {
            (Some(_), Some(id)) => self.claims_of(engine, id).await?,
            _ => None,
        };
        match &claims {
            Some(c) if c.expired() => return Ok(Err(Denial::unauthorized("Token expired", advice::handshake()))),
            None if self.verifier.is_some() && !self.allow_anonymous => {
                return Ok(Err(Denial::unauthorized("Unauthorized", advice::handshake())));
            }
            _ => {}
        }
        if let Some(list) = claims.as_ref().and_then(|c| c.channels(operation))
            && !rules::listed(&list, channel)
        {
            return Ok(Err(Denial::forbidden(channel, "Forbidden channel")));
        }
        let caller = match &claims {
            Some(c) => Caller::Token(&c.claims),
            None => Caller::Anonymous,
        };
        if !self.rules.allows(operation, channel, caller) {
            return Ok(Err(Denial::forbidden(channel, "Forbidden channel")));
        }
        if let Some(hook) = &self.hook {
            let request = HookRequest {
                operation: operation.name(),
                client_id,
                channel: Some(channel),
                ext: message.ext.as_deref(),
                ip: ctx.remote_addr.map(|a| a.ip().to_canonical().to_string()),
                user: claims.as_ref().and_then(|c| c.user()),
            };
            match hook.ask(&request).await {
                HookVerdict::Allow => {}
                HookVerdict::Deny(reason) => return Ok(Err(Denial::forbidden(channel, &reason))),
                HookVerdict::Failed(_) => return Ok(Err(Denial::forbidden(channel, "Authorization unavailable"))),
            }
        }
        Ok(Ok(()))
    }

    /// The client's claims: from this node's cache, else from the engine.
    async fn claims_of(&self, engine: &dyn Engine, client_id: &str) -> Result<Option<Arc<Claims>>, EngineError> {
        if let Some(cached) = self.claims.get(client_id) {
            return Ok(cached.clone());
        }
        let claims = engine
            .credentials(client_id)
            .await?
            .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
            .map(|map| Arc::new(Claims::new(map)));
        // Claims are written before the handshake reply hands the client id out, so an
        // absence cannot turn into claims later: both answers are kept.
        self.cache(client_id, claims.clone());
        Ok(claims)
    }

    fn cache(&self, client_id: &str, claims: Option<Arc<Claims>>) {
        if self.claims.len() >= MAX_CACHED_CLAIMS {
            self.claims.clear();
        }
        self.claims.insert(Arc::from(client_id), claims);
    }
}

/// `ext.auth.token` of a message.
fn auth_token(message: &Message) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Ext {
        auth: Option<Auth>,
    }
    #[derive(serde::Deserialize)]
    struct Auth {
        token: Option<String>,
    }
    let ext: Ext = serde_json::from_str(message.ext.as_deref()?.get()).ok()?;
    ext.auth?.token.filter(|t| !t.is_empty())
}

/// Removes `ext.auth` from a message before it is delivered (and drops an `ext` left empty).
pub(crate) fn strip_auth(message: &mut Message) {
    let Some(ext) = &message.ext else { return };
    if !ext.get().contains("\"auth\"") {
        return;
    }
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(ext.get()) else { return };
    if map.remove("auth").is_none() {
        return;
    }
    message.ext = if map.is_empty() { None } else { serde_json::value::to_raw_value(&map).ok() };
}

/// The error of a connect whose token has expired.
pub(crate) const TOKEN_EXPIRED: &str = "401::Token expired";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_is_stripped_and_nothing_else() {
        let mut m = Message {
            ext: serde_json::value::to_raw_value(&serde_json::json!({"auth": {"token": "t"}, "trace": 1})).ok(),
            ..Message::default()
        };
        strip_auth(&mut m);
        assert_eq!(m.ext.as_deref().map(|e| e.get()), Some(r#"{"trace":1}"#));
        let mut only = Message {
            ext: serde_json::value::to_raw_value(&serde_json::json!({"auth": {"token": "t"}})).ok(),
            ..Message::default()
        };
        strip_auth(&mut only);
        assert!(only.ext.is_none());
        let mut nested = Message {
            ext: serde_json::value::to_raw_value(&serde_json::json!({"x": {"auth": 1}})).ok(),
            ..Message::default()
        };
        strip_auth(&mut nested);
        assert_eq!(nested.ext.as_deref().map(|e| e.get()), Some(r#"{"x":{"auth":1}}"#));
    }
}
