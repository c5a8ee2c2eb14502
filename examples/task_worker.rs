//! A task-queue node as a process, used by `tests/cluster_task_processes.rs` to kill, pause
//! and stop real nodes (spec §C10), and handy to watch a cluster by hand:
//!
//! ```text
//! cargo run --example task_worker -- --redis redis://127.0.0.1:6379/ --node-id w1:1
//! ```
//!
//! Tasks it defines (all optional through `--define`): `ledger` (params `{"n", "ms"}`: logs a
//! `start`, waits `ms` — stopping early when cancelled — and logs `done`), `tick` (periodic,
//! any node) and `tock` (periodic, every node). Each log line is a JSON entry pushed to the
//! redis list `--ledger`. Prints `ready {node id}` once joined; SIGTERM leaves gracefully and
//! prints `stopped`.

use actioncluster::{Cluster, ClusterSettings, RoomAdd, TaskContext, TaskDefinition, TaskScope, TaskSettings};
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Args {
    redis: String,
    node_id: String,
    ledger: String,
    define: Vec<String>,
    workers: u32,
    ping_ms: u64,
    dead_after_ms: u64,
    check_ms: u64,
    cycle_ms: u64,
    tick_ms: u64,
    tick_sleep_ms: u64,
    shutdown_ms: u64,
    rooms: Vec<(String, String)>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        redis: String::new(),
        node_id: format!("worker:{}", std::process::id()),
        ledger: "test:ledger".into(),
        define: vec!["ledger".into(), "tick".into(), "tock".into()],
        workers: 2,
        ping_ms: 200,
        dead_after_ms: 1000,
        check_ms: 200,
        cycle_ms: 50,
        tick_ms: 60_000,
        tick_sleep_ms: 0,
        shutdown_ms: 2000,
        rooms: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--redis" => a.redis = value()?,
            "--node-id" => a.node_id = value()?,
            "--ledger" => a.ledger = value()?,
            "--define" => a.define = value()?.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
            "--workers" => a.workers = u32::try_from(num(value()?)?).map_err(|e| e.to_string())?,
            "--ping-ms" => a.ping_ms = num(value()?)?,
            "--dead-after-ms" => a.dead_after_ms = num(value()?)?,
            "--check-ms" => a.check_ms = num(value()?)?,
            "--cycle-ms" => a.cycle_ms = num(value()?)?,
            "--tick-ms" => a.tick_ms = num(value()?)?,
            "--tick-sleep-ms" => a.tick_sleep_ms = num(value()?)?,
            "--shutdown-ms" => a.shutdown_ms = num(value()?)?,
            "--room" => {
                let v = value()?;
                let (room, conn) = v.split_once('=').ok_or("--room takes room=connection")?;
                a.rooms.push((room.to_string(), conn.to_string()));
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.redis.is_empty() {
        return Err("--redis is required".into());
    }
    Ok(a)
}

/// Pushes one ledger entry; a lost entry would only make the test fail, never pass.
async fn log(con: &mut redis::aio::MultiplexedConnection, ledger: &str, ctx: &TaskContext, event: &str) {
    let entry = json!({
        "event": event, "id": ctx.id, "name": ctx.name, "attempt": ctx.attempt,
        "node": &*ctx.node_id, "n": ctx.params.get("n"),
    });
    let result: redis::RedisResult<i64> = redis::cmd("RPUSH").arg(ledger).arg(entry.to_string()).query_async(con).await;
    if let Err(e) = result {
        eprintln!("ledger write failed: {e}");
    }
}

/// Waits `ms`, or less when cancelled; answers false when cancelled.
async fn work(ms: u64, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
        _ = cancel.cancelled() => false,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let settings = ClusterSettings {
        tasks: TaskSettings {
            workers: args.workers,
            ping_interval: Duration::from_millis(args.ping_ms),
            dead_after: Duration::from_millis(args.dead_after_ms),
            dead_check_interval: Duration::from_millis(args.check_ms),
            cycle_time: Duration::from_millis(args.cycle_ms),
            shutdown_timeout: Some(Duration::from_millis(args.shutdown_ms)),
            cancel_grace: Duration::from_millis(200),
            retry_backoff: vec![Duration::from_millis(100)],
            bounce_delay: Duration::from_millis(100),
            ..TaskSettings::default()
        },
        ..ClusterSettings::default()
    };
    let cluster = match Cluster::redis_with(&args.redis, args.node_id.clone(), settings).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let ledger_con = match redis::Client::open(args.redis.as_str()) {
        Ok(client) => match client.get_multiplexed_async_connection().await {
            Ok(con) => con,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(1);
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    for name in &args.define {
        let con = ledger_con.clone();
        let ledger = args.ledger.clone();
        let tick_sleep = args.tick_sleep_ms;
        let definition = TaskDefinition::new(name.clone(), move |ctx| {
            let mut con = con.clone();
            let ledger = ledger.clone();
            async move {
                log(&mut con, &ledger, &ctx, "start").await;
                let ms = if ctx.name == "ledger" { ctx.params["ms"].as_u64().unwrap_or(0) } else { tick_sleep };
                if !work(ms, &ctx.cancel).await {
                    log(&mut con, &ledger, &ctx, "cancelled").await;
                    return Err("cancelled".into());
                }
                log(&mut con, &ledger, &ctx, "done").await;
                Ok(())
            }
        });
        let definition = match name.as_str() {
            "tick" => definition.every(Duration::from_millis(args.tick_ms)),
            "tock" => definition.every(Duration::from_millis(args.tick_ms)).scope(TaskScope::All),
            _ => definition,
        };
        cluster.tasks().define(definition);
    }
    let shutdown = CancellationToken::new();
    let mut events = cluster.peer_events();
    cluster.start(shutdown.clone());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(actioncluster::PeerEvent::Joined { id }) => {
                    for (room, conn) in &args.rooms {
                        match cluster.rooms().add(room, conn).await {
                            Ok(RoomAdd::Added | RoomAdd::AlreadyMember) => {}
                            Err(e) => eprintln!("room add failed: {e}"),
                        }
                    }
                    println!("ready {id}");
                }
                Ok(actioncluster::PeerEvent::Evicted { id }) => println!("evicted {id}"),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = term.recv() => break,
        }
    }
    cluster.stop().await;
    shutdown.cancel();
    println!("stopped");
    std::process::ExitCode::SUCCESS
}
