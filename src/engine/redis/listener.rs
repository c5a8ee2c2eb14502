//! The supervised pub/sub listener. Every node hears every notification and acts on the
//! clients it holds. When the subscription drops (redis restart, CLIENT KILL, redis
//! disconnecting a slow subscriber) the listener reconnects with backoff, resubscribes, and
//! asks the node to re-drain every client it holds: notifications sent during the gap are
//! gone, the queued messages are not.

use super::Inner;
use futures_util::StreamExt;
use rand::Rng;
use std::sync::Weak;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an idle subscription is checked with PING.
const HEALTH_CHECK: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
                        // Messages may have been queued while nobody listened.
                        if let Some(o) = engine.observer.get() {
                            o.redrain_all();
                        }
                    }
                    let (mut sink, mut stream) = pubsub.split();
                    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + HEALTH_CHECK, HEALTH_CHECK);
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => {
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
                            _ = check.tick() => {
                                let alive = tokio::time::timeout(Duration::from_secs(2), sink.ping::<String>()).await;
                                if !matches!(alive, Ok(Ok(_))) {
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
