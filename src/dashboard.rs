//! The operator dashboard's data (node-level wiring; the page and its HTTP side live in
//! `transport/dashboard.rs`). Every node samples its own counters every 2 s and shares the
//! sample with its peers through the cluster cache; a node serving the dashboard keeps the
//! last 10 minutes of every live peer's samples in a small ring buffer, and answers the page's
//! JSON from them, from the task queues and from the rooms.

use crate::cluster::Cluster;
use crate::server::Server;
use crate::telemetry::ChannelReading;
use crate::transport::DashboardSource;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a node samples its counters.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Samples kept per node: 10 minutes.
const SAMPLES_KEPT: usize = 300;

/// Cache key prefix of the nodes' shared samples (one key per node, expiring).
const NODE_KEY_PREFIX: &str = "actioncluster:dashboard:node:";

/// A shared sample lives this long without a newer one (the node is gone).
const NODE_KEY_TTL_MS: i64 = 10_000;

/// Rows in each "busiest channels" list, rooms, and dead-letter entries shown.
const TOP_CHANNELS: usize = 10;
const ROOMS_SHOWN: usize = 100;
const FAILED_SHOWN: isize = 50;

/// One node's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at_ms: i64,
    published: u64,
    delivered: u64,
    connections: u64,
}

#[derive(Default)]
struct History {
    /// Node id -> its last samples, oldest first.
    nodes: HashMap<String, VecDeque<Sample>>,
    /// Node id -> its last shared record.
    records: HashMap<String, Value>,
    /// This node's channel publish counts at the previous sample, for rates.
    channel_counts: HashMap<String, u64>,
    /// Channel -> publishes per second over the last sample period.
    channel_rates: HashMap<String, f64>,
}

/// The data behind the dashboard of one node.
pub(crate) struct DashboardData {
    server: Server,
    cluster: Cluster,
    layout: &'static str,
    started_ms: i64,
    history: Mutex<History>,
    redis_latency_ms: Mutex<Option<f64>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl DashboardData {
    /// Starts sampling every [`SAMPLE_EVERY`] until `shutdown`: this node's counters are
    /// shared with its peers, and the peers' samples kept for the page.
    pub(crate) fn start(
        server: Server,
        cluster: Cluster,
        layout: &'static str,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        server.metrics().track_channels();
        let data = Arc::new(Self {
            server,
            cluster,
            layout,
            started_ms: now_ms(),
            history: Mutex::default(),
            redis_latency_ms: Mutex::default(),
        });
        // A first sample now, so traffic before the first period shows as a rate.
        let m = data.server.metrics().snapshot();
        let baseline = Sample {
            at_ms: now_ms(),
            published: m.published,
            delivered: m.delivered,
            connections: m.connections.iter().map(|(_, n)| n).sum(),
        };
        data.history().nodes.entry(data.cluster.node_id().to_string()).or_default().push_back(baseline);
        let weak = Arc::downgrade(&data);
        crate::periodic::every(SAMPLE_EVERY, shutdown, move || {
            let data = weak.upgrade();
            async move {
                let Some(data) = data else { return false };
                data.sample().await;
                true
            }
        });
        data
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's record as shared with its peers.
    async fn own_record(&self) -> Value {
        let started = Instant::now();
        let latency = self.server.health().await.ok().map(|()| started.elapsed().as_secs_f64() * 1000.0);
        *self.redis_latency_ms.lock().unwrap_or_else(|p| p.into_inner()) = latency;
        let m = self.server.metrics().snapshot();
        let connections: serde_json::Map<String, Value> =
            m.connections.iter().map(|(label, n)| (label.to_string(), json!(n))).collect();
        json!({
            "id": &*self.cluster.node_id(),
            "layout": self.layout,
            "startedAt": self.started_ms,
            "at": now_ms(),
            "connections": connections,
            "clients": self.server.session_count(),
            "subscriptions": m.subscriptions,
            "published": m.published,
            "delivered": m.delivered,
            "redis": {"latencyMs": latency, "reconnects": m.redis_reconnects, "failures": m.redis_failures},
        })
    }

    async fn sample(&self) {
        let record = self.own_record().await;
        let own_id = self.cluster.node_id().to_string();
        if let Err(e) = self
            .cluster
            .cache()
            .save(&format!("{NODE_KEY_PREFIX}{own_id}"), record.clone(), Some(NODE_KEY_TTL_MS))
            .await
        {
            tracing::debug!(error = %e, "cannot share this node's dashboard sample");
        }
        let peers = self.cluster.peers().await.unwrap_or_else(|_| vec![own_id.clone()]);
        let mut records = vec![record];
        for peer in peers.iter().filter(|p| **p != own_id) {
            if let Ok(entry) = self.cluster.cache().load(&format!("{NODE_KEY_PREFIX}{peer}")).await {
                records.push(entry.value);
            }
        }
        let channels = self.server.metrics().track_channels().read();
        let mut history = self.history();
        history.nodes.retain(|id, _| *id == own_id || peers.contains(id));
        history.records.clear();
        for record in records {
            let Some(id) = record["id"].as_str().map(str::to_string) else { continue };
            let sample = Sample {
                at_ms: record["at"].as_i64().unwrap_or(0),
                published: record["published"].as_u64().unwrap_or(0),
                delivered: record["delivered"].as_u64().unwrap_or(0),
                connections: record["connections"]
                    .as_object()
                    .map(|c| c.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0),
            };
            let series = history.nodes.entry(id.clone()).or_default();
            if series.back().is_none_or(|last| last.at_ms < sample.at_ms) {
                series.push_back(sample);
                if series.len() > SAMPLES_KEPT {
                    series.pop_front();
                }
            }
            history.records.insert(id, record);
        }
        update_channel_rates(&mut history, &channels);
        let counts = history.channel_counts.clone();
        drop(history);
        // Channels with no subscriber and no publish since the last sample are forgotten.
        self.server.metrics().track_channels().prune(|name, published| counts.get(name) == Some(&published));
    }

    fn nodes_json(history: &History) -> Vec<Value> {
        let now = now_ms();
        let mut nodes: Vec<Value> = history
            .records
            .iter()
            .map(|(id, record)| {
                let (publish_rate, delivery_rate) = history.nodes.get(id).map(last_rates).unwrap_or((0.0, 0.0));
                let started = record["startedAt"].as_i64().unwrap_or(now);
                json!({
                    "id": id,
                    "layout": record["layout"],
                    "uptimeSeconds": (now - started).max(0) / 1000,
                    "connections": record["connections"],
                    "clients": record["clients"],
                    "subscriptions": record["subscriptions"],
                    "publishRate": round1(publish_rate),
                    "deliveryRate": round1(delivery_rate),
                    "redis": record["redis"],
                })
            })
            .collect();
        nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        nodes
    }

    /// The cluster's totals per sample period: publishes/s, deliveries/s, connections.
    fn series_json(history: &History) -> Value {
        let period = SAMPLE_EVERY.as_millis() as i64;
        let mut buckets: std::collections::BTreeMap<i64, (f64, f64, u64)> = Default::default();
        for series in history.nodes.values() {
            for pair in series.iter().collect::<Vec<_>>().windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let secs = ((b.at_ms - a.at_ms) as f64 / 1000.0).max(0.001);
                let bucket = buckets.entry(b.at_ms / period * period).or_default();
                bucket.0 += b.published.saturating_sub(a.published) as f64 / secs;
                bucket.1 += b.delivered.saturating_sub(a.delivered) as f64 / secs;
                bucket.2 += b.connections;
            }
        }
        let t: Vec<i64> = buckets.keys().copied().collect();
        let published: Vec<f64> = buckets.values().map(|b| round1(b.0)).collect();
        let delivered: Vec<f64> = buckets.values().map(|b| round1(b.1)).collect();
        let connections: Vec<u64> = buckets.values().map(|b| b.2).collect();
        json!({"t": t, "published": published, "delivered": delivered, "connections": connections})
    }

    fn channels_json(history: &History, readings: &[ChannelReading]) -> Value {
        let row = |r: &ChannelReading| {
            json!({
                "channel": r.channel,
                "subscribers": r.subscribers,
                "publishRate": round1(history.channel_rates.get(&r.channel).copied().unwrap_or(0.0)),
                "published": r.published,
            })
        };
        let mut by_subscribers: Vec<&ChannelReading> = readings.iter().filter(|r| r.subscribers > 0).collect();
        by_subscribers.sort_by(|a, b| b.subscribers.cmp(&a.subscribers).then(a.channel.cmp(&b.channel)));
        let rate = |r: &ChannelReading| history.channel_rates.get(&r.channel).copied().unwrap_or(0.0);
        let mut by_rate: Vec<&ChannelReading> = readings.iter().filter(|r| rate(r) > 0.0).collect();
        by_rate.sort_by(|a, b| rate(b).total_cmp(&rate(a)).then(a.channel.cmp(&b.channel)));
        json!({
            "bySubscribers": by_subscribers.into_iter().take(TOP_CHANNELS).map(row).collect::<Vec<_>>(),
            "byPublishRate": by_rate.into_iter().take(TOP_CHANNELS).map(row).collect::<Vec<_>>(),
        })
    }

    async fn tasks_json(&self) -> Value {
        let tasks = self.cluster.tasks();
        let inspection = match tasks.inspect().await {
            Ok(i) => i,
            Err(e) => return json!({"error": e.to_string()}),
        };
        let failed = tasks.failed(0, FAILED_SHOWN - 1).await.unwrap_or_default();
        let failed: Vec<Value> = failed
            .into_iter()
            .map(|f| {
                json!({
                    "raw": f.raw,
                    "reason": f.reason,
                    "error": f.error,
                    "failedAt": f.failed_at,
                    "node": f.server_id,
                    "task": f.task.as_ref().map(|t| &t.name),
                    "id": f.task.as_ref().map(|t| &t.id),
                })
            })
            .collect();
        json!({
            "queues": {
                "global": inspection.global,
                "delayed": inspection.delayed,
                "processing": inspection.processing,
                "failed": inspection.failed,
                "local": inspection.local,
            },
            "workers": inspection.workers,
            "failed": failed,
        })
    }

    async fn rooms_json(&self) -> Value {
        let rooms = self.cluster.rooms();
        let mut out = Vec::new();
        let names = rooms.rooms().await.unwrap_or_default();
        for name in names.iter().take(ROOMS_SHOWN) {
            if let Ok(status) = rooms.status(name).await {
                out.push(json!({"room": status.room, "members": status.members_count}));
            }
        }
        json!({"total": names.len(), "rooms": out})
    }

    async fn find_failed(&self, raw: &str) -> Result<Option<crate::cluster::FailedEntry>, String> {
        let entries = self.cluster.tasks().failed(0, -1).await.map_err(|e| e.to_string())?;
        Ok(entries.into_iter().find(|e| e.raw == raw))
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Publishes/s and deliveries/s between a node's last two samples.
fn last_rates(series: &VecDeque<Sample>) -> (f64, f64) {
    let n = series.len();
    if n < 2 {
        return (0.0, 0.0);
    }
    let (a, b) = (series[n - 2], series[n - 1]);
    let secs = ((b.at_ms - a.at_ms) as f64 / 1000.0).max(0.001);
    (b.published.saturating_sub(a.published) as f64 / secs, b.delivered.saturating_sub(a.delivered) as f64 / secs)
}

fn update_channel_rates(history: &mut History, readings: &[ChannelReading]) {
    let secs = SAMPLE_EVERY.as_secs_f64();
    let mut counts = HashMap::with_capacity(readings.len());
    let mut rates = HashMap::new();
    for r in readings {
        let before = history.channel_counts.get(&r.channel).copied().unwrap_or(r.published);
        let rate = r.published.saturating_sub(before) as f64 / secs;
        if rate > 0.0 {
            rates.insert(r.channel.clone(), rate);
        }
        counts.insert(r.channel.clone(), r.published);
    }
    history.channel_counts = counts;
    history.channel_rates = rates;
}

#[async_trait::async_trait]
impl DashboardSource for DashboardData {
    async fn overview(&self) -> Result<Value, String> {
        let readings = self.server.metrics().track_channels().read();
        let (nodes, series, channels) = {
            let history = self.history();
            (Self::nodes_json(&history), Self::series_json(&history), Self::channels_json(&history, &readings))
        };
        let latency = *self.redis_latency_ms.lock().unwrap_or_else(|p| p.into_inner());
        let m = self.server.metrics().snapshot();
        Ok(json!({
            "node": &*self.cluster.node_id(),
            "layout": self.layout,
            "generatedAt": now_ms(),
            "samplePeriodMs": SAMPLE_EVERY.as_millis() as u64,
            "nodes": nodes,
            "series": series,
            "channels": channels,
            "tasks": self.tasks_json().await,
            "rooms": self.rooms_json().await,
            "redis": {
                "configured": self.cluster.is_redis(),
                "latencyMs": latency,
                "reconnects": m.redis_reconnects,
                "failures": m.redis_failures,
            },
        }))
    }

    async fn channel(&self, name: &str) -> Result<Value, String> {
        let readings = self.server.metrics().track_channels().read();
        let history = self.history();
        let reading = readings.iter().find(|r| r.channel == name);
        Ok(json!({
            "channel": name,
            "subscribers": reading.map(|r| r.subscribers).unwrap_or(0),
            "published": reading.map(|r| r.published).unwrap_or(0),
            "publishRate": round1(history.channel_rates.get(name).copied().unwrap_or(0.0)),
        }))
    }

    async fn retry_failed(&self, raw: &str) -> Result<bool, String> {
        match self.find_failed(raw).await? {
            Some(entry) => self.cluster.tasks().retry_failed(&entry).await.map_err(|e| e.to_string()),
            None => Ok(false),
        }
    }

    async fn remove_failed(&self, raw: &str) -> Result<bool, String> {
        match self.find_failed(raw).await? {
            Some(entry) => self.cluster.tasks().remove_failed(&entry).await.map_err(|e| e.to_string()),
            None => Ok(false),
        }
    }
}
