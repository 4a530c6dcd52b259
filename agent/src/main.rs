//! `vmmon-agent`: parses the command line and config, then hands over to the library.
//!
//! SIGHUP reloads: the config file is read and validated again; if valid, the agent stops its
//! loops and starts them again with the new config (the spool and its state stay on disk);
//! if not, the error is logged and the running config stays.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use vmmon_agent::cli::Cli;
use vmmon_agent::config::{AgentConfig, ValidConfig};

fn load(cli: &Cli) -> Result<ValidConfig> {
    let mut config = AgentConfig::load(cli.config.as_deref())?;
    cli.apply(&mut config);
    Ok(config.into_valid()?)
}

enum Event {
    Shutdown,
    Reload(Box<ValidConfig>),
}

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
    let config = load(&cli)?;
    if cli.check_config {
        println!("config ok");
        return Ok(());
    }
    limit_malloc_arenas();
    // Room for the sampler to keep two /proc files open per process (the unit sets
    // LimitNOFILE=; elsewhere the soft limit is often 1,024 under a far higher hard one).
    let nofile = vmmon_agent::sampler::raise_nofile_limit();
    tracing::debug!(nofile_soft_limit = ?nofile, "Open-file limit.");
    // One thread: the agent's work is a few milliseconds per tick, and every extra thread costs
    // its stack and, with glibc, its own malloc arena (docs/benchmarks.md, daemon peak RSS).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(cli, config))
}

async fn serve(cli: Cli, mut config: ValidConfig) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    loop {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (event_tx, mut event_rx) = mpsc::channel::<Event>(1);
        let run = tokio::spawn(vmmon_agent::run(config.clone(), stop_rx));
        // Wait for a signal that ends this run.
        loop {
            tokio::select! {
                _ = term.recv() => { let _ = event_tx.send(Event::Shutdown).await; break; }
                _ = int.recv() => { let _ = event_tx.send(Event::Shutdown).await; break; }
                _ = hup.recv() => match load(&cli) {
                    Ok(new) => {
                        tracing::info!("Configuration reloaded; restarting the agent's loops.");
                        vmmon_agent::service::notify_reloading();
                        let _ = event_tx.send(Event::Reload(Box::new(new))).await;
                        break;
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "New configuration is invalid; keeping the running one."),
                },
            }
        }
        let _ = stop_tx.send(true);
        run.await.context("agent task panicked")??;
        match event_rx.recv().await {
            Some(Event::Reload(new)) => config = *new,
            _ => return Ok(()),
        }
    }
}

/// One glibc malloc arena: the default (8 per CPU) lets each thread keep its own freed memory,
/// which roughly doubled the daemon's resident heap; and a fixed 64 KiB mmap threshold, so the
/// per-tick buffers of a few hundred KiB (a batch's JSON) go back to the system when freed
/// instead of fragmenting the heap (docs/benchmarks.md). musl has neither knob.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
