//! Raw Bayeux as the generator speaks it: the requests it sends, written as JSON text, and
//! the few fields it reads back from replies and deliveries. Plain serde_json; nothing of the
//! server's internals.

use serde::Deserialize;
use std::borrow::Cow;

/// A reply or a delivered message, reduced to what the generator needs.
#[derive(Deserialize)]
pub struct Incoming<'a> {
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    #[serde(rename = "clientId", borrow, default)]
    pub client_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub successful: Option<bool>,
    #[serde(borrow, default)]
    pub error: Option<Cow<'a, str>>,
    #[serde(default)]
    pub data: Option<Stamp>,
}

/// The `data` of every message the generator publishes: publisher, channel index, that
/// publisher's sequence number on that channel, send time (µs on the generator's clock).
#[derive(Deserialize, Clone, Copy)]
pub struct Stamp {
    pub p: u32,
    pub c: u32,
    pub s: u64,
    pub t: u64,
}

impl Incoming<'_> {
    pub fn channel(&self) -> &str {
        self.channel.as_deref().unwrap_or("")
    }

    pub fn is_meta(&self) -> bool {
        self.channel().starts_with("/meta/")
    }

    /// A delivered message: not a meta message and not a reply (replies carry `successful`).
    pub fn delivery(&self) -> Option<Stamp> {
        if self.successful.is_none() && !self.is_meta() { self.data } else { None }
    }
}

/// Parses a reply body or websocket frame: a JSON array of messages (or one object).
pub fn parse(text: &str) -> Result<Vec<Incoming<'_>>, serde_json::Error> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map(|m| vec![m])
    } else {
        serde_json::from_str(text)
    }
}

/// Reads a frame or reply body of the generator's own shape without a JSON parser: deliveries
/// whose `data` starts with the stamp fields in the order the generator wrote them (servers
/// relay `data` verbatim or re-serialize it in key order), and successful connect replies.
/// Pushes the stamps and returns whether a connect reply was seen; `None` when the text holds
/// anything else (an error, another meta reply, another shape), for the full parser to read.
pub fn scan(text: &str, stamps: &mut Vec<Stamp>) -> Option<bool> {
    if text.contains("\"successful\":false") || text.contains("\"error\"") {
        return None;
    }
    let connect = text.contains("\"channel\":\"/meta/connect\"");
    let before = stamps.len();
    let mut rest = text;
    while let Some(i) = rest.find(STAMP) {
        let after = &rest[i + STAMP.len()..];
        let (p, after) = number(after)?;
        let (c, after) = number(after.strip_prefix(",\"c\":")?)?;
        let (s, after) = number(after.strip_prefix(",\"s\":")?)?;
        let (t, after) = number(after.strip_prefix(",\"t\":")?)?;
        stamps.push(Stamp { p: u32::try_from(p).ok()?, c: u32::try_from(c).ok()?, s, t });
        rest = after;
    }
    // Every message has a channel: any message besides these deliveries and the connect
    // reply is something this fast path does not understand.
    let messages = text.matches("\"channel\":").count();
    if messages != stamps.len() - before + usize::from(connect) {
        stamps.truncate(before);
        return None;
    }
    Some(connect)
}

const STAMP: &str = "\"data\":{\"p\":";

fn number(text: &str) -> Option<(u64, &str)> {
    let end = text.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(text.len());
    Some((text[..end].parse().ok()?, &text[end..]))
}

pub fn handshake() -> String {
    r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["websocket","long-polling"],"id":"1"}]"#
        .to_string()
}

pub fn subscribe(client_id: &str, channel: &str) -> String {
    format!(r#"[{{"channel":"/meta/subscribe","clientId":"{client_id}","subscription":"{channel}","id":"2"}}]"#)
}

pub fn connect(client_id: &str, connection_type: &str, id: u64) -> String {
    format!(
        r#"[{{"channel":"/meta/connect","clientId":"{client_id}","connectionType":"{connection_type}","id":"c{id}"}}]"#
    )
}

/// One publish (an object, not an array), so several can be joined into a batch.
pub fn publish(client_id: &str, channel: &str, id: u64, stamp: Stamp, pad: &str) -> String {
    format!(
        r#"{{"channel":"{channel}","clientId":"{client_id}","id":"{id}","data":{{"p":{},"c":{},"s":{},"t":{},"x":"{pad}"}}}}"#,
        stamp.p, stamp.c, stamp.s, stamp.t
    )
}

/// The client id of a successful handshake reply.
pub fn client_id_of(text: &str) -> Result<String, String> {
    let replies = parse(text).map_err(|e| format!("handshake reply is not JSON: {e}"))?;
    for reply in replies {
        if reply.channel() == "/meta/handshake" {
            return match (reply.successful, reply.client_id) {
                (Some(true), Some(id)) => Ok(id.into_owned()),
                _ => Err(format!("handshake refused: {}", reply.error.as_deref().unwrap_or("no error given"))),
            };
        }
    }
    Err(format!("no handshake reply in {text:.200}"))
}

/// Checks a reply to a meta request on `channel` (the first one found).
pub fn check_reply(text: &str, channel: &str) -> Result<(), String> {
    let replies = parse(text).map_err(|e| format!("{channel} reply is not JSON: {e}"))?;
    for reply in replies {
        if reply.channel() == channel {
            return match reply.successful {
                Some(true) => Ok(()),
                _ => Err(format!("{channel} refused: {}", reply.error.as_deref().unwrap_or("no error given"))),
            };
        }
    }
    Err(format!("no {channel} reply in {text:.200}"))
}

/// The channel index at the end of a generator channel name (`/lg/<run>/<index>`).
pub fn channel_index(channel: &str) -> Option<usize> {
    channel.rsplit('/').next()?.parse().ok()
}
