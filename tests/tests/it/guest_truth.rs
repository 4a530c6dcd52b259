//! Truth in the guest (issue 13): the real agent's figures against what the kernel says, with
//! real processes, network namespaces, veth pairs and a bridge; steal from a `/proc/stat`
//! bind-mounted in a private mount namespace (the one kernel state a test cannot make).
//!
//! The agent here reports to no collector: it is pointed at a closed port with monitoring on in
//! its persisted state, and the tests read what it spooled (`vmmon_agent::spool::read_spooled`, the
//! batches it would send, read with their process records as objects, wire extensions included).
//! So these tests need only the agent.
//!
//! They need root (namespaces, veth, another user's `/proc/PID/io`), `ip` (iproute2) and
//! `unshare` (util-linux). Not root: they fail with a message (CI runs as root).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);
const MIB: f64 = 1024.0 * 1024.0;

fn require_root() {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    assert!(
        root,
        "guest_truth tests need root (network namespaces, veth, other users' /proc): run them as root"
    );
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e})"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run("ip", args);
}

/// `ip netns exec NS ip ARGS`.
fn ip_in(ns: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, "ip"];
    all.extend_from_slice(args);
    ip(&all);
}

/// A kernel counter of an interface in a namespace (`/sys/class/net/IF/statistics/NAME`).
fn counter(ns: &str, iface: &str, name: &str) -> u64 {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{iface}/statistics/{name}"),
        ],
    )
    .trim()
    .parse()
    .unwrap()
}

/// Network namespaces, removed on drop (with the interfaces in them).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(tag: &str, names: &[&str]) -> (Namespaces, Vec<String>) {
        let id = std::process::id();
        let full: Vec<String> = names.iter().map(|n| format!("gt{tag}{n}{id}")).collect();
        for n in &full {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", n]);
            ip_in(n, &["link", "set", "lo", "up"]);
        }
        (Namespaces(full.clone()), full)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A veth pair `a` in `ns_a` with `addr_a`, `b` in `ns_b` with `addr_b` (CIDR), both up.
fn veth(a: &str, ns_a: &str, addr_a: Option<&str>, b: &str, ns_b: &str, addr_b: Option<&str>) {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    ip(&["link", "set", a, "netns", ns_a]);
    ip(&["link", "set", b, "netns", ns_b]);
    for (ns, dev, addr) in [(ns_a, a, addr_a), (ns_b, b, addr_b)] {
        if let Some(addr) = addr {
            ip_in(ns, &["addr", "add", addr, "dev", dev]);
        }
        ip_in(ns, &["link", "set", dev, "up"]);
    }
}

/// `vmmon-guest-load udp-send` inside `ns`, to completion.
fn udp_send(ns: &str, to: &str, bytes: u64) {
    let bin = bin_path("vmmon-guest-load");
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            &bin.display().to_string(),
            "udp-send",
            to,
            &bytes.to_string(),
        ],
    );
}

/// The real agent, spooling to its state dir (no collector), monitoring on, 1 s interval;
/// optionally inside a network namespace, as another user, or behind a wrapper command.
struct GuestAgent {
    state: PathBuf,
    _dir: tempfile::TempDir,
    child: Option<Child>,
    prefix: Vec<String>,
    args: Vec<String>,
    uid: Option<u32>,
}

impl GuestAgent {
    fn new(extra: &[&str]) -> GuestAgent {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(
            state.join("agent-state.json"),
            json!({"desired": {"monitoring": true, "interval_secs": 1}}).to_string(),
        )
        .unwrap();
        let mut args: Vec<String> = [
            "--collector",
            "ws://127.0.0.1:9/rpc",
            "--token",
            "unused",
            "--instance-id",
            "guest-truth",
            "--interval",
            "1",
            "--state-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(state.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        GuestAgent {
            state,
            _dir: dir,
            child: None,
            prefix: Vec::new(),
            args,
            uid: None,
        }
    }

    /// Runs the agent inside network namespace `ns`.
    fn in_netns(mut self, ns: &str) -> Self {
        self.prefix = vec!["ip".into(), "netns".into(), "exec".into(), ns.into()];
        self
    }

    fn start(mut self) -> Self {
        self.spawn();
        self
    }

    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("agent.log"))
            .unwrap();
        let agent = bin_path("vmmon-agent");
        let mut cmd = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&agent);
                c
            }
            None => Command::new(&agent),
        };
        cmd.args(&self.args)
            .env("VMMON_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }

    /// Every spooled sample, oldest first.
    fn samples(&self) -> Vec<Value> {
        // An error must not read as an empty spool (no samples yet).
        vmmon_agent::spool::read_spooled(&self.state)
            .expect("cannot read the agent's spool")
            .iter()
            .map(|b| {
                b.to_object_json()
                    .expect("a spooled batch reads as a batch")
            })
            .flat_map(|b| b["samples"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until `n` more samples than now have been spooled; returns all samples.
    fn wait_samples(&self, n: usize) -> Vec<Value> {
        let start = self.samples().len();
        let mut last = Vec::new();
        let ok = wait_until(T, || {
            last = self.samples();
            last.len() >= start + n
        });
        assert!(ok, "agent spooled no new samples; log:\n{}", self.log());
        last
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn records(sample: &Value, pid: u32) -> Vec<&Value> {
    sample["processes"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["pid"] == pid).collect())
        .unwrap_or_default()
}

/// Bytes a process's records account for, from `field` (KB/s) × the time each rate covers
/// (the tick's elapsed time, or the process's age for its first record).
fn bytes_of(samples: &[Value], pid: u32, field: &str) -> f64 {
    let mut total = 0.0;
    let mut seen = false;
    for s in samples {
        let elapsed = s["vm"]["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let at = s["vm"]["sampled_at_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        for r in records(s, pid) {
            if !r["shutdown_time"].is_null() {
                continue;
            }
            let rate = r[field].as_f64().unwrap_or(0.0) * 1024.0;
            let over = if seen {
                elapsed
            } else {
                let age = at - r["start_time"].as_f64().unwrap_or(at);
                if age > 0.0 && age < elapsed {
                    age
                } else {
                    elapsed
                }
            };
            seen = true;
            total += rate * over;
        }
    }
    total
}

fn within(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= want * tolerance
}

// ---- 1. Reaped children ------------------------------------------------------------------------

/// Starts `vmmon-guest-load reaper` and returns it with its stdout lines.
fn spawn_reaper(
    dir: &Path,
    mb: u32,
    delay_ms: u32,
) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(bin_path("vmmon-guest-load"))
        .args([
            "reaper",
            &dir.display().to_string(),
            &mb.to_string(),
            &delay_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (ChildGuard(child), rx)
}

fn reaped_pid(rx: &std::sync::mpsc::Receiver<String>) -> u32 {
    let line = rx.recv_timeout(T).expect("the reaper reaps its child");
    line.strip_prefix("reaped ").unwrap().parse().unwrap()
}

#[test]
fn reaped_childrens_disk_io_is_counted_once() {
    require_root();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let agent = GuestAgent::new(&[]).start();
    agent.wait_samples(2);

    // A child sampled while it writes 24 MiB (1 MiB / 100 ms, fsynced), then reaped: its
    // records carry the bytes, the parent's carry ~0 (the kernel folds the child's I/O into the
    // parent's /proc/PID/io at the reap).
    let (parent, rx) = spawn_reaper(dir.path(), 24, 1500);
    let child = reaped_pid(&rx);
    let samples = agent.wait_samples(3);
    let (p, c) = (
        bytes_of(&samples, parent.pid(), "disk_write_kib_per_sec"),
        bytes_of(&samples, child, "disk_write_kib_per_sec"),
    );
    assert!(
        within(c, 24.0 * MIB, 0.1),
        "child wrote 24 MiB, its records say {:.1} MiB",
        c / MIB
    );
    assert!(
        p < 1.0 * MIB,
        "the parent wrote nothing itself, its records say {:.1} MiB",
        p / MIB
    );
    let peak = samples
        .iter()
        .flat_map(|s| records(s, parent.pid()))
        .filter_map(|r| r["disk_write_kib_per_sec"].as_f64())
        .fold(0.0, f64::max);
    assert!(peak < 1024.0, "parent's peak {peak} KB/s at the reap tick");

    // A child that lives and dies between two samples (8 MiB at once): its bytes are charged
    // to the reaper, once.
    let (parent, rx) = spawn_reaper(dir.path(), 8, 0);
    let child = reaped_pid(&rx);
    let samples = agent.wait_samples(3);
    let total = bytes_of(&samples, parent.pid(), "disk_write_kib_per_sec")
        + bytes_of(&samples, child, "disk_write_kib_per_sec");
    assert!(
        within(total, 8.0 * MIB, 0.25),
        "8 MiB written once, parent + child records say {:.1} MiB",
        total / MIB
    );
}

// ---- 2 and 3. The VM's own interfaces, counted once, running totals ----------------------------

fn vm_totals(samples: &[Value]) -> Vec<(u64, u64)> {
    samples
        .iter()
        .map(|s| {
            (
                s["vm"]["rx_bytes_total"].as_u64().unwrap(),
                s["vm"]["tx_bytes_total"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn last_totals(agent: &GuestAgent) -> (u64, u64) {
    *vm_totals(&agent.wait_samples(2)).last().unwrap()
}

fn assert_monotonic(agent: &GuestAgent) {
    let totals = vm_totals(&agent.samples());
    for w in totals.windows(2) {
        assert!(
            w[1].0 >= w[0].0 && w[1].1 >= w[0].1,
            "cumulative counters went backwards: {w:?}"
        );
    }
}

fn assert_close(what: &str, got: u64, want: u64) {
    // A few hundred bytes of IPv6 neighbour discovery may come and go with links.
    let slack = want / 100 + 4096;
    assert!(
        got.abs_diff(want) <= slack,
        "{what}: agent counted {got} B, the interface moved {want} B"
    );
}

#[test]
fn cumulative_counters_are_running_totals_of_the_vms_interfaces() {
    require_root();
    let id = std::process::id() % 200;
    let (_ns, names) = Namespaces::new("t", &["vm", "peer", "x", "y"]);
    let (vm, peer, x, y) = (&names[0], &names[1], &names[2], &names[3]);
    veth(
        "gtu0",
        vm,
        Some(&format!("10.213.{id}.1/30")),
        "gtp0",
        peer,
        Some(&format!("10.213.{id}.2/30")),
    );
    let to_vm = format!("10.213.{id}.1:9");
    // The agent counts the VM's uplinks, here veths named gtu*.
    let mut agent = GuestAgent::new(&["--net-include", "gtu*"])
        .in_netns(vm)
        .start();
    agent.wait_samples(2);

    // (a) An interface carrying 40 MB of counters is moved into the VM: no byte moved.
    veth(
        "gtu1",
        x,
        Some(&format!("10.214.{id}.1/30")),
        "gtq1",
        y,
        Some(&format!("10.214.{id}.2/30")),
    );
    udp_send(y, &format!("10.214.{id}.1:9"), 40_000_000);
    assert!(counter(x, "gtu1", "rx_bytes") > 40_000_000);
    let before = last_totals(&agent);
    ip_in(x, &["link", "set", "gtu1", "netns", vm]);
    ip_in(vm, &["link", "set", "gtu1", "up"]);
    let after = last_totals(&agent);
    assert!(
        after.0 - before.0 < 100_000,
        "moving an interface in added {} B",
        after.0 - before.0
    );

    // (b) It is deleted while 20 MB arrive on the uplink: all 20 MB count, nothing is lost.
    let before = last_totals(&agent);
    let kernel_before = counter(vm, "gtu0", "rx_bytes");
    udp_send(peer, &to_vm, 10_000_000);
    ip_in(vm, &["link", "del", "gtu1"]);
    udp_send(peer, &to_vm, 10_000_000);
    let moved = counter(vm, "gtu0", "rx_bytes") - kernel_before;
    let after = last_totals(&agent);
    assert_close("deleting an interface", after.0 - before.0, moved);

    // (c) The uplink receives 10 MB and is renamed before the next sample: it carries on
    // (same ifindex), so those bytes count too.
    let before = last_totals(&agent);
    let kernel_before = counter(vm, "gtu0", "rx_bytes");
    udp_send(peer, &to_vm, 10_000_000);
    ip_in(vm, &["link", "set", "gtu0", "down"]);
    ip_in(vm, &["link", "set", "gtu0", "name", "gtu7"]);
    ip_in(vm, &["link", "set", "gtu7", "up"]);
    let up = wait_until(T, || {
        Command::new("ip")
            .args(["netns", "exec", vm, "cat", "/sys/class/net/gtu7/operstate"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"up"))
    });
    assert!(up, "gtu7 did not come up");
    udp_send(peer, &to_vm, 5_000_000);
    let moved = counter(vm, "gtu7", "rx_bytes") - kernel_before;
    let after = last_totals(&agent);
    assert_close("renaming the uplink", after.0 - before.0, moved);

    // (d) The agent restarts; what arrived meanwhile counts.
    let before = last_totals(&agent);
    let kernel_before = counter(vm, "gtu7", "rx_bytes");
    agent.kill();
    udp_send(peer, &to_vm, 10_000_000);
    agent.spawn();
    let moved = counter(vm, "gtu7", "rx_bytes") - kernel_before;
    let after = last_totals(&agent);
    assert_close("across an agent restart", after.0 - before.0, moved);
    assert_monotonic(&agent);
}

#[test]
fn forwarded_container_traffic_is_counted_once_on_the_uplink() {
    require_root();
    let id = std::process::id() % 200;
    let (_ns, names) = Namespaces::new("f", &["vm", "out", "ctr"]);
    let (vm, out, ctr) = (&names[0], &names[1], &names[2]);
    // The VM's uplink to the outside, and a container behind veth + bridge, routed.
    veth(
        "gtu0",
        vm,
        Some(&format!("10.215.{id}.1/30")),
        "gto0",
        out,
        Some(&format!("10.215.{id}.2/30")),
    );
    ip_in(
        out,
        &[
            "route",
            "add",
            &format!("10.216.{id}.0/24"),
            "via",
            &format!("10.215.{id}.1"),
        ],
    );
    ip_in(vm, &["link", "add", "gtbr0", "type", "bridge"]);
    ip_in(
        vm,
        &["addr", "add", &format!("10.216.{id}.1/24"), "dev", "gtbr0"],
    );
    ip_in(vm, &["link", "set", "gtbr0", "up"]);
    veth(
        "gtc0",
        vm,
        None,
        "gtc1",
        ctr,
        Some(&format!("10.216.{id}.2/24")),
    );
    ip_in(vm, &["link", "set", "gtc0", "master", "gtbr0"]);
    ip_in(
        ctr,
        &["route", "add", "default", "via", &format!("10.216.{id}.1")],
    );
    run(
        "ip",
        &[
            "netns",
            "exec",
            vm,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    );

    let agent = GuestAgent::new(&["--net-include", "gtu*"])
        .in_netns(vm)
        .start();
    let before = last_totals(&agent);
    let (veth_rx, br_rx, up_tx, up_rx) = (
        counter(vm, "gtc0", "rx_bytes"),
        counter(vm, "gtbr0", "rx_bytes"),
        counter(vm, "gtu0", "tx_bytes"),
        counter(vm, "gtu0", "rx_bytes"),
    );
    udp_send(ctr, &format!("10.215.{id}.2:9"), 20_000_000);
    let up_tx = counter(vm, "gtu0", "tx_bytes") - up_tx;
    let up_rx = counter(vm, "gtu0", "rx_bytes") - up_rx;
    // What summing every interface would have billed: veth rx + bridge rx.
    let hops_rx =
        counter(vm, "gtc0", "rx_bytes") - veth_rx + counter(vm, "gtbr0", "rx_bytes") - br_rx;
    assert!(
        hops_rx > 40_000_000,
        "the traffic crossed veth and bridge ({hops_rx} B)"
    );
    let samples = agent.wait_samples(2);
    let after = *vm_totals(&samples).last().unwrap();
    assert_close("sent through the uplink", after.1 - before.1, up_tx);
    assert_close("received on the uplink", after.0 - before.0, up_rx);
    // The VM's rates follow the same rule: their sum over the ticks is the uplink's bytes.
    let sent: f64 = samples
        .iter()
        .map(|s| {
            s["vm"]["net_out_kib_per_sec"].as_f64().unwrap()
                * 1024.0
                * s["vm"]["elapsed_ms"].as_f64().unwrap()
                / 1000.0
        })
        .sum();
    assert!(
        sent < 1.05 * (after.1 as f64) && sent > 0.95 * up_tx as f64,
        "rates sum to {sent} B, uplink sent {up_tx} B"
    );
}

#[test]
fn by_default_only_interfaces_backed_by_a_device_count() {
    require_root();
    // The host's own namespace: a real NIC (if any), plus a veth and a bridge we add.
    let id = std::process::id();
    let (veth_a, br) = (format!("gtd{id}a"), format!("gtd{id}br"));
    ip(&[
        "link",
        "add",
        &veth_a,
        "type",
        "veth",
        "peer",
        "name",
        &format!("gtd{id}b"),
    ]);
    ip(&["link", "add", &br, "type", "bridge"]);
    struct Del(Vec<String>);
    impl Drop for Del {
        fn drop(&mut self) {
            for l in &self.0 {
                let _ = Command::new("ip")
                    .args(["link", "del", l])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    let _del = Del(vec![veth_a.clone(), br.clone()]);
    let agent = GuestAgent::new(&[]).start();
    agent.wait_samples(2);
    let state: Value =
        serde_json::to_value(vmmon_agent::net_state::load(&agent.state).unwrap()).unwrap();
    let counted = |name: &str| {
        state["ifaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["counted"] == true)
    };
    assert_eq!(counted(&veth_a), Some(false), "{state}");
    assert_eq!(counted(&br), Some(false), "{state}");
    for entry in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = std::fs::read_link(entry.path()).unwrap();
        let device = !target.to_string_lossy().contains("/devices/virtual/");
        if name != "lo" && counted(&name).is_some() {
            assert_eq!(
                counted(&name),
                Some(device),
                "{name} → {}",
                target.display()
            );
        }
    }
}

// ---- 4. Zombie main thread ---------------------------------------------------------------------

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

#[test]
fn memory_of_a_process_whose_main_thread_exited() {
    require_root();
    let agent = GuestAgent::new(&[]).start();
    let load = ChildGuard(
        Command::new(bin_path("vmmon-guest-load"))
            .args(["zombie-leader", "256"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = load.pid();
    assert!(
        wait_until(T, || proc_state(pid) == Some('Z')),
        "the main thread did not exit"
    );
    let samples = agent.wait_samples(3);
    let mem_total_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let want = 256.0 * 1024.0 / mem_total_kib * 100.0;
    let last = records(samples.last().unwrap(), pid);
    let rec = last.first().expect("the process is reported");
    let mem = rec["mem_pct"].as_f64().unwrap();
    assert!(
        mem >= 0.9 * want,
        "mem_pct {mem} with 256 MiB resident (want ≥ {:.3})",
        0.9 * want
    );
    assert!(rec["cpu_pct"].as_f64().unwrap() > 0.0, "{rec}");
}

// ---- 5. setproctitle ---------------------------------------------------------------------------

#[test]
fn a_setproctitle_title_names_the_executable() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("chromium-browser");
    std::os::unix::fs::symlink(bin_path("vmmon-guest-load"), &link).unwrap();
    let title = "chromium-browser --type=renderer --enable-pinch";
    let mut child = Command::new(&link)
        .args(["title", title, &"-".repeat(64)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child = ChildGuard(child);
    assert_eq!(line.trim(), "titled");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.pid())).unwrap();
    assert!(cmdline.starts_with(title.as_bytes()), "{cmdline:?}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.pid())).unwrap();
    assert_eq!(comm.trim(), "chromium-browse");

    let agent = GuestAgent::new(&[]).start();
    let samples = agent.wait_samples(2);
    let rec = records(samples.last().unwrap(), child.pid());
    assert_eq!(rec.first().expect("reported")["cmd"], "chromium-browser");
}

// ---- 6. Steal ----------------------------------------------------------------------------------

#[test]
fn steal_is_not_used_cpu() {
    require_root();
    // A /proc/stat whose CPU lines the test writes, bind-mounted over the real one in a private
    // mount namespace that only the agent sees: 25 % user (a tenth of it guest), 50 % steal,
    // 25 % idle on 2 CPUs.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("stat");
    let write = |k: u64| {
        let real = std::fs::read_to_string("/proc/stat").unwrap();
        let rest: String = real
            .lines()
            .filter(|l| !l.starts_with("cpu"))
            .map(|l| format!("{l}\n"))
            .collect();
        let (user, idle, steal, guest) = (250 * k, 250 * k, 500 * k, 25 * k);
        let text = format!(
            "cpu  {user} 0 0 {idle} 0 0 0 {steal} {guest} 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n{rest}"
        );
        // Same inode (the bind mount follows it): write in place.
        std::fs::write(&fake, text).unwrap();
    };
    write(1);
    let mut agent = GuestAgent::new(&[]);
    agent.prefix = vec![
        "unshare".into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "mount --bind {} /proc/stat && exec \"$0\" \"$@\"",
            fake.display()
        ),
    ];
    let agent = agent.start();
    let mut k = 1;
    let mut seen = Vec::new();
    let ok = wait_until(T, || {
        k += 1;
        write(k);
        std::thread::sleep(Duration::from_millis(300));
        seen = agent.samples();
        seen.iter()
            .filter(|s| s["vm"]["cpu_steal_pct"].is_number())
            .count()
            >= 3
    });
    assert!(ok, "no samples with steal; log:\n{}", agent.log());
    for s in seen.iter().filter(|s| s["vm"]["cpu_steal_pct"].is_number()) {
        let (cpu, steal) = (
            s["vm"]["cpu_pct"].as_f64().unwrap(),
            s["vm"]["cpu_steal_pct"].as_f64().unwrap(),
        );
        // A reading may catch the file mid-write and skip a tick; every delta keeps the mix.
        assert!(
            (cpu - 25.0).abs() < 0.5,
            "cpu_util {cpu} (steal excluded: 25)"
        );
        assert!((steal - 50.0).abs() < 0.5, "cpu_steal_pct {steal}");
    }
}

// ---- 7. Unreadable counters --------------------------------------------------------------------

#[test]
fn figures_an_unprivileged_agent_cannot_read_are_null_and_counted() {
    require_root();
    const NOBODY: u32 = 65534;
    let mut agent = GuestAgent::new(&[]);
    for p in [agent.state.parent().unwrap(), agent.state.as_path()] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::os::unix::fs::chown(
        agent.state.join("agent-state.json"),
        Some(NOBODY),
        Some(NOBODY),
    )
    .unwrap();
    agent.uid = Some(NOBODY);
    let agent = agent.start();
    let samples = agent.wait_samples(4);
    let last = samples.last().unwrap();
    // pid 1 belongs to root: its /proc/1/io is refused to nobody.
    let init = records(last, 1);
    let init = init.first().expect("pid 1 reported");
    assert_eq!(
        init["unreadable"],
        json!(["disk_read_kib_per_sec", "disk_write_kib_per_sec"]),
        "{init}"
    );
    let unreadable = last["vm"]["unreadable_procs"].as_u64().unwrap();
    let flagged = last["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("unreadable").is_some())
        .count() as u64;
    assert!(
        unreadable >= 1 && unreadable == flagged,
        "{unreadable} vs {flagged}"
    );
    // Its own processes are readable and not flagged.
    let own = records(last, agent.child.as_ref().unwrap().id());
    assert!(own.first().is_some_and(|r| r.get("unreadable").is_none()));
    // One warning, however many ticks.
    let log = agent.log();
    assert_eq!(log.matches("Cannot read /proc/PID/io").count(), 1, "{log}");
}

// ---- 8. CDN: a remote user holding the format's separators -------------------------------------

#[test]
fn an_access_log_line_with_a_bracket_in_the_user_is_billed() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let now = chrono::Utc::now()
        .format("%d/%b/%Y:%H:%M:%S +0000")
        .to_string();
    let lines: String = ["a [b", "john doe", "[admin]"]
        .iter()
        .enumerate()
        .map(|(i, user)| {
            format!(
                "203.0.113.9 - {user} [{now}] \"GET /x HTTP/1.1\" 200 {} \"-\" \"curl\" cdn.example.com HIT\n",
                1000 * (i + 1)
            )
        })
        .collect();
    std::fs::write(&log, lines).unwrap();
    // A real collector: an edge agent without positions of its own asks it for them before it
    // reads its logs (so a lost state dir never bills the logs twice).
    let c = Collector::start();
    c.cli(
        &[
            "cdn-user",
            "add",
            "--name",
            "edge_user",
            "--domains",
            "cdn.example.com",
        ],
        &[],
    );
    let token = c.create_cdn_token("cdn", "edge", &["edge_user"]);
    let log_arg = log.display().to_string();
    let agent = Agent::start(
        &c,
        &token,
        "edge-bracket",
        1,
        &["--cdn-access-log", &log_arg],
    );
    let billed = || {
        c.query_i64(
            "SELECT COALESCE(SUM(bytes), 0) FROM cdn_buckets WHERE domain = 'cdn.example.com'",
            &[],
        )[0]
    };
    let ok = wait_until(T, || billed() >= 6000);
    assert!(ok, "billed {} B of 6000; log:\n{}", billed(), agent.log());
    assert_eq!(billed(), 6000);
}

// ---- Accuracy against /proc truth ---------------------------------------------------------------

fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 (index N − 3).
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn proc_write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn process_cpu_and_disk_match_proc_truth() {
    require_root();
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a configuration value.
    let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ncpu = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as f64;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let agent = GuestAgent::new(&[]).start();
    agent.wait_samples(1);
    let load = |args: &[&str]| {
        ChildGuard(
            Command::new(bin_path("vmmon-guest-load"))
                .args(args)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // Idle for 1.5 s first, so the first record (taken within a second) holds ~nothing.
    let d = dir.path().display().to_string();
    let burners: Vec<ChildGuard> = ["20", "50", "100"]
        .iter()
        .map(|p| load(&["burn", p, "1500"]))
        .collect();
    let writers: Vec<ChildGuard> = ["2048", "8192"]
        .iter()
        .map(|k| load(&["write-rate", k, &d, "1500"]))
        .collect();
    agent.wait_samples(7);
    // Freeze them: their counters then stop, and two more samples cover the last of it.
    for c in burners.iter().chain(&writers) {
        signal(c.pid(), libc::SIGSTOP);
    }
    let samples = agent.wait_samples(2);
    for b in &burners {
        let truth = proc_cpu_ticks(b.pid()) as f64;
        let mut seen = false;
        let reported: f64 = samples
            .iter()
            .flat_map(|s| {
                let elapsed = s["vm"]["elapsed_ms"].as_f64().unwrap() / 1000.0;
                records(s, b.pid())
                    .into_iter()
                    .filter(|r| r["shutdown_time"].is_null())
                    .map(move |r| (elapsed, r["cpu_pct"].as_f64().unwrap()))
                    .collect::<Vec<_>>()
            })
            .map(|(elapsed, pct)| {
                // The first record is over the process's age, when it had done ~nothing.
                let over = if seen { elapsed } else { 0.0 };
                seen = true;
                pct / 100.0 * ncpu * clk_tck * over
            })
            .sum();
        assert!(
            truth > 20.0 && within(reported, truth, 0.05),
            "burner {}: agent {reported:.0} ticks, /proc {truth:.0}",
            b.pid()
        );
    }
    for w in &writers {
        let truth = proc_write_bytes(w.pid()) as f64;
        let reported = bytes_of(&samples, w.pid(), "disk_write_kib_per_sec");
        assert!(
            truth > MIB && within(reported, truth, 0.05),
            "writer {}: agent {:.2} MiB, /proc {:.2} MiB",
            w.pid(),
            reported / MIB,
            truth / MIB
        );
    }
}
