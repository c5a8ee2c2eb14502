//! Access control of the binary's node, over the wire: handshake tokens (JWT in
//! `ext.auth.token`), channel rules, the auth hook (against a small HTTP server run here) and
//! the server publish API; and on two nodes sharing a redis, the same rights on either node.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use actioncluster::config::{AccessConfig, ChannelRule, Permission, Secret, TokenKey};
use actioncluster::{Config, Node, RedisLayout};
use common::bayeux::{self, send, send_one};
use common::redis_server::RedisServer;
use common::{WAIT, http};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-token-secret";
const API_KEY: &str = "test-api-key";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(claims: Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn user_token(sub: &str) -> String {
    token(json!({"sub": sub, "exp": now() + 600}))
}

fn rule(channel: &str, subscribe: Permission, publish: Permission) -> ChannelRule {
    ChannelRule { channel: channel.into(), subscribe, publish }
}

/// Private per-user channels, a server-only announcement channel, a closed channel; the rest open.
fn rules() -> Vec<ChannelRule> {
    vec![
        rule("/users/{sub}/**", Permission::Claim("sub".into()), Permission::Server),
        rule("/announcements", Permission::Token, Permission::Server),
        rule("/closed/**", Permission::Nobody, Permission::Nobody),
    ]
}

fn config(access: AccessConfig) -> Config {
    Config { host: "127.0.0.1".into(), port: 0, timeout: Duration::from_secs(1), access, ..Config::default() }
}

fn tokens_and_rules() -> AccessConfig {
    AccessConfig {
        token_key: Some(TokenKey::Secret(Secret(SECRET.into()))),
        rules: rules(),
        api_key: Some(Secret(API_KEY.into())),
        ..AccessConfig::default()
    }
}

async fn start(config: Config) -> Node {
    tokio::time::timeout(WAIT, Node::start(config)).await.expect("start in time").expect("node starts")
}

fn handshake_msg(token: Option<&str>) -> Value {
    let mut m = bayeux::handshake_msg(&["long-polling"]);
    if let Some(t) = token {
        m["ext"] = json!({"auth": {"token": t}});
    }
    m
}

async fn handshake(addr: SocketAddr, token: &str) -> String {
    let reply = send_one(addr, handshake_msg(Some(token))).await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
    reply["clientId"].as_str().unwrap().to_string()
}

async fn publish_as(addr: SocketAddr, client_id: &str, channel: &str, data: Value) -> Value {
    send_one(addr, json!({"channel": channel, "clientId": client_id, "data": data})).await
}

fn assert_error(reply: &Value, error: &str) {
    assert_eq!(reply["successful"], json!(false), "{reply}");
    assert_eq!(reply["error"], json!(error), "{reply}");
}

async fn server_publish(addr: SocketAddr, key: Option<&str>, body: Value) -> http::Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    http::request(addr, "POST", "/server/publish", &headers, body.to_string()).await
}

#[tokio::test]
async fn handshakes_need_a_valid_token() {
    let node = start(config(tokens_and_rules())).await;
    let addr = node.local_addr();
    for (token, error) in [
        (None, "401::Unauthorized"),
        (Some("not-a-jwt".to_string()), "401::Unauthorized"),
        (
            Some(
                jsonwebtoken::encode(
                    &Header::default(),
                    &json!({"sub": "eve"}),
                    &EncodingKey::from_secret(b"guess").unwrap(),
                )
                .unwrap(),
            ),
            "401::Unauthorized",
        ),
        (Some(token(json!({"sub": "alice", "exp": now() - 5}))), "401::Unauthorized"),
        (Some(token(json!({"sub": "alice", "nbf": now() + 600}))), "401::Unauthorized"),
    ] {
        let reply = send_one(addr, handshake_msg(token.as_deref())).await;
        assert_error(&reply, error);
        assert_eq!(reply["advice"]["reconnect"], json!("none"), "a refused client stops: {reply}");
        assert!(reply.get("clientId").is_none(), "{reply}");
    }
    handshake(addr, &user_token("alice")).await;
    let metrics = http::request(addr, "GET", "/metrics", &[], "").await.text();
    assert!(metrics.contains("actioncluster_access_denied_total{operation=\"handshake\"} 5\n"), "{metrics}");
    node.shutdown().await;
}

#[tokio::test]
async fn anonymous_clients_when_allowed_get_only_what_anyone_gets() {
    let access = AccessConfig { allow_anonymous: true, ..tokens_and_rules() };
    let node = start(config(access)).await;
    let addr = node.local_addr();
    let anon = send_one(addr, handshake_msg(None)).await["clientId"].as_str().unwrap().to_string();
    bayeux::subscribe(addr, &anon, "/news").await;
    let reply = bayeux::subscribe_reply(addr, &anon, json!("/announcements")).await;
    assert_error(&reply, "403:/announcements:Forbidden channel");
    // An invalid token is still refused: anonymous is not a fallback for forgeries.
    assert_error(&send_one(addr, handshake_msg(Some("forged"))).await, "401::Unauthorized");
    node.shutdown().await;
}

#[tokio::test]
async fn rules_and_token_channel_lists_decide_subscribes_and_publishes() {
    let node = start(config(tokens_and_rules())).await;
    let addr = node.local_addr();
    let alice = handshake(addr, &user_token("alice")).await;
    for allowed in ["/users/alice/inbox", "/users/alice/**", "/announcements", "/news"] {
        bayeux::subscribe(addr, &alice, allowed).await;
    }
    for forbidden in ["/users/bob/inbox", "/users/bob/*", "/users/**", "/**", "/closed/x"] {
        let reply = bayeux::subscribe_reply(addr, &alice, json!(forbidden)).await;
        assert_error(&reply, &format!("403:{forbidden}:Forbidden channel"));
    }
    assert_error(
        &publish_as(addr, &alice, "/users/alice/inbox", json!("self")).await,
        "403:/users/alice/inbox:Forbidden channel",
    );
    assert_error(&publish_as(addr, &alice, "/announcements", json!(1)).await, "403:/announcements:Forbidden channel");
    assert_eq!(publish_as(addr, &alice, "/news", json!(1)).await["successful"], json!(true));

    // A token may narrow its session further.
    let narrow = token(json!({"sub": "carol", "exp": now() + 600,
        "channels": {"subscribe": ["/chat/*"], "publish": ["/chat/lobby"]}}));
    let carol = handshake(addr, &narrow).await;
    bayeux::subscribe(addr, &carol, "/chat/lobby").await;
    assert_error(&bayeux::subscribe_reply(addr, &carol, json!("/news")).await, "403:/news:Forbidden channel");
    assert_eq!(publish_as(addr, &carol, "/chat/lobby", json!(1)).await["successful"], json!(true));
    assert_error(&publish_as(addr, &carol, "/chat/other", json!(1)).await, "403:/chat/other:Forbidden channel");

    // A publish without a client (or with an unknown one) has no token: refused.
    let reply = send_one(addr, json!({"channel": "/news", "data": 1})).await;
    assert_error(&reply, "401::Unauthorized");
    node.shutdown().await;
}

#[tokio::test]
async fn delivered_messages_never_carry_ext_auth() {
    let node = start(config(tokens_and_rules())).await;
    let addr = node.local_addr();
    let alice = handshake(addr, &user_token("alice")).await;
    let bob = handshake(addr, &user_token("bob")).await;
    bayeux::subscribe(addr, &bob, "/news").await;
    let secret_token = user_token("alice");
    let reply = send_one(
        addr,
        json!({"channel": "/news", "clientId": alice, "data": "hi",
               "ext": {"auth": {"token": secret_token}, "trace": 7}}),
    )
    .await;
    assert_eq!(reply["successful"], json!(true), "{reply}");
    let delivered = bayeux::connect_messages(addr, &bob).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["ext"], json!({"trace": 7}), "{delivered:?}");
    assert!(!delivered[0].to_string().contains(&secret_token));
    node.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_ends_the_session_at_its_next_connect() {
    let node = start(config(tokens_and_rules())).await;
    let addr = node.local_addr();
    let short = token(json!({"sub": "alice", "exp": now() + 2}));
    let alice = handshake(addr, &short).await;
    bayeux::subscribe(addr, &alice, "/news").await;
    // Connect (each held at most the 1 s timeout) until the token's second has passed.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            let replies = bayeux::connect(addr, &alice).await;
            if replies[0]["successful"] == json!(false) {
                return replies[0].clone();
            }
        }
    })
    .await
    .expect("the session ends once the token expires");
    assert_error(&ended, "401::Token expired");
    assert_eq!(ended["advice"]["reconnect"], json!("handshake"), "{ended}");
    // The client is gone: it must handshake again, with a fresh token.
    assert_error(&bayeux::subscribe_reply(addr, &alice, json!("/news")).await, &format!("401:{alice}:Unknown client"));
    handshake(addr, &user_token("alice")).await;
    node.shutdown().await;
}

#[tokio::test]
async fn the_server_api_needs_its_key_and_publishes_through_the_rules() {
    let node = start(config(tokens_and_rules())).await;
    let addr = node.local_addr();
    let alice = handshake(addr, &user_token("alice")).await;
    bayeux::subscribe(addr, &alice, "/users/alice/inbox").await;

    let without = server_publish(addr, None, json!({"channel": "/users/alice/inbox", "data": 1})).await;
    assert_eq!(without.status, 401, "{}", without.text());
    let wrong = server_publish(addr, Some("guess"), json!({"channel": "/users/alice/inbox", "data": 1})).await;
    assert_eq!(wrong.status, 401);

    let one = server_publish(addr, Some(API_KEY), json!({"channel": "/users/alice/inbox", "data": {"n": 1}})).await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["successful"], json!(true), "{}", one.text());
    let batch = server_publish(
        addr,
        Some(API_KEY),
        json!([
            {"channel": "/users/alice/inbox", "data": {"n": 2}},
            {"channel": "/closed/x", "data": 0},
            {"channel": "/meta/handshake", "data": 0},
            {"channel": "/users/alice/inbox"},
            {"channel": "/users/alice/inbox", "data": {"n": 3}, "id": "m3"},
        ]),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    let results = batch.json();
    let ok: Vec<Value> = results.as_array().unwrap().iter().map(|r| r["successful"].clone()).collect();
    assert_eq!(ok, vec![json!(true), json!(false), json!(false), json!(false), json!(true)], "{results}");
    assert_eq!(results[1]["error"], json!("403:/closed/x:Forbidden channel"));
    assert_eq!(results[2]["error"], json!("403:/meta/handshake:Forbidden channel"));
    assert_eq!(results[3]["error"], json!("402:data:Missing required parameter"));
    assert_eq!(results[4]["id"], json!("m3"));
    let delivered = bayeux::connect_messages(addr, &alice).await;
    let numbers: Vec<Value> = delivered.iter().map(|m| m["data"]["n"].clone()).collect();
    assert_eq!(numbers, vec![json!(1), json!(2), json!(3)]);
    let bad = http::request(addr, "POST", "/server/publish", &[("authorization", "Bearer test-api-key")], "{").await;
    assert_eq!(bad.status, 400);
    node.shutdown().await;

    // No key configured: the API is off altogether.
    let open = start(config(AccessConfig::default())).await;
    let off = server_publish(open.local_addr(), Some(API_KEY), json!({"channel": "/a", "data": 1})).await;
    assert_eq!(off.status, 403, "{}", off.text());
    open.shutdown().await;
}

/// What the test's auth hook was asked.
type Asked = Arc<Mutex<Vec<Value>>>;

/// An HTTP server playing the app's auth hook: it allows `/allowed/**`, denies `/denied`
/// with a reason, answers `/slow` too late, fails `/broken` with a 500, and allows
/// handshakes whose `ext.password` is `pw`.
async fn auth_hook_server() -> (SocketAddr, Asked) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked: Asked = Arc::default();
    let log = asked.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let asked: Value = serde_json::from_slice(&body).unwrap();
                        log.lock().unwrap().push(asked.clone());
                        let (status, answer) = match (asked["operation"].as_str(), asked["channel"].as_str()) {
                            (Some("handshake"), _) if asked["ext"]["password"] == json!("pw") => {
                                (200, json!({"allow": true}))
                            }
                            (Some("handshake"), _) => (200, json!({"allow": false, "error": "bad password"})),
                            (_, Some(c)) if c.starts_with("/allowed/") => (200, json!({"allow": true})),
                            (_, Some("/denied")) => (200, json!({"allow": false, "error": "not for you"})),
                            (_, Some("/slow")) => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                (200, json!({"allow": true}))
                            }
                            (_, Some("/broken")) => (500, json!({"allow": true})),
                            _ => (200, json!({"allow": "maybe"})),
                        };
                        let mut resp = Response::new(Full::new(bytes::Bytes::from(answer.to_string())));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, asked)
}

fn asked_about(asked: &Asked, operation: &str, channel: &str) -> usize {
    asked
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a["operation"] == json!(operation) && a["channel"] == json!(channel))
        .count()
}

#[tokio::test]
async fn the_auth_hook_allows_denies_and_fails_closed() {
    let (hook, asked) = auth_hook_server().await;
    let access = AccessConfig {
        auth_hook: Some(format!("http://{hook}/auth")),
        auth_hook_timeout: Duration::from_millis(300),
        auth_hook_cache: Duration::from_secs(60),
        ..AccessConfig::default()
    };
    let node = start(config(access)).await;
    let addr = node.local_addr();

    let mut refused = bayeux::handshake_msg(&["long-polling"]);
    refused["ext"] = json!({"password": "guess"});
    let reply = send_one(addr, refused).await;
    assert_error(&reply, "401::bad password");
    assert_eq!(reply["advice"]["reconnect"], json!("none"));
    let mut welcome = bayeux::handshake_msg(&["long-polling"]);
    welcome["ext"] = json!({"password": "pw"});
    let client = send_one(addr, welcome).await["clientId"].as_str().unwrap().to_string();

    bayeux::subscribe(addr, &client, "/allowed/a").await;
    assert_error(&bayeux::subscribe_reply(addr, &client, json!("/denied")).await, "403:/denied:not for you");
    assert_error(&bayeux::subscribe_reply(addr, &client, json!("/slow")).await, "403:/slow:Authorization unavailable");
    assert_error(
        &bayeux::subscribe_reply(addr, &client, json!("/broken")).await,
        "403:/broken:Authorization unavailable",
    );
    assert_error(
        &bayeux::subscribe_reply(addr, &client, json!("/other")).await,
        "403:/other:Authorization unavailable",
    );
    assert_eq!(publish_as(addr, &client, "/allowed/a", json!(1)).await["successful"], json!(true));

    // The allow is cached: a second subscribe to the same channel is not asked about.
    bayeux::unsubscribe(addr, &client, "/allowed/a").await;
    bayeux::subscribe(addr, &client, "/allowed/a").await;
    assert_eq!(asked_about(&asked, "subscribe", "/allowed/a"), 1);
    assert_eq!(asked_about(&asked, "subscribe", "/denied"), 1);
    let first = asked.lock().unwrap().iter().find(|a| a["channel"] == json!("/allowed/a")).cloned().unwrap();
    assert_eq!(first["client_id"], json!(client));
    assert_eq!(first["ip"], json!("127.0.0.1"));
    assert_eq!(first["user"], json!(null));

    let metrics = http::request(addr, "GET", "/metrics", &[], "").await.text();
    assert!(metrics.contains("actioncluster_auth_hook_calls_total{outcome=\"error\"} 3\n"), "{metrics}");
    assert!(metrics.contains("actioncluster_auth_hook_calls_total{outcome=\"deny\"} 2\n"), "{metrics}");
    node.shutdown().await;
}

#[tokio::test]
async fn the_hook_sees_the_token_user() {
    let (hook, asked) = auth_hook_server().await;
    let access = AccessConfig { auth_hook: Some(format!("http://{hook}/auth")), ..tokens_and_rules() };
    let node = start(config(access)).await;
    let addr = node.local_addr();
    let mut message = handshake_msg(Some(&user_token("alice")));
    message["ext"]["password"] = json!("pw");
    let client = send_one(addr, message).await["clientId"].as_str().unwrap().to_string();
    bayeux::subscribe(addr, &client, "/allowed/x").await;
    // Rules come before the hook: a forbidden channel is refused without asking.
    assert_error(&bayeux::subscribe_reply(addr, &client, json!("/closed/x")).await, "403:/closed/x:Forbidden channel");
    let log = asked.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(|a| a["user"] == json!("alice")), "{log:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn rules_apply_on_whichever_node_a_client_talks_to() {
    let redis = RedisServer::start().await;
    for (layout, namespace) in [(RedisLayout::Faye, "faye"), (RedisLayout::Native, "native")] {
        let node_config = || Config {
            redis_url: Some(redis.url()),
            redis_layout: layout,
            namespace: namespace.into(),
            ..config(tokens_and_rules())
        };
        let a = start(node_config()).await;
        let b = start(node_config()).await;
        let alice = handshake(a.local_addr(), &user_token("alice")).await;
        // Node b never saw alice's handshake: it reads her claims from redis.
        let reply = bayeux::subscribe_reply(b.local_addr(), &alice, json!("/users/bob/inbox")).await;
        assert_error(&reply, "403:/users/bob/inbox:Forbidden channel");
        bayeux::subscribe(b.local_addr(), &alice, "/users/alice/inbox").await;
        assert_error(
            &publish_as(b.local_addr(), &alice, "/users/alice/inbox", json!(1)).await,
            "403:/users/alice/inbox:Forbidden channel",
        );
        let api =
            server_publish(b.local_addr(), Some(API_KEY), json!({"channel": "/users/alice/inbox", "data": 5})).await;
        assert_eq!(api.json()["successful"], json!(true), "{layout:?}: {}", api.text());
        let delivered = bayeux::connect_messages(a.local_addr(), &alice).await;
        assert_eq!(delivered.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(), vec![json!(5)], "{layout:?}");
        // A disconnect forgets the claims everywhere.
        assert_eq!(bayeux::disconnect(b.local_addr(), &alice).await["successful"], json!(true));
        let replies = send(b.local_addr(), &json!({"channel": "/news", "clientId": alice, "data": 1})).await;
        assert_eq!(replies[0]["successful"], json!(false), "{layout:?}: {replies:?}");
        a.shutdown().await;
        b.shutdown().await;
    }
}
