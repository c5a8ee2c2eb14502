//! The supervised pub/sub listener. Every node hears every notification and acts on the
//! clients it holds. When the subscription drops (redis restart, CLIENT KILL, redis
//! disconnecting a slow subscriber) the listener reconnects with backoff, resubscribes, and
//! asks the node to re-drain every client it holds: notifications sent during the gap are
//! gone, the queued messages are not. It also has the node's held clients checked (see
//! recovery.rs): a redis that restarted empty no longer knows them.

use super::Inner;
use futures_util::StreamExt;
use futures_util::future::{FusedFuture, FutureExt};
use rand::Rng;
use std::sync::Weak;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an idle subscription is checked with PING.
const HEALTH_CHECK: Duration = Duration::from_secs(5);
/// How long a health-check PING may take before the subscription counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Kept short: clients of a restarted redis are told to handshake again only once the
/// listener is back, so this bounds how long after redis returns delivery resumes.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// One health-check PING on the subscription's connection, bounded by [`PING_TIMEOUT`].
async fn health_ping(mut sink: redis::aio::PubSubSink) -> bool {
    matches!(tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await, Ok(Ok(_)))
}

pub(super) async fn run(inner: Weak<Inner>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut lost_once = false;
    loop {
        let Some(engine) = inner.upgrade() else { return };
        let endpoint = engine.endpoint.clone();
        let messages_channel = engine.keys.messages_channel();
        let close_channel = engine.keys.close_channel();
        drop(engine);

        let connected = tokio::select! {
            r = endpoint.pubsub() => r,
            _ = shutdown.cancelled() => return,
        };
        match connected {
            Ok(mut pubsub) => {
                let subscribed = async {
                    pubsub.subscribe(&messages_channel).await?;
                    pubsub.subscribe(&close_channel).await
                };
                if let Err(e) = subscribed.await {
                    tracing::warn!(error = %e, "redis pub/sub subscribe failed");
                } else {
                    backoff = BACKOFF_MIN;
                    if let Some(engine) = inner.upgrade() {
                        engine.listener_up();
                        if lost_once {
                            engine.metrics.redis_reconnect();
                            tracing::info!("redis pub/sub resubscribed; re-draining held clients");
                        }
                        // Redis may have lost its data during the gap (on the first connection
                        // this records its run_id): clients it forgot are answered first, then
                        // every held client re-drains, since messages may have been queued while
                        // nobody listened. In that order, so a connect woken by the re-drain
                        // is already known to be lost.
                        let verifier = engine.clone();
                        tokio::spawn(async move {
                            let changed = verifier.run_id_changed().await;
                            if changed || lost_once {
                                verifier.verify_held_clients().await;
                            }
                            if let Some(o) = verifier.observer.get() {
                                o.redrain_all();
                            }
                        });
                    }
                    let (sink, mut stream) = pubsub.split();
                    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + HEALTH_CHECK, HEALTH_CHECK);
                    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    // The health check: a PING when the subscription was quiet for a whole
                    // period (traffic proves it alive). The stream keeps being read while the
                    // PING is in flight: its answer arrives through the same connection, and
                    // waiting for it without reading stalled every delivery by 100-150 ms.
                    let mut heard_since_check = false;
                    let mut ping = std::pin::pin!(futures_util::future::Fuse::terminated());
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => {
                                    heard_since_check = true;
                                    let Some(engine) = inner.upgrade() else { return };
                                    let Ok(id) = msg.get_payload::<String>() else { continue };
                                    if let Some(o) = engine.observer.get() {
                                        if msg.get_channel_name() == messages_channel {
                                            o.messages_waiting(&id);
                                        } else if msg.get_channel_name() == close_channel {
                                            o.client_closed(&id);
                                        }
                                    }
                                }
                                None => break,
                            },
                            _ = check.tick(), if ping.is_terminated() => {
                                if !std::mem::take(&mut heard_since_check) {
                                    ping.set(health_ping(sink.clone()).fuse());
                                }
                                // A redis replaced without this subscription noticing (a
                                // proxy in between, a failover) shows as a new run_id.
                                if let Some(engine) = inner.upgrade() {
                                    tokio::spawn(async move {
                                        if engine.run_id_changed().await {
                                            engine.verify_held_clients().await;
                                            if let Some(o) = engine.observer.get() {
                                                o.redrain_all();
                                            }
                                        }
                                    });
                                }
                            }
                            alive = &mut ping => {
                                if !alive {
                                    tracing::warn!("redis pub/sub health check failed; reconnecting");
                                    break;
                                }
                            }
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    if let Some(engine) = inner.upgrade() {
                        engine.listener_down();
                    }
                    lost_once = true;
                }
            }
            Err(e) => {
                if let Some(engine) = inner.upgrade() {
                    engine.mark_down(&e.to_string());
                }
            }
        }
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::select! {
            _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, unreachable_pub)]
#[path = "../../../tests/common/redis_server.rs"]
mod redis_server;

#[cfg(test)]
mod tests {
    use super::*;

    /// On a subscribed connection redis answers PING with `["pong", ""]`, not a string: the
    /// check must accept it, or it "fails" and reconnects the listener every period.
    #[tokio::test]
    async fn health_ping_succeeds_on_a_subscribed_connection() {
        let redis = redis_server::RedisServer::start().await;
        let client = redis::Client::open(redis.url()).expect("redis url");
        let mut pubsub = client.get_async_pubsub().await.expect("pub/sub connection");
        pubsub.subscribe("health").await.expect("subscribed");
        let (sink, mut stream) = pubsub.split();
        let ping = health_ping(sink);
        tokio::pin!(ping);
        let alive = loop {
            tokio::select! {
                alive = &mut ping => break alive,
                _ = stream.next() => {}
            }
        };
        assert!(alive);
    }
}
