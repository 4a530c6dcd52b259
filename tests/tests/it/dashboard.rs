//! The operator dashboard (`/ui/`) in a real browser: Debian's `chromium`, driven headless
//! through `chromedriver` (WebDriver, the `fantoccini` crate), against a real collector with a
//! real agent reporting and a burner process, plus 1,000 VMs and a month-long 1 s series fed
//! through the collector's real ingest (the agents' WebSocket JSON-RPC).
//!
//! Walk: login → fleet → VM (charts, start monitoring: status 2) → the burner in the process
//! table → its history chart → bandwidth → rating → CDN; then a tenant who edits the URL to
//! another project's VM sees "unknown instance". Asserted: visible text, that each chart drew
//! (its series colour is on the canvas), no console errors and no CSP violations. Screenshots go
//! to `target/dashboard/`; the speed figures (not asserted) are printed and written to
//! `target/dashboard/figures.txt` for docs/benchmarks.md. Env `VMMON_UI_SERIES_DAYS` (default
//! 1, at most 29: raw samples older than the 30-day retention are refused) sets how many days
//! of 1 s samples the month series holds (29 for the full figure).
//!
//! Without chromium/chromedriver this test fails and says how to install them
//! (`scripts/test.sh` skips it visibly instead).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use vmmon_common::rpc::MonitorApiClient;
use vmmon_common::test_support as ts;
use vmmon_common::wire::{Sample, VmSample};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(120);
const FLEET_VMS: usize = 1_000;
const BURNER: &str = "vmmtest-uiburn";
/// The charts' first two series colours (app.js `COLORS[0]`, `COLORS[1]`), rgb: a line of all
/// zeros is drawn over by the second series, so either colour counts.
const SERIES_RGB: [[u8; 3]; 2] = [[31, 119, 180], [214, 39, 40]];

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn out_dir() -> std::path::PathBuf {
    let dir = bin_path("vmmon-collector")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Seeds `n` VMs of project `fleet`, each with an hour of minute samples, through the real RPC;
/// and `vm-month`, with `days` of 1 s samples ending now.
async fn seed(rpc: &str, fleet_token: &str, month_token: &str, n: usize, days: i64) {
    let now = vmmon_common::vocab::now_ms();
    let mut set = tokio::task::JoinSet::new();
    for chunk in 0..n.div_ceil(50) {
        let (rpc, token) = (rpc.to_string(), fleet_token.to_string());
        set.spawn(async move {
            for i in chunk * 50..((chunk + 1) * 50).min(n) {
                let id = format!("fleet-{i:04}");
                let c = agent_client(&rpc, &token).await;
                c.register(register_request(&id, 60)).await.unwrap();
                let samples = (0..60)
                    .map(|k| Sample {
                        vm: VmSample {
                            cpu_pct: ((i + k) % 100) as f64,
                            mem_pct: 20.0 + (i % 50) as f64,
                            elapsed_ms: 60_000,
                            ..ts::vm_sample(
                                now - (60 - k as i64) * 60_000,
                                k as u64 * 1_000_000,
                                k as u64 * 500_000,
                            )
                        },
                        processes: None,
                    })
                    .collect();
                c.report(ts::batch(&id, 0, samples)).await.unwrap();
            }
        });
    }
    // The month series: 1 s samples, 1,000 per batch, on one connection.
    let c = agent_client(rpc, month_token).await;
    c.register(register_request("vm-month", 1)).await.unwrap();
    let total = days * 86_400;
    let start = now - total * 1000 + 60_000;
    let mut seq = 0u64;
    let mut k = 0i64;
    while k < total - 60 {
        let upto = (k + 1000).min(total - 60);
        let samples = (k..upto)
            .map(|s| Sample {
                vm: VmSample {
                    cpu_pct: (s % 3600) as f64 / 36.0,
                    mem_pct: 50.0 + ((s / 60) % 20) as f64,
                    elapsed_ms: 1000,
                    disk_read_kib_per_sec: (s % 100) as f64,
                    disk_write_kib_per_sec: (s % 50) as f64,
                    net_in_kib_per_sec: (s % 70) as f64,
                    net_out_kib_per_sec: (s % 30) as f64,
                    ..ts::vm_sample(start + s * 1000, s as u64 * 1000, s as u64 * 500)
                },
                processes: None,
            })
            .collect();
        c.report(ts::batch("vm-month", seq, samples)).await.unwrap();
        seq += 1;
        k = upto;
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

struct Browser {
    c: Client,
    base: String,
    driver_port: u16,
    _driver: ChildGuard,
}

impl Browser {
    async fn start(base: String) -> Browser {
        let port = free_addr().port();
        let driver = ChildGuard(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000",
                         "--force-device-scale-factor=1"]
            }
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let c = loop {
            let conn = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(conn)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < T => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot start chromium through chromedriver: {e}"),
            }
        };
        Browser {
            c,
            base,
            driver_port: port,
            _driver: driver,
        }
    }

    async fn goto(&self, hash: &str) {
        self.c
            .goto(&format!("{}/ui/{hash}", self.base))
            .await
            .unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `css` matches an element (then returns its text).
    async fn wait_css(&self, css: &str) -> String {
        let e = self
            .c
            .wait()
            .at_most(T)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
        e.text().await.unwrap()
    }

    /// Waits until the page's text holds `text`.
    async fn wait_text(&self, text: &str) {
        let started = Instant::now();
        loop {
            let body = self.js("return document.body.innerText").await;
            if body.as_str().is_some_and(|b| b.contains(text)) {
                return;
            }
            assert!(started.elapsed() < T, "page never showed {text:?}: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many pixels of each chart canvas under `css` have a series colour (one count per
    /// canvas).
    async fn series_pixels(&self, css: &str) -> Vec<u64> {
        let script = format!(
            "return Array.from(document.querySelectorAll('{css} canvas')).map(function (c) {{
               var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;
               var cs = {colours};
               for (var i = 0; i < d.length; i += 4) {{
                 for (var k = 0; k < cs.length; k++) {{
                   if (Math.abs(d[i] - cs[k][0]) < 40 && Math.abs(d[i + 1] - cs[k][1]) < 40 &&
                       Math.abs(d[i + 2] - cs[k][2]) < 40 && d[i + 3] > 100) {{ n++; break; }}
                 }}
               }}
               return n;
             }});",
            colours = serde_json::to_string(&SERIES_RGB).unwrap()
        );
        self.js(&script)
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    }

    async fn assert_charts_drew(&self, css: &str, at_least: usize) {
        let px = self.series_pixels(css).await;
        assert!(px.len() >= at_least, "{css}: {} canvases: {px:?}", px.len());
        // A blank canvas has no pixel of a series colour; a process chart with two or three
        // points on a busy machine draws ~20, so the bar is "some", not "many".
        assert!(
            px.iter().all(|&n| n >= 5),
            "{css}: a chart drew no series: {px:?}"
        );
    }

    async fn screenshot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        std::fs::write(out_dir().join(name), png).unwrap();
    }

    async fn timing(&self, key: &str) -> f64 {
        self.js(&format!("return window.vmmonTimings.{key}"))
            .await
            .as_f64()
            .unwrap_or_else(|| panic!("no timing {key}"))
    }

    /// Console entries of level SEVERE since the last call (chromedriver's log endpoint), and
    /// the page's own record of script errors and CSP violations.
    async fn errors(&self) -> Vec<String> {
        let sid = self.c.session_id().await.unwrap().unwrap();
        let url = format!("http://127.0.0.1:{}/session/{sid}/se/log", self.driver_port);
        let logs: Value = tokio::task::spawn_blocking(move || {
            ureq::post(&url)
                .send_json(json!({"type": "browser"}))
                .unwrap()
                .into_json()
                .unwrap()
        })
        .await
        .unwrap();
        let mut out: Vec<String> = logs["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].to_string())
            .collect();
        if let Some(errs) = self.js("return window.vmmonErrors || []").await.as_array() {
            out.extend(errs.iter().map(Value::to_string));
        }
        out
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_in_a_real_browser() {
    assert!(
        which("chromium") && which("chromedriver"),
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; \
         .ci/run installs them)"
    );
    let _exclusive = exclusive();
    let days: i64 = std::env::var("VMMON_UI_SERIES_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 29);
    let c = Collector::start();
    let token = c.create_token("p1", "r1");
    let _burner = spawn_burner(BURNER);
    let _agent = Agent::start(&c, &token, "vm-ui-1", 1, &[]);
    let fleet_token = c.create_token("fleet", "r2");
    let month_token = c.create_token("month", "r1");
    let seeding = Instant::now();
    seed(
        &c.rpc_url(),
        &fleet_token,
        &month_token,
        FLEET_VMS - 2,
        days,
    )
    .await;
    let seed_secs = seeding.elapsed().as_secs_f64();
    let secret = c.cli(
        &[
            "cdn-user",
            "add",
            "--name",
            "cdn-acme",
            "--domains",
            "img.acme.example",
        ],
        &[],
    );
    assert!(!secret.trim().is_empty());
    c.add_tenant("tenant-other", "other");
    let admin = c.admin_session();
    // The real agent reports before the browser looks.
    wait_for(T, "vm-ui-1 reporting", || {
        let (s, v) = c.get(
            "/api/series?instance_id=vm-ui-1&metric=cpu",
            &[("X-Auth-Token", &admin)],
        );
        (s == 200 && v["t_ms"].as_array().is_some_and(|a| a.len() >= 2)).then_some(())
    });

    let b = Browser::start(format!("http://{}", c.addr)).await;
    let mut figures = Vec::new();

    // Login.
    b.goto("").await;
    b.wait_css("#login-form").await;
    b.c.find(Locator::Css("#user"))
        .await
        .unwrap()
        .send_keys("admin")
        .await
        .unwrap();
    b.c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(ADMIN_PASSWORD)
        .await
        .unwrap();
    b.screenshot("login.png").await;
    b.c.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Fleet: every VM, the real one among them with its sparkline.
    b.wait_css(".scroll[data-ready='1'] #fleet-table").await;
    b.wait_text("vm-ui-1").await;
    b.wait_text(&format!("{FLEET_VMS} of {FLEET_VMS} VMs"))
        .await;
    // Ready time after a fresh page load (scripts, login check, fleet read, 1,000 rows).
    let mut fleet_ms = Vec::new();
    for i in 0..3 {
        // A new document each time (the query changes), the session kept by the tab.
        b.c.goto(&format!("{}/ui/?load={i}#/fleet", b.base))
            .await
            .unwrap();
        b.wait_css(".scroll[data-ready='1']").await;
        fleet_ms.push(b.timing("fleetSinceLoadMs").await);
    }
    figures.push(format!(
        "fleet page, {FLEET_VMS} VMs, load to table ready: median {:.0} ms (runs {fleet_ms:.0?})",
        median(fleet_ms.clone())
    ));
    let spark_px = b.series_pixels("#fleet-table").await;
    assert_eq!(spark_px.len(), FLEET_VMS, "one sparkline per VM");
    assert!(spark_px.iter().filter(|&&n| n > 10).count() >= FLEET_VMS - 2);
    b.screenshot("fleet.png").await;
    b.c.find(Locator::Css("#fleet-filter"))
        .await
        .unwrap()
        .send_keys("vm-ui")
        .await
        .unwrap();
    b.wait_text(&format!("1 of {FLEET_VMS} VMs")).await;
    b.screenshot("fleet-filtered.png").await;

    // The VM: charts, then start monitoring from the page (agent confirms: status 2).
    b.goto("#/vm/vm-ui-1").await;
    b.wait_css("#vm-charts[data-ready='1']").await;
    b.wait_text("VM vm-ui-1").await;
    b.assert_charts_drew("#vm-charts", 4).await;
    b.c.find(Locator::Css("#start-monitor"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_css("#control-result[data-status='2']").await;
    b.wait_text("confirmed").await;
    // The burner shows in the process table once process samples arrive.
    let started = Instant::now();
    loop {
        b.goto(&format!(
            "#/vm/vm-ui-1?range=1h&t={}",
            started.elapsed().as_millis()
        ))
        .await;
        b.wait_css("#procs-box[data-ready='1']").await;
        let text = b
            .js("return document.getElementById('procs-box').innerText")
            .await;
        if text.as_str().is_some_and(|t| t.contains(BURNER)) {
            break;
        }
        assert!(started.elapsed() < T, "{BURNER} never showed: {text}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    b.wait_css("#vm-charts[data-ready='1']").await;
    b.screenshot("vm.png").await;

    // A click on the burner opens its history chart (611712).
    let row =
        b.c.find(Locator::XPath(&format!(
            "//table[@id='proc-table']//td[text()='{BURNER}']"
        )))
        .await
        .unwrap();
    row.click().await.unwrap();
    b.wait_css("#proc-chart[data-ready='1']").await;
    b.wait_text(&format!("Process history: {BURNER}")).await;
    b.assert_charts_drew("#proc-chart", 2).await;
    b.js("document.getElementById('proc-title').scrollIntoView(); return null")
        .await;
    b.screenshot("process.png").await;

    // A 30-day chart of the month series, and the series endpoint itself, timed in the browser.
    let mut chart_ms = Vec::new();
    for i in 0..3 {
        b.goto(&format!("#/vm/vm-month?range=30d&n={i}")).await;
        b.wait_css("#vm-charts[data-ready='1']").await;
        chart_ms.push(b.timing("vmChartsMs").await);
    }
    b.assert_charts_drew("#vm-charts", 4).await;
    let samples = b.timing("vmSamples").await;
    assert_eq!(
        samples as i64,
        days * 86_400 - 60,
        "every sample counted once"
    );
    b.screenshot("vm-30d.png").await;
    figures.push(format!(
        "VM 30-day chart ({samples:.0} samples of 1 s, 6 series), fetch to drawn: median {:.0} ms \
         (runs {chart_ms:.0?})",
        median(chart_ms.clone())
    ));
    let series_ms = b
        .c
        .execute_async(
            "var done = arguments[arguments.length - 1];
             var sid = sessionStorage.getItem('vmmon.session'), runs = [];
             var end = Date.now(), start = end - 30 * 86400e3;
             (async function () {
               for (var i = 0; i < 7; i++) {
                 var t = performance.now();
                 var r = await fetch('/api/series?instance_id=vm-month&metric=cpu&points=1000&start='
                                     + start + '&end=' + end, {headers: {'X-Auth-Token': sid}});
                 var j = await r.json();
                 runs.push([performance.now() - t, j.t_ms.length]);
               }
               done(runs);
             })();",
            vec![],
        )
        .await
        .unwrap();
    let runs: Vec<(f64, u64)> = serde_json::from_value(series_ms).unwrap();
    assert!(runs.iter().all(|&(_, n)| n > 0 && n <= 1000));
    figures.push(format!(
        "GET /api/series, 30-day window, {samples:.0} samples of 1 s, points=1000: median {:.1} ms \
         (runs {:.1?})",
        median(runs.iter().map(|r| r.0).collect()),
        runs.iter().map(|r| r.0).collect::<Vec<_>>()
    ));

    // Bandwidth of the seeded fleet: chart and monthly table.
    b.goto("#/bandwidth/fleet").await;
    b.wait_css("#bw-charts[data-ready='1']").await;
    b.wait_css("#bw-monthly[data-ready='1'] #bw-monthly-table")
        .await;
    b.assert_charts_drew("#bw-charts", 1).await;
    b.wait_text("Monthly peaks and totals").await;
    b.screenshot("bandwidth.png").await;

    // Rating and CDN pages answer and render.
    b.goto("#/rating").await;
    b.wait_css("#rating-summary[data-ready='1']").await;
    b.wait_text("Total: ").await;
    b.screenshot("rating.png").await;
    b.goto("#/cdn/cdn-acme").await;
    b.wait_css("#cdn-charts[data-ready='1']").await;
    b.wait_text("img.acme.example").await;
    b.screenshot("cdn.png").await;

    let errors = b.errors().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // A tenant of another project: its fleet lacks vm-ui-1, and editing the URL to it shows
    // "unknown instance" (the same answer as for an id that does not exist).
    b.c.find(Locator::Css("#logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_css("#login-form").await;
    b.c.find(Locator::Css("#user"))
        .await
        .unwrap()
        .send_keys("tenant-other")
        .await
        .unwrap();
    b.c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys("tenant-other-password")
        .await
        .unwrap();
    b.c.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_css(".scroll[data-ready='1']").await;
    b.wait_text("0 of 0 VMs").await;
    b.goto("#/vm/vm-ui-1").await;
    let msg = b.wait_css("#vm-error").await;
    assert_eq!(msg, "unknown instance_id \"vm-ui-1\"");
    b.screenshot("tenant-denied.png").await;

    figures.push(format!(
        "(seeding {} VMs and {} s of 1 s samples through the real ingest took {seed_secs:.1} s)",
        FLEET_VMS - 2,
        days * 86_400 - 60
    ));
    let text = figures.join("\n");
    println!("{text}");
    std::fs::write(out_dir().join("figures.txt"), text + "\n").unwrap();
    b.c.close().await.unwrap();
}
