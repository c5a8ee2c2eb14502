//! `long-polling` and `cross-origin-long-polling`: POST with a JSON body or a form-encoded
//! `message` field; the reply is a JSON array.

use super::{Body, Shared, bad_request, bayeux_headers, full, read_body, request_context, run_batch};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) async fn handle<B>(shared: Arc<Shared>, req: Request<B>, remote: SocketAddr) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ctx = request_context(&req, remote);
    let origin: Option<HeaderValue> = shared.cors_origin(req.headers());
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    let body = match read_body(req, shared.settings.max_body_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let json = if is_json {
        body
    } else {
        let mut message = None;
        for (k, v) in form_urlencoded::parse(&body) {
            match k.as_ref() {
                "message" => message = Some(v.into_owned()),
                // Faye validates a form's callback name even though a POST reply is JSON.
                "jsonp" if !v.is_empty() && !super::callback_polling::is_valid_callback(&v) => {
                    return bad_request("invalid JSON-P callback");
                }
                _ => {}
            }
        }
        match message {
            Some(m) if !m.is_empty() => bytes::Bytes::from(m),
            _ => return bad_request("received request with no message"),
        }
    };
    match run_batch(&shared, json, &ctx).await {
        Ok(reply) => {
            let mut resp = Response::new(full(reply));
            bayeux_headers(&mut resp, "application/json; charset=utf-8", origin.as_ref());
            resp
        }
        Err(resp) => resp,
    }
}
