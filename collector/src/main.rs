//! `vmmon-collector`: parses the command line and hands over to the library.

mod cli;
mod service;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use vmmon_collector::config::ConfigFile;
use vmmon_collector::store::{Store, StoreLocation};
use vmmon_collector::{App, CollectorConfig, admin, jobs, server};

use cli::{
    CdnUserCommand, Cli, Command, InstanceCommand, RatingCommand, ServeArgs, StoreCommand,
    TlsCommand, TokenCommand, UserCommand,
};

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMMON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(run(cli))
}

/// Opens the store named by `--data`/`--store`: a data directory or a `postgres://` URL.
async fn open(data: &std::path::Path) -> Result<Store> {
    let location = StoreLocation::parse(&data.to_string_lossy());
    open_location(&location).await
}

async fn open_location(location: &StoreLocation) -> Result<Store> {
    if let StoreLocation::Postgres(url) = location {
        vmmon_collector::config::check_store_url(url)
            .map_err(|e| anyhow::anyhow!("store URL {location}: {e}"))?;
    }
    Store::open_location(location)
        .await
        .with_context(|| format!("cannot open the store {location}"))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(d) => {
            let store = open(&d.data).await?;
            println!("store {} is up to date", store.describe());
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            data,
            project,
            region,
            party,
            cdn,
            cdn_users,
        }) => {
            let store = open(&data).await?;
            let (id, token) =
                admin::create_token(&store, &project, &region, &party, cdn, &cdn_users).await?;
            println!("agent token {id} for project {project:?} region {region:?} (shown once):");
            println!("{token}");
            Ok(())
        }
        Command::Instance(InstanceCommand::List(d)) => {
            let store = open(&d.data).await?;
            println!("instance_id\tproject\tregion\thostname\tlast_seen_ms");
            for i in admin::list_instances(&store).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    i.instance_id, i.project, i.region, i.inventory.hostname, i.last_seen_ms
                );
            }
            Ok(())
        }
        Command::Instance(InstanceCommand::Remove { data, id }) => {
            let store = open(&data).await?;
            if !admin::remove_instance(&store, &id).await? {
                bail!("no instance {id:?}");
            }
            println!("instance {id:?} removed");
            Ok(())
        }
        Command::Token(TokenCommand::List(d)) => {
            let store = open(&d.data).await?;
            println!("id\tproject\tregion\tparty\trevoked\tcdn_edge");
            for t in admin::list_tokens(&store).await? {
                let revoked = if t.revoked_at_ms.is_some() {
                    "yes"
                } else {
                    "no"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.project,
                    t.region,
                    t.party,
                    revoked,
                    if t.cdn_edge { "yes" } else { "no" }
                );
            }
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { data, id }) => {
            let store = open(&data).await?;
            if !admin::revoke_token(&store, id).await? {
                bail!("no active agent token with id {id}");
            }
            println!("agent token {id} revoked");
            Ok(())
        }
        Command::User(UserCommand::Add {
            data,
            name,
            project,
            admin: is_admin,
        }) => {
            let store = open(&data).await?;
            let password = read_password()?;
            let project = if is_admin { None } else { project };
            admin::add_user(&store, &name, &password, project.as_deref()).await?;
            match project {
                Some(p) => println!("user {name:?} of project {p:?} saved"),
                None => println!("admin user {name:?} saved"),
            }
            Ok(())
        }
        Command::User(UserCommand::List(d)) => {
            let store = open(&d.data).await?;
            println!("name\trole\tproject");
            for u in admin::list_users(&store).await? {
                let role = if u.is_admin { "admin" } else { "tenant" };
                println!("{}\t{}\t{}", u.name, role, u.project.unwrap_or_default());
            }
            Ok(())
        }
        Command::Rating(RatingCommand::Process {
            data,
            config,
            period_start,
            periods,
        }) => rating_process(&data, config.as_deref(), &period_start, periods).await,
        Command::User(UserCommand::Remove { data, name }) => {
            let store = open(&data).await?;
            if !admin::remove_user(&store, &name).await? {
                bail!("no user named {name:?}");
            }
            println!("user {name:?} removed");
            Ok(())
        }
        Command::CdnUser(cmd) => cdn_user(cmd).await,
        Command::Tls(TlsCommand::SelfSigned { data, hostname }) => {
            use vmmon_collector::tls;
            let made = tls::write_self_signed(&data.join(tls::SELF_SIGNED_DIR), &hostname)?;
            println!(
                "self-signed certificate for {} written; in the collector config:",
                hostname.join(", ")
            );
            println!(
                "  tls_cert_file = {:?}",
                made.cert_file.display().to_string()
            );
            println!("  tls_key_file = {:?}", made.key_file.display().to_string());
            println!(
                "agents: --collector wss://{}:PORT/rpc with --ca-file {} (a copy) or this --pin-sha256:",
                hostname[0],
                made.cert_file.display()
            );
            println!("{}", made.pin);
            Ok(())
        }
        Command::Store(StoreCommand::Copy { from, to }) => {
            let location = StoreLocation::parse(&to);
            if !matches!(location, StoreLocation::Postgres(_)) {
                bail!("--to must be a postgres:// URL, not {to:?}");
            }
            let target = open_location(&location).await?;
            let tables = admin::copy_store(&from, &target)
                .await
                .with_context(|| format!("cannot copy {} to {location}", from.display()))?;
            println!("table\tsqlite_rows\tsqlite_checksum\tpostgres_rows\tpostgres_checksum");
            for t in tables {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    t.table, t.source_rows, t.source_checksum, t.target_rows, t.target_checksum
                );
            }
            Ok(())
        }
        Command::CdnSources(d) => {
            let store = open(&d.data).await?;
            println!("instance_id\tfiles\tmalformed_lines\tlast_report_utc");
            for s in vmmon_collector::admin::cdn::list_sources(&store).await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    s.instance_id,
                    s.files,
                    s.malformed_lines_total,
                    vmmon_collector::bandwidth::format_local(chrono_tz::UTC, s.last_report_ms)
                );
            }
            Ok(())
        }
    }
}

async fn cdn_user(cmd: CdnUserCommand) -> Result<()> {
    use vmmon_collector::admin::cdn;
    match cmd {
        CdnUserCommand::Add {
            data,
            name,
            domains,
        } => {
            let store = open(&data).await?;
            let secret = cdn::add_user(&store, &name, &domains).await?;
            println!("CDN user {name:?} saved; its secret (shown once):");
            println!("{secret}");
        }
        CdnUserCommand::List(d) => {
            let store = open(&d.data).await?;
            println!("name\tdomains\trevoked");
            for u in cdn::list_users(&store).await? {
                let revoked = if u.revoked_at_ms.is_some() {
                    "yes"
                } else {
                    "no"
                };
                println!("{}\t{}\t{}", u.name, u.domains.join(","), revoked);
            }
        }
        CdnUserCommand::Revoke { data, name } => {
            let store = open(&data).await?;
            if !cdn::revoke_user(&store, &name).await? {
                bail!("no active CDN user named {name:?}");
            }
            println!("CDN user {name:?} revoked");
        }
    }
    Ok(())
}

async fn rating_process(
    data: &std::path::Path,
    config: Option<&std::path::Path>,
    start: &str,
    periods: u32,
) -> Result<()> {
    use vmmon_collector::jobs::rating as processor;
    use vmmon_collector::rating::{decimal, metrics::MetricsConfig, period};
    let full = CollectorConfig::load(config)?;
    let cfg = full.rating;
    let metrics = MetricsConfig::load(cfg.metrics_file.as_deref()).map_err(anyhow::Error::msg)?;
    let start_ms = vmmon_collector::http::rating::parse_datetime(start)
        .with_context(|| format!("--period-start {start:?} is not a date or datetime"))?;
    let store = open(data).await?;
    let period_ms = (cfg.period_secs as i64).saturating_mul(1000);
    let done = processor::process_range(
        &store,
        Arc::new(metrics),
        period_ms,
        start_ms,
        periods,
        full.raw_retention_days,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    for o in done {
        println!(
            "{}\ttenants={}\tpoints={}\ttotal={}{}",
            period::iso(o.begin_ms),
            o.tenants,
            o.points,
            decimal::to_text(o.total),
            if o.replaced { "\treplaced" } else { "" }
        );
    }
    Ok(())
}

fn read_password() -> Result<String> {
    if let Ok(p) = std::env::var("VMMON_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("password: ").context("cannot read the password");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn load_config(args: &ServeArgs) -> Result<CollectorConfig> {
    let mut file = ConfigFile::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        file.listen = listen;
    }
    if let Some(url) = &args.store {
        file.store_url = Some(url.clone());
    }
    if let Some(data) = &args.data {
        file.data_dir = data.clone();
    } else if args.config.is_none()
        && let Ok(dir) = std::env::var("STATE_DIRECTORY")
    {
        file.data_dir = PathBuf::from(dir);
    }
    Ok(file.validate()?)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = load_config(&args)?;
    if args.check_config {
        println!("config ok");
        return Ok(());
    }
    let location = match &config.store_url {
        Some(url) => StoreLocation::Postgres(url.clone()),
        None => StoreLocation::Sqlite(config.data_dir.clone()),
    };
    let store = open_location(&location).await?;
    if let Some(admin) =
        admin::bootstrap_admin(&store, std::env::var("VMMON_ADMIN_PASSWORD").ok()).await?
    {
        if admin.generated {
            println!(
                "created admin user {:?} with generated password (shown once): {}",
                admin.name, admin.password
            );
        } else {
            println!(
                "created admin user {:?} with the password from VMMON_ADMIN_PASSWORD",
                admin.name
            );
        }
    }
    // Signal handlers before the address is announced: a SIGHUP that arrives as soon as a
    // client (or systemd) sees the collector up must reload it, not kill it (the default action).
    let signals = Signals::install().context("cannot watch signals")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let app: Arc<App> = App::new(config, store);
    let running = server::start(app.clone(), listener).await?;
    println!("vmmon-collector listening on {}", running.local_addr);
    if let Some(tls) = &app.settings().config.tls {
        let pin = vmmon_collector::tls::spki_pin(&tls.certified.cert[0]).unwrap_or_default();
        tracing::info!(cert = %tls.cert_file.display(), pin_sha256 = %pin, "Serving HTTPS and WSS.");
    }
    tracing::info!(addr = %running.local_addr, data = %app.settings().config.data_dir.display(), "Collector ready.");
    jobs::housekeeping::spawn(app.clone());
    jobs::rating::spawn(app.clone());
    vmmon_collector::jobs::relay::spawn(app.clone());
    service::notify_ready();
    service::spawn_watchdog(app.clone());
    wait_for_stop(signals, &args, &app).await;
    tracing::info!("Shutting down.");
    running.stop().await;
    // Let queued writes commit before the process ends.
    let _ = app.store.write(|_| Ok(())).await;
    Ok(())
}

/// The signals `serve` obeys, watched from before the listener is bound.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Serves until SIGTERM/SIGINT. A SIGHUP reloads the config file in place: the new settings
/// apply to every request that starts afterwards, while the listener, every agent connection and
/// every request in flight carry on untouched. An invalid file is logged and the running
/// settings stay.
async fn wait_for_stop(signals: Signals, args: &ServeArgs, app: &App) {
    let Signals { mut term, mut hup } = signals;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                service::notify_reloading();
                match load_config(args) {
                    Ok(config) => {
                        for field in app.reload(config) {
                            tracing::warn!(field, "Changing this setting needs a restart; keeping the running value.");
                        }
                        tracing::info!("Configuration reloaded.");
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "New configuration is invalid; keeping the running one."),
                }
                service::notify_ready();
            }
        }
    }
}
