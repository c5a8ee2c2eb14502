//! A node with the dashboard on and one flaky task, for the dashboard's browser test and for
//! looking at the page by hand:
//!
//! ```text
//! cargo run --example dashboard_demo -- --port 8000 --dashboard-password secret [--redis redis://127.0.0.1:6380/]
//! ```
//!
//! It takes the binary's `--host`, `--port`, `--timeout`, `--redis` and
//! `--dashboard-password`. A publish on `/demo/enqueue` (`{"nonce": …}`) enqueues the task
//! `demo:flaky` once in the cluster, which
//! fails (into the dead letter) until a publish on `/demo/heal` reaches this node; the node
//! then answers on `/demo/healed` with its id. Prints the binary's listening line.

use actioncluster::config::Secret;
use actioncluster::{Config, EnqueueOptions, Node, TaskDefinition};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn config() -> Result<Config, String> {
    let mut config = Config::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--host" => config.host = value,
            "--port" => config.port = value.parse().map_err(|e| format!("--port {value}: {e}"))?,
            "--timeout" => {
                let secs: f64 = value.parse().map_err(|e| format!("--timeout {value}: {e}"))?;
                config.timeout = Duration::try_from_secs_f64(secs).map_err(|e| format!("--timeout {value}: {e}"))?;
            }
            "--redis" => config.redis_url = Some(value),
            "--dashboard-password" => config.dashboard_password = Some(Secret(value)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let healed = Arc::new(AtomicBool::new(false));
    let flaky = {
        let healed = healed.clone();
        TaskDefinition::new("demo:flaky", move |_ctx| {
            let healed = healed.clone();
            async move {
                if healed.load(Ordering::SeqCst) { Ok(()) } else { Err("the demo task fails until /demo/heal".into()) }
            }
        })
    };
    let node = match Node::builder(config).task(flaky).start().await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let client = match node.client().build().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: in-process client: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (Ok(mut enqueue), Ok(mut heal)) =
        (client.subscribe("/demo/enqueue").await, client.subscribe("/demo/heal").await)
    else {
        eprintln!("error: cannot subscribe the demo channels");
        return std::process::ExitCode::from(2);
    };
    println!("actioncluster listening on {}", node.endpoint());
    let node_id = node.cluster().node_id().to_string();
    loop {
        tokio::select! {
            Some(message) = enqueue.next() => {
                // Every node hears the publish; the one that takes its lock enqueues the task.
                let nonce = message.json()["nonce"].to_string();
                if node.cluster().cache().lock(&format!("demo:enqueue:{nonce}"), Duration::from_secs(60)).await.unwrap_or(false) {
                    let enqueued = node.cluster().tasks().enqueue("demo:flaky", serde_json::json!({}), EnqueueOptions::default()).await;
                    if let Err(e) = enqueued {
                        eprintln!("enqueue failed: {e}");
                    }
                }
            }
            Some(_) = heal.next() => {
                healed.store(true, Ordering::SeqCst);
                let _ = client.publish("/demo/healed", serde_json::json!({"node": node_id})).await;
            }
            _ = tokio::signal::ctrl_c() => break,
            else => break,
        }
    }
    node.shutdown().await;
    std::process::ExitCode::SUCCESS
}
