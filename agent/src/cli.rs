//! Command line of `vmmon-agent` (SPEC §5).

use std::path::PathBuf;

use clap::Parser;

use crate::config::AgentConfig;

/// vmmon agent: samples every process and the whole VM and reports to the collector.
#[derive(Debug, Parser)]
#[command(name = "vmmon-agent", version, about, long_about = None)]
pub struct Cli {
    /// Collector's WebSocket JSON-RPC URL, e.g. ws://127.0.0.1:8086/rpc. Repeat for collectors
    /// sharing one store: they are tried in order, the next when one cannot be reached. Replaces
    /// `collector` of the config file.
    #[arg(long = "collector", value_name = "URL")]
    pub collectors: Vec<String>,
    /// Agent token from `vmmon-collector token create` (visible in `ps`; prefer --token-file).
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the agent token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Sampling interval in seconds (until the collector changes it).
    #[arg(long)]
    pub interval: Option<u32>,
    /// State directory for the spool and agent state (default /var/lib/vmmon, or
    /// $STATE_DIRECTORY under systemd).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Instance id (default: cloud-init's instance id, DMI product uuid, then /etc/machine-id).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// TOML config file (default /etc/vmmon/agent.toml if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Spool bound in bytes; past it the oldest batches are dropped and counted.
    #[arg(long)]
    pub spool_max_bytes: Option<u64>,
    /// CDN edge: an nginx-style access log to tail for per-domain traffic (repeat for several
    /// logs; replaces `cdn_access_logs` of the config file).
    #[arg(long = "cdn-access-log", value_name = "PATH")]
    pub cdn_access_logs: Vec<PathBuf>,
    /// nginx `log_format` string of the access logs; needs $host, $body_bytes_sent (or
    /// $bytes_sent), $time_local and $upstream_cache_status. Default: combined followed by
    /// ` $host $upstream_cache_status`.
    #[arg(long, value_name = "FORMAT")]
    pub cdn_log_format: Option<String>,
    /// Count this interface in the VM's network figures (glob: `*`, `?`, `[a-z]`; repeat for
    /// several). Given at least once, it replaces `net_include` of the config file, and only
    /// the interfaces it names count (instead of the default: those backed by a device, not
    /// under /sys/devices/virtual/net — no veth, bridge, VLAN, tun).
    #[arg(long = "net-include", value_name = "GLOB")]
    pub net_include: Vec<String>,
    /// Never count this interface (glob; repeat for several; replaces `net_exclude` of the
    /// config file).
    #[arg(long = "net-exclude", value_name = "GLOB")]
    pub net_exclude: Vec<String>,
    /// Validate the configuration and exit (0 when valid).
    #[arg(long)]
    pub check_config: bool,
    /// wss:// only: PEM file of the CA certificate(s) the collector's certificate must chain to
    /// (default: the system roots). Replaces `ca_file` of the config file.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// wss:// only: also require the collector's public key to have this pin, the base64
    /// SHA-256 of its SubjectPublicKeyInfo (`vmmon-collector tls self-signed` prints it; curl's
    /// `sha256//…` form is accepted). Replaces `pin_sha256` of the config file.
    #[arg(long, value_name = "BASE64")]
    pub pin_sha256: Option<String>,
    /// Allow plain ws:// to a collector that is not on this machine (the token and the data
    /// cross the network unencrypted; only for networks you trust).
    #[arg(long)]
    pub allow_plaintext: bool,
}

impl Cli {
    /// Applies the flags given on top of `cfg`.
    pub fn apply(&self, cfg: &mut AgentConfig) {
        if !self.collectors.is_empty() {
            cfg.collector = self.collectors.clone();
        }
        if let Some(t) = &self.token {
            cfg.token = Some(t.clone());
            cfg.token_file = None;
        }
        if let Some(f) = &self.token_file {
            cfg.token_file = Some(f.clone());
            cfg.token = None;
        }
        if let Some(i) = self.interval {
            cfg.interval_secs = i;
        }
        if let Some(d) = &self.state_dir {
            cfg.state_dir = d.clone();
        } else if self.config.is_none()
            && let Ok(dir) = std::env::var("STATE_DIRECTORY")
        {
            cfg.state_dir = PathBuf::from(dir);
        }
        if let Some(i) = &self.instance_id {
            cfg.instance_id = Some(i.clone());
        }
        if let Some(b) = self.spool_max_bytes {
            cfg.spool_max_bytes = b;
        }
        if !self.cdn_access_logs.is_empty() {
            cfg.cdn_access_logs = self.cdn_access_logs.clone();
        }
        if let Some(f) = &self.cdn_log_format {
            cfg.cdn_log_format = Some(f.clone());
        }
        if !self.net_include.is_empty() {
            cfg.net_include = self.net_include.clone();
        }
        if !self.net_exclude.is_empty() {
            cfg.net_exclude = self.net_exclude.clone();
        }
        if let Some(f) = &self.ca_file {
            cfg.ca_file = Some(f.clone());
        }
        if let Some(p) = &self.pin_sha256 {
            cfg.pin_sha256 = Some(p.clone());
        }
        if self.allow_plaintext {
            cfg.allow_plaintext = true;
        }
    }
}
