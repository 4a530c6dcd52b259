//! Collector configuration: the file as written ([`ConfigFile`], strict, defaults visible) and the
//! valid-by-construction settings the collector runs on ([`CollectorConfig`]). The one step
//! between them, [`ConfigFile::validate`], checks every value and lists every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono_tz::Tz;
use serde::Deserialize;
use url::Url;
use vmmon_common::vocab::IntervalSecs;

use crate::rating::RatingConfig;

/// Where the collector listens when nothing else is said.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8086);

/// Everything `vmmon-collector serve` can be told in its config file (`--config FILE`), as
/// written. CLI flags (`--listen`, `--data`) override the file before it is validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// Listening address.
    pub listen: SocketAddr,
    /// Data directory holding the SQLite store.
    pub data_dir: PathBuf,
    /// IANA time zone name for the APIs' local times (`create_date`, mana_api, CDN dates).
    pub timezone: String,
    /// Sessions expire after this long without use, seconds.
    pub session_idle_secs: u64,
    /// Largest accepted HTTP request body, bytes.
    pub max_body_bytes: usize,
    /// How long start/stop monitor waits for the agent's acknowledgement before answering 4, ms.
    pub command_timeout_ms: u64,
    /// Sampling interval given to agents that do not say theirs, seconds.
    pub default_interval_secs: u64,
    /// Most records one legacy API query may return (`limit` is capped to this).
    pub max_limit: u32,
    /// Raw VM and process samples (and batch ids for dedup) older than this many days are deleted;
    /// the bandwidth, CDN and rating rollups are kept. 0 keeps raw samples forever.
    pub raw_retention_days: u32,
    /// The URL clients reach the collector at (`https://metering.example.com`), used for absolute
    /// links and `Location` headers; without it they come from a validated `Host` header.
    pub public_url: Option<String>,
    /// Bearer token a Prometheus scraper sends to `/metrics` (at least 16 characters); without
    /// it only admin sessions may scrape.
    pub metrics_token: Option<String>,
    /// Also expose each VM's N busiest processes on `/metrics` (0, the default, exposes none).
    pub metrics_top_processes: u32,
    /// Instances one agent token may register in all.
    pub max_instances_per_token: u32,
    /// New instances one agent token may register per minute.
    pub max_new_instances_per_token_per_minute: u32,
    /// The CloudKitty-compatible rating API and its processing (`[rating]`, see docs/rating.md).
    pub rating: RatingConfig,
    /// PEM certificate chain (leaf first) for HTTPS/WSS on `listen`; give `tls_key_file` too.
    /// Without both, the listener speaks plain HTTP/WS (loopback and development).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// `postgres://user:password@host:port/db`: keep the store in PostgreSQL (shared by several
    /// collectors) instead of SQLite in `data_dir`.
    pub store_url: Option<String>,
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            listen: DEFAULT_LISTEN,
            data_dir: PathBuf::from("/var/lib/vmmon"),
            timezone: "UTC".to_string(),
            session_idle_secs: 24 * 3600,
            max_body_bytes: 1024 * 1024,
            command_timeout_ms: 5_000,
            default_interval_secs: 30,
            max_limit: 10_000,
            raw_retention_days: 30,
            public_url: None,
            metrics_token: None,
            metrics_top_processes: 0,
            max_instances_per_token: 10_000,
            max_new_instances_per_token_per_minute: 1_000,
            rating: RatingConfig::default(),
            tls_cert_file: None,
            tls_key_file: None,
            store_url: None,
        }
    }
}

pub use vmmon_common::config::ConfigError;

/// The settings a running collector uses: every value checked, the time zone parsed, the
/// interval bounded. Made only by [`ConfigFile::validate`] (or [`Default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorConfig {
    /// Listening address.
    pub listen: SocketAddr,
    /// Data directory holding the SQLite store.
    pub data_dir: PathBuf,
    /// Time zone of the APIs' local times.
    pub timezone: Tz,
    /// Sessions expire after this long without use, seconds (≥ 1).
    pub session_idle_secs: u64,
    /// Largest accepted HTTP request body, bytes (≥ 1024).
    pub max_body_bytes: usize,
    /// How long a command waits for the agent's acknowledgement, ms (≥ 1).
    pub command_timeout_ms: u64,
    /// Sampling interval given to agents that do not say theirs.
    pub default_interval: IntervalSecs,
    /// Most records one legacy API query may return (≥ 1).
    pub max_limit: u32,
    /// Raw-sample retention in days (0 = forever, ≤ 36500).
    pub raw_retention_days: u32,
    /// Where clients reach the collector (http or https, no query), if configured.
    pub public_url: Option<Url>,
    /// Scrape token of `/metrics` (≥ 16 characters), if any.
    pub metrics_token: Option<String>,
    /// Busiest processes per VM on `/metrics` (0–50).
    pub metrics_top_processes: u32,
    /// Per-token registration limits (each ≥ 1).
    pub register_limits: RegisterLimits,
    /// `[rating]`, checked.
    pub rating: RatingConfig,
    /// HTTPS/WSS: the certificate files and what was loaded from them (None: plain HTTP/WS).
    pub tls: Option<TlsSettings>,
    /// A `postgres://`/`postgresql://` URL with a host and a database name, if the store is
    /// PostgreSQL (None: SQLite in `data_dir`).
    pub store_url: Option<String>,
}

/// The listener's certificate: the configured files and the chain and key loaded from them
/// (read and checked when the config is validated, so a config that loaded serves).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// The chain and key, ready for rustls.
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

impl PartialEq for TlsSettings {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.certified.cert == other.certified.cert
    }
}

/// A store URL must be `postgres://` or `postgresql://` with a host and a database name.
pub fn check_store_url(u: &str) -> Result<(), String> {
    let parsed = Url::parse(u).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err("must start with postgres:// or postgresql://".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if parsed.path().trim_start_matches('/').is_empty() {
        return Err("has no database name".into());
    }
    Ok(())
}

impl Default for CollectorConfig {
    fn default() -> Self {
        // The defaults are valid by design; the unit test below proves it.
        ConfigFile::default()
            .validate()
            .unwrap_or_else(|e| panic!("built-in defaults are invalid: {e}"))
    }
}

impl ConfigFile {
    /// Loads `path` (an explicit path must exist) or the defaults when `path` is None.
    pub fn load(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
        let Some(path) = path else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Checks every value and builds the typed settings; reports all problems at once.
    pub fn validate(self) -> Result<CollectorConfig, ConfigError> {
        let mut errors = Vec::new();
        let timezone = self.timezone.parse::<Tz>().map_err(|_| {
            errors.push(format!(
                "timezone {:?} is not an IANA time zone name",
                self.timezone
            ))
        });
        if self.session_idle_secs == 0 {
            errors.push("session_idle_secs must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            errors.push("max_body_bytes must be at least 1024".into());
        }
        if self.command_timeout_ms == 0 {
            errors.push("command_timeout_ms must be at least 1".into());
        }
        let default_interval = IntervalSecs::new(self.default_interval_secs)
            .map_err(|e| errors.push(format!("default_interval_secs: {e}")));
        if self.max_limit == 0 {
            errors.push("max_limit must be at least 1".into());
        }
        if let Some(u) = &self.store_url
            && let Err(e) = check_store_url(u)
        {
            errors.push(format!("store_url: {e}"));
        }
        if self.raw_retention_days > 36_500 {
            errors.push("raw_retention_days must be at most 36500 (0 keeps forever)".into());
        }
        let public_url = match self.public_url.as_deref().map(Url::parse) {
            None => Ok(None),
            Some(Ok(u))
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                Ok(Some(u))
            }
            Some(_) => {
                errors.push(format!(
                    "public_url {:?} must be an http(s) URL without query or fragment",
                    self.public_url.as_deref().unwrap_or("")
                ));
                Err(())
            }
        };
        if self
            .metrics_token
            .as_deref()
            .is_some_and(|t| t.trim().len() < 16 || t.trim() != t)
        {
            errors.push(
                "metrics_token must be at least 16 characters without surrounding spaces".into(),
            );
        }
        if self.metrics_top_processes > 50 {
            errors.push("metrics_top_processes must be at most 50".into());
        }
        if self.max_instances_per_token == 0 || self.max_new_instances_per_token_per_minute == 0 {
            errors.push(
                "max_instances_per_token and max_new_instances_per_token_per_minute must be at least 1"
                    .into(),
            );
        }
        errors.extend(self.rating.problems(self.listen));
        let tls = match (self.tls_cert_file, self.tls_key_file) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) => {
                match crate::tls::load_certified_key(&cert_file, &key_file) {
                    Ok(certified) => Some(TlsSettings {
                        cert_file,
                        key_file,
                        certified,
                    }),
                    Err(e) => {
                        errors.push(format!("tls_cert_file/tls_key_file: {e}"));
                        None
                    }
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                errors.push("tls_cert_file and tls_key_file must be given together".into());
                None
            }
        };
        match (timezone, default_interval, public_url) {
            (Ok(timezone), Ok(default_interval), Ok(public_url)) if errors.is_empty() => {
                Ok(CollectorConfig {
                    listen: self.listen,
                    data_dir: self.data_dir,
                    timezone,
                    session_idle_secs: self.session_idle_secs,
                    max_body_bytes: self.max_body_bytes,
                    command_timeout_ms: self.command_timeout_ms,
                    default_interval,
                    max_limit: self.max_limit,
                    raw_retention_days: self.raw_retention_days,
                    public_url,
                    metrics_token: self.metrics_token,
                    metrics_top_processes: self.metrics_top_processes,
                    register_limits: RegisterLimits {
                        max_instances_per_token: self.max_instances_per_token,
                        max_new_per_minute: self.max_new_instances_per_token_per_minute,
                    },
                    rating: self.rating,
                    tls,
                    store_url: self.store_url,
                })
            }
            _ => Err(ConfigError::Invalid(errors)),
        }
    }
}

impl CollectorConfig {
    /// Loads and validates `path` (None: the defaults).
    pub fn load(path: Option<&Path>) -> Result<CollectorConfig, ConfigError> {
        ConfigFile::load(path)?.validate()
    }

    /// `session_idle_secs` in milliseconds.
    pub fn session_idle_ms(&self) -> i64 {
        i64::try_from(self.session_idle_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }
}

/// Limits on the instances one agent token may register (default: the config file's defaults,
/// 10,000 in all and 1,000 new per minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterLimits {
    /// Instances one token may have registered in all.
    pub max_instances_per_token: u32,
    /// New instances one token may register per minute.
    pub max_new_per_minute: u32,
}

impl RegisterLimits {
    /// No limits (benches and tools that load a store).
    pub const UNLIMITED: RegisterLimits = RegisterLimits {
        max_instances_per_token: u32::MAX,
        max_new_per_minute: u32::MAX,
    };
}

impl Default for RegisterLimits {
    fn default() -> Self {
        RegisterLimits {
            max_instances_per_token: 10_000,
            max_new_per_minute: 1_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_validates() {
        let text = include_str!("../../packaging/collector.example.toml");
        let cfg: ConfigFile = toml::from_str(text).unwrap();
        let cfg = cfg.validate().unwrap();
        assert_eq!(cfg.timezone, chrono_tz::UTC);
        assert_eq!(cfg.default_interval.get(), 30);
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = CollectorConfig::default();
        assert_eq!(cfg.listen, DEFAULT_LISTEN);
        assert_eq!(cfg.session_idle_ms(), 86_400_000);
    }

    #[test]
    fn bad_values_are_all_reported() {
        let cfg = ConfigFile {
            timezone: "Mars/Olympus".into(),
            session_idle_secs: 0,
            max_limit: 0,
            default_interval_secs: 86_401,
            ..ConfigFile::default()
        };
        let Err(ConfigError::Invalid(errs)) = cfg.validate() else {
            panic!("must be invalid")
        };
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("Mars/Olympus"), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("default_interval_secs")));
        assert!(toml::from_str::<ConfigFile>("lisen = '1'").is_err());
    }

    #[test]
    fn tls_files_are_loaded_and_checked_at_validation() {
        let dir = tempfile::tempdir().unwrap();
        let made =
            crate::tls::write_self_signed(dir.path(), &["collector.example".to_string()]).unwrap();
        let text = format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
            made.cert_file, made.key_file
        );
        let cfg: ConfigFile = toml::from_str(&text).unwrap();
        let tls = cfg.validate().unwrap().tls.unwrap();
        assert_eq!(tls.cert_file, made.cert_file);
        assert_eq!(
            crate::tls::spki_pin(&tls.certified.cert[0]).unwrap(),
            made.pin
        );

        let cases = [
            (Some(made.cert_file.clone()), None, "given together"),
            (None, Some(made.key_file.clone()), "given together"),
            (
                Some(dir.path().join("missing.pem")),
                Some(made.key_file.clone()),
                "cannot read",
            ),
            (
                Some(made.key_file.clone()),
                Some(made.key_file.clone()),
                "no CERTIFICATE",
            ),
        ];
        for (cert, key, want) in cases {
            let cfg = ConfigFile {
                tls_cert_file: cert,
                tls_key_file: key,
                max_limit: 0,
                ..ConfigFile::default()
            };
            let Err(ConfigError::Invalid(errs)) = cfg.validate() else {
                panic!("must be invalid")
            };
            // Every problem is listed, the TLS one among them.
            assert_eq!(errs.len(), 2, "{errs:?}");
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
    }
}
