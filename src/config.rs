//! Node configuration: defaults, validation. Imports nothing internal.

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

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
    /// Most connections served at once.
    pub max_connections: usize,
    /// Browser client script to serve at `<mount>.js` and `<mount>/client.js`.
    pub client_script: Option<PathBuf>,
    /// Redis URL; `None` keeps the in-process memory engine.
    pub redis_url: Option<String>,
    /// Redis key namespace (`faye` gives `faye/clients`; empty gives faye-redis's default).
    pub namespace: String,
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
            client_script: None,
            redis_url: None,
            namespace: "faye".to_string(),
            gc_interval: Duration::from_secs(60),
            tls_cert: None,
            tls_key: None,
            shutdown_grace: Duration::from_secs(10),
            cluster_prefix: "actionHero:".to_string(),
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
}

impl Config {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.mount.starts_with('/') || self.mount.contains(['?', '#', ' ']) {
            return Err(ConfigError::MountInvalid(self.mount.clone()));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::TimeoutZero);
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
        if self.max_body_bytes < 256 {
            return Err(ConfigError::BodyLimitTooSmall);
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
    }
}
