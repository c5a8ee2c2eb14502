//! Three broker nodes on one redis share a task queue: each defines the `greet` task, one
//! enqueues ten of them (and one `AllNodes` fan-out), and the output shows which node ran
//! which. Then the nodes leave gracefully.
//!
//! ```text
//! redis-server --port 6390 &
//! cargo run --example three_node_tasks -- redis://127.0.0.1:6390/
//! ```

use actioncluster::{Config, EnqueueOptions, Node, Target, TaskDefinition};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url = std::env::args().nth(1).unwrap_or_else(|| "redis://127.0.0.1:6379/".to_string());
    let (ran_tx, mut ran) = mpsc::unbounded_channel::<String>();

    let mut nodes = Vec::new();
    for _ in 0..3 {
        let ran_tx = ran_tx.clone();
        // Every node knows the task: a handler gets the params, the task id, the attempt
        // number and a cancellation token.
        let greet = TaskDefinition::new("greet", move |ctx| {
            let ran_tx = ran_tx.clone();
            async move {
                let who = ctx.params["who"].as_str().unwrap_or("nobody").to_string();
                let _ =
                    ran_tx.send(format!("{} greeted {who} (task {}, attempt {})", ctx.node_id, ctx.id, ctx.attempt));
                Ok(())
            }
        })
        .max_attempts(3);
        let config =
            Config { host: "127.0.0.1".into(), port: 0, redis_url: Some(redis_url.clone()), ..Config::default() };
        nodes.push(Node::builder(config).task(greet).start().await?);
    }
    // Wait until all three are members.
    let first = nodes[0].cluster().clone();
    while first.peers().await?.len() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("members: {:?}", first.peers().await?);

    for n in 0..10 {
        first.tasks().enqueue("greet", json!({"who": format!("visitor {n}")}), EnqueueOptions::default()).await?;
    }
    let everyone = EnqueueOptions::target(Target::AllNodes);
    first.tasks().enqueue("greet", json!({"who": "the whole cluster"}), everyone).await?;

    for _ in 0..13 {
        match tokio::time::timeout(Duration::from_secs(10), ran.recv()).await {
            Ok(Some(line)) => println!("{line}"),
            _ => return Err("a task did not run within 10 s".into()),
        }
    }
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}
