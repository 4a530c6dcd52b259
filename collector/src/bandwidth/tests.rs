use super::*;

const M: i64 = 60_000;

fn sum(parts: &[(i64, u64)]) -> u64 {
    parts.iter().map(|(_, b)| b).sum()
}

#[test]
fn bucket_alignment() {
    assert_eq!(bucket_start(0), 0);
    assert_eq!(bucket_start(599_999), 0);
    assert_eq!(bucket_start(600_000), 600_000);
    assert_eq!(bucket_start(-1), -600_000);
}

#[test]
fn interval_inside_one_bucket() {
    assert_eq!(split_bytes(M, 5 * M, 1234), vec![(0, 1234)]);
}

#[test]
fn interval_spanning_an_edge_is_split_by_time() {
    // 9:00 → 10:30: 1 minute in bucket 0, 30 s in bucket 1.
    assert_eq!(
        split_bytes(9 * M, 10 * M + 30_000, 900),
        vec![(0, 600), (10 * M, 300)]
    );
    // 5 → 25 minutes: 5, 10 and 5 minutes.
    assert_eq!(
        split_bytes(5 * M, 25 * M, 4000),
        vec![(0, 1000), (10 * M, 2000), (20 * M, 1000)]
    );
}

#[test]
fn reading_exactly_on_an_edge_stays_out_of_the_next_bucket() {
    assert_eq!(split_bytes(0, 10 * M, 77), vec![(0, 77)]);
    assert_eq!(split_bytes(10 * M, 20 * M, 5), vec![(10 * M, 5)]);
}

#[test]
fn integer_split_is_exact_and_proportional() {
    // 15 minutes: 10 in the first bucket, 5 in the second → 666 and 334.
    let parts = split_bytes(30 * M, 45 * M, 1000);
    assert_eq!(parts, vec![(30 * M, 666), (40 * M, 334)]);
    // Awkward numbers: totals are always exact, each part within one byte of its share.
    for &(t0, t1, bytes) in &[
        (1, 3_600_001, 7u64),
        (123_456, 9_876_543, 1_000_003),
        (0, 86_400_000, u64::MAX / 3),
        (599_999, 600_001, 3),
    ] {
        let parts = split_bytes(t0, t1, bytes);
        assert_eq!(sum(&parts), bytes, "{t0}..{t1}");
        let span = (t1 - t0) as f64;
        for (b, got) in &parts {
            let overlap = ((*b + BUCKET_MS).min(t1) - (*b).max(t0)) as f64;
            let share = bytes as f64 * overlap / span;
            assert!(
                (*got as f64 - share).abs() <= 1.0 + share * 1e-12,
                "{b}: {got} vs {share}"
            );
        }
    }
}

#[test]
fn empty_or_backwards_interval_gives_nothing() {
    assert!(split_bytes(5, 5, 10).is_empty());
    assert!(split_bytes(6, 5, 10).is_empty());
}

#[test]
fn split_delta_counter_reset_contributes_zero() {
    assert_eq!(split_delta((0, 100), (5 * M, 400)), vec![(0, 300)]);
    assert_eq!(
        split_delta((5 * M, 1_000_000), (15 * M, 20)),
        vec![(0, 0), (10 * M, 0)]
    );
}

fn r(at_ms: i64, rx: u64, tx: u64) -> Reading {
    Reading { at_ms, rx, tx }
}

#[test]
fn step_decisions() {
    let now = 1_000 * BUCKET_MS;
    // First reading: baseline only.
    assert_eq!(step(None, r(now, 5, 5), now), Step::Baseline);
    // Older or same time: ignored.
    assert_eq!(step(Some(r(now, 5, 5)), r(now, 9, 9), now), Step::Ignore);
    assert_eq!(
        step(Some(r(now, 5, 5)), r(now - 1, 9, 9), now),
        Step::Ignore
    );
    // Far in the future: ignored.
    assert_eq!(
        step(
            Some(r(now, 5, 5)),
            r(now + MAX_FUTURE_SKEW_MS + 1, 9, 9),
            now
        ),
        Step::Ignore
    );
    // Too long a gap: new baseline.
    assert_eq!(
        step(Some(r(now - MAX_GAP_MS - 1, 5, 5)), r(now, 9, 9), now),
        Step::Baseline
    );
    // Normal: in = rx delta, out = tx delta.
    let t0 = now - 2 * BUCKET_MS + 5 * M;
    assert_eq!(
        step(Some(r(t0, 100, 1000)), r(t0 + 10 * M, 700, 1600), now),
        Step::Flow(vec![
            BucketBytes {
                bucket_start_ms: now - 2 * BUCKET_MS,
                in_bytes: 300,
                out_bytes: 300
            },
            BucketBytes {
                bucket_start_ms: now - BUCKET_MS,
                in_bytes: 300,
                out_bytes: 300
            },
        ])
    );
    // Reset of either counter: zero in both directions, buckets still observed.
    assert_eq!(
        step(Some(r(t0, 100, 1000)), r(t0 + 5 * M, 5000, 10), now),
        Step::Flow(vec![BucketBytes {
            bucket_start_ms: now - 2 * BUCKET_MS,
            in_bytes: 0,
            out_bytes: 0
        }])
    );
}

#[test]
fn months_in_a_time_zone() {
    let sh: Tz = "Asia/Shanghai".parse().unwrap();
    let feb = Month {
        year: 2025,
        month: 2,
    };
    // Local midnight of 1 Feb in UTC+8 is 31 Jan 16:00 UTC.
    let (a, b) = feb.window(sh).unwrap();
    assert_eq!(a, 1_738_368_000_000 - 8 * 3_600_000);
    assert_eq!(b - a, 28 * 86_400_000);
    assert_eq!(Month::of(sh, a), Some(feb));
    assert_eq!(
        Month::of(sh, a - 1),
        Some(Month {
            year: 2025,
            month: 1
        })
    );
    assert_eq!(
        Month::of(chrono_tz::UTC, a),
        Some(Month {
            year: 2025,
            month: 1
        })
    );
    assert_eq!(feb.label(), "2025-02");
    assert_eq!(
        Month {
            year: 2024,
            month: 12
        }
        .next(),
        Month {
            year: 2025,
            month: 1
        }
    );
    assert_eq!(format_local(sh, a), "2025-02-01 00:00:00");
    assert_eq!(format_local_date(sh, a - 1), "2025-01-31");
}

#[test]
fn month_parsing() {
    assert_eq!(
        Month::parse("2015-12"),
        Some(Month {
            year: 2015,
            month: 12
        })
    );
    for bad in [
        "2015-13",
        "2015-00",
        "15-12",
        "2015-1",
        "2015/12",
        "abcd-ef",
        "2015-12-01",
        "",
    ] {
        assert_eq!(Month::parse(bad), None, "{bad}");
    }
}

#[test]
fn nonexistent_local_midnight_moves_to_the_transition() {
    // America/Santiago started DST at local midnight on 2023-09-03 (00:00 → 01:00).
    let tz: Tz = "America/Santiago".parse().unwrap();
    let day = NaiveDate::from_ymd_opt(2023, 9, 3)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let ms = local_to_utc_ms(tz, day).unwrap();
    assert_eq!(format_local(tz, ms), "2023-09-03 01:00:00");
    // And the hour before it is 23:00 of the previous day (old offset −4).
    assert_eq!(format_local(tz, ms - 3_600_000), "2023-09-02 23:00:00");
}

#[test]
fn monthly_peaks_ties_and_totals() {
    let jan = Month {
        year: 2025,
        month: 1,
    };
    let feb = jan.next();
    let t = 1_000 * BUCKET_MS;
    let mut agg = MonthlyAggregator::new();
    // Parts in any order; the tie at 500 goes to the earlier bucket.
    agg.add_bucket("p1", "r1", jan, t + BUCKET_MS, 500, 20);
    agg.add_bucket("p1", "r2", jan, t, 1, 1);
    agg.add_bucket("p2", "r1", jan, t, 7, 7);
    agg.add_bucket("p1", "r1", feb, t + 2 * BUCKET_MS, 100, 0);
    agg.add_bucket("p1", "r1", jan, t, 500, 10);
    // A whole-day part with a higher out peak later on.
    agg.add(
        "p1",
        "r1",
        jan,
        (1, 2),
        Peak {
            bytes: 1,
            at_ms: t - DAY_MS,
        },
        Peak {
            bytes: 20,
            at_ms: t - DAY_MS,
        },
    );
    let out = agg.finish();
    assert_eq!(out.len(), 4);
    assert_eq!(
        out[0],
        MonthlyBandwidth {
            project: "p1".into(),
            region: "r1".into(),
            month: jan,
            max_in_bytes: 500,
            max_in_at_ms: t,
            max_out_bytes: 20,
            max_out_at_ms: t - DAY_MS,
            total_in: 1001,
            total_out: 32,
        }
    );
    assert_eq!(
        (out[1].region.as_str(), out[1].month, out[1].total_in),
        ("r2", jan, 1)
    );
    assert_eq!(
        (out[2].region.as_str(), out[2].month, out[2].total_in),
        ("r1", feb, 100)
    );
    assert_eq!(out[2].max_out_at_ms, t + 2 * BUCKET_MS);
    assert_eq!((out[3].project.as_str(), out[3].total_out), ("p2", 7));
}

#[test]
fn peak_tie_goes_to_the_earlier_bucket() {
    let a = Peak {
        bytes: 5,
        at_ms: 10,
    };
    let b = Peak {
        bytes: 5,
        at_ms: 20,
    };
    assert_eq!(a.max(b), a);
    assert_eq!(b.max(a), a);
    assert_eq!(
        a.max(Peak {
            bytes: 6,
            at_ms: 30
        })
        .at_ms,
        30
    );
}

#[test]
fn days() {
    assert_eq!(day_start(DAY_MS + 5), DAY_MS);
    assert_eq!(day_ceil(DAY_MS + 5), 2 * DAY_MS);
    assert_eq!(day_ceil(DAY_MS), DAY_MS);
}

#[test]
fn rate_is_bytes_per_second() {
    assert_eq!(rate(60_000), 100.0);
    assert_eq!(rate(0), 0.0);
}

#[test]
fn dst_ambiguous_is_the_earlier_instant_and_a_gap_time_is_the_gap_end() {
    // (zone, local time, the UTC instant it must mean)
    let cases = [
        // Europe/Berlin 2025-03-30: 02:00 CET → 03:00 CEST; a time in the gap is its end,
        // 03:00 CEST = 01:00 UTC (not 02:10 + 1 h).
        (
            "Europe/Berlin",
            "2025-03-30 02:10:00",
            "2025-03-30 01:00:00",
        ),
        (
            "Europe/Berlin",
            "2025-03-30 02:00:00",
            "2025-03-30 01:00:00",
        ),
        (
            "Europe/Berlin",
            "2025-03-30 02:59:59",
            "2025-03-30 01:00:00",
        ),
        (
            "Europe/Berlin",
            "2025-03-30 01:59:59",
            "2025-03-30 00:59:59",
        ),
        (
            "Europe/Berlin",
            "2025-03-30 03:00:00",
            "2025-03-30 01:00:00",
        ),
        // 2025-10-26: 03:00 CEST → 02:00 CET; 02:30 happens twice, the earlier (CEST) wins.
        (
            "Europe/Berlin",
            "2025-10-26 02:30:00",
            "2025-10-26 00:30:00",
        ),
        (
            "Europe/Berlin",
            "2025-10-26 03:00:00",
            "2025-10-26 02:00:00",
        ),
        // America/New_York 2025-03-09 02:00 EST → 03:00 EDT; 2025-11-02 01:30 twice.
        (
            "America/New_York",
            "2025-03-09 02:10:00",
            "2025-03-09 07:00:00",
        ),
        (
            "America/New_York",
            "2025-11-02 01:30:00",
            "2025-11-02 05:30:00",
        ),
        // Australia/Lord_Howe moves by 30 minutes: 02:00 → 02:30 on 2025-10-05.
        (
            "Australia/Lord_Howe",
            "2025-10-05 02:10:00",
            "2025-10-04 15:30:00",
        ),
        // Samoa skipped all of 2011-12-30.
        ("Pacific/Apia", "2011-12-30 12:00:00", "2011-12-30 10:00:00"),
        // No DST: unchanged.
        (
            "Asia/Shanghai",
            "2025-03-30 02:10:00",
            "2025-03-29 18:10:00",
        ),
    ];
    let parse = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap();
    for (zone, local, utc) in cases {
        let tz: Tz = zone.parse().unwrap();
        let want = parse(utc).and_utc().timestamp_millis();
        assert_eq!(
            local_to_utc_ms(tz, parse(local)),
            Some(want),
            "{zone} {local}: want {utc} UTC"
        );
    }
}
