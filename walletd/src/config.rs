//! Configuration: flags, then environment variables, then an optional TOML file, then the
//! defaults (a flag wins over the environment, which wins over the file). Merged once at start
//! into a [`Config`] whose every field is set, so nothing later wonders where a value came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default listen address: loopback, so a first start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default body limit: a command is well under 1 KiB; 64 KiB leaves room for long merchant
/// names and reasons without letting a client make the server buffer megabytes.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 64 * 1024;
/// Default request timeout (not the event feed or the export, which stream for as long as the
/// client reads).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default time a keep-alive connection may sit idle before the next request's headers.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default requests per second per key (burst of the same size).
pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 20_000;
/// Default seconds to finish in-flight requests after SIGTERM before closing connections.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;

/// Everything the server needs, fully resolved.
#[derive(Clone, Debug)]
pub struct Config {
    /// The store directory (created on first start).
    pub store: PathBuf,
    /// Where to listen; port 0 picks a free one (printed at start).
    pub listen: SocketAddr,
    /// The key file.
    pub keys: PathBuf,
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// Longest a request (other than a stream) may take.
    pub request_timeout: Duration,
    /// Longest a connection may wait for the next request.
    pub idle_timeout: Duration,
    /// Requests per second per key; 0 turns the limit off.
    pub rate_limit_per_sec: u32,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Log format: JSON lines (true) or human text.
    pub log_json: bool,
}

/// The optional TOML file: the same settings as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub store: Option<PathBuf>,
    pub listen: Option<String>,
    pub keys: Option<PathBuf>,
    pub body_limit_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub rate_limit_per_sec: Option<u32>,
    pub shutdown_grace_ms: Option<u64>,
    pub log_format: Option<String>,
}

/// What the command line and environment gave (clap has already applied env over nothing).
#[derive(Debug, Default, Clone)]
pub struct Given {
    pub config: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub listen: Option<String>,
    pub keys: Option<PathBuf>,
    pub body_limit_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub rate_limit_per_sec: Option<u32>,
    pub shutdown_grace_ms: Option<u64>,
    pub log_format: Option<String>,
}

impl Config {
    /// Merges flags/env over the file over the defaults; every error names the setting.
    pub fn resolve(given: Given, stderr_is_terminal: bool) -> anyhow::Result<Config> {
        let file = match &given.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen_text = given
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            anyhow::anyhow!("listen address `{listen_text}`: {e} (expected e.g. 127.0.0.1:8080)")
        })?;
        let keys = given.keys.or(file.keys).ok_or_else(|| {
            anyhow::anyhow!(
                "no key file: give --keys FILE (or WALLETD_KEYS); make one with `walletd keys add --keys FILE --name NAME --scope service`"
            )
        })?;
        let log_format = given
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| if stderr_is_terminal { "text" } else { "json" }.to_owned());
        let log_json = match log_format.as_str() {
            "json" => true,
            "text" => false,
            other => anyhow::bail!("log format `{other}`: expected `json` or `text`"),
        };
        let body_limit_bytes = given
            .body_limit_bytes
            .or(file.body_limit_bytes)
            .unwrap_or(DEFAULT_BODY_LIMIT_BYTES);
        if body_limit_bytes < 256 {
            anyhow::bail!(
                "body limit {body_limit_bytes} bytes: must be at least 256 (a command needs that much)"
            );
        }
        let ms = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_millis(flag.or(file).unwrap_or(default))
        };
        Ok(Config {
            store: given
                .store
                .or(file.store)
                .unwrap_or_else(|| PathBuf::from("./ledger-data")),
            listen,
            keys,
            body_limit_bytes,
            request_timeout: ms(
                given.request_timeout_ms,
                file.request_timeout_ms,
                DEFAULT_REQUEST_TIMEOUT_MS,
            ),
            idle_timeout: ms(
                given.idle_timeout_ms,
                file.idle_timeout_ms,
                DEFAULT_IDLE_TIMEOUT_MS,
            ),
            rate_limit_per_sec: given
                .rate_limit_per_sec
                .or(file.rate_limit_per_sec)
                .unwrap_or(DEFAULT_RATE_LIMIT_PER_SEC),
            shutdown_grace: ms(
                given.shutdown_grace_ms,
                file.shutdown_grace_ms,
                DEFAULT_SHUTDOWN_GRACE_MS,
            ),
            log_json,
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the order flag/env > file > default, and that a bad value names the setting.
    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("walletd.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nkeys = \"/etc/k.toml\"\nrate_limit_per_sec = 5\n",
        )
        .expect("write");
        let given = Given {
            config: Some(path.clone()),
            rate_limit_per_sec: Some(7),
            ..Given::default()
        };
        let config = Config::resolve(given, false).expect("resolves");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.keys, PathBuf::from("/etc/k.toml"));
        assert_eq!(config.rate_limit_per_sec, 7);
        assert_eq!(config.body_limit_bytes, DEFAULT_BODY_LIMIT_BYTES);
        assert!(config.log_json, "not a terminal: JSON logs");

        std::fs::write(&path, "listen = \"nowhere\"\nkeys = \"k\"\n").expect("write");
        let err = Config::resolve(
            Given {
                config: Some(path.clone()),
                ..Given::default()
            },
            true,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("listen address `nowhere`"),
            "{err}"
        );
        std::fs::write(&path, "lissten = \"x\"\n").expect("write");
        let err = Config::resolve(
            Given {
                config: Some(path),
                ..Given::default()
            },
            true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("lissten"), "{err}");
    }
}
