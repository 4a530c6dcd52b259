//! Device deltas, the physical-disk filter and address classification.

use std::net::IpAddr;

use super::*;

fn devs(items: &[(&str, u64, u64)]) -> Vec<DevCounters> {
    items
        .iter()
        .map(|&(name, a, b)| DevCounters {
            name: name.to_owned(),
            a,
            b,
        })
        .collect()
}

/// `(name, a, b)` of each device.
type Devs<'a> = &'a [(&'a str, u64, u64)];

#[test]
fn summed_deltas_table() {
    let cases: &[(Devs, Devs, (u64, u64))] = &[
        (&[("eth0", 100, 10)], &[("eth0", 300, 15)], (200, 5)),
        (
            &[("eth0", 100, 10), ("eth1", 0, 0)],
            &[("eth0", 300, 15), ("eth1", 50, 5)],
            (250, 10),
        ),
        // Order changed between ticks.
        (
            &[("eth1", 0, 0), ("eth0", 100, 10)],
            &[("eth0", 300, 15), ("eth1", 50, 5)],
            (250, 10),
        ),
        // A counter that went backwards contributes 0, the other device still counts.
        (
            &[("eth0", 100, 10), ("eth1", 0, 0)],
            &[("eth0", 50, 5), ("eth1", 50, 5)],
            (50, 5),
        ),
        // Only rx went backwards.
        (&[("eth0", 100, 10)], &[("eth0", 50, 20)], (0, 10)),
        // A device that vanished or appeared moves nothing.
        (
            &[("eth0", 100, 10), ("tun0", 999, 999)],
            &[("eth0", 110, 11)],
            (10, 1),
        ),
        (
            &[("eth0", 100, 10)],
            &[("eth0", 110, 11), ("veth9", 5000, 5000)],
            (10, 1),
        ),
        (&[], &[("eth0", 110, 11)], (0, 0)),
    ];
    for (prev, cur, want) in cases {
        assert_eq!(
            summed_deltas(&devs(prev), &devs(cur)),
            *want,
            "{prev:?} -> {cur:?}"
        );
    }
}

#[test]
fn fill_reuses_and_truncates() {
    let mut out = devs(&[("a", 1, 1), ("b", 2, 2), ("c", 3, 3)]);
    fill(&mut out, [("x", 9, 8)].into_iter());
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].name.as_str(), out[0].a, out[0].b), ("x", 9, 8));
    fill(&mut out, [("y", 1, 2), ("z", 3, 4)].into_iter());
    assert_eq!(
        out.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["y", "z"]
    );
}

#[test]
fn physical_disk_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = dir.path();
    for (name, physical) in [
        ("vda", true),
        ("nvme0n1", true),
        ("cciss!c0d0", true),
        ("loop0", false),
        ("dm-0", false),
        ("zram0", false),
    ] {
        let d = sys.join("block").join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        if physical {
            std::fs::create_dir(d.join("device")).expect("mkdir");
        }
    }
    let mut f = DiskFilter::new(sys);
    for (name, want) in [
        ("vda", true),
        ("nvme0n1", true),
        ("cciss/c0d0", true),
        ("vda1", false),
        ("nvme0n1p1", false),
        ("loop0", false),
        ("dm-0", false),
        ("zram0", false),
        ("ram0", false),
    ] {
        assert_eq!(f.is_physical(name), want, "{name}");
    }
    // Cached: a disk detached later still answers from the cache until its name is reused.
    std::fs::remove_dir(sys.join("block/vda/device")).expect("rm");
    assert!(f.is_physical("vda"));
}

#[test]
fn address_classification() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let addrs = [
        ("lo", true, ip("127.0.0.1")),
        ("lo", true, ip("::1")),
        ("eth0", false, ip("10.1.2.3")),
        ("eth0", false, ip("203.0.114.7")),
        ("eth0", false, ip("fe80::1")),
        ("eth1", false, ip("192.168.1.5")),
        ("eth1", false, ip("172.20.0.1")),
        ("eth1", false, ip("172.32.0.1")),
        ("eth1", false, ip("fd12:3456::1")),
        ("eth1", false, ip("2a01:4f8::1")),
        ("eth1", false, ip("2001:db8::1")),
        ("tailscale0", false, ip("100.100.1.1")),
        ("eth2", false, ip("169.254.1.1")),
        ("eth2", false, ip("192.0.2.1")),
        ("eth3", false, ip("10.1.2.3")),
    ];
    let (lan, wan) = classify_addresses(addrs.iter().map(|(n, lo, ip)| (*n, *lo, *ip)));
    assert_eq!(
        lan,
        ["10.1.2.3", "192.168.1.5", "172.20.0.1", "fd12:3456::1"]
    );
    assert_eq!(wan, ["203.0.114.7", "172.32.0.1", "2a01:4f8::1"]);
}
