//! Nothing lost: spool, exactly-once storage, reconnects, scoped agent tokens — with the real
//! binaries killed and restarted.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmmon_tests::*;

const T: Duration = Duration::from_secs(60);

fn times(c: &Collector, instance: &str) -> Vec<i64> {
    c.query_i64(
        "SELECT sampled_at_ms FROM vm_samples WHERE instance_id = ?1 ORDER BY sampled_at_ms",
        &[&instance],
    )
}

/// Accounts for every batch the (stopped) agent produced, by its sequence numbers: each is
/// stored once or still spooled, or it is missing. Returns the missing numbers. Stored samples
/// are checked for duplicates too.
fn missing_seqs(c: &Collector, agent: &Agent, instance: &str) -> Vec<u64> {
    let stored = c.batch_seqs(instance);
    let mut once = stored.clone();
    once.dedup();
    assert_eq!(once, stored, "a batch was stored twice");
    let t = times(c, instance);
    let mut dedup = t.clone();
    dedup.dedup();
    assert_eq!(t.len(), dedup.len(), "a sample was stored twice: {t:?}");
    assert_eq!(t.len(), stored.len(), "one sample per stored batch");
    let spooled = agent.spooled_seqs();
    let next = agent.state_file()["next_seq"].as_u64().unwrap();
    (0..next)
        .filter(|s| stored.binary_search(s).is_err() && spooled.binary_search(s).is_err())
        .collect()
}

fn wait_drained(agent: &Agent) {
    assert!(
        wait_until(T, || agent.spooled() == 0),
        "spool did not drain: {}",
        agent.log()
    );
}

fn wait_stored(c: &Collector, instance: &str, n: usize) {
    wait_for(T, &format!("{n} stored batches of {instance}"), || {
        (c.batch_seqs(instance).len() >= n).then_some(())
    });
}

#[test]
fn collector_sigkill_loses_and_duplicates_nothing() {
    let mut c = Collector::start();
    let token = c.create_token("p1", "r1");
    let mut agent = Agent::start(&c, &token, "vm-dl-a", 1, &[]);
    wait_stored(&c, "vm-dl-a", 3);
    c.kill();
    // Samples go on while the collector is down; they wait in the spool.
    assert!(
        wait_until(T, || agent.spooled() >= 3),
        "nothing spooled: {}",
        agent.log()
    );
    let during_outage = agent.spooled_seqs();
    c.restart();
    wait_drained(&agent);
    let stored = c.batch_seqs("vm-dl-a");
    assert!(
        during_outage.iter().all(|s| stored.contains(s)),
        "batches spooled during the outage {during_outage:?} were delivered later: {stored:?}"
    );
    wait_stored(&c, "vm-dl-a", stored.len() + 2);
    agent.kill();
    assert_eq!(
        missing_seqs(&c, &agent, "vm-dl-a"),
        Vec::<u64>::new(),
        "no batch lost"
    );
}

#[test]
fn agent_sigkill_restart_no_duplicate_no_loss_beyond_downtime() {
    let c = Collector::start();
    let token = c.create_token("p1", "r1");
    let mut agent = Agent::start(&c, &token, "vm-dl-b", 1, &[]);
    wait_stored(&c, "vm-dl-b", 3);
    agent.kill();
    let before = c.batch_seqs("vm-dl-b").len();
    agent.spawn();
    wait_stored(&c, "vm-dl-b", before + 3);
    wait_drained(&agent);
    agent.kill();
    // The restarted agent numbers on from its persisted state, and resends what it had spooled
    // when killed: every number it ever gave out is stored exactly once.
    assert_eq!(
        missing_seqs(&c, &agent, "vm-dl-b"),
        Vec::<u64>::new(),
        "no batch lost"
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
    assert!(wait_until(
        T,
        || agent.state_file()["dropped_samples_total"]
            .as_u64()
            .unwrap_or(0)
            >= 4
    ));
    c.restart();
    wait_drained(&agent);
    let dropped = agent.state_file()["dropped_samples_total"]
        .as_u64()
        .unwrap();
    // The drop count reaches the API (611611 `dropped_samples`) exactly: the collector is up
    // again, so the agent drops nothing more.
    let sid = c.admin_session();
    wait_for(T, "dropped_samples on 611611", || {
        let r = c.legacy(
            &json!({"method": 611611, "data": {"instance_id": "vm-dl-c"}, "session_id": sid}),
        );
        let d = r["data"]
            .as_array()
            .and_then(|a| a.first())
            .map(|v| v["dropped_samples"].clone());
        (d.as_ref().and_then(Value::as_u64) == Some(dropped)).then_some(())
    });
    agent.kill();
    assert_eq!(
        agent.state_file()["dropped_samples_total"].as_u64(),
        Some(dropped),
        "no drop after the collector came back"
    );
    // Exactly the oldest `dropped` batches are missing; every other one is stored (or spooled).
    let missing = missing_seqs(&c, &agent, "vm-dl-c");
    assert_eq!(
        missing,
        (0..dropped).collect::<Vec<_>>(),
        "the oldest were dropped, and exactly as many as counted"
    );
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
    // It samples on into its spool and cannot deliver any of it.
    assert!(
        wait_until(T, || intruder.spooled() >= 3),
        "{}",
        intruder.log()
    );
    assert_eq!(
        times(&c, "vm-dl-e").len(),
        before,
        "the intruder stored nothing"
    );
    let owned = c.query_i64(
        "SELECT COUNT(*) FROM instances WHERE instance_id = 'vm-dl-e' AND project = ?1",
        &[&"proj-a"],
    );
    assert_eq!(owned, vec![1], "ownership unchanged");
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

    // Revoking a live agent's token reaches its open connection within 10 s (README), although
    // this agent reports and heartbeats only every 30 s; it stays up and says why.
    let token_c = c.create_token("proj-c", "r1");
    let mut live = Agent::start(&c, &token_c, "vm-dl-f", 30, &[]);
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
    // Connected: the collector holds its command subscription.
    let sid = c.admin_session();
    let stop =
        c.legacy(&json!({"method": 32524, "data": {"instance_id": "vm-dl-f"}, "session_id": sid}));
    assert_eq!(stop["status_code"], 2, "{stop}");
    c.cli(&["token", "revoke", "--id", &id], &[]);
    let revoked = Instant::now();
    assert!(
        wait_until(T, || live.log().contains("refused this agent's token")),
        "{}",
        live.log()
    );
    let took = revoked.elapsed();
    assert!(
        took <= Duration::from_secs(10),
        "revocation reached the 30 s agent after {took:?}"
    );
    let r =
        c.legacy(&json!({"method": 32524, "data": {"instance_id": "vm-dl-f"}, "session_id": sid}));
    assert_eq!(r["status_code"], 1, "its connection is gone: {r}");
    assert!(live.is_running());
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
    let (big_refused, small_refused, accepted) = rt.block_on(async move {
        use vmmon_common::rpc::MonitorApiClient;
        let mut big = register_request("vm-big", 5);
        big.inventory.hostname = "h".repeat(100_000);
        let mut small = register_request("vm-big", 5);
        small.inventory.hostname = "h".repeat(10_000);
        let stranger = agent_client(&url, "vmt_unknown").await;
        let big_refused = stranger
            .register(big.clone())
            .await
            .unwrap_err()
            .to_string();
        let stranger = agent_client(&url, "vmt_unknown").await;
        let small_refused = stranger.register(small).await.unwrap_err().to_string();
        let agent = agent_client(&url, &good).await;
        let accepted = agent.register(big).await.unwrap_err().to_string();
        (big_refused, small_refused, accepted)
    });
    // Under the cap, a stranger's message is read and answered with the token's problem; over
    // it (100 kB), it is refused unread: the answer cannot name the token, since the collector
    // never parsed the call. With a valid token the same 100 kB is parsed and refused by rule.
    assert!(
        small_refused.contains("unknown agent token"),
        "{small_refused}"
    );
    assert!(
        !big_refused.contains("unknown agent token") && !big_refused.contains("inventory"),
        "a 100 kB message without a valid token was parsed: {big_refused}"
    );
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

/// An instance removed while its agent is still connected, then registered by another project:
/// the old agent's very next report is refused with `NOT_REGISTERED` (ingest finds the id is
/// another project's), its connection forgets the instance (heartbeats too), and registering
/// again is refused; none of its later batches is stored for the new owner.
#[test]
fn a_removed_instance_taken_by_another_project_is_no_longer_the_old_agents() {
    use vmmon_common::rpc::{MonitorApiClient, codes};
    use vmmon_common::test_support as ts;
    use vmmon_common::wire::{DesiredState, Heartbeat, Sample};
    let c = Collector::start();
    let token_a = c.create_token("proj-a", "r1");
    let token_b = c.create_token("proj-b", "r1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = c.rpc_url();
    let now = vmmon_common::vocab::now_ms();
    let batch = |seq: u64| {
        let sample = Sample {
            vm: ts::vm_sample(now - 120_000 + (seq % 100) as i64 * 1_000, 0, 0),
            processes: None,
        };
        ts::batch("vm-moved", seq, vec![sample])
    };
    let code = |e: jsonrpsee::core::client::Error| match e {
        jsonrpsee::core::client::Error::Call(o) => o.code(),
        other => panic!("not a call error: {other}"),
    };
    let old = rt.block_on(agent_client(&url, &token_a));
    rt.block_on(old.register(register_request("vm-moved", 5)))
        .unwrap();
    rt.block_on(old.report(batch(0))).unwrap();
    wait_stored(&c, "vm-moved", 1);

    c.cli(&["instance", "remove", "--id", "vm-moved"], &[]);
    let new = rt.block_on(agent_client(&url, &token_b));
    rt.block_on(new.register(register_request("vm-moved", 5)))
        .unwrap();
    let seq = 1;
    assert_eq!(
        code(rt.block_on(old.report(batch(seq))).unwrap_err()),
        codes::NOT_REGISTERED,
        "the old agent's next report is refused at once"
    );
    let heartbeat = Heartbeat {
        instance_id: "vm-moved".into(),
        applied: DesiredState {
            monitoring: false,
            interval_secs: 5,
        },
        spooled_batches: 0,
        dropped_samples_total: 0,
    };
    assert_eq!(
        code(rt.block_on(old.heartbeat(heartbeat)).unwrap_err()),
        codes::NOT_REGISTERED
    );
    assert_eq!(
        code(
            rt.block_on(old.register(register_request("vm-moved", 5)))
                .unwrap_err()
        ),
        codes::FORBIDDEN
    );
    // The new owner's batches are stored; the old agent's refused ones are not.
    rt.block_on(new.report(batch(1_000))).unwrap();
    let seqs = c.batch_seqs("vm-moved");
    assert!(seqs.contains(&1_000), "{seqs:?}");
    assert!(
        !seqs.contains(&seq),
        "the refused batch {seq} was stored: {seqs:?}"
    );
}

/// Process records as arrays (the agent's spool form, sent once the collector's acknowledgement
/// says it reads them) are stored as the same records sent as objects; a malformed array record
/// is refused as a malformed object is, and its batch stores nothing.
#[test]
fn array_process_records_store_as_objects_do_and_malformed_ones_change_nothing() {
    use jsonrpsee::core::client::ClientT;
    use vmmon_common::rpc::MonitorApiClient;
    use vmmon_common::test_support as ts;
    use vmmon_common::wire::{ReportAck, Sample, ext::BatchWithExt};
    let c = Collector::start();
    let token = c.create_token("p-arr", "r1");
    let at = vmmon_common::vocab::now_ms() - 60_000;
    let mut gone = ts::process(2, "nginx", 2.5);
    gone.shutdown_time = Some(1_764_000_100.25);
    gone.unreadable = vec!["disk_read_kib_per_sec".into()];
    let sample = |at_ms| Sample {
        vm: ts::vm_sample(at_ms, 1, 1),
        processes: Some(vec![ts::process(1, "init", 0.5), gone.clone()]),
    };
    let arrays = |seq, at_ms| {
        let b = ts::batch("vm-arr-a", seq, vec![sample(at_ms)]);
        serde_json::to_value(BatchWithExt {
            batch: &b,
            exts: &[],
        })
        .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = agent_client(&c.rpc_url(), &token).await;
        for id in ["vm-arr-o", "vm-arr-a"] {
            client.register(register_request(id, 30)).await.unwrap();
        }
        let ack = client
            .report(ts::batch("vm-arr-o", 0, vec![sample(at)]))
            .await
            .unwrap();
        assert_eq!(
            ack.process_fields as usize,
            vmmon_common::wire::PROCESS_FIELDS.len(),
            "the collector reads arrays of every field"
        );
        let sent = arrays(0, at);
        assert!(sent["samples"][0]["processes"][1].is_array(), "{sent}");
        let ack: ReportAck = client
            .request("monitor_report", jsonrpsee::rpc_params![sent])
            .await
            .unwrap();
        assert!(!ack.duplicate);
        // (Every malformed shape is in `vmmon_common`'s unit test; here the collector's answer.)
        for bad in [
            json!([
                2,
                1.5,
                "nginx",
                2.5,
                1.0,
                0.0,
                0.0,
                0.0,
                0.0,
                null,
                [],
                "extra"
            ]),
            json!(["2", 1.5, "nginx", 2.5, 1.0, 0.0, 0.0, 0.0, 0.0, null]),
        ] {
            let mut v = arrays(1, at + 30_000);
            v["samples"][0]["processes"][1] = bad.clone();
            let err = client
                .request::<ReportAck, _>("monitor_report", jsonrpsee::rpc_params![v])
                .await
                .unwrap_err();
            assert!(
                matches!(err, jsonrpsee::core::client::Error::Call(_)),
                "{bad}: {err}"
            );
        }
    });
    let count = |table: &str, id: &str| {
        c.query_i64(
            &format!("SELECT COUNT(*) FROM {table} WHERE instance_id = ?1"),
            &[&id],
        )[0]
    };
    for table in ["process_samples", "vm_samples", "batches"] {
        assert_eq!(
            count(table, "vm-arr-a"),
            count(table, "vm-arr-o"),
            "{table}: the refused batches stored nothing"
        );
    }
    assert_eq!(count("process_samples", "vm-arr-a"), 2);
    let sid = c.admin_session();
    // The newest sample's processes, without what names the row or the instance.
    let records = |id: &str| {
        let r = c.legacy(
            &json!({"method": 611711, "data": {"instance_id": id}, "session_id": sid, "limit": 10}),
        );
        let mut data = r["data"].clone();
        for rec in data.as_array_mut().into_iter().flatten() {
            if let Some(o) = rec.as_object_mut() {
                o.remove("_id");
                o.remove("instance_id");
            }
        }
        data
    };
    let (objects, arrays) = (records("vm-arr-o"), records("vm-arr-a"));
    assert_eq!(objects.as_array().map(Vec::len), Some(2), "{objects}");
    assert_eq!(arrays, objects);
}
