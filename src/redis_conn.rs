//! Shared redis plumbing: URL handling, the command connection (fails fast instead of
//! queueing while redis is away) and dedicated pub/sub and blocking connections, for one
//! redis server, a master behind Sentinel (followed across failovers) or a Redis Cluster.

use crate::telemetry::Metrics;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Why redis could not be used.
#[derive(Debug, Error)]
pub enum RedisConnError {
    /// The URL is not a redis URL this build supports.
    #[error("invalid redis URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The deployment named by the URL cannot serve what it was asked for (the faye layout,
    /// or the cluster layers, on a Redis Cluster).
    #[error("{url}: {reason}")]
    Unsupported {
        /// The URL given.
        url: String,
        /// What cannot run there, and what to do instead.
        reason: String,
    },
    /// Redis could not be reached.
    #[error("cannot reach redis at {url}: {source}")]
    Unreachable {
        /// The URL given.
        url: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
}

/// What kind of redis deployment a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisKind {
    /// One redis server (`redis://`, `rediss://`, `redis+unix://`).
    Single,
    /// A master found through Sentinel, followed across failovers (`redis+sentinel://`).
    Sentinel,
    /// A Redis Cluster (`redis+cluster://`): keys are spread over shards by hash slot.
    Cluster,
}

/// Where the connections of an endpoint go.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Sentinel(Arc<SentinelTarget>),
    Cluster(Arc<ClusterTarget>),
}

/// The two cluster clients of a Redis Cluster endpoint.
struct ClusterTarget {
    /// Commands: replies time out after [`RESPONSE_TIMEOUT`].
    commands: redis::cluster::ClusterClient,
    /// Blocking reads: replies may take as long as they need.
    blocking: redis::cluster::ClusterClient,
}

/// The sentinels to ask, and the master they watch.
struct SentinelTarget {
    sentinels: Vec<redis::ConnectionInfo>,
    master: String,
    db: i64,
}

impl SentinelTarget {
    /// Asks the sentinels which server is the master now (checking that it says so itself),
    /// and returns a client for it. Bounded by twice [`CONNECT_TIMEOUT`].
    async fn master(&self) -> redis::RedisResult<redis::Client> {
        let lookup = async {
            let mut sentinel = redis::sentinel::Sentinel::build(self.sentinels.clone())?;
            let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(self.db))
                .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
            sentinel.async_master_for(&self.master, Some(&node)).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, lookup).await {
            Ok(r) => r,
            Err(_) => Err(timed_out("asking the sentinels for the master timed out")),
        }
    }
}

fn timed_out(why: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, why))
}

/// A redis endpoint: how to reach it plus the URL it came from (for messages).
#[derive(Clone)]
pub struct RedisEndpoint {
    target: Target,
    url: String,
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpoint").field("url", &self.url).field("kind", &self.kind()).finish()
    }
}

/// How long a command may wait for its reply before the engine reports redis unavailable.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connection attempt to a Sentinel-resolved master, commands fail at once
/// for this long instead of each asking the sentinels again.
const SENTINEL_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Splits `host:port,host:port` into `redis://host:port` URLs.
fn host_list(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for hostport in list.split(',').map(str::trim) {
        let (host, port) = hostport.rsplit_once(':').ok_or_else(|| format!("{hostport:?} is not HOST:PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{hostport:?} is not HOST:PORT"));
        }
        out.push(format!("redis://{host}:{port}"));
    }
    if out.is_empty() {
        return Err("no HOST:PORT given".into());
    }
    Ok(out)
}

/// The kind of deployment a redis URL names, from its scheme alone (for config checks that
/// must not connect).
pub fn kind_of_url(url: &str) -> Option<RedisKind> {
    match url.split("://").next().unwrap_or("") {
        "redis" | "rediss" | "redis+unix" | "unix" => Some(RedisKind::Single),
        "redis+sentinel" => Some(RedisKind::Sentinel),
        "redis+cluster" => Some(RedisKind::Cluster),
        _ => None,
    }
}

impl RedisEndpoint {
    /// Parses `redis://host:port/db`, `rediss://…`, `redis+unix:///path?db=N`,
    /// `redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB]` or
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]`.
    pub fn parse(url: &str) -> Result<Self, RedisConnError> {
        let invalid = |reason: String| RedisConnError::InvalidUrl { url: url.to_string(), reason };
        let target = match kind_of_url(url) {
            None => {
                return Err(invalid(
                    "expected redis://, rediss://, redis+unix://, redis+sentinel:// or redis+cluster://".into(),
                ));
            }
            Some(RedisKind::Single) => {
                let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| invalid(e.to_string()))?;
                // Without TCP_NODELAY, a command sent while the previous one is unanswered waits for
                // redis's delayed ACK (40 ms on Linux): pipelined publishes stalled that long.
                let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
                Target::Single(redis::Client::open(info).map_err(|e| invalid(e.to_string()))?)
            }
            Some(RedisKind::Sentinel) => {
                let rest = url.strip_prefix("redis+sentinel://").unwrap_or_default();
                let mut parts = rest.split('/');
                let hosts = host_list(parts.next().unwrap_or_default()).map_err(invalid)?;
                let master = parts.next().filter(|m| !m.is_empty()).ok_or_else(|| {
                    invalid("expected redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]".into())
                })?;
                let db = match parts.next().filter(|d| !d.is_empty()) {
                    None => 0,
                    Some(db) => db.parse::<i64>().map_err(|_| invalid(format!("{db:?} is not a database number")))?,
                };
                if parts.any(|p| !p.is_empty()) {
                    return Err(invalid("unexpected path after /MASTER_NAME/DB".into()));
                }
                let sentinels = hosts
                    .iter()
                    .map(|h| redis::IntoConnectionInfo::into_connection_info(h.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(e.to_string()))?;
                Target::Sentinel(Arc::new(SentinelTarget { sentinels, master: master.to_string(), db }))
            }
            Some(RedisKind::Cluster) => {
                let rest = url.strip_prefix("redis+cluster://").unwrap_or_default();
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                if rest.contains('/') {
                    return Err(invalid(
                        "a Redis Cluster has no databases: expected redis+cluster://HOST:PORT[,HOST:PORT...]".into(),
                    ));
                }
                let hosts = host_list(rest).map_err(invalid)?;
                let nodelay = redis::io::tcp::TcpSettings::default().set_nodelay(true);
                let commands = redis::cluster::ClusterClient::builder(hosts.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .tcp_settings(nodelay.clone())
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                let blocking = redis::cluster::ClusterClient::builder(hosts)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .tcp_settings(nodelay)
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                Target::Cluster(Arc::new(ClusterTarget { commands, blocking }))
            }
        };
        Ok(Self { target, url: url.to_string() })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which kind of deployment this is.
    pub fn kind(&self) -> RedisKind {
        match self.target {
            Target::Single(_) => RedisKind::Single,
            Target::Sentinel(_) => RedisKind::Sentinel,
            Target::Cluster(_) => RedisKind::Cluster,
        }
    }

    /// Refuses a Redis Cluster for `what` (whose keys span hash slots), saying what to do.
    pub fn refuse_cluster(&self, what: &str, instead: &str) -> Result<(), RedisConnError> {
        if self.kind() == RedisKind::Cluster {
            return Err(RedisConnError::Unsupported {
                url: self.url.clone(),
                reason: format!("{what} cannot run on a Redis Cluster (its keys span hash slots); {instead}"),
            });
        }
        Ok(())
    }

    fn unreachable(&self, source: redis::RedisError) -> RedisConnError {
        RedisConnError::Unreachable { url: self.url.clone(), source }
    }

    /// A reconnecting command connection whose commands fail within [`RESPONSE_TIMEOUT`]
    /// while redis is away, rather than piling up. On Sentinel, a reconnect asks the
    /// sentinels for the master again, so it follows a failover.
    pub async fn commands(&self) -> Result<CommandConnection, RedisConnError> {
        match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager =
                    client.get_connection_manager_with_config(config).await.map_err(|e| self.unreachable(e))?;
                Ok(CommandConnection::Single(manager))
            }
            Target::Sentinel(target) => {
                let con = SentinelConnection::new(target.clone());
                // Fail at start, as the other kinds do, when no master can be found.
                con.current().await.map_err(|e| self.unreachable(e))?;
                Ok(CommandConnection::Sentinel(con))
            }
            Target::Cluster(cluster) => {
                let con = cluster.commands.get_async_connection().await.map_err(|e| self.unreachable(e))?;
                Ok(CommandConnection::Cluster(con))
            }
        }
    }

    /// A dedicated connection whose replies may take as long as they need, for blocking
    /// reads (`XREAD BLOCK`); the caller bounds each call itself. Each call opens new
    /// connections (on Sentinel, to the master the sentinels name now).
    pub async fn blocking(&self) -> Result<BlockingConnection, RedisConnError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        match &self.target {
            Target::Single(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(BlockingConnection::Single)
                .map_err(|e| self.unreachable(e)),
            Target::Sentinel(target) => {
                let client = target.master().await.map_err(|e| self.unreachable(e))?;
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(BlockingConnection::Single)
                    .map_err(|e| self.unreachable(e))
            }
            Target::Cluster(cluster) => {
                match tokio::time::timeout(CONNECT_TIMEOUT * 2, cluster.blocking.get_async_connection()).await {
                    Ok(r) => r.map(BlockingConnection::Cluster).map_err(|e| self.unreachable(e)),
                    Err(_) => Err(self.unreachable(timed_out("connect timed out"))),
                }
            }
        }
    }

    /// A dedicated pub/sub connection (on Sentinel, to the master the sentinels name now).
    /// A Redis Cluster has none here: the layout that runs on it uses no pub/sub.
    pub async fn pubsub(&self) -> Result<PubSub, RedisConnError> {
        let connect = async {
            match &self.target {
                Target::Single(client) => client.get_async_pubsub().await,
                Target::Sentinel(target) => target.master().await?.get_async_pubsub().await,
                Target::Cluster(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "pub/sub on a Redis Cluster is not used by this layout",
                ))),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
            Ok(r) => r.map_err(|e| self.unreachable(e)),
            Err(_) => Err(self.unreachable(timed_out("connect timed out"))),
        }
    }
}

/// The command connection of an endpoint, whatever its kind; cheap to clone (clones share
/// the connection).
#[derive(Clone)]
pub enum CommandConnection {
    /// One server, through the redis crate's reconnecting manager.
    Single(ConnectionManager),
    /// The master Sentinel names, found again after each lost connection.
    Sentinel(SentinelConnection),
    /// A Redis Cluster: each command goes to the shard that holds its slot.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for CommandConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A dedicated connection for blocking reads.
#[derive(Clone)]
pub enum BlockingConnection {
    /// One server (or the master Sentinel named when it was opened).
    Single(redis::aio::MultiplexedConnection),
    /// A Redis Cluster (its own connections to the shards, not shared with commands).
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for BlockingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

type Connecting = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<(u64, redis::aio::MultiplexedConnection), redis::RedisError>>,
>;

#[derive(Default)]
struct SentinelState {
    /// The connection in use and its generation.
    current: Option<(u64, redis::aio::MultiplexedConnection)>,
    /// The connection attempt under way, shared by every command waiting for it.
    connecting: Option<Connecting>,
    generation: u64,
    /// When the last attempt failed, and why: commands fail at once for a short while.
    failed: Option<(std::time::Instant, redis::RedisError)>,
}

struct SentinelShared {
    target: Arc<SentinelTarget>,
    /// Held only for short, await-free updates.
    state: std::sync::Mutex<SentinelState>,
}

/// A command connection to the master that Sentinel names. A command that finds the
/// connection gone (the master died, or was demoted and answers `READONLY`) drops it; the
/// next command asks the sentinels for the master again and connects to it. So a node
/// follows a failover without a restart, failing commands fast (like a single redis that is
/// away) until the new master is known.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<SentinelShared>,
}

impl SentinelConnection {
    fn new(target: Arc<SentinelTarget>) -> Self {
        Self { shared: Arc::new(SentinelShared { target, state: std::sync::Mutex::new(SentinelState::default()) }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SentinelState> {
        self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection to the master, connecting (once, for every waiting command) if there
    /// is none.
    async fn current(&self) -> redis::RedisResult<(u64, redis::aio::MultiplexedConnection)> {
        let pending = {
            let mut state = self.lock();
            if let Some(current) = &state.current {
                return Ok(current.clone());
            }
            if let Some((at, e)) = &state.failed
                && at.elapsed() < SENTINEL_RETRY_AFTER
            {
                return Err(e.clone());
            }
            match &state.connecting {
                Some(pending) => pending.clone(),
                None => {
                    let shared = Arc::downgrade(&self.shared);
                    let target = self.shared.target.clone();
                    let pending = futures_util::FutureExt::shared(
                        Box::pin(connect_master(target, shared)) as futures_util::future::BoxFuture<'static, _>
                    );
                    state.connecting = Some(pending.clone());
                    pending
                }
            }
        };
        pending.await
    }

    /// Forgets connection `generation` after `error` if the error means it is no use.
    fn observe(&self, generation: u64, error: &redis::RedisError) {
        let lost = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.is_unrecoverable_error()
            || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if !lost {
            return;
        }
        let mut state = self.lock();
        if state.current.as_ref().is_some_and(|(g, _)| *g == generation) {
            state.current = None;
            tracing::warn!(error = %error, "connection to the Sentinel master lost; asking the sentinels again");
        }
    }
}

/// Resolves the master through the sentinels and connects to it; records the outcome in
/// the shared state (which may be gone when every connection was dropped meanwhile).
async fn connect_master(
    target: Arc<SentinelTarget>,
    shared: std::sync::Weak<SentinelShared>,
) -> Result<(u64, redis::aio::MultiplexedConnection), redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let result = match target.master().await {
        Ok(client) => client.get_multiplexed_async_connection_with_config(&config).await,
        Err(e) => Err(e),
    };
    let Some(shared) = shared.upgrade() else { return result.map(|c| (0, c)) };
    let mut state = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    state.connecting = None;
    match result {
        Ok(con) => {
            state.generation += 1;
            state.failed = None;
            state.current = Some((state.generation, con.clone()));
            tracing::debug!(master = %target.master, generation = state.generation, "connected to the Sentinel master");
            Ok((state.generation, con))
        }
        Err(e) => {
            state.failed = Some((std::time::Instant::now(), e.clone()));
            Err(e)
        }
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let (generation, mut con) = self.current().await?;
            let r = con.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.observe(generation, e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let (generation, mut con) = self.current().await?;
            let r = con.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &r {
                self.observe(generation, e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.target.db
    }
}

/// A command connection that times every round trip into the node's metrics.
#[derive(Clone)]
pub struct TimedConnection {
    /// The reconnecting connection underneath.
    pub inner: CommandConnection,
    /// Where the round trips are counted.
    pub metrics: Arc<Metrics>,
}

impl ConnectionLike for TimedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = self.inner.req_packed_command(cmd).await;
            self.metrics.redis_round_trip(started.elapsed(), r.is_ok());
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = self.inner.req_packed_commands(pipeline, offset, count).await;
            self.metrics.redis_round_trip(started.elapsed(), r.is_ok());
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
