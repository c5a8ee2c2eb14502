//! Shared redis plumbing: URL handling, the command connection (fails fast instead of
//! queueing while redis is away) and dedicated pub/sub connections.

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

/// A redis endpoint: the client plus the URL it came from (for messages).
#[derive(Clone)]
pub struct RedisEndpoint {
    client: redis::Client,
    url: String,
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpoint").field("url", &self.url).finish()
    }
}

/// How long a command may wait for its reply before the engine reports redis unavailable.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisEndpoint {
    /// Parses `redis://host:port/db`, `rediss://…` or `redis+unix:///path?db=N`.
    pub fn parse(url: &str) -> Result<Self, RedisConnError> {
        let invalid = |reason: String| RedisConnError::InvalidUrl { url: url.to_string(), reason };
        let scheme = url.split("://").next().unwrap_or("");
        if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix") {
            return Err(invalid("expected redis://, rediss:// or redis+unix://".into()));
        }
        let client = redis::Client::open(url).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { client, url: url.to_string() })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A reconnecting command connection whose commands fail within [`RESPONSE_TIMEOUT`]
    /// while redis is away, rather than piling up.
    pub async fn commands(&self) -> Result<ConnectionManager, RedisConnError> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        self.client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|source| RedisConnError::Unreachable { url: self.url.clone(), source })
    }

    /// A dedicated connection whose replies may take as long as they need, for blocking
    /// reads (`XREAD BLOCK`); the caller bounds each call itself.
    pub async fn blocking(&self) -> Result<redis::aio::MultiplexedConnection, RedisConnError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| RedisConnError::Unreachable { url: self.url.clone(), source })
    }

    /// A dedicated pub/sub connection.
    pub async fn pubsub(&self) -> Result<PubSub, RedisConnError> {
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, self.client.get_async_pubsub()).await {
            Ok(r) => r.map_err(|source| RedisConnError::Unreachable { url: self.url.clone(), source }),
            Err(_) => Err(RedisConnError::Unreachable {
                url: self.url.clone(),
                source: redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
            }),
        }
    }
}

/// A command connection that times every round trip into the node's metrics.
#[derive(Clone)]
pub struct TimedConnection {
    /// The reconnecting connection underneath.
    pub inner: ConnectionManager,
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
