//! Every check on what an agent sends, in one place: inventories, batch shape and figures, sample
//! times, CDN deltas, and which token may send what. Pure functions of the input (and `now`),
//! run by [`super::ingest`] and the RPC's `register` before anything is stored.

use vmmon_common::vocab::{DAY_MS, cap_cmd};
use vmmon_common::wire::{
    CDN_BUCKET_SECS, Inventory, MAX_CDN_DELTAS_PER_BATCH, MAX_CDN_FILES_PER_BATCH,
    MAX_PROCESSES_PER_SAMPLE, MAX_SAMPLES_PER_BATCH, ProcessSample, ReportBatch, VmSample,
    valid_cdn_domain,
};

use crate::store::AgentTokenRow;

/// Longest inventory string (hostname, OS, agent version) and IP address text.
const MAX_INVENTORY_TEXT: usize = 255;
/// Most LAN or WAN addresses one inventory may list.
const MAX_INVENTORY_IPS: usize = 64;
/// Samples stamped further ahead of the collector's clock than this are refused.
const MAX_FUTURE_MS: i64 = DAY_MS;

/// An agent uid: 1–64 of `[A-Za-z0-9-]` (a UUID in practice).
pub fn validate_agent_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty()
        || uid.len() > 64
        || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("agent_uid must be 1-64 letters, digits or '-'".into());
    }
    Ok(())
}

/// Refuses CDN traffic from a token that is not a CDN edge token.
pub fn check_cdn_permission(token: &AgentTokenRow, batch: &ReportBatch) -> Result<(), String> {
    if !token.cdn_edge && (!batch.cdn.is_empty() || batch.cdn_tail.is_some()) {
        return Err(
            "this agent token may not report CDN traffic: use a CDN edge token \
             (vmmon-collector token create --cdn)"
                .into(),
        );
    }
    Ok(())
}

/// Checks what an inventory may hold before it is stored and served.
pub fn validate_inventory(inv: &Inventory) -> Result<(), String> {
    for (name, v) in [
        ("hostname", &inv.hostname),
        ("os", &inv.os),
        ("agent_version", &inv.agent_version),
    ] {
        if v.len() > MAX_INVENTORY_TEXT {
            return Err(format!(
                "inventory {name} is longer than {MAX_INVENTORY_TEXT} bytes"
            ));
        }
    }
    if inv.net_interfaces_counted.len() > MAX_INVENTORY_IPS
        || inv
            .net_interfaces_counted
            .iter()
            .any(|n| n.is_empty() || n.len() > 64 || n.contains(','))
    {
        return Err(format!(
            "inventory net_interfaces_counted must be at most {MAX_INVENTORY_IPS} interface names"
        ));
    }
    for (name, ips) in [("lan_ips", &inv.lan_ips), ("wan_ips", &inv.wan_ips)] {
        if ips.len() > MAX_INVENTORY_IPS || ips.iter().any(|ip| ip.len() > 64 || ip.contains(',')) {
            return Err(format!(
                "inventory {name} must be at most {MAX_INVENTORY_IPS} addresses"
            ));
        }
    }
    // Stored as SQLite integers (i64).
    if inv.mem_total_bytes > i64::MAX as u64 || inv.disk_total_bytes > i64::MAX as u64 {
        return Err("inventory sizes are out of range".into());
    }
    Ok(())
}

/// Refuses samples the store cannot keep consistently: stamped far in the future, or older than
/// raw-sample retention (their batch ids would no longer be remembered, so a resend could not
/// be recognised).
pub fn validate_times(batch: &ReportBatch, now_ms: i64, retention_days: u32) -> Result<(), String> {
    for s in &batch.samples {
        let at = s.vm.sampled_at_ms;
        if at > now_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(format!(
                "sample at {at} ms is more than a day ahead of the collector's clock"
            ));
        }
        if retention_days > 0 && at < now_ms - i64::from(retention_days) * DAY_MS {
            return Err(format!(
                "sample at {at} ms is older than the {retention_days}-day raw retention"
            ));
        }
    }
    // CDN buckets are billed by the log lines' own times: they must lie between the retention
    // (31 days when raw samples are kept forever) and a few minutes ahead.
    let window_days = if retention_days > 0 {
        i64::from(retention_days)
    } else {
        CDN_MAX_AGE_DAYS
    };
    let oldest = now_ms / 1000 - window_days * 86_400;
    let newest = now_ms / 1000 + CDN_MAX_AHEAD_SECS;
    if let Some(d) = batch
        .cdn
        .iter()
        .find(|d| d.bucket_start < oldest || d.bucket_start > newest)
    {
        return Err(format!(
            "CDN bucket at {} s is outside the accepted window ({window_days} days back to \
             {CDN_MAX_AHEAD_SECS} s ahead of the collector's clock)",
            d.bucket_start
        ));
    }
    Ok(())
}

/// CDN buckets may start at most this far ahead of the collector's clock, seconds.
pub const CDN_MAX_AHEAD_SECS: i64 = 600;
/// Oldest CDN bucket accepted when raw retention is off, days.
pub const CDN_MAX_AGE_DAYS: i64 = 31;

/// Cuts oversized process names instead of refusing the whole batch for one of them.
pub fn cap_cmds(batch: &mut ReportBatch) {
    for p in batch
        .samples
        .iter_mut()
        .flat_map(|s| s.processes.iter_mut().flatten())
    {
        cap_cmd(&mut p.cmd);
    }
}

/// Largest percentage accepted; values in (100, [`PCT_TOLERANCE`]] are an agent's rounding and
/// are clamped to 100 by [`clamp_percentages`], anything above is refused.
pub const PCT_TOLERANCE: f64 = 100.5;
/// Largest rate accepted, KB/s (about 10 TB/s: no NIC or disk of a VM comes near it).
pub const MAX_RATE_KIB_PER_SEC: f64 = 1e10;
/// Latest process start or exit time accepted, epoch seconds (year 5138: a sanity bound only).
const MAX_EPOCH_SECS: f64 = 1e11;

/// Clamps percentages in (100, [`PCT_TOLERANCE`]] to 100 (rounding in the agent, e.g. a process
/// table summed over a tick), so they never exceed 100 when served.
pub fn clamp_percentages(batch: &mut ReportBatch) {
    let clamp = |v: &mut f64| {
        if *v > 100.0 && *v <= PCT_TOLERANCE {
            *v = 100.0;
        }
    };
    for s in &mut batch.samples {
        clamp(&mut s.vm.cpu_pct);
        if let Some(steal) = s.vm.cpu_steal_pct.as_mut() {
            clamp(steal);
        }
        clamp(&mut s.vm.mem_pct);
        for p in s.processes.iter_mut().flatten() {
            clamp(&mut p.cpu_pct);
            clamp(&mut p.mem_pct);
        }
    }
}

/// `Err(name)` unless `v` is finite and within `0..=max`.
fn figure(name: &'static str, v: f64, max: f64) -> Result<(), &'static str> {
    if v.is_finite() && (0.0..=max).contains(&v) {
        Ok(())
    } else {
        Err(name)
    }
}

fn vm_figures(vm: &VmSample) -> Result<(), &'static str> {
    figure("cpu_pct", vm.cpu_pct, PCT_TOLERANCE)?;
    if let Some(steal) = vm.cpu_steal_pct {
        figure("cpu_steal_pct", steal, PCT_TOLERANCE)?;
    }
    figure("mem_pct", vm.mem_pct, PCT_TOLERANCE)?;
    for (name, v) in [
        ("disk_read_kib_per_sec", vm.disk_read_kib_per_sec),
        ("disk_write_kib_per_sec", vm.disk_write_kib_per_sec),
        ("net_in_kib_per_sec", vm.net_in_kib_per_sec),
        ("net_out_kib_per_sec", vm.net_out_kib_per_sec),
    ] {
        figure(name, v, MAX_RATE_KIB_PER_SEC)?;
    }
    for (name, v) in [
        ("rx_bytes_total", vm.rx_bytes_total),
        ("tx_bytes_total", vm.tx_bytes_total),
        ("elapsed_ms", vm.elapsed_ms),
    ] {
        if i64::try_from(v).is_err() {
            return Err(name);
        }
    }
    Ok(())
}

fn process_figures(p: &ProcessSample) -> Result<(), &'static str> {
    figure("cpu_pct", p.cpu_pct, PCT_TOLERANCE)?;
    figure("mem_pct", p.mem_pct, PCT_TOLERANCE)?;
    for (name, v) in [
        ("disk_read_kib_per_sec", p.disk_read_kib_per_sec),
        ("disk_write_kib_per_sec", p.disk_write_kib_per_sec),
        ("net_in_kib_per_sec", p.net_in_kib_per_sec),
        ("net_out_kib_per_sec", p.net_out_kib_per_sec),
    ] {
        figure(name, v, MAX_RATE_KIB_PER_SEC)?;
    }
    figure("start_time", p.start_time, MAX_EPOCH_SECS)?;
    if let Some(t) = p.shutdown_time {
        figure("shutdown_time", t, MAX_EPOCH_SECS)?;
    }
    Ok(())
}

/// Refuses a batch that can never be stored: empty, too large, or with a figure that is
/// negative, not finite or out of range (percentages above 100, rates above
/// [`MAX_RATE_KIB_PER_SEC`], cumulative byte counters above 2^63 − 1, which the store keeps as
/// signed 64-bit integers). The message names the figure.
pub fn validate_batch(batch: &ReportBatch) -> Result<(), String> {
    if batch.samples.is_empty() {
        return Err("no samples".into());
    }
    validate_cdn(batch)?;
    if batch.samples.len() > MAX_SAMPLES_PER_BATCH {
        return Err(format!("more than {MAX_SAMPLES_PER_BATCH} samples"));
    }
    for s in &batch.samples {
        let vm = &s.vm;
        let at = vm.sampled_at_ms;
        vm_figures(vm).map_err(|name| {
            format!("VM sample at {at}: {name} is negative, not finite or out of range")
        })?;
        if at <= 0 {
            return Err("sample time must be positive epoch milliseconds".into());
        }
        let Some(procs) = &s.processes else { continue };
        if procs.len() > MAX_PROCESSES_PER_SAMPLE {
            return Err(format!(
                "more than {MAX_PROCESSES_PER_SAMPLE} processes in one sample"
            ));
        }
        for p in procs {
            process_figures(p).map_err(|name| {
                format!(
                    "process {} at {at}: {name} is negative, not finite or out of range",
                    p.pid
                )
            })?;
        }
    }
    Ok(())
}

/// Refuses a batch whose CDN part cannot be stored.
pub fn validate_cdn(batch: &ReportBatch) -> Result<(), String> {
    if batch.cdn.len() > MAX_CDN_DELTAS_PER_BATCH {
        return Err(format!(
            "more than {MAX_CDN_DELTAS_PER_BATCH} CDN bucket deltas"
        ));
    }
    let fits = |v: u64| i64::try_from(v).is_ok();
    for d in &batch.cdn {
        if !valid_cdn_domain(&d.domain) {
            return Err("a CDN delta has an invalid domain".into());
        }
        if d.bucket_start <= 0 || d.bucket_start % CDN_BUCKET_SECS != 0 {
            return Err(format!(
                "CDN bucket start {} is not a positive multiple of {CDN_BUCKET_SECS} seconds",
                d.bucket_start
            ));
        }
        if !fits(d.bytes) || !fits(d.requests) || d.hit_bytes > d.bytes {
            return Err(format!(
                "CDN delta of {} has out-of-range bytes or hit bytes above bytes",
                d.domain
            ));
        }
    }
    if let Some(tail) = &batch.cdn_tail {
        if tail.files.len() > MAX_CDN_FILES_PER_BATCH {
            return Err(format!(
                "more than {MAX_CDN_FILES_PER_BATCH} access-log positions"
            ));
        }
        if !fits(tail.malformed_lines_total) || tail.files.iter().any(|f| f.log.len() > 4096) {
            return Err("out-of-range access-log positions".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmmon_common::vocab::MAX_CMD_BYTES;
    use vmmon_common::wire::{
        CdnBucketDelta, CdnTailState, Inventory, ProcessSample, Sample, VmSample,
    };

    fn batch(at_ms: i64, cmd: &str) -> ReportBatch {
        serde_json::from_value(serde_json::json!({
            "batch_id": uuid::Uuid::new_v4(), "instance_id": "i", "seq": 0, "dropped_samples_total": 0,
            "samples": [Sample {
                vm: VmSample {
                    sampled_at_ms: at_ms, elapsed_ms: 1000, cpu_pct: 1.0, mem_pct: 1.0, proc_count: 1,
                    ..VmSample::default()
                },
                processes: Some(vec![ProcessSample {
                    pid: 1, start_time: 1.0, cmd: cmd.into(), cpu_pct: 0.0, mem_pct: 0.0,
                    disk_read_kib_per_sec: 0.0, disk_write_kib_per_sec: 0.0, net_in_kib_per_sec: 0.0,
                    net_out_kib_per_sec: 0.0, shutdown_time: None,
                    unreadable: Vec::new(),
                }]),
            }],
        }))
        .unwrap()
    }

    #[test]
    fn oversized_cmd_is_cut_not_refused() {
        let mut b = batch(1_000, &"x".repeat(10_000));
        cap_cmds(&mut b);
        assert!(validate_batch(&b).is_ok());
        assert_eq!(
            b.samples[0].processes.as_ref().unwrap()[0].cmd.len(),
            MAX_CMD_BYTES
        );
    }

    #[test]
    fn out_of_range_figures_are_refused_and_rounding_is_clamped() {
        // (what to change, the figure the message must name; None = accepted)
        type Edit = fn(&mut ReportBatch);
        let cases: &[(Edit, Option<&str>)] = &[
            (|_| {}, None),
            (
                |b| b.samples[0].vm.rx_bytes_total = u64::MAX,
                Some("rx_bytes_total"),
            ),
            (
                |b| b.samples[0].vm.tx_bytes_total = 1 << 63,
                Some("tx_bytes_total"),
            ),
            (|b| b.samples[0].vm.tx_bytes_total = (1 << 63) - 1, None),
            (|b| b.samples[0].vm.cpu_pct = 1e308, Some("cpu_pct")),
            (|b| b.samples[0].vm.cpu_steal_pct = Some(50.0), None),
            (
                |b| b.samples[0].vm.cpu_steal_pct = Some(-1.0),
                Some("cpu_steal_pct"),
            ),
            (|b| b.samples[0].vm.cpu_pct = 100.4, None),
            (|b| b.samples[0].vm.cpu_pct = 100.6, Some("cpu_pct")),
            (|b| b.samples[0].vm.mem_pct = f64::NAN, Some("mem_pct")),
            (
                |b| b.samples[0].vm.net_in_kib_per_sec = 2e10,
                Some("net_in_kib_per_sec"),
            ),
            (
                |b| b.samples[0].vm.disk_read_kib_per_sec = -1.0,
                Some("disk_read_kib_per_sec"),
            ),
            (
                |b| b.samples[0].processes.as_mut().unwrap()[0].cpu_pct = 250.0,
                Some("cpu_pct"),
            ),
            (
                |b| b.samples[0].processes.as_mut().unwrap()[0].start_time = f64::INFINITY,
                Some("start_time"),
            ),
            (
                |b| b.samples[0].processes.as_mut().unwrap()[0].shutdown_time = Some(-5.0),
                Some("shutdown_time"),
            ),
        ];
        for (i, (edit, want)) in cases.iter().enumerate() {
            let mut b = batch(1_000, "sshd");
            edit(&mut b);
            clamp_percentages(&mut b);
            match (validate_batch(&b), want) {
                (Ok(()), None) => {
                    assert!(b.samples[0].vm.cpu_pct <= 100.0, "case {i}: clamped");
                }
                (Err(msg), Some(name)) => {
                    assert!(
                        msg.contains(&format!("{name} is negative")),
                        "case {i}: {msg}"
                    )
                }
                (got, want) => panic!("case {i}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn cdn_buckets_outside_the_window_are_refused() {
        let now = 100 * DAY_MS;
        let secs = now / 1000;
        for (start, ok) in [
            (secs / 300 * 300, true),
            (secs - 29 * 86_400, true),
            (secs - 31 * 86_400, false),
            (300, false),            // 1970
            (32_503_680_000, false), // year 3000
            (secs + CDN_MAX_AHEAD_SECS - 300, true),
        ] {
            let mut b = cdn_batch(vec![CdnBucketDelta {
                domain: "a.com".into(),
                bucket_start: start,
                bytes: 1,
                hit_bytes: 0,
                requests: 1,
            }]);
            b.samples[0].vm.sampled_at_ms = now;
            assert_eq!(validate_times(&b, now, 30).is_ok(), ok, "{start}");
        }
    }

    #[test]
    fn samples_outside_the_time_window_are_refused() {
        let now = 100 * 86_400_000;
        assert!(validate_times(&batch(now, "a"), now, 30).is_ok());
        assert!(
            validate_times(&batch(now - 31 * 86_400_000, "a"), now, 30)
                .unwrap_err()
                .contains("retention")
        );
        assert!(
            validate_times(&batch(now - 31 * 86_400_000, "a"), now, 0).is_ok(),
            "0 keeps forever"
        );
        assert!(
            validate_times(&batch(now + 2 * 86_400_000, "a"), now, 30)
                .unwrap_err()
                .contains("ahead")
        );
    }

    #[test]
    fn inventory_limits() {
        assert!(validate_inventory(&Inventory::default()).is_ok());
        let long = Inventory {
            hostname: "h".repeat(300),
            ..Inventory::default()
        };
        assert!(validate_inventory(&long).is_err());
        let many = Inventory {
            wan_ips: vec!["1.2.3.4".into(); 65],
            ..Inventory::default()
        };
        assert!(validate_inventory(&many).is_err());
        let huge = Inventory {
            mem_total_bytes: u64::MAX,
            ..Inventory::default()
        };
        assert!(validate_inventory(&huge).is_err());
    }

    fn cdn_batch(cdn: Vec<CdnBucketDelta>) -> ReportBatch {
        let mut b = batch(1_000, "nginx");
        b.cdn = cdn;
        b.cdn_tail = Some(CdnTailState::default());
        b
    }

    #[test]
    fn batch_cdn_parts_are_validated() {
        let d = |domain: &str, bucket_start: i64, bytes: u64, hit_bytes: u64| CdnBucketDelta {
            domain: domain.into(),
            bucket_start,
            bytes,
            hit_bytes,
            requests: 1,
        };
        assert!(validate_cdn(&cdn_batch(vec![d("a.com", 600, 10, 10)])).is_ok());
        assert!(validate_cdn(&cdn_batch(vec![d("A.com", 600, 10, 1)])).is_err());
        assert!(validate_cdn(&cdn_batch(vec![d("a.com", 601, 10, 1)])).is_err());
        assert!(validate_cdn(&cdn_batch(vec![d("a.com", 0, 10, 1)])).is_err());
        assert!(validate_cdn(&cdn_batch(vec![d("a.com", 600, 10, 11)])).is_err());
        assert!(validate_cdn(&cdn_batch(vec![d("a.com", 600, u64::MAX, 1)])).is_err());
        let many = (0..=MAX_CDN_DELTAS_PER_BATCH)
            .map(|i| d("a.com", 300 * (i as i64 + 1), 1, 0))
            .collect();
        assert!(validate_cdn(&cdn_batch(many)).is_err());
    }
}
