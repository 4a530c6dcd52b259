//! Table-driven tests of the rate arithmetic.

use std::time::Duration;

use super::*;

const SEC: Duration = Duration::from_secs(1);

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn per_sec_table() {
    let cases: &[(u64, u64, Duration, Option<f64>)] = &[
        (0, 0, SEC, Some(0.0)),
        (100, 300, SEC, Some(200.0)),
        (100, 300, Duration::from_millis(500), Some(400.0)),
        (100, 300, Duration::from_secs(30), Some(200.0 / 30.0)),
        // Backwards: wrap, reset or a vanished device.
        (300, 100, SEC, None),
        (u64::MAX, 0, SEC, None),
        // No time elapsed.
        (100, 300, Duration::ZERO, None),
    ];
    for &(prev, cur, elapsed, want) in cases {
        let got = per_sec(prev, cur, elapsed);
        match (got, want) {
            (Some(g), Some(w)) => {
                assert!(close(g, w), "{prev}->{cur} over {elapsed:?}: {g} != {w}")
            }
            (None, None) => {}
            _ => panic!("{prev}->{cur} over {elapsed:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn kib_per_sec_table() {
    let cases: &[(u64, u64, Duration, f64)] = &[
        (0, 1024, SEC, 1.0),
        (0, 10 * 1024, Duration::from_secs(10), 1.0),
        (0, 512, SEC, 0.5),
        (2048, 1024, SEC, 0.0),
        (0, 1024, Duration::ZERO, 0.0),
    ];
    for &(prev, cur, elapsed, want) in cases {
        let got = kib_per_sec(prev, cur, elapsed);
        assert!(
            close(got, want),
            "{prev}->{cur} over {elapsed:?}: {got} != {want}"
        );
    }
}

#[test]
fn vm_cpu_pct_table() {
    let t = |total, idle| CpuTimes {
        total,
        idle,
        steal: None,
    };
    let cases: &[(CpuTimes, CpuTimes, Option<f64>)] = &[
        (t(1000, 800), t(1200, 900), Some(50.0)),
        (t(1000, 800), t(1200, 1000), Some(0.0)),
        (t(1000, 800), t(1200, 800), Some(100.0)),
        (t(0, 0), t(400, 100), Some(75.0)),
        // Nothing elapsed in ticks.
        (t(1000, 800), t(1000, 800), None),
        // Total or idle going backwards restarts the delta.
        (t(1000, 800), t(900, 850), None),
        (t(1000, 800), t(1100, 700), None),
        // Idle advancing more than total (kernel jitter) clamps to 0, not negative.
        (t(1000, 800), t(1010, 830), Some(0.0)),
    ];
    for &(prev, cur, want) in cases {
        let got = vm_cpu_pct(prev, cur);
        match (got, want) {
            (Some(g), Some(w)) => assert!(close(g, w), "{prev:?}->{cur:?}: {g} != {w}"),
            (None, None) => {}
            _ => panic!("{prev:?}->{cur:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn process_cpu_pct_table() {
    // (ticks, elapsed, clk_tck, ncpu, want)
    let cases: &[(u64, Duration, u64, u32, Option<f64>)] = &[
        // One full CPU on a 1-CPU VM.
        (100, SEC, 100, 1, Some(100.0)),
        // One full CPU on a 2-CPU VM is half the VM.
        (100, SEC, 100, 2, Some(50.0)),
        // Half a CPU over 30 s on a 4-CPU VM.
        (1500, Duration::from_secs(30), 100, 4, Some(12.5)),
        (0, SEC, 100, 4, Some(0.0)),
        // Other tick rates.
        (250, SEC, 1000, 1, Some(25.0)),
        // More than possible (accounting jitter) clamps at 100.
        (230, SEC, 100, 2, Some(100.0)),
        (10, Duration::ZERO, 100, 1, None),
        (10, SEC, 0, 1, None),
        (10, SEC, 100, 0, None),
    ];
    for &(ticks, elapsed, hz, ncpu, want) in cases {
        let got = process_cpu_pct(ticks, elapsed, hz, ncpu);
        match (got, want) {
            (Some(g), Some(w)) => assert!(close(g, w), "{ticks} ticks: {g} != {w}"),
            (None, None) => {}
            _ => panic!("{ticks} ticks over {elapsed:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn processes_sum_to_vm_share() {
    // A 2-CPU VM at 100 Hz over 10 s has 2000 ticks of capacity. Three processes use 300, 500
    // and 200 ticks; the VM saw 1000 busy ticks of 2000.
    let elapsed = Duration::from_secs(10);
    let sum: f64 = [300u64, 500, 200]
        .iter()
        .filter_map(|&t| process_cpu_pct(t, elapsed, 100, 2))
        .sum();
    let vm = vm_cpu_pct(
        CpuTimes::default(),
        CpuTimes {
            total: 2000,
            idle: 1000,
            steal: None,
        },
    );
    assert_eq!(vm, Some(50.0));
    assert!(close(sum, 50.0), "{sum}");
}

#[test]
fn pct_table() {
    let cases: &[(u64, u64, f64)] = &[
        (0, 100, 0.0),
        (25, 100, 25.0),
        (100, 100, 100.0),
        (5, 0, 0.0),
        (200, 100, 100.0),
    ];
    for &(part, whole, want) in cases {
        assert!(close(pct(part, whole), want), "{part}/{whole}");
    }
}

#[test]
fn steal_is_not_used_cpu() {
    // 25 % user, 50 % steal, 25 % idle over 100 ticks.
    let prev = CpuTimes {
        total: 1000,
        idle: 500,
        steal: Some(100),
    };
    let cur = CpuTimes {
        total: 1100,
        idle: 525,
        steal: Some(150),
    };
    assert_eq!(vm_cpu_pct(prev, cur), Some(25.0));
    assert_eq!(vm_steal_pct(prev, cur), Some(50.0));
    let no_steal = CpuTimes { steal: None, ..cur };
    assert_eq!(vm_steal_pct(prev, no_steal), None);
    assert_eq!(vm_cpu_pct(prev, no_steal), Some(75.0));
}
