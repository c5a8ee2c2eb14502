//! `/meta/disconnect`: destroys the client.

use super::Server;
use crate::engine::EngineError;
use crate::protocol::{BayeuxError, Message};

impl Server {
    pub(super) async fn disconnect(&self, message: &Message) -> Result<Message, EngineError> {
        let mut reply = message.reply();
        let client_id = message.client_id.as_deref().unwrap_or("");
        let exists = !client_id.is_empty() && self.inner.engine.client_exists(client_id).await?;
        if !exists {
            reply.error = Some(BayeuxError::client_unknown(client_id).to_string());
        }
        if client_id.is_empty() {
            reply.error = Some(BayeuxError::parameter_missing("clientId").to_string());
        }
        if reply.error.is_some() {
            reply.client_id = None;
            return Ok(reply);
        }
        self.inner.engine.destroy_client(client_id).await?;
        if let Some(access) = &self.inner.settings.access {
            access.forget(&*self.inner.engine, client_id).await?;
        }
        Ok(reply)
    }
}
