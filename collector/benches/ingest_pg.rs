//! Bench: collector ingest into a PostgreSQL store through the real path (simulated agents send
//! real report batches over WebSocket JSON-RPC; each acknowledgement after the commit), through
//! one collector and through two collectors sharing the database, against the floor measured in
//! the same run: a raw PostgreSQL `COPY` of the same rows into the same schema.
//!
//! `VMMON_BENCH_PG_URL=postgres://user@host:port/postgres cargo bench -p vmmon-collector --bench
//! ingest_pg` (a superuser URL: each run creates its own databases). `scripts/bench.sh` starts a
//! throw-away cluster for it. Env as the SQLite ingest bench: `VMMON_BENCH_AGENTS` (1000),
//! `VMMON_BENCH_BATCHES` per agent (10), `VMMON_BENCH_PROCS` per sample (100). On a 2-core machine
//! the database and the collectors share the cores: two collectors cannot scale there.

mod common;

use std::time::Instant;

use anyhow::{Context, Result};
use common::{batch, env, rows_of, spool_all};
use futures::SinkExt;
use jsonrpsee::ws_client::{HeaderMap, HeaderValue, WsClientBuilder};
use vmmon_collector::store::{Store, StoreLocation};
use vmmon_collector::{App, CollectorConfig, admin, server};
use vmmon_common::PROTOCOL_VERSION;
use vmmon_common::rpc::MonitorApiClient;
use vmmon_common::wire::{Inventory, RegisterRequest, ReportBatch};

/// A new database in the cluster of `base`; its URL.
async fn fresh_db(base: &str) -> Result<String> {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    drop(client);
    let _ = task.await;
    let mut url = url::Url::parse(base)?;
    url.set_path(&name);
    Ok(url.to_string())
}

/// The agents' project (their token's).
const PROJECT: &str = "bench";

/// The floor: the same rows with `COPY … FROM STDIN` into the migrated schema (with their
/// project, as the real path stores them).
async fn copy_floor(url: &str, batches: &[ReportBatch]) -> Result<f64> {
    drop(Store::open_location(&StoreLocation::Postgres(url.to_string())).await?);
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let start = Instant::now();
    let mut vm = String::new();
    let mut pr = String::new();
    for b in batches {
        for s in &b.samples {
            let v = &s.vm;
            vm.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{PROJECT}\n",
                b.instance_id,
                v.sampled_at_ms,
                v.elapsed_ms,
                v.cpu_pct,
                v.mem_pct,
                v.disk_read_kib_per_sec,
                v.disk_write_kib_per_sec,
                v.net_in_kib_per_sec,
                v.net_out_kib_per_sec,
                v.rx_bytes_total,
                v.tx_bytes_total,
                v.proc_count
            ));
            for p in s.processes.iter().flatten() {
                pr.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t\\N\t{PROJECT}\n",
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
                    p.net_out_kib_per_sec
                ));
            }
        }
    }
    for (sql, data) in [
        (
            "COPY vm_samples (instance_id, sampled_at_ms, elapsed_ms, cpu_pct, mem_pct, disk_read,
                 disk_write, net_in, net_out, rx_bytes_total, tx_bytes_total, proc_count, project)
             FROM STDIN",
            vm,
        ),
        (
            "COPY process_samples (instance_id, sampled_at_ms, pid, start_time, cmd, cpu_pct,
                 mem_pct, disk_read, disk_write, net_in, net_out, shutdown_time, project)
             FROM STDIN",
            pr,
        ),
    ] {
        let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data)).await?;
        sink.close().await?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The real path through `collectors` collectors on one database (agents split evenly).
async fn real_path(
    url: &str,
    collectors: usize,
    per_agent: Vec<Vec<common::Spooled>>,
) -> Result<(f64, usize)> {
    let location = StoreLocation::Postgres(url.to_string());
    let mut apps = Vec::new();
    let mut running = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..collectors {
        let store = Store::open_location(&location).await?;
        let config = CollectorConfig {
            register_limits: vmmon_collector::store::instances::RegisterLimits::UNLIMITED,
            ..CollectorConfig::default()
        };
        let app = App::new(config, store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let r = server::start(app.clone(), listener).await?;
        urls.push(format!("ws://{}/rpc", r.local_addr));
        apps.push(app);
        running.push(r);
    }
    let (_, token) = admin::create_token(&apps[0].store, PROJECT, "r1", "x", false, &[]).await?;
    let mut clients = Vec::with_capacity(per_agent.len());
    for i in 0..per_agent.len() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let c = WsClientBuilder::default()
            .set_headers(h)
            .max_request_size(64 << 20)
            .build(&urls[i % collectors])
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
    let start = Instant::now();
    let mut tasks = Vec::new();
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
    let secs = start.elapsed().as_secs_f64();
    for r in running {
        r.stop().await;
    }
    let stored: i64 = apps[0]
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
    let Ok(base) = std::env::var("VMMON_BENCH_PG_URL") else {
        println!(
            "ingest_pg: VMMON_BENCH_PG_URL not set (scripts/bench.sh starts a cluster): skipped"
        );
        return Ok(());
    };
    let agents = env("VMMON_BENCH_AGENTS", 1000);
    let per = env("VMMON_BENCH_BATCHES", 10);
    let procs = env("VMMON_BENCH_PROCS", 100);
    let now = vmmon_common::vocab::now_ms() - 3_600_000;
    let per_agent: Vec<Vec<ReportBatch>> = (0..agents)
        .map(|a| {
            (0..per)
                .map(|k| {
                    batch(
                        &format!("vm-{a:04}"),
                        k as u64,
                        now + k as i64 * 30_000,
                        procs,
                    )
                })
                .collect()
        })
        .collect();
    let all: Vec<ReportBatch> = per_agent.iter().flatten().cloned().collect();
    let rows: usize = all.iter().map(rows_of).sum();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let floor_secs = copy_floor(&fresh_db(&base).await?, &all).await?;
        let fresh = |a: &[Vec<ReportBatch>]| spool_all(&a.iter().map(|b| b.iter().map(|x| ReportBatch { batch_id: uuid::Uuid::new_v4(), ..x.clone() }).collect()).collect::<Vec<Vec<_>>>());
        let (one_secs, one_rows) = real_path(&fresh_db(&base).await?, 1, fresh(&per_agent)?).await?;
        let (two_secs, two_rows) = real_path(&fresh_db(&base).await?, 2, fresh(&per_agent)?).await?;
        let floor = rows as f64 / floor_secs;
        let one = one_rows as f64 / one_secs;
        let two = two_rows as f64 / two_secs;
        println!("ingest_pg: agents={agents} batches={} rows={rows} procs_per_sample={procs}", agents * per);
        println!("ingest_pg one collector (WS JSON-RPC → PostgreSQL, ack after commit): {one:.0} rows/s ({one_secs:.2} s)");
        println!("ingest_pg two collectors, one database:                           {two:.0} rows/s ({two_secs:.2} s)");
        println!("ingest_pg floor (raw COPY of the same rows):                        {floor:.0} rows/s ({floor_secs:.2} s)");
        println!("ingest_pg ratio one/floor: {:.2} (goal >= 0.50)", one / floor);
        println!("ingest_pg scaling two/one: {:.2}", two / one);
        Ok(())
    })
}
