//! `/meta/subscribe` and `/meta/unsubscribe`: one channel or an array, stopping at the
//! first one refused.

use super::access::Operation;
use super::{RequestContext, Server};
use crate::engine::{EngineError, SubscribeOutcome};
use crate::protocol::{BayeuxError, Message, Subscription, channel};

impl Server {
    pub(super) async fn subscribe(
        &self,
        message: &Message,
        ctx: &RequestContext,
        subscribing: bool,
    ) -> Result<Message, EngineError> {
        let mut reply = message.reply();
        let client_id = message.client_id.as_deref().unwrap_or("");
        let exists = !client_id.is_empty() && self.inner.engine.client_exists(client_id).await?;
        let missing = match &message.subscription {
            None => true,
            Some(Subscription::One(c)) => c.is_empty(),
            Some(Subscription::Many(_)) => false,
        };
        if !exists {
            reply.error = Some(BayeuxError::client_unknown(client_id).to_string());
        }
        if client_id.is_empty() {
            reply.error = Some(BayeuxError::parameter_missing("clientId").to_string());
        }
        if missing {
            reply.error = Some(BayeuxError::parameter_missing("subscription").to_string());
        }
        if message.error.is_some() && reply.error.is_none() {
            reply.error = message.error.clone();
        }
        reply.subscription = Some(message.subscription.clone().unwrap_or(Subscription::Many(Vec::new())));

        if let Some(subscription) = &message.subscription {
            for name in subscription.channels() {
                if reply.error.is_some() {
                    break;
                }
                if !channel::is_valid(name) {
                    reply.error = Some(BayeuxError::channel_invalid(name).to_string());
                } else if !ctx.local && !channel::is_subscribable(name) {
                    reply.error = Some(BayeuxError::channel_forbidden(name).to_string());
                }
                if reply.error.is_some() {
                    break;
                }
                if subscribing && let Some(access) = &self.inner.settings.access {
                    let verdict = access.check(&*self.inner.engine, Operation::Subscribe, name, message, ctx).await?;
                    if let Err(denial) = verdict {
                        reply.error = Some(denial.error);
                        reply.advice = denial.advice;
                        break;
                    }
                }
                if subscribing {
                    let max = self.inner.settings.max_subscriptions;
                    if self.inner.engine.subscribe_limited(client_id, name, max).await?
                        == SubscribeOutcome::LimitReached
                    {
                        reply.error = Some(BayeuxError::subscription_limit(name, max).to_string());
                        break;
                    }
                } else {
                    self.inner.engine.unsubscribe(client_id, name).await?;
                }
            }
        }
        Ok(reply)
    }
}
