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
    /// Counts raised since the caller last took them, with the node whose stats hash also
    /// gets them (as the scripts' `count(field, 1, node)`): moved to the memory stats after
    /// each operation.
    pub(crate) raised: Vec<(String, Option<String>)>,
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
            self.count(NOT_RUNNABLE_HERE, Some(node));
            if h.bounces >= bounce_limit.max(1) {
                self.dead_letter(now, h, FailReason::NotRunnableHere, Some(err), Some(node));
                return "deadLettered".to_string();
            }
            self.schedule(h, now.saturating_add(bounce_delay_ms));
            return "bounced".to_string();
        }
        self.count(&format!("tasks:ranTasks:{}", h.name), Some(node));
        let err = match outcome {
            Outcome::Error(e) => Some(e.as_str()),
            _ => None,
        };
        if h.periodic {
            if let Some(e) = err {
                h.last_error = Some(e.to_string());
                self.count(PERIODIC_FAILURES, Some(node));
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
        if !self.failed.iter().any(|e| e == entry) {
            return "gone".to_string();
        }
        if self.data.contains_key(&h.id) {
            return "exists".to_string();
        }
        if let Some(target) = &h.target
            && !self.live(target)
        {
            return "unknownNode".to_string();
        }
        self.remove_failed(entry);
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
    pub(crate) fn all_records(&self) -> Vec<TaskRecord> {
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
    fn count(&mut self, field: &str, node: Option<&str>) {
        *self.counters.entry(field.to_string()).or_insert(0) += 1;
        self.raised.push((field.to_string(), node.map(str::to_string)));
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
        self.count(FAILED, None);
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
        self.count(FAILED, None);
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
                    self.count(DROPPED_FOR_DEAD_NODE, None);
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
    /// A task that must run on `dead`: dropped when it exists only for that node ("all"
    /// copies, per-node periodic instances), else dead-lettered `targetGone`.
    fn dispose_targeted_at_dead(
        &mut self,
        now: i64,
        h: TaskRecord,
        dead: &str,
        checker: &str,
        dropped: &mut u64,
        dead_lettered: &mut u64,
    ) {
        if per_node_only(&h) {
            self.data.remove(&h.id);
            *dropped += 1;
            self.count(DROPPED_FOR_DEAD_NODE, None);
        } else {
            let err = format!("target node {dead} is gone");
            self.dead_letter(now, h, FailReason::TargetGone, Some(&err), Some(checker));
            *dead_lettered += 1;
        }
    }

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
                self.dispose_targeted_at_dead(now, h, dead, checker, &mut dropped, &mut dead_lettered);
            } else if h.attempt >= max_crash {
                let err = format!("claimed {} times by nodes that died", h.attempt);
                self.dead_letter(now, h, FailReason::CrashLoop, Some(&err), Some(checker));
                dead_lettered += 1;
            } else {
                self.make_ready(now, h, true, Some(checker));
                reclaimed += 1;
                self.count(RECLAIMED, None);
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
                self.dispose_targeted_at_dead(now, h, dead, checker, &mut dropped, &mut dead_lettered);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::cluster::tasks::FailedEntry;
    use serde_json::value::RawValue;

    const A: &str = "host:1:11:aa";
    const B: &str = "host:2:22:bb";
    const NOW: i64 = 1_000_000;
    const BACKOFF: [i64; 3] = [1000, 5000, 30000];

    fn rec(id: &str) -> TaskRecord {
        let params = RawValue::from_string(r#"{"n":12345678901234567890}"#.to_string()).unwrap();
        TaskRecord::new(id.to_string(), "job".to_string(), "any", params)
    }

    fn targeted(id: &str, node: &str) -> TaskRecord {
        TaskRecord { target: Some(node.to_string()), ..rec(id) }
    }

    fn periodic(name: &str, node: Option<&str>, frequency: i64) -> TaskRecord {
        let id = match node {
            Some(n) => format!("periodic:{name}:{n}"),
            None => format!("periodic:{name}"),
        };
        TaskRecord {
            name: name.to_string(),
            periodic: true,
            frequency: Some(frequency),
            target: node.map(str::to_string),
            scope: if node.is_some() { "all" } else { "any" }.to_string(),
            ..rec(&id)
        }
    }

    fn two_nodes() -> MemoryTasks {
        let mut m = MemoryTasks::default();
        m.join(A);
        m.join(B);
        m
    }

    fn ready(m: &mut MemoryTasks, r: TaskRecord) -> String {
        match m.enqueue(NOW, r, EnqueueMode::Ready, None, None, None, false) {
            Answer::Ok(id) => id,
            other => panic!("enqueue answered {other:?}"),
        }
    }

    fn claim(m: &mut MemoryTasks, node: &str, token: &str) -> Option<TaskRecord> {
        match m.claim(NOW, node, 0, token, false) {
            Answer::Claimed(r) => Some(*r),
            Answer::Nothing => None,
            other => panic!("claim answered {other:?}"),
        }
    }

    fn queue(m: &MemoryTasks, key: &str) -> Vec<String> {
        m.queues.get(key).map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }

    fn entries(m: &MemoryTasks) -> Vec<FailedEntry> {
        m.failed(0, -1).into_iter().map(|e| FailedEntry::parse(e).unwrap()).collect()
    }

    fn complete(m: &mut MemoryTasks, now: i64, node: &str, id: &str, token: &str, outcome: Outcome) -> String {
        m.complete(now, node, 0, id, token, &outcome, &BACKOFF, 3, 1000)
    }

    /// §C3.1: every record has exactly one place, which its state and queue name.
    fn assert_one_place(m: &MemoryTasks) {
        for (id, r) in &m.data {
            let in_delayed = m.delayed.scores.contains_key(id) as usize;
            let in_proc = m.processing.contains_key(id) as usize;
            let in_queues: usize = m.queues.values().map(|q| q.iter().filter(|x| *x == id).count()).sum();
            assert_eq!(in_delayed + in_proc + in_queues, 1, "{id} has {in_delayed}/{in_proc}/{in_queues} places");
            match r.state.as_str() {
                "delayed" => assert!(in_delayed == 1 && r.queue.as_deref() == Some("actionHero:tasks:delayed")),
                "processing" => assert!(in_proc == 1 && r.queue.as_deref() == Some("actionHero:tasks:processing")),
                "pending" => assert!(queue(m, r.queue.as_deref().unwrap()).contains(id)),
                other => panic!("state {other}"),
            }
        }
        assert_eq!(m.delayed.order.len(), m.delayed.scores.len());
        for (at, id) in &m.delayed.order {
            assert_eq!(m.delayed.scores.get(id), Some(at));
            assert!(m.data.contains_key(id));
        }
        for id in m.processing.keys() {
            assert!(m.data.contains_key(id));
        }
    }

    #[test]
    fn enqueue_ready_goes_to_global_tail() {
        let mut m = two_nodes();
        ready(&mut m, rec("t1"));
        ready(&mut m, rec("t2"));
        assert_eq!(queue(&m, "actionHero:tasks:global"), ["t1", "t2"]);
        let r = m.record("t1").unwrap();
        assert_eq!(r.state, "pending");
        assert_eq!(r.queue.as_deref(), Some("actionHero:tasks:global"));
        assert_eq!(r.enqueued_at, Some(NOW));
        assert_eq!(r.run_at, Some(NOW - 1));
        assert_one_place(&m);
    }

    #[test]
    fn enqueue_delayed_by_delay_and_run_at() {
        let mut m = two_nodes();
        assert!(matches!(m.enqueue(NOW, rec("d1"), EnqueueMode::Ready, None, Some(500), None, false), Answer::Ok(_)));
        assert!(matches!(
            m.enqueue(NOW, rec("d2"), EnqueueMode::Ready, Some(NOW + 100), None, None, false),
            Answer::Ok(_)
        ));
        // A run_at in the past is ready at once and keeps the given runAt.
        assert!(matches!(
            m.enqueue(NOW, rec("d3"), EnqueueMode::Ready, Some(NOW - 50), None, None, false),
            Answer::Ok(_)
        ));
        let d1 = m.record("d1").unwrap();
        assert_eq!((d1.state.as_str(), d1.run_at), ("delayed", Some(NOW + 500)));
        assert_eq!(d1.queue.as_deref(), Some("actionHero:tasks:delayed"));
        assert_eq!(m.record("d3").unwrap().run_at, Some(NOW - 50));
        assert_eq!(queue(&m, "actionHero:tasks:global"), ["d3"]);
        assert_eq!(m.inspect().delayed, 2);
        assert_one_place(&m);
    }

    #[test]
    fn enqueue_targeted_goes_to_local_queue_or_unknown_node() {
        let mut m = two_nodes();
        ready(&mut m, targeted("t", B));
        assert_eq!(queue(&m, "actionHero:tasks:host-2-22-bb"), ["t"]);
        assert_eq!(m.record("t").unwrap().queue.as_deref(), Some("actionHero:tasks:host-2-22-bb"));
        let answer = m.enqueue(NOW, targeted("u", "ghost:1"), EnqueueMode::Ready, None, None, None, false);
        assert!(matches!(answer, Answer::UnknownNode(n) if n == "ghost:1"));
        assert!(m.record("u").is_none());
        assert_eq!(m.inspect().local.get(B), Some(&1));
        assert_eq!(m.inspect().local.get(A), Some(&0));
        assert_one_place(&m);
    }

    #[test]
    fn enqueue_all_fans_out_one_copy_per_member() {
        let mut m = two_nodes();
        let answer = m.enqueue(NOW, rec("p"), EnqueueMode::All, None, None, None, false);
        assert!(matches!(answer, Answer::Ok(id) if id == "p"));
        assert!(m.record("p").is_none(), "the parent is not kept");
        for node in [A, B] {
            let c = m.record(&format!("p@{node}")).unwrap();
            assert!(c.is_duplicate && !c.fan_out);
            assert_eq!(c.parent_id.as_deref(), Some("p"));
            assert_eq!(c.target.as_deref(), Some(node));
            assert_eq!(c.run_at, Some(NOW - 1));
            assert_eq!(c.queue, Some(local_queue(node)));
            assert_eq!(queue(&m, &local_queue(node)), [format!("p@{node}")]);
        }
        let mut empty = MemoryTasks::default();
        assert!(matches!(empty.enqueue(NOW, rec("q"), EnqueueMode::All, None, None, None, false), Answer::NoLivePeers));
        assert!(empty.data.is_empty());
        assert_one_place(&m);
    }

    #[test]
    fn enqueue_all_delayed_waits_as_parent_then_promotes_to_copies() {
        let mut m = two_nodes();
        assert!(matches!(m.enqueue(NOW, rec("p"), EnqueueMode::All, None, Some(10), None, false), Answer::Ok(_)));
        let parent = m.record("p").unwrap();
        assert!(parent.fan_out);
        assert_eq!(parent.state, "delayed");
        assert_eq!(m.promote(NOW + 9, 10, A), 0);
        assert_eq!(m.promote(NOW + 10, 10, A), 1);
        assert!(m.record("p").is_none());
        let copy = m.record(&format!("p@{B}")).unwrap();
        assert_eq!(copy.run_at, Some(NOW + 9));
        assert!(!copy.fan_out);
        assert_eq!(m.inspect().delayed, 0);
        assert_one_place(&m);
    }

    #[test]
    fn idempotency_key_returns_first_id_until_expiry() {
        let mut m = two_nodes();
        let key = Some(("k", 1000));
        assert!(matches!(m.enqueue(NOW, rec("first"), EnqueueMode::Ready, None, None, key, false), Answer::Ok(_)));
        let again = m.enqueue(NOW + 999, rec("second"), EnqueueMode::Ready, None, None, key, false);
        assert!(matches!(again, Answer::Exists(id) if id == "first"));
        assert!(m.record("second").is_none());
        // Expired at now + ttl.
        let later = m.enqueue(NOW + 1000, rec("third"), EnqueueMode::Ready, None, None, key, false);
        assert!(matches!(later, Answer::Ok(id) if id == "third"));
        let after = m.enqueue(NOW + 1001, rec("fourth"), EnqueueMode::Ready, None, None, key, false);
        assert!(matches!(after, Answer::Exists(id) if id == "third"));
        assert_eq!(m.idempotency.len(), 1);
        assert_eq!(m.idempotency_expiry.len(), 1);
    }

    #[test]
    fn create_if_absent_answers_exists_for_a_live_id() {
        let mut m = two_nodes();
        let seed = |m: &mut MemoryTasks| {
            m.enqueue(NOW, periodic("tick", None, 60), EnqueueMode::Ready, None, Some(60), None, true)
        };
        assert!(matches!(seed(&mut m), Answer::Ok(id) if id == "periodic:tick"));
        assert!(matches!(seed(&mut m), Answer::Exists(id) if id == "periodic:tick"));
        assert_eq!(m.inspect().delayed, 1);
        assert_eq!(m.record("periodic:tick").unwrap().run_at, Some(NOW + 60));
        assert_one_place(&m);
    }

    #[test]
    fn promote_moves_due_ids_in_order_within_the_batch() {
        let mut m = two_nodes();
        for (id, delay) in [("c", 30), ("a", 10), ("b", 10), ("z", 100)] {
            m.enqueue(NOW, rec(id), EnqueueMode::Ready, None, Some(delay), None, false);
        }
        assert_eq!(m.promote(NOW + 30, 2, A), 2);
        assert_eq!(queue(&m, "actionHero:tasks:global"), ["a", "b"]);
        assert_eq!(m.promote(NOW + 30, 100, A), 1);
        assert_eq!(queue(&m, "actionHero:tasks:global"), ["a", "b", "c"]);
        assert_eq!(m.inspect().delayed, 1);
        assert_eq!(m.record("a").unwrap().state, "pending");
        assert_one_place(&m);
    }

    #[test]
    fn promote_of_targeted_at_non_member_dead_letters_target_gone() {
        let mut m = two_nodes();
        m.enqueue(NOW, targeted("t", B), EnqueueMode::Ready, None, Some(10), None, false);
        m.peers.retain(|p| p != B);
        assert_eq!(m.promote(NOW + 10, 10, A), 0);
        assert!(m.record("t").is_none());
        let e = entries(&m);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].reason, FailReason::TargetGone);
        assert_eq!(e[0].error.as_deref(), Some(format!("target node {B} is gone").as_str()));
        assert_eq!(e[0].server_id, A);
        assert_eq!(e[0].failed_at, NOW + 10);
        let task = e[0].task.as_ref().unwrap();
        assert_eq!(task.state, "failed");
        assert_eq!(task.last_error, e[0].error);
        assert!(e[0].raw.ends_with(r#","params":{"n":12345678901234567890}}}"#), "{}", e[0].raw);
        assert_eq!(m.counters.get("tasks:failed"), Some(&1));
        assert_one_place(&m);
    }

    #[test]
    fn promote_of_per_node_periodic_of_non_member_drops_it() {
        let mut m = two_nodes();
        m.enqueue(NOW, periodic("tick", Some(B), 10), EnqueueMode::Ready, None, Some(10), None, true);
        m.peers.retain(|p| p != B);
        assert_eq!(m.promote(NOW + 10, 10, A), 0);
        assert!(m.data.is_empty());
        assert!(m.failed.is_empty());
        assert_eq!(m.counters.get("tasks:droppedForDeadNode"), Some(&1));
        assert_eq!(m.inspect().delayed, 0);
    }

    #[test]
    fn promote_of_all_parent_without_members_dead_letters_it() {
        let mut m = two_nodes();
        m.enqueue(NOW, rec("p"), EnqueueMode::All, None, Some(10), None, false);
        m.peers.clear();
        assert_eq!(m.promote(NOW + 10, 10, A), 1);
        let e = entries(&m);
        assert_eq!(e[0].reason, FailReason::TargetGone);
        assert_eq!(e[0].error.as_deref(), Some("no live peers to fan out to"));
        assert!(e[0].task.as_ref().unwrap().fan_out);
        assert!(m.data.is_empty());
    }

    #[test]
    fn promote_of_missing_record_dead_letters_corrupt() {
        let mut m = two_nodes();
        m.delayed.add(NOW, "lost");
        assert_eq!(m.promote(NOW, 10, A), 0);
        let e = entries(&m);
        assert_eq!(e[0].reason, FailReason::Corrupt);
        assert!(e[0].task.is_none());
        assert!(e[0].raw.ends_with(r#","task":{"id":"lost","raw":null}}"#), "{}", e[0].raw);
        assert_eq!(m.retry_failed(NOW, &e[0].raw), "corrupt");
    }

    #[test]
    fn claim_takes_local_first_unless_global_first() {
        let mut m = two_nodes();
        ready(&mut m, rec("g1"));
        ready(&mut m, rec("g2"));
        ready(&mut m, targeted("l1", A));
        let first = claim(&mut m, A, "t1").unwrap();
        assert_eq!(first.id, "l1");
        let Answer::Claimed(second) = m.claim(NOW, A, 1, "t2", false) else { panic!() };
        assert_eq!(second.id, "g1");
        ready(&mut m, targeted("l2", A));
        let Answer::Claimed(third) = m.claim(NOW, A, 2, "t3", true) else { panic!() };
        assert_eq!(third.id, "g2");
        let Answer::Claimed(fourth) = m.claim(NOW, A, 3, "t4", true) else { panic!() };
        assert_eq!(fourth.id, "l2");
        assert!(claim(&mut m, A, "t5").is_none());
        // B never sees A's local work.
        ready(&mut m, targeted("l3", A));
        assert!(claim(&mut m, B, "t6").is_none());
        assert_one_place(&m);
    }

    #[test]
    fn claim_records_ownership_and_increments_attempt() {
        let mut m = two_nodes();
        ready(&mut m, rec("t"));
        let Answer::Claimed(r) = m.claim(NOW + 5, A, 3, "tok", false) else { panic!() };
        assert_eq!(r.attempt, 1);
        assert_eq!(r.state, "processing");
        assert_eq!(r.queue.as_deref(), Some("actionHero:tasks:processing"));
        assert_eq!(r.api_id.as_deref(), Some(A));
        assert_eq!(r.worker_id, Some(3));
        assert_eq!(r.token.as_deref(), Some("tok"));
        assert_eq!(r.claimed_at, Some(NOW + 5));
        let stored = m.record("t").unwrap();
        assert_eq!(stored.token.as_deref(), Some("tok"));
        let c = m.processing.get("t").unwrap();
        assert_eq!((c.server_id.as_str(), c.worker, c.token.as_str(), c.claimed_at), (A, 3, "tok", NOW + 5));
        let i = m.inspect();
        assert_eq!(i.processing, 1);
        assert_eq!(i.workers.get(&format!("{A}#3")).map(String::as_str), Some("working task: t"));
        assert_eq!(i.global, 0);
        assert!(m.queues.is_empty(), "an emptied list is deleted");
        assert_one_place(&m);
    }

    #[test]
    fn claim_skips_missing_records_and_evicted_nodes_cannot_claim() {
        let mut m = two_nodes();
        m.push("actionHero:tasks:global", "ghost".to_string(), false);
        ready(&mut m, rec("t"));
        assert_eq!(claim(&mut m, A, "x").unwrap().id, "t");
        assert_eq!(entries(&m)[0].reason, FailReason::Corrupt);
        assert_eq!(entries(&m)[0].server_id, A);
        assert!(matches!(m.claim(NOW, "ghost:9", 0, "y", false), Answer::Evicted));
    }

    #[test]
    fn complete_ok_deletes_and_sets_idle() {
        let mut m = two_nodes();
        ready(&mut m, rec("t"));
        claim(&mut m, A, "tok");
        assert_eq!(complete(&mut m, NOW, A, "t", "tok", Outcome::Ok), "done");
        assert!(m.data.is_empty() && m.processing.is_empty());
        assert_eq!(m.inspect().workers.get(&format!("{A}#0")).map(String::as_str), Some("idle"));
    }

    #[test]
    fn complete_error_retries_with_backoff_then_dead_letters() {
        let mut m = two_nodes();
        ready(&mut m, TaskRecord { max_attempts: 3, ..rec("t") });
        let mut now = NOW;
        for (n, delay) in [(1, 1000), (2, 5000)] {
            let r = m.claim(now, A, 0, "tok", false);
            assert!(matches!(r, Answer::Claimed(ref r) if r.attempt == n));
            assert_eq!(complete(&mut m, now, A, "t", "tok", Outcome::Error(format!("boom {n}"))), "retry");
            let r = m.record("t").unwrap();
            assert_eq!((r.state.as_str(), r.run_at), ("delayed", Some(now + delay)));
            assert_eq!(r.last_error, Some(format!("boom {n}")));
            assert!(r.token.is_none() && r.api_id.is_none() && r.worker_id.is_none() && r.claimed_at.is_none());
            assert_one_place(&m);
            now += delay;
            assert_eq!(m.promote(now, 10, A), 1);
        }
        assert!(matches!(m.claim(now, A, 0, "tok", false), Answer::Claimed(ref r) if r.attempt == 3));
        assert_eq!(complete(&mut m, now, A, "t", "tok", Outcome::Error("last".into())), "deadLettered");
        assert!(m.data.is_empty());
        let e = entries(&m);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].reason, FailReason::Error);
        assert_eq!(e[0].error.as_deref(), Some("last"));
        assert_eq!(e[0].server_id, A);
        let task = e[0].task.as_ref().unwrap();
        assert_eq!((task.attempt, task.state.as_str()), (3, "failed"));
        assert!(task.token.is_none());
        assert_eq!(m.counters.get("tasks:failed"), Some(&1));
    }

    #[test]
    fn complete_retry_delay_uses_last_backoff_and_default() {
        let mut m = two_nodes();
        ready(&mut m, TaskRecord { max_attempts: 10, attempt: 6, ..rec("t") });
        claim(&mut m, A, "tok");
        assert_eq!(complete(&mut m, NOW, A, "t", "tok", Outcome::Error("e".into())), "retry");
        assert_eq!(m.record("t").unwrap().run_at, Some(NOW + 30000));
        m.promote(NOW + 30000, 1, A);
        claim(&mut m, A, "tok2");
        let answer = m.complete(NOW, A, 0, "t", "tok2", &Outcome::Error("e".into()), &[], 3, 1000);
        assert_eq!(answer, "retry");
        assert_eq!(m.record("t").unwrap().run_at, Some(NOW + 1000));
    }

    #[test]
    fn complete_periodic_reschedules_same_id_on_success_and_failure() {
        let mut m = two_nodes();
        m.enqueue(NOW, periodic("tick", None, 50), EnqueueMode::Ready, None, Some(50), None, true);
        m.promote(NOW + 50, 10, A);
        claim(&mut m, A, "a");
        assert_eq!(complete(&mut m, NOW + 60, A, "periodic:tick", "a", Outcome::Ok), "rescheduled");
        let r = m.record("periodic:tick").unwrap();
        assert_eq!((r.state.as_str(), r.run_at, r.attempt), ("delayed", Some(NOW + 110), 0));
        m.promote(NOW + 110, 10, A);
        claim(&mut m, A, "b");
        assert_eq!(complete(&mut m, NOW + 120, A, "periodic:tick", "b", Outcome::Error("bad".into())), "rescheduled");
        let r = m.record("periodic:tick").unwrap();
        assert_eq!(r.last_error.as_deref(), Some("bad"));
        assert_eq!(r.run_at, Some(NOW + 170));
        assert_eq!(m.counters.get("tasks:periodicFailures"), Some(&1));
        assert!(m.failed.is_empty());
        assert_one_place(&m);
    }

    #[test]
    fn complete_bounce_requeues_without_counting_and_dead_letters_at_limit() {
        let mut m = two_nodes();
        ready(&mut m, rec("t"));
        let mut now = NOW;
        for n in 1..=2u32 {
            claim(&mut m, A, "tok");
            assert_eq!(complete(&mut m, now, A, "t", "tok", Outcome::Bounce("unknown".into())), "bounced");
            let r = m.record("t").unwrap();
            assert_eq!((r.bounces, r.attempt, r.run_at), (n, 0, Some(now + 1000)));
            assert_eq!(r.state, "delayed");
            now += 1000;
            m.promote(now, 10, A);
        }
        claim(&mut m, A, "tok");
        assert_eq!(complete(&mut m, now, A, "t", "tok", Outcome::Bounce("unknown".into())), "deadLettered");
        let e = entries(&m);
        assert_eq!(e[0].reason, FailReason::NotRunnableHere);
        assert_eq!(e[0].task.as_ref().unwrap().bounces, 3);
        assert_eq!(e[0].task.as_ref().unwrap().attempt, 0);
        assert_eq!(m.counters.get("tasks:notRunnableHere"), Some(&3));
        assert!(m.data.is_empty());
    }

    #[test]
    fn complete_with_stale_token_changes_nothing() {
        let mut m = two_nodes();
        ready(&mut m, rec("t"));
        claim(&mut m, A, "tok");
        assert_eq!(complete(&mut m, NOW, A, "t", "other", Outcome::Ok), "stale");
        assert_eq!(complete(&mut m, NOW, A, "nope", "tok", Outcome::Ok), "stale");
        assert_eq!(m.record("t").unwrap().state, "processing");
        assert!(m.processing.contains_key("t"));
        assert_eq!(m.inspect().workers.get(&format!("{A}#0")).map(String::as_str), Some("working task: t"));
    }

    #[test]
    fn complete_of_stop_requested_deletes() {
        let mut m = two_nodes();
        m.enqueue(NOW, periodic("tick", None, 50), EnqueueMode::Ready, None, None, None, true);
        claim(&mut m, A, "tok");
        assert_eq!(m.stop_periodic("tick"), 1);
        assert!(m.record("periodic:tick").unwrap().stop_requested);
        assert_eq!(complete(&mut m, NOW, A, "periodic:tick", "tok", Outcome::Ok), "stopped");
        assert!(m.data.is_empty() && m.processing.is_empty() && m.inspect().delayed == 0);
    }

    #[test]
    fn complete_of_missing_record_is_corrupt() {
        let mut m = two_nodes();
        ready(&mut m, rec("t"));
        claim(&mut m, A, "tok");
        m.data.remove("t");
        assert_eq!(complete(&mut m, NOW, A, "t", "tok", Outcome::Ok), "corrupt");
        assert_eq!(entries(&m)[0].reason, FailReason::Corrupt);
    }

    #[test]
    fn cancel_removes_waiting_tasks_only() {
        let mut m = two_nodes();
        ready(&mut m, rec("g"));
        ready(&mut m, targeted("l", B));
        m.enqueue(NOW, rec("d"), EnqueueMode::Ready, None, Some(100), None, false);
        ready(&mut m, rec("c"));
        assert!(m.cancel("d"));
        assert_eq!(m.inspect().delayed, 0);
        assert!(m.delayed.order.is_empty() && m.delayed.scores.is_empty());
        assert!(m.cancel("l"));
        assert_eq!(m.inspect().local.get(B), Some(&0));
        assert!(m.cancel("g"));
        assert!(!m.cancel("g"));
        assert!(!m.cancel("unknown"));
        assert_eq!(claim(&mut m, A, "tok").unwrap().id, "c");
        assert!(!m.cancel("c"));
        assert!(m.record("c").is_some());
        assert_one_place(&m);
    }

    #[test]
    fn failed_uses_lrange_indexes() {
        let m = MemoryTasks { failed: (0..5).map(|i| i.to_string()).collect(), ..MemoryTasks::default() };
        assert_eq!(m.failed(0, -1), ["0", "1", "2", "3", "4"]);
        assert_eq!(m.failed(1, 2), ["1", "2"]);
        assert_eq!(m.failed(-2, -1), ["3", "4"]);
        assert_eq!(m.failed(-100, 1), ["0", "1"]);
        assert_eq!(m.failed(3, 100), ["3", "4"]);
        assert!(m.failed(5, 10).is_empty());
        assert!(m.failed(3, 2).is_empty());
        assert!(m.failed(0, -6).is_empty());
        assert!(MemoryTasks::default().failed(0, -1).is_empty());
    }

    #[test]
    fn retry_failed_resets_attempt_and_requeues_at_original_target() {
        let mut m = two_nodes();
        ready(&mut m, TaskRecord { max_attempts: 1, ..targeted("t", B) });
        claim(&mut m, B, "tok");
        complete(&mut m, NOW, B, "t", "tok", Outcome::Error("x".into()));
        let raw = m.failed(0, -1).remove(0);
        // A live task with the same id: the entry is kept.
        ready(&mut m, rec("t"));
        assert_eq!(m.retry_failed(NOW + 1, &raw), "exists");
        assert_eq!(m.failed.len(), 1);
        assert!(m.cancel("t"));
        assert_eq!(m.retry_failed(NOW + 1, &raw), "ok");
        let r = m.record("t").unwrap();
        assert_eq!((r.attempt, r.bounces, r.state.as_str()), (0, 0, "pending"));
        assert_eq!(r.last_error.as_deref(), Some("x"));
        assert_eq!(r.queue, Some(local_queue(B)));
        assert!(r.params.get().contains("12345678901234567890"));
        assert!(m.failed.is_empty());
        // The entry is gone, even though the id is live again.
        assert_eq!(m.retry_failed(NOW + 1, &raw), "gone");
        assert_eq!(m.retry_failed(NOW + 1, "{}"), "corrupt");
        assert_one_place(&m);
    }

    #[test]
    fn retry_failed_of_gone_target_keeps_entry() {
        let mut m = two_nodes();
        ready(&mut m, targeted("t", B));
        claim(&mut m, B, "tok");
        complete(&mut m, NOW, B, "t", "tok", Outcome::Error("x".into()));
        let raw = m.failed(0, -1).remove(0);
        m.peers.retain(|p| p != B);
        assert_eq!(m.retry_failed(NOW, &raw), "unknownNode");
        assert_eq!(m.failed.len(), 1);
    }

    #[test]
    fn retry_failed_of_all_parent_fans_out_again() {
        let mut m = two_nodes();
        m.enqueue(NOW, rec("p"), EnqueueMode::All, None, Some(10), None, false);
        let peers = std::mem::take(&mut m.peers);
        m.promote(NOW + 10, 10, A);
        let raw = m.failed(0, -1).remove(0);
        assert_eq!(m.retry_failed(NOW + 20, &raw), "unknownNode");
        assert_eq!(m.failed, std::slice::from_ref(&raw));
        m.peers = peers;
        assert_eq!(m.retry_failed(NOW + 20, &raw), "ok");
        assert!(m.record(&format!("p@{A}")).is_some() && m.record(&format!("p@{B}")).is_some());
        assert!(m.failed.is_empty());
        assert_one_place(&m);
    }

    #[test]
    fn remove_failed_removes_one_entry() {
        let mut m = MemoryTasks { failed: vec!["a".into(), "b".into(), "a".into()], ..MemoryTasks::default() };
        assert!(m.remove_failed("a"));
        assert_eq!(m.failed, ["b", "a"]);
        assert!(!m.remove_failed("c"));
    }

    #[test]
    fn stop_periodic_deletes_waiting_instances_and_marks_claimed() {
        let mut m = two_nodes();
        let seed = |m: &mut MemoryTasks, r| m.enqueue(NOW, r, EnqueueMode::Ready, None, Some(10), None, true);
        seed(&mut m, periodic("tick", None, 10));
        seed(&mut m, periodic("tick", Some(A), 10));
        seed(&mut m, periodic("tick", Some(B), 10));
        seed(&mut m, periodic("other", None, 10));
        m.promote(NOW + 10, 10, A);
        // periodic:tick:A is claimed, periodic:tick:B waits in B's queue, periodic:tick in global.
        let Answer::Claimed(c) = m.claim(NOW + 10, A, 0, "tok", false) else { panic!() };
        assert_eq!(c.id, format!("periodic:tick:{A}"));
        assert_eq!(m.stop_periodic("tick"), 3);
        assert!(m.record("periodic:tick").is_none());
        assert!(m.record(&format!("periodic:tick:{B}")).is_none());
        assert!(m.record(&format!("periodic:tick:{A}")).unwrap().stop_requested);
        assert_eq!(queue(&m, "actionHero:tasks:global"), ["periodic:other"]);
        assert_eq!(m.inspect().local.get(B), Some(&0));
        assert_eq!(m.stop_periodic("tick"), 1);
        assert_eq!(m.stop_periodic("nothing"), 0);
        // A delayed instance.
        m.enqueue(NOW, periodic("later", None, 10), EnqueueMode::Ready, None, Some(10), None, true);
        assert_eq!(m.stop_periodic("later"), 1);
        assert_eq!(m.inspect().delayed, 0);
        assert_one_place(&m);
    }

    #[test]
    fn leave_hands_claims_back_and_disposes_local_queue() {
        let mut m = two_nodes();
        ready(&mut m, rec("waiting"));
        ready(&mut m, rec("any1"));
        ready(&mut m, TaskRecord { attempt: 4, ..rec("any2") });
        // Pops "waiting" first; hand it back to global so A claims any1/any2.
        let w = claim(&mut m, B, "b").unwrap();
        assert_eq!(w.id, "waiting");
        let c1 = claim(&mut m, A, "a1").unwrap();
        let c2 = claim(&mut m, A, "a2").unwrap();
        assert_eq!((c1.id.as_str(), c2.id.as_str()), ("any1", "any2"));
        // A claimed copy of an "all" task, and one claimed one-off targeted at A.
        m.enqueue(NOW, rec("p"), EnqueueMode::All, None, None, None, false);
        ready(&mut m, targeted("mine", A));
        ready(&mut m, targeted("mine-claimed", A));
        assert_eq!(claim(&mut m, A, "a3").unwrap().id, format!("p@{A}"));
        // Local queue of A now: mine, mine-claimed; claim the first so it is processing.
        assert_eq!(claim(&mut m, A, "a4").unwrap().id, "mine");
        // A per-node periodic instance of A waiting in its local queue.
        m.enqueue(NOW, periodic("tick", Some(A), 10), EnqueueMode::Ready, None, None, None, true);
        m.set_worker_status(format!("{A}#0"), "idle".into());
        m.set_worker_status(format!("{B}#0"), "working task: waiting".into());

        let (reclaimed, dropped, dead_lettered) = m.leave(NOW + 7, A, 5);
        assert_eq!(reclaimed, 1, "any1 handed back");
        // Dropped: the claimed "all" copy and the waiting periodic instance.
        assert_eq!(dropped, 2);
        // Dead-lettered: any2 (crash loop: attempt 5 >= 5), mine (claimed, targetGone),
        // mine-claimed (waiting, targetGone).
        assert_eq!(dead_lettered, 3);
        assert!(!m.live(A));
        let global = queue(&m, "actionHero:tasks:global");
        assert_eq!(global, ["any1"], "reclaimed work goes to the head of global");
        let r = m.record("any1").unwrap();
        assert_eq!((r.state.as_str(), r.attempt), ("pending", 1));
        assert!(r.token.is_none() && r.api_id.is_none() && r.worker_id.is_none() && r.claimed_at.is_none());
        assert!(m.record(&format!("p@{A}")).is_none());
        assert!(m.record(&format!("p@{B}")).is_some(), "B's copy is untouched");
        assert!(m.record(&format!("periodic:tick:{A}")).is_none());
        assert_eq!(m.counters.get("tasks:reclaimed"), Some(&1));
        assert_eq!(m.counters.get("tasks:droppedForDeadNode"), Some(&2));
        let reasons: Vec<(FailReason, String, String)> =
            entries(&m).into_iter().map(|e| (e.reason, e.task.unwrap().id, e.server_id)).collect();
        assert!(reasons.contains(&(FailReason::CrashLoop, "any2".into(), A.into())));
        assert!(reasons.contains(&(FailReason::TargetGone, "mine".into(), A.into())));
        assert!(reasons.contains(&(FailReason::TargetGone, "mine-claimed".into(), A.into())));
        let crash = entries(&m).into_iter().find(|e| e.reason == FailReason::CrashLoop).unwrap();
        assert_eq!(crash.error.as_deref(), Some("claimed 5 times by nodes that died"));
        assert!(!m.queues.contains_key(&local_queue(A)));
        let i = m.inspect();
        assert!(!i.workers.contains_key(&format!("{A}#0")));
        assert!(i.workers.contains_key(&format!("{B}#0")));
        assert_eq!(i.processing, 1, "B's claim stays");
        assert!(!i.local.contains_key(A));
        // A completion by the departed node is stale.
        assert_eq!(complete(&mut m, NOW, A, "any1", "a1", Outcome::Ok), "stale");
        assert_one_place(&m);
    }

    #[test]
    fn leave_sends_untargeted_local_ids_to_global_and_drops_stop_requested() {
        let mut m = two_nodes();
        m.enqueue(NOW, periodic("tick", None, 10), EnqueueMode::Ready, None, None, None, true);
        claim(&mut m, A, "tok");
        m.stop_periodic("tick");
        // An "any" task found in A's local queue (not produced by our design) goes to global.
        let mut stray = rec("stray");
        stray.state = "pending".into();
        stray.queue = Some(local_queue(A));
        m.data.insert("stray".into(), stray);
        m.push(&local_queue(A), "stray".into(), false);
        let (reclaimed, dropped, dead_lettered) = m.leave(NOW, A, 5);
        assert_eq!((reclaimed, dropped, dead_lettered), (0, 0, 0));
        assert!(m.record("periodic:tick").is_none());
        let r = m.record("stray").unwrap();
        assert_eq!(r.queue.as_deref(), Some("actionHero:tasks:global"));
        assert!(r.target.is_none());
        assert_one_place(&m);
    }

    #[test]
    fn inspect_counts_every_place() {
        let mut m = two_nodes();
        ready(&mut m, rec("g"));
        ready(&mut m, rec("g2"));
        ready(&mut m, targeted("l", B));
        m.enqueue(NOW, rec("d"), EnqueueMode::Ready, None, Some(5), None, false);
        claim(&mut m, A, "tok");
        m.dead_letter_corrupt(NOW, "x", None);
        let i = m.inspect();
        assert_eq!((i.global, i.delayed, i.processing, i.failed), (1, 1, 1, 1));
        assert_eq!(i.local, BTreeMap::from([(A.to_string(), 0), (B.to_string(), 1)]));
        assert_eq!(i.workers.len(), 1);
    }
}
