//! Collector configuration: one strict struct, defaults visible, validated before start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the collector listens when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8086";

/// Everything `vmmon-collector serve` can be told in its config file (`--config FILE`).
/// CLI flags (`--listen`, `--data`) override the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Listening address.
    pub listen: SocketAddr,
    /// Data directory holding the SQLite store.
    pub data_dir: PathBuf,
    /// IANA time zone for the APIs' local times (`create_date`, mana_api, CDN dates).
    pub timezone: String,
    /// Sessions expire after this long without use.
    pub session_idle_secs: u64,
    /// Largest accepted HTTP request body.
    pub max_body_bytes: usize,
    /// How long start/stop monitor waits for the agent's acknowledgement before answering 4.
    pub command_timeout_ms: u64,
    /// Sampling interval given to newly registered agents.
    pub default_interval_secs: u32,
    /// Most records one legacy API query may return (`limit` is capped to this).
    pub max_limit: u32,
    /// Raw VM and process samples (and batch ids for dedup) older than this many days are deleted;
    /// the bandwidth, CDN and rating rollups are kept. 0 keeps raw samples forever.
    pub raw_retention_days: u32,
    /// The CloudKitty-compatible rating API and its processing (`[rating]`, see docs/rating.md).
    pub rating: crate::rating::RatingConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8086))),
            data_dir: PathBuf::from("/var/lib/vmmon"),
            timezone: "UTC".to_string(),
            session_idle_secs: 24 * 3600,
            max_body_bytes: 1024 * 1024,
            command_timeout_ms: 5_000,
            default_interval_secs: 30,
            max_limit: 10_000,
            raw_retention_days: 30,
            rating: crate::rating::RatingConfig::default(),
        }
    }
}

pub use vmmon_common::config::ConfigError;

impl CollectorConfig {
    /// Loads `path` (an explicit path must exist) or the defaults when `path` is None.
    pub fn load(path: Option<&Path>) -> Result<CollectorConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(CollectorConfig::default());
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

    /// Checks every value; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            errors.push(format!(
                "timezone {:?} is not an IANA time zone name",
                self.timezone
            ));
        }
        if self.session_idle_secs == 0 {
            errors.push("session_idle_secs must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            errors.push("max_body_bytes must be at least 1024".into());
        }
        if self.command_timeout_ms == 0 {
            errors.push("command_timeout_ms must be at least 1".into());
        }
        if !(1..=86_400).contains(&self.default_interval_secs) {
            errors.push("default_interval_secs must be within 1..=86400".into());
        }
        if self.max_limit == 0 {
            errors.push("max_limit must be at least 1".into());
        }
        if self.raw_retention_days > 36_500 {
            errors.push("raw_retention_days must be at most 36500 (0 keeps forever)".into());
        }
        errors.extend(self.rating.problems(self.listen));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// The configured time zone (validated by [`Self::validate`]; UTC otherwise).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_validates() {
        let text = include_str!("../../packaging/collector.example.toml");
        let cfg: CollectorConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn bad_values_are_all_reported() {
        let cfg = CollectorConfig {
            timezone: "Mars/Olympus".into(),
            session_idle_secs: 0,
            max_limit: 0,
            ..CollectorConfig::default()
        };
        let Err(ConfigError::Invalid(errs)) = cfg.validate() else {
            panic!("must be invalid")
        };
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(toml::from_str::<CollectorConfig>("lisen = '1'").is_err());
    }
}
