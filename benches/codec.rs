//! Codec micro benchmarks: parsing request bodies and encoding deliveries, on batches shaped
//! like real Faye traffic (a chat-style payload with an auth `ext`, a connect followed by
//! publishes, a delivery frame of many messages). Run with `cargo bench --bench codec`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use actioncluster::protocol::codec;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const CLIENT_ID: &str = "0x3kq8z1mvb0c2l9w7r5t4y6u8i0o2p4";

/// One published message as a browser chat client sends it (about 300 bytes).
fn publish(i: usize) -> String {
    format!(
        r#"{{"channel":"/chat/rooms/lobby-{room}","data":{{"user":"user-{i}","text":"Hello everyone, message number {i} with some text to make it realistic","sentAt":1718000000{i:03},"tags":["a","b"],"seq":{i}}},"clientId":"{CLIENT_ID}","id":"{id}","ext":{{"auth":{{"token":"eyJhbGciOiJIUzI1NiJ9.abc.def","user":"user-{i}"}}}}}}"#,
        room = i % 7,
        id = i + 2,
    )
}

fn connect() -> String {
    format!(r#"{{"channel":"/meta/connect","clientId":"{CLIENT_ID}","connectionType":"websocket","id":"1"}}"#)
}

/// A request body: one connect followed by `n` publishes, as a long-polling client batches them.
fn batch(n: usize) -> Vec<u8> {
    let mut parts = vec![connect()];
    parts.extend((0..n).map(publish));
    format!("[{}]", parts.join(",")).into_bytes()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/decode");
    let handshake = br#"{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["websocket","eventsource","long-polling","cross-origin-long-polling","callback-polling"],"id":"1"}"#;
    group.throughput(Throughput::Bytes(handshake.len() as u64));
    group.bench_function("handshake", |b| b.iter(|| codec::decode(black_box(handshake), 1 << 20).unwrap()));
    for n in [1usize, 10, 100] {
        let body = batch(n);
        group.throughput(Throughput::Elements(n as u64 + 1));
        group.bench_with_input(BenchmarkId::new("connect+publishes", n), &body, |b, body| {
            b.iter(|| codec::decode(black_box(body), 1 << 20).unwrap())
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/encode");
    // The server encodes each published message once, for delivery (clientId dropped)...
    let message = codec::decode(publish(1).as_bytes(), 1 << 20).unwrap().remove(0).for_delivery();
    group.throughput(Throughput::Elements(1));
    group.bench_function("delivery", |b| b.iter(|| codec::encode(black_box(&message))));
    // ...then splices the encoded bytes of a client's pending messages into one frame.
    for n in [1usize, 10, 100] {
        let parts: Vec<Bytes> = (0..n)
            .map(|i| codec::encode(&codec::decode(publish(i).as_bytes(), 1 << 20).unwrap().remove(0).for_delivery()))
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("frame", n), &parts, |b, parts| {
            b.iter(|| codec::encode_array(black_box(parts).iter().map(|p| p.as_ref())))
        });
    }
    // Replies: one ack per publish of a 100-message batch, encoded and joined.
    let requests = codec::decode(&batch(100), 1 << 20).unwrap();
    group.throughput(Throughput::Elements(requests.len() as u64));
    group.bench_function("acks/100", |b| {
        b.iter(|| {
            let acks: Vec<Bytes> = black_box(&requests)
                .iter()
                .map(|m| {
                    let mut reply = m.reply();
                    reply.successful = Some(true);
                    codec::encode(&reply)
                })
                .collect();
            codec::encode_array(acks.iter().map(|a| a.as_ref()))
        })
    });
    group.finish();
}

#[path = "shared/criterion_config.rs"]
mod criterion_config;

fn config() -> Criterion {
    criterion_config::short(Duration::from_secs(2), 30)
}

criterion_group! { name = benches; config = config(); targets = decode, encode }
criterion_main!(benches);
