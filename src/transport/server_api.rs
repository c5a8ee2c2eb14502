//! The server publish API: `POST /server/publish` lets the app's backend publish without being
//! a Bayeux client. It needs `Authorization: Bearer <--api-key>`, and it is off without a key.
//! A body is one `{"channel", "data"[, "ext", "id"]}` or a JSON array of them; each goes
//! through the server's publish path (extensions and channel rules, as the `server` caller),
//! and the answer holds each message's Bayeux reply, in order.

use super::{Body, Shared, bad_request, full, read_body, text};
use crate::protocol::{BayeuxError, Message, channel, codec};
use crate::server::RequestContext;
use crate::server::protected_channels::same_token;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use std::net::SocketAddr;

/// Where the API listens (outside the Bayeux mount).
pub(crate) const PUBLISH_PATH: &str = "/server/publish";

/// Answers `POST /server/publish`.
pub(crate) async fn publish(shared: &Shared, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    if req.method() != Method::POST {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Use POST");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let Some(key) = &shared.settings.api_key else {
        return text(StatusCode::FORBIDDEN, "The server publish API is off: start the node with --api-key");
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !presented.is_some_and(|p| same_token(p.as_bytes(), key.0.as_bytes())) {
        tracing::debug!(%remote, "server publish API: missing or wrong key");
        let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized: send Authorization: Bearer <api key>");
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let body = match read_body(req, shared.settings.max_body_bytes).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let (entries, batch) = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(entries)) => (entries, true),
        Ok(entry @ Value::Object(_)) => (vec![entry], false),
        Ok(_) => return bad_request("expected {\"channel\", \"data\"} or an array of them"),
        Err(e) => return bad_request(&format!("invalid JSON: {e}")),
    };
    if entries.len() > shared.settings.max_batch_messages {
        return bad_request(&format!(
            "{} messages in one request; at most {} are accepted",
            entries.len(),
            shared.settings.max_batch_messages
        ));
    }
    let mut replies: Vec<Option<Bytes>> = Vec::with_capacity(entries.len());
    let mut messages = Vec::with_capacity(entries.len());
    for entry in &entries {
        match to_message(entry) {
            Ok(message) => {
                replies.push(None);
                messages.push(message);
            }
            Err(refusal) => replies.push(Some(refusal)),
        }
    }
    let ctx = RequestContext { remote_addr: Some(remote), origin: None, local: true };
    let processed = shared.server.process(messages, &ctx, None).await;
    // One encoded reply per publish, in order (publishes release no deliveries).
    let mut published = shared.server.finish_parts(processed).await;
    published.reverse();
    let parts: Vec<Bytes> =
        replies.into_iter().map(|r| r.unwrap_or_else(|| published.pop().unwrap_or_default())).collect();
    let body = if batch {
        codec::encode_array(parts.iter().map(|b| b.as_ref()))
    } else {
        parts.into_iter().next().unwrap_or_default()
    };
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// One entry as a publish, or its encoded refusal (`/meta` channels are not publishes).
fn to_message(entry: &Value) -> Result<Message, Bytes> {
    let field = |name: &str| entry.get(name).and_then(|v| serde_json::value::to_raw_value(v).ok());
    let message = Message {
        channel: entry.get("channel").and_then(Value::as_str).map(str::to_string),
        data: field("data"),
        ext: field("ext"),
        id: field("id"),
        ..Message::default()
    };
    if !entry.is_object() {
        let mut reply = message.reply();
        reply.successful = Some(false);
        reply.error = Some(BayeuxError::bad_request(vec!["message".into()]).to_string());
        return Err(codec::encode(&reply));
    }
    let name = message.channel_str();
    if name.starts_with(channel::META_PREFIX) || name == "/meta" {
        let mut reply = message.reply();
        reply.successful = Some(false);
        reply.error = Some(BayeuxError::channel_forbidden(name).to_string());
        return Err(codec::encode(&reply));
    }
    Ok(message)
}
