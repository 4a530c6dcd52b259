//! Several collectors over one PostgreSQL store (`--store postgres://…`): what one collector
//! stores the other serves, and commands sent to one reach an agent connected to the other
//! (routed through PostgreSQL LISTEN/NOTIFY) with the statuses of a local agent.

use std::time::Duration;

use serde_json::{Value, json};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);

fn q(c: &Collector, sid: &str, method: i64, instance: &str, extra: Value) -> Value {
    let mut req = json!({"method": method, "data": {"instance_id": instance}, "session_id": sid});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            req[k] = v;
        }
    }
    c.legacy(&req)
}

fn signal_agent(agent: &Agent, sig: i32) {
    signal(agent.pid().unwrap(), sig);
}

#[test]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
fn commands_to_b_reach_an_agent_on_a_with_the_same_statuses() {
    let db = fresh_pg_database();
    let (_cfg_dir, cfg) = collector_config("command_timeout_ms = 3000\n");
    let cfg = cfg.to_str().unwrap();
    let a = Collector::start_on_store("127.0.0.1:0", &["--config", cfg], Some(db.clone()));
    let b = Collector::start_on_store("127.0.0.1:0", &["--config", cfg], Some(db));
    let token = a.create_token("p1", "r1");
    let mut agent = Agent::start(&a, &token, "vm-sh-1", 1, &[]);
    let sid = b.admin_session();
    // What the agent reports through A, B serves.
    wait_for(T, "B serves the agent's VM records", || {
        let r = q(&b, &sid, 611611, "vm-sh-1", json!({}));
        (r["status_code"] == 1 && r["data"].as_array().is_some_and(|a| !a.is_empty())).then_some(())
    });
    let monitoring = || {
        b.query_i64(
            "SELECT monitoring FROM instances WHERE instance_id = 'vm-sh-1'",
            &[],
        )[0]
    };
    // Unknown instance: 3 on B as on A.
    assert_eq!(
        q(&b, &sid, 32523, "no-such-vm;", json!({}))["status_code"],
        3
    );
    // Connected to A and answering: B says 2 (confirmed by the agent through A).
    let r = q(&b, &sid, 32523, "vm-sh-1;", json!({}));
    assert_eq!(r["status_code"], 2, "{r}");
    assert_eq!(monitoring(), 1);
    wait_for(T, "process records after startmonitor via B", || {
        let r = q(&a, &a.admin_session(), 611711, "vm-sh-1", json!({}));
        r["data"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
            .then_some(())
    });
    let r = q(
        &b,
        &sid,
        32525,
        "vm-sh-1;",
        json!({"data": {"instance_id": "vm-sh-1", "interval_secs": 2}}),
    );
    assert_eq!(r["status_code"], 2, "setinterval via B: {r}");
    let r = q(&b, &sid, 32524, "vm-sh-1;", json!({}));
    assert_eq!(r["status_code"], 2, "{r}");
    assert_eq!(monitoring(), 0);
    // Connected to A but silent: 4 from B, and the desired state is persisted all the same.
    signal_agent(&agent, libc::SIGSTOP);
    let r = q(&b, &sid, 32523, "vm-sh-1;", json!({}));
    signal_agent(&agent, libc::SIGCONT);
    assert_eq!(r["status_code"], 4, "{r}");
    assert_eq!(monitoring(), 1);
    // Connected nowhere: 1 (queued) from B.
    agent.kill();
    let r = wait_for(T, "status 1 once the agent is gone", || {
        let r = q(&b, &sid, 32524, "vm-sh-1;", json!({}));
        (r["status_code"] == 1).then_some(r)
    });
    assert_eq!(r["status_code"], 1);
    assert_eq!(monitoring(), 0);
}
