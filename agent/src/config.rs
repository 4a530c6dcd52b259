//! Agent configuration: `/etc/vmmon/agent.toml` (or `--config FILE`), overridden by CLI flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default config file; a missing default file means "all defaults".
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmmon/agent.toml";

/// Everything the agent can be told.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Collector WebSocket JSON-RPC URLs, e.g. `ws://collector:8086/rpc`, tried in order: the
    /// agent moves to the next when one cannot be reached (collectors sharing one PostgreSQL
    /// store). In the file either one string or an array of strings.
    #[serde(deserialize_with = "one_or_many")]
    pub collector: Vec<String>,
    /// Agent token (prefer `token_file` in production).
    pub token: Option<String>,
    /// File holding the agent token.
    pub token_file: Option<PathBuf>,
    /// Sampling interval until the collector says otherwise.
    pub interval_secs: u32,
    /// State directory: spool and agent state.
    pub state_dir: PathBuf,
    /// Instance id; else cloud-init's, DMI product uuid, or machine-id.
    pub instance_id: Option<String>,
    /// Public addresses to report when the guest's interfaces carry none (NAT'd clouds).
    pub wan_ips: Vec<String>,
    /// Spool bound in bytes: past it the oldest batches are dropped and counted.
    pub spool_max_bytes: u64,
    /// Longest wait between reconnect attempts.
    pub max_backoff_secs: u64,
    /// CDN edge: nginx-style access logs to tail (per-domain bytes and cache-hit bytes per
    /// 5-minute bucket; see docs/cdn.md).
    pub cdn_access_logs: Vec<PathBuf>,
    /// nginx `log_format` string of those logs (default
    /// [`crate::cdn::DEFAULT_LOG_FORMAT`]: `combined` + ` $host $upstream_cache_status`).
    pub cdn_log_format: Option<String>,
    /// Interfaces the VM's network figures count, as globs (`*`, `?`, `[a-z]`). Empty: those
    /// backed by a device (not under `/sys/devices/virtual/net`). Non-empty: only these.
    pub net_include: Vec<String>,
    /// Interfaces never counted, as globs; applies to the default rule and to `net_include`.
    pub net_exclude: Vec<String>,
    /// `wss://` only: PEM CA certificate(s) the collector's certificate must chain to, instead
    /// of the system roots.
    pub ca_file: Option<PathBuf>,
    /// `wss://` only: base64 SHA-256 of the collector's SubjectPublicKeyInfo (as `vmmon-collector
    /// tls self-signed` prints it); checked after normal verification.
    pub pin_sha256: Option<String>,
    /// Allow plain `ws://` to a non-loopback collector (token and data unencrypted).
    pub allow_plaintext: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            collector: Vec::new(),
            token: None,
            token_file: None,
            interval_secs: 30,
            state_dir: PathBuf::from("/var/lib/vmmon"),
            instance_id: None,
            wan_ips: Vec::new(),
            spool_max_bytes: 64 * 1024 * 1024,
            max_backoff_secs: 60,
            cdn_access_logs: Vec::new(),
            cdn_log_format: None,
            net_include: Vec::new(),
            net_exclude: Vec::new(),
            ca_file: None,
            pin_sha256: None,
            allow_plaintext: false,
        }
    }
}

pub use vmmon_common::config::ConfigError;

/// Most collector URLs one agent takes (a failover list, not a fan-out).
pub const MAX_COLLECTORS: usize = 16;

/// `collector = "ws://…"` or `collector = ["ws://a…", "ws://b…"]`.
fn one_or_many<'de, D>(de: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(de)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// What [`AgentConfig::validate`] built while checking: used by the running agent as is.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The agent token (from `token`, or read from `token_file`), trimmed.
    pub token: String,
    /// The compiled CDN access-log format.
    pub cdn_format: crate::cdn::LogFormat,
    /// The rule that picks the VM's own interfaces.
    pub net_selector: crate::sampler::ifaces::NetSelector,
}

/// A configuration that passed [`AgentConfig::validate`], with what the checks built.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// The settings.
    pub config: AgentConfig,
    /// Token, CDN format, interface rule.
    pub checked: Checked,
}

impl AgentConfig {
    /// Validates and keeps what the checks built.
    pub fn into_valid(self) -> Result<ValidConfig, ConfigError> {
        let checked = self.validate()?;
        Ok(ValidConfig {
            config: self,
            checked,
        })
    }
}

impl AgentConfig {
    /// Loads `path`; `None` reads [`DEFAULT_CONFIG_PATH`] if it exists, else the defaults.
    pub fn load(path: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AgentConfig::default());
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// Checks every value, once, and hands back what the checks built (the token read from its
    /// file, the compiled CDN log format, the interface rule), so nothing is read or compiled
    /// twice; reports all problems at once.
    pub fn validate(&self) -> Result<Checked, ConfigError> {
        let mut errors = Vec::new();
        if self.collector.is_empty() {
            errors.push("collector URL is required (--collector ws://HOST:PORT/rpc)".to_string());
        }
        if self.collector.len() > MAX_COLLECTORS {
            errors.push(format!(
                "at most {MAX_COLLECTORS} collector URLs, not {}",
                self.collector.len()
            ));
        }
        for url in &self.collector {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                errors.push(format!(
                    "collector URL {url:?} must start with ws:// or wss://"
                ));
            }
        }
        errors.extend(self.tls_problems());
        let mut token = None;
        match (&self.token, &self.token_file) {
            (None, None) => {
                errors.push("an agent token is required (--token or --token-file)".into())
            }
            (Some(_), Some(_)) => errors.push("give either token or token_file, not both".into()),
            (Some(t), None) if t.trim().is_empty() => errors.push("token is empty".into()),
            _ => match self.resolve_token() {
                Ok(t) => token = Some(t),
                Err(e) => errors.push(e.to_string()),
            },
        }
        if let Err(e) = vmmon_common::vocab::IntervalSecs::new(u64::from(self.interval_secs)) {
            errors.push(format!("interval_secs: {e}"));
        }
        if self.spool_max_bytes < 1024 {
            errors.push("spool_max_bytes must be at least 1024".into());
        }
        if self.max_backoff_secs == 0 {
            errors.push("max_backoff_secs must be at least 1".into());
        }
        let cdn_format = self
            .cdn_format()
            .map_err(|e| errors.push(format!("cdn_log_format: {e}")))
            .ok();
        if self
            .cdn_access_logs
            .iter()
            .any(|p| p.as_os_str().is_empty())
        {
            errors.push("cdn_access_logs has an empty path".into());
        }
        let net_selector = self
            .net_selector()
            .map_err(|bad| {
                errors.extend(
                    bad.into_iter()
                        .map(|e| format!("net_include/net_exclude: {e}")),
                )
            })
            .ok();
        if let Some(id) = &self.instance_id
            && (id.is_empty() || id.len() > 128)
        {
            errors.push("instance_id must be 1–128 characters".into());
        }
        match (token, cdn_format, net_selector) {
            (Some(token), Some(cdn_format), Some(net_selector)) if errors.is_empty() => {
                Ok(Checked {
                    token,
                    cdn_format,
                    net_selector,
                })
            }
            _ => Err(ConfigError::Invalid(errors)),
        }
    }

    /// Problems with the link's security settings (see [`crate::reporter::tls`]).
    fn tls_problems(&self) -> Vec<String> {
        let mut errors: Vec<String> = self
            .collector
            .iter()
            .filter_map(|url| crate::reporter::tls::plaintext_refusal(url, self.allow_plaintext))
            .collect();
        if !self.any_wss() && (self.ca_file.is_some() || self.pin_sha256.is_some()) {
            errors.push("ca_file and pin_sha256 need a wss:// collector URL".into());
        }
        if let Some(Err(e)) = self
            .pin_sha256
            .as_deref()
            .map(crate::reporter::tls::Pin::parse)
        {
            errors.push(e);
        }
        if errors.is_empty()
            && let Err(e) = self.tls_client_config()
        {
            errors.push(e.to_string());
        }
        errors
    }

    /// Whether any collector URL is `wss://`.
    fn any_wss(&self) -> bool {
        self.collector.iter().any(|u| u.starts_with("wss://"))
    }

    /// The rustls client settings for the `wss://` collectors (None when all are `ws://`).
    pub fn tls_client_config(
        &self,
    ) -> Result<Option<rustls::ClientConfig>, crate::reporter::tls::TlsSetupError> {
        if !self.any_wss() {
            return Ok(None);
        }
        let pin = self
            .pin_sha256
            .as_deref()
            .and_then(|p| crate::reporter::tls::Pin::parse(p).ok());
        crate::reporter::tls::client_config(self.ca_file.as_deref(), pin).map(Some)
    }

    /// The compiled CDN access-log format.
    pub fn cdn_format(&self) -> Result<crate::cdn::LogFormat, crate::cdn::format::FormatError> {
        crate::cdn::LogFormat::compile(
            self.cdn_log_format
                .as_deref()
                .unwrap_or(crate::cdn::DEFAULT_LOG_FORMAT),
        )
    }

    /// The interface rule from `net_include` / `net_exclude`.
    pub fn net_selector(
        &self,
    ) -> Result<crate::sampler::ifaces::NetSelector, Vec<crate::sampler::ifaces::GlobError>> {
        crate::sampler::ifaces::NetSelector::new(&self.net_include, &self.net_exclude)
    }

    /// The token, reading `token_file` if that is how it was given.
    fn resolve_token(&self) -> Result<String, ConfigError> {
        if let Some(t) = &self.token {
            return Ok(t.trim().to_string());
        }
        let Some(path) = &self.token_file else {
            return Err(ConfigError::Invalid(vec![
                "an agent token is required".into(),
            ]));
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let t = text.trim().to_string();
        if t.is_empty() {
            return Err(ConfigError::Invalid(vec![format!(
                "token file {} is empty",
                path.display()
            )]));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_validates() {
        let text = include_str!("../../packaging/agent.example.toml");
        let mut cfg: AgentConfig = toml::from_str(text).unwrap();
        // Validation reads the token file: the example's path, /etc/vmmon/agent.token, with a
        // token in a temp dir instead.
        let Err(ConfigError::Invalid(errs)) = cfg.validate() else {
            panic!("the example's token file does not exist here")
        };
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("agent.token"), "{errs:?}");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("agent.token");
        std::fs::write(&token, "vmt_example\n").unwrap();
        cfg.token_file = Some(token);
        assert_eq!(cfg.validate().unwrap().token, "vmt_example");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_reported() {
        assert!(toml::from_str::<AgentConfig>("colector = 'x'").is_err());
        let cfg = AgentConfig {
            collector: vec!["http://x".into()],
            interval_secs: 0,
            ..AgentConfig::default()
        };
        let Err(ConfigError::Invalid(errs)) = cfg.validate() else {
            panic!("must be invalid")
        };
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn net_globs_are_checked() {
        let cfg: AgentConfig = toml::from_str(
            "collector = 'ws://127.0.0.1/rpc'\ntoken = 't'\nnet_include = ['eth*', 'ens[0-9]']\nnet_exclude = ['eth9']",
        )
        .unwrap();
        cfg.validate().unwrap();
        let sel = cfg.net_selector().unwrap();
        assert!(sel.counts("eth0", || false) && !sel.counts("eth9", || true));
        let bad = AgentConfig {
            net_include: vec!["eth[".into()],
            ..cfg
        };
        let Err(ConfigError::Invalid(errs)) = bad.validate() else {
            panic!("must be invalid")
        };
        assert!(errs[0].contains("eth["), "{errs:?}");
    }

    #[test]
    fn link_security_is_checked() {
        let base: AgentConfig =
            toml::from_str("collector = 'ws://127.0.0.1/rpc'\ntoken = 't'").unwrap();
        base.validate().unwrap();
        let pin = "sha256//".to_string() + &"A".repeat(43) + "=";
        let cases: Vec<(AgentConfig, &str)> = vec![
            (
                AgentConfig {
                    collector: vec!["ws://10.1.2.3:8086/rpc".into()],
                    ..base.clone()
                },
                "non-loopback",
            ),
            (
                AgentConfig {
                    pin_sha256: Some(pin.clone()),
                    ..base.clone()
                },
                "need a wss://",
            ),
            (
                AgentConfig {
                    collector: vec!["wss://c.example/rpc".into()],
                    pin_sha256: Some("nope!".into()),
                    ..base.clone()
                },
                "not base64",
            ),
            (
                AgentConfig {
                    collector: vec!["wss://c.example/rpc".into()],
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..base.clone()
                },
                "cannot read ca_file",
            ),
        ];
        for (cfg, want) in cases {
            let Err(ConfigError::Invalid(errs)) = cfg.validate() else {
                panic!("{want}: must be invalid")
            };
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
        let ok = [
            AgentConfig {
                collector: vec!["ws://10.1.2.3:8086/rpc".into()],
                allow_plaintext: true,
                ..base.clone()
            },
            AgentConfig {
                collector: vec!["wss://c.example/rpc".into()],
                pin_sha256: Some(pin),
                ..base.clone()
            },
        ];
        for cfg in ok {
            cfg.validate().unwrap();
            assert_eq!(
                cfg.tls_client_config().unwrap().is_some(),
                cfg.collector[0].starts_with("wss")
            );
        }
    }

    #[test]
    fn collector_is_one_url_or_a_list_each_checked() {
        let one: AgentConfig =
            toml::from_str("collector = 'ws://127.0.0.1:1/rpc'\ntoken = 't'").unwrap();
        assert_eq!(one.collector, ["ws://127.0.0.1:1/rpc"]);
        let two: AgentConfig =
            toml::from_str("collector = ['ws://127.0.0.1:1/rpc', 'ws://[::1]:2/rpc']\ntoken = 't'")
                .unwrap();
        two.validate().unwrap();
        assert_eq!(two.collector.len(), 2);
        assert!(toml::from_str::<AgentConfig>("collector = 3").is_err());
        let cases: Vec<(Vec<String>, &str)> = vec![
            (vec![], "collector URL is required"),
            (
                vec!["ws://127.0.0.1/rpc".into(), "http://127.0.0.1/rpc".into()],
                "\"http://127.0.0.1/rpc\" must start with ws://",
            ),
            (
                vec!["ws://127.0.0.1/rpc".into(), "ws://10.0.0.9/rpc".into()],
                "non-loopback",
            ),
            (
                vec!["ws://127.0.0.1/rpc".into(); MAX_COLLECTORS + 1],
                "at most 16 collector URLs",
            ),
        ];
        for (urls, want) in cases {
            let cfg = AgentConfig {
                collector: urls,
                ..one.clone()
            };
            let Err(ConfigError::Invalid(errs)) = cfg.validate() else {
                panic!("{want}: must be invalid")
            };
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
        // A wss:// URL anywhere in the list builds the TLS settings.
        let mixed = AgentConfig {
            collector: vec!["ws://127.0.0.1/rpc".into(), "wss://c.example/rpc".into()],
            ..one
        };
        mixed.validate().unwrap();
        assert!(mixed.tls_client_config().unwrap().is_some());
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        assert!(AgentConfig::load(Some(Path::new("/nonexistent/agent.toml"))).is_err());
    }
}
