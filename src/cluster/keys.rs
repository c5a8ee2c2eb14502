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

    /// The prefix itself: scripts that compute per-node keys (§C1.7) get it as an argument.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// List of member node ids (raw).
    pub(crate) fn peers(&self) -> String {
        format!("{}peers", self.prefix)
    }

    /// Hash node id → last ping (redis time, ms): the membership test.
    pub(crate) fn peer_pings(&self) -> String {
        format!("{}peerPings", self.prefix)
    }

    /// List of the connection ids in one room (the seed's `roomMembers-{room}` spelling).
    pub(crate) fn room_members(&self, room: &str) -> String {
        format!("{}roomMembers-{room}", self.prefix)
    }

    /// Hash connection id → room, of the memberships one node recorded.
    pub(crate) fn room_index(&self, node_id: &str) -> String {
        format!("{}roomIndex:{}", self.prefix, node_key_part(node_id))
    }

    /// `tasks:{suffix}` keys: `global`, `delayed`, `data`, `processing`, `failed`, `workerStatus`.
    pub(crate) fn tasks(&self, suffix: &str) -> String {
        format!("{}tasks:{suffix}", self.prefix)
    }

    /// Ready queue of tasks for one node only.
    pub(crate) fn node_tasks(&self, node_id: &str) -> String {
        format!("{}tasks:{}", self.prefix, node_key_part(node_id))
    }
}

/// Task key suffixes a node id (after `:`→`-`) must not equal (§C1.4).
pub(crate) const RESERVED_TASK_SUFFIXES: [&str; 6] =
    ["global", "delayed", "data", "processing", "failed", "workerStatus"];

/// Why a node id cannot be used, or `None` when it can (§C1.4).
pub(crate) fn invalid_node_id(node_id: &str) -> Option<String> {
    let part = node_key_part(node_id);
    if node_id.is_empty() {
        return Some("node id is empty".to_string());
    }
    if RESERVED_TASK_SUFFIXES.contains(&part.as_str()) || part.starts_with("idempotency:") {
        return Some(format!("node id {node_id:?} collides with a task key name"));
    }
    if node_id.contains('#') || node_id.chars().any(char::is_whitespace) {
        return Some(format!("node id {node_id:?} may not contain '#' or whitespace"));
    }
    None
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
        assert_eq!(k.peers(), "actionHero:peers");
        assert_eq!(k.peer_pings(), "actionHero:peerPings");
        assert_eq!(k.room_members("lobby"), "actionHero:roomMembers-lobby");
        assert_eq!(k.room_index("h:1"), "actionHero:roomIndex:h-1");
        assert_eq!(k.tasks("global"), "actionHero:tasks:global");
        assert_eq!(k.node_tasks("10.0.0.5:8080:7"), "actionHero:tasks:10.0.0.5-8080-7");
    }

    #[test]
    fn node_ids_that_collide_with_task_keys_are_refused() {
        assert!(invalid_node_id("global").is_some());
        assert!(invalid_node_id("workerStatus").is_some());
        assert!(invalid_node_id("").is_some());
        assert!(invalid_node_id("a#1").is_some());
        assert!(invalid_node_id("host:8080:12:ab3f").is_none());
    }
}
