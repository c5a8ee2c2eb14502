//! Memory-engine micro benchmarks: one publish queued for 1, 100 and 10,000 subscribers of
//! its channel (half of them subscribed through wildcards), and the recipients' drain.
//! Queues are drained outside the timed region so they stay short.
//! Run with `cargo bench --bench engine`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use actioncluster::engine::memory::MemoryEngine;
use actioncluster::engine::{Engine, EngineObserver, Envelope};
use actioncluster::protocol::codec;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts the node notifications, as the server's observer would receive them.
#[derive(Default)]
struct Counter(AtomicU64);

impl EngineObserver for Counter {
    fn messages_waiting(&self, _client_id: &str) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn client_destroyed(&self, _client_id: &str) {}
}

struct Setup {
    engine: MemoryEngine,
    clients: Vec<String>,
    message: actioncluster::Message,
}

async fn setup(subscribers: usize) -> Setup {
    let engine = MemoryEngine::new(Duration::from_secs(3600));
    engine.attach(Arc::new(Counter::default()));
    let mut clients = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let id = engine.create_client().await.unwrap();
        let subscription = match i % 4 {
            0 | 1 => "/bench/room/lobby",
            2 => "/bench/room/*",
            _ => "/bench/**",
        };
        engine.subscribe(&id, subscription).await.unwrap();
        clients.push(id);
    }
    // Another channel's subscribers, which the publish must not touch.
    for _ in 0..100 {
        let id = engine.create_client().await.unwrap();
        engine.subscribe(&id, "/bench/room/other").await.unwrap();
    }
    let body = br#"{"channel":"/bench/room/lobby","data":{"user":"u-1","text":"hello, a typical chat message","seq":1},"clientId":"0x3kq8z1mvb0c2l9w7r5t4y6u8i0o2p4","id":"17"}"#;
    let message = codec::decode(body, 1 << 20).unwrap().remove(0);
    Setup { engine, clients, message }
}

async fn drain(setup: &Setup) {
    for id in &setup.clients {
        setup.engine.take_queued(id).await.unwrap();
    }
}

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("engine/memory/publish");
    for subscribers in [1usize, 100, 10_000] {
        let setup = rt.block_on(setup(subscribers));
        // Drain every so often (untimed) so queues hold at most `every` messages.
        let every = (100_000 / subscribers).clamp(1, 1000) as u64;
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(BenchmarkId::new("subscribers", subscribers), &setup, |b, setup| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut timed = Duration::ZERO;
                    for i in 0..iters {
                        let start = Instant::now();
                        setup.engine.publish(Envelope::new(&setup.message)).await.unwrap();
                        timed += start.elapsed();
                        if (i + 1) % every == 0 {
                            drain(setup).await;
                        }
                    }
                    drain(setup).await;
                    timed
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("engine/memory/publish+drain");
    for subscribers in [1usize, 100, 10_000] {
        let setup = rt.block_on(setup(subscribers));
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(BenchmarkId::new("subscribers", subscribers), &setup, |b, setup| {
            b.iter(|| {
                rt.block_on(async {
                    setup.engine.publish(Envelope::new(&setup.message)).await.unwrap();
                    drain(setup).await;
                })
            })
        });
    }
    group.finish();
}

#[path = "shared/criterion_config.rs"]
mod criterion_config;

fn config() -> Criterion {
    criterion_config::short(Duration::from_secs(3), 20)
}

criterion_group! { name = benches; config = config(); targets = publish }
criterion_main!(benches);
