//! The memory backend of tasks and peers: the same places, records and answers as the redis
//! scripts in `scripts.rs`, in process. Every method is one critical section (the caller
//! holds the mutex), which gives the atomicity the scripts get from redis. Membership is
//! the set of joined node handles sharing this state (a stand-alone process has one);
//! there is no dead-peer detection, since handles of one process cannot die separately.

use super::record::TaskRecord;
use super::{Answer, EnqueueMode, Inspection, Outcome};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Tasks and membership of a stand-alone node.
#[derive(Debug, Default)]
pub(crate) struct MemoryTasks {
    /// Joined node ids, in join order.
    pub(crate) peers: Vec<String>,
    /// Task records by id (`tasks:data`).
    data: HashMap<String, TaskRecord>,
    /// Ready queues: `global` and one per node id (`tasks:global`, `tasks:{node}`).
    queues: HashMap<String, VecDeque<String>>,
    /// Delayed ids by (runAt, id) (`tasks:delayed`).
    delayed: BTreeSet<(i64, String)>,
    /// Claims: id → (node, worker, token, claimedAt) (`tasks:processing`).
    processing: HashMap<String, (String, u32, String, i64)>,
    /// Dead-letter entries, oldest first (`tasks:failed`).
    failed: Vec<String>,
    /// Idempotency keys: key → (task id, expires at ms).
    idempotency: HashMap<String, (String, i64)>,
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
        _now: i64,
        _record: TaskRecord,
        _mode: EnqueueMode,
        _run_at: Option<i64>,
        _delay_ms: Option<i64>,
        _idempotency: Option<(&str, i64)>,
        _create_if_absent: bool,
    ) -> Answer {
        todo!("memory enqueue")
    }

    /// PROMOTE.
    pub(crate) fn promote(&mut self, _now: i64, _batch: usize, _node: &str) -> usize {
        todo!("memory promote")
    }

    /// CLAIM.
    pub(crate) fn claim(
        &mut self,
        _now: i64,
        _node: &str,
        _worker: u32,
        _token: &str,
        _global_first: bool,
    ) -> Answer {
        todo!("memory claim")
    }

    /// COMPLETE.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn complete(
        &mut self,
        _now: i64,
        _node: &str,
        _worker: u32,
        _id: &str,
        _token: &str,
        _outcome: &Outcome,
        _backoff_ms: &[i64],
        _bounce_limit: u32,
        _bounce_delay_ms: i64,
    ) -> String {
        todo!("memory complete")
    }

    /// CANCEL.
    pub(crate) fn cancel(&mut self, _id: &str) -> bool {
        todo!("memory cancel")
    }

    /// The dead-letter entries from `start` to `stop` inclusive (LRANGE semantics,
    /// negative indexes count from the end).
    pub(crate) fn failed(&self, _start: isize, _stop: isize) -> Vec<String> {
        todo!("memory failed")
    }

    /// RETRY_FAILED.
    pub(crate) fn retry_failed(&mut self, _now: i64, _entry: &str) -> String {
        todo!("memory retry_failed")
    }

    /// LREM of one dead-letter entry.
    pub(crate) fn remove_failed(&mut self, _entry: &str) -> bool {
        todo!("memory remove_failed")
    }

    /// STOP_PERIODIC.
    pub(crate) fn stop_periodic(&mut self, _name: &str) -> usize {
        todo!("memory stop_periodic")
    }

    /// LEAVE: the recovery of `node` applied by itself.
    pub(crate) fn leave(&mut self, _now: i64, _node: &str, _max_crash: u32) -> (u64, u64, u64) {
        todo!("memory leave")
    }

    /// The overview `Tasks::inspect` answers.
    pub(crate) fn inspect(&self) -> Inspection {
        todo!("memory inspect")
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
}
