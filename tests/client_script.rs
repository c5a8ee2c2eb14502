//! The browser client at `<mount>.js` and `<mount>/client.js`: an app migrating from Faye
//! has `node_modules/faye/client/faye-browser-min.js` in its working directory, and the
//! binary serves it without a flag; `--client-script` overrides it; one log line says which
//! file is served, or that none is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_actioncluster");

/// A fresh working directory for one run of the binary.
fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("actioncluster-client-script-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Puts a Faye browser client where an npm install of faye would.
fn install_faye_client(dir: &Path, body: &str) {
    let client = dir.join("node_modules/faye/client");
    std::fs::create_dir_all(&client).unwrap();
    std::fs::write(client.join("faye-browser-min.js"), body).unwrap();
}

/// Runs the binary in `dir`; returns it and its address.
fn start(dir: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", "0", "--log", "info"])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let rest = line.trim().strip_prefix("actioncluster listening on http://").expect("listening line");
    let addr: SocketAddr = rest.split('/').next().unwrap().parse().unwrap();
    (child, addr)
}

/// Stops the binary and returns everything it logged.
fn stop(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    log
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let reply = common::http::request(addr, "GET", path, &[], String::new()).await;
    (reply.status, reply.text())
}

#[tokio::test]
async fn fayes_browser_client_is_served_from_node_modules_without_a_flag() {
    let dir = workdir("default");
    install_faye_client(&dir, "/* faye from node_modules */");
    let (child, addr) = start(&dir, &[]);
    for path in ["/faye.js", "/faye/client.js"] {
        assert_eq!(get(addr, path).await, (200, "/* faye from node_modules */".to_string()), "{path}");
    }
    let log = stop(child);
    let line = log.lines().find(|l| l.contains("serving the browser client")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("faye-browser-min.js") && line.contains("working directory"), "{line}");
}

#[tokio::test]
async fn the_flag_overrides_the_client_in_node_modules() {
    let dir = workdir("flag");
    install_faye_client(&dir, "/* faye from node_modules */");
    std::fs::write(dir.join("mine.js"), "/* mine */").unwrap();
    let (child, addr) = start(&dir, &["--client-script", "mine.js"]);
    for path in ["/faye.js", "/faye/client.js"] {
        assert_eq!(get(addr, path).await, (200, "/* mine */".to_string()), "{path}");
    }
    let log = stop(child);
    let line = log.lines().find(|l| l.contains("serving the browser client")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("mine.js") && line.contains("--client-script"), "{line}");
}

#[tokio::test]
async fn without_either_nothing_is_served_and_the_log_says_so() {
    let dir = workdir("none");
    let (child, addr) = start(&dir, &[]);
    assert_eq!(get(addr, "/faye.js").await.0, 404);
    let log = stop(child);
    assert!(log.lines().any(|l| l.contains("no browser client served at /faye.js")), "{log}");
}
