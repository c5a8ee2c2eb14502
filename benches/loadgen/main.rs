//! The load generator: a Bayeux client fleet that drives any endpoint (ours or node.js Faye)
//! over websocket or long-polling and reports deliveries/s, acks/s, end-to-end latency
//! percentiles (HDR histogram over payload timestamps), lost and duplicated messages
//! (per-publisher sequence numbers), its own CPU time, and for idle runs the server's memory
//! per connection. See BENCHMARKS.md.
//!
//! ```sh
//! cargo bench --bench loadgen -- fanout --url http://127.0.0.1:8000/faye
//! cargo bench --bench loadgen -- fanout --url http://127.0.0.1:8000/faye --rate 2000
//! cargo bench --bench loadgen -- channels --url http://127.0.0.1:8000/faye
//! cargo bench --bench loadgen -- longpoll --url http://127.0.0.1:8000/faye
//! cargo bench --bench loadgen -- idle --url http://127.0.0.1:8000/faye --subscribers 10000 --server-pid PID
//! cargo bench --bench loadgen -- fanout --url http://127.0.0.1:8001/faye --pub-url http://127.0.0.1:8002/faye
//! cargo bench --bench loadgen -- report results.jsonl
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

mod bayeux;
mod conn;
mod report;
mod run;
mod stats;

use clap::{Args, Parser, Subcommand};
use conn::Endpoint;
use run::{Plan, Transport};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Bayeux load generator (websocket and long-polling) for actioncluster and node.js Faye.
#[derive(Parser)]
#[command(name = "loadgen")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fan-out: 1 publisher -> 100 websocket subscribers on one channel.
    Fanout(RunArgs),
    /// Many channels: 10 publishers -> 1,000 websocket subscribers over 100 channels.
    Channels(RunArgs),
    /// Long-polling fan-out: 1 publisher -> 100 long-polling subscribers, all over HTTP.
    Longpoll(RunArgs),
    /// Idle connections: N subscribed clients (websocket; `--transport long-polling`: a held
    /// connect each; `--transport eventsource`: an open stream each); server RSS per connection,
    /// handshakes/s during the ramp, then one message per channel to check they all hold.
    Idle(RunArgs),
    /// Prints the comparison table (ours vs node.js Faye) of result files written by --json-out.
    Report(ReportArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Endpoint of the subscribers, e.g. http://127.0.0.1:8000/faye.
    #[arg(long)]
    url: String,
    /// Endpoint of the publishers (default: --url), e.g. another node of the same cluster.
    #[arg(long)]
    pub_url: Option<String>,
    /// Publishers (default: 1; channels: 10).
    #[arg(long)]
    publishers: Option<usize>,
    /// Subscribers, or idle clients (default: 100; channels: 1,000; idle: 10,000).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Channels; subscriber i subscribes to channel i mod channels (default: 1; channels, idle: 100).
    #[arg(long)]
    channels: Option<usize>,
    /// Subscribers' transport (default: websocket; longpoll: long-polling).
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// Publishers' transport (default: the subscribers').
    #[arg(long, value_enum)]
    pub_transport: Option<Transport>,
    /// Publishes per second over all publishers; 0 publishes as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of publishing before the measurement starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// At max rate: messages per publisher that may be not yet acked or not yet delivered to every subscriber.
    #[arg(long, default_value_t = 50)]
    window: u64,
    /// Bytes of padding in each message's data (besides the stamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Spread clients over this many loopback source addresses 127.0.0.1.. (0: kernel's choice).
    #[arg(long, default_value_t = 8)]
    source_addrs: usize,
    /// Clients setting up (connect, handshake, subscribe) at once.
    #[arg(long, default_value_t = 200)]
    setup_concurrency: usize,
    /// Seconds to wait for outstanding acks and deliveries after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Idle: seconds to hold the clients after the ramp.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Server process(es) whose CPU time (and, for idle, VmRSS of the first) is reported.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// The redis-server process, whose CPU time is reported.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Generator worker threads (default: tokio's, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Row label in the report (default: the scenario name).
    #[arg(long)]
    label: Option<String>,
    /// Which server this is, for the report: `ours` or `node`.
    #[arg(long, default_value = "ours")]
    server: String,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// JSON-lines result files.
    files: Vec<PathBuf>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn plan(scenario: &str, args: &RunArgs) -> Result<Plan, conn::BoxError> {
    let (publishers, subscribers, channels, transport) = match scenario {
        "channels" => (10, 1000, 100, Transport::Websocket),
        "longpoll" => (1, 100, 1, Transport::LongPolling),
        "idle" => (1, 10_000, 100, Transport::Websocket),
        _ => (1, 100, 1, Transport::Websocket),
    };
    let sub_endpoint = Endpoint::parse(&args.url)?;
    let pub_endpoint = match &args.pub_url {
        Some(url) => Endpoint::parse(url)?,
        None => sub_endpoint.clone(),
    };
    let sub_transport = args.transport.unwrap_or(transport);
    Ok(Plan {
        sub_endpoint,
        pub_endpoint,
        sub_transport,
        // EventSource only receives: its publishers post over long-polling.
        pub_transport: args.pub_transport.unwrap_or(match sub_transport {
            Transport::Eventsource => Transport::LongPolling,
            t => t,
        }),
        publishers: args.publishers.unwrap_or(publishers).max(1),
        subscribers: args.subscribers.unwrap_or(subscribers),
        channels: args.channels.unwrap_or(channels).max(1),
        rate: args.rate.max(0.0),
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        window: args.window.max(1),
        payload: args.payload,
        source_addrs: args.source_addrs,
        setup_concurrency: args.setup_concurrency,
        drain_grace: secs(args.drain),
        idle_hold: (scenario == "idle").then(|| secs(args.hold)),
        server_pids: args.server_pids.clone(),
        redis_pid: args.redis_pid,
    })
}

fn run_scenario(scenario: &str, args: RunArgs) -> Result<(), conn::BoxError> {
    let plan = plan(scenario, &args)?;
    if let Some(limit) = stats::open_files_limit() {
        let needed = (plan.subscribers + plan.publishers) as u64 + 64;
        if needed > limit {
            eprintln!("warning: {needed} sockets needed but the open-files limit is {limit}: raise `ulimit -n`");
        }
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.build()?;
    let label = args.label.clone().unwrap_or_else(|| scenario.to_string());
    eprintln!(
        "{label} [{}]: {} publisher(s) on {} -> {} {} subscriber(s) on {}, {} channel(s), rate {}",
        args.server,
        plan.publishers,
        plan.pub_endpoint.url,
        plan.subscribers,
        plan.sub_transport.name(),
        plan.sub_endpoint.url,
        plan.channels,
        if plan.rate > 0.0 { format!("{} msg/s", plan.rate) } else { format!("max (window {})", plan.window) },
    );
    let outcome = runtime.block_on(run::run(plan.clone()))?;
    report::print_outcome(&label, &args.server, scenario, &outcome);
    if let Some(path) = &args.json_out {
        let mut record = serde_json::to_value(&outcome)?;
        if let Some(map) = record.as_object_mut() {
            let extra = serde_json::json!({
                "scenario": scenario,
                "label": label,
                "server": args.server,
                "transport": plan.sub_transport.name(),
                "publishers": plan.publishers,
                "subscribers": plan.subscribers,
                "channels": plan.channels,
                "rate": plan.rate,
                "window": plan.window,
                "payload": plan.payload,
                "two_nodes": args.pub_url.as_ref().is_some_and(|u| *u != args.url),
            });
            if let Some(extra) = extra.as_object() {
                map.extend(extra.clone());
            }
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(file, "{record}")?;
    }
    // Idle runs leave thousands of sockets to close: do not wait for the runtime to wind them down.
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` to every bench target; it means nothing here.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() <= 1 {
        println!(
            "loadgen: the end-to-end load generator; run a scenario with\n  \
             cargo bench --bench loadgen -- <fanout|channels|longpoll|idle> --url http://127.0.0.1:8000/faye\n\
             or everything against ours and node.js Faye with scripts/bench-compare.sh (see BENCHMARKS.md)."
        );
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Fanout(a) => run_scenario("fanout", a),
        Command::Channels(a) => run_scenario("channels", a),
        Command::Longpoll(a) => run_scenario("longpoll", a),
        Command::Idle(a) => run_scenario("idle", a),
        Command::Report(a) => report::table(&a.files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
