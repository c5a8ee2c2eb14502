//! `long-polling` and `cross-origin-long-polling`: POST with a JSON body or a form-encoded
//! `message` field; the reply is a JSON array.

use super::{Body, Shared, bad_request, bayeux_headers, full, process_batch, read_body, request_context};
use crate::server::Batch;
use crate::telemetry::Transport;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) fn handle<B>(
    shared: Arc<Shared>,
    req: Request<B>,
    remote: SocketAddr,
) -> impl Future<Output = Response<Body>> + Send + 'static
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let origin: Option<HeaderValue> = shared.cors_origin(req.headers());
    // Reading and processing are boxed, and the request goes with them: their state is gone
    // once the batch waits, while what is left (a held connect) may wait for the whole timeout.
    let processing = Box::pin(read_and_process(shared.clone(), req, remote));
    async move {
        let _in_flight = shared.server.metrics().connection(Transport::LongPolling);
        let batch = match processing.await {
            Ok(batch) => batch,
            Err(resp) => return resp,
        };
        let mut resp = Response::new(full(shared.server.finish(batch).await));
        bayeux_headers(&mut resp, "application/json; charset=utf-8", origin.as_ref());
        resp
    }
}

/// Reads the body (JSON, or a form's `message` field) and applies its batch.
async fn read_and_process<B>(shared: Arc<Shared>, req: Request<B>, remote: SocketAddr) -> Result<Batch, Response<Body>>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ctx = request_context(&req, remote);
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    let body = read_body(req, shared.settings.max_body_bytes).await?;
    let json = if is_json {
        body
    } else {
        let mut message = None;
        for (k, v) in form_urlencoded::parse(&body) {
            match k.as_ref() {
                "message" => message = Some(v.into_owned()),
                // Faye validates a form's callback name even though a POST reply is JSON.
                "jsonp" if !v.is_empty() && !super::callback_polling::is_valid_callback(&v) => {
                    return Err(bad_request("invalid JSON-P callback"));
                }
                _ => {}
            }
        }
        match message {
            Some(m) if !m.is_empty() => bytes::Bytes::from(m),
            _ => return Err(bad_request("received request with no message")),
        }
    };
    process_batch(&shared, json, &ctx).await
}
