//! Publishes one JSON message and waits for the server's acknowledgement.
//!
//! ```text
//! cargo run --example publish -- [URL] [CHANNEL] [JSON]
//! cargo run --example publish -- http://127.0.0.1:8000/faye /chat/lobby '{"text":"hello"}'
//! ```

use actioncluster::Client;
use serde_json::{Value, json};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "http://127.0.0.1:8000/faye".into());
    let channel = args.next().unwrap_or_else(|| "/chat/lobby".into());
    let data: Value = match args.next() {
        Some(text) => match serde_json::from_str(&text) {
            Ok(data) => data,
            Err(e) => {
                eprintln!("the message must be JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => json!({ "text": "hello" }),
    };

    let result = async {
        let client = Client::connect(url).await?;
        client.publish(channel.as_str(), data).await?;
        client.disconnect().await
    }
    .await;
    match result {
        Ok(()) => {
            println!("published to {channel}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // A rejection carries the server's Bayeux error, e.g. 403:/meta/x:Forbidden channel.
            eprintln!("publish failed: {e}");
            ExitCode::FAILURE
        }
    }
}
