//! Cluster commands over `/actionHero/cluster` (spec §C7.1, §C7.3), in the request/response
//! shape of actionHero v9's RPC (§6.3):
//!
//! - request `{"messageType":"do","serverId","serverToken","requestId","method","connectionId","args":[...]}`,
//!   run by every node, or, when `connectionId` is set, only by the node holding that chat
//!   connection;
//! - each runner answers `{"messageType":"doResponse","serverId","serverToken","requestId","response":[error, result]}`
//!   (`error` null on success, as a node.js callback's arguments);
//! - [`Commands::call`] answers the first response or `RPC Timeout` after the timeout (5000 ms
//!   by default); [`Commands::call_all`] gathers the responses of every live peer.
//! - A node that has no handler for the method stays silent (rolling deploys: the nodes that
//!   know it answer), so a method nobody knows ends in `RPC Timeout`.
//!
//! Commands are best-effort and idempotent (§C7.3): pub/sub loses what a node misses while it
//! is not subscribed (item 28), so nothing that must not be lost goes through here. Payloads
//! carry the cluster's token and receivers drop others, as for chat.
//!
//! A node listens on the channel (through one in-process client, which server extensions see
//! as `RequestContext::local`) once it has a command of its own, or made a call, or was asked
//! to be [`ready`](Commands::ready): a node that never uses commands runs no extra session.
//! A node built with commands ([`NodeBuilder::command`](crate::NodeBuilder::command)) listens
//! before it reports started. Every listening node answers `ping` with its node id;
//! applications add methods with [`Commands::register`].

use crate::chat::node_client::NodeClient;
use crate::chat::{Chat, carries_token};
use crate::client::{ClientError, Subscription};
use crate::cluster::{Cluster, ClusterError};
use crate::protocol::BayeuxError;
use crate::server::Server;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The channel the nodes exchange commands on.
pub const COMMAND_CHANNEL: &str = "/actionHero/cluster";

/// How long a call waits for answers unless told otherwise (v9's RPC timeout).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(5000);

/// The method every node answers with its node id.
pub const PING: &str = "ping";

/// Pause before retrying a failed start of the command listener, doubling up to the last.
const LISTEN_RETRY: [Duration; 4] =
    [Duration::from_millis(500), Duration::from_secs(2), Duration::from_secs(10), Duration::from_secs(30)];

/// A command as its handler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCall {
    /// The method name.
    pub method: String,
    /// Its arguments.
    pub args: Vec<Value>,
    /// The chat connection it is about, if any (only that connection's node runs it).
    pub connection_id: Option<String>,
    /// The calling node's id.
    pub from: String,
}

/// What a command handler returns: a result, or an error text sent back to the caller.
pub type CommandResult = Result<Value, String>;

type Handler = Arc<dyn Fn(CommandCall) -> BoxFuture<'static, CommandResult> + Send + Sync>;

/// One node's answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResponse {
    /// The answering node.
    pub server_id: String,
    /// The callback arguments: `[error, result]`.
    pub response: Vec<Value>,
}

impl CommandResponse {
    /// The result, or the error text the handler returned.
    pub fn result(&self) -> Result<&Value, String> {
        match self.response.first() {
            Some(Value::Null) | None => Ok(self.response.get(1).unwrap_or(&Value::Null)),
            Some(Value::String(e)) => Err(e.clone()),
            Some(other) => Err(other.to_string()),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// No node answered within the timeout.
    #[error("RPC Timeout")]
    Timeout,
    /// The server refused the command publish.
    #[error("command publish refused: {0}")]
    Publish(#[from] BayeuxError),
    /// This node could not subscribe to `/actionHero/cluster` (so it cannot hear answers).
    #[error("command channel unavailable: {0}")]
    Subscribe(#[from] ClientError),
    /// The live peers could not be read.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

struct Inner {
    server: Server,
    cluster: Cluster,
    chat: Chat,
    token: String,
    handlers: RwLock<HashMap<String, Handler>>,
    /// Calls waiting for answers, by request id.
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<CommandResponse>>>,
    client: NodeClient,
    /// Set once this node listens on the command channel.
    listening: tokio::sync::OnceCell<()>,
    /// Set once the background start (with its retries) was launched.
    starting: std::sync::atomic::AtomicBool,
    shutdown: CancellationToken,
}

/// This node's side of the cluster commands: runs the commands it receives, calls others.
/// Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let methods: Vec<String> = self.handlers().keys().cloned().collect();
        f.debug_struct("Commands").field("methods", &methods).finish_non_exhaustive()
    }
}

/// Takes a call out of the pending map when it ends, however it ends.
struct PendingGuard<'a> {
    commands: &'a Commands,
    request_id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.commands.pending().remove(&self.request_id);
    }
}

impl Commands {
    /// The commands of a node: publishes through `server`, listens on `/actionHero/cluster`
    /// with the node's in-process `client`.
    pub(crate) fn new(
        server: Server,
        cluster: Cluster,
        chat: Chat,
        client: NodeClient,
        server_token: String,
        shutdown: CancellationToken,
    ) -> Commands {
        Commands {
            inner: Arc::new(Inner {
                server,
                cluster,
                chat,
                token: server_token,
                handlers: RwLock::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                client,
                listening: tokio::sync::OnceCell::new(),
                starting: std::sync::atomic::AtomicBool::new(false),
                shutdown,
            }),
        }
    }

    fn handlers(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Handler>> {
        self.inner.handlers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<CommandResponse>>> {
        self.inner.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts listening in the background, once: a failed start is retried (a server
    /// extension refusing in-process clients only costs the commands, not the node).
    pub(crate) fn start(&self) {
        if self.inner.starting.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let commands = self.clone();
        tokio::spawn(async move {
            for attempt in 0.. {
                if commands.ensure_listening().await.is_ok() {
                    return;
                }
                let pause = LISTEN_RETRY[attempt.min(LISTEN_RETRY.len() - 1)];
                tokio::select! {
                    _ = commands.inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        });
    }

    async fn ensure_listening(&self) -> Result<(), CommandError> {
        self.inner
            .listening
            .get_or_try_init(|| async {
                let subscription = self.inner.client.subscribe(COMMAND_CHANNEL).await?;
                tokio::spawn(self.clone().receive_all(subscription));
                tracing::debug!(channel = COMMAND_CHANNEL, "cluster commands listening");
                Ok::<_, CommandError>(())
            })
            .await
            .map(|_| ())
            .inspect_err(|e| tracing::warn!(error = %e, "cluster commands: cannot listen on /actionHero/cluster"))
    }

    /// Waits until this node listens on `/actionHero/cluster` (it starts at node start; a
    /// command published before that is not heard here).
    pub async fn ready(&self) -> Result<(), CommandError> {
        self.ensure_listening().await
    }

    /// Makes this node answer `method` with `handler` (replacing an earlier one).
    pub fn register<F, Fut>(&self, method: impl Into<String>, handler: F)
    where
        F: Fn(CommandCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CommandResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |call| Box::pin(handler(call)));
        self.inner.handlers.write().unwrap_or_else(PoisonError::into_inner).insert(method.into(), handler);
        if self.inner.listening.get().is_none() {
            self.start();
        }
    }

    /// Runs `method` on every node (or only on the node holding chat connection
    /// `connection_id`) and answers the first response, or [`CommandError::Timeout`].
    pub async fn call(
        &self,
        method: &str,
        args: Vec<Value>,
        connection_id: Option<&str>,
        timeout: Duration,
    ) -> Result<CommandResponse, CommandError> {
        let (request_id, mut answers) = self.send(method, args, connection_id).await?;
        let _pending = PendingGuard { commands: self, request_id };
        match tokio::time::timeout(timeout, answers.recv()).await {
            Ok(Some(answer)) => Ok(answer),
            _ => Err(CommandError::Timeout),
        }
    }

    /// Runs `method` on every node and gathers the answers of the live peers (on the memory
    /// backend: this node), until each answered or `timeout` passed; those received by then,
    /// sorted by node id. [`CommandError::Timeout`] when none answered.
    pub async fn call_all(
        &self,
        method: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Vec<CommandResponse>, CommandError> {
        let mut expected: HashSet<String> = if self.inner.cluster.is_redis() {
            self.inner.cluster.peers().await?.into_iter().collect()
        } else {
            HashSet::from([self.inner.cluster.node_id().to_string()])
        };
        let (request_id, mut answers) = self.send(method, args, None).await?;
        let _pending = PendingGuard { commands: self, request_id };
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !expected.is_empty() {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(answer)) => {
                    expected.remove(&answer.server_id);
                    received.push(answer);
                }
                _ => break,
            }
        }
        if received.is_empty() {
            return Err(CommandError::Timeout);
        }
        received.sort_by(|a, b| a.server_id.cmp(&b.server_id));
        Ok(received)
    }

    /// Publishes a request; the id and the channel its answers arrive on.
    async fn send(
        &self,
        method: &str,
        args: Vec<Value>,
        connection_id: Option<&str>,
    ) -> Result<(String, mpsc::UnboundedReceiver<CommandResponse>), CommandError> {
        self.ensure_listening().await?;
        let request_id = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending().insert(request_id.clone(), tx);
        let request = json!({
            "messageType": "do",
            "serverId": self.inner.cluster.node_id().to_string(),
            "serverToken": self.inner.token,
            "requestId": request_id,
            "method": method,
            "connectionId": connection_id,
            "args": args,
        });
        if let Err(e) = self.inner.server.publish_local(COMMAND_CHANNEL, &request).await {
            self.pending().remove(&request_id);
            return Err(e.into());
        }
        Ok((request_id, rx))
    }

    async fn receive_all(self, mut subscription: Subscription) {
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                next = subscription.next() => match next {
                    Some(delivery) => self.receive(delivery.json()),
                    None => {
                        tracing::warn!("cluster commands: the /actionHero/cluster subscription ended");
                        return;
                    }
                },
            }
        }
    }

    /// One message on the command channel: a request to run, or an answer to hand over.
    fn receive(&self, message: Value) {
        if !carries_token(&message, &self.inner.token) {
            return;
        }
        let server_id = message.get("serverId").and_then(Value::as_str).unwrap_or("unknown").to_string();
        let Some(request_id) = message.get("requestId").and_then(Value::as_str) else {
            tracing::warn!(server_id, "cluster commands: message without a requestId dropped");
            return;
        };
        match message.get("messageType").and_then(Value::as_str) {
            Some("doResponse") => {
                let response = match message.get("response") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => vec![Value::from("malformed response")],
                };
                if let Some(waiting) = self.pending().get(request_id) {
                    let _ = waiting.send(CommandResponse { server_id, response });
                }
            }
            Some("do") => {
                let call = CommandCall {
                    method: message.get("method").and_then(Value::as_str).unwrap_or_default().to_string(),
                    args: match message.get("args") {
                        Some(Value::Array(args)) => args.clone(),
                        _ => Vec::new(),
                    },
                    connection_id: message.get("connectionId").and_then(Value::as_str).map(str::to_string),
                    from: server_id,
                };
                if call.connection_id.as_deref().is_some_and(|id| self.inner.chat.connection(id).is_none()) {
                    return; // another node's connection
                }
                tokio::spawn(self.clone().run(request_id.to_string(), call));
            }
            other => tracing::warn!(server_id, ?other, "cluster commands: unknown messageType dropped"),
        }
    }

    /// Runs one request and publishes the answer.
    async fn run(self, request_id: String, call: CommandCall) {
        let node_id = self.inner.cluster.node_id().to_string();
        let handler = self.handlers().get(&call.method).cloned();
        let method = call.method.clone();
        let outcome = match handler {
            Some(handler) => handler(call).await,
            None if method == PING => Ok(Value::from(node_id.clone())),
            None => {
                // Silent: a node that does not know the method (say, during a rolling deploy)
                // leaves the answer to those that do; nobody knowing it ends in RPC Timeout.
                tracing::debug!(method, from = %call.from, "cluster commands: unknown method not answered");
                return;
            }
        };
        let response = match outcome {
            Ok(result) => json!([null, result]),
            Err(error) => json!([error, null]),
        };
        let answer = json!({
            "messageType": "doResponse",
            "serverId": node_id,
            "serverToken": self.inner.token,
            "requestId": request_id,
            "response": response,
        });
        if let Err(e) = self.inner.server.publish_local(COMMAND_CHANNEL, &answer).await {
            tracing::warn!(method, error = %e, "cluster commands: answer refused");
        }
    }
}
