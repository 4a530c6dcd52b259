//! Command line of `vmmon-collector` (SPEC §5).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// vmmon collector: receives agent reports, stores them in SQLite and serves the operator APIs.
#[derive(Debug, Parser)]
#[command(name = "vmmon-collector", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the collector: agents' JSON-RPC at /rpc plus the HTTP APIs on one address.
    /// On first start an admin user "admin" is created with the password from
    /// VMMON_ADMIN_PASSWORD, else a generated one printed once.
    Serve(ServeArgs),
    /// Create the store or bring its schema up to date, then exit.
    Migrate(DataArg),
    /// Agent tokens (bound to a project and region).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Registered instances (VMs).
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Portal users (admins, or tenants of one project).
    #[command(subcommand)]
    User(UserCommand),
    /// Rating (the CloudKitty-compatible API): rate past periods again.
    #[command(subcommand)]
    Rating(RatingCommand),
    /// CDN flow API users (`POST /api/flow`): name, secret, domains.
    #[command(subcommand)]
    CdnUser(CdnUserCommand),
    /// Agents tailing CDN access logs: files followed, malformed lines skipped, last report.
    CdnSources(DataArg),
    /// TLS certificates for HTTPS/WSS on the listener.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// The store itself: move a SQLite store into PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
}

/// `store …`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a SQLite store (every table: samples, rollups, users, sessions, tokens, ratings,
    /// hashmap rules, CDN) into an empty PostgreSQL store in one transaction; prints each
    /// table's row count and checksum on both sides (a mismatch copies nothing).
    Copy {
        /// Data directory holding the SQLite store.
        #[arg(long)]
        from: PathBuf,
        /// `postgres://user:password@host:port/db` (migrated first; must be empty).
        #[arg(long)]
        to: String,
    },
}

/// `tls …`
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a self-signed certificate and key for a quick set-up: writes DIR/tls/cert.pem and
    /// DIR/tls/key.pem (replacing them), prints the config lines that use them, and prints the
    /// agents' --pin-sha256 value alone on the last line. Agents trust it with
    /// `--ca-file cert.pem` (copy the file to them) or with that pin.
    SelfSigned {
        /// Data directory; the files go to its `tls/` subdirectory.
        #[arg(long)]
        data: PathBuf,
        /// Name agents and clients connect to (DNS name or IP address); repeat for several.
        #[arg(long, required = true)]
        hostname: Vec<String>,
    },
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides the config file; default 127.0.0.1:8086).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory holding the SQLite store (overrides the config file; default /var/lib/vmmon,
    /// or $STATE_DIRECTORY under systemd).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Store URL: `postgres://user:password@host:port/db` keeps the store in a PostgreSQL
    /// database that several collectors may share (overrides `store_url` in the config file).
    #[arg(long)]
    pub store: Option<String>,
    /// TOML config file (see packaging/collector.example.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit (0 when valid).
    #[arg(long)]
    pub check_config: bool,
}

/// Just a data directory.
#[derive(Debug, Args)]
pub struct DataArg {
    /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
    #[arg(long, visible_alias = "store")]
    pub data: PathBuf,
}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an agent token; prints the token alone on the last line.
    Create {
        /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
        #[arg(long, visible_alias = "store")]
        data: PathBuf,
        /// Project (tenant) the agents report into.
        #[arg(long)]
        project: String,
        /// Region of the agents.
        #[arg(long)]
        region: String,
        /// Vendor ("party") shown in the VM list.
        #[arg(long, default_value = "")]
        party: String,
        /// A CDN edge token: its agents may also report CDN access-log traffic (any domain's
        /// bytes count towards CDN customers' flow, so ordinary tenant tokens may not).
        #[arg(long)]
        cdn: bool,
        /// With --cdn: a CDN user (customer) whose domains this token may report; repeatable.
        #[arg(long = "cdn-user")]
        cdn_users: Vec<String>,
    },
    /// List agent tokens (ids, scopes, revocation; never the secrets).
    List(DataArg),
    /// Revoke an agent token by id: its agents are refused from then on.
    Revoke {
        /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
        #[arg(long, visible_alias = "store")]
        data: PathBuf,
        /// Token id (from `token list`).
        #[arg(long)]
        id: i64,
    },
}

/// `user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add or replace a user. Password from VMMON_PASSWORD, else prompted.
    Add {
        /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
        #[arg(long, visible_alias = "store")]
        data: PathBuf,
        /// Login name.
        #[arg(long)]
        name: String,
        /// The tenant's project: the user sees only this project.
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        project: Option<String>,
        /// Make an admin (sees every project, may change intervals).
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List(DataArg),
    /// Remove a user (and end its sessions).
    Remove {
        /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
        #[arg(long, visible_alias = "store")]
        data: PathBuf,
        /// Login name.
        #[arg(long)]
        name: String,
    },
}

/// `cdn-user …`
#[derive(Debug, Subcommand)]
pub enum CdnUserCommand {
    /// Create a CDN user (or replace one, with a new secret); prints the secret alone on the
    /// last line. The secret is stored as is: the MD5 signature can only be checked with it.
    Add {
        /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
        #[arg(long, visible_alias = "store")]
        data: PathBuf,
        /// User name (the API's `username`).
        #[arg(long)]
        name: String,
        /// Comma-separated domains the user may query, e.g. www.a.com,www.b.com.
        #[arg(long)]
        domains: String,
    },
    /// List CDN users and their domains (never the secrets).
    List(DataArg),
    /// Revoke a CDN user: its queries are refused from then on (add it again for a new secret).
    Revoke {
        /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
        #[arg(long, visible_alias = "store")]
        data: PathBuf,
        /// User name.
        #[arg(long)]
        name: String,
    },
}

/// `rating …`
#[derive(Debug, Subcommand)]
pub enum RatingCommand {
    /// Rate periods now (again), replacing what was stored for them: prices usage from the stored
    /// samples with the current modules and hashmap rules. Safe while `serve` runs.
    Process {
        /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
        #[arg(long, visible_alias = "store")]
        data: PathBuf,
        /// Collector config file (for `[rating]` period_secs and metrics_file).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A time in the first period, UTC: `YYYY-MM-DDTHH:MM:SS` or `YYYY-MM-DD`.
        #[arg(long)]
        period_start: String,
        /// Number of consecutive periods.
        #[arg(long, default_value_t = 1)]
        periods: u32,
    },
}

/// `instance …`
#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// List registered instances with their project, region and last contact.
    List(DataArg),
    /// Remove an instance and its raw samples, freeing its id for any project's agent (a
    /// decommissioned VM, or an id another project registered first). Rollups stay.
    Remove {
        /// Data directory holding the SQLite store, or a `postgres://` URL (`--store`).
        #[arg(long, visible_alias = "store")]
        data: PathBuf,
        /// The instance id.
        #[arg(long)]
        id: String,
    },
}
