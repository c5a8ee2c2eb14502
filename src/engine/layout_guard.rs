//! The guard against mixing redis layouts: a faye-layout node and a native node on one
//! namespace would each take the other's clients for gone. Each of our redis engines claims
//! its namespace at start, in one script, and refuses to start on one the other layout uses.
//! node.js faye-redis nodes write no claim; the native layout also refuses a namespace that
//! holds faye-redis's client set.

use super::EngineError;
use redis::aio::ConnectionLike;
use std::sync::LazyLock;

/// The two layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// faye-redis 0.2.0's keys, shared with node.js Faye nodes.
    Faye,
    /// Node-side fan-out with per-node inboxes.
    Native,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Faye => "faye",
            Layout::Native => "native",
        }
    }

    fn other(self) -> Layout {
        match self {
            Layout::Faye => Layout::Native,
            Layout::Native => Layout::Faye,
        }
    }

    /// A key that only this layout writes, and that exists while it is in use.
    fn marker(self, namespace: &str) -> String {
        match self {
            Layout::Faye => format!("{namespace}/clients"),
            Layout::Native => format!("{namespace}/native/nodes"),
        }
    }
}

/// KEYS[1]: the layout key; KEYS[2]: the other layout's marker. ARGV: this layout, the other.
/// Returns the layout in use after the call: this one when the namespace was free or ours.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return current end
if not current and redis.call('EXISTS', KEYS[2]) == 1 then return ARGV[2] end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"#,
    )
});

/// Why a namespace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Another layout's nodes use the namespace.
    #[error(
        "redis namespace {namespace:?} is in use by the {other} layout; start this node with --redis-layout {other}, or use another --namespace"
    )]
    InUse {
        /// The namespace.
        namespace: String,
        /// The layout found there.
        other: String,
    },
    /// Redis did not answer the claim.
    #[error("cannot check the redis layout of namespace {namespace:?}: {source}")]
    Unavailable {
        /// The namespace.
        namespace: String,
        /// What went wrong.
        #[source]
        source: EngineError,
    },
}

/// The key holding the namespace's layout.
pub(crate) fn layout_key(namespace: &str) -> String {
    format!("{namespace}/layout")
}

/// Claims `namespace` for `layout`, or says which layout holds it.
pub(crate) async fn claim(con: &mut impl ConnectionLike, namespace: &str, layout: Layout) -> Result<(), LayoutError> {
    claim_with_marker(con, namespace, layout, layout.other().marker(namespace)).await
}

/// [`claim`] on a Redis Cluster, where the other layout's marker is in another slot: only
/// the layout key is checked (the faye layout cannot run on a Redis Cluster anyway).
pub(crate) async fn claim_on_cluster(
    con: &mut impl ConnectionLike,
    namespace: &str,
    layout: Layout,
) -> Result<(), LayoutError> {
    claim_with_marker(con, namespace, layout, layout_key(namespace)).await
}

async fn claim_with_marker(
    con: &mut impl ConnectionLike,
    namespace: &str,
    layout: Layout,
    marker: String,
) -> Result<(), LayoutError> {
    let result: redis::RedisResult<String> = CLAIM
        .key(layout_key(namespace))
        .key(marker)
        .arg(layout.name())
        .arg(layout.other().name())
        .invoke_async(con)
        .await;
    match result {
        Ok(found) if found == layout.name() => Ok(()),
        Ok(found) => Err(LayoutError::InUse { namespace: namespace.to_string(), other: found }),
        Err(e) => Err(LayoutError::Unavailable {
            namespace: namespace.to_string(),
            source: EngineError::Unavailable(e.to_string()),
        }),
    }
}
