//! Background work that runs every period until shutdown (client expiry, redis GC, the
//! cache sweeper). Imports nothing internal, so any layer may use it.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs `work` every `period` (first run one period from now) until `shutdown` is cancelled
/// or `work` answers false. A run that overruns delays the next instead of bunching them.
pub(crate) fn every<F, Fut>(period: Duration, shutdown: CancellationToken, mut work: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let period = period.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if !work().await {
                return;
            }
        }
    })
}
