//! Spec section 6, HTTP adapter: mount matching, CORS preflight, POST bodies, GET with
//! JSON-P, bad requests, headers, body limit, client script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bayeux::{self, handshake};
use common::http::{Reply, request, urlencode};
use common::{TestNode, skip_on_reference};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn assert_bad_request(reply: &Reply) {
    assert_eq!(reply.status, 400, "body {:?}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(reply.text(), "Bad request");
}

fn handshake_json() -> String {
    bayeux::handshake_msg(&["long-polling"]).to_string()
}

fn assert_handshake_ok(reply: &Reply) {
    let replies = bayeux::json_array(reply);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["channel"], json!("/meta/handshake"));
    assert_eq!(replies[0]["successful"], json!(true), "{replies:?}");
}

/// Parses `/**/<callback>(<json>);`.
fn jsonp_payload(body: &str, callback: &str) -> Value {
    let prefix = format!("/**/{callback}(");
    let inner = body
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not a JSON-P body for {callback}: {body:?}"));
    serde_json::from_str(inner).unwrap_or_else(|e| panic!("JSON-P payload is not JSON ({e}): {inner:?}"))
}

// ---- mount matching ----

#[tokio::test]
async fn mount_path_is_the_bayeux_endpoint() {
    let node = TestNode::start().await;
    assert_handshake_ok(&request(node.addr, "POST", "/faye", &[JSON], handshake_json()).await);
}

#[tokio::test]
async fn paths_under_the_mount_are_the_bayeux_endpoint() {
    let node = TestNode::start().await;
    for path in ["/faye/handshake", "/faye/meta/handshake", "/faye/", "/faye/a/b/c"] {
        let reply = request(node.addr, "POST", path, &[JSON], handshake_json()).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_handshake_ok(&reply);
    }
}

#[tokio::test]
async fn mount_paths_with_an_extension_are_the_bayeux_endpoint() {
    let node = TestNode::start().await;
    for path in ["/faye/connect.json", "/faye/handshake.json", "/faye.json"] {
        let reply = request(node.addr, "POST", path, &[JSON], handshake_json()).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_handshake_ok(&reply);
    }
}

#[tokio::test]
async fn mount_path_with_a_query_string_is_the_bayeux_endpoint() {
    let node = TestNode::start().await;
    assert_handshake_ok(&request(node.addr, "POST", "/faye?x=1", &[JSON], handshake_json()).await);
}

#[tokio::test]
async fn paths_outside_the_mount_are_404() {
    let node = TestNode::start().await;
    for path in ["/", "/other", "/fayex", "/bayeux", "/fa", "/x/faye", "/faye.a.b"] {
        let reply = request(node.addr, "POST", path, &[JSON], handshake_json()).await;
        assert_eq!(reply.status, 404, "{path}: {:?}", reply.text());
        let reply = request(node.addr, "GET", path, &[], "").await;
        assert_eq!(reply.status, 404, "GET {path}");
    }
}

// ---- CORS preflight ----

fn assert_preflight(reply: &Reply, origin: &str) {
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("Accept, Authorization, Content-Type, Pragma, X-Requested-With")
    );
    assert_eq!(reply.header("access-control-allow-methods"), Some("POST, GET"));
    assert_eq!(reply.header("access-control-allow-origin"), Some(origin));
    assert_eq!(reply.header("access-control-max-age"), Some("86400"));
    assert!(reply.body.is_empty(), "preflight body {:?}", reply.text());
}

#[tokio::test]
async fn options_gets_preflight_headers_with_the_origin() {
    let node = TestNode::start().await;
    let reply = request(
        node.addr,
        "OPTIONS",
        "/faye",
        &[("origin", "http://app.example"), ("access-control-request-method", "POST")],
        "",
    )
    .await;
    assert_preflight(&reply, "http://app.example");
}

#[tokio::test]
async fn options_without_origin_uses_the_referer() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "OPTIONS", "/faye", &[("referer", "http://ref.example/page")], "").await;
    assert_preflight(&reply, "http://ref.example/page");
}

#[tokio::test]
async fn options_without_origin_or_referer_allows_any_origin() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "OPTIONS", "/faye", &[], "").await;
    assert_preflight(&reply, "*");
}

#[tokio::test]
async fn options_under_the_mount_is_a_preflight() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "OPTIONS", "/faye/connect", &[("origin", "http://o.example")], "").await;
    assert_preflight(&reply, "http://o.example");
}

#[tokio::test]
async fn access_control_request_method_post_makes_any_request_a_preflight() {
    let node = TestNode::start().await;
    let reply = request(
        node.addr,
        "GET",
        "/faye",
        &[("access-control-request-method", "POST"), ("origin", "http://o.example")],
        "",
    )
    .await;
    assert_preflight(&reply, "http://o.example");
    let reply =
        request(node.addr, "POST", "/faye", &[JSON, ("access-control-request-method", "POST")], handshake_json()).await;
    assert_preflight(&reply, "*");
}

// ---- POST ----

#[tokio::test]
async fn post_application_json_body_is_the_message() {
    let node = TestNode::start().await;
    assert_handshake_ok(&request(node.addr, "POST", "/faye", &[JSON], handshake_json()).await);
}

#[tokio::test]
async fn post_application_json_with_charset_is_json() {
    let node = TestNode::start().await;
    let reply =
        request(node.addr, "POST", "/faye", &[("content-type", "application/json; charset=utf-8")], handshake_json())
            .await;
    assert_handshake_ok(&reply);
}

#[tokio::test]
async fn post_form_encoded_message_field_holds_the_json() {
    let node = TestNode::start().await;
    let body = format!("message={}", urlencode(&handshake_json()));
    assert_handshake_ok(&request(node.addr, "POST", "/faye", &[FORM], body).await);
}

#[tokio::test]
async fn post_form_encoded_with_other_fields_uses_message() {
    let node = TestNode::start().await;
    let body = format!("foo=bar&message={}&baz=1", urlencode(&handshake_json()));
    assert_handshake_ok(&request(node.addr, "POST", "/faye", &[FORM], body).await);
}

#[tokio::test]
async fn post_without_content_type_is_form_encoded() {
    let node = TestNode::start().await;
    let body = format!("message={}", urlencode(&handshake_json()));
    assert_handshake_ok(&request(node.addr, "POST", "/faye", &[], body).await);
}

#[tokio::test]
async fn post_text_plain_is_form_encoded() {
    // Faye parses every non-JSON content type as a form (old XDomainRequest clients).
    let node = TestNode::start().await;
    let body = format!("message={}", urlencode(&handshake_json()));
    assert_handshake_ok(&request(node.addr, "POST", "/faye", &[("content-type", "text/plain")], body).await);
}

#[tokio::test]
async fn post_form_without_message_is_400() {
    let node = TestNode::start().await;
    assert_bad_request(&request(node.addr, "POST", "/faye", &[FORM], "foo=bar").await);
    assert_bad_request(&request(node.addr, "POST", "/faye", &[FORM], "").await);
}

#[tokio::test]
async fn post_raw_json_without_json_content_type_is_400() {
    // Read as a form, a JSON body has no `message` field.
    let node = TestNode::start().await;
    assert_bad_request(&request(node.addr, "POST", "/faye", &[FORM], handshake_json()).await);
}

#[tokio::test]
async fn post_form_with_invalid_jsonp_callback_is_400() {
    // Faye validates the `jsonp` parameter on every request that carries params.
    let node = TestNode::start().await;
    let body = format!("message={}&jsonp=1bad", urlencode("[]"));
    assert_bad_request(&request(node.addr, "POST", "/faye", &[FORM], body).await);
}

#[tokio::test]
async fn post_reply_is_json_even_with_a_jsonp_parameter() {
    let node = TestNode::start().await;
    let body = format!("message={}&jsonp=cb", urlencode("[]"));
    let reply = request(node.addr, "POST", "/faye", &[FORM], body).await;
    assert_eq!(reply.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(reply.text(), "[]");
}

// ---- GET / JSON-P ----

#[tokio::test]
async fn get_with_jsonp_callback_wraps_the_reply() {
    let node = TestNode::start().await;
    let path = format!("/faye?message={}&jsonp=cb", urlencode(&handshake_json()));
    let reply = request(node.addr, "GET", &path, &[], "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(reply.header("content-disposition"), Some("attachment; filename=f.txt"));
    let body = reply.text();
    assert!(body.starts_with("/**/cb(") && body.ends_with(");"), "{body:?}");
    let payload = jsonp_payload(&body, "cb");
    assert_eq!(payload[0]["channel"], json!("/meta/handshake"));
    assert_eq!(payload[0]["successful"], json!(true));
}

#[tokio::test]
async fn get_without_jsonp_uses_jsonpcallback() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "GET", &format!("/faye?message={}", urlencode("[]")), &[], "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "/**/jsonpcallback([]);");
    assert_eq!(reply.header("content-type"), Some("text/javascript; charset=utf-8"));
}

#[tokio::test]
async fn get_with_empty_jsonp_uses_jsonpcallback() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "GET", &format!("/faye?message={}&jsonp=", urlencode("[]")), &[], "").await;
    assert_eq!(reply.text(), "/**/jsonpcallback([]);");
}

#[tokio::test]
async fn get_jsonp_accepts_dotted_and_mixed_case_callbacks() {
    let node = TestNode::start().await;
    for cb in ["a", "_cb", "$", "Faye.Callbacks.cb_1", "jQuery123$._x", "A9.b8.C7"] {
        let path = format!("/faye?message={}&jsonp={}", urlencode("[]"), urlencode(cb));
        let reply = request(node.addr, "GET", &path, &[], "").await;
        assert_eq!(reply.status, 200, "{cb}");
        assert_eq!(reply.text(), format!("/**/{cb}([]);"));
    }
}

#[tokio::test]
async fn get_with_invalid_jsonp_callback_is_400() {
    let node = TestNode::start().await;
    for cb in ["1cb", "a..b", "a.", ".a", "a-b", "alert(1)", "a b", "a;b", "a[0]", "caf\u{e9}"] {
        let path = format!("/faye?message={}&jsonp={}", urlencode("[]"), urlencode(cb));
        let reply = request(node.addr, "GET", &path, &[], "").await;
        assert_bad_request(&reply);
    }
}

#[tokio::test]
async fn get_jsonp_escapes_line_and_paragraph_separators() {
    let node = TestNode::start().await;
    let message = json!({"channel": "/meta/subscribe", "id": "a\u{2028}b\u{2029}c"}).to_string();
    let path = format!("/faye?message={}&jsonp=cb", urlencode(&message));
    let reply = request(node.addr, "GET", &path, &[], "").await;
    assert_eq!(reply.status, 200);
    let body = reply.text();
    assert!(!body.contains('\u{2028}') && !body.contains('\u{2029}'), "raw separators in {body:?}");
    assert!(body.contains(r"a\u2028b\u2029c"), "{body:?}");
    assert_eq!(jsonp_payload(&body, "cb")[0]["id"], json!("a\u{2028}b\u{2029}c"));
    assert_eq!(reply.header("content-length"), Some(reply.body.len().to_string().as_str()));
}

#[tokio::test]
async fn get_supports_a_full_callback_polling_session() {
    let node = TestNode::with_timeout(std::time::Duration::from_secs(10)).await;
    let get = |msg: Value| {
        let addr = node.addr;
        async move {
            let path = format!("/faye?message={}&jsonp=__jsonp1__", urlencode(&msg.to_string()));
            let reply = request(addr, "GET", &path, &[], "").await;
            assert_eq!(reply.status, 200, "{:?}", reply.text());
            jsonp_payload(&reply.text(), "__jsonp1__")
        }
    };
    let hs = get(bayeux::handshake_msg(&["callback-polling"])).await;
    let id = hs[0]["clientId"].as_str().unwrap().to_string();
    let sub = get(json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "/cb"})).await;
    assert_eq!(sub[0]["successful"], json!(true));
    bayeux::publish(node.addr, "/cb", json!("via-get")).await;
    let conn = get(json!({"channel": "/meta/connect", "clientId": id, "connectionType": "callback-polling"})).await;
    assert_eq!(conn[0]["successful"], json!(true), "{conn}");
    assert_eq!(conn[1], json!({"channel": "/cb", "data": "via-get"}));
}

#[tokio::test]
async fn get_without_message_is_400() {
    let node = TestNode::start().await;
    assert_bad_request(&request(node.addr, "GET", "/faye", &[], "").await);
    assert_bad_request(&request(node.addr, "GET", "/faye?jsonp=cb", &[], "").await);
}

// ---- bad requests ----

#[tokio::test]
async fn malformed_json_is_400() {
    let node = TestNode::start().await;
    assert_bad_request(&request(node.addr, "POST", "/faye", &[JSON], "{\"channel\": ").await);
    let path = format!("/faye?message={}", urlencode("{nope"));
    assert_bad_request(&request(node.addr, "GET", &path, &[], "").await);
    let body = format!("message={}", urlencode("[{]"));
    assert_bad_request(&request(node.addr, "POST", "/faye", &[FORM], body).await);
}

#[tokio::test]
async fn json_string_or_number_message_is_400() {
    let node = TestNode::start().await;
    for bad in ["\"text\"", "12", "false"] {
        assert_bad_request(&request(node.addr, "POST", "/faye", &[JSON], bad).await);
        let path = format!("/faye?message={}", urlencode(bad));
        assert_bad_request(&request(node.addr, "GET", &path, &[], "").await);
    }
}

#[tokio::test]
async fn put_is_400() {
    let node = TestNode::start().await;
    assert_bad_request(&request(node.addr, "PUT", "/faye", &[JSON], handshake_json()).await);
}

#[tokio::test]
async fn delete_is_400() {
    let node = TestNode::start().await;
    assert_bad_request(&request(node.addr, "DELETE", "/faye", &[], "").await);
}

#[tokio::test]
async fn connection_survives_a_bad_request() {
    // Two requests on one keep-alive connection: the first bad, the second fine.
    let node = TestNode::start().await;
    let stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for (body, status) in [("{bad", 400u16), ("[]", 200)] {
        let req = hyper::Request::post("/faye")
            .header("host", node.addr.to_string())
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = common::within(common::WAIT, "reply", sender.send_request(req)).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    }
}

// ---- headers ----

#[tokio::test]
async fn json_reply_has_cache_control_nosniff_and_content_length() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "POST", "/faye", &[JSON], handshake_json()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(reply.header("cache-control"), Some("no-cache, no-store"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("content-length"), Some(reply.body.len().to_string().as_str()));
}

#[tokio::test]
async fn jsonp_reply_has_cache_control_nosniff_and_content_length() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "GET", &format!("/faye?message={}", urlencode("[]")), &[], "").await;
    assert_eq!(reply.header("cache-control"), Some("no-cache, no-store"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("content-length"), Some(reply.body.len().to_string().as_str()));
}

#[tokio::test]
async fn content_length_counts_utf8_bytes() {
    let node = TestNode::start().await;
    let msg = json!({"channel": "/meta/subscribe", "id": "\u{e9}\u{1f600}\u{4e2d}"}).to_string();
    let reply = request(node.addr, "POST", "/faye", &[JSON], msg).await;
    assert_eq!(reply.header("content-length"), Some(reply.body.len().to_string().as_str()));
    assert_eq!(bayeux::json_array(&reply)[0]["id"], json!("\u{e9}\u{1f600}\u{4e2d}"));
}

#[tokio::test]
async fn reply_to_a_request_with_origin_has_cors_headers() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "POST", "/faye", &[JSON, ("origin", "http://app.example")], handshake_json()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(reply.header("access-control-allow-origin"), Some("http://app.example"));
    let path = format!("/faye?message={}", urlencode("[]"));
    let reply = request(node.addr, "GET", &path, &[("origin", "http://app.example")], "").await;
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(reply.header("access-control-allow-origin"), Some("http://app.example"));
}

#[tokio::test]
async fn reply_without_origin_has_no_cors_headers() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "POST", "/faye", &[JSON, ("referer", "http://r.example/")], handshake_json()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    assert_eq!(reply.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn held_connect_reply_has_the_same_headers() {
    let node = TestNode::with_timeout(std::time::Duration::from_secs(1)).await;
    let id = handshake(node.addr).await;
    let reply = request(
        node.addr,
        "POST",
        "/faye",
        &[JSON, ("origin", "http://app.example")],
        bayeux::connect_msg(&id).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(reply.header("cache-control"), Some("no-cache, no-store"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("access-control-allow-origin"), Some("http://app.example"));
    assert_eq!(reply.header("content-length"), Some(reply.body.len().to_string().as_str()));
}

// ---- limits ----

#[tokio::test]
async fn oversized_body_is_413() {
    if skip_on_reference("Faye has no body limit") {
        return;
    }
    let node = TestNode::with_config(|c| c.max_body_bytes = 1024).await;
    let big = json!({"channel": "/big", "data": "x".repeat(4096)}).to_string();
    let reply = request(node.addr, "POST", "/faye", &[JSON], big.clone()).await;
    assert_eq!(reply.status, 413, "{:?}", reply.text());
    let form = format!("message={}", urlencode(&big));
    let reply = request(node.addr, "POST", "/faye", &[FORM], form).await;
    assert_eq!(reply.status, 413, "{:?}", reply.text());
}

#[tokio::test]
async fn body_within_the_limit_is_accepted() {
    let node = TestNode::with_config(|c| c.max_body_bytes = 1024).await;
    let body = json!({"channel": "/big", "data": "x".repeat(900)}).to_string();
    assert!(body.len() < 1024);
    let reply = request(node.addr, "POST", "/faye", &[JSON], body).await;
    assert_eq!(bayeux::json_array(&reply), vec![json!({"channel": "/big", "successful": true})]);
}

// ---- client script ----

#[tokio::test]
async fn client_script_is_404_when_not_configured() {
    if skip_on_reference("Faye always serves its bundled client") {
        return;
    }
    let node = TestNode::start().await;
    for path in ["/faye.js", "/faye/client.js"] {
        let reply = request(node.addr, "GET", path, &[], "").await;
        assert_eq!(reply.status, 404, "{path}");
    }
}

#[tokio::test]
async fn client_script_is_served_at_mount_js_and_client_js_when_configured() {
    let dir = std::env::temp_dir().join(format!("actioncluster-spec-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("faye-browser-min.js");
    let content = "/* test client */ var Faye = {VERSION: 'test'};\n";
    std::fs::write(&script, content).unwrap();
    let node = TestNode::with_config(|c| c.client_script = Some(script.clone())).await;
    for path in ["/faye.js", "/faye/client.js"] {
        let reply = request(node.addr, "GET", path, &[], "").await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply.header("content-type").is_some_and(|t| t.starts_with("text/javascript")),
            "{path}: {:?}",
            reply.header("content-type")
        );
        if !common::reference_mode() {
            assert_eq!(reply.text(), content, "{path}");
        }
    }
}

// ---- more request shapes ----

#[tokio::test]
async fn post_form_decodes_plus_as_space() {
    let node = TestNode::start().await;
    let body = "message=%7B%22channel%22%3A%22%2Fx%22%2C%22data%22%3A1%2C%22id%22%3A%22a+b%22%7D";
    let reply = request(node.addr, "POST", "/faye", &[FORM], body).await;
    assert_eq!(bayeux::json_array(&reply), vec![json!({"id": "a b", "channel": "/x", "successful": true})]);
}

#[tokio::test]
async fn get_message_decodes_plus_as_space() {
    let node = TestNode::start().await;
    let path = "/faye?message=%7B%22channel%22%3A%22%2Fx%22%2C%22data%22%3A1%2C%22id%22%3A%22a+b%22%7D&jsonp=cb";
    let reply = request(node.addr, "GET", path, &[], "").await;
    assert_eq!(jsonp_payload(&reply.text(), "cb"), json!([{"id": "a b", "channel": "/x", "successful": true}]));
}

#[tokio::test]
async fn head_is_400() {
    let node = TestNode::start().await;
    let reply = request(node.addr, "HEAD", "/faye", &[], "").await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn preflight_prefers_origin_over_referer() {
    let node = TestNode::start().await;
    let reply = request(
        node.addr,
        "OPTIONS",
        "/faye",
        &[("origin", "http://o.example"), ("referer", "http://r.example/page")],
        "",
    )
    .await;
    assert_preflight(&reply, "http://o.example");
}

#[tokio::test]
async fn websocket_upgrade_under_the_mount_is_accepted() {
    let node = TestNode::start().await;
    let mut ws = common::ws::Ws::open_path(node.addr, "/faye/websocket").await;
    let id = ws.handshake().await;
    assert_eq!(id.len(), 31);
}

#[tokio::test]
async fn websocket_upgrade_outside_the_mount_is_refused() {
    let node = TestNode::start().await;
    let url = format!("ws://{}/elsewhere", node.addr);
    // Faye leaves such an upgrade unanswered (nothing else listens); we may refuse it. Either
    // way no websocket opens.
    let attempt =
        tokio::time::timeout(std::time::Duration::from_secs(2), tokio_tungstenite::connect_async(url.as_str())).await;
    assert!(!matches!(attempt, Ok(Ok(_))), "upgrade outside the mount succeeded");
}
