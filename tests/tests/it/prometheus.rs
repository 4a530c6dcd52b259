//! The real Prometheus (Debian's `prometheus` package; `.ci/run` installs it) scrapes a
//! collector fed by a real agent, and its HTTP API answers the same figures as 611611 for the
//! same sample; `promtool check metrics` accepts the exposition. Without the binaries this test
//! fails and says how to install them (`scripts/test.sh` skips it visibly instead).

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(90);
const SCRAPE_TOKEN: &str = "prometheus-scrape-token-1";

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One instant-query value from Prometheus, if the series exists yet.
fn query(prom: &str, q: &str) -> Option<f64> {
    let url = format!("http://{prom}/api/v1/query");
    let v: Value = ureq::get(&url)
        .query("query", q)
        .call()
        .ok()?
        .into_json()
        .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_same_figures_as_611611() {
    assert!(
        which("prometheus") && which("promtool"),
        "needs Debian's prometheus package (apt-get install prometheus; .ci/run installs it)"
    );
    let (_cfg_dir, cfg) = collector_config(&format!("metrics_token = \"{SCRAPE_TOKEN}\"\n"));
    let c = Collector::start_with(&["--config", cfg.to_str().unwrap()]);
    let token = c.create_token("p-prom", "r1");
    let mut agent = Agent::start(&c, &token, "vm-prom-1", 1, &[]);
    let sid = c.admin_session();
    let newest = |c: &Collector| {
        c.legacy(
            &json!({"method": 611611, "session_id": sid, "data": {"instance_id": "vm-prom-1"}}),
        )["data"][0]
            .clone()
    };
    wait_for(T, "two samples from the agent", || {
        let v = c.legacy(&json!({"method": 611611, "session_id": sid, "limit": 2,
            "data": {"instance_id": "vm-prom-1"}}));
        (v["data"].as_array().map_or(0, Vec::len) == 2).then_some(())
    });
    // Freeze the figures: after the agent stops, its newest sample stays the newest.
    agent.kill();
    let record = newest(&c);

    // promtool accepts the exposition as served.
    let exposition = ureq::get(&c.url("/metrics"))
        .set("Authorization", &format!("Bearer {SCRAPE_TOKEN}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), exposition.as_bytes()).unwrap();
    drop(promtool.stdin.take());
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The real Prometheus scrapes it with the scrape token.
    let dir = tempfile::tempdir().unwrap();
    let prom_addr = free_addr();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: vmmon\n    \
             authorization:\n      type: Bearer\n      credentials: {SCRAPE_TOKEN}\n    \
             static_configs:\n      - targets: ['{}']\n",
            c.addr
        ),
    )
    .unwrap();
    let prom_child = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = prom_addr.to_string();
    let sel = r#"{instance_id="vm-prom-1",project="p-prom",region="r1"}"#;
    let rx = record["rx_bytes"].as_f64().unwrap();
    wait_for(T, "Prometheus scraping the frozen sample", || {
        (query(&prom, &format!("vmmon_vm_network_receive_bytes_total{sel}")) == Some(rx))
            .then_some(())
    });
    // Same sample: its time, then each figure (611611 rounds to 2 decimals).
    let at = query(
        &prom,
        &format!("vmmon_vm_last_sample_timestamp_seconds{sel}"),
    )
    .unwrap();
    let created = chrono::NaiveDateTime::parse_from_str(
        record["create_date"].as_str().unwrap(),
        "%Y-%m-%dT%H:%M:%S%.f",
    )
    .unwrap()
    .and_utc()
    .timestamp_millis() as f64
        / 1000.0;
    assert!((at - created).abs() < 0.001, "{at} vs {created}");
    let pct = |q: &str| (query(&prom, &format!("{q}{sel}")).unwrap() * 10_000.0).round() / 100.0;
    assert_eq!(
        pct("vmmon_vm_cpu_usage_ratio"),
        record["cpu_util"].as_f64().unwrap()
    );
    assert_eq!(
        pct("vmmon_vm_memory_usage_ratio"),
        record["mem"].as_f64().unwrap()
    );
    assert_eq!(
        query(
            &prom,
            &format!("vmmon_vm_network_transmit_bytes_total{sel}")
        ),
        record["tx_bytes"].as_f64()
    );
    assert_eq!(
        query(&prom, &format!("vmmon_vm_processes{sel}")),
        record["proc"].as_f64()
    );
    assert_eq!(
        query(&prom, r#"up{job="vmmon"}"#),
        Some(1.0),
        "the scrape itself succeeds"
    );
    drop(prom_child);
}
