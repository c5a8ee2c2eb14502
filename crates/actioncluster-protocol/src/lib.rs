//! The Bayeux wire model shared by the actioncluster broker and its Rust client: messages,
//! channel names and patterns, Bayeux errors and advice, client ids and the JSON codec, exactly
//! as Faye speaks them. Pure: no tokio, no I/O, no clocks, so it is tested in microseconds.
//!
//! The repository's `ARCHITECTURE.md` shows where this crate sits.

pub mod advice;
pub mod channel;
pub mod client_id;
pub mod codec;
pub mod error;
pub mod message;

/// Bayeux protocol version this server speaks.
pub const BAYEUX_VERSION: &str = "1.0";

/// The connection types the server offers, in Faye's order.
pub const CONNECTION_TYPES: [&str; 6] =
    ["long-polling", "cross-origin-long-polling", "callback-polling", "websocket", "eventsource", "in-process"];

pub use error::BayeuxError;
pub use message::{Message, Subscription};
