//! Bench: `/mana_api/flow_monthly` over 12 months for a project of 1,000 VMs.
//!
//! `cargo bench -p vmmon-collector --bench flow_monthly`
//!
//! Setup: 1,000 VMs of project `p-bench` in 2 regions report through the real ingest path
//! (`ingest::store_batch`: raw insert and rollup) for one day at a 10-minute interval;
//! the other 364 days of the year are filled into the same rollup directly, one row per region
//! and bucket as ingest would leave them (the rollup holds one row per project, region and
//! 10-minute bucket however many VMs report, so its size does not grow with the VM count). Twenty
//! other projects fill the table around it. Then the answer (store query, monthly fold and JSON
//! serialisation, i.e. everything the handler does after auth) is timed for the whole year, for
//! one month, and for one region.

use std::time::{Duration, Instant};

use anyhow::Context;
use vmmon_collector::bandwidth::BUCKET_MS;
use vmmon_collector::http::mana;
use vmmon_collector::store::Connection;
use vmmon_collector::store::{self, AgentTokenRow, Store, bandwidth::Filter};
use vmmon_common::wire::{Inventory, ReportBatch, Sample, VmSample};

const VMS: usize = 1_000;
const REGIONS: [&str; 2] = ["region-a", "region-b"];
const OTHER_PROJECTS: usize = 20;
/// 2025-01-01 00:00 UTC.
const YEAR_START: i64 = 1_735_689_600_000;
const BUCKETS_PER_YEAR: i64 = 365 * 144;
const RUNS: usize = 50;

fn sample(at_ms: i64, rx: u64, tx: u64) -> Sample {
    Sample {
        vm: VmSample {
            sampled_at_ms: at_ms,
            elapsed_ms: 600_000,
            cpu_pct: 1.0,
            mem_pct: 1.0,
            rx_bytes_total: rx,
            tx_bytes_total: tx,
            proc_count: 100,
            ..VmSample::default()
        },
        processes: None,
    }
}

/// A deterministic pseudo-random traffic figure for a bucket.
fn traffic(seed: i64) -> i64 {
    let x = (seed as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(17);
    (x % 50_000_000) as i64
}

fn populate(conn: &Connection) -> anyhow::Result<Duration> {
    let now = YEAR_START + BUCKETS_PER_YEAR * BUCKET_MS;
    // Real ingest: one day of 10-minute samples from 1,000 VMs (144,000 samples).
    conn.execute_batch("BEGIN")?;
    for vm in 0..VMS {
        let token = AgentTokenRow {
            id: 1,
            project: "p-bench".into(),
            region: REGIONS[vm % REGIONS.len()].into(),
            party: "acme".into(),
            created_at_ms: 0,
            revoked_at_ms: None,
            cdn_edge: false,
        };
        store::instances::register(
            conn,
            &format!("vm-{vm:04}"),
            &token,
            &Inventory::default(),
            600,
            0,
            store::instances::RegisterLimits::UNLIMITED,
        )?;
    }
    conn.execute_batch("COMMIT")?;
    let ingest_started = Instant::now();
    conn.execute_batch("BEGIN")?;
    let mut samples = 0u64;
    for step in 0..=144i64 {
        for vm in 0..VMS {
            let at = YEAR_START + step * BUCKET_MS + (vm as i64 * 577) % BUCKET_MS;
            let rx = (step as u64) * (1_000 + vm as u64);
            let batch = ReportBatch {
                batch_id: uuid::Uuid::new_v4(),
                instance_id: format!("vm-{vm:04}"),
                seq: step as u64,
                samples: vec![sample(at, rx, rx / 3)],
                dropped_samples_total: 0,
                cdn: Vec::new(),
                cdn_tail: None,
            };
            vmmon_collector::ingest::store_batch(conn, &batch, now)?;
            samples += 1;
        }
    }
    conn.execute_batch("COMMIT")?;
    let ingest = ingest_started.elapsed();
    println!(
        "ingest: {samples} one-sample batches (raw insert + rollup) in {:.2} s = {:.1} µs per batch",
        ingest.as_secs_f64(),
        ingest.as_secs_f64() * 1e6 / samples as f64
    );
    // The rest of the year, as the rollup would hold it.
    conn.execute_batch("BEGIN")?;
    for b in 145..BUCKETS_PER_YEAR {
        let t = YEAR_START + b * BUCKET_MS;
        for (i, region) in REGIONS.iter().enumerate() {
            let seed = b * 7 + i as i64;
            store::bandwidth::add_bucket_bytes(
                conn,
                "p-bench",
                region,
                t,
                traffic(seed),
                traffic(seed + 1),
            )?;
        }
        for p in 0..OTHER_PROJECTS {
            store::bandwidth::add_bucket_bytes(
                conn,
                &format!("p-other-{p:02}"),
                "region-a",
                t,
                traffic(b + p as i64),
                0,
            )?;
        }
    }
    conn.execute_batch("COMMIT")?;
    conn.execute_batch("ANALYZE")?;
    Ok(ingest)
}

fn time(label: &str, conn: &Connection, tz: chrono_tz::Tz, filter: &Filter) -> anyhow::Result<()> {
    let mut times = Vec::with_capacity(RUNS);
    let mut entries = 0;
    let mut bytes = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let answer = mana::monthly_answer(conn, tz, filter)?;
        let body = serde_json::to_vec(&answer)?;
        times.push(t.elapsed());
        entries = answer.monthly_data.len();
        bytes = body.len();
    }
    times.sort();
    // Floor: only reading the daily rollup rows the answer folds (no month fold, no JSON).
    let mut floor = Vec::with_capacity(RUNS);
    let Connection::Sqlite(raw) = conn else {
        anyhow::bail!("the floor reads SQLite directly");
    };
    for _ in 0..RUNS {
        let t = Instant::now();
        let mut stmt = raw.prepare_cached(
            "SELECT region, day_start_ms, total_in, total_out, max_in, max_in_at_ms, max_out, max_out_at_ms
             FROM bandwidth_days WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR region = ?2)
               AND (?3 IS NULL OR day_start_ms >= ?3) AND (?4 IS NULL OR day_start_ms < ?4)",
        )?;
        let mut rows = stmt.query(rusqlite::params![
            filter.project,
            filter.region,
            filter.from_ms,
            filter.to_ms
        ])?;
        let mut n = 0i64;
        while let Some(r) = rows.next()? {
            n += r.get::<_, i64>(2)?;
        }
        std::hint::black_box(n);
        floor.push(t.elapsed());
    }
    floor.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label}: {entries} entries, {bytes} B; median {:.2} ms, p90 {:.2} ms, max {:.2} ms over {RUNS} runs \
         | floor (read the daily rollup rows) median {:.2} ms | ratio {:.1}",
        ms(times[RUNS / 2]),
        ms(times[RUNS * 9 / 10]),
        ms(times[RUNS - 1]),
        ms(floor[RUNS / 2]),
        ms(times[RUNS / 2]) / ms(floor[RUNS / 2]).max(1e-6)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this target without it, and
    // then it only says how to run it, so the test suite stays quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "flow_monthly bench: run with `cargo bench -p vmmon-collector --bench flow_monthly`"
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path()).context("open store")?;
    let db_path = store.path().context("a SQLite store")?.to_path_buf();
    let raw = rusqlite::Connection::open(&db_path)?;
    raw.busy_timeout(Duration::from_secs(30))?;
    let conn = Connection::Sqlite(raw);
    let setup = Instant::now();
    populate(&conn)?;
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM bandwidth_buckets", [0; 0], |r| {
        r.get(0)
    })?;
    let days: i64 = conn.query_row("SELECT COUNT(*) FROM bandwidth_days", [0; 0], |r| r.get(0))?;
    println!(
        "setup: {rows} bucket rows, {days} day rows in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let reader = Connection::Sqlite(rusqlite::Connection::open_with_flags(
        &db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?);
    let tz: chrono_tz::Tz = "Asia/Shanghai"
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let project = Filter {
        project: Some("p-bench".into()),
        ..Filter::default()
    };
    time("12 months, all regions (no month)", &reader, tz, &project)?;
    let region = Filter {
        region: Some("region-a".into()),
        ..project.clone()
    };
    time("12 months, one region", &reader, tz, &region)?;
    let (a, b) = vmmon_collector::bandwidth::Month {
        year: 2025,
        month: 7,
    }
    .window(tz)
    .context("month window")?;
    let month = Filter {
        from_ms: Some(a),
        to_ms: Some(b),
        ..project
    };
    time("month=2025-07, all regions", &reader, tz, &month)?;
    time(
        "12 months, every project (admin, no project_id)",
        &reader,
        tz,
        &Filter::default(),
    )?;
    Ok(())
}
