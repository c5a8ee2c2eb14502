//! HTTPS and WSS with `--features tls`: a self-signed certificate made by openssl, a rustls
//! client that trusts only it, a Bayeux handshake over HTTPS and a websocket over TLS.
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actioncluster::{Config, Node};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(10);

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    (cert, key)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    cert: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert).unwrap()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake")
}

#[tokio::test]
async fn bayeux_over_https_and_wss() {
    let dir = std::env::temp_dir().join(format!("actioncluster-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let node = Node::start(Config {
        host: "127.0.0.1".into(),
        port: 0,
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..Config::default()
    })
    .await
    .unwrap();
    assert!(node.endpoint().starts_with("https://"));

    // HTTPS long-polling handshake.
    let mut tls = tls_connect(node.local_addr(), &cert).await;
    let body = json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["long-polling"]})
        .to_string();
    let req = format!(
        "POST /faye HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut resp)).await.unwrap().ok();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let json_start = text.find("\r\n\r\n").unwrap() + 4;
    let reply: Value = serde_json::from_str(&text[json_start..]).unwrap();
    assert_eq!(reply[0]["successful"], json!(true));

    // WSS handshake.
    let tls = tls_connect(node.local_addr(), &cert).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/faye", tls).await.expect("websocket over TLS");
    let hs = json!({"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["websocket"]});
    ws.send(WsMessage::Text(hs.to_string().into())).await.unwrap();
    let frame = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    let reply: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(reply[0]["successful"], json!(true));
    assert!(reply[0]["clientId"].is_string());

    // A plain-HTTP client gets nothing served in clear text.
    let mut plain = tokio::net::TcpStream::connect(node.local_addr()).await.unwrap();
    plain.write_all(b"GET /faye HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    let _ = std::fs::remove_dir_all(&dir);
}
