//! Web messages (spec §C8): the mailbox of an HTTP client, `actionHero:webMessages:{id}`, a
//! list of JSON payloads that disappears `web_message_ttl` after the last store. Disabled
//! (every call answers `Disabled`) when no TTL is configured, as in the original.

use super::keys::WEB_MESSAGES_DROPPED;
use super::{Backend, ClusterError, Ctx, MemoryState, Numeric, RedisBackend, Stats, guard};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The memory backend's mailboxes: payloads oldest first and the expiry (ms).
#[derive(Debug, Default)]
pub(crate) struct MemoryMailboxes {
    boxes: HashMap<String, (VecDeque<Value>, i64)>,
}

/// HTTP clients' mailboxes. Cheap to clone.
#[derive(Clone)]
pub struct WebMessages {
    ctx: Arc<Ctx>,
}

impl WebMessages {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    /// True when a TTL is configured.
    pub fn enabled(&self) -> bool {
        self.ctx.settings.web_message_ttl.is_some()
    }

    fn ttl_ms(&self) -> Result<i64, ClusterError> {
        let ttl = self.ctx.settings.web_message_ttl.ok_or(ClusterError::Disabled)?;
        Ok(super::duration_ms(ttl))
    }

    /// The mailbox cap, at least 1.
    fn cap(&self) -> Option<usize> {
        self.ctx.settings.max_web_messages.map(|c| c.max(1))
    }

    /// Appends `payload` to the client's mailbox and restarts its TTL. With a cap, the
    /// oldest messages beyond it are dropped and counted in `webMessages:dropped`.
    pub async fn store(&self, connection_id: &str, payload: &Value) -> Result<(), ClusterError> {
        let ttl = self.ttl_ms()?;
        let dropped = match &self.ctx.backend {
            Backend::Memory(m) => self.store_memory(m, connection_id, payload, ttl),
            Backend::Redis(r) => self.store_redis(r, connection_id, payload, ttl).await?,
        };
        if dropped > 0 {
            tracing::debug!(connection_id, dropped, "web mailbox full; oldest messages dropped");
            // Counted after the store: a stat, so a crash in between may only undercount.
            let count = Numeric::Int(i64::try_from(dropped).unwrap_or(i64::MAX));
            if let Err(e) = Stats::new(self.ctx.clone()).increment(WEB_MESSAGES_DROPPED, count).await {
                tracing::warn!(error = %e, "could not count dropped web messages");
            }
        }
        tracing::trace!(connection_id, %payload, "web message stored");
        Ok(())
    }

    fn store_memory(&self, m: &MemoryState, connection_id: &str, payload: &Value, ttl: i64) -> usize {
        let now = m.clock.now_ms();
        let mut mailboxes = guard(&m.mailboxes);
        let (messages, expires) = mailboxes.boxes.entry(connection_id.to_string()).or_default();
        if *expires <= now {
            messages.clear();
        }
        messages.push_back(payload.clone());
        *expires = now.saturating_add(ttl);
        let excess = self.cap().map_or(0, |cap| messages.len().saturating_sub(cap));
        messages.drain(..excess);
        excess
    }

    async fn store_redis(
        &self,
        r: &RedisBackend,
        connection_id: &str,
        payload: &Value,
        ttl: i64,
    ) -> Result<usize, ClusterError> {
        let key = r.keys.web_messages(connection_id);
        let json = serde_json::to_string(payload).map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
        let mut pipe = redis::pipe();
        // MULTI: the message and its TTL (and the cap) land together.
        pipe.atomic().rpush(&key, json).pexpire(&key, ttl).ignore();
        if let Some(cap) = self.cap() {
            pipe.ltrim(&key, -(cap as isize), -1).ignore();
        }
        let (len,): (usize,) = r.check(pipe.query_async(&mut r.con()).await)?;
        Ok(self.cap().map_or(0, |cap| len.saturating_sub(cap)))
    }

    /// Takes every message of the client's mailbox, oldest first, emptying it in one atomic
    /// step (a message is either returned here or still there for the next fetch); `[]`
    /// when there is none. A stored element that is not JSON is reported and skipped.
    pub async fn fetch_all(&self, connection_id: &str) -> Result<Vec<Value>, ClusterError> {
        self.ttl_ms()?;
        let messages = match &self.ctx.backend {
            Backend::Memory(m) => {
                let now = m.clock.now_ms();
                match guard(&m.mailboxes).boxes.remove(connection_id) {
                    Some((messages, expires)) if expires > now => messages.into(),
                    _ => Vec::new(),
                }
            }
            Backend::Redis(r) => {
                let key = r.keys.web_messages(connection_id);
                let mut pipe = redis::pipe();
                // MULTI: read and delete together, so nothing stored in between is lost.
                pipe.atomic().lrange(&key, 0, -1).del(&key).ignore();
                let (raw,): (Vec<Vec<u8>>,) = r.check(pipe.query_async(&mut r.con()).await)?;
                raw.into_iter()
                    .filter_map(|bytes| match serde_json::from_slice::<Value>(&bytes) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            tracing::warn!(connection_id, error = %e, len = bytes.len(), "web message is not JSON; skipped");
                            tracing::trace!(connection_id, raw = %String::from_utf8_lossy(&bytes), "skipped web message");
                            None
                        }
                    })
                    .collect()
            }
        };
        tracing::trace!(connection_id, count = messages.len(), "web messages fetched");
        Ok(messages)
    }

    /// Drops expired memory mailboxes (redis expires its own keys).
    pub(crate) fn purge_expired(&self) {
        if let Backend::Memory(m) = &self.ctx.backend {
            let now = m.clock.now_ms();
            guard(&m.mailboxes).boxes.retain(|_, (_, expires)| *expires > now);
        }
    }
}
