//! `callback-polling` (JSONP): GET with `message=<json>` and `jsonp=<callback>`; the reply
//! is a script calling the callback with the JSON array.

use super::{Shared, bad_request, bayeux_headers, full, process_batch, request_context};
use crate::telemetry::Transport;
use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// Faye's default callback name.
const DEFAULT_CALLBACK: &str = "jsonpcallback";

/// `^[a-z_$][a-z0-9_$]*(\.[a-z_$][a-z0-9_$]*)*$`, case-insensitive.
pub(crate) fn is_valid_callback(name: &str) -> bool {
    name.split('.').all(|part| {
        let mut chars = part.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    })
}

pub(crate) fn handle<B>(shared: Arc<Shared>, req: Request<B>, remote: SocketAddr) -> super::MountReply {
    let origin: Option<HeaderValue> = shared.cors_origin(req.headers());
    let query = req.uri().query().unwrap_or("");
    let mut message = None;
    let mut callback = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "message" => message = Some(v.into_owned()),
            "jsonp" => callback = Some(v.into_owned()),
            _ => {}
        }
    }
    let Some(message) = message.filter(|m| !m.is_empty()) else {
        return Box::pin(std::future::ready(bad_request("received request with no message")));
    };
    let callback = callback.filter(|c| !c.is_empty()).unwrap_or_else(|| DEFAULT_CALLBACK.to_string());
    if !is_valid_callback(&callback) {
        return Box::pin(std::future::ready(bad_request("invalid JSON-P callback")));
    }
    let ctx = request_context(&req, remote);
    drop(req);
    // Processing is boxed: its state is gone once the batch waits (a held connect).
    let processing = {
        let shared = shared.clone();
        Box::pin(async move { process_batch(&shared, Bytes::from(message), &ctx).await })
    };
    Box::pin(async move {
        let _in_flight = shared.server.metrics().connection(Transport::CallbackPolling);
        let batch = match processing.await {
            Ok(batch) => batch,
            Err(resp) => return resp,
        };
        let json = shared.server.finish(batch).await;
        let json = String::from_utf8_lossy(&json).replace('\u{2028}', "\\u2028").replace('\u{2029}', "\\u2029");
        let body = format!("/**/{callback}({json});");
        let mut resp = Response::new(full(Bytes::from(body)));
        bayeux_headers(&mut resp, "text/javascript; charset=utf-8", origin.as_ref());
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=f.txt"));
        resp
    })
}

#[cfg(test)]
mod tests {
    use super::is_valid_callback;

    #[test]
    fn callbacks() {
        for ok in ["cb", "_x", "$", "a.b.c", "Faye.jsonp1", "A9_$"] {
            assert!(is_valid_callback(ok), "{ok}");
        }
        for bad in ["", "1a", "a..b", "a.", "alert(1)", "a-b", "a b"] {
            assert!(!is_valid_callback(bad), "{bad}");
        }
    }
}
