//! Project bandwidth from the agents' cumulative counters: the pure arithmetic.
//!
//! Agents report `rx_bytes_total` / `tx_bytes_total` (cumulative over every interface but
//! loopback, reset on reboot) with each VM sample. The collector turns the difference between two
//! consecutive readings of one instance into bytes per 10-minute bucket ("in" = rx, traffic into
//! the VM; "out" = tx) and adds them to a persisted rollup per project, region and bucket (see
//! [`crate::store::bandwidth`]). This module holds the decisions, free of SQL:
//!
//! * [`split_bytes`]: bytes moved during `[t0, t1)` are spread over the buckets that interval
//!   touches in proportion to the time spent in each, in whole bytes, so that the parts always add
//!   up to the counter delta exactly (cumulative floor: the bucket ending at `c` ms into the
//!   interval holds `floor(bytes·c/T) − floor(bytes·c_prev/T)`).
//! * [`step`]: what a new reading does given the instance's last one — the first reading is only
//!   a baseline; a reading not newer than the last is ignored (the cumulative counter of the next
//!   newer reading already covers its bytes); a counter that went backwards (reboot) marks the
//!   interval's buckets as observed with zero bytes and restarts from the new value, so a reset
//!   never produces a spike; an interval longer than [`MAX_GAP_MS`] is not attributed (only a new
//!   baseline); a reading stamped more than [`MAX_FUTURE_SKEW_MS`] ahead of the collector's clock
//!   is ignored so a broken guest clock cannot freeze the baseline in the future.
//! * [`MonthlyAggregator`]: per project, local calendar month and region, the highest bucket with
//!   its start time (the earliest wins a tie) and the month's totals, folded from buckets and from
//!   whole-day aggregates ([`Peak::max`] keeps the tie rule when parts merge).
//!
//! Buckets are aligned to multiples of 10 minutes since the Unix epoch, which are local 10-minute
//! boundaries in every time zone whose UTC offset is a whole multiple of 10 minutes.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

/// Length of one bucket.
pub const BUCKET_MS: i64 = 600_000;
/// Length of one day of the daily rollup (UTC days).
pub const DAY_MS: i64 = 86_400_000;
/// Length of one bucket in seconds (rates are bytes / this).
pub const BUCKET_SECS: f64 = 600.0;
/// Intervals between two readings longer than this are not attributed to buckets.
pub const MAX_GAP_MS: i64 = 31 * 24 * 3600 * 1000;
/// Readings stamped further than this ahead of the collector's clock are ignored for flow.
pub const MAX_FUTURE_SKEW_MS: i64 = 3600 * 1000;

/// Start of the bucket holding `ms`.
pub fn bucket_start(ms: i64) -> i64 {
    ms.div_euclid(BUCKET_MS) * BUCKET_MS
}

/// Start of the UTC day holding `ms`.
pub fn day_start(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The first UTC day start at or after `ms`.
pub fn day_ceil(ms: i64) -> i64 {
    let d = day_start(ms);
    if d == ms { d } else { d + DAY_MS }
}

/// Rate in B/s of a bucket that moved `bytes`.
pub fn rate(bytes: i64) -> f64 {
    bytes as f64 / BUCKET_SECS
}

/// Spreads `bytes` moved during `[t0, t1)` over the buckets it touches, proportionally to time,
/// in whole bytes that add up to `bytes` exactly. Empty when `t1 <= t0`.
pub fn split_bytes(t0: i64, t1: i64, bytes: u64) -> Vec<(i64, u64)> {
    if t1 <= t0 {
        return Vec::new();
    }
    let span = (t1 - t0) as u128;
    let total = u128::from(bytes);
    let mut out = Vec::with_capacity(((t1 - t0) / BUCKET_MS + 2) as usize);
    let mut b = bucket_start(t0);
    let mut given: u128 = 0;
    while b < t1 {
        let end = (b + BUCKET_MS).min(t1);
        let cum = (end - t0) as u128;
        let upto = total * cum / span;
        out.push((b, (upto - given) as u64));
        given = upto;
        b += BUCKET_MS;
    }
    out
}

/// Bytes per bucket between two readings `(sampled_at_ms, counter)` of one cumulative counter.
/// A counter that went backwards (reset) contributes 0 to every bucket of the interval.
pub fn split_delta(prev: (i64, u64), cur: (i64, u64)) -> Vec<(i64, u64)> {
    let bytes = cur.1.saturating_sub(prev.1);
    split_bytes(prev.0, cur.0, bytes)
}

/// One reading of an instance's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Sample time, epoch ms.
    pub at_ms: i64,
    /// Cumulative received bytes.
    pub rx: u64,
    /// Cumulative sent bytes.
    pub tx: u64,
}

/// Bytes one instance moved during one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketBytes {
    /// Bucket start, epoch ms.
    pub bucket_start_ms: i64,
    /// Bytes into the VM (rx).
    pub in_bytes: u64,
    /// Bytes out of the VM (tx).
    pub out_bytes: u64,
}

/// What a new reading does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Not used for flow; the last reading stays.
    Ignore,
    /// Becomes the new last reading; nothing is attributed.
    Baseline,
    /// Becomes the new last reading; these bytes are added (zero bytes after a reset: the buckets
    /// are still marked as observed).
    Flow(Vec<BucketBytes>),
}

/// Whether the counters went backwards (a reboot resets both; either going back counts).
pub fn is_reset(prev: Reading, cur: Reading) -> bool {
    cur.rx < prev.rx || cur.tx < prev.tx
}

/// 400 Gbit/s: above any single VM's interface; larger counter deltas are discarded.
pub const MAX_PLAUSIBLE_BYTES_PER_SEC: u64 = 50_000_000_000;

/// Decides what `cur` does given the instance's `last` reading and the collector's clock.
pub fn step(last: Option<Reading>, cur: Reading, now_ms: i64) -> Step {
    if cur.at_ms > now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
        return Step::Ignore;
    }
    let Some(prev) = last else {
        return Step::Baseline;
    };
    if cur.at_ms <= prev.at_ms {
        return Step::Ignore;
    }
    if cur.at_ms - prev.at_ms > MAX_GAP_MS {
        return Step::Baseline;
    }
    let (rx, tx) = if is_reset(prev, cur) {
        (0, 0)
    } else {
        (cur.rx - prev.rx, cur.tx - prev.tx)
    };
    // A delta no NIC could move in the interval is a bogus or corrupted counter, not traffic:
    // treat it like a reset (adds nothing) instead of letting one agent poison the rollup.
    let max_bytes =
        MAX_PLAUSIBLE_BYTES_PER_SEC.saturating_mul((cur.at_ms - prev.at_ms) as u64 / 1000 + 1);
    let (rx, tx) = if rx > max_bytes || tx > max_bytes {
        (0, 0)
    } else {
        (rx, tx)
    };
    let ins = split_bytes(prev.at_ms, cur.at_ms, rx);
    let outs = split_bytes(prev.at_ms, cur.at_ms, tx);
    Step::Flow(
        ins.into_iter()
            .zip(outs)
            .map(|((b, i), (_, o))| BucketBytes {
                bucket_start_ms: b,
                in_bytes: i,
                out_bytes: o,
            })
            .collect(),
    )
}

/// Epoch ms of a local date-time in `tz`: the earlier instant when it is ambiguous (DST end); when
/// it does not exist (inside a DST-start gap), the gap's end, i.e. the first local time that
/// exists after it (02:10 in a 02:00–03:00 gap is 03:00, as docs/mana_api.md documents). Gaps
/// longer than about two days (none in the tz database) give `None`.
pub fn local_to_utc_ms(tz: Tz, local: NaiveDateTime) -> Option<i64> {
    let exists = |t: NaiveDateTime| tz.from_local_datetime(&t).earliest();
    if let Some(dt) = exists(local) {
        return Some(dt.timestamp_millis());
    }
    // A gap is one contiguous run of missing local times: find a time past it by doubling the
    // step, then the first existing second by bisection (missing at `lo`, existing at `hi`).
    let mut lo = local;
    let mut step_secs = 60;
    let mut hi = loop {
        let t = local + chrono::Duration::seconds(step_secs);
        if exists(t).is_some() {
            break t;
        }
        lo = t;
        step_secs *= 2;
        if step_secs > 2 * 86_400 {
            return None;
        }
    };
    while (hi - lo).num_seconds() > 1 {
        let mid = lo + chrono::Duration::seconds((hi - lo).num_seconds() / 2);
        if exists(mid).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    exists(hi).map(|dt| dt.timestamp_millis())
}

/// `YYYY-MM-DD HH:MM:SS` of `ms` in `tz`.
pub fn format_local(tz: Tz, ms: i64) -> String {
    match tz.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => String::new(),
    }
}

/// `YYYY-MM-DD` of `ms` in `tz`.
pub fn format_local_date(tz: Tz, ms: i64) -> String {
    match tz.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => String::new(),
    }
}

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    /// Year.
    pub year: i32,
    /// Month, 1–12.
    pub month: u32,
}

impl Month {
    /// The month after this one.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The local month holding `ms` in `tz`.
    pub fn of(tz: Tz, ms: i64) -> Option<Month> {
        let t = tz.timestamp_millis_opt(ms).single()?;
        Some(Month {
            year: t.year(),
            month: t.month(),
        })
    }

    /// Epoch ms of local midnight on the 1st in `tz`.
    pub fn start_ms(self, tz: Tz) -> Option<i64> {
        let day = NaiveDate::from_ymd_opt(self.year, self.month, 1)?;
        local_to_utc_ms(tz, day.and_hms_opt(0, 0, 0)?)
    }

    /// `[start, end)` in epoch ms of this local month in `tz`.
    pub fn window(self, tz: Tz) -> Option<(i64, i64)> {
        Some((self.start_ms(tz)?, self.next().start_ms(tz)?))
    }

    /// `YYYY-MM`.
    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    /// Parses `YYYY-MM` (years 1970–9999).
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i32 = y.parse().ok()?;
        let month: u32 = m.parse().ok()?;
        ((1970..=9999).contains(&year) && (1..=12).contains(&month))
            .then_some(Month { year, month })
    }
}

/// One month of one project and region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthlyBandwidth {
    /// Project.
    pub project: String,
    /// Region.
    pub region: String,
    /// Local month.
    pub month: Month,
    /// Bytes of the month's highest in bucket.
    pub max_in_bytes: i64,
    /// Start of that bucket (the earliest on a tie), epoch ms.
    pub max_in_at_ms: i64,
    /// Bytes of the month's highest out bucket.
    pub max_out_bytes: i64,
    /// Start of that bucket (the earliest on a tie), epoch ms.
    pub max_out_at_ms: i64,
    /// Total bytes in.
    pub total_in: i64,
    /// Total bytes out.
    pub total_out: i64,
}

/// A peak: the highest bytes of a bucket and that bucket's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    /// Bytes of the bucket.
    pub bytes: i64,
    /// Bucket start, epoch ms.
    pub at_ms: i64,
}

impl Peak {
    /// The higher of two peaks; the earlier one on a tie.
    pub fn max(self, other: Peak) -> Peak {
        if other.bytes > self.bytes || (other.bytes == self.bytes && other.at_ms < self.at_ms) {
            other
        } else {
            self
        }
    }
}

/// Folds buckets and pre-aggregated spans (e.g. whole days) into [`MonthlyBandwidth`]s; the caller
/// says which month each part belongs to. Parts may come in any order.
#[derive(Default)]
pub struct MonthlyAggregator {
    map: BTreeMap<String, BTreeMap<Month, BTreeMap<String, MonthlyBandwidth>>>,
}

impl MonthlyAggregator {
    /// An empty aggregator.
    pub fn new() -> MonthlyAggregator {
        MonthlyAggregator::default()
    }

    /// Adds a part of `month`: its totals and its peaks.
    pub fn add(
        &mut self,
        project: &str,
        region: &str,
        month: Month,
        totals: (i64, i64),
        peak_in: Peak,
        peak_out: Peak,
    ) {
        if !self.map.contains_key(project) {
            self.map.insert(project.to_string(), BTreeMap::new());
        }
        let Some(months) = self.map.get_mut(project) else {
            return;
        };
        let regions = months.entry(month).or_default();
        match regions.get_mut(region) {
            Some(e) => {
                e.total_in = e.total_in.saturating_add(totals.0);
                e.total_out = e.total_out.saturating_add(totals.1);
                let pi = Peak {
                    bytes: e.max_in_bytes,
                    at_ms: e.max_in_at_ms,
                }
                .max(peak_in);
                let po = Peak {
                    bytes: e.max_out_bytes,
                    at_ms: e.max_out_at_ms,
                }
                .max(peak_out);
                (e.max_in_bytes, e.max_in_at_ms) = (pi.bytes, pi.at_ms);
                (e.max_out_bytes, e.max_out_at_ms) = (po.bytes, po.at_ms);
            }
            None => {
                regions.insert(
                    region.to_string(),
                    MonthlyBandwidth {
                        project: project.to_string(),
                        region: region.to_string(),
                        month,
                        max_in_bytes: peak_in.bytes,
                        max_in_at_ms: peak_in.at_ms,
                        max_out_bytes: peak_out.bytes,
                        max_out_at_ms: peak_out.at_ms,
                        total_in: totals.0,
                        total_out: totals.1,
                    },
                );
            }
        }
    }

    /// Adds one bucket of `month`.
    pub fn add_bucket(
        &mut self,
        project: &str,
        region: &str,
        month: Month,
        bucket_start_ms: i64,
        in_bytes: i64,
        out_bytes: i64,
    ) {
        self.add(
            project,
            region,
            month,
            (in_bytes, out_bytes),
            Peak {
                bytes: in_bytes,
                at_ms: bucket_start_ms,
            },
            Peak {
                bytes: out_bytes,
                at_ms: bucket_start_ms,
            },
        );
    }

    /// The months, ordered by project, month and region.
    pub fn finish(self) -> Vec<MonthlyBandwidth> {
        self.map
            .into_values()
            .flat_map(|months| months.into_values().flat_map(BTreeMap::into_values))
            .collect()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod plausibility_tests {
    use super::*;

    #[test]
    fn impossible_jump_adds_nothing() {
        let prev = Reading {
            at_ms: 600_000,
            rx: 0,
            tx: 0,
        };
        let cur = Reading {
            at_ms: 660_000,
            rx: u64::MAX / 2,
            tx: 10,
        };
        match step(Some(prev), cur, 10_000_000) {
            // The interval's one bucket is marked observed, with nothing added.
            Step::Flow(b) => assert_eq!(
                b,
                vec![BucketBytes {
                    bucket_start_ms: 600_000,
                    in_bytes: 0,
                    out_bytes: 0
                }]
            ),
            other => panic!("{other:?}"),
        }
    }
}
