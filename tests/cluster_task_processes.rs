//! The task queue with real node processes (spec §C10 items 1–6 and 9): kill -9 mid-task,
//! graceful stop, concurrent boot seeding periodic tasks, a killed periodic runner, SIGSTOP
//! past `deadAfter` then SIGCONT, a soak with nodes joining and leaving, and room purge after
//! a kill. Each node is the `task_worker` example (a `Cluster` on the test's own
//! redis-server) and every run is recorded in a redis ledger list, which the checks read.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/redis_server.rs"]
mod redis_server;

use actioncluster::{Cluster, ClusterSettings, EnqueueOptions, FailReason, Target, TaskDefinition};
use redis_server::RedisServer;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Upper bound for anything a test waits on.
const WAIT: Duration = Duration::from_secs(60);
const LEDGER: &str = "test:ledger";

/// Builds the worker example once per test binary and answers its path.
fn worker_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "task_worker"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the task_worker example failed");
        // target/debug/deps/<this test> -> target/debug/examples/task_worker
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("examples").join("task_worker")
    })
    .clone()
}

/// One node process.
struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// The id it joined under (its latest incarnation).
    id: String,
}

impl Worker {
    async fn spawn(redis: &RedisServer, node_id: &str, extra: &[&str]) -> Worker {
        let mut w = Self::spawn_unready(redis, node_id, extra);
        w.id = w.expect_line("ready ").await;
        w
    }

    fn spawn_unready(redis: &RedisServer, node_id: &str, extra: &[&str]) -> Worker {
        let mut child = Command::new(worker_binary())
            .args(["--redis", &redis.url(), "--node-id", node_id, "--ledger", LEDGER])
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn task_worker");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Worker { child, lines, id: String::new() }
    }

    /// Waits for the next stdout line starting with `prefix`; answers the rest of it.
    async fn expect_line(&mut self, prefix: &str) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                let line =
                    self.lines.next_line().await.unwrap().unwrap_or_else(|| panic!("worker exited before {prefix:?}"));
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.to_string();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {prefix:?} line"))
    }

    fn pid(&self) -> String {
        self.child.id().unwrap().to_string()
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill").args([format!("-{name}"), self.pid()]).status().unwrap();
        assert!(status.success(), "kill -{name}");
    }

    async fn kill9(mut self) {
        self.signal("KILL");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits for its graceful leave and exit.
    async fn terminate(mut self) {
        self.signal("TERM");
        self.expect_line("stopped").await;
        let status = tokio::time::timeout(WAIT, self.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "worker exit status {status}");
    }
}

/// A handle that only enqueues (not started, so it runs nothing and is not a member).
async fn producer(redis: &RedisServer, id: &str) -> Cluster {
    let c = Cluster::redis_with(&redis.url(), id, ClusterSettings::default()).await.unwrap();
    c.tasks().define(TaskDefinition::new("ledger", |_| async { Ok(()) }));
    c
}

#[derive(Debug, Clone)]
struct Entry {
    event: String,
    id: String,
    name: String,
    attempt: u64,
    node: String,
}

async fn ledger(redis: &RedisServer) -> Vec<Entry> {
    let mut con = redis.connection().await;
    let raw: Vec<String> = redis::cmd("LRANGE").arg(LEDGER).arg(0).arg(-1).query_async(&mut con).await.unwrap();
    raw.iter()
        .map(|s| {
            let v: Value = serde_json::from_str(s).unwrap();
            Entry {
                event: v["event"].as_str().unwrap().to_string(),
                id: v["id"].as_str().unwrap().to_string(),
                name: v["name"].as_str().unwrap().to_string(),
                attempt: v["attempt"].as_u64().unwrap(),
                node: v["node"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// Polls the ledger until `done` holds (the ledger is redis state: there is no event to await).
async fn wait_ledger(redis: &RedisServer, what: &str, done: impl Fn(&[Entry]) -> bool) -> Vec<Entry> {
    tokio::time::timeout(WAIT, async {
        loop {
            let l = ledger(redis).await;
            if done(&l) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("ledger never showed: {what}"))
}

fn entries<'a>(l: &'a [Entry], id: &str, event: &str) -> Vec<&'a Entry> {
    l.iter().filter(|e| e.id == id && e.event == event).collect()
}

async fn hash(redis: &RedisServer, key: &str) -> HashMap<String, String> {
    let mut con = redis.connection().await;
    redis::cmd("HGETALL").arg(key).query_async(&mut con).await.unwrap()
}

async fn list_len(redis: &RedisServer, key: &str) -> u64 {
    let mut con = redis.connection().await;
    redis::cmd("LLEN").arg(key).query_async(&mut con).await.unwrap()
}

/// Nothing waits, nothing is claimed, no record is left: every task finished or failed.
async fn wait_no_work_left(redis: &RedisServer) {
    tokio::time::timeout(WAIT, async {
        loop {
            let data = hash(redis, "actionHero:tasks:data").await;
            let processing = hash(redis, "actionHero:tasks:processing").await;
            let global = list_len(redis, "actionHero:tasks:global").await;
            if data.values().all(|r| r.contains(r#""periodic":true"#)) && processing.is_empty() && global == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .expect("work left in the queues");
}

async fn failed_entries(c: &Cluster) -> Vec<actioncluster::FailedEntry> {
    c.tasks().failed(0, -1).await.unwrap()
}

const FAST: [&str; 10] =
    ["--ping-ms", "200", "--dead-after-ms", "1000", "--check-ms", "200", "--cycle-ms", "50", "--shutdown-ms", "300"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = FAST.to_vec();
    v.extend_from_slice(extra);
    v
}

/// §C10.1: kill -9 while a task runs and targeted tasks wait in its local queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_task_loses_nothing() {
    let redis = RedisServer::start().await;
    let p = producer(&redis, "producer:1").await;
    let a = Worker::spawn(&redis, "a:1", &args(&["--workers", "1", "--define", "ledger"])).await;
    let slow = p.tasks().enqueue("ledger", json!({"n": 0, "ms": 2500}), EnqueueOptions::default()).await.unwrap();
    wait_ledger(&redis, "a starts the slow task", |l| !entries(l, &slow, "start").is_empty()).await;
    // a's only worker is busy: these wait in its local queue.
    let mut targeted = Vec::new();
    for n in 1..=3 {
        let options = EnqueueOptions::target(Target::Node(a.id.clone()));
        targeted.push(p.tasks().enqueue("ledger", json!({"n": n, "ms": 0}), options).await.unwrap());
    }
    assert_eq!(list_len(&redis, &format!("actionHero:tasks:{}", a.id.replace(':', "-"))).await, 3);
    let mut any = Vec::new();
    for n in 4..=10 {
        any.push(p.tasks().enqueue("ledger", json!({"n": n, "ms": 10}), EnqueueOptions::default()).await.unwrap());
    }
    let a_id = a.id.clone();
    a.kill9().await;
    let b = Worker::spawn(&redis, "b:1", &args(&["--define", "ledger"])).await;
    let c = Worker::spawn(&redis, "c:1", &args(&["--define", "ledger"])).await;
    let l = wait_ledger(&redis, "every any task done", |l| {
        std::iter::once(&slow).chain(&any).all(|id| !entries(l, id, "done").is_empty())
    })
    .await;
    // The slow task: a's unfinished attempt 1, then one completed attempt 2 elsewhere.
    let starts = entries(&l, &slow, "start");
    assert_eq!(starts[0].node, a_id);
    assert_eq!(starts[0].attempt, 1);
    let done = entries(&l, &slow, "done");
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].attempt, 2);
    assert_ne!(done[0].node, a_id);
    for id in &any {
        assert_eq!(entries(&l, id, "done").len(), 1, "task {id} completed more than once");
    }
    // The tasks only a could run are dead-lettered (visible and retryable), not lost.
    wait_no_work_left(&redis).await;
    let failed = failed_entries(&p).await;
    let gone: HashSet<String> = failed
        .iter()
        .filter(|e| e.reason == FailReason::TargetGone)
        .map(|e| e.task.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(gone, targeted.iter().cloned().collect());
    assert_eq!(p.peers().await.unwrap(), vec![b.id.clone(), c.id.clone()]);
    let stats = hash(&redis, "actionHero:stats").await;
    assert_eq!(stats.get("tasks:reclaimed").map(String::as_str), Some("1"));
}

/// §C10.2: a graceful stop hands its running tasks back; all "any" tasks complete elsewhere
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_completes_everything_elsewhere_once() {
    let redis = RedisServer::start().await;
    let p = producer(&redis, "producer:1").await;
    let a = Worker::spawn(&redis, "a:1", &args(&["--workers", "2", "--define", "ledger"])).await;
    let mut slow = Vec::new();
    for n in 0..2 {
        slow.push(p.tasks().enqueue("ledger", json!({"n": n, "ms": 800}), EnqueueOptions::default()).await.unwrap());
    }
    wait_ledger(&redis, "a runs both", |l| slow.iter().all(|id| !entries(l, id, "start").is_empty())).await;
    let mut quick = Vec::new();
    for n in 2..12 {
        quick.push(p.tasks().enqueue("ledger", json!({"n": n, "ms": 5}), EnqueueOptions::default()).await.unwrap());
    }
    let b = Worker::spawn(&redis, "b:1", &args(&["--define", "ledger"])).await;
    let a_id = a.id.clone();
    a.terminate().await;
    assert_eq!(p.peers().await.unwrap(), vec![b.id.clone()], "a left the member list itself");
    let l = wait_ledger(&redis, "all done", |l| slow.iter().chain(&quick).all(|id| !entries(l, id, "done").is_empty()))
        .await;
    for id in slow.iter().chain(&quick) {
        let done = entries(&l, id, "done");
        assert_eq!(done.len(), 1, "task {id}: {done:?}");
    }
    for id in &slow {
        assert_eq!(entries(&l, id, "done")[0].node, b.id, "handed back to b");
        assert!(entries(&l, id, "start").iter().any(|e| e.node == a_id));
    }
    wait_no_work_left(&redis).await;
    assert!(failed_entries(&p).await.is_empty());
    let statuses = hash(&redis, "actionHero:tasks:workerStatus").await;
    assert!(statuses.keys().all(|k| !k.starts_with(&format!("{a_id}#"))), "a's worker statuses removed");
}

/// §C10.3: nodes booting at once seed exactly one "any" instance and one "all" instance per
/// node, over several rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_boot_seeds_one_periodic_instance() {
    let redis = RedisServer::start().await;
    for round in 0..4 {
        let workers: Vec<Worker> = (0..3)
            .map(|i| {
                let id = format!("boot{round}-{i}:1");
                Worker::spawn_unready(&redis, &id, &args(&["--workers", "1", "--define", "tick,tock"]))
            })
            .collect();
        let mut ids = Vec::new();
        for mut w in workers {
            w.id = w.expect_line("ready ").await;
            ids.push(w);
        }
        let data = hash(&redis, "actionHero:tasks:data").await;
        let mut keys: Vec<String> = data.keys().cloned().collect();
        keys.sort();
        let mut expected: Vec<String> = ids.iter().map(|w| format!("periodic:tock:{}", w.id)).collect();
        expected.push("periodic:tick".to_string());
        expected.sort();
        assert_eq!(keys, expected, "round {round}");
        for w in ids {
            w.kill9().await;
        }
        let mut con = redis.connection().await;
        let () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    }
}

/// §C10.4: killing the node that runs a periodic task does not end its chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_chain_survives_a_killed_runner() {
    let redis = RedisServer::start().await;
    let tick = ["--define", "tick", "--tick-ms", "100", "--tick-sleep-ms", "1500", "--workers", "1"];
    let a = Worker::spawn(&redis, "a:1", &args(&tick)).await;
    let a_id = a.id.clone();
    wait_ledger(&redis, "a runs tick", |l| l.iter().any(|e| e.event == "start" && e.node == a_id)).await;
    let b = Worker::spawn(&redis, "b:1", &args(&tick)).await;
    a.kill9().await;
    let l = wait_ledger(&redis, "b completes tick and starts it again", |l| {
        let b_done = l.iter().position(|e| e.event == "done" && e.node == b.id);
        b_done.is_some_and(|i| l[i + 1..].iter().any(|e| e.event == "start" && e.node == b.id))
    })
    .await;
    assert!(l.iter().all(|e| e.id == "periodic:tick" && e.name == "tick"));
    let data = hash(&redis, "actionHero:tasks:data").await;
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["periodic:tick"], "exactly one instance");
}

/// §C10.5: a node paused past deadAfter is evicted; after SIGCONT its late completion is
/// rejected, it re-joins under a new incarnation, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_is_evicted_and_rejoins_as_a_new_incarnation() {
    let redis = RedisServer::start().await;
    let p = producer(&redis, "producer:1").await;
    let mut a = Worker::spawn(&redis, "a:1", &args(&["--workers", "1", "--define", "ledger"])).await;
    let task = p.tasks().enqueue("ledger", json!({"n": 1, "ms": 1500}), EnqueueOptions::default()).await.unwrap();
    wait_ledger(&redis, "a starts", |l| !entries(l, &task, "start").is_empty()).await;
    let b = Worker::spawn(&redis, "b:1", &args(&["--define", "ledger"])).await;
    let old_id = a.id.clone();
    a.signal("STOP");
    let l =
        wait_ledger(&redis, "b completes the task", |l| entries(l, &task, "done").iter().any(|e| e.node == b.id)).await;
    assert_eq!(entries(&l, &task, "done")[0].attempt, 2);
    assert!(!p.is_alive(&old_id).await.unwrap());
    a.signal("CONT");
    assert_eq!(a.expect_line("evicted ").await, old_id);
    let new_id = a.expect_line("ready ").await;
    assert_ne!(new_id, old_id);
    assert!(new_id.starts_with(&old_id), "{new_id} is a new incarnation of {old_id}");
    let mut peers = p.peers().await.unwrap();
    peers.sort();
    let mut expected = vec![b.id.clone(), new_id.clone()];
    expected.sort();
    assert_eq!(peers, expected);
    // A's late run (done or cancelled) was not accepted: no record, no failure, one
    // accepted completion (b's); at most one extra execution, with the lower attempt.
    wait_no_work_left(&redis).await;
    assert!(failed_entries(&p).await.is_empty());
    let l = ledger(&redis).await;
    let done = entries(&l, &task, "done");
    assert!(done.len() <= 2, "{done:?}");
    assert!(done.iter().filter(|e| e.node == old_id).all(|e| e.attempt == 1));
    // The new incarnation works.
    let after =
        p.tasks().enqueue("ledger", json!({"n": 2, "ms": 0}), EnqueueOptions::target(Target::Node(new_id.clone())));
    let after = after.await.unwrap();
    let l = wait_ledger(&redis, "new incarnation runs a task", |l| !entries(l, &after, "done").is_empty()).await;
    assert_eq!(entries(&l, &after, "done")[0].node, new_id);
}

/// §C10.9 (second half): a killed node's room members are purged after detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_nodes_room_members_are_purged() {
    let redis = RedisServer::start().await;
    let p = producer(&redis, "producer:1").await;
    let a = Worker::spawn(&redis, "a:1", &args(&["--define", "", "--room", "lobby=conn-a", "--room", "lobby=shared"]))
        .await;
    let b = Worker::spawn(&redis, "b:1", &args(&["--define", "", "--room", "lobby=conn-b", "--room", "lobby=shared"]))
        .await;
    let mut members = p.rooms().status("lobby").await.unwrap().members;
    members.sort();
    assert_eq!(members, vec!["conn-a", "conn-b", "shared"]);
    a.kill9().await;
    tokio::time::timeout(WAIT, async {
        loop {
            let mut m = p.rooms().status("lobby").await.unwrap().members;
            m.sort();
            if m == vec!["conn-b", "shared"] {
                return;
            }
            assert!(m.len() >= 2, "b's members must stay: {m:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .expect("a's members purged");
    drop(b);
}

/// The soak's n-th node: three workers running `ledger`.
async fn soak_worker(redis: &RedisServer, n: usize) -> Worker {
    Worker::spawn(redis, &format!("w{n}:1"), &args(&["--workers", "3", "--define", "ledger"])).await
}

/// §C10.6: producers enqueue while nodes join, die and leave; the ledger shows every task
/// completed, none twice except counted post-eviction re-runs, and no work left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_nodes_joining_and_leaving() {
    const TASKS: usize = 300;
    let redis = RedisServer::start().await;
    let mut nodes: Vec<Worker> = Vec::new();
    for i in 0..3 {
        nodes.push(soak_worker(&redis, i).await);
    }
    let mut producers: Vec<Cluster> = Vec::new();
    for i in 1..=3 {
        producers.push(producer(&redis, &format!("producer:{i}")).await);
    }
    let mut ids: Vec<String> = Vec::new();
    let mut killed = 0;
    let mut left = 0;
    let mut next_node = 3;
    for n in 0..TASKS {
        let p = &producers[n % producers.len()];
        let mut options = EnqueueOptions::default();
        if n % 5 == 1 {
            options.delay = Some(Duration::from_millis((n as u64 * 7) % 400));
        }
        if n % 5 == 2 {
            options.idempotency_key = Some(format!("soak-{n}"));
        }
        let id = p.tasks().enqueue("ledger", json!({"n": n, "ms": (n * 13) % 40}), options.clone()).await.unwrap();
        if options.idempotency_key.is_some() {
            // A client retrying a timed-out enqueue gets the same task, not a second one.
            assert_eq!(p.tasks().enqueue("ledger", json!({"n": n, "ms": 0}), options).await.unwrap(), id);
        }
        ids.push(id);
        if n == TASKS / 4 || n == TASKS * 3 / 4 {
            nodes.remove(0).kill9().await;
            killed += 1;
            nodes.push(soak_worker(&redis, next_node).await);
            next_node += 1;
        }
        if n == TASKS / 2 {
            nodes.remove(0).terminate().await;
            left += 1;
            nodes.push(soak_worker(&redis, next_node).await);
            next_node += 1;
        }
    }
    let l = wait_ledger(&redis, "every task done", |l| {
        let done: HashSet<&str> = l.iter().filter(|e| e.event == "done").map(|e| e.id.as_str()).collect();
        ids.iter().all(|id| done.contains(id.as_str()))
    })
    .await;
    wait_no_work_left(&redis).await;
    let mut done_count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut max_attempt: HashMap<&str, u64> = HashMap::new();
    for e in &l {
        if e.event == "done" {
            *done_count.entry(&e.id).or_default() += 1;
        }
        let m = max_attempt.entry(&e.id).or_default();
        *m = (*m).max(e.attempt);
    }
    let mut duplicates = 0;
    for id in &ids {
        let c = done_count.get(id.as_str()).copied().unwrap_or(0);
        assert!(c >= 1, "task {id} lost");
        if c > 1 {
            // Only a run whose claim was taken back (node declared dead) may run again,
            // and the re-run has a higher attempt.
            assert!(max_attempt[id.as_str()] >= 2, "task {id} completed {c} times without a reclaim");
            duplicates += c - 1;
        }
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), TASKS, "idempotent retries returned existing ids");
    let failed = failed_entries(&producers[0]).await;
    assert!(failed.is_empty(), "{failed:?}");
    let stats = hash(&redis, "actionHero:stats").await;
    let reclaimed: usize = stats.get("tasks:reclaimed").map_or(0, |s| s.parse().unwrap());
    assert!(duplicates <= reclaimed, "duplicates {duplicates} exceed reclaimed claims {reclaimed}");
    eprintln!(
        "soak: tasks {TASKS}, nodes killed {killed}, nodes left {left}, reclaimed {reclaimed}, duplicates {duplicates}, lost 0"
    );
    for w in nodes {
        w.terminate().await;
    }
    assert!(producers[0].peers().await.unwrap().is_empty());
}
