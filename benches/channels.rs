//! Channel micro benchmarks: validating names, expanding a name into the patterns that match
//! it, and finding the recipients of a publish among many wildcard subscriptions (expansion +
//! hash lookups, as the engines do, against a scan of every pattern with `matches`).
//! Run with `cargo bench --bench channels`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use actioncluster::protocol::channel;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::time::Duration;

const NAMES: [&str; 4] =
    ["/a", "/chat/lobby", "/chat/rooms/room-42/messages", "/org/7/team/3/project/12/events/created"];

fn expand(c: &mut Criterion) {
    let mut group = c.benchmark_group("channels/expand");
    for name in NAMES {
        let depth = name.matches('/').count();
        group.bench_with_input(BenchmarkId::new("depth", depth), name, |b, name| {
            b.iter(|| channel::expand(black_box(name)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("channels/validate");
    for name in NAMES {
        let depth = name.matches('/').count();
        group.bench_with_input(BenchmarkId::new("depth", depth), name, |b, name| {
            b.iter(|| channel::is_valid_name(black_box(name)))
        });
    }
    group.finish();
}

/// `subscriptions` distinct subscriptions over a tree `/chat/rooms/room-N/...`: a third
/// concrete names, a third `/*` patterns, a third `/**` patterns, plus `/**` itself. Each
/// subscription has `per` subscribers (client numbers).
fn table(subscriptions: usize, per: u32) -> HashMap<String, HashSet<u32>> {
    let mut table: HashMap<String, HashSet<u32>> = HashMap::new();
    let mut client = 0u32;
    for i in 0..subscriptions {
        let room = i / 3;
        let pattern = match i % 3 {
            0 => format!("/chat/rooms/room-{room}/messages"),
            1 => format!("/chat/rooms/room-{room}/*"),
            _ => format!("/chat/rooms/room-{room}/**"),
        };
        let set = table.entry(pattern).or_default();
        for _ in 0..per {
            set.insert(client);
            client += 1;
        }
    }
    table.entry("/**".into()).or_default().insert(client);
    table.entry("/chat/**".into()).or_default().insert(client + 1);
    table
}

/// Recipients of a publish as the engines find them: expand, look each pattern up, dedupe.
fn recipients_by_expansion(table: &HashMap<String, HashSet<u32>>, name: &str) -> Vec<u32> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for pattern in channel::expand(name) {
        if let Some(set) = table.get(&pattern) {
            for &id in set {
                if seen.insert(id) {
                    out.push(id);
                }
            }
        }
    }
    out
}

/// The naive alternative: test every subscription against the name.
fn recipients_by_scan(table: &HashMap<String, HashSet<u32>>, name: &str) -> Vec<u32> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (pattern, set) in table {
        if channel::matches(pattern, name) {
            for &id in set {
                if seen.insert(id) {
                    out.push(id);
                }
            }
        }
    }
    out
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("channels/recipients");
    let name = "/chat/rooms/room-500/messages";
    for subscriptions in [100usize, 10_000] {
        let table = table(subscriptions, 1);
        let expected = recipients_by_expansion(&table, name).len();
        assert_eq!(expected, recipients_by_scan(&table, name).len());
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("expansion", subscriptions), &table, |b, table| {
            b.iter(|| recipients_by_expansion(table, black_box(name)))
        });
        group.bench_with_input(BenchmarkId::new("scan", subscriptions), &table, |b, table| {
            b.iter(|| recipients_by_scan(table, black_box(name)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("channels/matches");
    for (pattern, name) in [
        ("/chat/rooms/room-42/messages", "/chat/rooms/room-42/messages"),
        ("/chat/rooms/*", "/chat/rooms/room-42"),
        ("/chat/**", "/chat/rooms/room-42/messages"),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(pattern), &(pattern, name), |b, (p, n)| {
            b.iter(|| channel::matches(black_box(p), black_box(n)))
        });
    }
    group.finish();
}

#[path = "shared/criterion_config.rs"]
mod criterion_config;

fn config() -> Criterion {
    criterion_config::short(Duration::from_secs(2), 30)
}

criterion_group! { name = benches; config = config(); targets = expand, matching }
criterion_main!(benches);
