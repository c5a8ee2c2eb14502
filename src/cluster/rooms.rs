//! Chat room memberships (spec §C6): list `actionHero:roomMembers-{room}` of connection ids,
//! free of duplicates, and per node the hash `actionHero:roomIndex:{node}` (field =
//! connection id, value = room) recording which memberships that node holds, so a dead or
//! leaving node's members can be purged (§C2.6, §C2.7) and a connection id shared by
//! several nodes (a web client's fingerprint) stays in its room while any node holds it
//! (§C6.6).
//!
//! One current room per connection per node (the §6.2 model: "change room" = remove, then
//! add): the index has one field per connection, and adding a connection this node holds in
//! another room answers [`ClusterError::InOtherRoom`]. Listening rooms are node-local and not
//! stored here.
//!
//! Index layout contract (the peers recovery relies on it): for a dead or leaving node, read
//! `roomIndex:{node}`, LREM each connection from `roomMembers-{room}` unless another node
//! listed in `actionHero:peers` has the same field = room in its own index, then DEL the index.
//!
//! The delivery side of chat (the `/actionHero/chat` payload, per-connection delivery) needs
//! the Bayeux server, so it lives above this layer, in `crate::chat`.

use super::{Backend, ClusterError, Ctx, RedisBackend, guard};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

/// Keys examined per SCAN step by [`Rooms::rooms`].
const SCAN_BATCH: usize = 100;

/// What [`Rooms::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAdd {
    /// The connection id was appended to the room's list: announce "I have entered the room".
    Added,
    /// The list already held the id (added earlier, maybe by another node); nothing to announce.
    AlreadyMember,
}

impl fmt::Display for RoomAdd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoomAdd::Added => "Added",
            RoomAdd::AlreadyMember => "Connection already in this room",
        })
    }
}

/// A room's members, serialised as the original's `{"room","members","membersCount"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomStatus {
    /// The room's name.
    pub room: String,
    /// Connection ids, in the order they joined.
    pub members: Vec<String>,
    /// `members.len()`.
    #[serde(rename = "membersCount")]
    pub members_count: usize,
}

/// Lua: is `id` in list `key`? LPOS (redis 6.0.6+), else a scan of the list.
const MEMBER_FN: &str = r#"
local function member(key, id)
  local ok, pos = pcall(redis.call, 'LPOS', key, id)
  if ok then return pos ~= false and pos ~= nil end
  for _, v in ipairs(redis.call('LRANGE', key, 0, -1)) do
    if v == id then return true end
  end
  return false
end
"#;

/// Add. KEYS: room list, this node's room index. ARGV: connection id, room. Guarantees: the
/// membership check, the list append and the index entry are one step, so concurrent adds of
/// one id (from any nodes) append it once and exactly one caller gets 'added'. The index entry
/// is written even when the list already held the id (a shared web id: this node is now a
/// holder too). Refuses ({'other', room}) a connection this node holds in another room.
static ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{MEMBER_FN}{}",
        r#"
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current and current ~= ARGV[2] then return {'other', current} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if member(KEYS[1], ARGV[1]) then return {'already'} end
redis.call('RPUSH', KEYS[1], ARGV[1])
return {'added'}
"#
    ))
});

/// Remove. KEYS: room list, this node's room index, peers list. ARGV: connection id, room,
/// this node's id, the index key prefix (`{prefix}roomIndex:`). Guarantees: drops this node's
/// index entry for that room, then removes the id from the list only when no other node in
/// `peers` still holds it for this room in its own index (§C6.6), all in one step. Answers
/// {'removed', count} or {'held', node}. The peers' index keys are computed inside the script
/// (prefix .. node id with ':' -> '-', as keys.rs builds them): one redis server, not Redis
/// Cluster (§C1.7).
static REMOVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
for _, peer in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  if peer ~= ARGV[3] then
    local index = ARGV[4] .. (string.gsub(peer, ':', '-'))
    if redis.call('HGET', index, ARGV[1]) == ARGV[2] then return {'held', peer} end
  end
end
return {'removed', redis.call('LREM', KEYS[1], 0, ARGV[1])}
"#,
    )
});

/// Holders. KEYS: peers list. ARGV: connection id, the index key prefix. Answers the
/// live-listed nodes whose room index holds the connection (in `peers` order).
static HOLDERS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local holders = {}
for _, peer in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local index = ARGV[2] .. (string.gsub(peer, ':', '-'))
  if redis.call('HEXISTS', index, ARGV[1]) == 1 then table.insert(holders, peer) end
end
return holders
"#,
    )
});

/// The memory backend's rooms: the lists and each node's index (raw node id → connection →
/// room). Sibling handles play the other nodes.
#[derive(Debug, Default)]
pub(crate) struct MemoryRooms {
    lists: HashMap<String, Vec<String>>,
    indexes: HashMap<String, HashMap<String, String>>,
}

impl MemoryRooms {
    fn add(&mut self, node: &str, room: &str, connection_id: &str) -> Result<RoomAdd, ClusterError> {
        let index = self.indexes.entry(node.to_string()).or_default();
        if let Some(current) = index.get(connection_id).filter(|r| *r != room) {
            return Err(ClusterError::InOtherRoom(current.clone()));
        }
        index.insert(connection_id.to_string(), room.to_string());
        let list = self.lists.entry(room.to_string()).or_default();
        if list.iter().any(|id| id == connection_id) {
            return Ok(RoomAdd::AlreadyMember);
        }
        list.push(connection_id.to_string());
        Ok(RoomAdd::Added)
    }

    /// Answers the holder that kept the id in the list, or whether the list changed.
    fn remove(&mut self, node: &str, room: &str, connection_id: &str) -> Result<bool, String> {
        if let Some(index) = self.indexes.get_mut(node) {
            if index.get(connection_id).is_some_and(|r| r == room) {
                index.remove(connection_id);
            }
            if index.is_empty() {
                self.indexes.remove(node);
            }
        }
        let holder = self
            .indexes
            .iter()
            .find(|(n, index)| n.as_str() != node && index.get(connection_id).is_some_and(|r| r == room));
        if let Some((holder, _)) = holder {
            return Err(holder.clone());
        }
        let Some(list) = self.lists.get_mut(room) else { return Ok(false) };
        let before = list.len();
        list.retain(|id| id != connection_id);
        let changed = list.len() != before;
        if list.is_empty() {
            // As redis does for lists: no empty room is left behind (§C6.4).
            self.lists.remove(room);
        }
        Ok(changed)
    }
}

/// Chat room memberships. Cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    ctx: Arc<Ctx>,
}

fn check_names(room: &str, connection_id: &str) -> Result<(), ClusterError> {
    if room.is_empty() {
        return Err(ClusterError::InvalidArgument("room name is empty".to_string()));
    }
    if connection_id.is_empty() {
        return Err(ClusterError::InvalidArgument("connection id is empty".to_string()));
    }
    Ok(())
}

/// `text` with redis glob characters escaped, for a SCAN MATCH pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Rooms {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    /// Adds the connection to the room's list unless it is there already, and records in
    /// this node's room index that this node holds it there, in one atomic step. `Added`
    /// means the list changed (announce the entry); `AlreadyMember` ("Connection already in
    /// this room") that it did not. `InOtherRoom` when this node holds the connection in
    /// another room.
    pub async fn add(&self, room: &str, connection_id: &str) -> Result<RoomAdd, ClusterError> {
        check_names(room, connection_id)?;
        let node = self.ctx.node_id();
        let outcome = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.rooms).add(&node, room, connection_id)?,
            Backend::Redis(r) => {
                let answer: Vec<String> = r.check(
                    ADD.key(r.keys.room_members(room))
                        .key(r.keys.room_index(&node))
                        .arg(connection_id)
                        .arg(room)
                        .invoke_async(&mut r.con())
                        .await,
                )?;
                match answer.as_slice() {
                    [code] if code == "added" => RoomAdd::Added,
                    [code] if code == "already" => RoomAdd::AlreadyMember,
                    [code, current] if code == "other" => return Err(ClusterError::InOtherRoom(current.clone())),
                    other => return Err(unexpected("room add", other)),
                }
            }
        };
        tracing::debug!(room, connection_id, node = %node, %outcome, "room add");
        Ok(outcome)
    }

    /// Drops this node's hold of the connection in the room and removes the id from the
    /// room's list unless another live-listed node still holds it there (§C6.6), in one
    /// atomic step. `true` when the list changed (announce the departure).
    pub async fn remove(&self, room: &str, connection_id: &str) -> Result<bool, ClusterError> {
        check_names(room, connection_id)?;
        let node = self.ctx.node_id();
        let held_by = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.rooms).remove(&node, room, connection_id),
            Backend::Redis(r) => self.remove_redis(r, &node, room, connection_id).await?,
        };
        match held_by {
            Ok(changed) => {
                tracing::debug!(room, connection_id, node = %node, changed, "room remove");
                Ok(changed)
            }
            Err(holder) => {
                tracing::debug!(room, connection_id, node = %node, %holder, "room remove: still held by another node");
                Ok(false)
            }
        }
    }

    async fn remove_redis(
        &self,
        r: &RedisBackend,
        node: &str,
        room: &str,
        connection_id: &str,
    ) -> Result<Result<bool, String>, ClusterError> {
        let answer: Vec<String> = r.check(
            REMOVE
                .key(r.keys.room_members(room))
                .key(r.keys.room_index(node))
                .key(r.keys.peers())
                .arg(connection_id)
                .arg(room)
                .arg(node)
                .arg(r.keys.room_index(""))
                .invoke_async(&mut r.con())
                .await,
        )?;
        match answer.as_slice() {
            [code, count] if code == "removed" => Ok(Ok(count != "0")),
            [code, holder] if code == "held" => Ok(Err(holder.clone())),
            other => Err(unexpected("room remove", other)),
        }
    }

    /// The room's members in joining order; an empty or unknown room gives `members: []`
    /// and a count of 0.
    pub async fn status(&self, room: &str) -> Result<RoomStatus, ClusterError> {
        let members: Vec<String> = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.rooms).lists.get(room).cloned().unwrap_or_default(),
            Backend::Redis(r) => r.check(
                redis::cmd("LRANGE").arg(r.keys.room_members(room)).arg(0).arg(-1).query_async(&mut r.con()).await,
            )?,
        };
        Ok(RoomStatus { room: room.to_string(), members_count: members.len(), members })
    }

    /// The room this node holds the connection in, from this node's room index.
    pub async fn room_of(&self, connection_id: &str) -> Result<Option<String>, ClusterError> {
        let node = self.ctx.node_id();
        match &self.ctx.backend {
            Backend::Memory(m) => {
                Ok(guard(&m.rooms).indexes.get(&*node).and_then(|index| index.get(connection_id)).cloned())
            }
            Backend::Redis(r) => r.check(
                redis::cmd("HGET").arg(r.keys.room_index(&node)).arg(connection_id).query_async(&mut r.con()).await,
            ),
        }
    }

    /// The nodes holding the connection in a room (by their room indexes; on redis only
    /// nodes listed in `actionHero:peers`), sorted: who can act for a connection this node
    /// does not hold.
    pub async fn holders(&self, connection_id: &str) -> Result<Vec<String>, ClusterError> {
        let mut holders: Vec<String> = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.rooms)
                .indexes
                .iter()
                .filter(|(_, index)| index.contains_key(connection_id))
                .map(|(node, _)| node.clone())
                .collect(),
            Backend::Redis(r) => r.check(
                HOLDERS
                    .key(r.keys.peers())
                    .arg(connection_id)
                    .arg(r.keys.room_index(""))
                    .invoke_async(&mut r.con())
                    .await,
            )?,
        };
        holders.sort_unstable();
        Ok(holders)
    }

    /// Names of the rooms that have members, sorted. On redis a SCAN over
    /// `{prefix}roomMembers-*`: for diagnostics, not for a hot path.
    pub async fn rooms(&self) -> Result<Vec<String>, ClusterError> {
        let mut names = match &self.ctx.backend {
            Backend::Memory(m) => guard(&m.rooms).lists.keys().cloned().collect(),
            Backend::Redis(r) => scan_rooms(r).await?,
        };
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }
}

async fn scan_rooms(r: &RedisBackend) -> Result<Vec<String>, ClusterError> {
    let list_prefix = r.keys.room_members("");
    let pattern = format!("{}*", glob_escape(&list_prefix));
    let mut con = r.con();
    let mut cursor: u64 = 0;
    let mut names = Vec::new();
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = r.check(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut con)
                .await,
        )?;
        for key in keys {
            match String::from_utf8(key) {
                Ok(key) => {
                    if let Some(room) = key.strip_prefix(&list_prefix) {
                        names.push(room.to_string());
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(e.as_bytes()), "room key is not UTF-8; skipped")
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(names);
        }
    }
}

/// A script answer outside its contract: reported, never silently taken as success.
fn unexpected(what: &str, answer: &[String]) -> ClusterError {
    tracing::warn!(what, ?answer, "unexpected script answer");
    ClusterError::RedisUnavailable(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected script answer",
        format!("{what}: {answer:?}"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_shapes() {
        assert_eq!(RoomAdd::AlreadyMember.to_string(), "Connection already in this room");
        let status = RoomStatus { room: "r".into(), members: vec![], members_count: 0 };
        assert_eq!(
            serde_json::to_value(&status).ok(),
            Some(serde_json::json!({"room": "r", "members": [], "membersCount": 0}))
        );
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn memory_rules() {
        let mut rooms = MemoryRooms::default();
        assert!(matches!(rooms.add("n1", "r", "c"), Ok(RoomAdd::Added)));
        assert!(matches!(rooms.add("n2", "r", "c"), Ok(RoomAdd::AlreadyMember)));
        assert!(matches!(rooms.add("n1", "other", "c"), Err(ClusterError::InOtherRoom(r)) if r == "r"));
        assert_eq!(rooms.remove("n1", "r", "c"), Err("n2".to_string()));
        assert_eq!(rooms.remove("n2", "r", "c"), Ok(true));
        assert!(rooms.lists.is_empty() && rooms.indexes.is_empty());
    }
}
