//! Access control's per-client credentials in redis, for both redis layouts: one string key
//! per client (named by the layout's `Keys`), set with an expiry and deleted on disconnect.

use bytes::Bytes;
use redis::aio::ConnectionLike;
use std::time::Duration;

/// Stores (`SET … PX`) or forgets (`DEL`) one client's credentials.
pub(crate) async fn store<C: ConnectionLike + Send>(
    con: &mut C,
    key: &str,
    credentials: Option<Bytes>,
    ttl: Duration,
) -> redis::RedisResult<()> {
    match credentials {
        Some(value) => {
            let ttl_ms = (ttl.as_millis() as u64).max(1);
            redis::cmd("SET").arg(key).arg(value.as_ref()).arg("PX").arg(ttl_ms).query_async(con).await
        }
        None => redis::cmd("DEL").arg(key).query_async(con).await,
    }
}

/// Reads one client's credentials.
pub(crate) async fn load<C: ConnectionLike + Send>(con: &mut C, key: &str) -> redis::RedisResult<Option<Bytes>> {
    let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(con).await?;
    Ok(value.map(Bytes::from))
}
