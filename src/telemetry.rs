//! Metric names and the Prometheus `/metrics` rendering. Counters are plain atomics owned by
//! each node (several nodes can run in one process, e.g. in tests), updated on the hot path
//! with relaxed ordering and rendered on scrape. Imports nothing internal.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The Bayeux error codes counted separately (429: handshakes refused by the rate limit);
/// anything else counts as `other`.
const ERROR_CODES: [u16; 13] = [300, 301, 302, 400, 401, 402, 403, 404, 405, 406, 407, 429, 500];

/// Upper bounds (seconds) of the redis round-trip latency histogram buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0];

/// Persistent connections and in-flight requests, by Faye connection type.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    /// Open websockets.
    WebSocket,
    /// Open EventSource streams.
    EventSource,
    /// Long-polling requests in flight (held connects included).
    LongPolling,
    /// Callback-polling (JSONP) requests in flight.
    CallbackPolling,
}

impl Transport {
    const ALL: [Transport; 4] =
        [Transport::WebSocket, Transport::EventSource, Transport::LongPolling, Transport::CallbackPolling];

    fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::EventSource => "eventsource",
            Transport::LongPolling => "long-polling",
            Transport::CallbackPolling => "callback-polling",
        }
    }
}

/// A latency histogram with [`LATENCY_BUCKETS`] (cumulative buckets, a sum and a count).
#[derive(Debug, Default)]
struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    micros: AtomicU64,
}

impl LatencyHistogram {
    fn record(&self, elapsed: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", load(&self.buckets[i]));
        }
        let count = load(&self.count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", load(&self.micros) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Outcomes of an auth hook call, as labelled in `/metrics`.
const HOOK_OUTCOMES: [&str; 3] = ["allow", "deny", "error"];

/// Every counter and gauge of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: [AtomicI64; 4],
    handshakes: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    subscriptions: AtomicI64,
    errors: [AtomicU64; ERROR_CODES.len() + 1],
    slow_consumers: AtomicU64,
    redis_failures: AtomicU64,
    redis_latency: LatencyHistogram,
    redis_reconnects: AtomicU64,
    inbox_entries_lost: AtomicU64,
    sessions_moved: AtomicU64,
    /// Set once access control is configured: its metrics are rendered from then on.
    access_control: std::sync::atomic::AtomicBool,
    access_denied: [AtomicU64; 3],
    auth_hook_calls: [AtomicU64; HOOK_OUTCOMES.len()],
    auth_hook_latency: LatencyHistogram,
    /// Per-channel activity on this node, kept only once the dashboard asks for it.
    channels: std::sync::OnceLock<ChannelActivity>,
}

/// Channels tracked at most; past it new channels are not counted (the busiest are known).
const MAX_TRACKED_CHANNELS: usize = 100_000;

/// Subscribers and publishes by channel on this node (the dashboard's "busiest channels").
#[derive(Debug, Default)]
pub struct ChannelActivity {
    channels: dashmap::DashMap<Box<str>, ChannelCounters>,
}

/// One channel's counters.
#[derive(Debug, Default)]
struct ChannelCounters {
    subscribers: AtomicI64,
    published: AtomicU64,
}

/// A channel's counters as read by [`ChannelActivity::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelReading {
    /// The channel or pattern.
    pub channel: String,
    /// Subscriptions to it held through this node.
    pub subscribers: u64,
    /// Messages published on it through this node so far.
    pub published: u64,
}

impl ChannelActivity {
    fn add(&self, channel: &str, subscribers: i64, published: u64) {
        if let Some(c) = self.channels.get(channel) {
            c.subscribers.fetch_add(subscribers, Ordering::Relaxed);
            c.published.fetch_add(published, Ordering::Relaxed);
            return;
        }
        if self.channels.len() >= MAX_TRACKED_CHANNELS {
            return;
        }
        let c = self.channels.entry(channel.into()).or_default();
        c.subscribers.fetch_add(subscribers, Ordering::Relaxed);
        c.published.fetch_add(published, Ordering::Relaxed);
    }

    /// Every tracked channel's counters.
    pub fn read(&self) -> Vec<ChannelReading> {
        self.channels
            .iter()
            .map(|e| ChannelReading {
                channel: e.key().to_string(),
                subscribers: e.subscribers.load(Ordering::Relaxed).max(0) as u64,
                published: e.published.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Forgets channels with no subscriber whose publish count is in `idle` (unchanged since
    /// the caller's last look), so short-lived channels do not pile up.
    pub fn prune(&self, idle: impl Fn(&str, u64) -> bool) {
        self.channels.retain(|name, c| {
            c.subscribers.load(Ordering::Relaxed) > 0 || !idle(name, c.published.load(Ordering::Relaxed))
        });
    }
}

/// The node's counters at one instant (for the dashboard's samples).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Open connections by transport label (`websocket`, `eventsource`, ...).
    pub connections: Vec<(&'static str, u64)>,
    /// Subscriptions made through this node and still active.
    pub subscriptions: u64,
    /// Messages accepted for publishing so far.
    pub published: u64,
    /// Messages written out to clients so far.
    pub delivered: u64,
    /// Redis round trips that failed so far.
    pub redis_failures: u64,
    /// Reconnections of the redis listener so far.
    pub redis_reconnects: u64,
}

/// Decrements a connection gauge when dropped: hold it for the connection's lifetime.
#[derive(Debug)]
pub struct ConnectionGuard<'a> {
    gauge: &'a AtomicI64,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a connection (or request) of `transport` until the guard drops.
    pub fn connection(&self, transport: Transport) -> ConnectionGuard<'_> {
        let gauge = &self.connections[transport as usize];
        gauge.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard { gauge }
    }

    /// Increments the connection gauge without a guard (pair with [`Metrics::connection_closed`]).
    pub fn connection_opened(&self, transport: Transport) {
        self.connections[transport as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Decrements the connection gauge.
    pub fn connection_closed(&self, transport: Transport) {
        self.connections[transport as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// A successful handshake.
    pub fn handshake(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    /// A message accepted for publishing.
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// A message accepted for publishing on `channel`.
    pub fn published_on(&self, channel: &str) {
        self.published.fetch_add(1, Ordering::Relaxed);
        if let Some(activity) = self.channels.get() {
            activity.add(channel, 0, 1);
        }
    }

    /// Starts counting activity by channel (the dashboard); returns the counters.
    pub fn track_channels(&self) -> &ChannelActivity {
        self.channels.get_or_init(ChannelActivity::default)
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections: Transport::ALL
                .iter()
                .map(|t| (t.label(), self.connections[*t as usize].load(Ordering::Relaxed).max(0) as u64))
                .collect(),
            subscriptions: self.subscriptions.load(Ordering::Relaxed).max(0) as u64,
            published: load(&self.published),
            delivered: load(&self.delivered),
            redis_failures: load(&self.redis_failures),
            redis_reconnects: load(&self.redis_reconnects),
        }
    }

    /// `n` messages written out to clients.
    pub fn delivered(&self, n: usize) {
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A subscription added (`+1`) or removed (`-1`) through this node.
    pub fn subscriptions(&self, channel: &str, delta: i64) {
        self.subscriptions.fetch_add(delta, Ordering::Relaxed);
        if let Some(activity) = self.channels.get() {
            activity.add(channel, delta, 0);
        }
    }

    /// A reply carrying an error in `code:params:message` form.
    pub fn error(&self, error_text: &str) {
        let code = error_text.split(':').next().and_then(|c| c.parse::<u16>().ok());
        let slot = code.and_then(|c| ERROR_CODES.iter().position(|&k| k == c)).unwrap_or(ERROR_CODES.len());
        self.errors[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// A client disconnected for falling too far behind.
    pub fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    /// One redis round trip and how long it took.
    pub fn redis_round_trip(&self, elapsed: Duration, ok: bool) {
        if !ok {
            self.redis_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.redis_latency.record(elapsed);
    }

    /// Access control is on: render its counters.
    pub fn access_control_enabled(&self) {
        self.access_control.store(true, Ordering::Relaxed);
    }

    /// Access control refused a `handshake`, `subscribe` or `publish`.
    pub fn access_denied(&self, operation: &str) {
        let i = match operation {
            "handshake" => 0,
            "subscribe" => 1,
            _ => 2,
        };
        self.access_denied[i].fetch_add(1, Ordering::Relaxed);
    }

    /// One auth hook call: its outcome (`allow`, `deny`, `error`) and how long it took.
    pub fn auth_hook_call(&self, outcome: &str, elapsed: Duration) {
        let i = HOOK_OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(HOOK_OUTCOMES.len() - 1);
        self.auth_hook_calls[i].fetch_add(1, Ordering::Relaxed);
        self.auth_hook_latency.record(elapsed);
    }

    /// The redis pub/sub listener reconnected.
    pub fn redis_reconnect(&self) {
        self.redis_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Native layout: `n` inbox entries were dropped by the inbox's length bound before this
    /// node read them (it fell that far behind).
    pub fn inbox_entries_lost(&self, n: u64) {
        self.inbox_entries_lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Native layout: a client's session moved to this node from another.
    pub fn session_moved(&self) {
        self.sessions_moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages accepted for publishing so far.
    pub fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Renders the Prometheus text exposition format. `clients` and `queued` are gauges the
    /// caller reads at scrape time (`queued` is `None` where counting it would be costly).
    pub fn render(&self, clients: usize, queued: Option<u64>, redis_configured: bool) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP actioncluster_connections Open websockets/EventSource streams and in-flight polling requests."
        );
        let _ = writeln!(out, "# TYPE actioncluster_connections gauge");
        for t in Transport::ALL {
            let v = self.connections[t as usize].load(Ordering::Relaxed).max(0);
            let _ = writeln!(out, "actioncluster_connections{{transport=\"{}\"}} {v}", t.label());
        }
        gauge(&mut out, "actioncluster_clients", "Clients with a session on this node.", clients as f64);
        let subs = self.subscriptions.load(Ordering::Relaxed).max(0);
        gauge(
            &mut out,
            "actioncluster_subscriptions",
            "Subscriptions made through this node and still active.",
            subs as f64,
        );
        if let Some(q) = queued {
            gauge(
                &mut out,
                "actioncluster_queued_messages",
                "Messages queued for clients, not yet delivered.",
                q as f64,
            );
        }
        counter(&mut out, "actioncluster_handshakes_total", "Successful handshakes.", load(&self.handshakes));
        counter(
            &mut out,
            "actioncluster_messages_published_total",
            "Messages accepted for publishing.",
            load(&self.published),
        );
        counter(
            &mut out,
            "actioncluster_messages_delivered_total",
            "Messages written out to clients.",
            load(&self.delivered),
        );
        counter(
            &mut out,
            "actioncluster_slow_consumers_total",
            "Clients disconnected for falling too far behind.",
            load(&self.slow_consumers),
        );
        let _ = writeln!(out, "# HELP actioncluster_errors_total Replies carrying a Bayeux error, by code.");
        let _ = writeln!(out, "# TYPE actioncluster_errors_total counter");
        for (i, code) in ERROR_CODES.iter().enumerate() {
            let _ = writeln!(out, "actioncluster_errors_total{{code=\"{code}\"}} {}", load(&self.errors[i]));
        }
        let _ = writeln!(out, "actioncluster_errors_total{{code=\"other\"}} {}", load(&self.errors[ERROR_CODES.len()]));
        if redis_configured {
            counter(
                &mut out,
                "actioncluster_redis_commands_total",
                "Redis round trips.",
                load(&self.redis_latency.count),
            );
            counter(
                &mut out,
                "actioncluster_redis_failures_total",
                "Redis round trips that failed.",
                load(&self.redis_failures),
            );
            counter(
                &mut out,
                "actioncluster_redis_reconnects_total",
                "Reconnections of the redis pub/sub listener.",
                load(&self.redis_reconnects),
            );
            counter(
                &mut out,
                "actioncluster_inbox_entries_lost_total",
                "Native layout: inbox entries (messages, session changes) dropped by the length bound before this node read them.",
                load(&self.inbox_entries_lost),
            );
            counter(
                &mut out,
                "actioncluster_sessions_moved_total",
                "Native layout: client sessions taken over from another node.",
                load(&self.sessions_moved),
            );
            self.redis_latency.render(&mut out, "actioncluster_redis_round_trip_seconds", "Redis round-trip latency.");
        }
        if self.access_control.load(Ordering::Relaxed) {
            let _ = writeln!(
                out,
                "# HELP actioncluster_access_denied_total Operations refused by access control (tokens, rules, hook)."
            );
            let _ = writeln!(out, "# TYPE actioncluster_access_denied_total counter");
            for (i, op) in ["handshake", "subscribe", "publish"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "actioncluster_access_denied_total{{operation=\"{op}\"}} {}",
                    load(&self.access_denied[i])
                );
            }
            let _ = writeln!(out, "# HELP actioncluster_auth_hook_calls_total Auth hook calls by outcome.");
            let _ = writeln!(out, "# TYPE actioncluster_auth_hook_calls_total counter");
            for (i, outcome) in HOOK_OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "actioncluster_auth_hook_calls_total{{outcome=\"{outcome}\"}} {}",
                    load(&self.auth_hook_calls[i])
                );
            }
            self.auth_hook_latency.render(&mut out, "actioncluster_auth_hook_seconds", "Auth hook call latency.");
        }
        out
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.published();
        m.delivered(3);
        m.error("403:/meta/x:Forbidden channel");
        m.error("garbage");
        let _ws = m.connection(Transport::WebSocket);
        let text = m.render(2, Some(5), false);
        assert!(text.contains("actioncluster_messages_published_total 1\n"));
        assert!(text.contains("actioncluster_messages_delivered_total 3\n"));
        assert!(text.contains("actioncluster_errors_total{code=\"403\"} 1\n"));
        assert!(text.contains("actioncluster_errors_total{code=\"other\"} 1\n"));
        assert!(text.contains("actioncluster_connections{transport=\"websocket\"} 1\n"));
        assert!(text.contains("actioncluster_clients 2\n"));
        assert!(!text.contains("redis"));
        drop(_ws);
        assert!(m.render(0, None, true).contains("actioncluster_connections{transport=\"websocket\"} 0\n"));
    }
}
