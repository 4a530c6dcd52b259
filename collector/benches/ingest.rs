//! Bench: collector ingest through the real path — simulated agents send real report batches over
//! WebSocket JSON-RPC into a real, durable store (WAL, committed before the ack) — against the
//! floor: a raw batched SQLite insert of the same rows into the same schema, in the same run.
//! The real path runs twice, over plain `ws://` and over `wss://` (rustls, a self-signed
//! certificate the clients trust), and prints the cost of TLS as the ratio of the two
//! (the target is wss ≥ 0.8 × ws). Every timed phase starts after `sync(1)` and ends with the
//! whole WAL copied into the database file and synced, so each pays for its own disk work.
//!
//! `cargo bench -p vmmon-collector --bench ingest` (env: `VMMON_BENCH_AGENTS` default 1000,
//! `VMMON_BENCH_BATCHES` per agent default 10, `VMMON_BENCH_PROCS` per sample default 100).
//! 1,000 connections need ~2,100 file descriptors: `ulimit -n 8192` first (scripts/bench.sh does).

mod common;

use std::time::Instant;

use anyhow::{Context, Result};
use common::{batch, env, rows_of, spool_all};
use jsonrpsee::ws_client::{HeaderMap, HeaderValue, WsClientBuilder};
use rusqlite::{Connection, params};
use vmmon_collector::config::TlsSettings;
use vmmon_collector::store::{self, Store};
use vmmon_collector::{App, CollectorConfig, admin, server, tls};
use vmmon_common::PROTOCOL_VERSION;
use vmmon_common::rpc::MonitorApiClient;
use vmmon_common::wire::{Inventory, RegisterRequest, ReportBatch};

/// Flushes every file's dirty pages to disk (`sync(1)`) before a timed phase, so the phase does
/// not share the disk with the previous one's writeback: each pays for its own writes only.
fn settle() -> Result<()> {
    let status = std::process::Command::new("sync")
        .status()
        .context("run sync")?;
    anyhow::ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

/// Ends a timed phase with the whole log copied into the database file and synced (`PRAGMA
/// wal_checkpoint(FULL)`, again while another checkpoint holds the lock): the floor and the real
/// path both pay for all their checkpoint work inside their windows.
fn checkpoint_all(conn: &Connection) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (busy, log, copied): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        if busy == 0 && log == copied {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the WAL was never fully copied");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The floor: the same rows, inserted with prepared statements in large transactions.
fn raw_insert(dir: &std::path::Path, batches: &[ReportBatch]) -> Result<f64> {
    drop(Store::open(dir)?); // same schema, migrated
    let mut conn = Connection::open(dir.join(store::DB_FILE))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    settle()?;
    let start = Instant::now();
    for chunk in batches.chunks(100) {
        let tx = conn.transaction()?;
        {
            let mut vm = tx.prepare_cached(
                "INSERT INTO vm_samples (instance_id, sampled_at_ms, elapsed_ms, cpu_pct, mem_pct,
                     disk_read, disk_write, net_in, net_out, rx_bytes_total, tx_bytes_total, proc_count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut pr = tx.prepare_cached(
                "INSERT INTO process_samples (instance_id, sampled_at_ms, pid, start_time, cmd, cpu_pct,
                     mem_pct, disk_read, disk_write, net_in, net_out, shutdown_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for b in chunk {
                for s in &b.samples {
                    let v = &s.vm;
                    vm.execute(params![
                        b.instance_id,
                        v.sampled_at_ms,
                        v.elapsed_ms as i64,
                        v.cpu_pct,
                        v.mem_pct,
                        v.disk_read_kib_per_sec,
                        v.disk_write_kib_per_sec,
                        v.net_in_kib_per_sec,
                        v.net_out_kib_per_sec,
                        v.rx_bytes_total as i64,
                        v.tx_bytes_total as i64,
                        v.proc_count
                    ])?;
                    for p in s.processes.iter().flatten() {
                        pr.execute(params![
                            b.instance_id,
                            v.sampled_at_ms,
                            p.pid,
                            p.start_time,
                            p.cmd,
                            p.cpu_pct,
                            p.mem_pct,
                            p.disk_read_kib_per_sec,
                            p.disk_write_kib_per_sec,
                            p.net_in_kib_per_sec,
                            p.net_out_kib_per_sec,
                            p.shutdown_time
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
    }
    checkpoint_all(&conn)?;
    Ok(start.elapsed().as_secs_f64())
}

/// TLS for the real path: the collector's settings and the clients' rustls config.
fn tls_pair(dir: &std::path::Path) -> Result<(TlsSettings, rustls::ClientConfig)> {
    let made = tls::write_self_signed(&dir.join("tls"), &["127.0.0.1".to_string()])?;
    let certified = tls::load_certified_key(&made.cert_file, &made.key_file)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert[0].clone())?;
    let client = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((
        TlsSettings {
            cert_file: made.cert_file,
            key_file: made.key_file,
            certified,
        },
        client,
    ))
}

async fn real_path(
    dir: &std::path::Path,
    agents: usize,
    per_agent: Vec<Vec<common::Spooled>>,
    with_tls: bool,
) -> Result<(f64, usize)> {
    let (tls_settings, client_tls) = match with_tls {
        true => {
            let (s, c) = tls_pair(dir)?;
            (Some(s), Some(c))
        }
        false => (None, None),
    };
    let store = Store::open(dir)?;
    let (_, token) = admin::create_token(&store, "bench", "r1", "x", false, &[]).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // One token registers every simulated agent at once: no per-token registration limits.
    let config = CollectorConfig {
        register_limits: vmmon_collector::store::instances::RegisterLimits::UNLIMITED,
        tls: tls_settings,
        ..CollectorConfig::default()
    };
    let app = App::new(config, store);
    let running = server::start(app.clone(), listener).await?;
    let scheme = if with_tls { "wss" } else { "ws" };
    let url = format!("{scheme}://{}/rpc", running.local_addr);

    // Connect and register every agent first: the timed part is the report traffic.
    let mut clients = Vec::with_capacity(agents);
    for i in 0..agents {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let mut builder = WsClientBuilder::default();
        if let Some(tls) = &client_tls {
            builder = builder.with_custom_cert_store(tls.clone());
        }
        let c = builder
            .set_headers(h)
            .max_request_size(64 << 20)
            .build(&url)
            .await
            .with_context(|| format!("connect agent {i} (raise ulimit -n?)"))?;
        c.register(RegisterRequest {
            instance_id: format!("vm-{i:04}"),
            inventory: Inventory::default(),
            protocol_version: PROTOCOL_VERSION,
            configured_interval_secs: 30,
            agent_uid: None,
        })
        .await?;
        clients.push(c);
    }
    let db = Connection::open(dir.join(store::DB_FILE))?;
    settle()?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(agents);
    for (c, batches) in clients.into_iter().zip(per_agent) {
        tasks.push(tokio::spawn(async move {
            let mut rows = 0;
            for b in batches {
                rows += b.rows;
                let ack = common::report_as_agent(&c, b).await?;
                anyhow::ensure!(!ack.duplicate, "unexpected duplicate");
            }
            Ok::<usize, anyhow::Error>(rows)
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await??;
    }
    checkpoint_all(&db)?;
    let secs = start.elapsed().as_secs_f64();
    running.stop().await;
    let stored: i64 = app
        .store
        .read(|c| {
            c.query_row(
                "SELECT (SELECT COUNT(*) FROM vm_samples) + (SELECT COUNT(*) FROM process_samples)",
                vmmon_collector::store::NO_PARAMS,
                |r| r.get(0),
            )
        })
        .await?;
    anyhow::ensure!(stored as usize == rows, "stored {stored} rows, sent {rows}");
    Ok((secs, rows))
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` probing
    }
    let agents = env("VMMON_BENCH_AGENTS", 1000);
    let per = env("VMMON_BENCH_BATCHES", 10);
    let procs = env("VMMON_BENCH_PROCS", 100);
    // Recent samples: the collector refuses ones older than raw-sample retention.
    let base = store::now_ms() - 3_600_000;
    let per_agent: Vec<Vec<ReportBatch>> = (0..agents)
        .map(|a| {
            (0..per)
                .map(|k| {
                    batch(
                        &format!("vm-{a:04}"),
                        k as u64,
                        base + k as i64 * 30_000,
                        procs,
                    )
                })
                .collect()
        })
        .collect();
    let all: Vec<ReportBatch> = per_agent.iter().flatten().cloned().collect();
    let rows: usize = all.iter().map(rows_of).sum();

    let floor_dir = tempfile::tempdir()?;
    let floor_secs = raw_insert(floor_dir.path(), &all)?;
    let floor_rate = rows as f64 / floor_secs;
    drop(floor_dir);
    // The same rows in the order a fleet sends them (every agent's first batch, then every
    // agent's second...), as the collector receives them: each transaction touches 100
    // instances' index ranges instead of 10, so the floor itself is slower in this order.
    let arrival: Vec<ReportBatch> = (0..per)
        .flat_map(|k| per_agent.iter().filter_map(move |b| b.get(k)).cloned())
        .collect();
    let arrival_dir = tempfile::tempdir()?;
    let arrival_secs = raw_insert(arrival_dir.path(), &arrival)?;
    let arrival_rate = rows as f64 / arrival_secs;
    drop(arrival_dir);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tls_dir = tempfile::tempdir()?;
    let (tls_secs, tls_rows) = rt.block_on(real_path(
        tls_dir.path(),
        agents,
        spool_all(&per_agent)?,
        true,
    ))?;
    let tls_rate = tls_rows as f64 / tls_secs;
    drop(tls_dir);
    let real_dir = tempfile::tempdir()?;
    let (real_secs, real_rows) = rt.block_on(real_path(
        real_dir.path(),
        agents,
        spool_all(&per_agent)?,
        false,
    ))?;
    let real_rate = real_rows as f64 / real_secs;
    let db_bytes = std::fs::metadata(real_dir.path().join(store::DB_FILE))?.len();
    // The log is not data (and was copied into the database at the end of the phase).
    let wal_bytes = std::fs::metadata(real_dir.path().join(format!("{}-wal", store::DB_FILE)))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "ingest: agents={agents} batches={} rows={rows} procs_per_sample={procs}",
        agents * per
    );
    println!(
        "ingest real path (WS JSON-RPC → durable store): {:.0} rows/s ({real_secs:.2} s)",
        real_rate
    );
    println!(
        "ingest real path over wss (rustls):               {:.0} rows/s ({tls_secs:.2} s)",
        tls_rate
    );
    println!(
        "ingest floor (raw batched SQLite insert):        {:.0} rows/s ({floor_secs:.2} s)",
        floor_rate
    );
    println!(
        "ingest ratio wss/ws: {:.2} (target >= 0.80)",
        tls_rate / real_rate
    );
    println!(
        "ingest floor in arrival order (informational):  {:.0} rows/s ({arrival_secs:.2} s)",
        arrival_rate
    );
    println!("ingest ratio real/floor: {:.2}", real_rate / floor_rate);
    println!(
        "ingest ratio real/floor-in-arrival-order: {:.2}",
        real_rate / arrival_rate
    );
    println!(
        "store size: {:.1} MB per million rows (raw tables, indexes, rollups; WAL file {:.1} MB)",
        db_bytes as f64 / 1e6 / (rows as f64 / 1e6),
        wal_bytes as f64 / 1e6
    );
    Ok(())
}
