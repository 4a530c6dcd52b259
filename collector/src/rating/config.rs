//! The `[rating]` table of the collector config: processing period, late-sample wait, auth mode
//! of the `/v1` API and the metrics file.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

/// How `/v1/...` requests are authenticated (SPEC §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RatingAuth {
    /// `X-Auth-Token: <session id from the method-coded login>`; admins (users.is_admin) may
    /// write, tenants read their own project.
    #[default]
    Session,
    /// Trust `X-Roles` / `X-Project-Id` set by an authenticating proxy in front of the collector
    /// (CloudKitty behind Keystone middleware), but only on requests whose peer address is in
    /// `trusted_proxies` (required in this mode); from anyone else the headers are ignored.
    TrustedHeaders,
    /// No checks at all, for local development; refused unless the listen address is loopback.
    Noauth,
}

/// `[rating]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RatingConfig {
    /// Run the processing loop in `serve` (the `/v1` API answers either way).
    pub process: bool,
    /// Length of one rating period in seconds (default 3600); must divide a day.
    pub period_secs: u64,
    /// A period is processed only once this long has passed after its end, so that late samples
    /// (agents resending from their spool) are in (default 7200 s: upstream's 2 periods).
    pub wait_secs: u64,
    /// Authentication of the `/v1` API.
    pub auth: RatingAuth,
    /// Metrics file (TOML, in the spirit of CloudKitty's metrics.yml); the built-in defaults
    /// (`packaging/rating-metrics.example.toml`) when absent.
    pub metrics_file: Option<PathBuf>,
    /// Addresses (CIDR, e.g. `"10.0.0.5/32"`) of the proxies whose `X-Roles`/`X-Project-Id` are
    /// trusted with `auth = "trusted_headers"`; their `X-Forwarded-Proto`/`X-Forwarded-Host` are
    /// also honoured in the rating APIs' links and Location headers (any auth mode).
    pub trusted_proxies: Vec<IpNet>,
    /// Browser origins (`scheme://host[:port]`, or `"*"`) allowed to call `/v1` and `/v2`
    /// cross-origin (CORS), e.g. a Horizon served from another host; empty (default): none.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for RatingConfig {
    fn default() -> Self {
        RatingConfig {
            process: true,
            period_secs: 3600,
            wait_secs: 7200,
            auth: RatingAuth::Session,
            metrics_file: None,
            trusted_proxies: Vec::new(),
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl RatingConfig {
    /// Every problem with these settings (empty when valid); `listen` is the collector's address.
    pub fn problems(&self, listen: SocketAddr) -> Vec<String> {
        let mut errors = Vec::new();
        if !(60..=86_400).contains(&self.period_secs) || 86_400 % self.period_secs != 0 {
            errors.push(
                "rating.period_secs must be within 60..=86400 and divide a day (e.g. 600, 3600, 86400)"
                    .into(),
            );
        }
        if self.wait_secs > 31 * 86_400 {
            errors.push("rating.wait_secs must be at most 31 days".into());
        }
        if self.auth == RatingAuth::Noauth && !listen.ip().is_loopback() {
            errors.push(format!(
                "rating.auth = \"noauth\" is only allowed on a loopback listen address, not {listen}"
            ));
        }
        if self.auth == RatingAuth::TrustedHeaders && self.trusted_proxies.is_empty() {
            errors.push(
                "rating.auth = \"trusted_headers\" needs rating.trusted_proxies: the CIDRs of the \
                 authenticating proxies (anyone else could send X-Roles: admin)"
                    .into(),
            );
        }
        for o in &self.cors_allowed_origins {
            let valid = o == "*"
                || url::Url::parse(o).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some()
                        && u.path() == "/"
                        && !o.ends_with('/')
                        && u.query().is_none()
                        && u.username().is_empty()
                });
            if !valid {
                errors.push(format!(
                    "rating.cors_allowed_origins: {o:?} is not an origin (scheme://host[:port], \
                     no path) or \"*\""
                ));
            }
        }
        if let Err(e) = super::metrics::MetricsConfig::load(self.metrics_file.as_deref()) {
            errors.push(e);
        }
        errors
    }
}
