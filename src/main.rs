//! The `actioncluster` binary: config file, env and flags -> Config -> tracing -> Node until
//! SIGINT/SIGTERM.

mod config_file;

use actioncluster::config::{AccessConfig, Secret, TokenKey};
use actioncluster::{Config, Node};
use clap::{CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A Faye-compatible Bayeux broker.
#[derive(Parser, Debug)]
#[command(name = "actioncluster", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ACTIONCLUSTER_HOST", default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (0 picks a free port).
    #[arg(long, env = "ACTIONCLUSTER_PORT", default_value_t = 8000)]
    port: u16,
    /// Path of the Bayeux endpoint.
    #[arg(long, env = "ACTIONCLUSTER_MOUNT", default_value = "/faye")]
    mount: String,
    /// Seconds a /meta/connect is held; clients expire after twice this.
    #[arg(long, env = "ACTIONCLUSTER_TIMEOUT", default_value_t = 45.0, value_parser = positive_secs)]
    timeout: f64,
    /// Websocket keepalive ping interval in seconds (none by default).
    #[arg(long, env = "ACTIONCLUSTER_PING", value_parser = positive_secs)]
    ping: Option<f64>,
    /// Largest request body or websocket message, in bytes.
    #[arg(long, env = "ACTIONCLUSTER_MAX_BODY", default_value_t = 1024 * 1024)]
    max_body: usize,
    /// Most connections served at once; further ones wait in the listen backlog.
    #[arg(long, env = "ACTIONCLUSTER_MAX_CONNECTIONS", default_value_t = 250_000)]
    max_connections: usize,
    /// Most messages in one request (HTTP 400 beyond) or websocket message (close 1008 beyond).
    #[arg(long, env = "ACTIONCLUSTER_MAX_BATCH", default_value_t = 1000)]
    max_batch: usize,
    /// Most subscriptions per client; the subscribe past it gets a 403 error.
    #[arg(long, env = "ACTIONCLUSTER_MAX_SUBSCRIPTIONS", default_value_t = 1000)]
    max_subscriptions: usize,
    /// Handshakes per second allowed from one IP address (0: no limit).
    #[arg(long, env = "ACTIONCLUSTER_HANDSHAKE_RATE", default_value_t = 50.0)]
    handshake_rate: f64,
    /// Handshakes one IP address may make in a burst.
    #[arg(long, env = "ACTIONCLUSTER_HANDSHAKE_BURST", default_value_t = 500)]
    handshake_burst: u32,
    /// Bytes queued for one client before it is disconnected as a slow consumer (0: no bound).
    #[arg(long, env = "ACTIONCLUSTER_MAX_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_queue_bytes: usize,
    /// Seconds: advise clients told to re-handshake to wait a random pause up to this (0: Faye's advice).
    #[arg(long, env = "ACTIONCLUSTER_RECONNECT_JITTER", default_value_t = 0.0, value_parser = non_negative_secs)]
    reconnect_jitter: f64,
    /// Keep /service/** publishes from subscribers of /** (Faye delivers them).
    #[arg(long, env = "ACTIONCLUSTER_FORBID_WILDCARD_SERVICE")]
    forbid_wildcard_service: bool,
    /// A client id only works from the IP address that handshook it.
    #[arg(long, env = "ACTIONCLUSTER_BIND_CLIENT_IP")]
    bind_client_ip: bool,
    /// Comma-separated origins allowed CORS and websocket access (default: any origin, as Faye).
    #[arg(long, env = "ACTIONCLUSTER_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Option<Vec<String>>,
    /// Browser client script served at <mount>.js and <mount>/client.js.
    #[arg(long, env = "ACTIONCLUSTER_CLIENT_SCRIPT")]
    client_script: Option<PathBuf>,
    /// Redis URL (redis://host:port/db, rediss://..., redis+unix:///path,
    /// redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB], or, native layout only,
    /// redis+cluster://HOST:PORT[,HOST:PORT...]); without it the
    /// node uses the in-process memory engine.
    #[arg(long, env = "ACTIONCLUSTER_REDIS")]
    redis: Option<String>,
    /// Redis for the cluster layers (cache, tasks, peers, stats, rooms, web messages) when
    /// --redis is a Redis Cluster (required then): a plain or Sentinel redis URL.
    #[arg(long, env = "ACTIONCLUSTER_CLUSTER_REDIS")]
    cluster_redis: Option<String>,
    /// Redis key namespace shared with the other nodes (faye-redis layout).
    #[arg(long, env = "ACTIONCLUSTER_NAMESPACE", default_value = "faye")]
    namespace: String,
    /// Redis key layout: `faye` (faye-redis's, shared with node.js Faye nodes) or `native`
    /// (node-side fan-out, our nodes only; scales with nodes).
    #[arg(long, env = "ACTIONCLUSTER_REDIS_LAYOUT", default_value = "faye")]
    redis_layout: actioncluster::RedisLayout,
    /// Native layout: most entries a node's inbox keeps while the node does not read them.
    #[arg(long, env = "ACTIONCLUSTER_INBOX_MAX_LEN", default_value_t = 100_000)]
    inbox_max_len: usize,
    /// Seconds between garbage collections of expired clients in redis (faye-redis: 60).
    #[arg(long, env = "ACTIONCLUSTER_GC_INTERVAL", default_value_t = 60.0, value_parser = positive_secs)]
    gc_interval: f64,
    /// PEM certificate chain: serve HTTPS/WSS (build with `--features tls`).
    #[arg(long, env = "ACTIONCLUSTER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "ACTIONCLUSTER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Shared secret of the cluster's nodes on /actionHero channels: the same on every node;
    /// set it in production (the default is public).
    #[arg(long, env = "ACTIONCLUSTER_SERVER_TOKEN", hide_env_values = true,
          default_value = actioncluster::config::DEFAULT_SERVER_TOKEN)]
    server_token: String,
    /// Greeting a client receives when it subscribes to its own connection channel.
    #[arg(long, env = "ACTIONCLUSTER_WELCOME_MESSAGE",
          default_value = actioncluster::config::DEFAULT_WELCOME_MESSAGE)]
    welcome_message: String,
    /// Cluster node id (default `{host}:{port}:{pid}:{random}`, new per start).
    #[arg(long, env = "ACTIONCLUSTER_NODE_ID")]
    node_id: Option<String>,
    /// Task workers on this node (0: enqueue only).
    #[arg(long, env = "ACTIONCLUSTER_WORKERS", default_value_t = 5)]
    workers: u32,
    /// Seconds without a ping after which a peer is declared dead and its work recovered.
    #[arg(long, env = "ACTIONCLUSTER_DEAD_AFTER", default_value_t = 5.0, value_parser = positive_secs)]
    dead_after: f64,
    /// Seconds between this node's membership pings.
    #[arg(long, env = "ACTIONCLUSTER_PEER_PING", default_value_t = 1.0, value_parser = positive_secs)]
    peer_ping: f64,
    /// Seconds a graceful stop waits for running tasks (0: wait forever).
    #[arg(long, env = "ACTIONCLUSTER_TASK_SHUTDOWN_TIMEOUT", default_value_t = 30.0, value_parser = non_negative_secs)]
    task_shutdown_timeout: f64,
    /// Seconds an HTTP client's web-message mailbox lives after the last store (unset: disabled).
    #[arg(long, env = "ACTIONCLUSTER_WEB_MESSAGE_TTL", value_parser = positive_secs)]
    web_message_ttl: Option<f64>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `actioncluster=debug`.
    #[arg(long, env = "ACTIONCLUSTER_LOG", default_value = "info")]
    log: String,
    /// TOML file holding any of these settings (keys are the flag names, e.g. `port = 9000`)
    /// and the channel rules (`[[rules]]`); flags and env vars override it.
    #[arg(long, env = "ACTIONCLUSTER_CONFIG")]
    config: Option<PathBuf>,
    /// HS256 secret of handshake tokens: every handshake must carry a valid JWT in
    /// `ext.auth.token`.
    #[arg(long, env = "ACTIONCLUSTER_TOKEN_SECRET", hide_env_values = true, conflicts_with = "token_public_key")]
    token_secret: Option<String>,
    /// PEM public key of handshake tokens (an RSA key: RS256; an EC P-256 key: ES256).
    #[arg(long, env = "ACTIONCLUSTER_TOKEN_PUBLIC_KEY")]
    token_public_key: Option<PathBuf>,
    /// With tokens: accept a handshake without a token, as an anonymous client.
    #[arg(long, env = "ACTIONCLUSTER_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// The app's URL (http://host:port/path) asked about every handshake, subscribe and
    /// publish; anything but `200 {"allow": true}` denies.
    #[arg(long, env = "ACTIONCLUSTER_AUTH_HOOK")]
    auth_hook: Option<String>,
    /// Seconds the auth hook may take before the request is denied.
    #[arg(long, env = "ACTIONCLUSTER_AUTH_HOOK_TIMEOUT", default_value_t = 2.0, value_parser = positive_secs)]
    auth_hook_timeout: f64,
    /// Seconds an allow of the hook is reused for the same client, channel and operation (0: ask every time).
    #[arg(long, env = "ACTIONCLUSTER_AUTH_HOOK_CACHE", default_value_t = 0.0, value_parser = non_negative_secs)]
    auth_hook_cache: f64,
    /// Bearer key of the server publish API (`POST /server/publish`); without it the API is off.
    #[arg(long, env = "ACTIONCLUSTER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Password of the operator's dashboard at /dashboard (HTTP Basic auth, any user name);
    /// without it the dashboard is off.
    #[arg(long, env = "ACTIONCLUSTER_DASHBOARD_PASSWORD", hide_env_values = true)]
    dashboard_password: Option<String>,
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0e6).contains(&v) => Ok(v),
        _ => Err(format!("expected a number of seconds >= 0, got {s:?}")),
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1.0e6 => Ok(v),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Args::command().get_matches_from(&argv);
    let (args, rules) = match matches.get_one::<PathBuf>("config") {
        Some(path) => match config_file::apply::<Args>(path, &argv, &matches) {
            Ok(applied) => applied,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => match Args::from_arg_matches(&matches) {
            Ok(args) => (args, Vec::new()),
            Err(e) => e.exit(),
        },
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid --log filter {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let config = Config {
        host: args.host,
        port: args.port,
        mount: args.mount,
        timeout: Duration::from_secs_f64(args.timeout),
        ping: args.ping.map(Duration::from_secs_f64),
        max_body_bytes: args.max_body,
        max_connections: args.max_connections,
        max_batch_messages: args.max_batch,
        max_subscriptions_per_client: args.max_subscriptions,
        handshake_rate: args.handshake_rate,
        handshake_burst: args.handshake_burst,
        max_queue_bytes: args.max_queue_bytes,
        reconnect_jitter: Duration::from_secs_f64(args.reconnect_jitter),
        forbid_wildcard_service: args.forbid_wildcard_service,
        bind_client_ip: args.bind_client_ip,
        cors_origins: args.cors_origins.map(|list| list.into_iter().map(|o| o.trim().to_string()).collect()),
        client_script: args.client_script,
        redis_url: args.redis,
        cluster_redis_url: args.cluster_redis,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        namespace: args.namespace,
        redis_layout: args.redis_layout,
        inbox_max_len: args.inbox_max_len,
        gc_interval: Duration::from_secs_f64(args.gc_interval),
        server_token: args.server_token,
        welcome_message: args.welcome_message,
        node_id: args.node_id,
        task_workers: args.workers,
        dead_after: Duration::from_secs_f64(args.dead_after),
        peer_ping_interval: Duration::from_secs_f64(args.peer_ping),
        task_shutdown_timeout: (args.task_shutdown_timeout > 0.0)
            .then(|| Duration::from_secs_f64(args.task_shutdown_timeout)),
        web_message_ttl: args.web_message_ttl.map(Duration::from_secs_f64),
        access: AccessConfig {
            token_key: match (args.token_secret, args.token_public_key) {
                (Some(secret), _) => Some(TokenKey::Secret(Secret(secret))),
                (None, Some(path)) => Some(TokenKey::PublicKeyFile(path)),
                (None, None) => None,
            },
            allow_anonymous: args.allow_anonymous,
            rules,
            auth_hook: args.auth_hook,
            auth_hook_timeout: Duration::from_secs_f64(args.auth_hook_timeout),
            auth_hook_cache: Duration::from_secs_f64(args.auth_hook_cache),
            api_key: args.api_key.map(Secret),
        },
        dashboard_password: args.dashboard_password.map(Secret),
        ..Config::default()
    };
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Register the handlers before announcing readiness: a SIGTERM sent right after the
    // listening line must still shut down gracefully.
    let stop = shutdown_signal();
    println!("actioncluster listening on {}", node.endpoint());
    stop.await;
    node.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when this is called.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
