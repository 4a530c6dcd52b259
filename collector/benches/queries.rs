//! Bench: the method-coded API's queries on a large store — 611711, 611611 and 611712 through the
//! real HTTP server (p50/p99) against their floor: the same store query called directly on a read
//! connection, no HTTP/JSON, in the same run. Also the store's size per million process rows.
//!
//! `cargo bench -p vmmon-collector --bench queries` — env `VMMON_BENCH_ROWS` (process rows,
//! default 5,000,000; the target scenario is 50,000,000: 1,000 VMs × 30 days), `VMMON_BENCH_CALLS`
//! (per query, default 300).
//!
//! With `VMMON_BENCH_PG_URL=postgres://user@host:port/postgres` (a superuser URL) the same runs
//! on a PostgreSQL store instead: a fresh database (dropped at the end), the 30 day partitions
//! made first, the rows generated inside the server (`INSERT … SELECT … generate_series`, a
//! chunk of samples per statement, in time order), `ANALYZE`, the three queries' plans printed
//! (`EXPLAIN`), then the same timings; the floor is the store query on a pooled connection
//! (timed inside the read, without the hop to the blocking pool).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;
use rusqlite::{Connection, params};
use vmmon_collector::store::{self, AgentTokenRow, Store};
use vmmon_collector::{App, CollectorConfig, admin, server};
use vmmon_common::wire::Inventory;

const VMS: usize = 1_000;
const PROCS: usize = 50;
const DAYS: i64 = 30;
const NOW_MS: i64 = 1_790_000_000_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fill(dir: &std::path::Path, rows: usize) -> Result<(usize, f64)> {
    let samples_per_vm = (rows / VMS / PROCS).max(1);
    let step_ms = DAYS * 86_400_000 / samples_per_vm as i64;
    let mut conn = Connection::open(dir.join(store::DB_FILE))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let start = Instant::now();
    let mut n = 0;
    for k in 0..samples_per_vm {
        let at = NOW_MS - DAYS * 86_400_000 + k as i64 * step_ms;
        let tx = conn.transaction()?;
        {
            let mut vm = tx.prepare_cached(
                "INSERT INTO vm_samples (instance_id, sampled_at_ms, elapsed_ms, cpu_pct, mem_pct, disk_read,
                     disk_write, net_in, net_out, rx_bytes_total, tx_bytes_total, proc_count)
                 VALUES (?1, ?2, 30000, 10.0, 40.0, 0, 0, 0, 0, 0, 0, ?3)",
            )?;
            let mut pr = tx.prepare_cached(
                "INSERT INTO process_samples (instance_id, sampled_at_ms, pid, start_time, cmd, cpu_pct,
                     mem_pct, disk_read, disk_write, net_in, net_out, shutdown_time)
                 VALUES (?1, ?2, ?3, 1700000000.0, ?4, ?5, 0.5, 0, 0, 0, 0, NULL)",
            )?;
            for v in 0..VMS {
                let id = format!("vm-{v:04}");
                vm.execute(params![id, at, PROCS as i64])?;
                for p in 0..PROCS {
                    pr.execute(params![
                        id,
                        at,
                        1000 + p as i64,
                        format!("proc-{p}"),
                        (p % 9) as f64
                    ])?;
                    n += 1;
                }
            }
        }
        tx.commit()?;
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Fills the PostgreSQL store at `url` (already migrated, instances registered) with `rows`
/// process rows and their VM rows, generated in the server; (rows, seconds).
async fn fill_pg(url: &str, rows: usize) -> Result<(usize, f64)> {
    let samples_per_vm = (rows / VMS / PROCS).max(1);
    let step_ms = DAYS * 86_400_000 / samples_per_vm as i64;
    let first_ms = NOW_MS - DAYS * 86_400_000;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let start = Instant::now();
    // About 1.5M process rows per statement, in time order (one day's partition at a time).
    let chunk = (1_500_000 / (VMS * PROCS)).max(1);
    let mut k0 = 0;
    while k0 < samples_per_vm {
        let k1 = (k0 + chunk).min(samples_per_vm);
        let (a, b) = (k0 as i64, k1 as i64 - 1);
        client
            .batch_execute(&format!(
                "INSERT INTO vm_samples (instance_id, sampled_at_ms, elapsed_ms, cpu_pct, mem_pct,
                     disk_read, disk_write, net_in, net_out, rx_bytes_total, tx_bytes_total,
                     proc_count, project)
                 SELECT 'vm-' || lpad(v::text, 4, '0'), {first_ms} + k * {step_ms}, 30000, 10.0,
                     40.0, 0, 0, 0, 0, 0, 0, {PROCS}, 'bench'
                 FROM generate_series({a}::bigint, {b}::bigint) k, generate_series(0, {vms}) v;
                 INSERT INTO process_samples (instance_id, sampled_at_ms, pid, start_time, cmd,
                     cpu_pct, mem_pct, disk_read, disk_write, net_in, net_out, shutdown_time,
                     disk_unreadable, project)
                 SELECT 'vm-' || lpad(v::text, 4, '0'), {first_ms} + k * {step_ms}, 1000 + p,
                     1700000000.0, 'proc-' || p, (p % 9)::float8, 0.5, 0, 0, 0, 0, NULL, 0,
                     'bench'
                 FROM generate_series({a}::bigint, {b}::bigint) k, generate_series(0, {vms}) v,
                     generate_series(0, {procs}) p",
                vms = VMS - 1,
                procs = PROCS - 1,
            ))
            .await?;
        k0 = k1;
        eprintln!(
            "  {} of {} process rows ({:.0} s)",
            k0 * VMS * PROCS,
            samples_per_vm * VMS * PROCS,
            start.elapsed().as_secs_f64()
        );
    }
    client
        .batch_execute("ANALYZE vm_samples; ANALYZE process_samples;")
        .await?;
    let secs = start.elapsed().as_secs_f64();
    // The store's queries (`store::samples`), first with the window they try first on
    // PostgreSQL (the day before the instance was last seen), each naming the project (the
    // tenant filter, `Connection::project_filter`).
    let window = "AND project = 'bench' AND sampled_at_ms >= (SELECT last_seen_ms FROM instances
        WHERE instance_id = 'vm-0042' AND project = 'bench') - 86400000";
    for (name, sql) in [
        (
            "611711 newest sample",
            format!(
                "SELECT MAX(sampled_at_ms) FROM process_samples WHERE instance_id = 'vm-0042' {window}"
            ),
        ),
        (
            "611711 its processes",
            format!(
                "SELECT * FROM process_samples WHERE instance_id = 'vm-0042'
                 AND sampled_at_ms = {} AND project = 'bench' ORDER BY cpu_pct DESC, pid LIMIT 10",
                first_ms + (samples_per_vm as i64 - 1) * step_ms
            ),
        ),
        (
            "611611",
            format!(
                "SELECT * FROM vm_samples WHERE instance_id = 'vm-0042' {window}
                 ORDER BY sampled_at_ms DESC, id DESC LIMIT 1"
            ),
        ),
        (
            "611712",
            format!(
                "SELECT * FROM process_samples WHERE instance_id = 'vm-0042' AND cmd = 'proc-7'
                 {window} ORDER BY sampled_at_ms DESC, id DESC LIMIT 10"
            ),
        ),
    ] {
        println!("EXPLAIN {name}:");
        for r in client
            .query(&format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}"), &[])
            .await?
        {
            let line: String = r.get(0);
            println!("    {line}");
        }
    }
    Ok((samples_per_vm * VMS * PROCS, secs))
}

/// A new database in the cluster of `base`: (its name, its URL).
async fn fresh_pg_db(base: &str) -> Result<(String, String)> {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let name = format!("bench_q_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut url = url::Url::parse(base)?;
    url.set_path(&name);
    Ok((name, url.to_string()))
}

async fn drop_pg_db(base: &str, name: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    Ok(())
}

/// The bench instances' key (all of project "bench").
fn key(instance_id: &str) -> store::InstanceKey<'_> {
    store::InstanceKey {
        project: "bench",
        instance_id,
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One HTTP/1.1 POST on a fresh connection (what a portal does), returning the body.
fn post(addr: &str, body: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "POST /wsgi_app.py HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let i = out.find("\r\n\r\n").context("no HTTP body")?;
    Ok(out[i + 4..].to_string())
}

fn get(addr: &str, path: &str, sid: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {sid}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let i = out.find("\r\n\r\n").context("no HTTP body")?;
    Ok(out[i + 4..].to_string())
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let rows = env("VMMON_BENCH_ROWS", 5_000_000);
    let calls = env("VMMON_BENCH_CALLS", 300);
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pg_base = std::env::var("VMMON_BENCH_PG_URL").ok();
    let pg = match &pg_base {
        Some(base) => Some(rt.block_on(fresh_pg_db(base))?),
        None => None,
    };
    let store = match &pg {
        Some((_, url)) => rt.block_on(Store::open_location(&store::StoreLocation::Postgres(
            url.clone(),
        )))?,
        None => Store::open(dir.path())?,
    };
    let res = run(
        &rt,
        dir.path(),
        store,
        pg.as_ref().map(|(_, url)| url.as_str()),
        rows,
        calls,
    );
    if let (Some(base), Some((name, _))) = (&pg_base, &pg) {
        rt.block_on(drop_pg_db(base, name))?;
    }
    res
}

fn run(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    store: Store,
    pg_url: Option<&str>,
    rows: usize,
    calls: usize,
) -> Result<()> {
    let token = AgentTokenRow {
        id: 1,
        project: "bench".into(),
        region: "r1".into(),
        party: "x".into(),
        created_at_ms: 0,
        revoked_at_ms: None,
        cdn_edge: false,
    };
    rt.block_on(store.write(move |c| {
        for v in 0..VMS {
            store::instances::register(
                c,
                &format!("vm-{v:04}"),
                &token,
                &Inventory::default(),
                30,
                NOW_MS,
                store::instances::RegisterLimits::UNLIMITED,
            )?;
        }
        Ok(())
    }))?;
    rt.block_on(admin::add_user(&store, "admin", "bench-password", None))?;
    let (n, fill_secs, bytes) = match pg_url {
        Some(url) => {
            rt.block_on(store.write(|c| {
                for d in 0..=DAYS {
                    store::partitions::ensure_day(c, NOW_MS - d * 86_400_000)?;
                }
                Ok(())
            }))?;
            let (n, secs) = rt.block_on(fill_pg(url, rows))?;
            let size = rt.block_on(store.read(store::database_size))?.unwrap_or(0);
            (n, secs, size)
        }
        None => {
            let (n, secs) = fill(dir, rows)?;
            (n, secs, std::fs::metadata(dir.join(store::DB_FILE))?.len())
        }
    };
    let backend = if pg_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "store ({backend}): {n} process rows from {VMS} VMs over {DAYS} days, filled in {fill_secs:.0} s"
    );
    println!(
        "store size: {:.1} MB per million process rows ({:.2} GB total)",
        bytes as f64 / 1e6 / (n as f64 / 1e6),
        bytes as f64 / 1e9
    );

    let app = App::new(CollectorConfig::default(), store.clone());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let running = rt.block_on(server::start(app, listener))?;
    let addr = running.local_addr.to_string();
    let login = post(
        &addr,
        r#"{"method":458753,"data":{"user_name":"admin","password":"bench-password"}}"#,
    )?;
    let sid = serde_json::from_str::<serde_json::Value>(&login)?["session_id"]
        .as_str()
        .context("login")?
        .to_string();

    let mut rng = rand::thread_rng();
    type Floor = Box<dyn Fn(&store::Connection, &str) -> store::Result<usize> + Send + Sync>;
    let queries: Vec<(&str, String, Floor)> = vec![
        ("611711 (top 10 processes of the newest sample)", r#"{"method":611711,"data":{"instance_id":"ID"},"session_id":"SID","limit":10}"#.into(),
            Box::new(|c, id| Ok(store::samples::latest_processes(c, key(id), 10)?.len()))),
        ("611611 (newest VM record)", r#"{"method":611611,"data":{"instance_id":"ID"},"session_id":"SID","limit":1}"#.into(),
            Box::new(|c, id| Ok(store::samples::latest_vm(c, key(id), 1)?.len()))),
        ("611712 (one process's newest 10 records)", r#"{"method":611712,"data":{"instance_id":"ID"},"session_id":"SID","limit":10,"proc_name":"proc-7"}"#.into(),
            Box::new(|c, id| Ok(store::samples::process_history(c, key(id), "proc-7", 10)?.len()))),
    ];
    // The floor's connection: a read-only SQLite connection, or a pooled PostgreSQL one (the
    // store's own read path; the query is timed inside it).
    let reader = match pg_url {
        Some(_) => None,
        None => Some(store::Connection::Sqlite(Connection::open_with_flags(
            dir.join(store::DB_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?)),
    };
    let queries: Vec<(&str, String, std::sync::Arc<Floor>)> = queries
        .into_iter()
        .map(|(n, t, f)| (n, t, std::sync::Arc::new(f)))
        .collect();
    let timed = |floor: &std::sync::Arc<Floor>, id: String| -> Result<(usize, Duration)> {
        match &reader {
            Some(c) => {
                let t = Instant::now();
                let got = floor(c, &id)?;
                Ok((got, t.elapsed()))
            }
            None => {
                let f = floor.clone();
                Ok(rt.block_on(store.read(move |c| {
                    let t = Instant::now();
                    let got = f(c, &id)?;
                    Ok((got, t.elapsed()))
                }))?)
            }
        }
    };
    for (name, template, floor) in &queries {
        let mut api = Vec::with_capacity(calls);
        let mut direct = Vec::with_capacity(calls);
        for _ in 0..calls {
            let id = format!("vm-{:04}", rng.gen_range(0..VMS));
            let (got, took) = timed(floor, id.clone())?;
            direct.push(took);
            anyhow::ensure!(got > 0, "{name}: no rows for {id}");
            let body = template.replace("SID", &sid).replace("ID", &id);
            let t = Instant::now();
            let answer = post(&addr, &body)?;
            api.push(t.elapsed());
            anyhow::ensure!(answer.contains("\"status_code\":1"), "{name}: {answer}");
        }
        let (a50, a99) = (percentile(&mut api, 0.5), percentile(&mut api, 0.99));
        let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
        println!(
            "{name}: API p50 {:.2} ms p99 {:.2} ms | floor (store query only) p50 {:.3} ms p99 {:.3} ms | p99 ratio {:.1}",
            ms(a50),
            ms(a99),
            ms(d50),
            ms(d99),
            ms(a99) / ms(d99).max(1e-6)
        );
    }
    // GET /metrics over the 1,000 VMs: the whole exposition vs its store snapshot alone.
    let mut api = Vec::new();
    let mut direct = Vec::new();
    let fleet_floor: std::sync::Arc<Floor> =
        std::sync::Arc::new(Box::new(|c, _| Ok(store::samples::fleet(c, None)?.len())));
    for _ in 0..20 {
        let (got, took) = timed(&fleet_floor, String::new())?;
        direct.push(took);
        anyhow::ensure!(got == VMS, "fleet of {got}");
        let t = Instant::now();
        let text = get(&addr, "/metrics", &sid)?;
        api.push(t.elapsed());
        anyhow::ensure!(text.contains("vmmon_vm_cpu_usage_ratio{"), "{text:.200}");
    }
    let (a50, a99) = (percentile(&mut api, 0.5), percentile(&mut api, 0.99));
    let d50 = percentile(&mut direct, 0.5);
    println!(
        "GET /metrics ({VMS} VMs): p50 {:.1} ms p99 {:.1} ms | floor (store snapshot only) p50 {:.1} ms | ratio {:.1}",
        ms(a50),
        ms(a99),
        ms(d50),
        ms(a50) / ms(d50).max(1e-6)
    );
    rt.block_on(running.stop());
    Ok(())
}
