//! The inbox reader: reads this node's stream in order from the last entry it applied, on a
//! dedicated connection, and applies each entry (see `scripts.rs` for the entry types). A
//! dropped connection is reopened with backoff and reading resumes where it stopped, so a gap
//! in the connection loses nothing. Applied entries are trimmed from the stream.

use super::Inner;
use crate::engine::{Envelope, SharedEnvelope};
use bytes::Bytes;
use redis::Value;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Entries read per round trip.
const BATCH: usize = 1024;
/// How long one blocking read waits for entries.
const BLOCK: Duration = Duration::from_secs(2);
/// A read that has not answered this long after its block ended counts as a lost connection.
const READ_GRACE: Duration = Duration::from_secs(3);
/// Longest a read batch keeps its connections' wake-ups back while more entries arrive.
const COALESCE_AT_MOST: Duration = Duration::from_millis(2);
/// Applied entries are trimmed at least this often while entries flow.
const TRIM_EVERY: Duration = Duration::from_millis(200);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A stream entry id (`ms-seq`), ordered as redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl EntryId {
    /// How many entries were skipped between `self` (the last one read; the default before
    /// any) and `next`, the ids being `1-0`, `1-1`, … as the scripts add them.
    fn missed_before(self, next: EntryId) -> u64 {
        if next.ms != 1 {
            return 0;
        }
        let expected = if self == EntryId::default() { 0 } else { self.seq + 1 };
        next.seq.saturating_sub(expected)
    }
}

/// True when the inbox at `key` is not the one read up to `last`: it is gone, or it was made
/// anew (its newest id is older than `last`).
async fn lost_inbox(con: &mut impl redis::aio::ConnectionLike, key: &str, last: EntryId) -> bool {
    if last == EntryId::default() {
        return false;
    }
    let info: redis::RedisResult<Value> = redis::cmd("XINFO").arg("STREAM").arg(key).query_async(con).await;
    let Ok(info) = info else { return true };
    let newest = match &info {
        Value::Array(items) => items
            .chunks_exact(2)
            .find(|p| bytes_of(&p[0]) == Some(b"last-generated-id".as_slice()))
            .and_then(|p| bytes_of(&p[1])),
        Value::Map(items) => items
            .iter()
            .find(|(k, _)| bytes_of(k) == Some(b"last-generated-id".as_slice()))
            .and_then(|(_, v)| bytes_of(v)),
        _ => None,
    };
    newest.and_then(|b| std::str::from_utf8(b).ok()).and_then(EntryId::parse).is_some_and(|newest| newest < last)
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One inbox entry's fields, as read.
#[derive(Debug, Default)]
struct Entry {
    kind: Vec<u8>,
    client: String,
    patterns: Vec<String>,
    epoch: u64,
    to: String,
    data: Vec<Bytes>,
    root_wildcard: bool,
}

impl Entry {
    /// The entry of a field list; takes the values over (message bodies are not copied).
    fn from_fields(fields: Vec<Value>) -> Self {
        let mut entry = Entry { root_wildcard: true, ..Entry::default() };
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            let Some(name) = bytes_of(&name) else { continue };
            if name == b"d" {
                match value {
                    Value::BulkString(bytes) => entry.data.push(Bytes::from(bytes)),
                    Value::SimpleString(text) => entry.data.push(Bytes::from(text)),
                    _ => {}
                }
                continue;
            }
            let Some(value) = bytes_of(&value) else { continue };
            let text = || String::from_utf8_lossy(value).into_owned();
            match name {
                b"t" => entry.kind = value.to_vec(),
                b"c" => entry.client = text(),
                b"p" => entry.patterns.push(text()),
                b"e" => entry.epoch = text().parse().unwrap_or(0),
                b"to" => entry.to = text(),
                b"w" => entry.root_wildcard = value != b"0",
                _ => {}
            }
        }
        entry
    }
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The entries of an `XREAD` reply for one stream (RESP2 arrays or RESP3 maps).
fn entries_of(reply: Value) -> Vec<(EntryId, Vec<Value>)> {
    let streams = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else { continue };
        for entry in entries {
            let Value::Array(mut parts) = entry else { continue };
            if parts.len() != 2 {
                continue;
            }
            let fields = match parts.pop() {
                Some(Value::Array(fields)) => fields,
                Some(Value::Map(map)) => map.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => continue,
            };
            let Some(id) = parts
                .pop()
                .as_ref()
                .and_then(bytes_of)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(EntryId::parse)
            else {
                continue;
            };
            out.push((id, fields));
        }
    }
    out
}

/// One `XREAD` of up to [`BATCH`] entries after `last`, blocking up to `block` when given;
/// `None` when the connection failed or did not answer.
async fn read(
    con: &mut crate::redis_conn::BlockingConnection,
    key: &str,
    last: EntryId,
    block: Option<Duration>,
) -> Option<Value> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(BATCH);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(key).arg(last.to_string());
    match tokio::time::timeout(block.unwrap_or_default() + READ_GRACE, cmd.query_async::<Value>(con)).await {
        Ok(Ok(reply)) => Some(reply),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "inbox read failed; reconnecting");
            None
        }
        Err(_) => {
            tracing::warn!("inbox read did not answer; reconnecting");
            None
        }
    }
}

/// Reads and applies this node's inbox of partition `part` until `stop`.
pub(super) async fn run(inner: Weak<Inner>, part: usize, stop: CancellationToken) {
    let mut last = EntryId::default();
    let mut backoff = BACKOFF_MIN;
    let mut lost = false;
    loop {
        let Some(engine) = inner.upgrade() else { return };
        let endpoint = engine.endpoint.clone();
        let key = engine.parts[part].inbox.clone();
        drop(engine);
        let connected = tokio::select! {
            r = endpoint.blocking() => r,
            _ = stop.cancelled() => return,
        };
        let mut con = match connected {
            Ok(con) => con,
            Err(e) => {
                tracing::debug!(error = %e, "inbox connection failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if lost && let Some(engine) = inner.upgrade() {
            tracing::info!(from = %last, "inbox connection back; reading on from the last applied entry");
            engine.metrics.redis_reconnect();
        }
        // Back: a later read failure sets it again (without this reset, every read after the
        // first reconnection ended the connection).
        lost = false;
        // Redis may have lost the inbox while the connection was down: then read the new one
        // from its start.
        if lost_inbox(&mut con, &key, last).await {
            tracing::info!(from = %last, "the inbox is new; reading it from its start");
            last = EntryId::default();
        }
        let mut unread_trim = 0usize;
        let mut trimmed_at = Instant::now();
        let mut wakes = Vec::new();
        loop {
            let reply = tokio::select! {
                r = read(&mut con, &key, last, Some(BLOCK)) => r,
                _ = stop.cancelled() => return,
            };
            let Some(reply) = reply else {
                lost = true;
                break;
            };
            backoff = BACKOFF_MIN;
            let Some(engine) = inner.upgrade() else { return };
            // The heartbeat found that redis lost this node's records (without dropping this
            // connection): if the inbox went too, read the new one from its start.
            if engine.parts[part].inbox_check.swap(false, Ordering::Relaxed)
                && lost_inbox(&mut engine.parts[part].con(), &key, last).await
            {
                tracing::info!(from = %last, "redis lost the inbox; reading the new one from its start");
                last = EntryId::default();
                continue;
            }
            // Apply what came, then whatever arrived meanwhile (without blocking), and only
            // then wake the connections: under load each socket gets many messages per write.
            let mut entries = entries_of(reply);
            let mut applied = 0usize;
            let started = Instant::now();
            while !entries.is_empty() {
                let count = entries.len();
                for (id, fields) in entries {
                    let missed = last.missed_before(id);
                    if missed > 0 {
                        engine.metrics.inbox_entries_lost(missed);
                        tracing::warn!(
                            missed,
                            "this node fell behind its inbox: unread entries were dropped by its length bound"
                        );
                    }
                    engine.apply(part, Entry::from_fields(fields), &mut wakes).await;
                    last = id;
                }
                applied += count;
                if applied >= BATCH || started.elapsed() >= COALESCE_AT_MOST {
                    break;
                }
                entries = match tokio::select! {
                    r = read(&mut con, &key, last, None) => r,
                    _ = stop.cancelled() => return,
                } {
                    Some(reply) => entries_of(reply),
                    None => {
                        lost = true;
                        Vec::new()
                    }
                };
            }
            engine.wake(&mut wakes);
            if lost {
                break;
            }
            unread_trim += applied;
            if unread_trim > 0 && (unread_trim >= BATCH || applied == 0 || trimmed_at.elapsed() >= TRIM_EVERY) {
                let trim: redis::RedisResult<i64> = redis::cmd("XTRIM")
                    .arg(&key)
                    .arg("MINID")
                    .arg(last.to_string())
                    .query_async(&mut engine.parts[part].con())
                    .await;
                if trim.is_ok() {
                    unread_trim = 0;
                    trimmed_at = Instant::now();
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

impl Inner {
    /// Applies one entry of partition `part`'s inbox; clients with new messages are added to
    /// `wakes`.
    async fn apply(self: &Arc<Self>, part: usize, entry: Entry, wakes: &mut Vec<Arc<str>>) {
        let local = &self.parts[part].local;
        match entry.kind.as_slice() {
            b"m" => {
                for json in entry.data {
                    match Envelope::from_json_with(json, entry.root_wildcard) {
                        Some(envelope) => self.deliver(part, envelope, wakes),
                        None => tracing::warn!("dropping an inbox message that is not a Bayeux message"),
                    }
                }
            }
            // Before its move completes (epoch 0) a session's subscriptions come with `T`.
            b"s" => {
                if local.epoch(&entry.client).is_some_and(|e| e > 0) {
                    for pattern in &entry.patterns {
                        local.subscribe(&entry.client, pattern, usize::MAX);
                    }
                }
            }
            b"u" => {
                if local.epoch(&entry.client).is_some_and(|e| e > 0) {
                    for pattern in &entry.patterns {
                        local.unsubscribe(&entry.client, pattern);
                    }
                }
            }
            b"d" => {
                self.let_go(&entry.client);
            }
            b"T" => {
                local.activate(&entry.client, entry.epoch, &entry.patterns);
            }
            b"h" => self.hand_over(part, entry).await,
            b"H" => {
                let earlier: Vec<SharedEnvelope> = entry.data.into_iter().filter_map(Envelope::from_json).collect();
                let count = earlier.len();
                if !self.release(&entry.client, entry.epoch, earlier) && count > 0 {
                    tracing::warn!(client_id = %entry.client, count, "handed-over messages arrived after the session moved on; dropped");
                }
            }
            other => tracing::warn!(kind = %String::from_utf8_lossy(other), "unknown inbox entry"),
        }
    }

    /// `h`: the client moved to `entry.to` at `entry.epoch`; send what is queued for it here.
    /// An `h` older than the session held here (its epoch is not below) is stale and ignored.
    async fn hand_over(self: &Arc<Self>, part: usize, entry: Entry) {
        let part = &self.parts[part];
        let queue = match part.local.epoch(&entry.client) {
            Some(held) if held == 0 || held >= entry.epoch => return,
            Some(_) => self.let_go(&entry.client).map(|r| r.queue).unwrap_or_default(),
            None => Vec::new(),
        };
        let mut add = redis::cmd("XADD");
        add.arg(part.keys.inbox(&entry.to))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.inbox_max_len)
            .arg("1-*")
            .arg("t")
            .arg("H")
            .arg("c")
            .arg(&entry.client)
            .arg("e")
            .arg(entry.epoch);
        for envelope in &queue {
            add.arg("d").arg(envelope.encoded.as_ref());
        }
        let r: redis::RedisResult<String> = add.query_async(&mut part.con()).await;
        match r {
            Ok(_) => {
                tracing::debug!(client_id = %entry.client, to = %entry.to, count = queue.len(), "session handed over")
            }
            Err(e) => {
                tracing::warn!(client_id = %entry.client, error = %e, count = queue.len(), "could not hand a session over; its queued messages are lost")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_like_redis() {
        let a = EntryId::parse("1700000000000-5").unwrap();
        let b = EntryId::parse("1700000000000-12").unwrap();
        let c = EntryId::parse("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-12");
        assert!(EntryId::parse("x-1").is_none());
        assert!(EntryId::parse("12").is_none());
    }

    #[test]
    fn gaps_in_the_numbering_are_missed_entries() {
        let id = |seq| EntryId { ms: 1, seq };
        assert_eq!(EntryId::default().missed_before(id(0)), 0);
        assert_eq!(EntryId::default().missed_before(id(19)), 19);
        assert_eq!(id(4).missed_before(id(5)), 0);
        assert_eq!(id(4).missed_before(id(9)), 4);
    }

    #[test]
    fn fields_with_repeats_are_kept() {
        let v = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let e = Entry::from_fields(vec![
            v("t"),
            v("T"),
            v("c"),
            v("abc"),
            v("e"),
            v("7"),
            v("p"),
            v("/a"),
            v("p"),
            v("/b/*"),
        ]);
        assert_eq!(e.kind, b"T");
        assert_eq!(e.client, "abc");
        assert_eq!(e.epoch, 7);
        assert_eq!(e.patterns, ["/a", "/b/*"]);
        assert!(e.root_wildcard);
        let m = Entry::from_fields(vec![v("t"), v("m"), v("d"), v("{}"), v("w"), v("0")]);
        assert!(!m.root_wildcard);
        assert_eq!(m.data.len(), 1);
    }

    #[test]
    fn xread_replies_in_both_protocols() {
        let v = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = Value::Array(vec![v("5-1"), Value::Array(vec![v("t"), v("d"), v("c"), v("x")])]);
        let resp2 = Value::Array(vec![Value::Array(vec![v("inbox"), Value::Array(vec![entry.clone()])])]);
        let resp3 = Value::Map(vec![(v("inbox"), Value::Array(vec![entry]))]);
        for reply in [resp2, resp3] {
            let entries = entries_of(reply);
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].0, EntryId { ms: 5, seq: 1 });
        }
        assert!(entries_of(Value::Nil).is_empty());
    }
}
