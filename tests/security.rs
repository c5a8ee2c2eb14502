//! Server-side security options, each off by default (Faye's behaviour) and each hit here:
//! `forbid_wildcard_service`, `bind_client_ip`, the CORS allow-list; plus the refusals that
//! are always on (publishing to meta or wildcard channels).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use bytes::Bytes;
use common::bayeux::{self, handshake, send_one};
use common::http::request;
use common::{TestNode, WAIT, skip_on_reference};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

const JSON: (&str, &str) = ("content-type", "application/json");

/// POSTs `message` to the node from the local address `from` (another loopback address).
async fn post_from(from: &str, addr: SocketAddr, message: &Value) -> Vec<Value> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = tokio::time::timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/faye")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(message.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

// ---- forbid_wildcard_service ----

#[tokio::test]
async fn forbid_wildcard_service_keeps_service_publishes_from_root_wildcard_subscribers() {
    if skip_on_reference("an option Faye lacks") {
        return;
    }
    let node = TestNode::with_config(|c| c.forbid_wildcard_service = true).await;
    let all = bayeux::subscriber(node.addr, &["/**"]).await;
    let reply = bayeux::publish(node.addr, "/service/secret", json!("for the server only")).await;
    assert_eq!(reply["successful"], json!(true), "still acknowledged");
    bayeux::publish(node.addr, "/public", json!("for everyone")).await;
    let got = bayeux::connect_messages(node.addr, &all).await;
    assert_eq!(bayeux::channels(&got), ["/public"], "{got:?}");
}

#[tokio::test]
async fn forbid_wildcard_service_still_reaches_server_side_service_listeners() {
    if skip_on_reference("an option Faye lacks") {
        return;
    }
    let node = Box::new(
        actioncluster::Node::start(actioncluster::Config {
            host: "127.0.0.1".into(),
            port: 0,
            forbid_wildcard_service: true,
            ..actioncluster::Config::default()
        })
        .await
        .unwrap(),
    );
    let listener = node.client().build().await.unwrap();
    let mut service = listener.subscribe("/service/**").await.unwrap();
    bayeux::publish(node.local_addr(), "/service/echo", json!({"n": 1})).await;
    let got = tokio::time::timeout(WAIT, service.next()).await.unwrap().unwrap();
    assert_eq!(got.channel, "/service/echo");
    node.shutdown().await;
}

// ---- bind_client_ip ----

#[tokio::test]
async fn a_client_id_bound_to_its_address_is_unknown_elsewhere() {
    if skip_on_reference("an option Faye lacks") {
        return;
    }
    let node = TestNode::with_config(|c| c.bind_client_ip = true).await;
    let id = handshake(node.addr).await; // from 127.0.0.1
    bayeux::subscribe(node.addr, &id, "/mine").await;
    let unknown = format!("401:{id}:Unknown client");

    let connect = &post_from("127.0.0.2", node.addr, &bayeux::connect_msg(&id)).await[0];
    assert_eq!(connect["error"], json!(unknown), "{connect}");
    assert_eq!(connect["advice"]["reconnect"], json!("handshake"));
    assert!(connect.get("clientId").is_none(), "{connect}");
    let subscribe = json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "/theirs"});
    let reply = &post_from("127.0.0.2", node.addr, &subscribe).await[0];
    assert_eq!(reply["error"], json!(unknown), "{reply}");
    let publish = json!({"channel": "/mine", "clientId": id, "data": "forged"});
    let reply = &post_from("127.0.0.2", node.addr, &publish).await[0];
    assert_eq!(reply["error"], json!(unknown), "{reply}");
    let disconnect = json!({"channel": "/meta/disconnect", "clientId": id});
    assert_eq!(post_from("127.0.0.2", node.addr, &disconnect).await[0]["error"], json!(unknown));

    // Nothing was done in its name; from its own address it works as before.
    bayeux::publish(node.addr, "/mine", json!("real")).await;
    let got = bayeux::connect_messages(node.addr, &id).await;
    assert_eq!(got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(), [json!("real")]);
    let mut socket_from_elsewhere = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = socket.connect(node.addr).await.unwrap();
        let url = format!("ws://{}/faye", node.addr);
        tokio_tungstenite::client_async(url.as_str(), stream).await.unwrap().0
    };
    use futures_util::SinkExt;
    let connect = json!({"channel": "/meta/connect", "clientId": id, "connectionType": "websocket"});
    socket_from_elsewhere.send(connect.to_string().into()).await.unwrap();
    let frame = tokio::time::timeout(WAIT, socket_from_elsewhere.next()).await.unwrap().unwrap().unwrap();
    let replies: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(replies[0]["error"], json!(unknown), "websocket from another address: {replies}");
}

#[tokio::test]
async fn without_the_option_a_client_id_works_from_any_address() {
    if skip_on_reference("needs a second loopback address as the source") {
        return;
    }
    let node = TestNode::start().await;
    let id = handshake(node.addr).await;
    let subscribe = json!({"channel": "/meta/subscribe", "clientId": id, "subscription": "/x"});
    assert_eq!(post_from("127.0.0.2", node.addr, &subscribe).await[0]["successful"], json!(true));
}

// ---- CORS allow-list ----

const GOOD: &str = "https://good.example";
const EVIL: &str = "https://evil.example";

async fn cors_node() -> TestNode {
    TestNode::with_config(|c| c.cors_origins = Some(vec![GOOD.to_string()])).await
}

#[tokio::test]
async fn allow_listed_origins_get_cors_headers_and_others_none() {
    if skip_on_reference("an option Faye lacks") {
        return;
    }
    let node = cors_node().await;
    let body = bayeux::handshake_msg(&["long-polling"]).to_string();
    let good = request(node.addr, "POST", "/faye", &[JSON, ("origin", GOOD)], body.clone()).await;
    assert_eq!(good.status, 200);
    assert_eq!(good.header("access-control-allow-origin"), Some(GOOD));
    assert_eq!(good.header("access-control-allow-credentials"), Some("true"));

    let evil = request(node.addr, "POST", "/faye", &[JSON, ("origin", EVIL)], body.clone()).await;
    assert_eq!(evil.status, 200, "served, but the browser may not read it");
    assert_eq!(evil.header("access-control-allow-origin"), None);
    assert_eq!(evil.header("access-control-allow-credentials"), None);

    let none = request(node.addr, "POST", "/faye", &[JSON], body).await;
    assert_eq!(none.status, 200, "non-browser clients send no Origin");
}

#[tokio::test]
async fn preflight_from_an_origin_off_the_list_is_403() {
    if skip_on_reference("an option Faye lacks") {
        return;
    }
    let node = cors_node().await;
    let preflight = |origin: &'static str| {
        let addr = node.addr;
        async move {
            request(addr, "OPTIONS", "/faye", &[("origin", origin), ("access-control-request-method", "POST")], "")
                .await
        }
    };
    let good = preflight(GOOD).await;
    assert_eq!(good.status, 200);
    assert_eq!(good.header("access-control-allow-origin"), Some(GOOD));
    let evil = preflight(EVIL).await;
    assert_eq!(evil.status, 403);
    assert_eq!(evil.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn websocket_from_an_origin_off_the_list_is_refused() {
    if skip_on_reference("an option Faye lacks") {
        return;
    }
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let node = cors_node().await;
    let open = |origin: Option<&'static str>| {
        let url = format!("ws://{}/faye", node.addr);
        async move {
            let mut req = url.into_client_request().unwrap();
            if let Some(origin) = origin {
                req.headers_mut().insert("origin", origin.parse().unwrap());
            }
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await.unwrap()
        }
    };
    match open(Some(EVIL)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
    assert!(open(Some(GOOD)).await.is_ok());
    assert!(open(None).await.is_ok(), "non-browser clients send no Origin");
}

#[tokio::test]
async fn without_a_list_any_origin_is_echoed_as_faye_does() {
    let node = TestNode::start().await;
    let reply =
        request(node.addr, "OPTIONS", "/faye", &[("origin", EVIL), ("access-control-request-method", "POST")], "")
            .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some(EVIL));
}

// ---- always on ----

#[tokio::test]
async fn publishing_to_meta_or_wildcard_channels_is_refused_and_delivers_nothing() {
    let node = TestNode::with_timeout(Duration::from_millis(500)).await;
    let all = bayeux::subscriber(node.addr, &["/**"]).await;
    for (channel, code) in [("/meta/**", 403), ("/meta/foo", 403), ("/**", 405), ("/a/*", 405), ("/*", 405)] {
        let reply = send_one(node.addr, json!({"channel": channel, "data": 1})).await;
        assert_eq!(reply["successful"], json!(false), "{channel}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.starts_with(&format!("{code}:{channel}:")), "{channel}: {error}");
    }
    assert!(bayeux::connect_messages(node.addr, &all).await.is_empty());
}
