//! Several collector URLs: the agent moves to the next collector when one cannot be reached,
//! loses nothing on the way, and takes commands from the collector it reached.
//!
//! Here each collector has its own SQLite store (a snapshot of the first one's, so the agent's
//! token is valid on both); with a shared PostgreSQL store the same moves happen over one store.

use std::time::Duration;

use serde_json::json;
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);

fn wait_stored(c: &Collector, instance: &str, n: usize) {
    wait_for(T, &format!("{n} stored batches of {instance}"), || {
        (c.batch_seqs(instance).len() >= n).then_some(())
    });
}

#[test]
fn agent_moves_to_the_next_collector_and_loses_nothing() {
    let mut a = Collector::start();
    let token = a.create_token("p1", "r1");
    let b = a.start_sibling();
    let mut agent = Agent::start(&a, &token, "vm-fo-1", 1, &["--collector", &b.rpc_url()]);
    wait_stored(&a, "vm-fo-1", 3);
    assert!(
        b.batch_seqs("vm-fo-1").is_empty(),
        "the first URL is used while it answers"
    );

    a.kill();
    // The agent reaches B within its (short, reset) backoff and delivers there.
    wait_stored(&b, "vm-fo-1", 3);
    let sid = b.admin_session();
    let r =
        b.legacy(&json!({"method": 32523, "data": {"instance_id": "vm-fo-1;"}, "session_id": sid}));
    assert_eq!(
        r["status_code"], 2,
        "a command sent to B reaches the agent on B: {r}"
    );
    wait_stored(&b, "vm-fo-1", b.batch_seqs("vm-fo-1").len() + 2);
    agent.kill();

    // Every batch the agent made is stored on A or B, or still spooled; none twice in a store.
    let on_a = a.batch_seqs("vm-fo-1");
    let on_b = b.batch_seqs("vm-fo-1");
    for (name, seqs) in [("A", &on_a), ("B", &on_b)] {
        let mut once = seqs.clone();
        once.dedup();
        assert_eq!(&once, seqs, "a batch stored twice on {name}");
    }
    let spooled = agent.spooled_seqs();
    let next = agent.state_file()["next_seq"].as_u64().unwrap();
    let missing: Vec<u64> = (0..next)
        .filter(|s| !on_a.contains(s) && !on_b.contains(s) && !spooled.contains(s))
        .collect();
    assert_eq!(
        missing,
        Vec::<u64>::new(),
        "no batch lost across the failover"
    );
    assert!(
        on_b.iter()
            .all(|s| on_a.last().is_none_or(|last| s >= last)),
        "B got only what A had not acknowledged: A {on_a:?}, B {on_b:?}"
    );
}

#[test]
fn an_unreachable_first_collector_is_skipped() {
    let c = Collector::start();
    let token = c.create_token("p1", "r1");
    // Nothing listens on the first address: the agent goes on to the second at once and stays.
    let dead = format!("ws://{}/rpc", free_addr());
    let mut agent = Agent::prepare(&dead, &token, "vm-fo-2", 1, &["--collector", &c.rpc_url()]);
    agent.spawn();
    wait_stored(&c, "vm-fo-2", 3);
    let log = agent.log();
    assert!(
        log.contains("Cannot reach the collector") && log.contains(&dead),
        "the dead collector is named in the log: {log}"
    );
}
