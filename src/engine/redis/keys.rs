//! The only place redis key and channel strings are built: faye-redis 0.2.0's layout under
//! a namespace (`faye` gives `faye/clients`; the empty namespace gives faye-redis's default).

/// Key and channel names for one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Self {
        Self { ns: namespace.to_string() }
    }

    /// The namespace, passed to Lua scripts that build per-client keys themselves.
    pub(crate) fn namespace(&self) -> &str {
        &self.ns
    }

    /// Sorted set of client ids scored by last ping (ms).
    pub(crate) fn clients(&self) -> String {
        format!("{}/clients", self.ns)
    }

    /// Set of channels one client subscribes to.
    pub(crate) fn client_channels(&self, client_id: &str) -> String {
        format!("{}/clients/{client_id}/channels", self.ns)
    }

    /// List of JSON messages waiting for one client.
    pub(crate) fn client_messages(&self, client_id: &str) -> String {
        format!("{}/clients/{client_id}/messages", self.ns)
    }

    /// Access control: the client's credentials (our key; faye-redis never reads it).
    pub(crate) fn client_credentials(&self, client_id: &str) -> String {
        format!("{}/clients/{client_id}/credentials", self.ns)
    }

    /// Set of clients subscribed to a channel (no slash between: `faye/channels/a/b`).
    pub(crate) fn channel(&self, channel: &str) -> String {
        format!("{}/channels{channel}", self.ns)
    }

    /// Pub/sub channel announcing a client id with new messages.
    pub(crate) fn messages_channel(&self) -> String {
        format!("{}/notifications/messages", self.ns)
    }

    /// Pub/sub channel announcing a destroyed client id.
    pub(crate) fn close_channel(&self) -> String {
        format!("{}/notifications/close", self.ns)
    }

    /// A named lock (`gc`).
    pub(crate) fn lock(&self, name: &str) -> String {
        format!("{}/locks/{name}", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn faye_redis_layout() {
        let k = Keys::new("faye");
        assert_eq!(k.clients(), "faye/clients");
        assert_eq!(k.client_channels("abc"), "faye/clients/abc/channels");
        assert_eq!(k.client_messages("abc"), "faye/clients/abc/messages");
        assert_eq!(k.channel("/a/b"), "faye/channels/a/b");
        assert_eq!(k.messages_channel(), "faye/notifications/messages");
        assert_eq!(k.close_channel(), "faye/notifications/close");
        assert_eq!(k.lock("gc"), "faye/locks/gc");
        assert_eq!(Keys::new("").clients(), "/clients");
    }
}
