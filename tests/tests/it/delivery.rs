//! Nothing lost: spool, exactly-once storage, reconnects, scoped agent tokens — with the real
//! binaries killed and restarted.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(40);
/// Largest gap between consecutive 1-second samples that still means "no sample missing".
const MAX_GAP_MS: i64 = 1_800;

fn times(c: &Collector, instance: &str) -> Vec<i64> {
    c.query_i64(
        "SELECT sampled_at_ms FROM vm_samples WHERE instance_id = ?1 ORDER BY sampled_at_ms",
        &[&instance],
    )
}

fn assert_exactly_once(c: &Collector, instance: &str) -> Vec<i64> {
    let t = times(c, instance);
    let mut dedup = t.clone();
    dedup.dedup();
    assert_eq!(
        t.len(),
        dedup.len(),
        "a sample timestamp was stored twice: {t:?}"
    );
    let batches = c.query_i64(
        "SELECT COUNT(*) FROM batches WHERE instance_id = ?1",
        &[&instance],
    )[0];
    assert_eq!(batches as usize, t.len(), "one stored batch per sample");
    t
}

fn gaps(t: &[i64]) -> Vec<(i64, i64)> {
    t.windows(2)
        .filter(|w| w[1] - w[0] > MAX_GAP_MS)
        .map(|w| (w[0], w[1]))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn wait_drained(agent: &Agent) {
    assert!(
        wait_until(T, || agent.spooled() == 0),
        "spool did not drain: {}",
        agent.log()
    );
}

#[test]
fn collector_sigkill_loses_and_duplicates_nothing() {
    let mut c = Collector::start();
    let token = c.create_token("p1", "r1");
    let agent = Agent::start(&c, &token, "vm-dl-a", 1, &[]);
    wait_for(T, "first sample", || {
        (!times(&c, "vm-dl-a").is_empty()).then_some(())
    });
    let t0 = now_ms();
    // Ten seconds of 1-second sampling, with the collector SIGKILLed for the middle four.
    std::thread::sleep(Duration::from_secs(3));
    c.kill();
    let killed = now_ms();
    std::thread::sleep(Duration::from_secs(4));
    c.restart();
    std::thread::sleep(Duration::from_secs(3));
    let end = now_ms();
    wait_drained(&agent);
    let t = assert_exactly_once(&c, "vm-dl-a");
    let window: Vec<i64> = t.iter().copied().filter(|&x| x >= t0 && x <= end).collect();
    assert!(
        window.len() >= 9,
        "about ten samples in ten seconds, got {}",
        window.len()
    );
    assert!(
        window
            .iter()
            .any(|&x| x > killed + 1_000 && x < killed + 3_000),
        "samples taken while the collector was down were delivered later"
    );
    assert_eq!(gaps(&t), vec![], "no sample lost");
}

#[test]
fn agent_sigkill_restart_no_duplicate_no_loss_beyond_downtime() {
    let c = Collector::start();
    let token = c.create_token("p1", "r1");
    let mut agent = Agent::start(&c, &token, "vm-dl-b", 1, &[]);
    wait_for(T, "first sample", || {
        (!times(&c, "vm-dl-b").is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    agent.kill();
    let dead_from = now_ms();
    std::thread::sleep(Duration::from_secs(2));
    agent.spawn();
    let dead_to = now_ms();
    std::thread::sleep(Duration::from_secs(3));
    wait_drained(&agent);
    let t = assert_exactly_once(&c, "vm-dl-b");
    let g = gaps(&t);
    assert!(g.len() <= 1, "only the downtime may leave a gap: {g:?}");
    for (a, b) in g {
        assert!(
            a >= dead_from - 1_500 && b <= dead_to + 2_500,
            "gap {a}..{b} outside the downtime {dead_from}..{dead_to}"
        );
    }
    assert!(
        t.iter().any(|&x| x > dead_to),
        "sampling resumed after the restart"
    );
}

#[test]
fn tiny_spool_drops_oldest_and_counts_exactly() {
    // The collector is down while the agent samples into a spool that holds only a few batches.
    let mut c = Collector::start();
    let token = c.create_token("p1", "r1");
    c.kill();
    let mut agent = Agent::prepare(
        &c.rpc_url(),
        &token,
        "vm-dl-c",
        1,
        &["--spool-max-bytes", "1500"],
    );
    agent.spawn();
    let outage_start = now_ms();
    assert!(wait_until(
        T,
        || agent.state_file()["dropped_samples_total"]
            .as_u64()
            .unwrap_or(0)
            >= 4
    ));
    c.restart();
    let up = now_ms();
    wait_drained(&agent);
    let dropped = agent.state_file()["dropped_samples_total"]
        .as_u64()
        .unwrap();
    assert!(dropped >= 4);
    // The drop count reaches the API (611611 `dropped_samples`).
    let sid = c.admin_session();
    wait_for(T, "dropped_samples on 611611", || {
        let r = c.legacy(
            &json!({"method": 611611, "data": {"instance_id": "vm-dl-c"}, "session_id": sid}),
        );
        let d = r["data"]
            .as_array()
            .and_then(|a| a.first())
            .map(|v| v["dropped_samples"].clone());
        (d.as_ref().and_then(Value::as_u64) >= Some(dropped)).then_some(())
    });
    agent.kill();
    let produced = agent.state_file()["next_seq"].as_u64().unwrap();
    let dropped = agent.state_file()["dropped_samples_total"]
        .as_u64()
        .unwrap();
    let stored = times(&c, "vm-dl-c");
    let waiting = agent.spooled() as u64;
    assert_eq!(
        stored.len() as u64 + dropped + waiting,
        produced,
        "every sample is stored, dropped-and-counted, or still spooled"
    );
    // The oldest went: what survived the outage is its newest part, contiguous up to the restart.
    let first = stored[0];
    assert!(
        first > outage_start + 2_000,
        "the oldest samples of the outage were the ones dropped"
    );
    let g = gaps(&stored);
    assert_eq!(g, vec![], "kept samples are contiguous");
    // (Whether kept samples predate `up` depends on the agent's reconnect backoff.)
    let _ = up;
}

#[test]
fn damaged_spool_does_not_stop_the_agent() {
    let c = Collector::start();
    let token = c.create_token("p1", "r1");
    let mut agent = Agent::prepare(&c.rpc_url(), &token, "vm-dl-d", 1, &[]);
    let spool = agent.state.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(
        spool.join("00000000000000000000.batch"),
        b"\x00\x01garbage\xff",
    )
    .unwrap();
    std::fs::write(spool.join("00000000000000000001.batch"), br#"{"batch_id":"6d1c2b1e-1f0e-4c7e-9b55-2d1f0c3a4b5c","instance_id":"vm-dl-d","seq":1,"samp"#).unwrap();
    std::fs::write(
        agent.state.path().join("agent-state.json"),
        b"{\"next_seq\": ",
    )
    .unwrap();
    agent.spawn();
    let sid = c.admin_session();
    let rec = wait_for(T, "samples from the agent with the damage reported", || {
        let r = c.legacy(
            &json!({"method": 611611, "data": {"instance_id": "vm-dl-d"}, "session_id": sid}),
        );
        r["data"]
            .as_array()
            .and_then(|a| a.first())
            .filter(|v| v["dropped_samples"].as_u64() >= Some(2))
            .cloned()
    });
    assert_eq!(
        rec["dropped_samples"], 2,
        "two damaged batches, one sample each"
    );
    let n = times(&c, "vm-dl-d").len();
    assert!(
        wait_until(T, || times(&c, "vm-dl-d").len() >= n + 2),
        "sampling goes on"
    );
    assert!(agent.is_running());
    let aside = std::fs::read_dir(spool.join("corrupt")).unwrap().count();
    assert_eq!(aside, 3, "damaged files are moved aside, not deleted");
    assert!(
        agent.log().contains("moved aside"),
        "the damage is logged: {}",
        agent.log()
    );
}

#[test]
fn foreign_project_and_revoked_tokens_are_refused() {
    let c = Collector::start();
    let token_a = c.create_token("proj-a", "r1");
    let token_b = c.create_token("proj-b", "r1");
    let mut owner = Agent::start(&c, &token_a, "vm-dl-e", 1, &[]);
    wait_for(T, "owner's samples", || {
        (!times(&c, "vm-dl-e").is_empty()).then_some(())
    });
    owner.kill();

    // Another project's agent claiming the same instance id is refused and stores nothing.
    let mut intruder = Agent::start(&c, &token_b, "vm-dl-e", 1, &[]);
    assert!(
        wait_until(T, || intruder.log().contains("refused this agent's token")),
        "refusal is logged: {}",
        intruder.log()
    );
    let before = times(&c, "vm-dl-e").len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        times(&c, "vm-dl-e").len(),
        before,
        "the intruder stored nothing"
    );
    let project: Vec<String> = {
        let conn = rusqlite_open(&c);
        let mut st = conn
            .prepare("SELECT project FROM instances WHERE instance_id = 'vm-dl-e'")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(project, vec!["proj-a".to_string()], "ownership unchanged");
    assert!(
        intruder.is_running(),
        "a refused agent backs off, it does not exit or crash"
    );
    // Backing off, not spinning: a handful of attempts at most, and little CPU.
    let attempts = intruder.log().matches("refused this agent's token").count();
    assert!(
        attempts <= 3,
        "{attempts} refusals in a few seconds means a tight loop"
    );
    intruder.kill();

    // Revoking a live agent's token stops its reports; the agent stays up and says why.
    let token_c = c.create_token("proj-c", "r1");
    let mut live = Agent::start(&c, &token_c, "vm-dl-f", 1, &[]);
    wait_for(T, "live agent's samples", || {
        (!times(&c, "vm-dl-f").is_empty()).then_some(())
    });
    let list = c.cli(&["token", "list"], &[]);
    let id = list
        .lines()
        .find(|l| l.contains("proj-c"))
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_string();
    c.cli(&["token", "revoke", "--id", &id], &[]);
    assert!(
        wait_until(T, || live.log().contains("refused this agent's token")),
        "{}",
        live.log()
    );
    let n = times(&c, "vm-dl-f").len();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        times(&c, "vm-dl-f").len() <= n + 1,
        "no reports after revocation"
    );
    assert!(live.is_running());
}

fn rusqlite_open(c: &Collector) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(c.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
}

#[test]
fn rpc_errors_name_the_problem() {
    let c = Collector::start();
    let token_a = c.create_token("proj-a", "r1");
    let token_b = c.create_token("proj-b", "r1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = c.rpc_url();
    let register = |token: &str, instance: &str| -> Result<(), (i32, String)> {
        let url = url.clone();
        let token = token.to_string();
        let instance = instance.to_string();
        rt.block_on(async move {
            use vmmon_common::rpc::MonitorApiClient;
            let client = agent_client(&url, &token).await;
            client
                .register(register_request(&instance, 5))
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    jsonrpsee::core::client::Error::Call(o) => (o.code(), o.message().to_string()),
                    other => (0, other.to_string()),
                })
        })
    };
    use vmmon_common::rpc::codes;
    assert!(register(&token_a, "vm-rpc-1").is_ok());
    let (code, msg) = register(&token_b, "vm-rpc-1").unwrap_err();
    assert_eq!(code, codes::FORBIDDEN);
    assert!(msg.contains("another project"), "{msg}");
    // An admin can free an id another project registered first; then the rightful owner registers.
    let listed = c.cli(&["instance", "list"], &[]);
    assert!(listed.contains("vm-rpc-1\tproj-a"), "{listed}");
    c.cli(&["instance", "remove", "--id", "vm-rpc-1"], &[]);
    assert!(register(&token_b, "vm-rpc-1").is_ok());
    assert!(
        c.cli(&["instance", "list"], &[])
            .contains("vm-rpc-1\tproj-b")
    );
    assert_eq!(
        register(&token_a, "vm-rpc-1").unwrap_err().0,
        codes::FORBIDDEN
    );
    let (code, msg) = register("vmt_not-a-token", "vm-rpc-2").unwrap_err();
    assert_eq!(code, codes::UNAUTHORIZED);
    assert!(msg.contains("unknown agent token"), "{msg}");
    let id = c
        .cli(&["token", "list"], &[])
        .lines()
        .find(|l| l.contains("proj-a"))
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    c.cli(&["token", "revoke", "--id", &id], &[]);
    let (code, msg) = register(&token_a, "vm-rpc-1").unwrap_err();
    assert_eq!(code, codes::UNAUTHORIZED);
    assert!(msg.contains("revoked"), "{msg}");
    let started = Instant::now();
    let (code, _) = register(&token_b, "bad id!").unwrap_err();
    assert_eq!(code, codes::FORBIDDEN);
    assert!(started.elapsed() < T);
}

#[test]
fn connections_without_a_valid_token_may_only_send_tiny_messages() {
    let c = Collector::start();
    let good = c.create_token("proj-a", "r1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = c.rpc_url();
    let (refused, accepted) = rt.block_on(async move {
        use vmmon_common::rpc::MonitorApiClient;
        let mut big = register_request("vm-big", 5);
        big.inventory.hostname = "h".repeat(100_000);
        let stranger = agent_client(&url, "vmt_unknown").await;
        let refused = stranger
            .register(big.clone())
            .await
            .unwrap_err()
            .to_string();
        let agent = agent_client(&url, &good).await;
        let accepted = agent.register(big).await.unwrap_err().to_string();
        (refused, accepted)
    });
    // Without a token, 100 kB is not even parsed; with one, it is parsed and refused by rule.
    assert!(!refused.contains("inventory hostname"), "{refused}");
    assert!(
        accepted.contains("inventory hostname is longer"),
        "{accepted}"
    );
    assert_eq!(
        c.query_i64("SELECT COUNT(*) FROM instances", &[])[0],
        0,
        "nothing stored"
    );
}

#[test]
fn more_than_a_hundred_agents_connect_at_once() {
    // jsonrpsee's default caps a server at 100 connections; a collector serves a fleet.
    let c = Collector::start();
    let token = c.create_token("fleet", "r1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = c.rpc_url();
    let n = rt.block_on(async move {
        use vmmon_common::rpc::MonitorApiClient;
        let mut clients = Vec::new();
        for i in 0..150 {
            let client = agent_client(&url, &token).await;
            client
                .register(register_request(&format!("vm-fleet-{i}"), 30))
                .await
                .unwrap();
            clients.push(client);
        }
        clients.iter().filter(|c| c.is_connected()).count()
    });
    assert_eq!(n, 150);
    assert_eq!(
        c.query_i64(
            "SELECT COUNT(*) FROM instances WHERE project = 'fleet'",
            &[]
        )[0],
        150
    );
}
