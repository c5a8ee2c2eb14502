//! Runs one behaviour test body against both cluster backends (spec §C10.11): the memory
//! backend with a clock the test moves, and the redis backend on the test's own redis-server
//! (through `redis_server.rs`, which the test file declares next to this module).
#![allow(dead_code)]

use crate::redis_server::RedisServer;
use actioncluster::{Cluster, ClusterSettings, MemoryClock};
use std::time::Duration;

/// Upper bound for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(30);

/// Which backend a test body runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
}

/// One backend, its first node (`node-a:1`) and the means to add nodes and move time.
pub struct Harness {
    pub kind: Kind,
    pub cluster: Cluster,
    pub settings: ClusterSettings,
    clock: MemoryClock,
    redis: Option<RedisServer>,
}

impl Harness {
    pub async fn new(kind: Kind) -> Self {
        Self::with(kind, ClusterSettings::default()).await
    }

    pub async fn with(kind: Kind, mut settings: ClusterSettings) -> Self {
        let clock = MemoryClock::new();
        settings.clock = clock.clone();
        let (cluster, redis) = match kind {
            Kind::Memory => (Cluster::memory_with("node-a:1", settings.clone()), None),
            Kind::Redis => {
                let redis = RedisServer::start().await;
                let cluster = Cluster::redis_with(&redis.url(), "node-a:1", settings.clone()).await.unwrap();
                (cluster, Some(redis))
            }
        };
        Self { kind, cluster, settings, clock, redis }
    }

    /// Another node on the same storage; on redis with its own connection, as a separate
    /// process would have.
    pub async fn node(&self, id: &str) -> Cluster {
        match &self.redis {
            None => self.cluster.sibling(id),
            Some(redis) => Cluster::redis_with(&redis.url(), id, self.settings.clone()).await.unwrap(),
        }
    }

    /// Lets `d` pass, for behaviour that is about time itself (expiry): the memory clock
    /// jumps; redis `TIME` cannot be moved, so on redis the test waits it out.
    pub async fn advance(&self, d: Duration) {
        match self.kind {
            Kind::Memory => self.clock.advance(d),
            Kind::Redis => tokio::time::sleep(d).await,
        }
    }

    /// A raw connection to the test's redis (for layout checks and fault injection).
    pub async fn raw(&self) -> Option<redis::aio::MultiplexedConnection> {
        match &self.redis {
            Some(r) => Some(r.connection().await),
            None => None,
        }
    }

    pub fn redis_url(&self) -> Option<String> {
        self.redis.as_ref().map(|r| r.url())
    }
}

/// `both_backends!(a, b)` makes `a::memory`, `a::redis`, … from `async fn a(kind: Kind)`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name($crate::harness::Kind::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name($crate::harness::Kind::Redis).await
            }
        }
    )*};
}
pub(crate) use both_backends;
