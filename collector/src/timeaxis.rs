//! Where a sample goes on the collector's time axis, when the guest's wall clock cannot be
//! trusted (pure rules; the state lives in the store's `instances` row).
//!
//! Each sample carries the guest's wall-clock time (`sampled_at_ms`) and its boot-time clock
//! (`uptime_ms`, `/proc/uptime`: monotonic for the whole boot, across agent restarts). Two
//! consecutive samples of one boot are *linked*: the uptime between them is the real time that
//! passed. (Agents that predate `uptime_ms` are linked by `elapsed_ms`, the time since their
//! previous sample, 0 after an agent start.) A guest clock that NTP steps, or that runs ahead of the collector, would
//! otherwise squeeze or stretch the intervals the bandwidth rollup divides bytes by, and put
//! future-stamped records ahead of live ones. The rule:
//!
//! 1. The placed time is the wall-clock time plus a per-instance offset. The offset starts at 0
//!    and returns to 0 on every unlinked sample (an instance's first, the first after a reboot:
//!    the wall clock, likely just synced at boot, is then the only reference).
//! 2. **Step**: when the wall clock moved more than [`step_tolerance_ms`] away from the
//!    monotonic time since the previous linked sample, the clock was stepped: the sample is placed
//!    at the previous placed time + that time, and the offset changes to keep later samples on
//!    that axis.
//! 3. **Skew bound**: a placed time more than [`MAX_AHEAD_MS`] after the collector received the
//!    sample is placed at the receive time instead (the offset follows), so no sample is ever
//!    stamped in the collector's future. Samples in the past are left alone: agents resend old
//!    spooled samples legitimately.
//! 4. Placed times of one instance never go backwards while the monotonic link holds.
//!
//! The offset is shown as `clock_skew_secs` on the VM list (how far the guest's clock is ahead of
//! the placed axis) and every step or clamp is logged once, with its size.

/// A sample may be placed at most this long after the collector received it.
pub const MAX_AHEAD_MS: i64 = 60_000;

/// How far the wall clock may drift from the monotonic clock over `elapsed_ms` before it counts
/// as a step: 2 s plus 1 % (timer jitter, a busy guest, NTP slewing at its 500 ppm maximum).
pub fn step_tolerance_ms(elapsed_ms: i64) -> i64 {
    2_000 + elapsed_ms / 100
}

/// One instance's clock state, kept between samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockState {
    /// The previous sample's wall-clock time, epoch ms.
    pub last_raw_ms: i64,
    /// Where the previous sample was placed, epoch ms.
    pub last_placed_ms: i64,
    /// Placed minus wall-clock time, ms.
    pub offset_ms: i64,
    /// The previous sample's `uptime_ms`, if its agent sent one.
    pub last_uptime_ms: Option<i64>,
}

/// What links a sample to the previous one of its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Monotonic {
    /// The agent's `elapsed_ms` (0: no link, the agent just started).
    pub elapsed_ms: i64,
    /// The guest's `/proc/uptime`, ms, when sent.
    pub uptime_ms: Option<i64>,
}

impl Monotonic {
    /// The real time since `prev`, when the two samples are linked: by uptime within one boot
    /// (a later uptime), else, for agents without uptime, by a non-zero `elapsed_ms`.
    fn since(self, prev: &ClockState) -> Option<i64> {
        match (self.uptime_ms, prev.last_uptime_ms) {
            (Some(now), Some(before)) => (now > before).then_some(now - before),
            (Some(_), None) | (None, Some(_)) => None,
            (None, None) => (self.elapsed_ms > 0).then_some(self.elapsed_ms),
        }
    }
}

/// Something the rule corrected, to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockAnomaly {
    /// The wall clock moved `step_ms` more than the monotonic clock (negative: stepped back).
    Stepped {
        /// Wall-clock change minus monotonic elapsed time, ms.
        step_ms: i64,
    },
    /// The sample was stamped `ahead_ms` after the collector received it, beyond
    /// [`MAX_AHEAD_MS`].
    Ahead {
        /// How far ahead of the receive time, ms.
        ahead_ms: i64,
    },
}

/// Places a sample stamped `raw_ms` with `elapsed_ms` since the previous one, received at
/// `received_ms`; returns its placed time, the new state and what was corrected.
pub fn place(
    state: Option<ClockState>,
    raw_ms: i64,
    link: Monotonic,
    received_ms: i64,
) -> (i64, ClockState, Option<ClockAnomaly>) {
    let linked = state.and_then(|s| link.since(&s).map(|elapsed| (s, elapsed)));
    let elapsed_ms = linked.map_or(0, |(_, e)| e);
    let linked = linked.map(|(s, _)| s);
    let mut offset = linked.map_or(0, |s| s.offset_ms);
    let mut anomaly = None;
    if let Some(prev) = linked {
        let wall_ms = raw_ms.saturating_sub(prev.last_raw_ms);
        let step_ms = wall_ms.saturating_sub(elapsed_ms);
        if step_ms.abs() > step_tolerance_ms(elapsed_ms) {
            offset = prev
                .last_placed_ms
                .saturating_add(elapsed_ms)
                .saturating_sub(raw_ms);
            anomaly = Some(ClockAnomaly::Stepped { step_ms });
        }
    }
    let mut placed = raw_ms.saturating_add(offset);
    let ahead_ms = placed.saturating_sub(received_ms);
    if ahead_ms > MAX_AHEAD_MS {
        placed = received_ms;
        offset = received_ms.saturating_sub(raw_ms);
        anomaly = anomaly.or(Some(ClockAnomaly::Ahead { ahead_ms }));
    }
    if let Some(prev) = linked
        && placed <= prev.last_placed_ms
    {
        // Linked by the monotonic clock, so it is later than the previous sample.
        placed = prev.last_placed_ms.saturating_add(elapsed_ms.max(1));
        offset = placed.saturating_sub(raw_ms);
    }
    (
        placed,
        ClockState {
            last_raw_ms: raw_ms,
            last_placed_ms: placed,
            offset_ms: offset,
            last_uptime_ms: link.uptime_ms,
        },
        anomaly,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// Runs samples (wall clock, elapsed, received) through the rule; returns placed times and
    /// anomalies.
    fn run(samples: &[(i64, i64, i64)]) -> (Vec<i64>, Vec<Option<ClockAnomaly>>) {
        let mut state = None;
        let mut placed = Vec::new();
        let mut anomalies = Vec::new();
        for &(raw, elapsed, received) in samples {
            let link = Monotonic {
                elapsed_ms: elapsed,
                uptime_ms: None,
            };
            let (p, s, a) = place(state, raw, link, received);
            state = Some(s);
            placed.push(p);
            anomalies.push(a);
        }
        (placed, anomalies)
    }

    #[test]
    fn a_good_clock_is_left_alone() {
        let t = 1_700_000_000_000;
        let (placed, anomalies) = run(&[
            (t, 0, t + 100),
            (t + MIN + 40, MIN, t + MIN + 200),
            (t + 2 * MIN - 30, MIN, t + 2 * MIN + 100),
        ]);
        assert_eq!(placed, vec![t, t + MIN + 40, t + 2 * MIN - 30]);
        assert!(anomalies.iter().all(Option::is_none));
    }

    #[test]
    fn a_clock_30_min_fast_then_stepped_back_stays_on_real_time() {
        let t = 1_700_000_000_000;
        let fast = 30 * MIN;
        // Five samples a minute apart with the clock 30 min ahead, then NTP steps it back.
        let mut samples = vec![(t + fast, 0, t)];
        for k in 1..5 {
            samples.push((t + fast + k * MIN, MIN, t + k * MIN));
        }
        for k in 5..8 {
            samples.push((t + k * MIN, MIN, t + k * MIN));
        }
        let (placed, anomalies) = run(&samples);
        let real: Vec<i64> = (0..8).map(|k| t + k * MIN).collect();
        assert_eq!(
            placed, real,
            "every sample on the collector's time, a minute apart"
        );
        assert_eq!(anomalies[0], Some(ClockAnomaly::Ahead { ahead_ms: fast }));
        assert_eq!(anomalies[5], Some(ClockAnomaly::Stepped { step_ms: -fast }));
        assert!(anomalies[6].is_none() && anomalies[7].is_none());
    }

    #[test]
    fn a_step_forward_is_undone_and_restarts_are_not_steps() {
        let t = 1_700_000_000_000;
        let (placed, anomalies) = run(&[
            (t, 0, t + 10 * MIN),
            (t + MIN, MIN, t + 10 * MIN),
            // Clock stepped 20 min forward (still behind the receive time, so not clamped).
            (t + 22 * MIN, MIN, t + 30 * MIN),
            (t + 23 * MIN, MIN, t + 30 * MIN),
            // Agent restarted an hour later: no monotonic link, the wall clock is taken as is.
            (t + 83 * MIN, 0, t + 90 * MIN),
        ]);
        assert_eq!(
            placed,
            vec![t, t + MIN, t + 2 * MIN, t + 3 * MIN, t + 83 * MIN]
        );
        assert_eq!(
            anomalies[2],
            Some(ClockAnomaly::Stepped { step_ms: 20 * MIN })
        );
        assert!(anomalies[4].is_none(), "a restart is not a step");
    }

    #[test]
    fn uptime_links_samples_across_agent_restarts_and_a_reboot_unlinks() {
        let t = 1_700_000_000_000;
        let up = |u: i64, e: i64| Monotonic {
            elapsed_ms: e,
            uptime_ms: Some(u),
        };
        let mut state = None;
        let mut go = |raw: i64, link: Monotonic, received: i64| {
            let (p, s, a) = place(state, raw, link, received);
            state = Some(s);
            (p, a)
        };
        assert_eq!(go(t, up(1_000_000, 0), t), (t, None));
        // The agent restarts 2 s later; its first sample's elapsed_ms covers only its own
        // baseline tick, but the uptime shows the real 3 s: no step.
        assert_eq!(
            go(t + 3_000, up(1_003_000, 500), t + 3_000),
            (t + 3_000, None)
        );
        // A 30 min step back of the wall clock while uptime moved on 1 min: corrected.
        let (p, a) = go(t + 63_000 - 30 * MIN, up(1_063_000, 60_000), t + 63_000);
        assert_eq!(p, t + 63_000);
        assert_eq!(a, Some(ClockAnomaly::Stepped { step_ms: -30 * MIN }));
        // A reboot (uptime starts again): not linked, the wall clock is taken as is.
        assert_eq!(
            go(t + 10 * MIN, up(5_000, 0), t + 10 * MIN),
            (t + 10 * MIN, None)
        );
    }

    #[test]
    fn drift_within_tolerance_is_no_step() {
        assert_eq!(step_tolerance_ms(MIN), 2_600);
        let t = 1_700_000_000_000;
        let (_, anomalies) = run(&[(t, 0, t), (t + MIN + 2_500, MIN, t + MIN)]);
        assert!(anomalies[1].is_none());
        let (_, anomalies) = run(&[(t, 0, t), (t + MIN + 2_700, MIN, t + MIN)]);
        assert!(anomalies[1].is_some());
    }
}
