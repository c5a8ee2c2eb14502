//! The `advice` the server attaches to handshake and connect replies.

use serde_json::value::RawValue;

/// The advice of a successful handshake or connect: retry after `interval_ms`, hold `timeout_ms`.
pub fn retry(interval_ms: u64, timeout_ms: u64) -> Box<RawValue> {
    raw(format!(r#"{{"reconnect":"retry","interval":{interval_ms},"timeout":{timeout_ms}}}"#))
}

/// The advice of a failed handshake or connect: handshake again.
pub fn handshake() -> Box<RawValue> {
    raw(r#"{"reconnect":"handshake"}"#.to_string())
}

/// Handshake again, but not before `interval_ms` (the server is briefly unable to serve).
pub fn handshake_after(interval_ms: u64) -> Box<RawValue> {
    raw(format!(r#"{{"reconnect":"handshake","interval":{interval_ms}}}"#))
}

/// The advice that tells a client not to reconnect at all.
pub fn none() -> Box<RawValue> {
    raw(r#"{"reconnect":"none"}"#.to_string())
}

fn raw(text: String) -> Box<RawValue> {
    // Our own literal JSON; from_string only fails on invalid JSON.
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}
