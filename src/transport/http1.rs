//! HTTP/1.1 at the mount path, served without hyper's per-connection buffers.
//!
//! Idle connections are most of a broker's memory, and at the mount path they are held
//! long-polls, open EventSource streams and websockets. hyper keeps an 8 KiB read buffer per
//! connection while a response is pending and an 8 KiB write buffer from the start, so this
//! layer reads each request head itself, into a buffer that exists only while a request is
//! arriving, and serves the Bayeux requests (long-polling, callback-polling, EventSource, CORS
//! preflights and websocket upgrades) on its own. A connection whose next request is anything
//! else (another path, `HEAD`, HTTP/1.0, a chunked body, `Expect`) is handed to hyper for the
//! rest of its life, with the bytes already read in front.

use super::io::{Io, Prefixed, poll_read_chunk};
use super::{Body, ConnectionSlot, Shared};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Largest request head accepted (request line and headers); Faye's JSON-P client keeps its
/// URLs under 2 KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// How long a request may take to arrive, from the moment the connection waits for it (as
/// hyper's `header_read_timeout`, which this replaces at the mount).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// On shutdown, how long a pending response (a held connect being answered) may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After a refusal, how long the rest of the client's request is read and dropped before the
/// connection closes.
const LINGER: Duration = Duration::from_secs(2);
/// ... and how much of it at most.
const MAX_LINGER_BYTES: usize = 1 << 20;

/// Serves one connection until it closes (or hands it to hyper).
///
/// Only two states last: waiting for a request and waiting for a reply (a held connect).
/// Everything else (reading a body, starting the reply, writing) is boxed, so those two stay
/// small; the request itself is never held across an `.await` here.
pub(crate) async fn serve(shared: Arc<Shared>, mut io: Io, remote: SocketAddr, slot: ConnectionSlot) {
    // Bytes read and not yet used: a request arriving, or one the client sent early.
    let mut buf = BytesMut::new();
    loop {
        let starting = match read_head(&shared, &mut io, &mut buf).await {
            Ok(Some((head, len))) => {
                if !serves(&shared, &head) {
                    // hyper reads the request again, from its first byte.
                    let hyper_io = TokioIo::new(Prefixed::new(buf, io));
                    Box::pin(super::serve_with_hyper(shared, hyper_io, remote, slot)).await;
                    return;
                }
                buf.advance(len);
                Box::pin(start(&shared, &mut io, &mut buf, head, remote))
            }
            Ok(None) => return,
            Err(refusal) => {
                Box::pin(refuse(&shared, &mut io, &mut buf, refusal)).await;
                return;
            }
        };
        let (reply, keep_alive) = match starting.await {
            Started::Reply(reply, keep_alive) => (reply, keep_alive),
            Started::Upgrade(ctx) => {
                // The websocket runs as a task of its own: this one's state is let go.
                let tracker = shared.tracker.clone();
                tracker.spawn(async move {
                    super::websocket::run_upgraded(shared, io, buf, ctx).await;
                    drop(slot); // the websocket no longer counts against max_connections
                });
                return;
            }
            Started::Close => return,
        };
        let writing = match await_reply(&shared, &mut io, &mut buf, reply).await {
            Some(resp) => {
                let close = !keep_alive || shared.shutdown.is_cancelled();
                let (io, buf) = (&mut io, &mut buf);
                Box::pin(async move {
                    let written = write_response(io, buf, resp, close).await;
                    if written.is_ok() && !close {
                        return true;
                    }
                    let _ = io.shutdown().await;
                    false
                })
            }
            // The peer left (its held connect is let go), or shutdown ran out of time.
            None => return,
        };
        if !writing.await {
            return;
        }
        release_if_empty(&mut buf);
    }
}

/// What a request led to.
enum Started {
    /// A Bayeux reply, on its way; keep the connection alive after it (or not).
    Reply(super::MountReply, bool),
    /// A websocket: the upgrade was answered.
    Upgrade(crate::server::RequestContext),
    /// Nothing more on this connection (refused, or the peer left).
    Close,
}

/// Reads the request's body and starts its reply (or answers its upgrade).
async fn start(shared: &Arc<Shared>, io: &mut Io, buf: &mut BytesMut, head: Head, remote: SocketAddr) -> Started {
    let keep_alive = !head.wants_close();
    let req = match read_body(shared, io, buf, head).await {
        Ok(Some(req)) => req,
        Ok(None) => return Started::Close,
        Err(refusal) => {
            refuse(shared, io, buf, refusal).await;
            return Started::Close;
        }
    };
    release_if_empty(buf);
    if super::websocket::is_upgrade(&req) && !super::is_preflight(&req) {
        return match super::websocket::handshake(shared, &req, remote) {
            super::websocket::Handshake::Accept(accept, ctx) => {
                drop(req);
                match write_response(io, buf, accept, false).await {
                    Ok(()) => Started::Upgrade(ctx),
                    Err(_) => Started::Close,
                }
            }
            super::websocket::Handshake::Refuse(refusal) => {
                refuse(shared, io, buf, refusal).await;
                Started::Close
            }
        };
    }
    Started::Reply(super::handle_mount(shared.clone(), req, remote), keep_alive)
}

/// Lets go of the read buffer's memory when it holds nothing: an idle connection keeps none.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// A parsed request head.
struct Head {
    method: Method,
    uri: Uri,
    /// `HTTP/1.<minor>`.
    minor: u8,
    headers: HeaderMap,
}

impl Head {
    /// True when the client asked to close after this request (or speaks HTTP/1.0 without
    /// keep-alive).
    fn wants_close(&self) -> bool {
        let has = |token: &str| {
            self.headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
        };
        if self.minor == 0 { !has("keep-alive") } else { has("close") }
    }
}

/// True when this layer serves the request; anything else goes to hyper.
fn serves(shared: &Shared, head: &Head) -> bool {
    let path = head.uri.path();
    head.minor == 1
        && matches!(head.method, Method::GET | Method::POST | Method::OPTIONS)
        && shared.is_bayeux_path(path)
        && !shared.is_script_path(path)
        && !head.headers.contains_key(header::TRANSFER_ENCODING)
        && !head.headers.contains_key(header::EXPECT)
}

/// The outcome of parsing what has arrived so far.
enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A whole head, `len` bytes long.
    Head(Head, usize),
    /// Not a request this server accepts.
    Invalid(Response<Body>),
}

/// Parses a request head (the header array lives on the stack only during the call).
fn parse_head(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Invalid(super::text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request header fields too large",
            ));
        }
        Err(e) => return Parsed::Invalid(super::bad_request(&format!("malformed HTTP request: {e}"))),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Invalid(super::bad_request("malformed HTTP request"));
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Invalid(super::bad_request("malformed HTTP method"));
    };
    let Ok(uri) = Uri::try_from(target) else {
        return Parsed::Invalid(super::bad_request("malformed request target"));
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
        else {
            return Parsed::Invalid(super::bad_request("malformed header"));
        };
        map.append(name, value);
    }
    Parsed::Head(Head { method, uri, minor, headers: map }, len)
}

/// Reads the next request head (left in `buf`, with its length). `Ok(None)` when the connection should end quietly: the peer
/// closed or went silent between requests, or the node is shutting down.
async fn read_head(shared: &Shared, io: &mut Io, buf: &mut BytesMut) -> Result<Option<(Head, usize)>, Response<Body>> {
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                Parsed::Head(head, len) => return Ok(Some((head, len))),
                Parsed::Invalid(refusal) => return Err(refusal),
                Parsed::Partial if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(super::text(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "Request head too large"));
                }
                Parsed::Partial => {}
            }
        }
        let read = tokio::select! {
            r = std::future::poll_fn(|cx| poll_read_into(io, buf, cx)) => r,
            _ = shared.shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep_until(deadline) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Err(super::text(StatusCode::REQUEST_TIMEOUT, "Request timeout"));
            }
        };
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Reads the body the head declares (`Content-Length`, or none) and builds the request.
async fn read_body(
    shared: &Shared,
    io: &mut Io,
    buf: &mut BytesMut,
    head: Head,
) -> Result<Option<Request<Full<Bytes>>>, Response<Body>> {
    let mut lengths = head.headers.get_all(header::CONTENT_LENGTH).iter();
    let len = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        // Digits only, as RFC 9110 has it (`parse` alone would take a sign).
        (Some(v), None) => match std::str::from_utf8(v.as_bytes().trim_ascii())
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return Err(super::bad_request("invalid Content-Length")),
        },
        (Some(_), Some(_)) => return Err(super::bad_request("more than one Content-Length")),
    };
    if len > shared.settings.max_body_bytes {
        return Err(super::too_large());
    }
    if buf.len() < len {
        buf.reserve(len - buf.len());
        let read_all = async {
            while buf.len() < len {
                match std::future::poll_fn(|cx| poll_read_into(io, buf, cx)).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
            true
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, read_all).await {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(_) => return Err(super::text(StatusCode::REQUEST_TIMEOUT, "Request timeout")),
        }
    }
    // The body leaves the read buffer without a copy.
    let body = buf.split_to(len).freeze();
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = head.headers;
    Ok(Some(req))
}

/// Reads what the socket has into `buf` (through the stack: nothing is reserved while the
/// socket is quiet). `Ok(0)` at end of stream.
fn poll_read_into(io: &mut Io, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    poll_read_chunk(io, cx, |bytes| buf.extend_from_slice(bytes))
}

/// Watches the socket while a response is pending: resolves when the peer is gone. Bytes it
/// sends meanwhile (a pipelined request) are kept, up to one request head's worth.
fn poll_peer_gone(io: &mut Io, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        if buf.len() >= MAX_HEAD_BYTES {
            return Poll::Pending;
        }
        match ready!(poll_read_into(io, buf, cx)) {
            Ok(0) | Err(_) => return Poll::Ready(()),
            Ok(_) => {}
        }
    }
}

/// Waits for the reply, watching the peer (a peer that leaves lets its held connect go, as it
/// does under hyper) and, once shutdown starts, the grace period. `None` when the connection
/// should end without a reply.
async fn await_reply(
    shared: &Shared,
    io: &mut Io,
    buf: &mut BytesMut,
    mut reply: super::MountReply,
) -> Option<Response<Body>> {
    tokio::select! {
        resp = reply.as_mut() => return Some(resp),
        () = std::future::poll_fn(|cx| poll_peer_gone(io, buf, cx)) => return None,
        () = shared.shutdown.cancelled() => {}
    }
    // Shutting down: the server answers held connects; give it the grace period.
    tokio::select! {
        resp = reply.as_mut() => Some(resp),
        () = std::future::poll_fn(|cx| poll_peer_gone(io, buf, cx)) => None,
        () = tokio::time::sleep(SHUTDOWN_GRACE) => None,
    }
}

/// Answers a request this layer refuses, then closes: the write side first, then what the
/// client still sends (the body of a refused request) is read and dropped for a while, so
/// the close does not reset the connection and lose the refusal before the client reads it
/// (until shutdown).
async fn refuse(shared: &Shared, io: &mut Io, buf: &mut BytesMut, refusal: Response<Body>) {
    if write_response(io, buf, refusal, true).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut dropped = 0;
        while dropped < MAX_LINGER_BYTES {
            buf.clear();
            match std::future::poll_fn(|cx| poll_read_into(io, buf, cx)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER, drain) => {}
        () = shared.shutdown.cancelled() => {}
    }
    *buf = BytesMut::new();
}

/// Writes a response: a whole body with `Content-Length` in one write, or a stream (an
/// EventSource) in chunks as it produces them, until it ends or the peer leaves.
async fn write_response(io: &mut Io, buf: &mut BytesMut, resp: Response<Body>, close: bool) -> io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let length = if upgrade { Some(0) } else { hyper::body::Body::size_hint(&body).exact() };
    let mut head = BytesMut::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in parts.headers.iter() {
        if matches!(*name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::DATE)
            || (*name == header::CONNECTION && !upgrade)
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    push_http_date(&mut head);
    head.extend_from_slice(b"\r\n");
    if !upgrade {
        match length {
            Some(n) => {
                let _ = write!(head, "content-length: {n}\r\n");
            }
            None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        if close {
            head.extend_from_slice(b"connection: close\r\n");
        }
    }
    head.extend_from_slice(b"\r\n");
    if length.is_some() {
        // A whole body: ready at once, and (one frame) taken without a copy.
        let Ok(collected) = body.collect().await;
        return write_all(io, &[&head, &collected.to_bytes()]).await;
    }
    write_all(io, &[&head]).await?;
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            () = std::future::poll_fn(|cx| poll_peer_gone(io, buf, cx)) => {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if data.is_empty() {
                    continue;
                }
                let mut size = [0u8; 18];
                let size_len = {
                    let mut cursor = io::Cursor::new(&mut size[..]);
                    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{:x}\r\n", data.len()));
                    cursor.position() as usize
                };
                write_all(io, &[&size[..size_len], &data, b"\r\n"]).await?;
            }
            None => break,
        }
    }
    write_all(io, &[b"0\r\n\r\n"]).await
}

/// Appends the current time as an HTTP date. It changes once a second, so each thread keeps
/// the last one it formatted rather than formatting it for every response.
fn push_http_date(out: &mut BytesMut) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    LAST.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Writes every piece, in as few system calls as the socket allows, then flushes.
async fn write_all(io: &mut Io, pieces: &[&[u8]]) -> io::Result<()> {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let n = std::future::poll_fn(|cx| {
            let mut skip = written;
            let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
            let mut count = 0;
            for piece in pieces {
                if skip >= piece.len() {
                    skip -= piece.len();
                    continue;
                }
                if count == slices.len() {
                    break;
                }
                slices[count] = IoSlice::new(&piece[skip..]);
                skip = 0;
                count += 1;
            }
            Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let bytes = b"POST /faye HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]";
        let Parsed::Head(head, len) = parse_head(bytes) else { panic!("not parsed") };
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/faye");
        assert_eq!(head.minor, 1);
        assert_eq!(head.headers.get("content-length").map(|v| v.as_bytes()), Some(&b"2"[..]));
        assert_eq!(&bytes[len..], b"[]");
        assert!(!head.wants_close());
    }

    #[test]
    fn partial_and_invalid_heads() {
        assert!(matches!(parse_head(b"POST /faye HTTP/1.1\r\nHost"), Parsed::Partial));
        let Parsed::Invalid(resp) = parse_head(b"POST /faye HTTP/1.1\r\nBad Header\r\n\r\n") else {
            panic!("accepted a malformed header")
        };
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let mut many = b"GET /faye HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let Parsed::Invalid(resp) = parse_head(&many) else { panic!("accepted too many headers") };
        assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn connection_close_and_http_1_0() {
        let Parsed::Head(head, _) = parse_head(b"GET /faye HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n") else {
            panic!()
        };
        assert!(head.wants_close());
        let Parsed::Head(head, _) = parse_head(b"GET /faye HTTP/1.0\r\n\r\n") else { panic!() };
        assert!(head.wants_close());
        let Parsed::Head(head, _) = parse_head(b"GET /faye HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") else {
            panic!()
        };
        assert!(!head.wants_close());
    }

    proptest::proptest! {
        /// Whatever arrives, parsing answers (partial, a head or a refusal) without panicking.
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_head(&bytes);
        }

        /// A head that arrives in two pieces is partial until its last byte, then the same head.
        #[test]
        fn a_head_cut_anywhere_is_partial_until_whole(
            path in "/faye(/[a-z0-9]{1,8})?(\\?[a-z]{1,4}=[a-z0-9%]{0,12})?",
            names in proptest::collection::vec("[a-z][a-z-]{0,10}", 0..8),
            cut in 0usize..400,
        ) {
            let mut head = format!("POST {path} HTTP/1.1\r\n");
            for (i, name) in names.iter().enumerate() {
                head.push_str(&format!("x-{name}: v{i}\r\n"));
            }
            head.push_str("\r\n");
            let cut = cut.min(head.len() - 1);
            proptest::prop_assert!(matches!(parse_head(&head.as_bytes()[..cut]), Parsed::Partial));
            let Parsed::Head(parsed, len) = parse_head(head.as_bytes()) else {
                return Err(proptest::test_runner::TestCaseError::fail("a whole head did not parse"));
            };
            proptest::prop_assert_eq!(len, head.len());
            proptest::prop_assert_eq!(parsed.uri.to_string(), path);
            proptest::prop_assert_eq!(parsed.headers.len(), names.len());
        }
    }
}
