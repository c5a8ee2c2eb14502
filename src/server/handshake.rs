//! `/meta/handshake`: agree on a connection type and hand out a client id, at most as often
//! per address as the handshake rate limit allows.

use super::{RequestContext, Server, ServerEvent};
use crate::engine::EngineError;
use crate::protocol::{BAYEUX_VERSION, BayeuxError, CONNECTION_TYPES, Message, advice};

/// A rate-limited client is advised to wait until its address has a token again, plus a
/// random pause of up to this (or the reconnect jitter when larger), so that the clients
/// refused together do not come back together.
const RATE_LIMIT_SPREAD_MS: u64 = 1000;

impl Server {
    pub(super) async fn handshake(&self, message: &Message, ctx: &RequestContext) -> Result<Message, EngineError> {
        let mut reply = message.reply();
        reply.version = Some(BAYEUX_VERSION.to_string());
        reply.supported_connection_types = Some(CONNECTION_TYPES.iter().map(|t| t.to_string()).collect());

        if let (Some(limiter), Some(remote), false) = (&self.inner.handshake_limiter, ctx.remote_addr, ctx.local)
            && let Err(wait) = limiter.check(remote.ip())
        {
            let spread = RATE_LIMIT_SPREAD_MS.max(self.inner.settings.reconnect_jitter.as_millis() as u64);
            let interval = wait.as_millis() as u64 + 1 + rand::random_range(0..=spread);
            tracing::debug!(%remote, interval, "handshake refused: rate limit");
            reply.error = Some(BayeuxError::handshake_rate_limited().to_string());
            reply.advice = Some(advice::handshake_after(interval));
            return Ok(reply);
        }

        let version_missing = message.version.as_deref().is_none_or(|v| v.is_empty() || v == "0" || v == "false");
        if version_missing {
            reply.error = Some(BayeuxError::parameter_missing("version").to_string());
        }
        match &message.supported_connection_types {
            Some(types) => {
                if !types.iter().any(|t| CONNECTION_TYPES.contains(&t.as_str())) {
                    reply.error = Some(BayeuxError::conntype_mismatch(types.clone()).to_string());
                }
            }
            None => reply.error = Some(BayeuxError::parameter_missing("supportedConnectionTypes").to_string()),
        }
        if reply.error.is_some() {
            return Ok(reply);
        }
        let mut claims = None;
        if let Some(access) = self.inner.settings.access.as_ref().filter(|_| !ctx.local) {
            match access.handshake(message, ctx).await {
                Ok(c) => claims = c,
                Err(denial) => {
                    reply.error = Some(denial.error);
                    reply.advice = denial.advice;
                    return Ok(reply);
                }
            }
        }
        let client_id = self.inner.engine.create_client().await?;
        if let (Some(access), Some(claims)) = (&self.inner.settings.access, claims) {
            access.remember(&*self.inner.engine, &client_id, claims).await?;
        }
        tracing::debug!(client_id = %client_id, "handshake");
        self.inner.metrics.handshake();
        self.inner.sessions.emit(|| ServerEvent::Handshake { client_id: client_id.clone() });
        if self.inner.settings.bind_client_ip
            && !ctx.local
            && let Some(remote) = ctx.remote_addr
        {
            let _ = self.inner.sessions.get_or_create(&client_id).owner_ip.set(remote.ip().to_canonical());
        }
        reply.client_id = Some(client_id);
        Ok(reply)
    }
}
