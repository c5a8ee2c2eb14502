//! Node configuration: defaults, validation. Imports nothing internal.

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// The server token a node uses unless configured: fine for a single node or a test, but every
/// node of a production cluster sets its own shared secret (`--server-token`), because anyone
/// who knows it can publish on the protected `/actionHero` channels.
pub const DEFAULT_SERVER_TOKEN: &str = "not-a-secret-set-server-token";

/// The greeting a chat connection receives when it opens (actionHero's
/// `general.welcomeMessage`).
pub const DEFAULT_WELCOME_MESSAGE: &str = "Hello! Welcome to the actionHero api";

/// The redis key layout a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisLayout {
    /// faye-redis 0.2.0's layout: node.js Faye nodes with faye-redis share the cluster. Redis
    /// does work for every delivery.
    #[default]
    Faye,
    /// Our own layout: a publish costs redis work per interested node, and each node fans
    /// out to its clients. Only our nodes understand it.
    Native,
}

impl std::str::FromStr for RedisLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "faye" => Ok(RedisLayout::Faye),
            "native" => Ok(RedisLayout::Native),
            other => Err(format!("unknown redis layout {other:?} (expected faye or native)")),
        }
    }
}

/// A secret setting (token secret, API key): kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Who may subscribe to, or publish on, the channels a [`ChannelRule`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    /// Every client, with a token or without (today's default).
    Anyone,
    /// Clients whose handshake carried a valid token.
    Token,
    /// Clients whose token has this claim: equal to the segment the rule's `{name}` captures
    /// when the pattern has one (private per-user channels), otherwise present and truthy.
    Claim(String),
    /// Only the node's own callers: the server publish API and in-process clients.
    Server,
    /// No one, the server included.
    Nobody,
}

impl std::str::FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "anyone" => Ok(Permission::Anyone),
            "token" => Ok(Permission::Token),
            "server" => Ok(Permission::Server),
            "nobody" => Ok(Permission::Nobody),
            other => match other.strip_prefix("claim:") {
                Some(name) if is_claim_name(name) => Ok(Permission::Claim(name.to_string())),
                _ => Err(format!(
                    "unknown permission {other:?} (expected anyone, token, claim:<name>, server or nobody)"
                )),
            },
        }
    }
}

fn is_claim_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// One channel rule of the config file: who may subscribe and who may publish on the channels
/// its pattern matches. Rules are tried in order and the first match wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRule {
    /// A channel pattern: `/a/b`, `/a/*`, `/a/**`, with `{name}` for one captured segment.
    pub channel: String,
    /// Who may subscribe.
    pub subscribe: Permission,
    /// Who may publish.
    pub publish: Permission,
}

/// Where a node finds the key that checks handshake tokens.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenKey {
    /// HS256 with this shared secret.
    Secret(Secret),
    /// RS256 or ES256 (P-256) with the public key in this PEM file.
    PublicKeyFile(PathBuf),
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenKey::Secret(s) => f.debug_tuple("Secret").field(s).finish(),
            TokenKey::PublicKeyFile(p) => f.debug_tuple("PublicKeyFile").field(p).finish(),
        }
    }
}

/// Access control: all of it off by default, leaving Faye's open behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// Handshakes must carry `ext.auth.token`, a JWT checked with this key.
    pub token_key: Option<TokenKey>,
    /// With a token key: a handshake without a token is accepted as anonymous (an invalid
    /// token is still refused).
    pub allow_anonymous: bool,
    /// Channel rules, first match wins; a channel no rule matches is open to anyone.
    pub rules: Vec<ChannelRule>,
    /// The app's URL (`http://…`) asked about every handshake, subscribe and publish.
    pub auth_hook: Option<String>,
    /// How long the hook may take before the request is denied.
    pub auth_hook_timeout: Duration,
    /// How long an allow for one (client, channel, operation) is reused; zero asks every time.
    pub auth_hook_cache: Duration,
    /// Bearer key of `POST /server/publish`; `None` turns the API off.
    pub api_key: Option<Secret>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            token_key: None,
            allow_anonymous: false,
            rules: Vec::new(),
            auth_hook: None,
            auth_hook_timeout: Duration::from_secs(2),
            auth_hook_cache: Duration::ZERO,
            api_key: None,
        }
    }
}

impl AccessConfig {
    /// True when anything restricts Bayeux clients (tokens, rules or the hook).
    pub fn restricts_clients(&self) -> bool {
        self.token_key.is_some() || !self.rules.is_empty() || self.auth_hook.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for rule in &self.rules {
            validate_rule_pattern(&rule.channel)?;
            for permission in [&rule.subscribe, &rule.publish] {
                if matches!(permission, Permission::Token | Permission::Claim(_)) && self.token_key.is_none() {
                    return Err(ConfigError::RuleNeedsTokens(rule.channel.clone()));
                }
            }
        }
        if let Some(url) = &self.auth_hook {
            let rest = url.strip_prefix("http://").unwrap_or("");
            if rest.is_empty() || rest.starts_with('/') || url.parse::<hyper::Uri>().is_err() {
                return Err(ConfigError::AuthHookUrl(url.clone()));
            }
        }
        if self.auth_hook_timeout.is_zero() {
            return Err(ConfigError::LimitZero("auth hook timeout"));
        }
        if matches!(&self.token_key, Some(TokenKey::Secret(s)) if s.0.is_empty()) {
            return Err(ConfigError::SecretEmpty("token secret"));
        }
        if matches!(&self.api_key, Some(s) if s.0.is_empty()) {
            return Err(ConfigError::SecretEmpty("api key"));
        }
        Ok(())
    }
}

/// Checks a rule's channel pattern: absolute, no empty segment, `**` only last, `*` and
/// `{name}` as whole segments.
fn validate_rule_pattern(pattern: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::RulePattern(pattern.to_string());
    let segments: Vec<&str> = pattern.strip_prefix('/').ok_or_else(bad)?.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let valid = match *segment {
            "" => false,
            "**" => i + 1 == segments.len(),
            "*" => true,
            s if s.starts_with('{') || s.ends_with('}') => {
                s.len() > 2 && s.starts_with('{') && s.ends_with('}') && is_claim_name(&s[1..s.len() - 1])
            }
            s => !s.contains(['*', '{', '}']),
        };
        if !valid {
            return Err(bad());
        }
    }
    Ok(())
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0 picks a free one).
    pub port: u16,
    /// Path of the Bayeux endpoint.
    pub mount: String,
    /// How long a `/meta/connect` is held (Faye's `timeout`); clients expire after twice this.
    pub timeout: Duration,
    /// Pause advised to clients between connects (Faye's `interval`).
    pub interval: Duration,
    /// Websocket ping / EventSource keepalive interval; `None` sends no websocket pings.
    pub ping: Option<Duration>,
    /// Largest request body or websocket message accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Most messages in one request body or websocket message (HTTP 400 / websocket close 1008 beyond).
    pub max_batch_messages: usize,
    /// Most subscriptions one client may hold; the subscribe past it gets a 403 error.
    pub max_subscriptions_per_client: usize,
    /// Handshakes per second allowed from one IP address (IPv6: one /64), token bucket;
    /// `0` turns the limit off. Refused handshakes are advised when to try again.
    pub handshake_rate: f64,
    /// Handshakes one address may make at once before the rate applies.
    pub handshake_burst: u32,
    /// Bytes of messages that may wait for one client (memory engine) before it is
    /// disconnected as a slow consumer; `0` leaves queues unbounded.
    pub max_queue_bytes: usize,
    /// Upper bound of a random `interval` added to `reconnect: "handshake"` advice (unknown
    /// client, failed handshake), spreading the re-handshakes after a restart; zero keeps Faye's advice.
    pub reconnect_jitter: Duration,
    /// Keep `/service/**` publishes from subscribers of `/**` (Faye delivers them there).
    pub forbid_wildcard_service: bool,
    /// A client id only works from the IP address that handshook it (checked by the node that
    /// handed it out); elsewhere it is an unknown client.
    pub bind_client_ip: bool,
    /// Origins (e.g. `https://app.example.com`) allowed cross-origin and websocket access;
    /// `None` echoes any `Origin`, as Faye does.
    pub cors_origins: Option<Vec<String>>,
    /// Browser client script to serve at `<mount>.js` and `<mount>/client.js`.
    pub client_script: Option<PathBuf>,
    /// Redis URL; `None` keeps the in-process memory engine.
    pub redis_url: Option<String>,
    /// Redis for the cluster layers (cache, tasks, peers, stats, rooms, web messages) when
    /// it must differ from `redis_url`: required when `redis_url` is a Redis Cluster (their
    /// actionHero key names span hash slots); a plain or Sentinel redis URL.
    pub cluster_redis_url: Option<String>,
    /// Redis key namespace (`faye` gives `faye/clients`; empty gives faye-redis's default).
    pub namespace: String,
    /// How nodes share clients in redis: faye-redis's layout (node.js Faye nodes can join) or
    /// the native one (node-side fan-out; our nodes only).
    pub redis_layout: RedisLayout,
    /// Native layout: most entries a node's inbox keeps while the node does not read them.
    pub inbox_max_len: usize,
    /// How often expired clients are garbage-collected from redis.
    pub gc_interval: Duration,
    /// PEM certificate chain for HTTPS/WSS (needs the `tls` feature).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS/WSS.
    pub tls_key: Option<PathBuf>,
    /// Upper bound on how long shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
    /// Prefix of the cluster layers' redis keys (cache, stats, web messages).
    pub cluster_prefix: String,
    /// Shared secret of the cluster's nodes: `/actionHero…` publishes must carry it (§C7.2)
    /// and chat payloads without it are dropped. The same on every node; production sets it.
    pub server_token: String,
    /// This node's cluster id; `None` = `{host}:{port}:{pid}:{random}` (a new incarnation
    /// per start). Must not collide with a task key name (checked at start).
    pub node_id: Option<String>,
    /// Task workers on this node (0 = this node runs no tasks but may enqueue).
    pub task_workers: u32,
    /// How often this node pings its membership.
    pub peer_ping_interval: Duration,
    /// A peer silent for longer is declared dead and its work recovered.
    pub dead_after: Duration,
    /// How long a graceful stop waits for running tasks; `None` waits forever.
    pub task_shutdown_timeout: Option<Duration>,
    /// Lifetime of HTTP clients' mailboxes after the last store; `None` disables them.
    pub web_message_ttl: Option<Duration>,
    /// Greeting sent to a client when it opens its chat connection (subscribes to its
    /// connection channel).
    pub welcome_message: String,
    /// How often this node checks its chat connections' clients still exist (expired ones
    /// leave their rooms).
    pub connection_sweep_interval: Duration,
    /// Tokens, channel rules, the auth hook and the server publish API.
    pub access: AccessConfig,
    /// Password of the operator's dashboard at `/dashboard` (HTTP Basic, any user name);
    /// `None` turns the dashboard off.
    pub dashboard_password: Option<Secret>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_string(),
            port: 8000,
            mount: "/faye".to_string(),
            timeout: Duration::from_secs(45),
            interval: Duration::ZERO,
            ping: None,
            max_body_bytes: 1024 * 1024,
            max_connections: 250_000,
            max_batch_messages: 1000,
            max_subscriptions_per_client: 1000,
            handshake_rate: 50.0,
            handshake_burst: 500,
            max_queue_bytes: 4 * 1024 * 1024,
            reconnect_jitter: Duration::ZERO,
            forbid_wildcard_service: false,
            bind_client_ip: false,
            cors_origins: None,
            client_script: None,
            redis_url: None,
            cluster_redis_url: None,
            namespace: "faye".to_string(),
            redis_layout: RedisLayout::Faye,
            inbox_max_len: 100_000,
            gc_interval: Duration::from_secs(60),
            tls_cert: None,
            tls_key: None,
            shutdown_grace: Duration::from_secs(10),
            cluster_prefix: "actionHero:".to_string(),
            server_token: DEFAULT_SERVER_TOKEN.to_string(),
            node_id: None,
            task_workers: 5,
            peer_ping_interval: Duration::from_millis(1000),
            dead_after: Duration::from_millis(5000),
            task_shutdown_timeout: Some(Duration::from_secs(30)),
            web_message_ttl: None,
            welcome_message: DEFAULT_WELCOME_MESSAGE.to_string(),
            connection_sweep_interval: Duration::from_secs(30),
            access: AccessConfig::default(),
            dashboard_password: None,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The mount path must start with `/`.
    #[error("mount must start with '/': {0:?}")]
    MountInvalid(String),
    /// The connect timeout must be positive.
    #[error("timeout must be greater than zero")]
    TimeoutZero,
    /// The ping interval must be positive.
    #[error("ping must be greater than zero")]
    PingZero,
    /// TLS needs both a certificate and a key.
    #[error("--tls-cert and --tls-key go together")]
    TlsIncomplete,
    /// TLS was asked for but this build has no TLS support.
    #[error("this build has no TLS support: rebuild with `--features tls`")]
    TlsUnsupported,
    /// Garbage collection needs a positive interval.
    #[error("gc interval must be greater than zero")]
    GcIntervalZero,
    /// The body limit must allow at least a handshake.
    #[error("max body size must be at least 256 bytes")]
    BodyLimitTooSmall,
    /// A count limit must allow at least one.
    #[error("{0} must be at least 1")]
    LimitZero(&'static str),
    /// The handshake rate must be a finite number of handshakes per second, 0 or more.
    #[error("handshake rate must be a finite number >= 0")]
    HandshakeRateInvalid,
    /// A CORS origin must be a non-empty header-safe value such as `https://example.com`.
    #[error("invalid CORS origin {0:?}")]
    CorsOriginInvalid(String),
    /// The server token may not be empty.
    #[error("server token must not be empty")]
    ServerTokenEmpty,
    /// The node id cannot be used as a cluster member id.
    #[error("invalid node id: {0}")]
    NodeIdInvalid(String),
    /// A peer must ping more often than it is declared dead.
    #[error("dead-after must be longer than the peer ping interval")]
    DeadAfterTooShort,
    /// A channel rule's pattern is not a channel pattern.
    #[error("invalid channel rule pattern {0:?} (expected e.g. /a/b, /a/*, /a/** or /users/{{sub}}/**)")]
    RulePattern(String),
    /// A rule asks for tokens, and no token key is configured.
    #[error("the rule for {0} uses token or claim:, which needs --token-secret or --token-public-key")]
    RuleNeedsTokens(String),
    /// The auth hook must be a plain `http://host[:port]/path` URL.
    #[error("invalid --auth-hook URL {0:?} (expected http://host:port/path)")]
    AuthHookUrl(String),
    /// A secret may not be empty.
    #[error("{0} must not be empty")]
    SecretEmpty(&'static str),
    /// The faye layout was asked for on a Redis Cluster.
    #[error(
        "redis+cluster:// needs --redis-layout native: faye-redis's keys and scripts span hash slots and cannot be sharded"
    )]
    ClusterNeedsNativeLayout,
    /// A Redis Cluster was given without a separate redis for the cluster layers.
    #[error(
        "on a Redis Cluster, the cluster layers (cache, tasks, peers, stats, rooms, web messages) need --cluster-redis URL, a plain or Sentinel redis: their actionHero key names span hash slots"
    )]
    ClusterLayersNeedOwnRedis,
    /// `--cluster-redis` is not a plain or Sentinel redis URL, or comes without `--redis`.
    #[error("invalid --cluster-redis {0:?}: {1}")]
    ClusterRedisInvalid(String, &'static str),
}

/// True for a `redis+cluster://` URL (config checks look at the scheme only).
fn is_redis_cluster_url(url: &str) -> bool {
    url.starts_with("redis+cluster://")
}

impl Config {
    /// A Redis Cluster serves the native layout only, and the cluster layers then need their
    /// own plain or Sentinel redis.
    fn validate_redis_kinds(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.cluster_redis_url {
            if self.redis_url.is_none() {
                return Err(ConfigError::ClusterRedisInvalid(url.clone(), "it needs --redis"));
            }
            if is_redis_cluster_url(url) {
                return Err(ConfigError::ClusterRedisInvalid(url.clone(), "it must be a plain or Sentinel redis"));
            }
        }
        if self.redis_url.as_deref().is_some_and(is_redis_cluster_url) {
            if self.redis_layout == RedisLayout::Faye {
                return Err(ConfigError::ClusterNeedsNativeLayout);
            }
            if self.cluster_redis_url.is_none() {
                return Err(ConfigError::ClusterLayersNeedOwnRedis);
            }
        }
        Ok(())
    }

    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.mount.starts_with('/') || self.mount.contains(['?', '#', ' ']) {
            return Err(ConfigError::MountInvalid(self.mount.clone()));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::TimeoutZero);
        }
        if self.peer_ping_interval.is_zero() || self.dead_after <= self.peer_ping_interval {
            return Err(ConfigError::DeadAfterTooShort);
        }
        if self.ping.is_some_and(|p| p.is_zero()) {
            return Err(ConfigError::PingZero);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::TlsIncomplete);
        }
        if self.tls_cert.is_some() && !cfg!(feature = "tls") {
            return Err(ConfigError::TlsUnsupported);
        }
        if self.gc_interval.is_zero() {
            return Err(ConfigError::GcIntervalZero);
        }
        self.validate_redis_kinds()?;
        if self.server_token.is_empty() {
            return Err(ConfigError::ServerTokenEmpty);
        }
        if self.connection_sweep_interval.is_zero() {
            return Err(ConfigError::LimitZero("connection sweep interval"));
        }
        if self.max_body_bytes < 256 {
            return Err(ConfigError::BodyLimitTooSmall);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::LimitZero("max connections"));
        }
        if self.max_batch_messages == 0 {
            return Err(ConfigError::LimitZero("max batch messages"));
        }
        if self.max_subscriptions_per_client == 0 {
            return Err(ConfigError::LimitZero("max subscriptions per client"));
        }
        if !(self.handshake_rate.is_finite() && self.handshake_rate >= 0.0) {
            return Err(ConfigError::HandshakeRateInvalid);
        }
        if self.handshake_rate > 0.0 && self.handshake_burst == 0 {
            return Err(ConfigError::LimitZero("handshake burst"));
        }
        self.access.validate()?;
        if matches!(&self.dashboard_password, Some(p) if p.0.is_empty()) {
            return Err(ConfigError::SecretEmpty("dashboard password"));
        }
        for origin in self.cors_origins.iter().flatten() {
            let valid = !origin.is_empty() && origin.bytes().all(|b| b.is_ascii_graphic()) && !origin.contains(',');
            if !valid {
                return Err(ConfigError::CorsOriginInvalid(origin.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad = Config { mount: "faye".into(), ..Config::default() };
        assert_eq!(bad.validate(), Err(ConfigError::MountInvalid("faye".into())));
        let bad = Config { timeout: Duration::ZERO, ..Config::default() };
        assert_eq!(bad.validate(), Err(ConfigError::TimeoutZero));
        let bad = Config { max_batch_messages: 0, ..Config::default() };
        assert_eq!(bad.validate(), Err(ConfigError::LimitZero("max batch messages")));
        let bad = Config { handshake_rate: f64::NAN, ..Config::default() };
        assert_eq!(bad.validate(), Err(ConfigError::HandshakeRateInvalid));
        let bad = Config { cors_origins: Some(vec!["https://a.example, https://b".into()]), ..Config::default() };
        assert!(matches!(bad.validate(), Err(ConfigError::CorsOriginInvalid(_))));
    }

    #[test]
    fn access_settings_are_checked() {
        let with_rule = |channel: &str, subscribe: Permission| Config {
            access: AccessConfig {
                rules: vec![ChannelRule { channel: channel.into(), subscribe, publish: Permission::Anyone }],
                ..AccessConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(with_rule("/users/{sub}/**", Permission::Server).validate(), Ok(()));
        for bad in ["users", "/a//b", "/a/**/b", "/a/b*", "/{}/x", "/{a b}"] {
            assert_eq!(with_rule(bad, Permission::Anyone).validate(), Err(ConfigError::RulePattern(bad.into())));
        }
        assert_eq!(
            with_rule("/a", Permission::Token).validate(),
            Err(ConfigError::RuleNeedsTokens("/a".into())),
            "a token rule with no token key can never be met"
        );
        let hook = |url: &str| Config {
            access: AccessConfig { auth_hook: Some(url.into()), ..AccessConfig::default() },
            ..Config::default()
        };
        assert_eq!(hook("http://127.0.0.1:9000/auth").validate(), Ok(()));
        assert!(matches!(hook("https://x/auth").validate(), Err(ConfigError::AuthHookUrl(_))));
        assert_eq!("claim:sub".parse(), Ok(Permission::Claim("sub".into())));
        assert!("claim:".parse::<Permission>().is_err());
        assert!("everyone".parse::<Permission>().is_err());
    }
}
