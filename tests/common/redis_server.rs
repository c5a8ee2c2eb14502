//! The one helper that gives a test its own `redis-server`: a free loopback port, no
//! persistence unless asked, verified to be our child (INFO server's process_id), killed and
//! reaped on drop. Tests never touch a redis they did not start.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A redis-server child process on 127.0.0.1.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    durable: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl RedisServer {
    /// Starts a throw-away redis (no RDB, no AOF).
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Starts a redis that fsyncs every write to its append-only file, so a killed and
    /// restarted server still holds everything it acknowledged.
    pub async fn start_durable() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(durable: bool) -> Self {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("actioncluster-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for _ in 0..10 {
            let mut server = Self { child: None, port: free_port(), dir: dir.clone(), durable };
            if server.spawn().await {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed? scripts/test-all.sh installs it)");
    }

    async fn spawn(&mut self) -> bool {
        // A failed earlier attempt's drop removes the directory: make sure it exists.
        if std::fs::create_dir_all(&self.dir).is_err() {
            return false;
        }
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--protected-mode")
            .arg("yes");
        if self.durable {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
        let Ok(mut child) = cmd.spawn() else { return false };
        let Some(stdout) = child.stdout.take() else { return false };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let pid = child.id();
        self.child = Some(child);
        if !ready {
            self.kill().await;
            return false;
        }
        // Make sure the port is ours: the redis answering reports our child's pid.
        let info = self.info_server().await.unwrap_or_default();
        let ours = pid.is_some_and(|pid| info.contains(&format!("process_id:{pid}\r")));
        if !ours {
            self.kill().await;
        }
        ours
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILLs the server and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts it again on the same port (and, when durable, the same data directory).
    pub async fn restart(&mut self) {
        self.kill().await;
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // port still in TIME_WAIT
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    /// A command connection to this server (for assertions and fault injection).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    async fn info_server(&self) -> Option<String> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut con =
            tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection()).await.ok()?.ok()?;
        redis::cmd("INFO").arg("server").query_async::<String>(&mut con).await.ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // kill_on_drop also covers this; tokio reaps the child in the background.
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
