//! Subscribes to a channel pattern and prints every message until Ctrl-C.
//!
//! ```text
//! cargo run --example subscribe -- [URL] [PATTERN]
//! cargo run --example subscribe -- http://127.0.0.1:8000/faye '/chat/**'
//! ```

use actioncluster::{Client, ClientError};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "http://127.0.0.1:8000/faye".into());
    let pattern = args.next().unwrap_or_else(|| "/chat/**".into());

    let client = Client::connect(url).await?;
    let mut messages = client.subscribe(pattern.as_str()).await?;
    println!("subscribed to {pattern} as {}", client.client_id().unwrap_or_default());
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => println!("{} {}", message.channel, message.json()),
                None => break, // the client closed
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(messages);
    client.disconnect().await
}
