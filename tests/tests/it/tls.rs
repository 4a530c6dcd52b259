//! TLS on every link (#16): agents over wss:// with a CA file and with a pin, every refused
//! handshake named in the agent's log and healed without loss, the HTTPS APIs, the
//! `tls self-signed` quick set-up, and a certificate swapped by SIGHUP under a connected agent.
//! Certificates are made here with rcgen.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn samples(c: &Collector, instance: &str) -> i64 {
    c.query_i64(
        "SELECT COUNT(*) FROM vm_samples WHERE instance_id = ?1",
        &[&instance],
    )[0]
}

fn stored(c: &Collector, batch_id: &str) -> bool {
    c.query_i64(
        "SELECT COUNT(*) FROM batches WHERE batch_id = ?1",
        &[&batch_id],
    )[0] == 1
}

/// The batch ids waiting in the agent's spool.
fn spooled_ids(agent: &Agent) -> Vec<String> {
    vmmon_agent::spool::read_spooled(agent.state.path())
        .unwrap()
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_str(&b.json).unwrap();
            v["batch_id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// An agent of `c` as `instance`, sampling every second, with `tls_args`; it retries at least
/// every second (`max_backoff_secs = 1`), so a fix is picked up promptly.
fn agent_args(
    c: &TlsCollector,
    token: &str,
    instance: &str,
    agent: &Agent,
    tls_args: &[&str],
) -> Vec<String> {
    let config = write(
        c.dir.path(),
        &format!("{instance}.toml"),
        "max_backoff_secs = 1\n",
    );
    let mut args: Vec<String> = [
        "--collector",
        &c.wss_url(),
        "--token",
        token,
        "--instance-id",
        instance,
        "--interval",
        "1",
        "--state-dir",
        &agent.state.path().display().to_string(),
        "--config",
        &config.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(tls_args.iter().map(|s| s.to_string()));
    args
}

fn start_agent(c: &TlsCollector, token: &str, instance: &str, tls_args: &[&str]) -> Agent {
    let mut agent = Agent::prepare(&c.wss_url(), token, instance, 1, &[]);
    let args = agent_args(c, token, instance, &agent, tls_args);
    agent.set_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    agent.spawn();
    agent
}

#[test]
fn agents_report_over_wss_with_ca_file_and_with_pin_and_https_apis_answer() {
    let ca = TestCa::new("vmmon test CA");
    let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
    let c = TlsCollector::start(&leaf);
    let ca_file = write(c.dir.path(), "ca.pem", &ca.pem);
    let ca_arg = ca_file.display().to_string();
    let token = c.collector.create_token("p1", "r1");
    let by_ca = start_agent(&c, &token, "i-ca", &["--ca-file", &ca_arg]);
    let pinned = start_agent(
        &c,
        &token,
        "i-pin",
        &["--ca-file", &ca_arg, "--pin-sha256", &leaf.pin],
    );
    for (instance, agent) in [("i-ca", &by_ca), ("i-pin", &pinned)] {
        assert!(
            wait_until(T, || samples(&c.collector, instance) >= 2),
            "{instance} reported nothing over wss: {}",
            agent.log()
        );
        assert!(!agent.log().contains(&token), "the token was logged");
    }

    // The APIs on the same port, over HTTPS: `curl --cacert` as the README shows.
    let port = c.collector.addr.port();
    if Command::new("curl").arg("--version").output().is_ok() {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert", &ca_arg])
            .arg(format!("https://localhost:{port}/healthz"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
        let login = serde_json::json!({"method": 458753, "data": {"user_name": "admin", "password": ADMIN_PASSWORD}});
        let out = Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--cacert",
                &ca_arg,
                "-H",
                "Content-Type: application/json",
                "-d",
            ])
            .arg(login.to_string())
            .arg(format!("https://localhost:{port}/wsgi_app.py"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["status_code"], 1, "{answer}");
        // Without the CA, curl refuses the certificate.
        let out = Command::new("curl")
            .args(["-sS", "--fail"])
            .arg(format!("https://localhost:{port}/healthz"))
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
    let (status, body) = c.https_get(&ca.pem, "/healthz").unwrap();
    assert_eq!((status, body.contains("ok")), (200, true), "{body}");
    // Plain HTTP is not served on a TLS listener.
    assert!(ureq::get(&c.collector.url("/healthz")).call().is_err());
}

/// How a refused link gets fixed.
enum Fix<'a> {
    /// The operator installs `Leaf` on the collector and sends SIGHUP.
    ServerCert(Leaf),
    /// The agent is restarted with these TLS arguments.
    AgentArgs(Vec<&'a str>),
}

/// The agent (with `tls_args`) is refused by a collector serving `served`; the log names the
/// reason `want`; samples wait in the spool; after `fix` every one of them is stored.
fn refused_then_healed(served: &Leaf, tls_args: &[&str], want: &str, fix: Fix) {
    let c = TlsCollector::start(served);
    let token = c.collector.create_token("p1", "r1");
    let mut agent = start_agent(&c, &token, "i-refused", tls_args);
    wait_for(T, &format!("the agent to log {want:?}"), || {
        agent.log().contains(want).then_some(())
    });
    assert!(wait_until(T, || agent.spooled() >= 3), "{}", agent.log());
    let pending = spooled_ids(&agent);
    assert_eq!(samples(&c.collector, "i-refused"), 0);
    assert!(agent.log().contains("Collector's TLS certificate refused"));
    assert!(!agent.log().contains(&token), "the token was logged");
    match fix {
        Fix::ServerCert(leaf) => c.reload_cert(&leaf),
        Fix::AgentArgs(args) => {
            let args = agent_args(&c, &token, "i-refused", &agent, &args);
            agent.set_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
            agent.restart();
        }
    }
    assert!(
        wait_until(T, || pending.iter().all(|id| stored(&c.collector, id))),
        "batches spooled while refused were not all stored: {}",
        agent.log()
    );
}

fn ca_and_file(dir: &Path, ca: &TestCa, name: &str) -> String {
    write(dir, name, &ca.pem).display().to_string()
}

#[test]
fn unknown_ca_is_refused_then_heals_with_the_right_ca_file() {
    let (ca, other) = (TestCa::new("right CA"), TestCa::new("other CA"));
    let dir = tempfile::tempdir().unwrap();
    let right = ca_and_file(dir.path(), &ca, "right.pem");
    let wrong = ca_and_file(dir.path(), &other, "wrong.pem");
    refused_then_healed(
        &ca.leaf(&["127.0.0.1"]),
        &["--ca-file", &wrong],
        "not signed by a trusted CA",
        Fix::AgentArgs(vec!["--ca-file", &right]),
    );
}

#[test]
fn expired_certificate_is_refused_then_heals_after_sighup() {
    let ca = TestCa::new("right CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca_and_file(dir.path(), &ca, "ca.pem");
    refused_then_healed(
        &ca.leaf_valid(&["127.0.0.1"], Some(((2020, 1, 1), (2021, 1, 1)))),
        &["--ca-file", &ca_file],
        "has expired",
        Fix::ServerCert(ca.leaf(&["127.0.0.1"])),
    );
}

#[test]
fn wrong_hostname_is_refused_then_heals_after_sighup() {
    let ca = TestCa::new("right CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca_and_file(dir.path(), &ca, "ca.pem");
    refused_then_healed(
        &ca.leaf(&["collector.example"]),
        &["--ca-file", &ca_file],
        "not valid for the host name",
        Fix::ServerCert(ca.leaf(&["127.0.0.1"])),
    );
}

#[test]
fn wrong_pin_is_refused_then_heals_with_the_right_pin() {
    let ca = TestCa::new("right CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca_and_file(dir.path(), &ca, "ca.pem");
    let served = ca.leaf(&["127.0.0.1"]);
    let other = ca.leaf(&["127.0.0.1"]);
    refused_then_healed(
        &served,
        &["--ca-file", &ca_file, "--pin-sha256", &other.pin],
        "pin mismatch",
        Fix::AgentArgs(vec!["--ca-file", &ca_file, "--pin-sha256", &served.pin]),
    );
}

#[test]
fn sighup_serves_a_new_certificate_and_keeps_the_agent_connected() {
    let (ca1, ca2) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let c = TlsCollector::start(&ca1.leaf(&["127.0.0.1"]));
    let both = write(c.dir.path(), "both.pem", &format!("{}{}", ca1.pem, ca2.pem));
    let token = c.collector.create_token("p1", "r1");
    let mut agent = Agent::prepare(&c.wss_url(), &token, "i-hup", 1, &[]);
    let args = agent_args(
        &c,
        &token,
        "i-hup",
        &agent,
        &["--ca-file", &both.display().to_string()],
    );
    agent.set_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    agent.set_env("VMMON_LOG", "info");
    agent.spawn();
    assert!(
        wait_until(T, || samples(&c.collector, "i-hup") >= 1),
        "{}",
        agent.log()
    );
    assert!(c.https_get(&ca1.pem, "/healthz").is_ok());
    assert!(c.https_get(&ca2.pem, "/healthz").is_err());

    c.reload_cert(&ca2.leaf(&["127.0.0.1"]));
    wait_for(T, "the new certificate on a new connection", || {
        c.https_get(&ca2.pem, "/healthz").ok()
    });
    assert!(
        c.https_get(&ca1.pem, "/healthz").is_err(),
        "old certificate still served"
    );
    // The agent's connection, made with the old certificate, carries on.
    let before = samples(&c.collector, "i-hup");
    assert!(
        wait_until(T, || samples(&c.collector, "i-hup") >= before + 3),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert_eq!(
        log.matches("Connected to the collector.").count(),
        1,
        "the agent reconnected: {log}"
    );
    assert!(!log.contains("Connection to the collector lost"), "{log}");
}

#[test]
fn self_signed_quick_setup_in_three_commands() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(bin_path("vmmon-collector"))
        .args(["tls", "self-signed", "--data"])
        .arg(data.path())
        .args(["--hostname", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let pin = stdout.lines().last().unwrap().trim().to_string();
    assert_eq!(pin.len(), 44, "{stdout}");
    let tls_dir = data.path().join("tls");
    let leaf = Leaf {
        cert_pem: std::fs::read_to_string(tls_dir.join("cert.pem")).unwrap(),
        key_pem: std::fs::read_to_string(tls_dir.join("key.pem")).unwrap(),
        pin: pin.clone(),
    };
    let c = TlsCollector::start(&leaf);
    let cert = tls_dir.join("cert.pem").display().to_string();
    let token = c.collector.create_token("p1", "r1");
    let agent = start_agent(
        &c,
        &token,
        "i-self",
        &["--ca-file", &cert, "--pin-sha256", &pin],
    );
    assert!(
        wait_until(T, || samples(&c.collector, "i-self") >= 1),
        "{}",
        agent.log()
    );
    assert_eq!(c.https_get(&leaf.cert_pem, "/healthz").unwrap().0, 200);
}

#[test]
fn a_silent_client_cannot_hold_a_tls_slot() {
    use std::io::Read;
    let ca = TestCa::new("right CA");
    let c = TlsCollector::start(&ca.leaf(&["127.0.0.1"]));
    let mut sock = std::net::TcpStream::connect(c.collector.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let opened = std::time::Instant::now();
    // No ClientHello: the collector closes the socket when the handshake deadline passes
    // (the 10 s header read timeout), without ever answering.
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the socket closed");
    let held = opened.elapsed();
    assert!(
        held >= Duration::from_secs(8) && held < Duration::from_secs(25),
        "closed after {held:?}"
    );
    // And the collector still serves handshakes.
    assert!(c.https_get(&ca.pem, "/healthz").is_ok());
}
