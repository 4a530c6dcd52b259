//! Truth at the collector, with real agents: an image cloned with its instance id (and its
//! agent's state dir) runs twice; the collector keeps one live agent per instance.

use std::time::Duration;

use serde_json::json;
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn a_cloned_image_is_refused_while_the_original_reports_and_takes_over_after_it() {
    let c = Collector::start();
    let token = c.create_token("p-clone", "r1");
    // Short backoff so the clone retries quickly once the original is gone.
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("agent.toml");
    std::fs::write(&cfg, "max_backoff_secs = 1\n").unwrap();
    let cfg = cfg.display().to_string();
    let mut original = Agent::start(&c, &token, "vm-cloned", 1, &["--config", &cfg]);
    let sid = c.admin_session();
    let records = |c: &Collector| {
        c.legacy(&json!({"method": 611611, "session_id": sid, "limit": 1000,
            "data": {"instance_id": "vm-cloned"}}))["data"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for(T, "the original reporting", || {
        (records(&c) >= 2).then_some(())
    });
    // The clone: the same instance id and a copy of the original's state dir (as an image
    // cloned from a running VM would carry it).
    let clone_state = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(original.state.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), clone_state.path().join(entry.file_name())).unwrap();
        }
    }
    let mut clone = Agent::prepare(&c.rpc_url(), &token, "vm-cloned", 1, &["--config", &cfg]);
    // Its own boot in real life; here the same kernel, so the copied identity is removed as a
    // reboot would renew it.
    let _ = std::fs::remove_file(clone_state.path().join("agent-uid.json"));
    clone.set_args(&[
        "--collector",
        &c.rpc_url(),
        "--token",
        &token,
        "--instance-id",
        "vm-cloned",
        "--interval",
        "1",
        "--state-dir",
        &clone_state.path().display().to_string(),
        "--config",
        &cfg,
    ]);
    clone.spawn();
    let conflicts = |c: &Collector| {
        let (_, v) = c.get("/mana_api/vm?tenant_id=p-clone", &[("X-Auth-Token", &sid)]);
        v["vm_servers"][0]["agent_conflicts"].as_i64().unwrap_or(0)
    };
    wait_for(T, "the clone refused and counted", || {
        (conflicts(&c) >= 1).then_some(())
    });
    assert!(
        wait_until(T, || clone
            .log()
            .contains("already reported by another live agent")),
        "the clone logs why: {}",
        clone.log()
    );
    // The original goes away; the clone takes over (no longer refused) and reports.
    original.kill();
    let before = records(&c);
    wait_for(T, "the clone reporting after the original left", || {
        (records(&c) >= before + 3).then_some(())
    });
}
