//! Rating periods as pure arithmetic: where a period starts, the start of a month, and how one
//! period's usage becomes one unpriced frame per tenant. The runs that read and store periods are
//! [`crate::jobs::rating`].

use std::collections::BTreeMap;

use chrono::{Datelike, TimeZone, Utc};

use super::Usage;
use super::metrics::MetricsConfig;
use super::usage::InstanceUsage;

/// Start of the period holding `ms`.
pub fn period_start(ms: i64, period_ms: i64) -> i64 {
    ms.div_euclid(period_ms) * period_ms
}

/// 00:00 UTC on the first day of the month holding `ms`.
pub fn month_start(ms: i64) -> i64 {
    Utc.timestamp_millis_opt(ms)
        .single()
        .and_then(|t| {
            Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                .single()
        })
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

/// The frames of one period, per tenant: every instance's usage turned into one datapoint per
/// metric (in config order, instances by id), unpriced.
pub fn frames(metrics: &MetricsConfig, usages: &[InstanceUsage]) -> BTreeMap<String, Usage> {
    let mut by_tenant: BTreeMap<String, Vec<&InstanceUsage>> = BTreeMap::new();
    for u in usages {
        by_tenant.entry(u.info.project.clone()).or_default().push(u);
    }
    by_tenant
        .into_iter()
        .map(|(tenant, list)| {
            let usage: Usage = metrics
                .metrics
                .iter()
                .map(|m| {
                    (
                        m.alt_name.clone(),
                        list.iter().map(|u| m.point(u)).collect(),
                    )
                })
                .collect();
            (tenant, usage)
        })
        .collect()
}

/// Naive UTC ISO-8601, as the API writes datetimes.
pub fn iso(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::decimal;
    use crate::rating::usage::InstanceInfo;
    use rust_decimal::Decimal;

    #[test]
    fn period_math() {
        let h = 3_600_000;
        assert_eq!(period_start(1_700_000_123_456, h), 1_699_999_200_000);
        // 2023-11-14T22:13:20Z → 2023-11-01T00:00:00Z
        assert_eq!(month_start(1_700_000_000_000), 1_698_796_800_000);
        assert_eq!(iso(1_698_796_800_000), "2023-11-01T00:00:00");
    }

    #[test]
    fn frames_group_by_tenant_in_config_order() {
        let metrics = MetricsConfig::defaults().unwrap();
        let u = |id: &str, p: &str| InstanceUsage {
            info: InstanceInfo {
                instance_id: id.into(),
                project: p.into(),
                cpu_count: 2,
                mem_total_bytes: 4 << 30,
                disk_total_bytes: 40 << 30,
                ..InstanceInfo::default()
            },
            uptime_ms: 3_600_000,
            cpu_core_secs: Decimal::from(3600),
            rx_bytes: 2_000_000_000,
            tx_bytes: 500_000_000,
        };
        let f = frames(&metrics, &[u("b1", "B"), u("a1", "A"), u("a2", "A")]);
        assert_eq!(f.keys().collect::<Vec<_>>(), vec!["A", "B"]);
        let a = &f["A"];
        let types: Vec<&str> = a.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            vec![
                "instance",
                "cpu.hours",
                "network.in",
                "network.out",
                "disk.size"
            ]
        );
        let qty: Vec<String> = a.iter().map(|(_, p)| decimal::to_text(p[0].qty)).collect();
        assert_eq!(qty, vec!["1", "1", "2", "0.5", "40"]);
        assert_eq!(a[0].1[0].desc()["flavor_name"], "2c4g");
        assert_eq!(a[0].1[1].desc()["id"], "a2");
    }
}
