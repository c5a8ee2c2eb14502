//! Publishing to a non-meta channel: validate, queue for every matching subscriber (unless an
//! extension consumes it), ack.

use super::{Item, RequestContext, Server, ServerEvent};
use crate::engine::{EngineError, Envelope};
use crate::protocol::{BayeuxError, Message, channel};

impl Server {
    pub(super) async fn publish(&self, message: Message, ctx: &RequestContext) -> Result<Item, (Message, EngineError)> {
        let mut reply = message.reply();
        let name = message.channel_str();
        if !channel::is_valid_name(name) {
            reply.error = Some(BayeuxError::channel_invalid(name).to_string());
        }
        if message.data.is_none() {
            reply.error = Some(BayeuxError::parameter_missing("data").to_string());
        }
        let mut consumed = false;
        if reply.error.is_none() {
            for extension in &self.inner.extensions {
                match extension.consumes(&message, ctx) {
                    Ok(false) => continue,
                    Ok(true) => consumed = true,
                    Err(error) => reply.error = Some(error),
                }
                break;
            }
        }
        if consumed {
            tracing::trace!(channel = name, client_id = ?message.client_id, "publish consumed by an extension");
        } else if reply.error.is_none() {
            // `/actionHero…` payloads carry the cluster's token, and connection channels one
            // client's chat: never to `/**` subscribers.
            let protected = super::protected_channels::is_private(name);
            let envelope = if protected || (self.inner.settings.forbid_wildcard_service && channel::is_service(name)) {
                Envelope::new_without_root_wildcard(&message)
            } else {
                Envelope::new(&message)
            };
            self.inner.engine.publish(envelope).await.map_err(|e| (reply.clone(), e))?;
            self.inner.metrics.published();
            self.inner.sessions.emit(|| ServerEvent::Publish {
                client_id: message.client_id.clone(),
                channel: name.to_string(),
                data: message
                    .data
                    .as_ref()
                    .and_then(|d| serde_json::from_str(d.get()).ok())
                    .unwrap_or(serde_json::Value::Null),
            });
        }
        Ok(Item::Ready(reply))
    }
}
