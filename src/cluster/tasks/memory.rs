//! The memory backend of tasks and peers: the same places, records and answers as the redis
//! scripts in `scripts.rs`, in process. Every method is one critical section (the caller
//! holds the mutex), which gives the atomicity the scripts get from redis. Membership is
//! the set of joined node handles sharing this state (a stand-alone process has one);
//! there is no dead-peer detection, since handles of one process cannot die separately.
//!
//! The private helpers below mirror the scripts' Lua helpers of the same names
//! (`dead_letter`, `dead_letter_corrupt`, `per_node_only`, `schedule`, `fan_out`,
//! `make_ready`, `recover`). Places are keyed by the key names the redis backend writes
//! under the default prefix, so `record.queue` reads the same on both backends.

use super::record::{FailReason, TaskRecord, failed_entry_text};
use super::{Answer, EnqueueMode, Inspection, Outcome};
use crate::cluster::DEFAULT_PREFIX;
use crate::cluster::keys::node_key_part;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Stats fields the scripts count in the cluster stats hash.
const RECLAIMED: &str = "tasks:reclaimed";
const DROPPED_FOR_DEAD_NODE: &str = "tasks:droppedForDeadNode";
const NOT_RUNNABLE_HERE: &str = "tasks:notRunnableHere";
const FAILED: &str = "tasks:failed";
const PERIODIC_FAILURES: &str = "tasks:periodicFailures";

/// `{prefix}tasks:{suffix}`.
fn task_key(suffix: &str) -> String {
    format!("{DEFAULT_PREFIX}tasks:{suffix}")
}

/// The ready queue of one node (`local_queue` in the scripts).
fn local_queue(node: &str) -> String {
    format!("{DEFAULT_PREFIX}tasks:{}", node_key_part(node))
}

/// Tasks that exist only for their target node: "all" copies and per-node periodic
/// instances.
fn per_node_only(h: &TaskRecord) -> bool {
    h.is_duplicate || (h.periodic && h.target.is_some())
}

/// The scripts' `clear_claim`.
fn clear_claim(h: &mut TaskRecord) {
    h.token = None;
    h.api_id = None;
    h.worker_id = None;
    h.claimed_at = None;
}

/// One entry of `tasks:processing`.
#[derive(Debug, Clone)]
struct Claim {
    server_id: String,
    #[allow(dead_code)]
    worker: u32,
    token: String,
    #[allow(dead_code)]
    claimed_at: i64,
}

/// `tasks:delayed`: ids ordered by (runAt, id) like a sorted set (equal scores by id), with
/// the score of each id so that re-adding an id moves it (ZADD) and removal is exact (ZREM).
#[derive(Debug, Default)]
struct DelayedSet {
    order: BTreeSet<(i64, String)>,
    scores: HashMap<String, i64>,
}

impl DelayedSet {
    /// ZADD.
    fn add(&mut self, at: i64, id: &str) {
        if let Some(old) = self.scores.insert(id.to_string(), at) {
            self.order.remove(&(old, id.to_string()));
        }
        self.order.insert((at, id.to_string()));
    }

    /// ZREM: true when the id was there.
    fn remove(&mut self, id: &str) -> bool {
        match self.scores.remove(id) {
            Some(at) => {
                self.order.remove(&(at, id.to_string()));
                true
            }
            None => false,
        }
    }

    /// ZRANGEBYSCORE -inf now LIMIT 0 limit.
    fn due(&self, now: i64, limit: usize) -> Vec<String> {
        self.order.iter().take_while(|(at, _)| *at <= now).take(limit).map(|(_, id)| id.clone()).collect()
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Tasks and membership of a stand-alone node.
#[derive(Debug, Default)]
pub(crate) struct MemoryTasks {
    /// Joined node ids, in join order.
    pub(crate) peers: Vec<String>,
    /// Task records by id (`tasks:data`).
    data: HashMap<String, TaskRecord>,
    /// Ready queues by key name: `{prefix}tasks:global` and `{prefix}tasks:{node}` (a list
    /// that becomes empty is removed, as redis deletes it).
    queues: HashMap<String, VecDeque<String>>,
    /// Delayed ids (`tasks:delayed`).
    delayed: DelayedSet,
    /// Claims by task id (`tasks:processing`); ordered so recovery is deterministic.
    processing: BTreeMap<String, Claim>,
    /// Dead-letter entries, oldest first (`tasks:failed`).
    failed: Vec<String>,
    /// Idempotency keys: key → (task id, expires at ms).
    idempotency: HashMap<String, (String, i64)>,
    /// Expiry order of the idempotency keys, for purging expired ones.
    idempotency_expiry: BTreeSet<(i64, String)>,
    /// Worker statuses: `{node}#{worker}` → text.
    worker_status: BTreeMap<String, String>,
    /// Counters the scripts keep in the stats hash (`tasks:reclaimed`, …).
    pub(crate) counters: BTreeMap<String, i64>,
}

impl MemoryTasks {
    /// JOIN: (re)adds `node` as a member.
    pub(crate) fn join(&mut self, node: &str) {
        self.peers.retain(|p| p != node);
        self.peers.push(node.to_string());
    }

    /// True when `node` is a member (the scripts' `live`).
    pub(crate) fn live(&self, node: &str) -> bool {
        self.peers.iter().any(|p| p == node)
    }

    /// ENQUEUE. `record` arrives complete except for the fields the script fills in.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn enqueue(
        &mut self,
        now: i64,
        record: TaskRecord,
        mode: EnqueueMode,
        run_at: Option<i64>,
        delay_ms: Option<i64>,
        idempotency: Option<(&str, i64)>,
        create_if_absent: bool,
    ) -> Answer {
        let mut h = record;
        if let Some((key, _)) = idempotency
            && let Some(existing) = self.idempotent_id(now, key)
        {
            return Answer::Exists(existing);
        }
        if create_if_absent && self.data.contains_key(&h.id) {
            return Answer::Exists(h.id);
        }
        if let Some(target) = &h.target
            && !self.live(target)
        {
            return Answer::UnknownNode(target.clone());
        }
        let run_at = match (run_at, delay_ms) {
            (Some(at), _) => at,
            (None, Some(delay)) => now.saturating_add(delay),
            (None, None) => now - 1,
        };
        h.enqueued_at = Some(now);
        h.run_at = Some(run_at);
        let id = h.id.clone();
        if mode == EnqueueMode::All {
            h.fan_out = true;
            if run_at > now {
                self.schedule(h, run_at);
            } else {
                if self.peers.is_empty() {
                    return Answer::NoLivePeers;
                }
                self.fan_out(now, &h);
            }
        } else if run_at > now {
            self.schedule(h, run_at);
        } else {
            self.make_ready(now, h, false, None);
        }
        if let Some((key, ttl)) = idempotency {
            self.set_idempotent(key, &id, now.saturating_add(ttl.max(1)));
        }
        Answer::Ok(id)
    }

    /// PROMOTE.
    pub(crate) fn promote(&mut self, now: i64, batch: usize, node: &str) -> usize {
        let mut n = 0;
        for id in self.delayed.due(now, batch) {
            if !self.delayed.remove(&id) {
                continue;
            }
            match self.data.get(&id).cloned() {
                None => self.dead_letter_corrupt(now, &id, Some(node)),
                Some(h) if h.fan_out => {
                    self.data.remove(&id);
                    if self.fan_out(now, &h) == 0 {
                        self.dead_letter(
                            now,
                            h,
                            FailReason::TargetGone,
                            Some("no live peers to fan out to"),
                            Some(node),
                        );
                    }
                    n += 1;
                }
                Some(h) => {
                    if self.make_ready(now, h, false, Some(node)) {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// CLAIM.
    pub(crate) fn claim(&mut self, now: i64, node: &str, worker: u32, token: &str, global_first: bool) -> Answer {
        if !self.live(node) {
            return Answer::Evicted;
        }
        let queues = if global_first {
            [task_key("global"), local_queue(node)]
        } else {
            [local_queue(node), task_key("global")]
        };
        for q in &queues {
            for _ in 0..16 {
                let Some(id) = self.lpop(q) else { break };
                let Some(mut h) = self.data.get(&id).cloned() else {
                    self.dead_letter_corrupt(now, &id, Some(node));
                    continue;
                };
                h.attempt = h.attempt.saturating_add(1);
                h.state = "processing".to_string();
                h.queue = Some(task_key("processing"));
                h.api_id = Some(node.to_string());
                h.worker_id = Some(i64::from(worker));
                h.token = Some(token.to_string());
                h.claimed_at = Some(now);
                self.data.insert(id.clone(), h.clone());
                self.processing.insert(
                    id.clone(),
                    Claim { server_id: node.to_string(), worker, token: token.to_string(), claimed_at: now },
                );
                self.worker_status.insert(format!("{node}#{worker}"), format!("working task: {id}"));
                return Answer::Claimed(Box::new(h));
            }
        }
        Answer::Nothing
    }

    /// COMPLETE.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn complete(
        &mut self,
        now: i64,
        node: &str,
        worker: u32,
        id: &str,
        token: &str,
        outcome: &Outcome,
        backoff_ms: &[i64],
        bounce_limit: u32,
        bounce_delay_ms: i64,
    ) -> String {
        match self.processing.get(id) {
            Some(claim) if claim.token == token => {}
            _ => return "stale".to_string(),
        }
        self.processing.remove(id);
        self.worker_status.insert(format!("{node}#{worker}"), "idle".to_string());
        let Some(mut h) = self.data.get(id).cloned() else {
            self.dead_letter_corrupt(now, id, Some(node));
            return "corrupt".to_string();
        };
        clear_claim(&mut h);
        if h.stop_requested {
            self.data.remove(id);
            return "stopped".to_string();
        }
        let attempt = h.attempt;
        if let Outcome::Bounce(err) = outcome {
            h.bounces = h.bounces.saturating_add(1);
            h.attempt = attempt.saturating_sub(1);
            self.count(NOT_RUNNABLE_HERE);
            if h.bounces >= bounce_limit.max(1) {
                self.dead_letter(now, h, FailReason::NotRunnableHere, Some(err), Some(node));
                return "deadLettered".to_string();
            }
            self.schedule(h, now.saturating_add(bounce_delay_ms));
            return "bounced".to_string();
        }
        let err = match outcome {
            Outcome::Error(e) => Some(e.as_str()),
            _ => None,
        };
        if h.periodic {
            if let Some(e) = err {
                h.last_error = Some(e.to_string());
                self.count(PERIODIC_FAILURES);
            }
            h.attempt = 0;
            let at = now.saturating_add(h.frequency.unwrap_or(0));
            self.schedule(h, at);
            return "rescheduled".to_string();
        }
        let Some(err) = err else {
            self.data.remove(id);
            return "done".to_string();
        };
        h.last_error = Some(err.to_string());
        if attempt < h.max_attempts {
            let index = usize::try_from(attempt.max(1)).unwrap_or(usize::MAX).min(backoff_ms.len());
            let delay = index.checked_sub(1).and_then(|i| backoff_ms.get(i)).copied().unwrap_or(1000);
            self.schedule(h, now.saturating_add(delay));
            return "retry".to_string();
        }
        self.dead_letter(now, h, FailReason::Error, Some(err), Some(node));
        "deadLettered".to_string()
    }

    /// CANCEL.
    pub(crate) fn cancel(&mut self, id: &str) -> bool {
        let Some(h) = self.data.get(id) else { return false };
        let removed = match (h.state.as_str(), &h.queue) {
            ("delayed", _) => self.delayed.remove(id),
            ("pending", Some(q)) => {
                let q = q.clone();
                self.lrem(&q, 1, id) > 0
            }
            _ => false,
        };
        if removed {
            self.data.remove(id);
        }
        removed
    }

    /// The dead-letter entries from `start` to `stop` inclusive (LRANGE semantics,
    /// negative indexes count from the end).
    pub(crate) fn failed(&self, start: isize, stop: isize) -> Vec<String> {
        let len = isize::try_from(self.failed.len()).unwrap_or(isize::MAX);
        let start = if start < 0 { (start + len).max(0) } else { start };
        let stop = if stop < 0 { stop + len } else { stop.min(len - 1) };
        if start > stop || start >= len {
            return Vec::new();
        }
        let (Ok(from), Ok(to)) = (usize::try_from(start), usize::try_from(stop)) else {
            return Vec::new();
        };
        self.failed.get(from..=to).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// RETRY_FAILED.
    pub(crate) fn retry_failed(&mut self, now: i64, entry: &str) -> String {
        const TASK: &str = ",\"task\":";
        let Some(i) = entry.find(TASK) else { return "corrupt".to_string() };
        let Some(text) = entry.get(i + TASK.len()..entry.len().saturating_sub(1)) else {
            return "corrupt".to_string();
        };
        let Ok(mut h) = serde_json::from_str::<TaskRecord>(text) else {
            return "corrupt".to_string();
        };
        if self.data.contains_key(&h.id) {
            return "exists".to_string();
        }
        if let Some(target) = &h.target
            && !self.live(target)
        {
            return "unknownNode".to_string();
        }
        if !self.remove_failed(entry) {
            return "gone".to_string();
        }
        h.attempt = 0;
        h.bounces = 0;
        h.stop_requested = false;
        if h.fan_out {
            if self.fan_out(now, &h) == 0 {
                self.failed.push(entry.to_string());
                return "unknownNode".to_string();
            }
        } else {
            self.make_ready(now, h, false, None);
        }
        "ok".to_string()
    }

    /// LREM of one dead-letter entry.
    pub(crate) fn remove_failed(&mut self, entry: &str) -> bool {
        match self.failed.iter().position(|e| e == entry) {
            Some(i) => {
                self.failed.remove(i);
                true
            }
            None => false,
        }
    }

    /// STOP_PERIODIC.
    pub(crate) fn stop_periodic(&mut self, name: &str) -> usize {
        let mut ids = vec![format!("periodic:{name}")];
        ids.extend(self.peers.iter().map(|peer| format!("periodic:{name}:{peer}")));
        let mut n = 0;
        for id in ids {
            let Some(h) = self.data.get_mut(&id) else { continue };
            n += 1;
            if h.state == "processing" {
                h.stop_requested = true;
                continue;
            }
            let (state, queue) = (h.state.clone(), h.queue.clone());
            if state == "delayed" {
                self.delayed.remove(&id);
            } else if let Some(q) = queue {
                self.lrem(&q, 0, &id);
            }
            self.data.remove(&id);
        }
        n
    }

    /// LEAVE: the recovery of `node` applied by itself.
    pub(crate) fn leave(&mut self, now: i64, node: &str, max_crash: u32) -> (u64, u64, u64) {
        self.recover(now, node, max_crash, node)
    }

    /// The overview `Tasks::inspect` answers.
    pub(crate) fn inspect(&self) -> Inspection {
        let len = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Inspection {
            global: len(self.queue_len(&task_key("global"))),
            delayed: len(self.delayed.len()),
            processing: len(self.processing.len()),
            failed: len(self.failed.len()),
            local: self.peers.iter().map(|p| (p.clone(), len(self.queue_len(&local_queue(p))))).collect(),
            workers: self.worker_status.clone(),
        }
    }

    /// Every record.
    pub(crate) fn inspect_records(&self) -> Vec<TaskRecord> {
        self.data.values().cloned().collect()
    }

    /// One record.
    pub(crate) fn record(&self, id: &str) -> Option<TaskRecord> {
        self.data.get(id).cloned()
    }

    /// Sets a worker's status text.
    pub(crate) fn set_worker_status(&mut self, field: String, status: String) {
        self.worker_status.insert(field, status);
    }

    // ---- the scripts' helpers ----

    /// HINCRBY of a stats field.
    fn count(&mut self, field: &str) {
        *self.counters.entry(field.to_string()).or_insert(0) += 1;
    }

    /// GET of an idempotency key, honouring its expiry.
    fn idempotent_id(&mut self, now: i64, key: &str) -> Option<String> {
        self.purge_idempotency(now);
        self.idempotency.get(key).filter(|(_, expires)| *expires > now).map(|(id, _)| id.clone())
    }

    /// SET key id PX ttl.
    fn set_idempotent(&mut self, key: &str, id: &str, expires: i64) {
        if let Some((_, old)) = self.idempotency.insert(key.to_string(), (id.to_string(), expires)) {
            self.idempotency_expiry.remove(&(old, key.to_string()));
        }
        self.idempotency_expiry.insert((expires, key.to_string()));
    }

    /// Drops every idempotency key expired at `now`.
    fn purge_idempotency(&mut self, now: i64) {
        while let Some((expires, key)) = self.idempotency_expiry.first().cloned() {
            if expires > now {
                break;
            }
            self.idempotency_expiry.pop_first();
            self.idempotency.remove(&key);
        }
    }

    fn queue_len(&self, key: &str) -> usize {
        self.queues.get(key).map_or(0, VecDeque::len)
    }

    /// RPUSH (or LPUSH when `head`).
    fn push(&mut self, key: &str, id: String, head: bool) {
        let q = self.queues.entry(key.to_string()).or_default();
        if head {
            q.push_front(id);
        } else {
            q.push_back(id);
        }
    }

    /// LPOP; an emptied list is deleted.
    fn lpop(&mut self, key: &str) -> Option<String> {
        let q = self.queues.get_mut(key)?;
        let id = q.pop_front();
        if q.is_empty() {
            self.queues.remove(key);
        }
        id
    }

    /// LREM key count id (count 0: every occurrence, n > 0: the first n from the head).
    fn lrem(&mut self, key: &str, count: usize, id: &str) -> usize {
        let Some(q) = self.queues.get_mut(key) else { return 0 };
        let mut removed = 0;
        q.retain(|x| {
            if x == id && (count == 0 || removed < count) {
                removed += 1;
                false
            } else {
                true
            }
        });
        if q.is_empty() {
            self.queues.remove(key);
        }
        removed
    }

    /// Appends a dead-letter entry (task last, so its text can be cut back out) and deletes
    /// the record: the task's one place is now the failed list.
    fn dead_letter(&mut self, now: i64, mut h: TaskRecord, reason: FailReason, err: Option<&str>, node: Option<&str>) {
        h.state = "failed".to_string();
        if let Some(e) = err {
            h.last_error = Some(e.to_string());
        }
        clear_claim(&mut h);
        self.data.remove(&h.id);
        let task = serde_json::to_string(&h).unwrap_or_default();
        self.failed.push(failed_entry_text(reason, err, now, node.unwrap_or(""), &task));
        self.count(FAILED);
    }

    /// A record that is missing under an id that had a place.
    fn dead_letter_corrupt(&mut self, now: i64, id: &str, node: Option<&str>) {
        self.data.remove(id);
        let task = serde_json::json!({ "id": id, "raw": null }).to_string();
        self.failed.push(failed_entry_text(
            FailReason::Corrupt,
            Some("task record missing or unparsable"),
            now,
            node.unwrap_or(""),
            &task,
        ));
        self.count(FAILED);
    }

    /// Writes the record into the delayed set at `at`.
    fn schedule(&mut self, mut h: TaskRecord, at: i64) {
        h.state = "delayed".to_string();
        h.queue = Some(task_key("delayed"));
        h.run_at = Some(at);
        clear_claim(&mut h);
        self.delayed.add(at, &h.id);
        self.data.insert(h.id.clone(), h);
    }

    /// Writes one copy per live member into its local queue; answers how many.
    fn fan_out(&mut self, now: i64, h: &TaskRecord) -> usize {
        let members = self.peers.clone();
        for member in &members {
            let mut c = h.clone();
            c.id = format!("{}@{member}", h.id);
            c.is_duplicate = true;
            c.parent_id = Some(h.id.clone());
            c.target = Some(member.clone());
            c.fan_out = false;
            c.state = "pending".to_string();
            let q = local_queue(member);
            c.queue = Some(q.clone());
            c.run_at = Some(now - 1);
            clear_claim(&mut c);
            let id = c.id.clone();
            self.data.insert(id.clone(), c);
            self.push(&q, id, false);
        }
        members.len()
    }

    /// Puts a record into its ready queue (tail, or head for recovered work). A task for a
    /// node that is gone is dropped (per-node only) or dead-lettered (`targetGone`).
    fn make_ready(&mut self, now: i64, mut h: TaskRecord, head: bool, node: Option<&str>) -> bool {
        let q = match h.target.clone() {
            None => task_key("global"),
            Some(target) if self.live(&target) => local_queue(&target),
            Some(target) => {
                if per_node_only(&h) {
                    self.data.remove(&h.id);
                    self.count(DROPPED_FOR_DEAD_NODE);
                } else {
                    let err = format!("target node {target} is gone");
                    self.dead_letter(now, h, FailReason::TargetGone, Some(&err), node);
                }
                return false;
            }
        };
        h.state = "pending".to_string();
        h.queue = Some(q.clone());
        clear_claim(&mut h);
        let id = h.id.clone();
        self.data.insert(id.clone(), h);
        self.push(&q, id, head);
        true
    }

    /// Everything a dead (or leaving) node held, disposed of as §C3.7 says. Answers
    /// (reclaimed, dropped, dead-lettered). Room memberships live in the rooms backend.
    fn recover(&mut self, now: i64, dead: &str, max_crash: u32, checker: &str) -> (u64, u64, u64) {
        let (mut reclaimed, mut dropped, mut dead_lettered) = (0u64, 0u64, 0u64);
        // The ping field goes first: from here on the node is not live.
        self.peers.retain(|p| p != dead);
        let claimed: Vec<String> =
            self.processing.iter().filter(|(_, c)| c.server_id == dead).map(|(id, _)| id.clone()).collect();
        for id in claimed {
            self.processing.remove(&id);
            let Some(h) = self.data.get(&id).cloned() else {
                self.dead_letter_corrupt(now, &id, Some(checker));
                dead_lettered += 1;
                continue;
            };
            if h.stop_requested {
                self.data.remove(&id);
            } else if h.target.as_deref() == Some(dead) {
                if per_node_only(&h) {
                    self.data.remove(&id);
                    dropped += 1;
                    self.count(DROPPED_FOR_DEAD_NODE);
                } else {
                    let err = format!("target node {dead} is gone");
                    self.dead_letter(now, h, FailReason::TargetGone, Some(&err), Some(checker));
                    dead_lettered += 1;
                }
            } else if h.attempt >= max_crash {
                let err = format!("claimed {} times by nodes that died", h.attempt);
                self.dead_letter(now, h, FailReason::CrashLoop, Some(&err), Some(checker));
                dead_lettered += 1;
            } else {
                self.make_ready(now, h, true, Some(checker));
                reclaimed += 1;
                self.count(RECLAIMED);
            }
        }
        let waiting = self.queues.remove(&local_queue(dead)).unwrap_or_default();
        for id in waiting {
            let Some(mut h) = self.data.get(&id).cloned() else {
                self.dead_letter_corrupt(now, &id, Some(checker));
                dead_lettered += 1;
                continue;
            };
            if h.target.as_deref() == Some(dead) {
                if per_node_only(&h) {
                    self.data.remove(&id);
                    dropped += 1;
                    self.count(DROPPED_FOR_DEAD_NODE);
                } else {
                    let err = format!("target node {dead} is gone");
                    self.dead_letter(now, h, FailReason::TargetGone, Some(&err), Some(checker));
                    dead_lettered += 1;
                }
            } else {
                h.target = None;
                self.make_ready(now, h, false, Some(checker));
            }
        }
        let own = format!("{dead}#");
        self.worker_status.retain(|field, _| !field.starts_with(&own));
        (reclaimed, dropped, dead_lettered)
    }
}
