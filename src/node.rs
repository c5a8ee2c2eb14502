//! Wiring: builds the engine, server and transport from a [`Config`] and owns shutdown.

use crate::client::{Client, ClientBuilder, InProcessServer};
use crate::cluster::{Cluster, ClusterError, ClusterSettings, TaskDefinition, TaskSettings};
use crate::config::{Config, ConfigError, RedisLayout};
use crate::engine::Engine;
use crate::engine::memory::MemoryEngine;
use crate::engine::native::{NativeEngine, NativeSettings};
use crate::engine::redis::{RedisEngine, RedisSettings};
use crate::protocol::BayeuxError;
use crate::server::{Extension, RequestContext, Server, ServerEvent, ServerSettings};
use crate::telemetry::Metrics;
use crate::transport::{self, TransportSettings};
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS certificate or key could not be used.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
    /// Redis could not be used.
    #[error(transparent)]
    Redis(#[from] crate::redis_conn::RedisConnError),
    /// The redis engine could not start (redis unreachable, or the namespace is used by the
    /// other layout).
    #[error(transparent)]
    Engine(#[from] crate::engine::ConnectError),
    /// The cluster layers could not be set up.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The token key (secret or public key file) could not be used.
    #[error(transparent)]
    TokenKey(#[from] crate::server::TokenKeyError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Collects what a node is built from before it starts.
pub struct NodeBuilder {
    config: Config,
    extensions: Vec<Arc<dyn Extension>>,
    tasks: Vec<TaskDefinition>,
    commands: Vec<CommandRegistration>,
}

/// Registers one builder-given command handler on the node's commands at start.
type CommandRegistration = Box<dyn FnOnce(&crate::commands::Commands) + Send>;

impl NodeBuilder {
    /// Adds a server extension (applied in the order added).
    pub fn extension(mut self, extension: impl Extension) -> Self {
        self.extensions.push(Arc::new(extension));
        self
    }

    /// Defines a task type on this node before its workers start (so a periodic one is
    /// seeded at join).
    pub fn task(mut self, definition: TaskDefinition) -> Self {
        self.tasks.push(definition);
        self
    }

    /// Makes the node answer cluster command `method` (on `/actionHero/cluster`) with
    /// `handler` from its start.
    pub fn command<F, Fut>(mut self, method: impl Into<String>, handler: F) -> Self
    where
        F: Fn(crate::commands::CommandCall) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::commands::CommandResult> + Send + 'static,
    {
        let method = method.into();
        self.commands.push(Box::new(move |commands| commands.register(method, handler)));
        self
    }

    /// Binds the listener and starts serving in background tasks.
    pub async fn start(self) -> Result<Node, NodeError> {
        let config = self.config;
        config.validate()?;
        #[cfg(feature = "tls")]
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::transport::tls::acceptor(cert, key)?),
            _ => None,
        };
        let addr = format!("{}:{}", config.host, config.port);
        let listener =
            TcpListener::bind(&addr).await.map_err(|source| NodeError::Bind { addr: addr.clone(), source })?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind { addr, source })?;

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::default());
        let engine: Arc<dyn Engine> = match (&config.redis_url, config.redis_layout) {
            (None, _) => Arc::new(MemoryEngine::with_queue_limit(config.timeout, config.max_queue_bytes)),
            (Some(url), RedisLayout::Faye) => Arc::new(
                RedisEngine::connect(RedisSettings {
                    url: url.clone(),
                    namespace: config.namespace.clone(),
                    timeout: config.timeout,
                    gc_interval: config.gc_interval,
                    metrics: metrics.clone(),
                    max_queue_bytes: config.max_queue_bytes,
                })
                .await?,
            ),
            (Some(url), RedisLayout::Native) => Arc::new(
                NativeEngine::connect(NativeSettings {
                    url: url.clone(),
                    namespace: config.namespace.clone(),
                    timeout: config.timeout,
                    gc_interval: config.gc_interval,
                    metrics: metrics.clone(),
                    max_queue_bytes: config.max_queue_bytes,
                    inbox_max_len: config.inbox_max_len,
                })
                .await?,
            ),
        };
        // Node id `host:port:pid:incarnation` unless configured (§C1.4); the cluster layers
        // turn its `:` into `-` inside keys.
        let node_id = match &config.node_id {
            Some(id) => id.clone(),
            None => format!(
                "{}:{}:{}:{}",
                config.host,
                local_addr.port(),
                std::process::id(),
                crate::cluster::incarnation_suffix()
            ),
        };
        if let Some(reason) = crate::cluster::invalid_node_id(&node_id) {
            return Err(ConfigError::NodeIdInvalid(reason).into());
        }
        let cluster_settings = ClusterSettings {
            prefix: config.cluster_prefix.clone(),
            web_message_ttl: config.web_message_ttl,
            tasks: TaskSettings {
                workers: config.task_workers,
                ping_interval: config.peer_ping_interval,
                dead_after: config.dead_after,
                shutdown_timeout: config.task_shutdown_timeout,
                ..TaskSettings::default()
            },
            ..ClusterSettings::default()
        };
        // On a Redis Cluster the layers run on their own plain or Sentinel redis
        // (`--cluster-redis`), their actionHero key names spanning hash slots.
        let cluster = match config.cluster_redis_url.as_ref().or(config.redis_url.as_ref()) {
            None => Cluster::memory_with(node_id, cluster_settings),
            Some(url) => Cluster::connect(url, node_id, cluster_settings, metrics.clone()).await?,
        };
        // Every node guards the /actionHero channels with the cluster's token (§C7.2).
        let protected: Arc<dyn Extension> =
            Arc::new(crate::server::ProtectedChannels::new(config.server_token.clone()));
        // Clients' chat verbs on their connection channels (§6.3), consumed by the node.
        let (connection_tap, connection_work) = crate::chat::connection_channels::tap();
        let connection_tap: Arc<dyn Extension> = Arc::new(connection_tap);
        let extensions: Vec<Arc<dyn Extension>> =
            [protected, connection_tap].into_iter().chain(self.extensions).collect();
        let access = crate::server::AccessControl::new(&config.access, metrics.clone())?.map(Arc::new);
        let server = Server::new(
            engine.clone(),
            ServerSettings {
                timeout: config.timeout,
                interval: config.interval,
                max_subscriptions: config.max_subscriptions_per_client,
                handshake_rate: config.handshake_rate,
                handshake_burst: config.handshake_burst,
                reconnect_jitter: config.reconnect_jitter,
                forbid_wildcard_service: config.forbid_wildcard_service,
                bind_client_ip: config.bind_client_ip,
                access,
            },
            extensions,
            shutdown.clone(),
            metrics,
        );
        // The engine outlives the transport at shutdown: sessions still move to other nodes
        // while this one drains.
        let engine_stop = CancellationToken::new();
        engine.start(engine_stop.clone());
        for definition in self.tasks {
            cluster.tasks().define(definition);
        }
        cluster.start(shutdown.clone());
        // One in-process client for the node's own listeners (chat, rebroadcast, commands).
        let node_client =
            crate::chat::node_client::NodeClient::new(Client::in_process(Arc::new(LocalServer(server.clone()))));
        let chat = crate::chat::Chat::new(
            server.clone(),
            cluster.clone(),
            node_client.clone(),
            config.server_token.clone(),
            shutdown.clone(),
        );
        let commands = crate::commands::Commands::new(
            server.clone(),
            cluster.clone(),
            chat.clone(),
            node_client.clone(),
            config.server_token.clone(),
            shutdown.clone(),
        );
        if !self.commands.is_empty() {
            for register in self.commands {
                register(&commands); // starts the listener in the background
            }
            // A node built with commands hears them from the moment it reports started.
            if let Err(e) = commands.ready().await {
                tracing::warn!(error = %e, "cluster commands not listening yet; retrying in the background");
            }
        }
        crate::chat::connection_channels::spawn(
            crate::chat::connection_channels::ConnectionChannels {
                chat: chat.clone(),
                server: server.clone(),
                cluster: cluster.clone(),
                client: node_client,
                server_token: config.server_token.clone(),
                welcome: config.welcome_message.clone(),
                sweep_interval: config.connection_sweep_interval,
            },
            connection_work,
            shutdown.clone(),
        );
        let layout = match (&config.redis_url, config.redis_layout) {
            (None, _) => "memory",
            (Some(_), RedisLayout::Faye) => "faye",
            (Some(_), RedisLayout::Native) => "native",
        };
        // Nodes with a dashboard share their samples, so each one's page shows all of them.
        let dashboard = config.dashboard_password.clone().map(|password| {
            let data =
                crate::dashboard::DashboardData::start(server.clone(), cluster.clone(), layout, shutdown.clone());
            Arc::new(transport::Dashboard::new(password, data))
        });
        transport::serve(
            listener,
            server.clone(),
            TransportSettings {
                mount: config.mount.clone(),
                max_body_bytes: config.max_body_bytes,
                max_batch_messages: config.max_batch_messages,
                cors_origins: config.cors_origins.clone(),
                ping: config.ping,
                client_script: config.client_script.clone(),
                max_connections: config.max_connections,
                redis_configured: config.redis_url.is_some(),
                api_key: config.access.api_key.clone(),
                dashboard,
                status: Some(Arc::new(ClusterStatus(cluster.clone()))),
                web_chat: Some(Arc::new(WebChatAction(crate::chat::web_clients::WebClients::new(
                    chat.clone(),
                    cluster.clone(),
                    config.web_message_ttl,
                    shutdown.clone(),
                )))),
                #[cfg(feature = "tls")]
                tls,
            },
            shutdown.clone(),
            tracker.clone(),
        );
        let engine_name = match (&config.redis_url, config.redis_layout) {
            (None, _) => "memory",
            (Some(_), RedisLayout::Faye) => "redis (faye layout)",
            (Some(_), RedisLayout::Native) => "redis (native layout)",
        };
        tracing::info!(%local_addr, mount = %config.mount, engine = engine_name, "node started");
        Ok(Node { config, local_addr, server, cluster, chat, commands, shutdown, engine_stop, tracker })
    }
}

/// A running node: a Bayeux endpoint on one address.
pub struct Node {
    config: Config,
    local_addr: SocketAddr,
    server: Server,
    cluster: Cluster,
    shutdown: CancellationToken,
    /// Stops the engine's background work, after the transport and the drain.
    engine_stop: CancellationToken,
    chat: crate::chat::Chat,
    commands: crate::commands::Commands,
    tracker: TaskTracker,
}

impl Node {
    /// Starts a node with no extensions.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        Self::builder(config).start().await
    }

    /// A builder, to add extensions before starting.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder { config, extensions: Vec::new(), tasks: Vec::new(), commands: Vec::new() }
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint URL clients use, e.g. `http://127.0.0.1:8000/faye`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.config.tls_cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.local_addr, self.config.mount)
    }

    /// The node's server events (handshake, subscribe, unsubscribe, publish, disconnect).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<ServerEvent> {
        self.server.events()
    }

    /// Publishes from Rust code on this node to every matching subscriber.
    pub async fn publish(&self, channel: &str, data: serde_json::Value) -> Result<(), BayeuxError> {
        self.server.publish_local(channel, &data).await
    }

    /// A client inside this node, with the same API as a remote one and no socket. It may
    /// subscribe to `/service/**` (server-side listeners).
    pub fn client(&self) -> ClientBuilder {
        Client::in_process(Arc::new(LocalServer(self.server.clone())))
    }

    /// The Bayeux server of this node.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The node's cluster layers (cache, stats, web messages): on redis when the node has a
    /// redis URL, in memory otherwise.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The node's cluster commands on `/actionHero/cluster`: call other nodes, answer them.
    pub fn commands(&self) -> &crate::commands::Commands {
        &self.commands
    }

    /// The node's chat: registered connections, rooms, broadcasts on `/actionHero/chat`.
    pub fn chat(&self) -> &crate::chat::Chat {
        &self.chat
    }

    /// A token cancelled when the node begins to shut down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, releases held connects, closes sockets, and waits (bounded by the
    /// configured grace) for connections to finish.
    pub async fn shutdown(self) {
        tracing::info!("node shutting down");
        // Leave the cluster first (running tasks finish or are handed back), then stop
        // serving.
        self.cluster.stop().await;
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait()).await.is_err() {
            tracing::warn!("shutdown grace elapsed with connections still open");
        }
        // Released clients reconnect elsewhere; hand their sessions over until the grace ends.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.server.engine().drain(left).await;
        self.engine_stop.cancel();
    }
}

/// The web clients' chat action behind `/api/chat`.
struct WebChatAction(crate::chat::web_clients::WebClients);

#[async_trait::async_trait]
impl transport::WebChatService for WebChatAction {
    async fn chat(&self, request: transport::WebChatRequest) -> transport::WebChatResponse {
        let answer = self
            .0
            .handle(request.fingerprint.as_deref(), request.room.as_deref(), request.params, &request.remote_ip)
            .await;
        transport::WebChatResponse {
            status: answer.status,
            body: answer.body,
            new_fingerprint: answer.new_fingerprint,
            room: answer.room,
        }
    }
}

/// The node's `GET /status` document: its id, the live peers, the task queues and the
/// worker statuses.
struct ClusterStatus(Cluster);

#[async_trait::async_trait]
impl transport::StatusSource for ClusterStatus {
    async fn status(&self) -> Result<serde_json::Value, String> {
        let cluster = &self.0;
        let peers = cluster.peers().await.map_err(|e| e.to_string())?;
        let tasks = cluster.tasks().inspect().await.map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "nodeId": &*cluster.node_id(),
            "backend": if cluster.is_redis() { "redis" } else { "memory" },
            "member": cluster.is_member(),
            "peers": peers,
            "tasks": {
                "defined": cluster.tasks().defined_names(),
                "queues": {
                    "global": tasks.global,
                    "delayed": tasks.delayed,
                    "processing": tasks.processing,
                    "failed": tasks.failed,
                    "local": tasks.local,
                },
                "workers": tasks.workers,
            },
        }))
    }
}

/// Hands an in-process client's batches straight to the server, marked local.
struct LocalServer(Server);

#[async_trait::async_trait]
impl InProcessServer for LocalServer {
    async fn process(&self, messages: Vec<crate::protocol::Message>) -> bytes::Bytes {
        let ctx = RequestContext { local: true, ..RequestContext::default() };
        self.0.process_and_finish(messages, &ctx).await
    }
}
