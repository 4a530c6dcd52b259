//! The static agent binaries of `packaging/build-packages.sh` (`target/packages/vmmon-agent-*`)
//! run anywhere: each is started inside an empty chroot holding only the binary (the aarch64
//! one with `qemu-aarch64-static` beside it, under user-mode emulation), with `/proc`, `/sys` and
//! `/dev` mounted and no libc, no `/etc`. It must register with a real collector and report real
//! samples of this host's processes.
//!
//! Needs root (chroot, mounts in a private mount namespace through `unshare -m`, so nothing
//! leaks onto the host) and the built packages: scripts/test.sh skips these tests, saying so,
//! when `target/packages` has no agent binaries (build them with packaging/build-packages.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use vmmon_tests::*;

/// Emulated aarch64 is slow on a loaded 2-core machine: generous, the tests wait on conditions.
const T: Duration = Duration::from_secs(180);

/// `target/packages/NAME`, built by packaging/build-packages.sh.
fn package_file(name: &str) -> PathBuf {
    let debug_dir = bin_path("vmmon-agent")
        .parent()
        .map(Path::to_path_buf)
        .unwrap();
    let path = debug_dir.parent().unwrap().join("packages").join(name);
    assert!(
        path.exists(),
        "{} is missing: run packaging/build-packages.sh first (scripts/test.sh skips these \
         tests, visibly, when the packages are not built)",
        path.display()
    );
    path
}

/// The agent in a chroot of its own: it sees this host's processes through the mounted /proc.
struct ChrootAgent {
    child: Child,
    root: tempfile::TempDir,
}

impl ChrootAgent {
    /// `binary` copied alone into an empty root (plus `emulator`, if any, to run it), started
    /// as `/vmmon-agent ARGS` reporting to `collector`.
    fn start(
        binary: &Path,
        emulator: Option<&Path>,
        collector: &Collector,
        token: &str,
        instance: &str,
    ) -> ChrootAgent {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::copy(binary, r.join("vmmon-agent")).unwrap();
        for d in ["proc", "sys", "dev", "state"] {
            std::fs::create_dir(r.join(d)).unwrap();
        }
        let mut exec = String::from("exec chroot \"$ROOT\"");
        if let Some(qemu) = emulator {
            std::fs::copy(qemu, r.join("qemu")).unwrap();
            exec.push_str(" /qemu");
        }
        exec.push_str(" /vmmon-agent \"$@\"");
        // Nothing else in the root: no libc, no loader, no /etc.
        let mut entries: Vec<String> = std::fs::read_dir(r)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        let mut want = vec!["dev", "proc", "state", "sys", "vmmon-agent"];
        if emulator.is_some() {
            want.push("qemu");
            want.sort();
        }
        assert_eq!(entries, want);

        let script = format!(
            "set -e; mount -t proc proc \"$ROOT/proc\"; \
             mount -t sysfs sysfs \"$ROOT/sys\" 2>/dev/null || mount --rbind /sys \"$ROOT/sys\"; \
             mount --rbind /dev \"$ROOT/dev\"; {exec}"
        );
        let log = std::fs::File::create(r.join("agent.log")).unwrap();
        let child = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .args([
                "--collector",
                &collector.rpc_url(),
                "--token",
                token,
                "--instance-id",
                instance,
                "--interval",
                "1",
                "--state-dir",
                "/state",
            ])
            .env("ROOT", r)
            .env("VMMON_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        ChrootAgent { child, root }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("agent.log")).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the chrooted agent exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for ChrootAgent {
    fn drop(&mut self) {
        // The agent is the process unshare became: killing it ends the mount namespace too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn q(c: &Collector, sid: &str, method: i64, instance: &str, extra: Value) -> Value {
    let mut req = json!({"method": method, "data": {"instance_id": instance}, "session_id": sid});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            req[k] = v;
        }
    }
    c.legacy(&req)
}

/// The whole check: registered and reporting, monitoring turned on, and a record of a real host
/// process (spawned here, so its pid is known) arrives with figures read from the host's /proc.
/// `proc_name` (≤ 15 characters) is the host process's name, one per test: tests run in
/// parallel and every agent sees every process of the host.
fn runs_in_empty_chroot(binary: &str, emulator: Option<&Path>, instance: &str, proc_name: &str) {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "needs root for chroot and mounts: run as root (scripts/test.sh in CI), not a skip"
    );
    let binary = package_file(binary);
    let c = Collector::start();
    let token = c.create_token("p-static", "r-static");
    let mut agent = ChrootAgent::start(&binary, emulator, &c, &token, instance);
    let sid = c.admin_session();

    // Registered: the VM record arrives.
    wait_for(T, "the chrooted agent's first VM record", || {
        agent.assert_running();
        let r = q(&c, &sid, 611611, instance, json!({}));
        (r["status_code"] == 1 && r["data"].as_array().is_some_and(|a| !a.is_empty())).then_some(())
    });
    let vm = q(&c, &sid, 611611, instance, json!({}));
    let vm = &vm["data"][0];
    assert!(vm["mem"].as_f64().is_some_and(|m| m > 0.0), "{vm}");

    // Monitoring on; a host process started outside the chroot must show up with its pid.
    let start = q(&c, &sid, 32523, &format!("{instance};"), json!({}));
    assert_eq!(start["status_code"], 2, "startmonitor confirmed: {start}");
    let idle = spawn_idle(proc_name);
    let rec = wait_for(T, "a record of the host process", || {
        agent.assert_running();
        let r = q(
            &c,
            &sid,
            611712,
            instance,
            json!({"proc_name": proc_name, "limit": 1}),
        );
        r["data"].as_array().and_then(|a| a.first().cloned())
    });
    assert_eq!(rec["pid"].as_u64(), Some(u64::from(idle.pid())), "{rec}");
    assert!(
        rec["mem"].as_f64().is_some_and(|m| m > 0.0),
        "RSS read: {rec}"
    );
    assert_eq!(rec["shutdown_time"], Value::Null);
    // Many host processes, not only the agent's own view of an empty root.
    let top = q(
        &c,
        &sid,
        611711,
        &format!("{instance};"),
        json!({"limit": 1000}),
    );
    let n = top["data"].as_array().map_or(0, Vec::len);
    assert!(n >= 3, "host processes reported: {n} ({top})");
}

#[test]
#[ignore = "needs root and target/packages (packaging/build-packages.sh); scripts/test.sh runs it"]
fn static_x86_64_agent_runs_in_an_empty_chroot() {
    runs_in_empty_chroot(
        "vmmon-agent-x86_64",
        None,
        "vm-static-x86-64",
        "vmmt-static-x86",
    );
}

#[test]
#[ignore = "needs root, qemu-user-static and target/packages; scripts/test.sh runs it"]
fn static_aarch64_agent_runs_under_qemu_user_in_an_empty_chroot() {
    let qemu = Path::new("/usr/bin/qemu-aarch64-static");
    assert!(
        qemu.exists(),
        "qemu-aarch64-static is missing: apt-get install qemu-user-static (.ci/run does)"
    );
    runs_in_empty_chroot(
        "vmmon-agent-aarch64",
        Some(qemu),
        "vm-static-aarch64",
        "vmmt-static-arm",
    );
}
