//! The Bayeux message: known fields typed, `data`, `ext`, `id` and unknown fields kept
//! as raw JSON so a published payload is never re-parsed on its way to subscribers.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// `subscription` as the client sent it: one channel or an array of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// `"subscription": "/a"`
    One(String),
    /// `"subscription": ["/a", "/b"]`
    Many(Vec<String>),
}

impl Subscription {
    /// The channels named, in order.
    pub fn channels(&self) -> &[String] {
        match self {
            Subscription::One(c) => std::slice::from_ref(c),
            Subscription::Many(v) => v,
        }
    }
}

impl Serialize for Subscription {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Subscription::One(c) => s.serialize_str(c),
            Subscription::Many(v) => v.serialize(s),
        }
    }
}

/// One Bayeux message, request or reply or delivered event.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// `channel`.
    pub channel: Option<String>,
    /// `clientId`.
    pub client_id: Option<String>,
    /// `id`, echoed verbatim (string or number).
    pub id: Option<Box<RawValue>>,
    /// `data`, the application payload, kept raw. `Some("null")` is a present null.
    pub data: Option<Box<RawValue>>,
    /// `ext`, kept raw.
    pub ext: Option<Box<RawValue>>,
    /// `advice`, kept raw (built by the server on replies, read by it on connect).
    pub advice: Option<Box<RawValue>>,
    /// `version`.
    pub version: Option<String>,
    /// `minimumVersion`.
    pub minimum_version: Option<String>,
    /// `supportedConnectionTypes`.
    pub supported_connection_types: Option<Vec<String>>,
    /// `connectionType`.
    pub connection_type: Option<String>,
    /// `subscription`.
    pub subscription: Option<Subscription>,
    /// `successful` (replies).
    pub successful: Option<bool>,
    /// `error` in `code:params:message` form; an incoming extension may set it to reject.
    pub error: Option<String>,
    /// Every other field, in arrival order, kept raw.
    pub other: Vec<(String, Box<RawValue>)>,
    /// Set when the element was not a JSON object or a known field had the wrong JSON type;
    /// names the offending field so the server can answer with a Bayeux error.
    pub malformed: Option<String>,
    /// On a reply: its `error` came with the request (an extension set it), so it is written
    /// before `successful`, where Faye puts it. Never serialized.
    pub error_from_request: bool,
}

impl Message {
    /// A message whose element could not be read as a Bayeux message.
    pub fn malformed(field: &str) -> Self {
        Self { malformed: Some(field.to_string()), ..Self::default() }
    }

    /// The channel, or `""` when absent.
    pub fn channel_str(&self) -> &str {
        self.channel.as_deref().unwrap_or("")
    }

    /// The `timeout` (ms) the client asked for in its `advice`, if any.
    pub fn advice_timeout_ms(&self) -> Option<f64> {
        #[derive(Deserialize)]
        struct ClientAdvice {
            timeout: Option<f64>,
        }
        let raw = self.advice.as_ref()?;
        serde_json::from_str::<ClientAdvice>(raw.get()).ok()?.timeout.filter(|t| t.is_finite() && *t >= 0.0)
    }

    /// The skeleton of a reply to this message: `id`, `clientId`, `channel` copied, plus the
    /// request's `error` (set by an extension) if any. `successful` is settled when sent.
    pub fn reply(&self) -> Message {
        Message {
            id: self.id.clone().filter(|id| is_truthy(id)),
            client_id: self.client_id.clone().filter(|c| !c.is_empty()),
            channel: self.channel.clone().filter(|c| !c.is_empty()),
            error: self.error.clone(),
            error_from_request: self.error.is_some(),
            ..Message::default()
        }
    }

    /// The message as delivered to subscribers: everything the publisher sent but `clientId`.
    pub fn for_delivery(&self) -> Message {
        Message { client_id: None, malformed: None, ..self.clone() }
    }
}

fn is_truthy(raw: &RawValue) -> bool {
    !matches!(raw.get(), "null" | "false" | "0" | "\"\"")
}

/// Where a reply's `error` goes among its keys, as Faye's server builds replies: copied
/// from the request before `successful`; set by the handshake after `version` when that is
/// missing, else after `supportedConnectionTypes`; set by a
/// subscribe's client checks (401, 402) before `subscription` and by its channel checks
/// after it; otherwise right after `successful`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ErrorSlot {
    BeforeSuccessful,
    AfterSuccessful,
    AfterVersion,
    AfterConnectionTypes,
    AfterSubscription,
}

impl Message {
    /// A reply (it has `successful`) written in Faye's key order; see [`ErrorSlot`].
    fn serialize_reply<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let handshake = self.channel.as_deref() == Some(crate::channel::meta::HANDSHAKE);
        let slot = if self.error_from_request {
            ErrorSlot::BeforeSuccessful
        } else if handshake {
            if self.error.as_deref().is_some_and(|e| e.starts_with("402:version:")) {
                ErrorSlot::AfterVersion
            } else {
                ErrorSlot::AfterConnectionTypes
            }
        } else if self.subscription.is_some()
            && !self.error.as_deref().is_some_and(|e| e.starts_with("401:") || e.starts_with("402:"))
        {
            ErrorSlot::AfterSubscription
        } else {
            ErrorSlot::AfterSuccessful
        };
        let mut map = s.serialize_map(None)?;
        let error = |map: &mut S::SerializeMap, at: ErrorSlot| match &self.error {
            Some(v) if at == slot => map.serialize_entry("error", v),
            _ => Ok(()),
        };
        if let Some(v) = &self.id {
            map.serialize_entry("id", v)?;
        }
        // A handshake request has no clientId: Faye adds it once the client exists, late.
        if let Some(v) = self.client_id.as_ref().filter(|_| !handshake) {
            map.serialize_entry("clientId", v)?;
        }
        if let Some(v) = &self.channel {
            map.serialize_entry("channel", v)?;
        }
        error(&mut map, ErrorSlot::BeforeSuccessful)?;
        if let Some(v) = &self.successful {
            map.serialize_entry("successful", v)?;
        }
        error(&mut map, ErrorSlot::AfterSuccessful)?;
        if let Some(v) = &self.version {
            map.serialize_entry("version", v)?;
        }
        error(&mut map, ErrorSlot::AfterVersion)?;
        if let Some(v) = &self.minimum_version {
            map.serialize_entry("minimumVersion", v)?;
        }
        if let Some(v) = &self.supported_connection_types {
            map.serialize_entry("supportedConnectionTypes", v)?;
        }
        error(&mut map, ErrorSlot::AfterConnectionTypes)?;
        if let Some(v) = self.client_id.as_ref().filter(|_| handshake) {
            map.serialize_entry("clientId", v)?;
        }
        if let Some(v) = &self.connection_type {
            map.serialize_entry("connectionType", v)?;
        }
        if let Some(v) = &self.subscription {
            map.serialize_entry("subscription", v)?;
        }
        error(&mut map, ErrorSlot::AfterSubscription)?;
        if let Some(v) = &self.advice {
            map.serialize_entry("advice", v)?;
        }
        if let Some(v) = &self.data {
            map.serialize_entry("data", v)?;
        }
        if let Some(v) = &self.ext {
            map.serialize_entry("ext", v)?;
        }
        for (k, v) in &self.other {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.successful.is_some() {
            return self.serialize_reply(s);
        }
        // Requests and deliveries in the order Faye's client writes a publish (`channel, data,
        // clientId, id`, then `ext`): Faye's server delivers the publisher's object minus
        // `clientId`, so a delivery reads `channel, data, id, ext` there too.
        let mut map = s.serialize_map(None)?;
        if let Some(v) = &self.channel {
            map.serialize_entry("channel", v)?;
        }
        if let Some(v) = &self.data {
            map.serialize_entry("data", v)?;
        }
        if let Some(v) = &self.client_id {
            map.serialize_entry("clientId", v)?;
        }
        if let Some(v) = &self.id {
            map.serialize_entry("id", v)?;
        }
        if let Some(v) = &self.error {
            map.serialize_entry("error", v)?;
        }
        if let Some(v) = &self.version {
            map.serialize_entry("version", v)?;
        }
        if let Some(v) = &self.minimum_version {
            map.serialize_entry("minimumVersion", v)?;
        }
        if let Some(v) = &self.supported_connection_types {
            map.serialize_entry("supportedConnectionTypes", v)?;
        }
        if let Some(v) = &self.connection_type {
            map.serialize_entry("connectionType", v)?;
        }
        if let Some(v) = &self.subscription {
            map.serialize_entry("subscription", v)?;
        }
        if let Some(v) = &self.advice {
            map.serialize_entry("advice", v)?;
        }
        if let Some(v) = &self.ext {
            map.serialize_entry("ext", v)?;
        }
        for (k, v) in &self.other {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

struct MessageVisitor;

fn opt_string(raw: &RawValue) -> Result<Option<String>, ()> {
    match raw.get() {
        "null" => Ok(None),
        text => serde_json::from_str::<String>(text).map(Some).map_err(|_| ()),
    }
}

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Bayeux message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let mut m = Message::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let raw: Box<RawValue> = map.next_value()?;
            let mut bad = false;
            match key.as_ref() {
                "channel" => opt_string(&raw).map(|v| m.channel = v).unwrap_or_else(|_| bad = true),
                "clientId" => opt_string(&raw).map(|v| m.client_id = v).unwrap_or_else(|_| bad = true),
                "connectionType" => opt_string(&raw).map(|v| m.connection_type = v).unwrap_or_else(|_| bad = true),
                "version" => match raw.get() {
                    // Faye accepts any truthy version; keep numbers as their text.
                    "null" => m.version = None,
                    t if t.starts_with('"') => opt_string(&raw).map(|v| m.version = v).unwrap_or_else(|_| bad = true),
                    t => m.version = Some(t.to_string()),
                },
                "minimumVersion" => m.minimum_version = opt_string(&raw).ok().flatten(),
                "error" => opt_string(&raw).map(|v| m.error = v).unwrap_or_else(|_| bad = true),
                "successful" => m.successful = serde_json::from_str(raw.get()).ok(),
                "id" => m.id = Some(raw),
                "data" => m.data = Some(raw),
                "ext" => m.ext = Some(raw),
                "advice" => m.advice = Some(raw),
                "supportedConnectionTypes" => match raw.get() {
                    "null" => m.supported_connection_types = None,
                    t => match serde_json::from_str::<Vec<String>>(t) {
                        Ok(v) => m.supported_connection_types = Some(v),
                        Err(_) => bad = true,
                    },
                },
                "subscription" => match raw.get() {
                    "null" => m.subscription = None,
                    t if t.starts_with('"') => match serde_json::from_str::<String>(t) {
                        Ok(v) => m.subscription = Some(Subscription::One(v)),
                        Err(_) => bad = true,
                    },
                    t => match serde_json::from_str::<Vec<String>>(t) {
                        Ok(v) => m.subscription = Some(Subscription::Many(v)),
                        Err(_) => bad = true,
                    },
                },
                _ => {
                    let name = key.into_owned();
                    m.other.retain(|(k, _)| *k != name);
                    m.other.push((name, raw));
                    continue;
                }
            }
            if bad && m.malformed.is_none() {
                m.malformed = Some(key.into_owned());
            }
        }
        Ok(m)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Message, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Message::malformed("message"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Message, E> {
        Ok(Message::malformed("message"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Message, E> {
        Ok(Message::malformed("message"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Message, E> {
        Ok(Message::malformed("message"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Message, E> {
        Ok(Message::malformed("message"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Message, E> {
        Ok(Message::malformed("message"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Message, E> {
        Ok(Message::malformed("message"))
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MessageVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_raw_fields_and_unknowns() {
        let text = r#"{"channel":"/a","clientId":"c1","id":7,"data":{"x":[1, 2]},"ext":{"t":1},"zz":true}"#;
        let m: Message = serde_json::from_str(text).unwrap();
        assert_eq!(m.channel.as_deref(), Some("/a"));
        assert_eq!(m.data.as_ref().unwrap().get(), r#"{"x":[1, 2]}"#);
        assert_eq!(m.other.len(), 1);
        let out = serde_json::to_string(&m.for_delivery()).unwrap();
        assert_eq!(out, r#"{"channel":"/a","data":{"x":[1, 2]},"id":7,"ext":{"t":1},"zz":true}"#);
    }

    #[test]
    fn wrong_types_are_flagged_not_fatal() {
        let m: Message = serde_json::from_str(r#"{"channel":5,"data":1}"#).unwrap();
        assert_eq!(m.malformed.as_deref(), Some("channel"));
        let v: Vec<Message> = serde_json::from_str(r#"[1, "x", {"channel":"/a"}]"#).unwrap();
        assert_eq!(v.len(), 3);
        assert!(v[0].malformed.is_some() && v[2].malformed.is_none());
    }

    #[test]
    fn advice_timeout() {
        let m: Message = serde_json::from_str(r#"{"advice":{"timeout":1500}}"#).unwrap();
        assert_eq!(m.advice_timeout_ms(), Some(1500.0));
    }
}
