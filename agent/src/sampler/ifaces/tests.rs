use super::*;

fn dev(name: &str, rx: u64, tx: u64) -> DevCounters {
    DevCounters {
        name: name.into(),
        a: rx,
        b: tx,
    }
}

/// Interfaces named `eth*` count; ifindex from the table.
fn tick(t: &mut NetTotals, nets: &[DevCounters], index: &[(&str, u32)]) -> (u64, u64) {
    t.update(
        nets,
        |n| n.starts_with("eth"),
        |n| index.iter().find(|(m, _)| *m == n).map(|&(_, i)| i),
    )
}

#[test]
fn globs() {
    let g = |p: &str| Glob::new(p).unwrap();
    assert!(g("eth*").matches("eth0"));
    assert!(g("eth*").matches("eth"));
    assert!(!g("eth*").matches("veth0"));
    assert!(g("*eth*").matches("veth0"));
    assert!(g("en?s[0-9]").matches("enps3"));
    assert!(!g("en?s[0-9]").matches("enpsx"));
    assert!(g("[!v]*").matches("eth0"));
    assert!(!g("[!v]*").matches("veth0"));
    assert!(g("br-*a").matches("br-xxa"));
    assert!(!g("br-*a").matches("br-xxab"));
    assert!(g("[]x]").matches("]"));
    assert!(Glob::new("eth[0").is_err());
    assert!(Glob::new("").is_err());
}

#[test]
fn selector_default_rule_include_and_exclude() {
    let default = NetSelector::default();
    assert!(default.counts("eth0", || true));
    assert!(!default.counts("veth1", || false));
    assert!(!default.counts("lo", || true));
    let s = NetSelector::new(&["veth*".into(), "br0".into()], &["veth9".into()]).unwrap();
    assert!(
        s.counts("veth1", || false),
        "include replaces the device rule"
    );
    assert!(!s.counts("eth0", || true));
    assert!(!s.counts("veth9", || false), "exclude wins");
    let s = NetSelector::new(&[], &["eth1".into()]).unwrap();
    assert!(s.counts("eth0", || true) && !s.counts("eth1", || true));
    assert_eq!(
        NetSelector::new(&["a[".into()], &["".into()])
            .unwrap_err()
            .len(),
        2
    );
}

#[test]
fn sysfs_tells_devices_from_virtual_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("class/net");
    std::fs::create_dir_all(&class).unwrap();
    std::os::unix::fs::symlink(
        "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
        class.join("eth0"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../../devices/virtual/net/veth1", class.join("veth1")).unwrap();
    let sys = SysNet::new(dir.path());
    assert!(sys.backed_by_device("eth0"));
    assert!(!sys.backed_by_device("veth1"));
    assert!(sys.backed_by_device("unknown"), "no sysfs entry: counted");
}

#[test]
fn appearing_vanishing_and_renamed_interfaces_add_and_lose_nothing() {
    let mut t = NetTotals::restore(None, "boot-a");
    // First tick without saved state: the totals start at the plain sum older agents sent
    // (veth0's 5000 included, once); the counted deltas are eth0's counters since boot.
    assert_eq!(
        tick(
            &mut t,
            &[dev("eth0", 100, 10), dev("veth0", 5000, 5000)],
            &[("eth0", 2)]
        ),
        (100, 10)
    );
    assert_eq!(t.totals(), (5100, 5010));
    // From then on veth0 adds nothing.
    assert_eq!(
        tick(
            &mut t,
            &[dev("eth0", 100, 10), dev("veth0", 9000, 9000)],
            &[("eth0", 2)]
        ),
        (0, 0)
    );
    let mut t = NetTotals::restore(None, "boot-a");
    tick(&mut t, &[dev("eth0", 100, 10)], &[("eth0", 2)]);
    // eth1 moved in with 200 MB of counters: adds nothing; eth0 +50.
    let moved = 200_000_000;
    assert_eq!(
        tick(
            &mut t,
            &[dev("eth0", 150, 20), dev("eth1", moved, moved)],
            &[("eth0", 2), ("eth1", 7)]
        ),
        (50, 10)
    );
    assert_eq!(t.totals(), (150, 20));
    assert_eq!(t.counted(), vec!["eth0", "eth1"]);
    // eth1 grows by 1000 then is deleted while eth0 moves 40: its total stays.
    tick(
        &mut t,
        &[dev("eth0", 150, 20), dev("eth1", moved + 1000, moved)],
        &[("eth0", 2), ("eth1", 7)],
    );
    assert_eq!(
        tick(&mut t, &[dev("eth0", 190, 20)], &[("eth0", 2)]),
        (40, 0)
    );
    assert_eq!(t.totals(), (1190, 20));
    // eth0 renamed eth5 (same ifindex) and carries on.
    assert_eq!(
        tick(&mut t, &[dev("eth5", 290, 30)], &[("eth5", 2)]),
        (100, 10)
    );
    // A new device under an old name (another ifindex) adds nothing.
    assert_eq!(
        tick(
            &mut t,
            &[dev("eth5", 291, 31), dev("eth0", 9999, 9999)],
            &[("eth5", 2), ("eth0", 3)]
        ),
        (1, 1)
    );
    // A counter going backwards restarts its delta.
    assert_eq!(
        tick(
            &mut t,
            &[dev("eth5", 10, 10), dev("eth0", 10_000, 10_000)],
            &[("eth5", 2), ("eth0", 3)]
        ),
        (1, 1)
    );
    assert_eq!(t.totals(), (1292, 32));
}

#[test]
fn restored_state_continues_within_a_boot_and_counts_from_zero_after_a_reboot() {
    let mut t = NetTotals::restore(None, "boot-a");
    tick(&mut t, &[dev("eth0", 100, 10)], &[("eth0", 2)]);
    let saved: NetState = serde_json::from_str(&serde_json::to_string(t.state()).unwrap()).unwrap();

    // Restart in the same boot: the downtime's traffic is added.
    let mut same = NetTotals::restore(Some(saved.clone()), "boot-a");
    assert_eq!(
        tick(&mut same, &[dev("eth0", 400, 40)], &[("eth0", 2)]),
        (300, 30)
    );
    assert_eq!(same.totals(), (400, 40));

    // After a reboot the counters restarted: their values since boot are added.
    let mut rebooted = NetTotals::restore(Some(saved), "boot-b");
    assert_eq!(
        tick(&mut rebooted, &[dev("eth0", 7, 3)], &[("eth0", 2)]),
        (7, 3)
    );
    assert_eq!(rebooted.totals(), (107, 13));
}
