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

#[test]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
fn store_copy_moves_a_sqlite_store_with_matching_counts_and_checksums() {
    // A SQLite collector with samples, users, sessions, tokens and a CDN user.
    let mut c = Collector::start_on_store("127.0.0.1:0", &[], None);
    let token = c.create_token("p1", "r1");
    c.add_tenant("tenant-x", "p1");
    c.cli(
        &[
            "cdn-user",
            "add",
            "--name",
            "cdn-x",
            "--domains",
            "a.example,b.example",
        ],
        &[("VMMON_CDN_SECRET", "s3cret-s3cret")],
    );
    let mut agent = Agent::start(&c, &token, "vm-copy-1", 1, &[]);
    let sid = c.admin_session();
    wait_for(T, "a few stored batches", || {
        (c.batch_seqs("vm-copy-1").len() >= 3).then_some(())
    });
    agent.kill();
    let before = q(&c, &sid, 611611, "vm-copy-1", json!({"limit": 1000}));
    c.kill();
    let db = fresh_pg_database();
    let out = std::process::Command::new(bin_path("vmmon-collector"))
        .args(["store", "copy", "--from"])
        .arg(c.data.path())
        .args(["--to", &db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = std::collections::HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 5, "{line}");
        assert_eq!(f[1], f[3], "row counts of {}", f[0]);
        assert_eq!(f[2], f[4], "checksums of {}", f[0]);
        seen.insert(f[0].to_string(), f[1].parse::<u64>().unwrap());
    }
    for (table, at_least) in [
        ("vm_samples", 3),
        ("batches", 3),
        ("users", 2),
        ("sessions", 1),
        ("agent_tokens", 1),
        ("instances", 1),
        ("cdn_users", 1),
        ("cdn_user_domains", 2),
    ] {
        assert!(
            seen.get(table).copied().unwrap_or(0) >= at_least,
            "{table}: {text}"
        );
    }
    // A second copy into the now non-empty store is refused and changes nothing.
    let again = std::process::Command::new(bin_path("vmmon-collector"))
        .args(["store", "copy", "--from"])
        .arg(c.data.path())
        .args(["--to", &db])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("copy only into an empty store"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // A collector on the PostgreSQL copy serves the same records, and the old session works.
    let p = Collector::start_on_store("127.0.0.1:0", &[], Some(db));
    let after = q(&p, &sid, 611611, "vm-copy-1", json!({"limit": 1000}));
    assert_eq!(after, before);
    assert_eq!(
        p.batch_seqs("vm-copy-1").len(),
        seen["batches"] as usize,
        "every batch id kept for dedup"
    );
}

#[test]
#[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
fn failover_between_collectors_on_one_postgres_loses_and_doubles_nothing() {
    let db = fresh_pg_database();
    let mut a = Collector::start_on_store("127.0.0.1:0", &[], Some(db.clone()));
    let b = Collector::start_on_store("127.0.0.1:0", &[], Some(db));
    let token = a.create_token("p1", "r1");
    let ids = ["vm-fo-pg-1", "vm-fo-pg-2"];
    let mut agents: Vec<Agent> = ids
        .iter()
        .map(|id| Agent::start(&a, &token, id, 1, &["--collector", &b.rpc_url()]))
        .collect();
    for id in ids {
        wait_for(T, "batches through A", || {
            (a.batch_seqs(id).len() >= 3).then_some(())
        });
    }
    // SIGKILL A: the agents go on to B within their backoff, into the same store.
    a.kill();
    let stored_before: Vec<usize> = ids.iter().map(|id| b.batch_seqs(id).len()).collect();
    for (id, before) in ids.iter().zip(&stored_before) {
        wait_for(T, "batches through B after A died", || {
            (b.batch_seqs(id).len() >= before + 3).then_some(())
        });
    }
    // Commands sent to B reach the agents now on B: confirmed.
    let sid = b.admin_session();
    for id in ids {
        let r = q(&b, &sid, 32523, &format!("{id};"), json!({}));
        assert_eq!(r["status_code"], 2, "{id}: {r}");
    }
    for (agent, id) in agents.iter_mut().zip(ids) {
        agent.kill();
        // Each batch the agent made is stored exactly once (a resend of what A had stored but
        // not acknowledged is a duplicate in the shared store) or is still in its spool.
        let stored = b.batch_seqs(id);
        let mut once = stored.clone();
        once.dedup();
        assert_eq!(once, stored, "{id}: a batch stored twice");
        let spooled = agent.spooled_seqs();
        let next = agent.state_file()["next_seq"].as_u64().unwrap();
        let missing: Vec<u64> = (0..next)
            .filter(|s| !stored.contains(s) && !spooled.contains(s))
            .collect();
        assert_eq!(missing, Vec::<u64>::new(), "{id}: batches lost");
    }
}
