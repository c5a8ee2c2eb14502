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

/// Starts the binary with `args` and `envs`, returns its listening line, and kills it.
fn listening_line(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut child = Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", "0", "--log", "warn"])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line.trim_end().to_string()
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("actioncluster-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_file_settings_yield_to_env_and_flags() {
    let file = config_file(
        "precedence.toml",
        "mount = '/file'\nhandshake-rate = 20\n[[rules]]\nchannel = '/closed/**'\nsubscribe = 'nobody'\n",
    );
    let file = file.to_str().unwrap();
    let only_file = listening_line(&["--config", file], &[]);
    assert!(only_file.ends_with("/file"), "{only_file}");
    let env = listening_line(&["--config", file], &[("ACTIONCLUSTER_MOUNT", "/env")]);
    assert!(env.ends_with("/env"), "env over file: {env}");
    let flag = listening_line(&["--config", file, "--mount", "/flag"], &[("ACTIONCLUSTER_MOUNT", "/env")]);
    assert!(flag.ends_with("/flag"), "flag over env: {flag}");
    let env_file = listening_line(&[], &[("ACTIONCLUSTER_CONFIG", file)]);
    assert!(env_file.ends_with("/file"), "the file named by ACTIONCLUSTER_CONFIG: {env_file}");
}

#[test]
fn config_file_errors_name_the_key_and_exit_2() {
    let cases = [
        ("unknown.toml", "prot = 9000\n", "unknown key `prot`"),
        ("value.toml", "timeout = 'soon'\n", "key `timeout`"),
        ("switch.toml", "allow-anonymous = 'yes'\n", "key `allow-anonymous`: expected true or false"),
        ("rule.toml", "[[rules]]\nchannel = '/a'\npublish = 'admins'\n", "rule 1 (publish)"),
        ("pattern.toml", "[[rules]]\nchannel = 'a/**'\n", "invalid channel rule pattern"),
        ("needs.toml", "[[rules]]\nchannel = '/a'\nsubscribe = 'token'\n", "needs --token-secret"),
        ("syntax.toml", "port = = 1\n", "line 1"),
        ("hook.toml", "auth-hook = 'ftp://x'\n", "invalid --auth-hook URL"),
    ];
    for (name, text, expected) in cases {
        let file = config_file(name, text);
        let out = Command::new(BIN).args(["--port", "0", "--config", file.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: one line: {err}");
    }
    let out = Command::new(BIN).args(["--config", "/nonexistent/node.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
    let not_a_key = config_file("key.pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
    let out = Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", "0", "--token-public-key", not_a_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an RSA or EC"), "{:?}", out.stderr);
}
