//! Partitions of the native layout on a Redis Cluster. A script may only touch keys of one
//! hash slot, and the layout's scripts touch a client's records, interest hashes and node
//! inboxes together. So clients are split into partitions by id, and each partition holds
//! everything its clients' scripts touch under one hash tag: its clients' records, its own
//! interest hashes, and each node's inbox for it. A publish runs once per partition; a node
//! reads one inbox per partition. One redis (or Sentinel) has a single partition.
//!
//! The tags are chosen at the namespace's first start, one per master, each landing in that
//! master's slots, and recorded so that every node uses the same ones.

use crate::redis_conn::TimedConnection;
use redis::Value;

/// The partition of a client id, among `n` (FNV-1a: the same on every node).
pub(crate) fn index(client_id: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % n as u64) as usize
}

/// The hash slot of a hash tag: CRC16 (XMODEM: polynomial 0x1021, initial 0) modulo 16384,
/// as Redis Cluster computes it.
pub(crate) fn slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in tag.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

/// Inclusive slot ranges.
type Ranges = Vec<(u16, u16)>;

/// The slot ranges of each master, from a `CLUSTER SLOTS` reply, masters in the order of
/// their first slot.
fn masters_of(reply: &Value) -> Vec<Ranges> {
    let mut masters: Vec<(Vec<u8>, Ranges)> = Vec::new();
    let Value::Array(entries) = reply else { return Vec::new() };
    for entry in entries {
        let Value::Array(fields) = entry else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        // The node id when given, else host and port.
        let id = match (master.get(2), master.first(), master.get(1)) {
            (Some(Value::BulkString(id)), _, _) => id.clone(),
            (_, Some(Value::BulkString(host)), Some(Value::Int(port))) => {
                let mut id = host.clone();
                id.extend_from_slice(format!(":{port}").as_bytes());
                id
            }
            _ => continue,
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else { continue };
        match masters.iter_mut().find(|(m, _)| *m == id) {
            Some((_, ranges)) => ranges.push((start, end)),
            None => masters.push((id, vec![(start, end)])),
        }
    }
    let mut masters: Vec<Ranges> = masters.into_iter().map(|(_, ranges)| ranges).collect();
    masters.sort_by_key(|ranges| ranges.iter().map(|r| r.0).min());
    masters
}

/// One tag per master, each in that master's slots (`p0`, `p1`, … the first that fits).
fn tags_for(masters: &[Ranges]) -> Vec<String> {
    let mut tags = Vec::new();
    for ranges in masters {
        let found = (0u32..100_000)
            .map(|n| format!("p{n}"))
            .find(|tag| !tags.contains(tag) && ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot(tag))));
        if let Some(tag) = found {
            tags.push(tag);
        }
    }
    tags
}

/// The partition tags of the namespace on a Redis Cluster: the recorded ones, or new ones
/// (one per master) recorded now; when two nodes start at once, both use whichever was
/// recorded first.
pub(crate) async fn cluster_tags(con: &mut TimedConnection, record: &str) -> redis::RedisResult<Vec<String>> {
    let parse = |text: String| text.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect::<Vec<_>>();
    let recorded: Option<String> = redis::cmd("GET").arg(record).query_async(con).await?;
    if let Some(text) = recorded {
        return Ok(parse(text));
    }
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(con).await?;
    let tags = tags_for(&masters_of(&slots));
    if tags.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
            "CLUSTER SLOTS names no master",
        )));
    }
    let _: Option<String> = redis::cmd("SET").arg(record).arg(tags.join(",")).arg("NX").query_async(con).await?;
    let recorded: Option<String> = redis::cmd("GET").arg(record).query_async(con).await?;
    Ok(parse(recorded.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_as_redis_computes_them() {
        // CLUSTER KEYSLOT on redis 7 gives these.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        // The CRC16/XMODEM check value.
        assert_eq!(slot("123456789"), 0x31c3);
    }

    #[test]
    fn one_tag_per_master_in_its_slots() {
        let masters = vec![vec![(0, 5460)], vec![(5461, 10922)], vec![(10923, 16383)]];
        let tags = tags_for(&masters);
        assert_eq!(tags.len(), 3);
        for (tag, ranges) in tags.iter().zip(&masters) {
            let s = slot(tag);
            assert!(ranges.iter().any(|(a, b)| (*a..=*b).contains(&s)), "{tag} in slot {s}");
        }
    }

    #[test]
    fn partitions_spread_clients() {
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[index(&format!("client{i}"), 3)] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
        assert_eq!(index("anything", 1), 0);
    }

    #[test]
    fn cluster_slots_replies_group_by_master() {
        let node = |id: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(id.as_bytes().to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("c", 3)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("a", 1)]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("b", 2)]),
            Value::Array(vec![Value::Int(16000), Value::Int(16001), node("a", 1)]),
        ]);
        assert_eq!(
            masters_of(&reply),
            vec![vec![(0, 5460), (16000, 16001)], vec![(5461, 10922)], vec![(10923, 16383)]]
        );
    }
}
