//! Stats (spec §C5): counters in the cluster hash `actionHero:stats` and in each node's hash
//! `actionHero:stats:{serverID}`; gauges only in the node hash. A cluster read of a name the
//! cluster hash does not hold (a gauge) sums the hashes of the live nodes at read time, so a
//! dead node's gauges stop counting as soon as it is no longer listed (or its hash deleted).
//!
//! Live nodes: peers do not exist yet, so the `_across` variants take the live node ids and
//! the plain ones use just this node.

use super::keys::node_key_part;
use super::{Backend, ClusterError, Ctx, Numeric, RedisBackend, guard};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

/// Which hash a read looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The whole cluster: counters from the cluster hash, gauges summed over live nodes.
    Cluster,
    /// One node's own hash (raw node id).
    Node(String),
}

/// Increment. KEYS: cluster hash, node hash. ARGV: field, delta, '1' for an integer delta.
/// Guarantees: both hashes change or neither. A script rather than MULTI so that a field
/// holding a float (or garbage) is seen before writing: an integer delta then goes through
/// HINCRBYFLOAT on both, and garbage answers 'nan' with nothing written, where a MULTI would
/// have applied one HINCRBY and failed the other.
static INCREMENT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local function kind(v)
  if not v then return 'int' end
  if #v <= 18 and string.match(v, '^%-?%d+$') then return 'int' end
  if tonumber(v) then return 'float' end
  return 'nan'
end
local a = kind(redis.call('HGET', KEYS[1], ARGV[1]))
local b = kind(redis.call('HGET', KEYS[2], ARGV[1]))
if a == 'nan' or b == 'nan' then return 'nan' end
local cmd = 'HINCRBYFLOAT'
if ARGV[3] == '1' and a == 'int' and b == 'int' then cmd = 'HINCRBY' end
redis.call(cmd, KEYS[1], ARGV[1], ARGV[2])
redis.call(cmd, KEYS[2], ARGV[1], ARGV[2])
return 'ok'
"#,
    )
});

/// The memory backend's stats: the cluster hash and one hash per node.
#[derive(Debug, Default)]
pub(crate) struct MemoryStats {
    cluster: BTreeMap<String, Numeric>,
    nodes: HashMap<String, BTreeMap<String, Numeric>>,
}

fn add_to(map: &mut BTreeMap<String, Numeric>, field: &str, delta: Numeric) -> Result<(), ClusterError> {
    let current = map.get(field).copied().unwrap_or(Numeric::Int(0));
    let sum = current.checked_add(delta).ok_or(ClusterError::NotANumber)?;
    map.insert(field.to_string(), sum);
    Ok(())
}

impl MemoryStats {
    /// Adds to the cluster hash only (counters that describe cluster state).
    pub(crate) fn add_cluster(&mut self, field: &str, delta: Numeric) {
        if let Err(e) = add_to(&mut self.cluster, field, delta) {
            tracing::warn!(field, error = %e, "stat not updated");
        }
    }

    /// Adds to the cluster hash and the node's hash, both or neither.
    pub(crate) fn add(&mut self, node: &str, field: &str, delta: Numeric) -> Result<(), ClusterError> {
        let mut cluster = self.cluster.get(field).copied().unwrap_or(Numeric::Int(0));
        let node_hash = self.nodes.entry(node.to_string()).or_default();
        let mut own = node_hash.get(field).copied().unwrap_or(Numeric::Int(0));
        cluster = cluster.checked_add(delta).ok_or(ClusterError::NotANumber)?;
        own = own.checked_add(delta).ok_or(ClusterError::NotANumber)?;
        node_hash.insert(field.to_string(), own);
        self.cluster.insert(field.to_string(), cluster);
        Ok(())
    }
}

/// Cluster and per-node statistics. Cheap to clone.
#[derive(Clone)]
pub struct Stats {
    ctx: Arc<Ctx>,
}

impl Stats {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    /// Adds `delta` to counter `key` in the cluster hash and this node's hash, in one atomic
    /// step (integer deltas with HINCRBY, others with HINCRBYFLOAT). `NotANumber` if a hash
    /// holds something else under that name.
    pub async fn increment(&self, key: &str, delta: impl Into<Numeric>) -> Result<(), ClusterError> {
        let delta = delta.into().validate()?;
        match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.stats).add(&self.ctx.node_id(), key, delta)?,
            Backend::Redis(r) => {
                let integer = if matches!(delta, Numeric::Int(_)) { "1" } else { "0" };
                let answer: String = r.check(
                    INCREMENT
                        .key(r.keys.stats())
                        .key(r.keys.node_stats(&self.ctx.node_id()))
                        .arg(key)
                        .arg(delta.redis_text())
                        .arg(integer)
                        .invoke_async(&mut r.con())
                        .await,
                )?;
                if answer != "ok" {
                    tracing::warn!(key, "stat holds a non-number; increment refused");
                    return Err(ClusterError::NotANumber);
                }
            }
        }
        tracing::trace!(key, ?delta, "stat increment");
        Ok(())
    }

    /// Sets gauge `key` in this node's hash only.
    pub async fn set(&self, key: &str, value: impl Into<Numeric>) -> Result<(), ClusterError> {
        let value = value.into().validate()?;
        match &self.ctx.backend {
            Backend::Memory(m) => {
                guard(&m.stats).nodes.entry(self.ctx.node_id().to_string()).or_default().insert(key.to_string(), value);
            }
            Backend::Redis(r) => {
                let mut con = r.con();
                let () = r.check(
                    redis::cmd("HSET")
                        .arg(r.keys.node_stats(&self.ctx.node_id()))
                        .arg(key)
                        .arg(value.redis_text())
                        .query_async(&mut con)
                        .await
                        .map(|_: i64| ()),
                )?;
            }
        }
        tracing::trace!(key, ?value, "stat set");
        Ok(())
    }

    /// Reads `key`: from one node's hash, or cluster-wide (the cluster counter, else the sum
    /// of this node's gauge: use [`get_across`](Stats::get_across) to name the live nodes).
    pub async fn get(&self, key: &str, scope: Scope) -> Result<Option<Numeric>, ClusterError> {
        match scope {
            Scope::Node(id) => self.get_node(key, &id).await,
            Scope::Cluster => self.get_across(key, &[&*self.ctx.node_id()]).await,
        }
    }

    /// The cluster-wide value of `key`: the cluster hash's counter if it has one, else the
    /// sum of the gauge over `live_nodes`' hashes (`None` when no hash has it).
    pub async fn get_across(&self, key: &str, live_nodes: &[&str]) -> Result<Option<Numeric>, ClusterError> {
        let (cluster, per_node) = match &self.ctx.backend {
            Backend::Memory(m) => {
                let stats = guard(&m.stats);
                let per_node: Vec<Option<Numeric>> =
                    live_nodes.iter().map(|n| stats.nodes.get(*n).and_then(|h| h.get(key)).copied()).collect();
                (stats.cluster.get(key).copied(), per_node)
            }
            Backend::Redis(r) => {
                let mut pipe = redis::pipe();
                pipe.hget(r.keys.stats(), key);
                for node in live_nodes {
                    pipe.hget(r.keys.node_stats(node), key);
                }
                let texts: Vec<Option<String>> = r.check(pipe.query_async(&mut r.con()).await)?;
                let mut values = Vec::with_capacity(texts.len());
                for text in texts {
                    values.push(match text {
                        Some(t) => Some(Numeric::parse(&t).ok_or(ClusterError::NotANumber)?),
                        None => None,
                    });
                }
                let mut values = values.into_iter();
                (values.next().flatten(), values.collect())
            }
        };
        if cluster.is_some() {
            return Ok(cluster);
        }
        Ok(sum(per_node.into_iter().flatten()))
    }

    async fn get_node(&self, key: &str, node: &str) -> Result<Option<Numeric>, ClusterError> {
        match &self.ctx.backend {
            Backend::Memory(m) => Ok(guard(&m.stats).nodes.get(node).and_then(|h| h.get(key)).copied()),
            Backend::Redis(r) => {
                let mut con = r.con();
                let text: Option<String> =
                    r.check(redis::cmd("HGET").arg(r.keys.node_stats(node)).arg(key).query_async(&mut con).await)?;
                text.map(|t| Numeric::parse(&t).ok_or(ClusterError::NotANumber)).transpose()
            }
        }
    }

    /// `{"global": {...}, "local": {...}}` with names split on `:` into nested objects and
    /// numeric values; global counts only this node as live (see
    /// [`get_all_across`](Stats::get_all_across)).
    pub async fn get_all(&self) -> Result<Value, ClusterError> {
        self.get_all_across(&[&*self.ctx.node_id()]).await
    }

    /// [`get_all`](Stats::get_all) with gauges summed over `live_nodes`. A name that is also
    /// the prefix of another (`a` and `a:b`) keeps its flat form for the longer one; a field
    /// that is not a number is reported and left out.
    pub async fn get_all_across(&self, live_nodes: &[&str]) -> Result<Value, ClusterError> {
        let own_id = self.ctx.node_id();
        let own = &*own_id;
        let (cluster, local, per_node) = match &self.ctx.backend {
            Backend::Memory(m) => {
                let stats = guard(&m.stats);
                let hash = |n: &str| stats.nodes.get(n).cloned().unwrap_or_default();
                (stats.cluster.clone(), hash(own), live_nodes.iter().map(|n| hash(n)).collect::<Vec<_>>())
            }
            Backend::Redis(r) => self.redis_hashes(r, own, live_nodes).await?,
        };
        let mut global = cluster;
        let mut gauges: BTreeMap<String, Vec<Numeric>> = BTreeMap::new();
        for hash in per_node {
            for (field, value) in hash {
                if !global.contains_key(&field) {
                    gauges.entry(field).or_default().push(value);
                }
            }
        }
        for (field, values) in gauges {
            if let Some(total) = sum(values.into_iter()) {
                global.insert(field, total);
            }
        }
        let mut out = Map::new();
        out.insert("global".into(), nest(global));
        out.insert("local".into(), nest(local));
        Ok(Value::Object(out))
    }

    /// HGETALL of the cluster hash, this node's hash and each live node's, in one round trip.
    async fn redis_hashes(
        &self,
        r: &RedisBackend,
        own: &str,
        live_nodes: &[&str],
    ) -> Result<(BTreeMap<String, Numeric>, BTreeMap<String, Numeric>, Vec<BTreeMap<String, Numeric>>), ClusterError>
    {
        let mut pipe = redis::pipe();
        pipe.hgetall(r.keys.stats()).hgetall(r.keys.node_stats(own));
        for node in live_nodes {
            pipe.hgetall(r.keys.node_stats(node));
        }
        let hashes: Vec<HashMap<String, String>> = r.check(pipe.query_async(&mut r.con()).await)?;
        let mut parsed = hashes.into_iter().map(|h| {
            h.into_iter()
                .filter_map(|(field, text)| match Numeric::parse(&text) {
                    Some(n) => Some((field, n)),
                    None => {
                        tracing::warn!(field, "stat holds a non-number; left out");
                        None
                    }
                })
                .collect::<BTreeMap<_, _>>()
        });
        let cluster = parsed.next().unwrap_or_default();
        let local = parsed.next().unwrap_or_default();
        Ok((cluster, local, parsed.collect()))
    }

    /// Deletes a node's hash (it left or was declared dead): `true` if it existed.
    pub async fn delete_node(&self, node_id: &str) -> Result<bool, ClusterError> {
        let existed = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.stats).nodes.remove(node_id).is_some(),
            Backend::Redis(r) => {
                let mut con = r.con();
                let n: i64 = r.check(redis::cmd("DEL").arg(r.keys.node_stats(node_id)).query_async(&mut con).await)?;
                n == 1
            }
        };
        tracing::debug!(node = node_id, key_part = %node_key_part(node_id), existed, "node stats deleted");
        Ok(existed)
    }
}

/// Sum of gauges, `None` for none; integers stay exact, overflow goes to float.
fn sum(values: impl Iterator<Item = Numeric>) -> Option<Numeric> {
    values.fold(None, |acc, v| match acc {
        None => Some(v),
        Some(a) => a.checked_add(v).or(Some(Numeric::from_f64(a.as_f64() + v.as_f64()))),
    })
}

/// Splits names on `:` into nested objects (`cache:cachedObjects` → `{"cache":
/// {"cachedObjects": n}}`). Names come sorted, so `a` is placed before `a:b`; a name whose
/// path runs into a number stays flat at the top.
fn nest(flat: BTreeMap<String, Numeric>) -> Value {
    let mut root = Map::new();
    for (name, value) in flat {
        if !insert_nested(&mut root, &name, value) {
            root.insert(name, value.to_json());
        }
    }
    Value::Object(root)
}

fn insert_nested(root: &mut Map<String, Value>, name: &str, value: Numeric) -> bool {
    let parts: Vec<&str> = name.split(':').collect();
    let Some((last, path)) = parts.split_last() else { return false };
    // Check the path first so a conflict leaves no half-built objects behind.
    let mut probe = &*root;
    for part in path {
        match probe.get(*part) {
            None => break,
            Some(Value::Object(m)) => probe = m,
            Some(_) => return false,
        }
    }
    let mut cur = root;
    for part in path {
        cur = match cur.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new())) {
            Value::Object(m) => m,
            _ => return false,
        };
    }
    if cur.contains_key(*last) {
        return false;
    }
    cur.insert(last.to_string(), value.to_json());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_nest_on_colons() {
        let flat: BTreeMap<String, Numeric> = [
            ("cache:cachedObjects".to_string(), Numeric::Int(3)),
            ("a".to_string(), Numeric::Int(1)),
            ("a:b".to_string(), Numeric::Float(1.5)),
            ("x:y:z".to_string(), Numeric::Int(2)),
        ]
        .into_iter()
        .collect();
        assert_eq!(nest(flat), json!({"cache": {"cachedObjects": 3}, "a": 1, "a:b": 1.5, "x": {"y": {"z": 2}}}));
    }

    #[test]
    fn sums_stay_integers_when_they_can() {
        assert_eq!(sum([Numeric::Int(1), Numeric::Int(2)].into_iter()), Some(Numeric::Int(3)));
        assert_eq!(sum([Numeric::Int(1), Numeric::Float(0.5)].into_iter()), Some(Numeric::Float(1.5)));
        assert_eq!(sum(std::iter::empty()), None);
    }
}
