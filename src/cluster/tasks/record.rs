//! The task record (spec §C3.2) and the dead-letter entry, as stored in
//! `actionHero:tasks:data` and `actionHero:tasks:failed`. Both backends store the same JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// One task as stored: the original's fields plus ours (§C3.2). `params` is the last field
/// (the redis scripts rely on that to splice it unchanged).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Unique id: a UUID v4, `periodic:{name}` / `periodic:{name}:{node}` for periodic
    /// instances, `{parentId}@{node}` for the copies of an "all" task.
    pub id: String,
    /// The task definition's name.
    pub name: String,
    /// True for a periodic instance (re-scheduled after every run).
    #[serde(default)]
    pub periodic: bool,
    /// The period in ms for periodic instances.
    #[serde(default)]
    pub frequency: Option<i64>,
    /// `any` or `all`, from the definition.
    #[serde(default = "any_scope")]
    pub scope: String,
    /// When it is (or was) due, ms since the epoch (redis time).
    #[serde(rename = "runAt", default)]
    pub run_at: Option<i64>,
    /// Kept from the original record shape.
    #[serde(rename = "toAnnounce", default)]
    pub to_announce: bool,
    /// When it was enqueued (redis time).
    #[serde(rename = "enqueuedAt", default)]
    pub enqueued_at: Option<i64>,
    /// `delayed`, `pending`, `processing` or `failed`.
    #[serde(default)]
    pub state: String,
    /// The key of its current place.
    #[serde(default)]
    pub queue: Option<String>,
    /// True for the per-node copies of an "all" task.
    #[serde(rename = "isDuplicate", default)]
    pub is_duplicate: bool,
    /// The node running it (while processing).
    #[serde(default)]
    pub api_id: Option<String>,
    /// The worker index running it (while processing).
    #[serde(default)]
    pub worker_id: Option<i64>,
    /// The node it must run on, `None` for any node.
    #[serde(default)]
    pub target: Option<String>,
    /// How many times it has been claimed (for this run of a periodic task).
    #[serde(default)]
    pub attempt: u32,
    /// Runs that may fail before it is dead-lettered.
    #[serde(rename = "maxAttempts", default = "one")]
    pub max_attempts: u32,
    /// The current claim's fencing token.
    #[serde(default)]
    pub token: Option<String>,
    /// When the current claim was taken (redis time).
    #[serde(rename = "claimedAt", default)]
    pub claimed_at: Option<i64>,
    /// The caller's idempotency key, if any.
    #[serde(rename = "idempotencyKey", default)]
    pub idempotency_key: Option<String>,
    /// For "all" copies: the id returned to the caller.
    #[serde(rename = "parentId", default)]
    pub parent_id: Option<String>,
    /// The last failure's message.
    #[serde(rename = "lastError", default)]
    pub last_error: Option<String>,
    /// True for an "all" task not yet fanned out (waiting in the delayed set).
    #[serde(rename = "fanOut", default)]
    pub fan_out: bool,
    /// How often it came back "not runnable here" (§C3.8).
    #[serde(default)]
    pub bounces: u32,
    /// Set by `stop_periodic` while claimed: delete instead of re-scheduling.
    #[serde(rename = "stopRequested", default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_requested: bool,
    /// The handler's arguments (a JSON object), kept byte for byte.
    pub params: Box<RawValue>,
}

fn any_scope() -> String {
    "any".to_string()
}

fn one() -> u32 {
    1
}

impl TaskRecord {
    /// A waiting record before the enqueue script places it: attempt 0, one try, no target.
    pub(crate) fn new(id: String, name: String, scope: &str, params: Box<RawValue>) -> Self {
        Self {
            id,
            name,
            periodic: false,
            frequency: None,
            scope: scope.to_string(),
            run_at: None,
            to_announce: true,
            enqueued_at: None,
            state: "pending".to_string(),
            queue: None,
            is_duplicate: false,
            api_id: None,
            worker_id: None,
            target: None,
            attempt: 0,
            max_attempts: 1,
            token: None,
            claimed_at: None,
            idempotency_key: None,
            parent_id: None,
            last_error: None,
            fan_out: false,
            bounces: 0,
            stop_requested: false,
            params,
        }
    }

    /// The params as a JSON value.
    pub fn params_value(&self) -> Value {
        serde_json::from_str(self.params.get()).unwrap_or(Value::Null)
    }
}

/// Why a task landed in the dead letter (§C3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailReason {
    /// The handler failed `maxAttempts` times.
    Error,
    /// Its target node left or died.
    TargetGone,
    /// It was claimed by `maxCrashAttempts` nodes that died.
    CrashLoop,
    /// No node that claimed it knew its name, `bounce limit` times.
    NotRunnableHere,
    /// Its record was missing or unparsable.
    Corrupt,
}

/// One dead-letter entry as `failed` returns it. `raw` is the stored text, which
/// `retry_failed` and `remove_failed` take back.
#[derive(Debug, Clone)]
pub struct FailedEntry {
    /// Why it failed.
    pub reason: FailReason,
    /// The failure text.
    pub error: Option<String>,
    /// When (redis time, ms).
    pub failed_at: i64,
    /// The node that dead-lettered it.
    pub server_id: String,
    /// The task record (`None` for a `corrupt` entry, whose record could not be read).
    pub task: Option<TaskRecord>,
    /// The stored JSON text of the entry.
    pub raw: String,
}

#[derive(Deserialize)]
struct StoredEntry<'a> {
    reason: FailReason,
    #[serde(default)]
    error: Option<String>,
    #[serde(rename = "failedAt")]
    failed_at: i64,
    #[serde(rename = "serverId", default)]
    server_id: String,
    #[serde(borrow)]
    task: &'a RawValue,
}

impl FailedEntry {
    /// Parses one stored entry; the text back when it is not an entry.
    pub(crate) fn parse(raw: String) -> Result<FailedEntry, String> {
        let Ok(stored) = serde_json::from_str::<StoredEntry<'_>>(&raw) else { return Err(raw) };
        let task = serde_json::from_str(stored.task.get()).ok();
        let (reason, error, failed_at, server_id) = (stored.reason, stored.error, stored.failed_at, stored.server_id);
        Ok(FailedEntry { reason, error, failed_at, server_id, task, raw })
    }
}

/// Builds a dead-letter entry's text exactly as the scripts do: the task last.
pub(crate) fn failed_entry_text(
    reason: FailReason,
    error: Option<&str>,
    failed_at: i64,
    server_id: &str,
    task_json: &str,
) -> String {
    let reason = serde_json::to_string(&reason).unwrap_or_default();
    let error = serde_json::to_string(&error).unwrap_or_else(|_| "null".to_string());
    let server = serde_json::to_string(server_id).unwrap_or_default();
    format!(r#"{{"reason":{reason},"error":{error},"failedAt":{failed_at},"serverId":{server},"task":{task_json}}}"#)
}

/// A fresh random task id (UUID v4 text).
pub(crate) fn new_task_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{}-{}-{}-{}-{}", h(0..4), h(4..6), h(6..8), h(8..10), h(10..16))
}

/// A fresh 128-bit claim token.
pub(crate) fn new_token() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_params_last() {
        let text = r#"{"id":"a","name":"n","periodic":false,"frequency":null,"scope":"any","runAt":1,"toAnnounce":true,"enqueuedAt":1,"state":"pending","queue":"q","isDuplicate":false,"api_id":null,"worker_id":null,"target":null,"attempt":0,"maxAttempts":1,"token":null,"claimedAt":null,"idempotencyKey":null,"parentId":null,"lastError":null,"fanOut":false,"bounces":0,"params":{"big":12345678901234567890}}"#;
        let r: TaskRecord = serde_json::from_str(text).unwrap();
        let out = serde_json::to_string(&r).unwrap();
        assert!(out.ends_with(r#","params":{"big":12345678901234567890}}"#), "{out}");
    }

    #[test]
    fn failed_entry_parses_what_it_builds() {
        let task = r#"{"id":"a","name":"n","params":{}}"#;
        let text = failed_entry_text(FailReason::TargetGone, Some("x"), 5, "h:1", task);
        let e = FailedEntry::parse(text.clone()).unwrap();
        assert_eq!(e.reason, FailReason::TargetGone);
        assert_eq!(e.task.unwrap().id, "a");
        assert_eq!(e.raw, text);
    }

    #[test]
    fn ids_are_uuid_v4_and_tokens_128_bit() {
        let id = new_task_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_task_id());
        assert_eq!(new_token().len(), 32);
    }
}
