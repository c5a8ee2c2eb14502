//! Publishing to a non-meta channel: validate, queue for every matching subscriber (unless an
//! extension consumes it), ack.

use super::access::{self, Operation};
use super::{Item, RequestContext, Server, ServerEvent};
use crate::engine::{EngineError, Envelope, PublishReceipt};
use crate::protocol::{BayeuxError, Message, channel};

impl Server {
    pub(super) async fn publish(
        &self,
        mut message: Message,
        ctx: &RequestContext,
    ) -> Result<Item, (Message, EngineError)> {
        let mut reply = message.reply();
        let name = message.channel_str();
        if !channel::is_valid_name(name) {
            reply.error = Some(BayeuxError::channel_invalid(name).to_string());
        }
        if message.data.is_none() {
            reply.error = Some(BayeuxError::parameter_missing("data").to_string());
        }
        if let Some(access) = &self.inner.settings.access {
            if reply.error.is_none() {
                let verdict = access
                    .check(&*self.inner.engine, Operation::Publish, name, &message, ctx)
                    .await
                    .map_err(|e| (reply.clone(), e))?;
                if let Err(denial) = verdict {
                    reply.error = Some(denial.error);
                    reply.advice = denial.advice;
                }
            }
            // Tokens never reach subscribers.
            access::strip_auth(&mut message);
        }
        let name = message.channel_str();
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
            if let Some(receipt) = self.inner.engine.start_publish(&envelope) {
                // On its way: the reply waits for it in `finish`, and the connection goes on.
                return Ok(Item::Publishing(reply, Box::new(Publishing { message, receipt })));
            }
            self.inner.engine.publish(envelope).await.map_err(|e| (reply.clone(), e))?;
            self.published(&message);
        }
        Ok(Item::Ready(reply))
    }

    /// Counts a stored publish and tells the listeners.
    fn published(&self, message: &Message) {
        self.inner.metrics.published_on(message.channel_str());
        self.inner.sessions.emit(|| ServerEvent::Publish {
            client_id: message.client_id.clone(),
            channel: message.channel_str().to_string(),
            data: message
                .data
                .as_ref()
                .and_then(|d| serde_json::from_str(d.get()).ok())
                .unwrap_or(serde_json::Value::Null),
        });
    }

    /// Waits for a started publish; its reply carries the outcome.
    pub(super) async fn settle_publish(&self, mut reply: Message, publishing: Publishing) -> Message {
        match publishing.receipt.await {
            Ok(()) => self.published(&publishing.message),
            Err(e) => {
                tracing::warn!(error = %e, "engine failure while handling a message");
                reply.error = Some(BayeuxError::server_error(vec![]).to_string());
            }
        }
        reply
    }
}

/// A publish the engine has started (see [`crate::engine::Engine::start_publish`]).
pub(super) struct Publishing {
    message: Message,
    receipt: PublishReceipt,
}
