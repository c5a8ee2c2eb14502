//! The node's own in-process Bayeux client, shared by everything node-level that listens on a
//! channel (chat on `/actionHero/chat`, the rebroadcast relay, cluster commands): one session
//! per node however many listeners, built on first use so a node that listens on nothing runs
//! none. Server extensions see it as `RequestContext::local`.

use crate::client::{Client, ClientBuilder, ClientError, Subscription};
use std::sync::Arc;

/// A cheap handle on the node's in-process client.
#[derive(Clone)]
pub(crate) struct NodeClient {
    inner: Arc<Inner>,
}

struct Inner {
    builder: ClientBuilder,
    client: tokio::sync::OnceCell<Client>,
}

impl NodeClient {
    /// The client `builder` makes, once it is first needed.
    pub(crate) fn new(builder: ClientBuilder) -> Self {
        NodeClient { inner: Arc::new(Inner { builder, client: tokio::sync::OnceCell::new() }) }
    }

    /// Subscribes the node's client to `channel`, building the client first if needed (a
    /// failed build, e.g. an extension refusing the handshake, is retried by the next call).
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<Subscription, ClientError> {
        let client = self.inner.client.get_or_try_init(|| self.inner.builder.clone().build()).await?;
        client.subscribe(channel).await
    }
}
