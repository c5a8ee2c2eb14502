//! The only place cluster key strings are built (spec §C9). Every key starts with the
//! configured prefix (`actionHero:` by default); a node id inside a key has `:` replaced by
//! `-` as the original did, while lists, hash fields and values keep the raw id.

/// The prefix of every cluster key unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "actionHero:";

/// Stats field counting the entries in the shared cache (cluster hash only).
pub(crate) const CACHED_OBJECTS: &str = "cache:cachedObjects";

/// Stats field counting web messages dropped by the mailbox cap.
pub(crate) const WEB_MESSAGES_DROPPED: &str = "webMessages:dropped";

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// A node id as it appears inside a key: every `:` becomes `-`.
pub(crate) fn node_key_part(node_id: &str) -> String {
    node_id.replace(':', "-")
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }

    /// Hash of cache entries: field = the caller's key, value = the wrapper JSON.
    pub(crate) fn cache(&self) -> String {
        format!("{}cache", self.prefix)
    }

    /// String holding the id of the node that locked one cache key (with PX expiry).
    pub(crate) fn cache_lock(&self, key: &str) -> String {
        format!("{}cache:lock:{key}", self.prefix)
    }

    /// Hash of cluster-wide counters.
    pub(crate) fn stats(&self) -> String {
        format!("{}stats", self.prefix)
    }

    /// Hash of one node's counters and gauges.
    pub(crate) fn node_stats(&self, node_id: &str) -> String {
        format!("{}stats:{}", self.prefix, node_key_part(node_id))
    }

    /// List of JSON payloads waiting for one HTTP client (PEXPIRE'd).
    pub(crate) fn web_messages(&self, connection_id: &str) -> String {
        format!("{}webMessages:{connection_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_hero_layout() {
        let k = Keys::new(DEFAULT_PREFIX);
        assert_eq!(k.cache(), "actionHero:cache");
        assert_eq!(k.cache_lock("a:b"), "actionHero:cache:lock:a:b");
        assert_eq!(k.stats(), "actionHero:stats");
        assert_eq!(k.node_stats("10.0.0.5:8080"), "actionHero:stats:10.0.0.5-8080");
        assert_eq!(k.web_messages("abc"), "actionHero:webMessages:abc");
        assert_eq!(Keys::new("x:").cache(), "x:cache");
    }
}
