//! The HTTP side of web clients' chat (spec §6.2 "the HTTP action `chat`", §7, §C8): requests
//! to `/api/chat` (or `/api?action=chat`) with a `method` and its parameters in the query
//! string or the body (form or JSON). The transport only reads the request: the parameters,
//! the browser-fingerprint cookie `sessionID`, the `__room` cookie and the remote address. The
//! node answers through [`WebChatService`].

use super::{Body, Shared, full, read_body, text};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value};
use std::net::SocketAddr;

/// The fingerprint cookie that names a web client on every node (actionHero's
/// `fingerprintOptions.cookieKey`).
pub const FINGERPRINT_COOKIE: &str = "sessionID";

/// The cookie remembering a web client's room, so another node puts it back there.
pub const ROOM_COOKIE: &str = "__room";

/// One web chat request, as the node needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct WebChatRequest {
    /// The client's fingerprint cookie, when it sent one.
    pub fingerprint: Option<String>,
    /// The room cookie, when it sent one.
    pub room: Option<String>,
    /// Query and body parameters (`method`, `room`, `message`, ...); the body wins.
    pub params: Map<String, Value>,
    /// The requester's address (the first `X-Forwarded-For` entry when present, as v5).
    pub remote_ip: String,
}

/// The node's answer to a web chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct WebChatResponse {
    /// HTTP status.
    pub status: u16,
    /// The JSON document.
    pub body: Value,
    /// A fingerprint issued to the client, set as its `sessionID` cookie.
    pub new_fingerprint: Option<String>,
    /// The room the client moved to, set as its `__room` cookie.
    pub room: Option<String>,
}

/// The chat action behind `/api/chat`, supplied by the node (the transport does not know
/// chat or the cluster layers).
#[async_trait::async_trait]
pub trait WebChatService: Send + Sync {
    /// Runs the request's chat method.
    async fn chat(&self, request: WebChatRequest) -> WebChatResponse;
}

/// True for the paths the chat action answers on.
pub(crate) fn is_api_path(path: &str) -> bool {
    matches!(path, "/api" | "/api/" | "/api/chat")
}

/// `/api/chat` and `/api?action=chat`.
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let Some(service) = shared.settings.web_chat.clone() else {
        return text(StatusCode::NOT_FOUND, "Not found");
    };
    let path_names_chat = req.uri().path() == "/api/chat";
    let cookies = parse_cookies(req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()));
    let remote_ip = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|ip| ip.trim().to_string())
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| remote.ip().to_string());
    let mut params = Map::new();
    if let Some(query) = req.uri().query() {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            params.insert(k.into_owned(), Value::from(v.into_owned()));
        }
    }
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let body = match read_body(req, shared.settings.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if !body.is_empty() {
        if is_json {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(fields)) => params.extend(fields),
                _ => return json_error(StatusCode::BAD_REQUEST, "the JSON body must be an object"),
            }
        } else {
            for (k, v) in form_urlencoded::parse(&body) {
                params.insert(k.into_owned(), Value::from(v.into_owned()));
            }
        }
    }
    if !path_names_chat {
        match params.get("action").and_then(Value::as_str) {
            Some("chat") => {}
            Some(other) => return json_error(StatusCode::NOT_FOUND, &format!("{other} is not a known action.")),
            None => return json_error(StatusCode::NOT_FOUND, "action is a required parameter"),
        }
    }
    let request = WebChatRequest {
        fingerprint: cookies.get(FINGERPRINT_COOKIE).cloned(),
        room: cookies.get(ROOM_COOKIE).and_then(|raw| {
            // Set URL-encoded by the node (`roomChange`).
            form_urlencoded::parse(format!("r={raw}").as_bytes()).next().map(|(_, room)| room.into_owned())
        }),
        params,
        remote_ip,
    };
    let answer = service.chat(request).await;
    let mut resp = Response::new(full(Bytes::from(answer.body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let fingerprint_cookie =
        answer.new_fingerprint.map(|id| format!("{FINGERPRINT_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"));
    let room_cookie = answer.room.map(|room| {
        format!("{ROOM_COOKIE}={}; Path=/", form_urlencoded::byte_serialize(room.as_bytes()).collect::<String>())
    });
    for cookie in fingerprint_cookie.into_iter().chain(room_cookie) {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    resp
}

/// `{"error": "Error: {reason}"}` with `status` (v5's error text shape).
fn json_error(status: StatusCode, reason: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": format!("Error: {reason}") });
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Cookie name → value (the first of each name), from every `Cookie` header.
fn parse_cookies<'a>(headers: impl Iterator<Item = &'a str>) -> std::collections::HashMap<String, String> {
    let mut cookies = std::collections::HashMap::new();
    for header in headers {
        for pair in header.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                let value = value.trim().trim_matches('"');
                if !name.is_empty() && !value.is_empty() {
                    cookies.entry(name.trim().to_string()).or_insert_with(|| value.to_string());
                }
            }
        }
    }
    cookies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_parsed_first_wins() {
        let cookies = parse_cookies(["sessionID=abc; __room=lobby", "sessionID=other; empty=; x"].into_iter());
        assert_eq!(cookies.get("sessionID").map(String::as_str), Some("abc"));
        assert_eq!(cookies.get("__room").map(String::as_str), Some("lobby"));
        assert!(!cookies.contains_key("empty") && !cookies.contains_key("x"));
    }

    #[test]
    fn api_paths() {
        assert!(is_api_path("/api") && is_api_path("/api/chat") && is_api_path("/api/"));
        assert!(!is_api_path("/api/other") && !is_api_path("/faye"));
    }
}
