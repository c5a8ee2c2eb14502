//! The task queue (spec §C3) against both backends (§C10.11): enqueue to any node, this
//! node, a named node and all nodes, delays, idempotency keys, retries with backoff, the dead
//! letter, periodic tasks, cancel, rolling-deploy bounces, and the §C3.1 invariant (every
//! task in exactly one place) checked by scanning redis. Nodes are in-process handles with
//! their own redis connections; the kill/pause cases with real processes are in
//! `cluster_task_processes.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/cluster_harness.rs"]
mod harness;
#[path = "common/redis_server.rs"]
mod redis_server;

use actioncluster::{
    Cluster, ClusterSettings, EnqueueOptions, FailReason, Numeric, Scope, Target, TaskDefinition, TaskError, TaskScope,
    TaskSettings,
};
use harness::{Harness, Kind, WAIT, both_backends};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One handler run as the ledger sees it.
#[derive(Debug, Clone)]
struct Run {
    id: String,
    name: String,
    attempt: u32,
    node: String,
    params: Value,
    parent: Option<String>,
}

fn fast_settings() -> ClusterSettings {
    ClusterSettings {
        tasks: TaskSettings {
            workers: 2,
            cycle_time: Duration::from_millis(20),
            ping_interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(1500),
            dead_check_interval: Duration::from_millis(100),
            retry_backoff: vec![Duration::from_millis(50), Duration::from_millis(100)],
            bounce_delay: Duration::from_millis(50),
            shutdown_timeout: Some(Duration::from_millis(300)),
            cancel_grace: Duration::from_millis(200),
            ..TaskSettings::default()
        },
        ..ClusterSettings::default()
    }
}

/// A task that reports every run on `tx` and succeeds.
fn recording(name: &str, tx: mpsc::UnboundedSender<Run>) -> TaskDefinition {
    TaskDefinition::new(name, move |ctx| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Run {
                id: ctx.id,
                name: ctx.name,
                attempt: ctx.attempt,
                node: ctx.node_id.to_string(),
                params: ctx.params,
                parent: ctx.parent_id,
            });
            Ok(())
        }
    })
}

async fn next_run(rx: &mut mpsc::UnboundedReceiver<Run>) -> Run {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("a task run within the wait").expect("channel open")
}

/// Starts `node` and waits until it is a member.
async fn start(node: &Cluster, shutdown: &CancellationToken) {
    node.start(shutdown.clone());
    let mut events = node.peer_events();
    if !node.is_member() {
        tokio::time::timeout(WAIT, async {
            while !node.is_member() {
                let _ = tokio::time::timeout(Duration::from_millis(50), events.recv()).await;
            }
        })
        .await
        .expect("node joined");
    }
}

/// Waits until nothing is waiting, claimed or recorded (every task finished).
async fn wait_drained(node: &Cluster) {
    tokio::time::timeout(WAIT, async {
        loop {
            let i = node.tasks().inspect().await.unwrap();
            let records = node.tasks().records(None).await.unwrap();
            if i.global == 0 && i.delayed == 0 && i.processing == 0 && records.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("queues drained");
}

/// Waits until the dead letter holds `count` entries and answers them.
async fn wait_failed(node: &Cluster, count: usize) -> Vec<actioncluster::FailedEntry> {
    tokio::time::timeout(WAIT, async {
        loop {
            let f = node.tasks().failed(0, -1).await.unwrap();
            if f.len() >= count {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("dead-letter entries within the wait")
}

/// §C3.1 on redis: every id is in exactly one place and its record agrees with it.
pub async fn assert_one_place_each(h: &Harness) {
    let Some(mut con) = h.raw().await else { return };
    let data: HashMap<String, String> =
        redis::cmd("HGETALL").arg("actionHero:tasks:data").query_async(&mut con).await.unwrap();
    let mut places: HashMap<String, Vec<String>> = HashMap::new();
    let delayed: Vec<String> =
        redis::cmd("ZRANGE").arg("actionHero:tasks:delayed").arg(0).arg(-1).query_async(&mut con).await.unwrap();
    for id in delayed {
        places.entry(id).or_default().push("actionHero:tasks:delayed".into());
    }
    let processing: HashMap<String, String> =
        redis::cmd("HGETALL").arg("actionHero:tasks:processing").query_async(&mut con).await.unwrap();
    for id in processing.keys() {
        places.entry(id.clone()).or_default().push("actionHero:tasks:processing".into());
    }
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("actionHero:tasks:*").query_async(&mut con).await.unwrap();
    keys.retain(|k| {
        !["data", "delayed", "processing", "failed", "workerStatus"].iter().any(|s| k.ends_with(&format!("tasks:{s}")))
            && !k.contains("idempotency:")
    });
    for key in keys {
        let ids: Vec<String> = redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut con).await.unwrap();
        for id in ids {
            places.entry(id).or_default().push(key.clone());
        }
    }
    for (id, where_) in &places {
        assert_eq!(where_.len(), 1, "task {id} is in {where_:?}");
        let record: Value = serde_json::from_str(data.get(id).unwrap_or_else(|| panic!("{id} has no record"))).unwrap();
        let state = record["state"].as_str().unwrap();
        let expected = match where_[0].as_str() {
            "actionHero:tasks:delayed" => "delayed",
            "actionHero:tasks:processing" => "processing",
            _ => "pending",
        };
        assert_eq!(state, expected, "record of {id} says {state} but it is in {}", where_[0]);
    }
    for id in data.keys() {
        assert!(places.contains_key(id), "record {id} has no place");
    }
}

both_backends!(
    any_tasks_run_once_each,
    targeted_tasks_run_on_their_node,
    all_nodes_fan_out_one_copy_per_member,
    delayed_task_waits_for_its_time,
    idempotency_key_returns_the_first_id,
    failed_runs_retry_then_dead_letter,
    dead_letter_retry_and_remove,
    periodic_task_has_one_instance_and_repeats,
    cancel_removes_waiting_tasks_only,
    unknown_name_bounces_to_a_node_that_knows_it,
    enqueue_errors_are_typed,
    graceful_stop_hands_back_and_leaves,
    timeout_cancels_the_run_and_counts_a_failure,
);

async fn any_tasks_run_once_each(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut nodes = vec![h.cluster.clone(), h.node("node-b:1").await, h.node("node-c:1").await];
    if kind == Kind::Memory {
        nodes.truncate(1);
    }
    for n in &nodes {
        n.tasks().define(recording("work", tx.clone()));
        start(n, &shutdown).await;
    }
    let mut ids = HashSet::new();
    for i in 0..60 {
        let id =
            nodes[i % nodes.len()].tasks().enqueue("work", json!({"n": i}), EnqueueOptions::default()).await.unwrap();
        assert!(ids.insert(id));
    }
    let mut seen = HashMap::new();
    for _ in 0..60 {
        let run = next_run(&mut rx).await;
        assert_eq!(run.attempt, 1);
        assert!(ids.contains(&run.id), "unknown id {}", run.id);
        *seen.entry(run.id).or_insert(0) += 1;
    }
    wait_drained(&nodes[0]).await;
    assert!(rx.try_recv().is_err(), "a task ran twice");
    assert!(seen.values().all(|&c| c == 1));
    // Every accepted run is counted, on both backends, in the stats layer.
    let ran = nodes[0].stats().get("tasks:ranTasks:work", Scope::Cluster).await.unwrap();
    assert_eq!(ran, Some(Numeric::Int(60)));
    assert_one_place_each(&h).await;
    shutdown.cancel();
}

async fn targeted_tasks_run_on_their_node(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = h.cluster.clone();
    let b = h.node("node-b:1").await;
    for n in [&a, &b] {
        n.tasks().define(recording("here", tx.clone()));
        start(n, &shutdown).await;
    }
    let b_id = b.node_id().to_string();
    for _ in 0..10 {
        a.tasks().enqueue("here", json!({}), EnqueueOptions::target(Target::Node(b_id.clone()))).await.unwrap();
        a.tasks().enqueue("here", json!({}), EnqueueOptions::target(Target::ThisNode)).await.unwrap();
    }
    let mut on = BTreeMap::new();
    for _ in 0..20 {
        let run = next_run(&mut rx).await;
        *on.entry(run.node).or_insert(0) += 1;
    }
    if kind == Kind::Redis {
        assert_eq!(on.get(&b_id), Some(&10), "{on:?}");
        assert_eq!(on.get(&*a.node_id()), Some(&10), "{on:?}");
    } else {
        // Memory: sibling handles share one state and both are members.
        assert_eq!(on.values().sum::<i32>(), 20);
        assert_eq!(on.get(&b_id), Some(&10), "{on:?}");
    }
    wait_drained(&a).await;
    shutdown.cancel();
}

async fn all_nodes_fan_out_one_copy_per_member(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let nodes = vec![h.cluster.clone(), h.node("node-b:1").await, h.node("node-c:1").await];
    for n in &nodes {
        n.tasks().define(recording("everywhere", tx.clone()).scope(TaskScope::All));
        start(n, &shutdown).await;
    }
    let parent = nodes[1].tasks().enqueue("everywhere", json!({"x": 1}), EnqueueOptions::default()).await.unwrap();
    let mut on = HashSet::new();
    for _ in 0..3 {
        let run = next_run(&mut rx).await;
        assert_eq!(run.parent.as_deref(), Some(parent.as_str()));
        assert_eq!(run.params, json!({"x": 1}));
        assert!(on.insert(run.node.clone()), "two copies ran on {}", run.node);
    }
    let expected: HashSet<String> = nodes.iter().map(|n| n.node_id().to_string()).collect();
    assert_eq!(on, expected);
    wait_drained(&nodes[0]).await;
    assert!(rx.try_recv().is_err());
    shutdown.cancel();
}

async fn delayed_task_waits_for_its_time(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = h.cluster.clone();
    a.tasks().define(recording("later", tx));
    start(&a, &shutdown).await;
    let id = a.tasks().enqueue("later", json!({}), EnqueueOptions::delay(Duration::from_millis(600))).await.unwrap();
    let record = a.tasks().record(&id).await.unwrap().unwrap();
    assert_eq!(record.state, "delayed");
    assert!(record.run_at.unwrap() > record.enqueued_at.unwrap() + 500);
    assert_eq!(a.tasks().inspect().await.unwrap().delayed, 1);
    h.advance(Duration::from_millis(700)).await;
    let run = next_run(&mut rx).await;
    assert_eq!(run.id, id);
    wait_drained(&a).await;
    shutdown.cancel();
}

async fn idempotency_key_returns_the_first_id(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = h.cluster.clone();
    a.tasks().define(recording("once", tx));
    let options = EnqueueOptions {
        idempotency_key: Some("order-42".into()),
        delay: Some(Duration::from_millis(200)),
        ..EnqueueOptions::default()
    };
    start(&a, &shutdown).await;
    let first = a.tasks().enqueue("once", json!({}), options.clone()).await.unwrap();
    let again = a.tasks().enqueue("once", json!({}), options.clone()).await.unwrap();
    assert_eq!(first, again);
    h.advance(Duration::from_millis(300)).await;
    assert_eq!(next_run(&mut rx).await.id, first);
    wait_drained(&a).await;
    // After the run the key still answers the same id: a late retry does not run it again.
    assert_eq!(a.tasks().enqueue("once", json!({}), options).await.unwrap(), first);
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err());
    shutdown.cancel();
}

async fn failed_runs_retry_then_dead_letter(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let a = h.cluster.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    a.tasks().define(
        TaskDefinition::new("flaky", move |ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(ctx.attempt);
                if ctx.params["succeed_on"].as_u64() == Some(u64::from(ctx.attempt)) {
                    Ok(())
                } else {
                    Err(format!("boom {}", ctx.attempt).into())
                }
            }
        })
        .max_attempts(3),
    );
    start(&a, &shutdown).await;
    // Succeeds on the second attempt.
    a.tasks().enqueue("flaky", json!({"succeed_on": 2}), EnqueueOptions::default()).await.unwrap();
    for expected in [1, 2] {
        let attempt = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        if attempt == 1 {
            h.advance(Duration::from_millis(60)).await;
        }
        assert_eq!(attempt, expected);
    }
    wait_drained(&a).await;
    assert!(a.tasks().failed(0, -1).await.unwrap().is_empty());
    // Never succeeds: three runs, then the dead letter with the last error.
    let id = a.tasks().enqueue("flaky", json!({}), EnqueueOptions::default()).await.unwrap();
    for expected in 1..=3 {
        let attempt = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(attempt, expected);
        h.advance(Duration::from_millis(110)).await;
    }
    let failed = wait_failed(&a, 1).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].reason, FailReason::Error);
    assert_eq!(failed[0].error.as_deref(), Some("boom 3"));
    let task = failed[0].task.as_ref().unwrap();
    assert_eq!(task.id, id);
    assert_eq!(task.state, "failed");
    assert_eq!(task.attempt, 3);
    assert!(a.tasks().record(&id).await.unwrap().is_none());
    assert_one_place_each(&h).await;
    shutdown.cancel();
}

async fn dead_letter_retry_and_remove(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let a = h.cluster.clone();
    let fail = Arc::new(AtomicU32::new(1));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let fail_in = fail.clone();
    a.tasks().define(TaskDefinition::new("job", move |ctx| {
        let tx = tx.clone();
        let fail = fail_in.clone();
        async move {
            let _ = tx.send((ctx.id.clone(), ctx.attempt));
            if fail.load(Ordering::SeqCst) == 1 { Err("nope".into()) } else { Ok(()) }
        }
    }));
    start(&a, &shutdown).await;
    let first = a.tasks().enqueue("job", json!({"k": "first"}), EnqueueOptions::default()).await.unwrap();
    let second = a.tasks().enqueue("job", json!({"k": "second"}), EnqueueOptions::default()).await.unwrap();
    let mut ran = HashSet::new();
    for _ in 0..2 {
        ran.insert(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap().0);
    }
    assert_eq!(ran, HashSet::from([first.clone(), second.clone()]));
    let failed = wait_failed(&a, 2).await;
    fail.store(0, Ordering::SeqCst);
    let retry = failed.iter().find(|e| e.task.as_ref().unwrap().id == first).unwrap();
    let remove = failed.iter().find(|e| e.task.as_ref().unwrap().id == second).unwrap();
    assert!(a.tasks().retry_failed(retry).await.unwrap());
    assert!(!a.tasks().retry_failed(retry).await.unwrap(), "the entry is gone after a retry");
    let (id, attempt) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!((id.as_str(), attempt), (first.as_str(), 1), "a retried task starts again at attempt 1");
    assert!(a.tasks().remove_failed(remove).await.unwrap());
    assert!(!a.tasks().remove_failed(remove).await.unwrap());
    wait_drained(&a).await;
    assert!(a.tasks().failed(0, -1).await.unwrap().is_empty());
    shutdown.cancel();
}

async fn periodic_task_has_one_instance_and_repeats(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let nodes = vec![h.cluster.clone(), h.node("node-b:1").await, h.node("node-c:1").await];
    for n in &nodes {
        n.tasks().define(recording("tick", tx.clone()).every(Duration::from_millis(100)));
        n.tasks().define(recording("tock", tx.clone()).scope(TaskScope::All).every(Duration::from_millis(100)));
    }
    for n in &nodes {
        start(n, &shutdown).await;
    }
    let mut ticks = 0;
    let mut tocks: HashMap<String, u32> = HashMap::new();
    while ticks < 4 || tocks.len() < 3 || tocks.values().any(|&c| c < 2) {
        h.advance(Duration::from_millis(50)).await;
        let run = next_run(&mut rx).await;
        if run.name == "tick" {
            assert_eq!(run.id, "periodic:tick");
            ticks += 1;
        } else {
            assert_eq!(run.id, format!("periodic:tock:{}", run.node));
            *tocks.entry(run.node).or_default() += 1;
        }
    }
    let records = nodes[0].tasks().records(None).await.unwrap();
    let mut ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> = nodes.iter().map(|n| format!("periodic:tock:{}", n.node_id())).collect();
    expected.push("periodic:tick".to_string());
    expected.sort();
    assert_eq!(ids, expected, "exactly one instance per scope");
    assert!(matches!(
        nodes[1].tasks().enqueue("tick", json!({}), EnqueueOptions::default()).await,
        Err(TaskError::PeriodicAlreadyScheduled(name)) if name == "tick"
    ));
    assert_eq!(nodes[0].tasks().stop_periodic("tick").await.unwrap(), 1);
    assert_eq!(nodes[0].tasks().stop_periodic("tock").await.unwrap(), 3);
    // A claimed instance is deleted at its completion: wait for no records at all.
    wait_drained(&nodes[0]).await;
    assert_one_place_each(&h).await;
    shutdown.cancel();
}

async fn cancel_removes_waiting_tasks_only(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = h.cluster.clone();
    a.tasks().define(recording("c", tx));
    // Not started: nothing claims, so both stay waiting.
    let delayed = a.tasks().enqueue("c", json!({}), EnqueueOptions::delay(Duration::from_secs(60))).await;
    // Before the node joined, a delayed enqueue still works (no membership needed).
    let delayed = delayed.unwrap();
    start(&a, &shutdown).await;
    assert!(a.tasks().cancel(&delayed).await.unwrap());
    assert!(!a.tasks().cancel(&delayed).await.unwrap());
    assert!(!a.tasks().cancel("no-such-id").await.unwrap());
    let ran = a.tasks().enqueue("c", json!({}), EnqueueOptions::default()).await.unwrap();
    assert_eq!(next_run(&mut rx).await.id, ran);
    wait_drained(&a).await;
    assert!(!a.tasks().cancel(&ran).await.unwrap(), "a finished task cannot be cancelled");
    shutdown.cancel();
}

async fn unknown_name_bounces_to_a_node_that_knows_it(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The old node (no definition) joins and claims first; the new one knows the task.
    let old = h.cluster.clone();
    let new = h.node("node-new:1").await;
    old.tasks().define(recording("other", tx.clone()));
    new.tasks().define(recording("v2task", tx.clone()));
    start(&old, &shutdown).await;
    // Enqueued through the new node's definition while only the old node runs workers.
    let id = new.tasks().enqueue("v2task", json!({}), EnqueueOptions::default()).await.unwrap();
    let bounced = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(r) = old.tasks().record(&id).await.unwrap()
                && r.bounces > 0
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(bounced.attempt, 0, "a bounce is not a failed attempt");
    start(&new, &shutdown).await;
    let run = loop {
        h.advance(Duration::from_millis(60)).await;
        if let Ok(Some(run)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            break run;
        }
    };
    assert_eq!(run.id, id);
    assert_eq!(run.node, new.node_id().to_string());
    wait_drained(&old).await;
    assert!(old.tasks().failed(0, -1).await.unwrap().is_empty());
    shutdown.cancel();
}

async fn enqueue_errors_are_typed(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let a = h.cluster.clone();
    let (tx, _rx) = mpsc::unbounded_channel();
    a.tasks().define(recording("t", tx.clone()));
    a.tasks().define(recording("fan", tx).scope(TaskScope::All));
    assert!(matches!(
        a.tasks().enqueue("nope", json!({}), EnqueueOptions::default()).await,
        Err(TaskError::UnknownTask(n)) if n == "nope"
    ));
    assert_eq!(TaskError::UnknownTask("x".into()).to_string(), "task name, x, not found");
    assert!(matches!(
        a.tasks().enqueue("t", json!([1]), EnqueueOptions::default()).await,
        Err(TaskError::InvalidParams(_))
    ));
    assert!(matches!(
        a.tasks().enqueue("fan", json!({}), EnqueueOptions::default()).await,
        Err(TaskError::NoLivePeers)
    ));
    start(&a, &shutdown).await;
    assert!(matches!(
        a.tasks().enqueue("t", json!({}), EnqueueOptions::target(Target::Node("ghost:1".into()))).await,
        Err(TaskError::UnknownNode(n)) if n == "ghost:1"
    ));
    let both = EnqueueOptions { run_at: Some(1), delay: Some(Duration::from_secs(1)), ..EnqueueOptions::default() };
    assert!(matches!(a.tasks().enqueue("t", json!({}), both).await, Err(TaskError::InvalidArgument(_))));
    shutdown.cancel();
}

async fn graceful_stop_hands_back_and_leaves(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let a = h.cluster.clone();
    let b = h.node("node-b:1").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Notify::new());
    for n in [&a, &b] {
        let tx = tx.clone();
        let gate = gate.clone();
        n.tasks().define(TaskDefinition::new("slow", move |ctx| {
            let tx = tx.clone();
            let gate = gate.clone();
            async move {
                let _ = tx.send((ctx.node_id.to_string(), ctx.id.clone(), "start"));
                // Only the first run blocks until cancelled; the hand-back run finishes.
                if ctx.attempt == 1 {
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Err("cancelled".into()),
                        _ = gate.notified() => {}
                    }
                }
                let _ = tx.send((ctx.node_id.to_string(), ctx.id.clone(), "done"));
                Ok(())
            }
        }));
    }
    start(&a, &shutdown).await;
    let id = a.tasks().enqueue("slow", json!({}), EnqueueOptions::default()).await.unwrap();
    let (node, started, what) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!((node.as_str(), started.as_str(), what), (&*a.node_id(), id.as_str(), "start"));
    let a_id = a.node_id().to_string();
    a.stop().await;
    assert!(!a.is_member());
    let reclaimed = b.stats().get("tasks:reclaimed", Scope::Cluster).await.unwrap();
    assert_eq!(reclaimed, Some(Numeric::Int(1)), "the cancelled run's claim was handed back");
    if kind == Kind::Redis {
        assert!(!b.is_alive(&a_id).await.unwrap());
    }
    // The cancelled run's claim went back to the head of the queue; b runs it.
    start(&b, &shutdown).await;
    let mut finished = false;
    while !finished {
        let (node, run_id, what) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(run_id, id);
        if what == "done" {
            assert_eq!(node, b.node_id().to_string());
            finished = true;
        }
    }
    wait_drained(&b).await;
    assert_one_place_each(&h).await;
    shutdown.cancel();
}

/// §C1.6: a corrupt record (unparsable, or missing for a queued id) is moved to the dead letter
/// with reason `corrupt`, never run, never dropped silently; the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_dead_lettered() {
    let h = Harness::with(Kind::Redis, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = h.cluster.clone();
    a.tasks().define(recording("fine", tx));
    let mut con = h.raw().await.unwrap();
    let () = redis::cmd("HSET")
        .arg("actionHero:tasks:data")
        .arg("bad")
        .arg("{not json")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: i64 = redis::cmd("RPUSH").arg("actionHero:tasks:global").arg("bad").query_async(&mut con).await.unwrap();
    let _: i64 =
        redis::cmd("ZADD").arg("actionHero:tasks:delayed").arg(0).arg("ghost").query_async(&mut con).await.unwrap();
    start(&a, &shutdown).await;
    let good = a.tasks().enqueue("fine", json!({}), EnqueueOptions::default()).await.unwrap();
    assert_eq!(next_run(&mut rx).await.id, good);
    let failed = wait_failed(&a, 2).await;
    assert!(failed.iter().all(|e| e.reason == FailReason::Corrupt), "{failed:?}");
    let raw: Vec<String> = failed.iter().map(|e| e.raw.clone()).collect();
    assert!(raw.iter().any(|r| r.contains(r#""id":"bad""#) && r.contains("{not json")), "{raw:?}");
    assert!(raw.iter().any(|r| r.contains(r#""id":"ghost""#)), "{raw:?}");
    assert!(matches!(a.tasks().retry_failed(&failed[0]).await, Err(TaskError::CorruptEntry)));
    wait_drained(&a).await;
    assert_one_place_each(&h).await;
    shutdown.cancel();
}

async fn timeout_cancels_the_run_and_counts_a_failure(kind: Kind) {
    let h = Harness::with(kind, fast_settings()).await;
    let shutdown = CancellationToken::new();
    let a = h.cluster.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    a.tasks().define(
        TaskDefinition::new("stuck", move |ctx| {
            let tx = tx.clone();
            async move {
                // Never finishes by itself; reports when it sees the cancellation.
                ctx.cancel.cancelled().await;
                let _ = tx.send(ctx.attempt);
                Ok(())
            }
        })
        .timeout(Duration::from_millis(100)),
    );
    start(&a, &shutdown).await;
    let id = a.tasks().enqueue("stuck", json!({}), EnqueueOptions::default()).await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, rx.recv()).await.unwrap(), Some(1), "the handler saw its cancellation");
    let failed = wait_failed(&a, 1).await;
    assert_eq!(failed[0].task.as_ref().unwrap().id, id);
    assert_eq!(failed[0].reason, FailReason::Error);
    assert_eq!(failed[0].error.as_deref(), Some("timed out after 100 ms"));
    assert_one_place_each(&h).await;
    shutdown.cancel();
}

/// A redis outage longer than deadAfter does not make the nodes evict each other when redis
/// comes back: a node judges peers only after its own pings have worked for deadAfter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_longer_than_dead_after_evicts_nobody() {
    let mut redis = redis_server::RedisServer::start_durable().await;
    let mut settings = fast_settings();
    // Checks far more often than pings: after the outage a checker runs well before the
    // other node's next ping.
    settings.tasks.ping_interval = Duration::from_millis(400);
    settings.tasks.dead_after = Duration::from_millis(1000);
    settings.tasks.dead_check_interval = Duration::from_millis(20);
    let dead_after = settings.tasks.dead_after;
    let a = Cluster::redis_with(&redis.url(), "node-a:1", settings.clone()).await.unwrap();
    let b = Cluster::redis_with(&redis.url(), "node-b:1", settings.clone()).await.unwrap();
    let shutdown = CancellationToken::new();
    start(&a, &shutdown).await;
    start(&b, &shutdown).await;
    let mut events_a = a.peer_events();
    let mut events_b = b.peer_events();
    redis.kill().await;
    tokio::time::sleep(dead_after * 2).await; // the outage itself: nothing to await
    redis.restart().await;
    // Wait until both have pinged again, then for longer than a dead-peer check needs.
    tokio::time::timeout(WAIT, async {
        while !(a.is_alive("node-b:1").await.unwrap_or(false) && b.is_alive("node-a:1").await.unwrap_or(false)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both members after the outage");
    tokio::time::sleep(dead_after + settings.tasks.dead_check_interval * 3).await;
    assert_eq!(&*a.node_id(), "node-a:1");
    assert_eq!(&*b.node_id(), "node-b:1");
    for events in [&mut events_a, &mut events_b] {
        while let Ok(event) = events.try_recv() {
            assert!(
                !matches!(event, actioncluster::PeerEvent::Evicted { .. } | actioncluster::PeerEvent::Dead { .. }),
                "{event:?}"
            );
        }
    }
    let mut peers = a.peers().await.unwrap();
    peers.sort();
    assert_eq!(peers, vec!["node-a:1", "node-b:1"]);
    shutdown.cancel();
}
