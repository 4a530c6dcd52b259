//! vmmon agent: samples the whole VM (always) and every process (while monitoring is on), spools
//! each tick as a report batch on disk, and delivers the spool to the collector.
//!
//! Data flow: [`sampler`] → [`spool`] (durable, bounded) → [`reporter`] ⇢ collector `/rpc`;
//! commands come back on the reporter's subscription and land in [`Shared::desired`], which the
//! sampling loop follows.

pub mod cdn;
pub mod cli;
pub mod config;
pub mod identity;
pub mod net_state;
pub mod reporter;
pub mod sampler;
pub mod service;
pub mod slots;
pub mod spool;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use vmmon_common::wire::DesiredState;

use config::{AgentConfig, ValidConfig};
use sampler::{ProcRoots, Sampler};
use spool::Spool;

/// After start and after monitoring turns on, the first reported tick comes this soon after the
/// (unreported) priming sample, so rates are available at once instead of one interval later.
const FIRST_TICK_AFTER: Duration = Duration::from_secs(1);

/// Agent failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The spool cannot be opened or written.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// /proc cannot be read at all.
    #[error(transparent)]
    Sampler(#[from] sampler::SamplerError),
    /// No instance id configured and none found on the system.
    #[error("no instance id: set --instance-id (none found in cloud-init, DMI or /etc/machine-id)")]
    NoIdentity,
    /// The state dir is not safe to write as this user (see [`check_state_dir`]).
    #[error("unsafe state dir {path}: {why}")]
    UnsafeStateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Refuses a state dir that another user could tamper with: it must be a real directory (not a
/// symlink), owned by the user the agent runs as, and not writable by group or others. The
/// agent usually runs as root and writes its spool and state there.
pub fn check_state_dir(dir: &std::path::Path) -> Result<(), AgentError> {
    use std::os::unix::fs::MetadataExt;
    let unsafe_dir = |why: String| AgentError::UnsafeStateDir {
        path: dir.to_path_buf(),
        why,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| unsafe_dir(e.to_string()))?;
    if !meta.file_type().is_dir() {
        return Err(unsafe_dir("not a directory (a symlink is refused)".into()));
    }
    // /proc/self belongs to this process's effective user.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid());
    if let Ok(me) = me
        && meta.uid() != me
    {
        return Err(unsafe_dir(format!(
            "owned by uid {}, the agent runs as uid {me}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "writable by group or others (mode {:o}); chmod go-w it",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// State shared by the sampling loop and the reporter.
pub struct Shared {
    /// The spool (std mutex: held only for short file operations, never across an await).
    pub spool: Mutex<Spool>,
    /// The desired state; the sampling loop follows it.
    pub desired: watch::Sender<DesiredState>,
    /// Signalled when a batch was spooled.
    pub new_batch: Notify,
    /// Set when the agent has CDN logs but no positions of its own (state lost): the reporter
    /// asks the collector for the positions of the newest stored batch and puts them in
    /// `cdn_resume` (`Some(None)`: the collector has none).
    pub cdn_resume_wanted: std::sync::atomic::AtomicBool,
    /// The collector's answer to that question.
    pub cdn_resume: Mutex<Option<Option<vmmon_common::wire::CdnTailState>>>,
}

impl Shared {
    /// Runs `f` on the spool.
    pub fn with_spool<T>(&self, f: impl FnOnce(&mut Spool) -> T) -> T {
        let mut guard = match self.spool.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// (batches waiting, samples dropped so far).
    pub fn spool_counts(&self) -> (u64, u64) {
        self.with_spool(|s| (s.len() as u64, s.dropped_samples_total()))
    }

    /// Applies and persists a desired state from the collector.
    pub fn apply_desired(&self, desired: DesiredState) -> Result<(), DesiredRefused> {
        // The collector is not trusted with the agent's health: an interval outside the
        // contract (0 would spin the sampler and panic the heartbeat timer; u32::MAX would stop
        // sampling for 136 years) is refused, logged, and the running state stays.
        if let Err(e) = vmmon_common::vocab::IntervalSecs::new(u64::from(desired.interval_secs)) {
            tracing::error!(interval_secs = desired.interval_secs, error = %e,
                "Refused a desired state from the collector; keeping the running one.");
            return Err(DesiredRefused(e));
        }
        self.desired.send_if_modified(|cur| {
            let changed = *cur != desired;
            *cur = desired;
            changed
        });
        if let Err(e) = self.with_spool(|s| s.set_desired(desired)) {
            tracing::warn!(error = %e, "Cannot persist the desired state.");
        }
        Ok(())
    }
}

/// A desired state from the collector outside the contract (refused, not applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("desired state refused: {0}")]
pub struct DesiredRefused(pub vmmon_common::vocab::IntervalOutOfRange);

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs the agent until `shutdown` flips to true.
pub async fn run(valid: ValidConfig, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let ValidConfig { config, checked } = valid;
    let token = checked.token;
    let instance_id = identity::resolve_instance_id(
        config.instance_id.as_deref(),
        &identity::IdentitySources::default(),
    )
    .ok_or(AgentError::NoIdentity)?;
    std::fs::create_dir_all(&config.state_dir).map_err(|source| spool::SpoolError::Io {
        path: config.state_dir.clone(),
        source,
    })?;
    check_state_dir(&config.state_dir)?;
    let (spool, report) = Spool::open(&config.state_dir, config.spool_max_bytes)?;
    if report.moved_aside > 0 {
        tracing::warn!(
            moved_aside = report.moved_aside,
            corrupt_files_total = spool.corrupt_files_total(),
            dropped_samples_total = spool.dropped_samples_total(),
            "Damaged spool files were moved aside."
        );
    }
    let desired = reporter::initial_desired(spool.desired(), config.interval_secs);
    tracing::info!(%instance_id, collector = ?config.collector, spooled = report.batches,
        monitoring = desired.monitoring, interval_secs = desired.interval_secs, "Agent starting.");
    let (desired_tx, _) = watch::channel(desired);
    let shared = Arc::new(Shared {
        spool: Mutex::new(spool),
        desired: desired_tx,
        new_batch: Notify::new(),
        cdn_resume_wanted: Default::default(),
        cdn_resume: Mutex::new(None),
    });
    let mut sampler = Sampler::new(ProcRoots::default())?;
    let selector = checked.net_selector;
    sampler.set_net_selector(selector.clone());
    let (mut net_state_file, saved_net) = net_state::NetStateFile::open(&config.state_dir);
    sampler.restore_net_state(saved_net);
    let wan = config.wan_ips.clone();
    // Without positions of its own (a lost state dir) the agent waits for the collector's before
    // reading its access logs: reading them from the start would bill their lines again.
    let mut pending_cdn = None;
    let tailer = if config.cdn_access_logs.is_empty()
        || shared.with_spool(|s| s.cdn_checkpoint().is_some())
    {
        cdn_tailer(&config, checked.cdn_format, &shared)
    } else {
        tracing::info!("No CDN access-log positions of our own; asking the collector first.");
        shared
            .cdn_resume_wanted
            .store(true, std::sync::atomic::Ordering::Relaxed);
        pending_cdn = Some((config.cdn_access_logs.clone(), checked.cdn_format));
        None
    };

    let rcfg = reporter::ReporterConfig {
        urls: config.collector.clone(),
        token,
        instance_id: instance_id.clone(),
        configured_interval_secs: config.interval_secs,
        agent_uid: identity::agent_uid(&config.state_dir, &sampler::boot_id(&ProcRoots::default())),
        max_backoff: Duration::from_secs(config.max_backoff_secs),
        tls: config
            .tls_client_config()
            .map_err(|e| config::ConfigError::Invalid(vec![e.to_string()]))?,
    };
    // Inventory is read fresh on every (re)connect.
    let roots = ProcRoots::default();
    let reporter = tokio::spawn(reporter::run(
        rcfg,
        shared.clone(),
        move || sampler::inventory(&roots, &wan, &selector),
        shutdown.clone(),
    ));

    sampling_loop(
        &mut sampler,
        &mut CdnLogs {
            tailer,
            pending: pending_cdn,
        },
        &shared,
        &instance_id,
        &mut net_state_file,
        Watchdog {
            period: service::watchdog_period(),
            pet: Box::new(service::notify_watchdog),
        },
        shutdown,
    )
    .await;
    let _ = reporter.await;
    tracing::info!("Agent stopped.");
    Ok(())
}

/// The access-log tailer when CDN logs are configured, resuming from the spool's checkpoint.
fn cdn_tailer(
    config: &AgentConfig,
    format: cdn::LogFormat,
    shared: &Shared,
) -> Option<cdn::Tailer> {
    if config.cdn_access_logs.is_empty() {
        return None;
    }
    let checkpoint = shared.with_spool(|s| s.cdn_checkpoint().cloned());
    tracing::info!(logs = ?config.cdn_access_logs, resumed = checkpoint.is_some(), "Tailing CDN access logs.");
    Some(cdn::Tailer::new(
        &config.cdn_access_logs,
        format,
        checkpoint.as_ref(),
        cdn::tail::DEFAULT_MAX_BYTES_PER_POLL,
    ))
}

/// How the sampling loop shows systemd it is alive: `pet` every `period` (half of
/// `WatchdogSec=`), from the loop itself.
struct Watchdog {
    /// None: no watchdog configured, never pet.
    period: Option<Duration>,
    /// Sends `WATCHDOG=1` (a counter in tests).
    pet: Box<dyn Fn() + Send>,
}

/// Access logs waiting for the collector's positions before they are read.
type PendingCdn = Option<(Vec<std::path::PathBuf>, cdn::LogFormat)>;

/// The CDN access logs the sampling loop tails: the tailer once it can start, or the logs still
/// waiting for the collector's positions.
struct CdnLogs {
    tailer: Option<cdn::Tailer>,
    pending: PendingCdn,
}

async fn sampling_loop(
    sampler: &mut Sampler,
    cdn_logs: &mut CdnLogs,
    shared: &Shared,
    instance_id: &str,
    net_state_file: &mut net_state::NetStateFile,
    watchdog: Watchdog,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut desired_rx = shared.desired.subscribe();
    let mut applied = *desired_rx.borrow_and_update();
    prime(sampler, applied.monitoring);
    let mut next = tokio::time::Instant::now() + FIRST_TICK_AFTER;
    // The watchdog is petted from this loop, so a sampler stuck in a /proc read stops the pets
    // and systemd restarts the agent.
    let mut pet = tokio::time::interval(watchdog.period.unwrap_or(Duration::from_secs(3600)));
    let mut ready_sent = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = pet.tick() => {
                if watchdog.period.is_some() {
                    (watchdog.pet)();
                }
                continue;
            }
            changed = desired_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let new = *desired_rx.borrow_and_update();
                if new.monitoring && !applied.monitoring {
                    // Baseline now so the first process tick has real rates.
                    prime(sampler, true);
                    next = tokio::time::Instant::now() + FIRST_TICK_AFTER;
                } else if new.interval_secs != applied.interval_secs {
                    next = tokio::time::Instant::now() + Duration::from_secs(u64::from(new.interval_secs));
                }
                tracing::info!(monitoring = new.monitoring, interval_secs = new.interval_secs, "Applying desired state.");
                applied = new;
                continue;
            }
            _ = shutdown.changed() => return,
        }
        let now = SystemTime::now();
        let sample = blocking(|| sampler.sample_ext(now, applied.monitoring));
        next += Duration::from_secs(u64::from(applied.interval_secs));
        let catch_up = tokio::time::Instant::now();
        if next < catch_up {
            // Fell behind (suspend, overload): do not burst, restart the cadence.
            next = catch_up + Duration::from_secs(u64::from(applied.interval_secs));
        }
        let (sample, ext) = match sample {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "Sampling failed; skipping this tick.");
                continue;
            }
        };
        let CdnLogs {
            tailer: tailer_slot,
            pending: pending_cdn,
        } = &mut *cdn_logs;
        if tailer_slot.is_none()
            && pending_cdn.is_some()
            && let Some(resume) = shared.cdn_resume.lock().ok().and_then(|g| g.clone())
            && let Some((logs, format)) = pending_cdn.take()
        {
            tracing::info!(
                resumed = resume.is_some(),
                "Tailing CDN access logs from the collector's positions."
            );
            *tailer_slot = Some(cdn::Tailer::new(
                &logs,
                format,
                resume.as_ref(),
                cdn::tail::DEFAULT_MAX_BYTES_PER_POLL,
            ));
        }
        let tailer = tailer_slot.as_mut();
        // The tick's access-log lines travel in the tick's batch, with the positions after them;
        // the tailer adopts those positions only once the batch is durably spooled.
        let mut poll = tailer
            .as_deref()
            .map(|t| blocking(|| t.poll(now_secs(now))));
        let (deltas, tail) = match poll.as_mut() {
            Some(p) => (std::mem::take(&mut p.deltas), Some(p.tail_state())),
            None => (Vec::new(), None),
        };
        // The running network totals are persisted before the batch that carries them, so a
        // restart never continues from totals below what was sent.
        if let Err(e) = blocking(|| net_state_file.save(sampler.net_state())) {
            tracing::warn!(error = %e, "Cannot persist the network totals.");
        }
        let pushed = blocking(|| {
            shared.with_spool(|s| s.push_batch_ext(instance_id, vec![sample], &[ext], deltas, tail))
        });
        if let (Ok(_), Some(t), Some(p)) = (&pushed, tailer, poll) {
            t.commit(p);
        }
        match pushed {
            Ok(seq) => {
                tracing::debug!(seq, at_ms = epoch_ms(now), "Spooled a sample.");
                shared.new_batch.notify_one();
                if !ready_sent {
                    service::notify_ready();
                    ready_sent = true;
                }
            }
            Err(e) => tracing::error!(error = %e, "Cannot write the spool; this sample is lost."),
        }
    }
}

/// Runs blocking `/proc` and spool work: through `block_in_place` on a multi-threaded runtime,
/// inline on the agent's single-threaded one (a tick's few milliseconds of file work delay the
/// reporter's socket by as much, which is harmless; one thread keeps the daemon small).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn now_secs(t: SystemTime) -> i64 {
    epoch_ms(t).div_euclid(1000)
}

fn prime(sampler: &mut Sampler, with_processes: bool) {
    if let Err(e) = blocking(|| sampler.sample(SystemTime::now(), with_processes)) {
        tracing::warn!(error = %e, "Priming sample failed.");
    }
}

#[cfg(test)]
mod hostile_input_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn unsafe_state_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_state_dir(dir.path()).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_state_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(
            check_state_dir(&link)
                .unwrap_err()
                .to_string()
                .contains("symlink")
        );
    }

    #[test]
    fn hostile_intervals_from_the_collector_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let start = DesiredState {
            monitoring: false,
            interval_secs: 30,
        };
        let (tx, rx) = watch::channel(start);
        let shared = Shared {
            spool: Mutex::new(spool),
            desired: tx,
            new_batch: Notify::new(),
            cdn_resume_wanted: Default::default(),
            cdn_resume: Mutex::new(None),
        };
        for interval_secs in [0, 86_401, u32::MAX] {
            let bad = DesiredState {
                monitoring: true,
                interval_secs,
            };
            assert!(shared.apply_desired(bad).is_err(), "{interval_secs}");
            assert_eq!(
                *rx.borrow(),
                start,
                "{interval_secs}: the running state stays"
            );
        }
        let good = DesiredState {
            monitoring: true,
            interval_secs: 1,
        };
        assert!(shared.apply_desired(good).is_ok());
        assert_eq!(*rx.borrow(), good);
        // A bad persisted state (an older agent accepted 0) is not resumed.
        let persisted = DesiredState {
            monitoring: true,
            interval_secs: 0,
        };
        assert_eq!(
            reporter::initial_desired(Some(persisted), 30).interval_secs,
            30
        );
    }

    proptest::proptest! {
        /// Whatever state the collector sends (register answer, heartbeat answer, pushed
        /// command), the agent neither panics nor applies a value outside the contract.
        #[test]
        fn any_desired_state_is_applied_only_when_valid(monitoring: bool, interval_secs: u32) {
            let dir = tempfile::tempdir().unwrap();
            let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
            let start = DesiredState { monitoring: false, interval_secs: 30 };
            let (tx, rx) = watch::channel(start);
            let shared = Shared {
                spool: Mutex::new(spool),
                desired: tx,
                new_batch: Notify::new(),
                cdn_resume_wanted: Default::default(),
                cdn_resume: Mutex::new(None),
            };
            let sent = DesiredState { monitoring, interval_secs };
            let valid = (1..=86_400).contains(&interval_secs);
            proptest::prop_assert_eq!(shared.apply_desired(sent).is_ok(), valid);
            let now = *rx.borrow();
            proptest::prop_assert_eq!(now, if valid { sent } else { start });
            let resumed = reporter::initial_desired(Some(sent), 30);
            proptest::prop_assert!((1..=86_400).contains(&resumed.interval_secs));
        }

        /// Arbitrary bytes as a command or a desired state from the collector parse or fail
        /// cleanly.
        #[test]
        fn arbitrary_collector_messages_never_panic(text in ".{0,200}") {
            let _ = serde_json::from_str::<vmmon_common::wire::Command>(&text);
            let _ = serde_json::from_str::<DesiredState>(&text);
        }
    }
}

#[cfg(test)]
mod watchdog_tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const STAT: &str = "cpu  10 0 0 90 0 0 0 0 0 0\ncpu0 10 0 0 90 0 0 0 0 0 0\nbtime 1700000000\n";

    fn wait(what: &str, mut cond: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pets come from the sampling loop, so a sampler stuck in a `/proc` read (here a FIFO
    /// with a silent writer standing in for `/proc/stat`) stops them and systemd restarts the
    /// agent; once the read returns, they resume. A watchdog petted from another thread would
    /// keep petting a hung sampler, and this test would fail.
    #[test]
    fn watchdog_pets_stop_while_the_sampler_is_stuck_in_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(proc.join("stat"), STAT).unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal: 1000 kB\nMemFree: 500 kB\nMemAvailable: 600 kB\n",
        )
        .unwrap();
        std::fs::write(proc.join("uptime"), "100.00 50.00\n").unwrap();
        let state = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(state.path(), 1 << 20).unwrap();
        let (desired, _) = watch::channel(DesiredState {
            monitoring: false,
            interval_secs: 1,
        });
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            desired,
            new_batch: Notify::new(),
            cdn_resume_wanted: Default::default(),
            cdn_resume: Mutex::new(None),
        });
        let pets = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let roots = ProcRoots {
            proc: proc.clone(),
            sys,
        };
        let counter = pets.clone();
        let (mut net_state, _) = net_state::NetStateFile::open(state.path());
        // The agent's own runtime flavour: one thread, blocking /proc reads inline.
        let looping = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut sampler = Sampler::new(roots).unwrap();
                sampling_loop(
                    &mut sampler,
                    &mut CdnLogs {
                        tailer: None,
                        pending: None,
                    },
                    &shared,
                    "vm-watchdog",
                    &mut net_state,
                    Watchdog {
                        period: Some(Duration::from_millis(20)),
                        pet: Box::new(move || {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }),
                    },
                    stop_rx,
                )
                .await;
            });
        });
        wait("pets while sampling works", || {
            pets.load(Ordering::SeqCst) >= 3
        });

        // /proc/stat becomes a FIFO: the next tick's read blocks until a writer opens it and
        // then until the writer closes it.
        std::fs::remove_file(proc.join("stat")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(proc.join("stat"))
            .status()
            .unwrap();
        assert!(made.success());
        // Opening the write end without blocking succeeds only once the sampler holds the read
        // end: from then on the loop is inside the read.
        let mut writer = None;
        wait("the sampler to open the FIFO", || {
            writer = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(proc.join("stat"))
                .ok();
            writer.is_some()
        });
        let stuck_at = pets.load(Ordering::SeqCst);
        // Fifty watchdog periods with the read stuck: not one pet.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            pets.load(Ordering::SeqCst),
            stuck_at,
            "the watchdog was petted while the sampler hung"
        );

        // The read returns: sampling and pets resume.
        let mut w = writer.take().unwrap();
        std::io::Write::write_all(&mut w, STAT.as_bytes()).unwrap();
        drop(w);
        std::fs::remove_file(proc.join("stat")).unwrap();
        std::fs::write(proc.join("stat"), STAT).unwrap();
        wait("pets after the read returned", || {
            pets.load(Ordering::SeqCst) > stuck_at + 3
        });
        stop_tx.send(true).unwrap();
        looping.join().unwrap();
    }
}
