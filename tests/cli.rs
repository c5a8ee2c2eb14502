//! The binary: a clear one-line error and exit code 2 on a bad flag or a busy port; the
//! listening line on stdout; graceful exit on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_actioncluster");

#[test]
fn bad_flag_exits_2_with_an_error() {
    let out = Command::new(BIN).args(["--timeout=-3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--timeout"), "{err}");
    let out = Command::new(BIN).args(["--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["--mount", "faye", "--port", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mount must start with '/'"));
    // A node id that would collide with a task key, and a dead-after not above the ping.
    let out = Command::new(BIN).args(["--host", "127.0.0.1", "--port", "0", "--node-id", "global"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid node id"), "{:?}", out.stderr);
    let out = Command::new(BIN).args(["--port", "0", "--dead-after", "1", "--peer-ping", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dead-after must be longer"));
}

#[test]
fn busy_port_exits_2_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN).args(["--host", "127.0.0.1", "--port", &port]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: cannot listen on 127.0.0.1:"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn prints_its_endpoint_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", "0", "--log", "warn"])
        .env("ACTIONCLUSTER_MOUNT", "/bayeux")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("actioncluster listening on http://127.0.0.1:"), "{line}");
    assert!(line.trim_end().ends_with("/bayeux"), "the env var set the mount: {line}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(Duration::from_secs(10)).expect("stopped on SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");
}
