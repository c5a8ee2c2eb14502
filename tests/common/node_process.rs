//! A node as a separate process (the binary cargo built for the tests, or
//! `ACTIONCLUSTER_BIN`, e.g. target/release/actioncluster): for faults a process suffers
//! whole (SIGKILL, SIGTERM) and for measuring it from outside (RSS, crashes).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Upper bound on the start and the exit of a node process.
const WAIT: Duration = Duration::from_secs(20);

/// The node binary: `ACTIONCLUSTER_BIN` or the one cargo built for this test.
pub fn bin() -> String {
    std::env::var("ACTIONCLUSTER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_actioncluster").to_string())
}

/// A running node process on `127.0.0.1:0`, killed when dropped.
pub struct NodeProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Everything it wrote to stderr so far (its log).
    log: Arc<Mutex<String>>,
}

impl NodeProcess {
    /// Starts the binary with `args` (host and port are set here) and waits for its
    /// listening line.
    pub async fn start(args: &[&str]) -> Self {
        let mut child = Command::new(bin())
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the node binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("listening line in time").unwrap();
        let line = line.unwrap_or_else(|| panic!("the node exited before listening: {}", log.lock().unwrap()));
        let rest = line.strip_prefix("actioncluster listening on http://").expect("listening line");
        let addr = rest.split('/').next().unwrap().parse().unwrap();
        Self { child, addr, log }
    }

    /// Starts a node on `redis_url` (no garbage collection during the test).
    pub async fn on_redis(redis_url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--redis", redis_url, "--gc-interval", "3600"];
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    /// Sends `signal` (`-KILL`, `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self) {
        tokio::time::timeout(WAIT, self.child.wait()).await.expect("the node exits in time").unwrap();
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its resident set size in bytes (Linux `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}
