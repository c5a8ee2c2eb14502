//! The Bayeux wire model: messages, channels, errors, advice, ids and the codec.
//! Pure: no tokio, no I/O, no clocks.

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
