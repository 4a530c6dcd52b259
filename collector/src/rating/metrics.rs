//! The metrics config: which usage is rated, under which name and unit, with which description
//! attributes, and how the collected quantity is converted (CloudKitty's metrics.yml, in TOML).
//!
//! ```toml
//! [metrics.uptime]              # source: what vmmon measures (see SOURCES); or [[metrics.x]] to
//! unit = "instance"             #   rate one source several ways
//! alt_name = "instance"         # the rated type = hashmap service name (default: the key)
//! groupby = ["id", "project_id"]            # one datapoint per distinct combination
//! metadata = ["flavor_name", "cpu_num"]     # extra attributes hashmap fields can match
//! factor = "1/3600"             # qty = collected × factor + offset (int, float or "a/b")
//! offset = 0
//! mutate = "NUMBOOL"            # NONE NUMBOOL NOTNUMBOOL FLOOR CEIL MAP (with mutate_map)
//! ```
//!
//! The file is served as-is (as JSON) by `/v1/info/config` and summarised by `/v1/info/metrics`.

use std::path::Path;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::DataPoint;
use super::decimal;
use super::usage::{InstanceInfo, InstanceUsage, gib};

/// The built-in metrics config, used when `rating.metrics_file` is not set.
pub const DEFAULT_METRICS: &str = include_str!("../../../packaging/rating-metrics.example.toml");

/// The scope key: always part of `groupby`.
pub const SCOPE_KEY: &str = "project_id";

/// What vmmon can measure per instance and period, with the unit of the collected value.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "uptime",
        "seconds the instance was up (its agent sampling) during the period",
    ),
    (
        "cpu_time",
        "CPU time used, core-seconds (cpu_util × CPUs × time)",
    ),
    (
        "vcpu_time",
        "vCPU-seconds allocated while up (CPUs × uptime seconds)",
    ),
    (
        "net_in_bytes",
        "bytes received, all interfaces but loopback",
    ),
    ("net_out_bytes", "bytes sent, all interfaces but loopback"),
    ("disk_bytes", "disk size, bytes (current inventory)"),
    (
        "memory_bytes",
        "memory size (MemTotal), bytes (current inventory)",
    ),
];

/// Attributes a datapoint can carry in `groupby` or `metadata`.
pub const ATTRIBUTES: &[&str] = &[
    "id",
    "project_id",
    "region",
    "party",
    "instance_name",
    "cpu_num",
    "mem_size",
    "disk_size",
    "flavor_name",
    "os",
    "agent_version",
];

/// Conversion applied after factor and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutate {
    /// As is.
    None,
    /// 0 stays 0, anything else becomes 1.
    NumBool,
    /// 0 becomes 1, anything else becomes 0.
    NotNumBool,
    /// Round down.
    Floor,
    /// Round up.
    Ceil,
    /// Through `mutate_map`; an unmapped value becomes 0.
    Map,
}

/// One rated metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    /// Source name (a key of [`SOURCES`]).
    pub source: String,
    /// Rated type (hashmap service name).
    pub alt_name: String,
    /// Display unit.
    pub unit: String,
    /// Free text.
    pub description: Option<String>,
    /// Grouping attributes (always including [`SCOPE_KEY`]).
    pub groupby: Vec<String>,
    /// Extra attributes.
    pub metadata: Vec<String>,
    /// Factor numerator.
    pub factor_num: Decimal,
    /// Factor denominator.
    pub factor_den: Decimal,
    /// Added after the factor.
    pub offset: Decimal,
    /// Applied last.
    pub mutate: Mutate,
    /// For [`Mutate::Map`].
    pub mutate_map: Vec<(Decimal, Decimal)>,
}

/// One metric as `/v1/info/metrics` writes it: `{"metric_id","metadata","unit"}` (metadata
/// made unique, in config order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricInfo<'a> {
    /// The rated type (alt_name).
    pub metric_id: &'a str,
    /// The metadata attributes.
    pub metadata: Vec<&'a str>,
    /// Display unit.
    pub unit: &'a str,
}

/// A loaded and validated metrics config.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// The file as JSON, for `/v1/info/config`.
    pub raw: Value,
    /// Rated metrics in file order.
    pub metrics: Vec<MetricDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDef {
    unit: String,
    alt_name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    groupby: Vec<String>,
    #[serde(default)]
    metadata: Vec<String>,
    factor: Option<Value>,
    offset: Option<Value>,
    mutate: Option<String>,
    mutate_map: Option<Map<String, Value>>,
    // Accepted for compatibility and shown by /v1/info/config; vmmon's sources need none.
    #[allow(dead_code)]
    extra_args: Option<Value>,
}

/// A factor: an integer, a float (its shortest text) or a fraction such as "1/1048576".
fn parse_factor(v: &Value) -> Result<(Decimal, Decimal), String> {
    if let Value::String(s) = v
        && let Some((n, d)) = s.split_once('/')
    {
        let (n, d) = (decimal::parse(n)?, decimal::parse(d)?);
        if d.is_zero() {
            return Err(format!("factor {s:?} divides by zero"));
        }
        return Ok((n, d));
    }
    Ok((decimal::from_json(v)?, Decimal::ONE))
}

impl MetricsConfig {
    /// The built-in defaults.
    pub fn defaults() -> Result<MetricsConfig, String> {
        Self::parse(DEFAULT_METRICS).map_err(|e| format!("built-in metrics config: {e}"))
    }

    /// Loads `path`, or the defaults when None.
    pub fn load(path: Option<&Path>) -> Result<MetricsConfig, String> {
        let Some(path) = path else {
            return Self::defaults();
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read rating metrics file {}: {e}", path.display()))?;
        Self::parse(&text)
            .map_err(|e| format!("invalid rating metrics file {}: {e}", path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<MetricsConfig, String> {
        let raw: Value = toml::from_str(text).map_err(|e| e.to_string())?;
        let Some(Value::Object(metrics)) = raw.get("metrics") else {
            return Err("a [metrics] table is required".into());
        };
        let mut out: Vec<MetricDef> = Vec::new();
        for (source, defs) in metrics {
            if !SOURCES.iter().any(|(s, _)| s == source) {
                let known: Vec<&str> = SOURCES.iter().map(|(s, _)| *s).collect();
                return Err(format!(
                    "metrics.{source}: unknown source; vmmon measures {}",
                    known.join(", ")
                ));
            }
            let list: Vec<&Value> = match defs {
                Value::Array(a) => a.iter().collect(),
                one => vec![one],
            };
            if list.is_empty() {
                return Err(format!("metrics.{source}: an empty list rates nothing"));
            }
            for def in list {
                let m = Self::one(source, def).map_err(|e| format!("metrics.{source}: {e}"))?;
                if out.iter().any(|o| o.alt_name == m.alt_name) {
                    return Err(format!(
                        "metrics.{source}: the name {:?} is used twice",
                        m.alt_name
                    ));
                }
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err("no metrics defined".into());
        }
        Ok(MetricsConfig { raw, metrics: out })
    }

    fn one(source: &str, def: &Value) -> Result<MetricDef, String> {
        let r: RawDef = serde_json::from_value(def.clone()).map_err(|e| e.to_string())?;
        if r.unit.trim().is_empty() {
            return Err("unit must not be empty".into());
        }
        let alt_name = r.alt_name.unwrap_or_else(|| source.to_string());
        if alt_name.is_empty()
            || alt_name.len() > 255
            || alt_name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(format!(
                "alt_name {alt_name:?} must be 1–255 characters without '/'"
            ));
        }
        let mut groupby = r.groupby;
        if !groupby.iter().any(|g| g == SCOPE_KEY) {
            groupby.push(SCOPE_KEY.to_string());
        }
        for a in groupby.iter().chain(&r.metadata) {
            if !ATTRIBUTES.contains(&a.as_str()) {
                return Err(format!(
                    "unknown attribute {a:?}; available: {}",
                    ATTRIBUTES.join(", ")
                ));
            }
        }
        if let Some(both) = r.metadata.iter().find(|m| groupby.contains(m)) {
            return Err(format!("{both:?} is in both groupby and metadata"));
        }
        let (factor_num, factor_den) = match &r.factor {
            Some(v) => parse_factor(v).map_err(|e| format!("factor: {e}"))?,
            None => (Decimal::ONE, Decimal::ONE),
        };
        let offset = match &r.offset {
            Some(v) => decimal::from_json(v).map_err(|e| format!("offset: {e}"))?,
            None => Decimal::ZERO,
        };
        let mutate = match r.mutate.as_deref().unwrap_or("NONE") {
            "NONE" => Mutate::None,
            "NUMBOOL" => Mutate::NumBool,
            "NOTNUMBOOL" => Mutate::NotNumBool,
            "FLOOR" => Mutate::Floor,
            "CEIL" => Mutate::Ceil,
            "MAP" => Mutate::Map,
            other => {
                return Err(format!(
                    "mutate {other:?} must be one of NONE, NUMBOOL, NOTNUMBOOL, FLOOR, CEIL, MAP"
                ));
            }
        };
        let mutate_map = match (&r.mutate_map, mutate) {
            (Some(m), Mutate::Map) => m
                .iter()
                .map(|(k, v)| Ok((decimal::parse(k)?, decimal::from_json(v)?)))
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| format!("mutate_map: {e}"))?,
            (None, Mutate::Map) => return Err("mutate = \"MAP\" needs a mutate_map".into()),
            (Some(_), _) => return Err("mutate_map is only allowed with mutate = \"MAP\"".into()),
            (None, _) => Vec::new(),
        };
        Ok(MetricDef {
            source: source.to_string(),
            alt_name,
            unit: r.unit,
            description: r.description,
            groupby,
            metadata: r.metadata,
            factor_num,
            factor_den,
            offset,
            mutate,
            mutate_map,
        })
    }

    /// The metric rated as `metric_id` (its alt_name).
    pub fn find(&self, metric_id: &str) -> Option<&MetricDef> {
        self.metrics.iter().find(|m| m.alt_name == metric_id)
    }
}

impl MetricDef {
    /// `{"metric_id","metadata","unit"}` for `/v1/info/metrics`.
    pub fn info(&self) -> MetricInfo<'_> {
        let mut metadata: Vec<&str> = Vec::new();
        for m in &self.metadata {
            if !metadata.contains(&m.as_str()) {
                metadata.push(m);
            }
        }
        MetricInfo {
            metric_id: &self.alt_name,
            metadata,
            unit: &self.unit,
        }
    }

    /// The collected value → the rated quantity: × factor + offset, then mutate.
    pub fn convert(&self, collected: Decimal) -> Decimal {
        let q = collected * self.factor_num / self.factor_den + self.offset;
        match self.mutate {
            Mutate::None => q,
            Mutate::NumBool => Decimal::from(u8::from(!q.is_zero())),
            Mutate::NotNumBool => Decimal::from(u8::from(q.is_zero())),
            Mutate::Floor => q.floor(),
            Mutate::Ceil => q.ceil(),
            Mutate::Map => self
                .mutate_map
                .iter()
                .find(|(k, _)| *k == q)
                .map(|(_, v)| *v)
                .unwrap_or(Decimal::ZERO),
        }
    }

    /// The collected value of this metric's source for one instance's usage.
    pub fn collected(&self, u: &InstanceUsage) -> Decimal {
        let uptime_secs = Decimal::from(u.uptime_ms) / Decimal::ONE_THOUSAND;
        match self.source.as_str() {
            "uptime" => uptime_secs,
            "cpu_time" => u.cpu_core_secs,
            "vcpu_time" => uptime_secs * Decimal::from(u.info.cpu_count),
            "net_in_bytes" => Decimal::from(u.rx_bytes),
            "net_out_bytes" => Decimal::from(u.tx_bytes),
            "disk_bytes" => Decimal::from(u.info.disk_total_bytes),
            "memory_bytes" => Decimal::from(u.info.mem_total_bytes),
            _ => Decimal::ZERO,
        }
    }

    /// One datapoint for one instance's usage (price 0, to be rated).
    pub fn point(&self, u: &InstanceUsage) -> DataPoint {
        let pick = |names: &[String]| -> Map<String, Value> {
            names
                .iter()
                .map(|n| (n.clone(), attribute(&u.info, n)))
                .collect()
        };
        DataPoint {
            unit: self.unit.clone(),
            qty: self.convert(self.collected(u)),
            price: Decimal::ZERO,
            groupby: pick(&self.groupby),
            metadata: pick(&self.metadata),
        }
    }
}

/// `<cpus>c<mem GiB>g`, e.g. `2c4g`: the flavor name vmmon derives from the inventory.
pub fn flavor_name(info: &InstanceInfo) -> String {
    format!("{}c{}g", info.cpu_count, gib(info.mem_total_bytes))
}

/// The value of attribute `name` (one of [`ATTRIBUTES`]) for an instance.
pub fn attribute(info: &InstanceInfo, name: &str) -> Value {
    match name {
        "id" => json!(info.instance_id),
        "project_id" => json!(info.project),
        "region" => json!(info.region),
        "party" => json!(info.party),
        "instance_name" => json!(info.hostname),
        "cpu_num" => json!(info.cpu_count),
        "mem_size" => json!(gib(info.mem_total_bytes)),
        "disk_size" => json!(gib(info.disk_total_bytes)),
        "flavor_name" => json!(flavor_name(info)),
        "os" => json!(info.os),
        "agent_version" => json!(info.agent_version),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        decimal::parse(s).unwrap()
    }

    #[test]
    fn defaults_parse_and_cover_what_vmmon_collects() {
        let m = MetricsConfig::defaults().unwrap();
        let names: Vec<&str> = m.metrics.iter().map(|m| m.alt_name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "instance",
                "cpu.hours",
                "network.in",
                "network.out",
                "disk.size"
            ]
        );
        let inst = m.find("instance").unwrap();
        assert_eq!(inst.mutate, Mutate::NumBool);
        assert!(inst.metadata.contains(&"cpu_num".to_string()));
        assert!(inst.metadata.contains(&"mem_size".to_string()));
        assert!(inst.groupby.contains(&"project_id".to_string()));
        assert_eq!(m.raw["metrics"]["uptime"]["alt_name"], "instance");
        assert_eq!(
            serde_json::to_value(inst.info()).unwrap(),
            json!({"metric_id": "instance", "metadata": inst.metadata, "unit": "instance"})
        );
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn conversions() {
        let base = MetricsConfig::parse("[metrics.cpu_time]\nunit = 'h'\nfactor = '1/3600'\n")
            .unwrap()
            .metrics
            .remove(0);
        let cases: Vec<(Mutate, Vec<(Decimal, Decimal)>, &str, &str, &str)> = vec![
            (Mutate::None, vec![], "0", "7200", "2"),
            (Mutate::None, vec![], "1", "1800", "1.5"),
            (Mutate::NumBool, vec![], "0", "5", "1"),
            (Mutate::NumBool, vec![], "0", "0", "0"),
            (Mutate::NotNumBool, vec![], "0", "0", "1"),
            (Mutate::Floor, vec![], "0", "5400", "1"),
            (Mutate::Ceil, vec![], "0", "5400", "2"),
            (Mutate::Map, vec![(d("2"), d("10"))], "0", "7200", "10"),
            (Mutate::Map, vec![(d("2"), d("10"))], "0", "3600", "0"),
        ];
        for (mutate, map, offset, collected, want) in cases {
            let m = MetricDef {
                mutate,
                mutate_map: map,
                offset: d(offset),
                ..base.clone()
            };
            assert_eq!(m.convert(d(collected)), d(want), "{mutate:?} {collected}");
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        let cases = [
            ("", "[metrics]"),
            ("[metrics.nope]\nunit='x'", "unknown source"),
            ("[metrics.uptime]\nalt_name='x'", "unit"),
            (
                "[metrics.uptime]\nunit='x'\ngroupby=['id']\nmetadata=['id']",
                "both",
            ),
            (
                "[metrics.uptime]\nunit='x'\nmetadata=['colour']",
                "unknown attribute",
            ),
            (
                "[metrics.uptime]\nunit='x'\nmutate='MAP'",
                "needs a mutate_map",
            ),
            (
                "[metrics.uptime]\nunit='x'\nmutate_map={'1'=2}",
                "only allowed",
            ),
            (
                "[metrics.uptime]\nunit='x'\nmutate='ROUND'",
                "must be one of",
            ),
            ("[metrics.uptime]\nunit='x'\nfactor='1/0'", "zero"),
            ("[metrics.uptime]\nunit='x'\nbogus=1", "unknown field"),
            (
                "[[metrics.uptime]]\nunit='x'\n[[metrics.uptime]]\nunit='y'",
                "used twice",
            ),
        ];
        for (text, want) in cases {
            let err = MetricsConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // A list rates one source several ways; other top-level keys are kept for info/config.
        let ok = MetricsConfig::parse(
            "note = 'x'\n[[metrics.uptime]]\nunit='instance'\nalt_name='a'\n[[metrics.uptime]]\nunit='h'\nalt_name='b'\nfactor=0.5",
        )
        .unwrap();
        assert_eq!(ok.metrics.len(), 2);
        assert_eq!(ok.metrics[1].factor_num, d("0.5"));
        assert_eq!(ok.raw["note"], "x");
    }
}
