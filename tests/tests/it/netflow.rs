//! Per-process network traffic (issue 5): real TCP traffic between processes on this host and a
//! peer in a network namespace behind a veth pair; the real agent attributes it to the right
//! process and direction, and reports on 611611 how much of the VM's traffic it attributed.
//!
//! Needs root (network namespaces, veth) and `ip` (iproute2): `#[ignore = "needs root"]`, and
//! `scripts/test.sh` (run as root in CI) includes ignored tests; run without root, it fails
//! loudly instead of passing.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);
/// Bytes each way: 12 MiB, about 4 s at the load's 3.2 MiB/s pace.
const BYTES: u64 = 12 * 1024 * 1024;
const PORT: &str = "5201";

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` ({e}): install iproute2"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a veth pair to it: `host_addr` here, `peer_addr` inside. Removed
/// on drop (deleting the namespace deletes the pair).
struct Netns {
    name: String,
    host_if: String,
    host_addr: String,
    peer_addr: String,
}

impl Netns {
    fn create() -> Netns {
        let id = std::process::id();
        let subnet = id % 250;
        let ns = Netns {
            name: format!("vmmtest-nf{id}"),
            host_if: format!("vmmnf{id}a"),
            host_addr: format!("10.203.{subnet}.1"),
            peer_addr: format!("10.203.{subnet}.2"),
        };
        let peer_if = format!("vmmnf{id}b");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_addr),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/30", ns.peer_addr),
            "dev",
            &peer_if,
        ]);
        inside(&["link", "set", &peer_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// Starts `vmmon-test-load` inside the namespace.
    fn spawn_load(&self, args: &[&str]) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(bin_path("vmmon-test-load"))
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        ChildGuard(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for args in [
            vec!["netns", "del", self.name.as_str()],
            vec!["link", "del", self.host_if.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(&args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A `vmmon-test-load` client whose start we control (a line on stdin) and whose end we see
/// (`done` on stdout).
struct Client {
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    done: mpsc::Receiver<()>,
}

impl Client {
    fn spawn(args: &[&str]) -> Client {
        let mut child = Command::new(bin_path("vmmon-test-load"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_ok_and(|l| l.trim() == "done") {
                    let _ = tx.send(());
                }
            }
        });
        Client {
            guard: ChildGuard(child),
            stdin,
            done,
        }
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn wait_done(&self, timeout: Duration) {
        self.done
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("client {} did not finish: {e}", self.guard.pid()));
    }
}

fn q(c: &Collector, sid: &str, method: i64, instance: &str, extra: Value) -> Value {
    let mut req = json!({"method": method, "data": {"instance_id": instance}, "session_id": sid});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            req[k] = v;
        }
    }
    let r = c.legacy(&req);
    assert_eq!(r["status_code"], 1, "{r}");
    r
}

/// Records of `name` from 611712, oldest first.
fn history(c: &Collector, sid: &str, instance: &str, name: &str) -> Vec<Value> {
    let r = q(
        c,
        sid,
        611712,
        instance,
        json!({"proc_name": name, "limit": 10_000}),
    );
    let mut v = r["data"].as_array().unwrap().clone();
    v.reverse();
    v
}

/// VM records from 611611, oldest first.
fn vm_history(c: &Collector, sid: &str, instance: &str) -> Vec<Value> {
    let r = q(c, sid, 611611, instance, json!({"limit": 10_000}));
    let mut v = r["data"].as_array().unwrap().clone();
    v.reverse();
    v
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it with --include-ignored"]
fn tcp_traffic_is_attributed_to_the_right_process_and_direction() {
    assert!(
        is_root(),
        "needs root for network namespaces: run as root (scripts/test.sh in CI), not a skip"
    );
    let _exclusive = exclusive();
    let ns = Netns::create();
    let _peer = ns.spawn_load(&["vmmtest-npeer", "peer", PORT]);
    // The peer listens once a connection from here succeeds.
    wait_for(T, "peer listening", || {
        std::net::TcpStream::connect(format!("{}:{PORT}", ns.peer_addr))
            .ok()
            .map(drop)
    });

    let c = Collector::start();
    let token = c.create_token("p1", "r1");
    // The veth stands for the VM's NIC here; a veth is not counted by default (issue 13).
    let _agent = Agent::start(&c, &token, "vm-net-1", 1, &["--net-include", "vmmnf*"]);
    let sid = c.admin_session();
    // Not `q`: until the agent registered, the id is unknown (status 3), which is not a failure.
    wait_for(T, "first VM record", || {
        let r = c.legacy(
            &json!({"method": 611611, "data": {"instance_id": "vm-net-1"}, "session_id": sid}),
        );
        r["data"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(())
    });
    let start = c
        .legacy(&json!({"method": 32523, "data": {"instance_id": "vm-net-1;"}, "session_id": sid}));
    assert_eq!(start["status_code"], 2, "{start}");

    let bytes = BYTES.to_string();
    let mut sender = Client::spawn(&["vmmtest-nsend", "send", &ns.peer_addr, PORT, &bytes]);
    let mut receiver = Client::spawn(&["vmmtest-nrecv", "recv", &ns.peer_addr, PORT, &bytes]);
    // Connected like the others, never told to go: an open, idle socket.
    let _idle = Client::spawn(&["vmmtest-nidle", "send", &ns.peer_addr, PORT, "0"]);

    // Every client seen twice (so its socket has a baseline) before any traffic.
    for name in ["vmmtest-nsend", "vmmtest-nrecv", "vmmtest-nidle"] {
        wait_for(T, &format!("two records of {name}"), || {
            (history(&c, &sid, "vm-net-1", name).len() >= 2).then_some(())
        });
    }
    let began = Instant::now();
    sender.go();
    receiver.go();
    sender.wait_done(T);
    receiver.wait_done(T);
    let transfer = began.elapsed();
    assert!(
        transfer >= Duration::from_secs(2),
        "the transfer spans several samples ({transfer:?})"
    );
    // Two more samples after the end, so the last bytes are in a record.
    let n_before = history(&c, &sid, "vm-net-1", "vmmtest-nsend").len();
    wait_for(T, "two samples after the transfer", || {
        (history(&c, &sid, "vm-net-1", "vmmtest-nsend").len() >= n_before + 2).then_some(())
    });

    let send = history(&c, &sid, "vm-net-1", "vmmtest-nsend");
    let recv = history(&c, &sid, "vm-net-1", "vmmtest-nrecv");
    let idle = history(&c, &sid, "vm-net-1", "vmmtest-nidle");
    let total = BYTES as f64;
    let (sent_out, sent_in) = (
        bytes_of(&send, "net_outgoing"),
        bytes_of(&send, "net_incoming"),
    );
    let (recv_in, recv_out) = (
        bytes_of(&recv, "net_incoming"),
        bytes_of(&recv, "net_outgoing"),
    );
    eprintln!(
        "sender out {sent_out:.0} in {sent_in:.0}; receiver in {recv_in:.0} out {recv_out:.0}; truth {total}"
    );
    assert!(
        sent_out >= 0.9 * total && sent_out <= 1.1 * total,
        "sender net_outgoing × interval = {sent_out:.0} bytes of {total}: {send:#?}"
    );
    assert!(
        recv_in >= 0.9 * total && recv_in <= 1.1 * total,
        "receiver net_incoming × interval = {recv_in:.0} bytes of {total}: {recv:#?}"
    );
    // The other direction carries only a request line.
    assert!(sent_in < 0.01 * total, "sender net_incoming {sent_in:.0}");
    assert!(
        recv_out < 0.01 * total,
        "receiver net_outgoing {recv_out:.0}"
    );
    // The rates were spread over several samples, not one spike.
    let busy = send
        .iter()
        .filter(|r| r["net_outgoing"].as_f64().unwrap() > 0.0)
        .count();
    assert!(busy >= 2, "sender busy in {busy} samples: {send:#?}");
    for r in &idle {
        assert_eq!(
            (r["net_incoming"].as_f64(), r["net_outgoing"].as_f64()),
            (Some(0.0), Some(0.0)),
            "idle process: {r}"
        );
    }

    // VM records: attributed vs unattributed, consistent with the interface figures.
    let vm = vm_history(&c, &sid, "vm-net-1");
    for r in &vm {
        for k in [
            "net_attributed_in",
            "net_attributed_out",
            "net_unattributed_in",
            "net_unattributed_out",
        ] {
            assert!(r.get(k).is_some(), "field {k} missing in {r}");
        }
    }
    // Records from before startmonitor were not measured: null.
    assert!(vm[0]["net_attributed_in"].is_null(), "{}", vm[0]);
    let measured: Vec<Value> = vm
        .iter()
        .filter(|r| !r["net_attributed_in"].is_null())
        .cloned()
        .collect();
    assert!(measured.len() >= 4, "{vm:#?}");
    for r in &measured {
        let f = |k: &str| r[k].as_f64().unwrap();
        for (attributed, unattributed, iface) in [
            ("net_attributed_in", "net_unattributed_in", "net_incoming"),
            ("net_attributed_out", "net_unattributed_out", "net_outgoing"),
        ] {
            assert!(f(unattributed) >= 0.0, "{r}");
            // Attributed is TCP payload, the interface also carries headers (little of them
            // with segmentation offload), and the two are read a moment apart: about the
            // interface figure at most. Together they make up the interface figure.
            assert!(
                f(attributed) <= f(iface) * 1.02 + 0.05,
                "{attributed} > {iface}: {r}"
            );
            if f(attributed) <= f(iface) {
                assert!(
                    (f(attributed) + f(unattributed) - f(iface)).abs() <= 0.03,
                    "{attributed} + {unattributed} != {iface}: {r}"
                );
            }
        }
    }
    let vm_out = bytes_of(&measured, "net_attributed_out");
    let vm_in = bytes_of(&measured, "net_attributed_in");
    let iface_out = bytes_of(&measured, "net_outgoing");
    eprintln!("VM attributed out {vm_out:.0} in {vm_in:.0}; interface out {iface_out:.0}");
    assert!(vm_out >= 0.9 * total, "VM attributed out {vm_out:.0}");
    assert!(vm_in >= 0.9 * total, "VM attributed in {vm_in:.0}");
    assert!(
        vm_out <= iface_out * 1.01,
        "attributed {vm_out:.0} > interface {iface_out:.0}"
    );
}
