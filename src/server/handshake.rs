//! `/meta/handshake`: agree on a connection type and hand out a client id.

use super::{Server, ServerEvent};
use crate::engine::EngineError;
use crate::protocol::{BAYEUX_VERSION, BayeuxError, CONNECTION_TYPES, Message};

impl Server {
    pub(super) async fn handshake(&self, message: &Message) -> Result<Message, EngineError> {
        let mut reply = message.reply();
        reply.version = Some(BAYEUX_VERSION.to_string());
        reply.supported_connection_types = Some(CONNECTION_TYPES.iter().map(|t| t.to_string()).collect());

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
        let client_id = self.inner.engine.create_client().await?;
        tracing::debug!(client_id = %client_id, "handshake");
        self.inner.metrics.handshake();
        self.inner.sessions.emit(|| ServerEvent::Handshake { client_id: client_id.clone() });
        reply.client_id = Some(client_id);
        Ok(reply)
    }
}
