//! The only place the native layout's redis key strings are built. Everything lives under
//! `{namespace}/native/`, so it never meets faye-redis's keys in the same namespace.
//!
//! On a Redis Cluster the layout is split into partitions, each under its own hash tag
//! (`{namespace}/native/{p7}/…`): every key a script touches (a client's records, the
//! interest hashes, the inboxes, the node set of that partition) is in the partition's slot.
//! On one redis there is one partition, without a tag (the client keys carry the client id
//! as a tag, harmless there).

/// Key names for one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `{namespace}/native/`.
    root: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Self {
        Self { root: format!("{namespace}/native/") }
    }

    /// The keys of one partition of a Redis Cluster layout: all under the hash tag `{tag}`.
    pub(crate) fn partition(namespace: &str, tag: &str) -> Self {
        Self { root: format!("{namespace}/native/{{{tag}}}/") }
    }

    /// Redis Cluster: the partition tags the namespace's nodes agreed on (comma-separated).
    pub(crate) fn partitions(&self) -> String {
        format!("{}partitions", self.root)
    }

    /// Sorted set of client ids scored by last ping (ms).
    pub(crate) fn clients(&self) -> String {
        format!("{}clients", self.root)
    }

    /// Hash of one client: `owner` (node id), `epoch` (bumped by every move).
    pub(crate) fn client(&self, client_id: &str) -> String {
        format!("{}client/{{{client_id}}}", self.root)
    }

    /// Set of the channels and patterns one client subscribes to.
    pub(crate) fn client_subscriptions(&self, client_id: &str) -> String {
        format!("{}client/{{{client_id}}}/subscriptions", self.root)
    }

    /// Access control: the client's credentials (a string, in the client's slot).
    pub(crate) fn client_credentials(&self, client_id: &str) -> String {
        format!("{}client/{{{client_id}}}/credentials", self.root)
    }

    /// Prefix of the interest hashes: `{prefix}{pattern}` maps node id → how many of that
    /// node's clients subscribe to the pattern.
    pub(crate) fn interest_prefix(&self) -> String {
        format!("{}interest", self.root)
    }

    /// The interest hash of one channel or pattern.
    pub(crate) fn interest(&self, pattern: &str) -> String {
        format!("{}interest{pattern}", self.root)
    }

    /// Prefix of the node inboxes: `{prefix}{node id}` is a stream.
    pub(crate) fn inbox_prefix(&self) -> String {
        format!("{}inbox/", self.root)
    }

    /// One node's inbox: a stream of messages and session changes, read in order by its node.
    pub(crate) fn inbox(&self, node_id: &str) -> String {
        format!("{}inbox/{node_id}", self.root)
    }

    /// Sorted set of node ids scored by their last heartbeat (ms).
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.root)
    }

    /// The garbage collection lock.
    pub(crate) fn gc_lock(&self) -> String {
        format!("{}locks/gc", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn native_layout() {
        let k = Keys::new("faye");
        assert_eq!(k.clients(), "faye/native/clients");
        assert_eq!(k.client("abc"), "faye/native/client/{abc}");
        assert_eq!(k.client_subscriptions("abc"), "faye/native/client/{abc}/subscriptions");
        assert_eq!(k.interest("/a/*"), "faye/native/interest/a/*");
        assert_eq!(k.interest("/a/*"), format!("{}/a/*", k.interest_prefix()));
        assert_eq!(k.inbox("n1"), "faye/native/inbox/n1");
        assert_eq!(k.inbox("n1"), format!("{}n1", k.inbox_prefix()));
        assert_eq!(k.nodes(), "faye/native/nodes");
        assert_eq!(k.gc_lock(), "faye/native/locks/gc");
        assert_eq!(k.partitions(), "faye/native/partitions");
    }

    #[test]
    fn partition_keys_share_the_partition_tag() {
        let k = Keys::partition("faye", "p3");
        assert_eq!(k.client("abc"), "faye/native/{p3}/client/{abc}");
        assert_eq!(k.interest("/a/{b}"), "faye/native/{p3}/interest/a/{b}");
        assert_eq!(k.inbox("n1"), "faye/native/{p3}/inbox/n1");
        assert_eq!(k.nodes(), "faye/native/{p3}/nodes");
        assert_eq!(k.clients(), "faye/native/{p3}/clients");
    }
}
