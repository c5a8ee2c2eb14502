//! Recovery after redis may have lost its data. A redis restarted without persistence comes
//! back empty: the clients this node holds no longer exist there, yet their held connects and
//! sockets would stay silent until the connect times out. After every pub/sub gap, and when
//! redis's `run_id` changes, the node checks its held clients in pipelined batches and tells
//! the observer which ones are gone, so they are answered at once with Faye's unknown-client
//! reply and handshake again.

use super::Inner;
use std::sync::Arc;

/// Client ids checked per round trip (one pipelined batch of ZSCOREs).
const CHECK_BATCH: usize = 500;
/// Retries of a failed check, [`CHECK_RETRY`] apart.
const CHECK_ATTEMPTS: u32 = 20;
const CHECK_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

impl Inner {
    /// Reads redis's `run_id` (INFO server); true when it differs from the one seen before,
    /// i.e. this is another redis process than before, whose data may be gone.
    pub(super) async fn run_id_changed(&self) -> bool {
        let info: redis::RedisResult<String> = redis::cmd("INFO").arg("server").query_async(&mut self.con()).await;
        let Ok(info) = self.check(info) else { return false };
        let Some(run_id) = info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|s| s.trim().to_string()) else {
            return false;
        };
        let mut known = self.run_id.lock().unwrap_or_else(|p| p.into_inner());
        match known.replace(run_id.clone()) {
            Some(old) if old != run_id => {
                tracing::warn!(old, new = %run_id, "redis restarted (run_id changed); checking held clients");
                true
            }
            _ => false,
        }
    }

    /// Checks every client the observer holds, [`CHECK_BATCH`] per round trip, and reports
    /// the ones redis no longer knows (or counts as expired) through `client_lost`. Returns
    /// how many were lost; a redis error stops the pass (the next gap runs it again).
    pub(super) async fn verify_held_clients(&self) -> usize {
        let Some(observer) = self.observer.get() else { return 0 };
        let held = observer.held_clients();
        let mut lost = 0;
        for chunk in held.chunks(CHECK_BATCH) {
            let mut attempt = 0;
            let gone = loop {
                match self.missing(chunk).await {
                    Ok(gone) => break gone,
                    // Right after redis returns, the command connection may still be
                    // reconnecting: its first commands fail.
                    Err(e) if attempt < CHECK_ATTEMPTS => {
                        attempt += 1;
                        tracing::debug!(error = %e, attempt, "checking held clients failed; retrying");
                        tokio::time::sleep(CHECK_RETRY).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not check held clients after a redis gap");
                        return lost;
                    }
                }
            };
            for id in gone {
                observer.client_lost(id);
                lost += 1;
            }
        }
        if lost > 0 {
            tracing::warn!(lost, held = held.len(), "held clients unknown to redis; told them to handshake again");
        }
        lost
    }

    /// The ids among `ids` that redis does not hold or counts as gone, in one round trip.
    async fn missing<'a>(&self, ids: &'a [Arc<str>]) -> Result<Vec<&'a str>, super::EngineError> {
        let clients = self.keys.clients();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.zscore(&clients, id.as_ref());
        }
        let scores: Vec<Option<f64>> = self.check(pipe.query_async(&mut self.con()).await)?;
        let cutoff = self.exists_cutoff();
        Ok(ids
            .iter()
            .zip(scores)
            .filter(|(_, score)| !score.is_some_and(|s| s as i64 > cutoff))
            .map(|(id, _)| id.as_ref())
            .collect())
    }
}
