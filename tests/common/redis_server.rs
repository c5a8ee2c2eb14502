//! The one helper that gives a test its own `redis-server`: a free loopback port, no
//! persistence unless asked, verified to be our child (INFO server's process_id), killed and
//! reaped on drop. Tests never touch a redis they did not start. The same helper starts
//! replicas, sentinels (`redis-server --sentinel`) and Redis Cluster nodes, and the two
//! high-availability setups built from them: [`SentinelSet`] (a master, a replica and three
//! sentinels) and [`RedisCluster`] (three masters).
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
    role: Role,
}

/// What kind of redis-server process this is.
#[derive(Clone)]
enum Role {
    /// A plain server (or a replica / cluster node, with these extra arguments).
    Server(Vec<String>),
    /// A sentinel watching `name` at the master's port.
    Sentinel { name: String, master_port: u16 },
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
        Self::start_role(durable, Role::Server(Vec::new())).await
    }

    /// Starts a replica of the redis on `master_port`.
    pub async fn start_replica_of(master_port: u16) -> Self {
        let args = ["--replicaof", "127.0.0.1", &master_port.to_string()].map(String::from).to_vec();
        Self::start_role(false, Role::Server(args)).await
    }

    /// Starts a Redis Cluster node (not yet part of a cluster: see [`RedisCluster`]).
    pub async fn start_cluster_node() -> Self {
        let args =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
                .map(String::from)
                .to_vec();
        Self::start_role(false, Role::Server(args)).await
    }

    /// Starts a sentinel watching master `name` on `master_port` (quorum 2, down after 1 s).
    pub async fn start_sentinel(name: &str, master_port: u16) -> Self {
        Self::start_role(false, Role::Sentinel { name: name.to_string(), master_port }).await
    }

    async fn start_role(durable: bool, role: Role) -> Self {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("actioncluster-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for _ in 0..10 {
            let mut server = Self { child: None, port: free_port(), dir: dir.clone(), durable, role: role.clone() };
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
        let ready_line = match &self.role {
            Role::Sentinel { name, master_port } => {
                // A sentinel rewrites its configuration file: each gets its own.
                let conf = self.dir.join("sentinel.conf");
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n\
                     sentinel parallel-syncs {name} 1\n",
                    port = self.port,
                    dir = self.dir.display(),
                );
                if std::fs::write(&conf, text).is_err() {
                    return false;
                }
                cmd.arg(&conf).arg("--sentinel");
                "+monitor master"
            }
            Role::Server(extra) => {
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
                cmd.args(extra);
                "Ready to accept connections"
            }
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
        let Ok(mut child) = cmd.spawn() else { return false };
        let Some(stdout) = child.stdout.take() else { return false };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(ready_line) {
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

/// `INFO`-style text as a map of its `key:value` lines.
fn info_map(text: &str) -> std::collections::HashMap<String, String> {
    text.lines().filter_map(|l| l.trim_end().split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `within`.
pub async fn poll_until<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling interval under the bound
    }
}

/// One command on a fresh connection to `port`, bounded; `None` when it fails.
async fn ask<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    tokio::time::timeout(Duration::from_secs(2), async {
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async::<T>(&mut con).await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// A master, a replica and three sentinels (quorum 2, a server is down after 1 s), all our
/// children on free loopback ports.
pub struct SentinelSet {
    /// The two data servers; which one is master changes with a failover.
    pub servers: Vec<RedisServer>,
    /// The three sentinels.
    pub sentinels: Vec<RedisServer>,
    name: String,
}

impl SentinelSet {
    /// Starts the set and waits until every sentinel knows the replica and the other two
    /// sentinels (so a failover can be agreed on).
    pub async fn start() -> Self {
        let name = "actioncluster".to_string();
        let master = RedisServer::start().await;
        let replica = RedisServer::start_replica_of(master.port()).await;
        let replica_port = replica.port();
        poll_until(Duration::from_secs(20), "the replica to sync", || async move {
            let info: String = ask(replica_port, redis::cmd("INFO").arg("replication")).await?;
            (info_map(&info).get("master_link_status").map(String::as_str) == Some("up")).then_some(())
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(RedisServer::start_sentinel(&name, master.port()).await);
        }
        let set = Self { servers: vec![master, replica], sentinels, name };
        for sentinel in &set.sentinels {
            let (port, name) = (sentinel.port(), set.name.clone());
            poll_until(Duration::from_secs(30), "the sentinels to know each other and the replica", || {
                let name = name.clone();
                async move {
                    let fields: Vec<String> = ask(port, redis::cmd("SENTINEL").arg("MASTER").arg(&name)).await?;
                    let map: std::collections::HashMap<_, _> =
                        fields.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect();
                    (map.get("num-slaves").map(String::as_str) == Some("1")
                        && map.get("num-other-sentinels").map(String::as_str) == Some("2"))
                    .then_some(())
                }
            })
            .await;
        }
        set
    }

    /// `redis+sentinel://…/NAME/0` naming the three sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
        format!("redis+sentinel://{}/{}/0", hosts.join(","), self.name)
    }

    /// The master port the sentinels agree on now (asks the first that answers).
    pub async fn master_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            let addr: Option<Vec<String>> =
                ask(sentinel.port(), redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(&self.name)).await;
            if let Some(port) = addr.and_then(|a| a.get(1).and_then(|p| p.parse().ok())) {
                return Some(port);
            }
        }
        None
    }

    /// SIGKILLs the current master; returns its port.
    pub async fn kill_master(&mut self) -> u16 {
        let port = self.master_port().await.expect("sentinels name a master");
        let server = self.servers.iter_mut().find(|s| s.port() == port).expect("the master is one of ours");
        server.kill().await;
        port
    }

    /// Waits until the sentinels name a master other than `old` that says it is master.
    pub async fn wait_for_new_master(&self, old: u16, within: Duration) -> u16 {
        poll_until(within, "the sentinels to promote the replica", || async move {
            let port = self.master_port().await.filter(|p| *p != old)?;
            let role: Vec<redis::Value> = ask(port, &redis::cmd("ROLE")).await?;
            let is_master = matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master");
            is_master.then_some(port)
        })
        .await
    }
}

/// A Redis Cluster of three masters (no replicas), all our children on free loopback ports.
pub struct RedisCluster {
    /// The three masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster nodes, joins them with `redis-cli --cluster create` (the slots
    /// split in three) and waits until every node reports `cluster_state:ok`.
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_cluster_node().await);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        for node in &nodes {
            let port = node.port();
            poll_until(Duration::from_secs(30), "the cluster to be ok", || async move {
                let info: String = ask(port, redis::cmd("CLUSTER").arg("INFO")).await?;
                let map = info_map(&info);
                (map.get("cluster_state").map(String::as_str) == Some("ok")
                    && map.get("cluster_known_nodes").map(String::as_str) == Some("3"))
                .then_some(())
            })
            .await;
        }
        Self { nodes }
    }

    /// `redis+cluster://` naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// How many keys each node holds, in node order.
    pub async fn key_counts(&self) -> Vec<i64> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            counts.push(ask::<i64>(node.port(), &redis::cmd("DBSIZE")).await.unwrap_or(-1));
        }
        counts
    }
}
