//! mana_api with the real agent (SPEC §3.2): its VM appears in the list with the guest's own
//! inventory, feeds its project's bandwidth, and goes SHUTOFF when it stops. Every other
//! mana_api case runs in process (`collector/src/http/tests/mana.rs`).

use std::time::Duration;

use serde_json::Value;
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);
const GIB: u64 = 1024 * 1024 * 1024;

fn ok(c: &Collector, sid: &str, path: &str) -> Value {
    let (status, body) = c.get(path, &[("X-Auth-Token", sid)]);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

fn token(c: &Collector, project: &str, region: &str, party: &str) -> String {
    c.token(project, region, party, None)
}

fn rows(body: &Value) -> Vec<Value> {
    body["data"].as_array().unwrap().clone()
}

fn mem_total_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = info.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn real_agent_appears_in_the_vm_list_and_goes_shutoff() {
    let c = Collector::start();
    let tok = token(&c, "proj-e2e", "region-e2e", "vendor-e2e");
    let mut agent = Agent::start(&c, &tok, "vm-mana-e2e", 1, &[]);
    let pw = c.add_tenant("erin", "proj-e2e");
    let sid = c.login("erin", &pw);

    let vm = wait_for(T, "the agent's VM in /mana_api/vm", || {
        let b = ok(&c, &sid, "/mana_api/vm");
        b["vm_servers"].as_array().and_then(|a| a.first().cloned())
    });
    assert_eq!(vm["instance_id"], "vm-mana-e2e");
    assert_eq!(vm["status"], "ACTIVE");
    assert_eq!(vm["tenant_id"], "proj-e2e");
    assert_eq!(vm["region"], "region-e2e");
    assert_eq!(vm["party"], "vendor-e2e");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(vm["instance_name"], hostname.trim());
    assert!(vm["cpu_num"].as_u64().unwrap() >= 1);
    let mem = mem_total_bytes();
    let want_mem = ((mem + GIB / 2) / GIB).max(1);
    assert_eq!(
        vm["mem_size"].as_u64().unwrap(),
        want_mem,
        "MemTotal {mem} B in whole GiB"
    );
    assert!(vm["disk_size"].is_u64());
    assert!(vm["lan_ip_set"].is_string() && vm["wan_ip_set"].is_string());
    // UTC (the default zone): create_at is the registration time, to the second.
    let t = chrono::NaiveDateTime::parse_from_str(
        vm["create_at"].as_str().unwrap(),
        "%Y-%m-%d %H:%M:%S",
    )
    .unwrap()
    .and_utc()
    .timestamp_millis();
    assert!(
        (now_ms() - t).abs() < 60_000,
        "create_at {}",
        vm["create_at"]
    );

    // The admin sees it as well; the region filter finds it.
    let admin = c.admin_session();
    let b = ok(
        &c,
        &admin,
        "/mana_api/vm?region=region-e2e&party=vendor-e2e",
    );
    assert_eq!(b["vm_servers"][0]["instance_id"], "vm-mana-e2e");

    // Its project has a bandwidth series (the agent's counters feed it).
    let flow = ok(&c, &sid, "/mana_api/flow");
    let flow = rows(&flow);
    assert!(flow.len() >= 144, "{} rows", flow.len());
    assert!(
        flow.iter()
            .all(|r| r["project_id"] == "proj-e2e" && r["region"] == "region-e2e")
    );
    wait_for(T, "a flow bucket from the agent's counters", || {
        let m = ok(&c, &sid, "/mana_api/flow_monthly");
        m["monthly_data"]
            .as_array()
            .and_then(|a| a.first().cloned())
    });

    // Silent for three intervals (1 s each): SHUTOFF.
    agent.kill();
    let off = wait_for(T, "SHUTOFF after the agent stops", || {
        let b = ok(&c, &sid, "/mana_api/vm");
        let v = b["vm_servers"][0].clone();
        (v["status"] == "SHUTOFF").then_some(v)
    });
    assert_eq!(off["instance_id"], "vm-mana-e2e");
}
