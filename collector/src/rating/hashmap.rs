//! The hashmap rating module: its rule model and how one datapoint is priced (pure, no SQL).
//!
//! Per datapoint of a metric whose alt_name is a hashmap service, per group (rules without a group
//! form one default group), starting from `flat = 0`, `rate = 1` and no threshold:
//!
//! 1. service mappings and field mappings whose value equals Python's `str()` of the datapoint's
//!    attribute: a flat one sets `flat = max(flat, cost)`, a rate one does `rate *= cost`;
//! 2. thresholds whose level the value has reached (`value >= level`; the value is the quantity
//!    for a service threshold and the attribute's number for a field threshold — a non-numeric
//!    attribute skips the threshold instead of failing the period): the group keeps only the one
//!    with the highest level (a later one must be strictly higher), service rules first;
//! 3. the kept threshold, if field-scoped: flat adds to `flat`, rate multiplies `rate`; then
//!    `price = flat × rate × qty`; if service-scoped: flat adds its cost once, rate multiplies the
//!    price.
//!
//! The groups' prices are summed and added to the datapoint's price. Tenant-specific rules replace
//! the global rule with the same key in the same group (key: the service mapping; a field
//! mapping's value; a threshold's level).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::DataPoint;
use super::decimal::{numeric, python_str};

/// A rule's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// A flat cost per unit.
    Flat,
    /// A multiplier.
    Rate,
}

impl MapType {
    /// `"flat"` / `"rate"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MapType::Flat => "flat",
            MapType::Rate => "rate",
        }
    }

    /// Parses `"flat"` / `"rate"`.
    pub fn parse(s: &str) -> Option<MapType> {
        match s {
            "flat" => Some(MapType::Flat),
            "rate" => Some(MapType::Rate),
            _ => None,
        }
    }
}

/// A hashmap service (its name is a metric's alt_name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// UUID.
    pub service_id: String,
    /// Rated type name.
    pub name: String,
}

/// A field: one datapoint attribute of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// UUID.
    pub field_id: String,
    /// Owning service.
    pub service_id: String,
    /// Attribute name.
    pub name: String,
}

/// A calculation group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// UUID.
    pub group_id: String,
    /// Unique name.
    pub name: String,
}

/// A mapping (`value` is None for a service mapping) or a threshold (`level` set).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// UUID (mapping_id or threshold_id).
    pub id: String,
    /// A field mapping's value.
    pub value: Option<String>,
    /// A threshold's level.
    pub level: Option<Decimal>,
    /// Kind.
    pub map_type: MapType,
    /// Cost.
    pub cost: Decimal,
    /// Parent service (service rule).
    pub service_id: Option<String>,
    /// Parent field (field rule).
    pub field_id: Option<String>,
    /// Group.
    pub group_id: Option<String>,
    /// Tenant the rule applies to (None: every tenant).
    pub tenant_id: Option<String>,
    /// Validity: the rule charges a period only when `start_ms <= period begin` (None: always
    /// started), epoch ms.
    pub start_ms: Option<i64>,
    /// Validity: the rule charges a period only when `period begin < end_ms` (None: never ends).
    pub end_ms: Option<i64>,
    /// Optional name (upstream 2025.2; informative).
    pub name: Option<String>,
    /// Optional description (informative).
    pub description: Option<String>,
}

impl Rule {
    /// Whether the rule charges a period beginning at `at_ms` (`start <= at < end`).
    pub fn valid_at(&self, at_ms: i64) -> bool {
        self.start_ms.is_none_or(|s| s <= at_ms) && self.end_ms.is_none_or(|e| at_ms < e)
    }

    /// Whether the validity periods of `self` and `other` overlap (unbounded ends overlap all).
    pub fn overlaps(&self, other: &Rule) -> bool {
        let (a0, a1) = (
            self.start_ms.unwrap_or(i64::MIN),
            self.end_ms.unwrap_or(i64::MAX),
        );
        let (b0, b1) = (
            other.start_ms.unwrap_or(i64::MIN),
            other.end_ms.unwrap_or(i64::MAX),
        );
        a0 < b1 && b0 < a1
    }
}

/// Every stored hashmap rule, in creation order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HashmapRules {
    /// Services.
    pub services: Vec<Service>,
    /// Fields.
    pub fields: Vec<Field>,
    /// Mappings.
    pub mappings: Vec<Rule>,
    /// Thresholds.
    pub thresholds: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq)]
struct Applied {
    map_type: MapType,
    cost: Decimal,
    group: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Level {
    level: Decimal,
    applied: Applied,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct FieldRules {
    name: String,
    mappings: Vec<(String, Applied)>,
    thresholds: Vec<Level>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ServiceRules {
    mappings: Vec<Applied>,
    thresholds: Vec<Level>,
    fields: Vec<FieldRules>,
}

/// The rules in effect for one tenant (or the global rules only), ready to price datapoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    services: BTreeMap<String, ServiceRules>,
}

/// A pricing failure (only arithmetic overflow).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("price overflow in service {service:?}")]
pub struct Overflow {
    /// The service being priced.
    pub service: String,
}

fn rule_key(r: &Rule) -> (Option<&str>, Option<&str>, Option<String>, Option<&str>) {
    (
        r.service_id.as_deref(),
        r.field_id.as_deref(),
        r.value
            .clone()
            .or_else(|| r.level.map(|l| l.normalize().to_string())),
        r.group_id.as_deref(),
    )
}

/// The rules of `all` that apply to `tenant`: global ones, replaced by the tenant's own rule with
/// the same key in the same group. `None` selects the global rules only.
fn effective<'a>(all: &'a [Rule], tenant: Option<&str>) -> Vec<&'a Rule> {
    let own: Vec<&Rule> = match tenant {
        Some(t) => all
            .iter()
            .filter(|r| r.tenant_id.as_deref() == Some(t))
            .collect(),
        None => Vec::new(),
    };
    all.iter()
        .filter(|r| r.tenant_id.is_none())
        .filter(|g| !own.iter().any(|o| rule_key(o) == rule_key(g)))
        .chain(own.iter().copied())
        .collect()
}

impl HashmapRules {
    /// The rules whose validity period holds a period beginning at `at_ms` (see
    /// [`Rule::valid_at`]); services and fields are kept.
    pub fn at(&self, at_ms: i64) -> HashmapRules {
        HashmapRules {
            services: self.services.clone(),
            fields: self.fields.clone(),
            mappings: self
                .mappings
                .iter()
                .filter(|r| r.valid_at(at_ms))
                .cloned()
                .collect(),
            thresholds: self
                .thresholds
                .iter()
                .filter(|r| r.valid_at(at_ms))
                .cloned()
                .collect(),
        }
    }

    /// The rules in effect for `tenant` (None: global rules only, as the quote uses).
    pub fn compile(&self, tenant: Option<&str>) -> Compiled {
        let mut services: BTreeMap<String, ServiceRules> = BTreeMap::new();
        let name_of = |service_id: &str| {
            self.services
                .iter()
                .find(|s| s.service_id == service_id)
                .map(|s| s.name.clone())
        };
        for s in &self.services {
            services.entry(s.name.clone()).or_default();
        }
        let mut fields_sorted: Vec<&Field> = self.fields.iter().collect();
        fields_sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.field_id.cmp(&b.field_id)));
        let field_slot = |services: &mut BTreeMap<String, ServiceRules>, field_id: &str| {
            let f = fields_sorted.iter().find(|f| f.field_id == field_id)?;
            let svc = name_of(&f.service_id)?;
            let rules = services.entry(svc).or_default();
            let idx = match rules.fields.iter().position(|x| x.name == f.name) {
                Some(i) => i,
                None => {
                    rules.fields.push(FieldRules {
                        name: f.name.clone(),
                        ..FieldRules::default()
                    });
                    rules.fields.len() - 1
                }
            };
            Some((name_of(&f.service_id)?, idx))
        };
        // Fields in name order, so the threshold tie rule is deterministic.
        for f in &fields_sorted {
            let _ = field_slot(&mut services, &f.field_id);
        }
        let applied = |r: &Rule| Applied {
            map_type: r.map_type,
            cost: r.cost,
            group: r.group_id.clone(),
        };
        for r in effective(&self.mappings, tenant) {
            if let Some(sid) = &r.service_id {
                if let Some(name) = name_of(sid) {
                    services.entry(name).or_default().mappings.push(applied(r));
                }
            } else if let (Some(fid), Some(value)) = (&r.field_id, &r.value)
                && let Some((svc, idx)) = field_slot(&mut services, fid)
                && let Some(rules) = services.get_mut(&svc)
            {
                rules.fields[idx].mappings.push((value.clone(), applied(r)));
            }
        }
        for r in effective(&self.thresholds, tenant) {
            let Some(level) = r.level else { continue };
            let l = Level {
                level,
                applied: applied(r),
            };
            if let Some(sid) = &r.service_id {
                if let Some(name) = name_of(sid) {
                    services.entry(name).or_default().thresholds.push(l);
                }
            } else if let Some(fid) = &r.field_id
                && let Some((svc, idx)) = field_slot(&mut services, fid)
                && let Some(rules) = services.get_mut(&svc)
            {
                rules.fields[idx].thresholds.push(l);
            }
        }
        Compiled { services }
    }
}

#[derive(Debug, Clone)]
struct GroupState {
    flat: Decimal,
    rate: Decimal,
    threshold: Option<(Decimal, MapType, Decimal, bool)>, // level, type, cost, service-scoped
}

impl Default for GroupState {
    fn default() -> Self {
        GroupState {
            flat: Decimal::ZERO,
            rate: Decimal::ONE,
            threshold: None,
        }
    }
}

impl GroupState {
    fn apply(&mut self, a: &Applied) -> Option<()> {
        match a.map_type {
            MapType::Flat => self.flat = self.flat.max(a.cost),
            MapType::Rate => self.rate = self.rate.checked_mul(a.cost)?,
        }
        Some(())
    }

    fn offer(&mut self, l: &Level, value: Decimal, service_scoped: bool) {
        if value < l.level {
            return;
        }
        if self.threshold.as_ref().is_some_and(|t| l.level <= t.0) {
            return;
        }
        self.threshold = Some((l.level, l.applied.map_type, l.applied.cost, service_scoped));
    }

    fn price(&self, qty: Decimal) -> Option<Decimal> {
        let (mut flat, mut rate) = (self.flat, self.rate);
        if let Some((_, t, cost, false)) = self.threshold {
            match t {
                MapType::Flat => flat = flat.checked_add(cost)?,
                MapType::Rate => rate = rate.checked_mul(cost)?,
            }
        }
        let mut price = flat.checked_mul(rate)?.checked_mul(qty)?;
        if let Some((_, t, cost, true)) = self.threshold {
            match t {
                MapType::Flat => price = price.checked_add(cost)?,
                MapType::Rate => price = price.checked_mul(cost)?,
            }
        }
        Some(price)
    }
}

impl Compiled {
    /// Whether `service` has hashmap rules (a metric without a service is left unchanged).
    pub fn has_service(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// The price hashmap adds to `point` of metric `service`.
    pub fn price(&self, service: &str, point: &DataPoint) -> Result<Decimal, Overflow> {
        let overflow = || Overflow {
            service: service.to_string(),
        };
        let Some(rules) = self.services.get(service) else {
            return Ok(Decimal::ZERO);
        };
        let mut groups: BTreeMap<Option<String>, GroupState> = BTreeMap::new();
        for m in &rules.mappings {
            groups
                .entry(m.group.clone())
                .or_default()
                .apply(m)
                .ok_or_else(overflow)?;
        }
        for t in &rules.thresholds {
            groups
                .entry(t.applied.group.clone())
                .or_default()
                .offer(t, point.qty, true);
        }
        for f in &rules.fields {
            let Some(v) = point.attribute(&f.name) else {
                continue;
            };
            let text = python_str(v);
            for (value, m) in &f.mappings {
                if *value == text {
                    groups
                        .entry(m.group.clone())
                        .or_default()
                        .apply(m)
                        .ok_or_else(overflow)?;
                }
            }
            if f.thresholds.is_empty() {
                continue;
            }
            let Some(num) = numeric(v) else { continue };
            for t in &f.thresholds {
                if num >= t.level {
                    groups
                        .entry(t.applied.group.clone())
                        .or_default()
                        .offer(t, num, false);
                }
            }
        }
        let mut total = Decimal::ZERO;
        for g in groups.values() {
            total = total
                .checked_add(g.price(point.qty).ok_or_else(overflow)?)
                .ok_or_else(overflow)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::decimal::parse;
    use serde_json::{Map, Value, json};

    fn d(s: &str) -> Decimal {
        parse(s).unwrap()
    }

    /// A rule builder: `svc:NAME` / `field:SERVICE.FIELD` parents.
    #[derive(Default)]
    struct Book {
        rules: HashmapRules,
        n: usize,
    }

    impl Book {
        fn id(&mut self) -> String {
            self.n += 1;
            format!("00000000-0000-0000-0000-{:012}", self.n)
        }
        fn service(&mut self, name: &str) -> String {
            if let Some(s) = self.rules.services.iter().find(|s| s.name == name) {
                return s.service_id.clone();
            }
            let id = self.id();
            self.rules.services.push(Service {
                service_id: id.clone(),
                name: name.into(),
            });
            id
        }
        fn field(&mut self, service: &str, name: &str) -> String {
            let sid = self.service(service);
            if let Some(f) = self
                .rules
                .fields
                .iter()
                .find(|f| f.service_id == sid && f.name == name)
            {
                return f.field_id.clone();
            }
            let id = self.id();
            self.rules.fields.push(Field {
                field_id: id.clone(),
                service_id: sid,
                name: name.into(),
            });
            id
        }
        fn parent(&mut self, parent: &str) -> (Option<String>, Option<String>) {
            match parent.split_once(':') {
                Some(("svc", s)) => (Some(self.service(s)), None),
                Some(("field", sf)) => {
                    let (s, f) = sf.rsplit_once('.').unwrap();
                    (None, Some(self.field(s, f)))
                }
                _ => panic!("bad parent {parent}"),
            }
        }
        #[allow(clippy::too_many_arguments)]
        fn rule(
            &mut self,
            threshold: bool,
            parent: &str,
            key: Option<&str>,
            t: MapType,
            cost: &str,
            group: Option<&str>,
            tenant: Option<&str>,
        ) -> &mut Self {
            let (service_id, field_id) = self.parent(parent);
            let id = self.id();
            let r = Rule {
                id,
                value: if threshold {
                    None
                } else {
                    key.map(str::to_string)
                },
                level: if threshold { key.map(d) } else { None },
                map_type: t,
                cost: d(cost),
                service_id,
                field_id,
                group_id: group.map(str::to_string),
                tenant_id: tenant.map(str::to_string),
                start_ms: None,
                end_ms: None,
                name: None,
                description: None,
            };
            if threshold {
                self.rules.thresholds.push(r);
            } else {
                self.rules.mappings.push(r);
            }
            self
        }
        fn map(&mut self, parent: &str, value: Option<&str>, t: MapType, cost: &str) -> &mut Self {
            self.rule(false, parent, value, t, cost, None, None)
        }
        fn map_in(
            &mut self,
            parent: &str,
            value: Option<&str>,
            t: MapType,
            cost: &str,
            group: &str,
        ) -> &mut Self {
            self.rule(false, parent, value, t, cost, Some(group), None)
        }
        fn thr(&mut self, parent: &str, level: &str, t: MapType, cost: &str) -> &mut Self {
            self.rule(true, parent, Some(level), t, cost, None, None)
        }
    }

    fn point(qty: &str, desc: Value) -> DataPoint {
        let Value::Object(metadata) = desc else {
            panic!()
        };
        DataPoint {
            unit: "u".into(),
            qty: d(qty),
            price: Decimal::ZERO,
            groupby: Map::new(),
            metadata,
        }
    }

    fn price(book: &Book, tenant: Option<&str>, service: &str, p: &DataPoint) -> String {
        crate::rating::decimal::to_text(book.rules.compile(tenant).price(service, p).unwrap())
    }

    use MapType::{Flat, Rate};

    #[test]
    fn flat_and_rate_mappings() {
        // (rules, qty, desc, expected)
        type Setup = fn(&mut Book);
        let cases: Vec<(&str, Setup, &str, Value, &str)> = vec![
            ("no rules for the service", |_b| {}, "3", json!({}), "0"),
            (
                "service flat × qty",
                |b| {
                    b.map("svc:compute", None, Flat, "0.5");
                },
                "3",
                json!({}),
                "1.5",
            ),
            (
                "field flat matches str() of an int",
                |b| {
                    b.map("field:compute.vcpus", Some("8"), Flat, "1.25");
                },
                "2",
                json!({"vcpus": 8}),
                "2.5",
            ),
            (
                "field flat does not match another value",
                |b| {
                    b.map("field:compute.vcpus", Some("8"), Flat, "1.25");
                },
                "2",
                json!({"vcpus": 4}),
                "0",
            ),
            (
                "float metadata matches Python text",
                |b| {
                    b.map("field:compute.ratio", Some("1.0"), Flat, "2");
                },
                "1",
                json!({"ratio": 1.0}),
                "2",
            ),
            (
                "largest flat wins within a group",
                |b| {
                    b.map("svc:compute", None, Flat, "0.1")
                        .map("field:compute.flavor", Some("m1.small"), Flat, "0.3")
                        .map("field:compute.image", Some("win"), Flat, "0.2");
                },
                "1",
                json!({"flavor": "m1.small", "image": "win"}),
                "0.3",
            ),
            (
                "rates multiply the flat",
                |b| {
                    b.map("svc:compute", None, Flat, "2")
                        .map("field:compute.az", Some("premium"), Rate, "1.25")
                        .map("field:compute.os", Some("win"), Rate, "1.1");
                },
                "4",
                json!({"az": "premium", "os": "win"}),
                "11",
            ),
            (
                "a rate-only group prices 0",
                |b| {
                    b.map("field:compute.az", Some("premium"), Rate, "1.25");
                },
                "4",
                json!({"az": "premium"}),
                "0",
            ),
            (
                "groups are summed",
                |b| {
                    b.map("svc:compute", None, Flat, "0.1").map_in(
                        "field:compute.flavor",
                        Some("m1.small"),
                        Flat,
                        "0.3",
                        "g-extra",
                    );
                },
                "2",
                json!({"flavor": "m1.small"}),
                "0.8",
            ),
        ];
        for (name, setup, qty, desc, want) in cases {
            let mut b = Book::default();
            b.service("compute");
            setup(&mut b);
            assert_eq!(
                price(&b, None, "compute", &point(qty, desc)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn service_thresholds() {
        // Upstream's docs: flat 0.001/GiB, rate thresholds 50 → 0.98, 200 → 0.95.
        let mut b = Book::default();
        b.map("svc:volume.size", None, Flat, "0.001")
            .thr("svc:volume.size", "50", Rate, "0.98")
            .thr("svc:volume.size", "200", Rate, "0.95");
        for (qty, want) in [
            ("50", "0.049"),
            ("80", "0.0784"),
            ("250", "0.2375"),
            ("20", "0.02"),
        ] {
            assert_eq!(
                price(&b, None, "volume.size", &point(qty, json!({}))),
                want,
                "{qty}"
            );
        }
        // Flat service thresholds add their cost once, not per unit (upstream's unit tests).
        let mut b = Book::default();
        b.thr("svc:compute", "1", Flat, "0.1")
            .thr("svc:compute", "2", Flat, "0.15");
        for (qty, want) in [("0.5", "0"), ("1", "0.1"), ("2", "0.15"), ("7", "0.15")] {
            assert_eq!(
                price(&b, None, "compute", &point(qty, json!({}))),
                want,
                "{qty}"
            );
        }
    }

    #[test]
    fn field_thresholds() {
        // Upstream's unit test: memory 64 → 0.1337, 128 → 0.2; memory "512", qty 2 → 0.4.
        let mut b = Book::default();
        b.thr("field:compute.memory", "64", Flat, "0.1337").thr(
            "field:compute.memory",
            "128",
            Flat,
            "0.2",
        );
        let cases = [
            ("2", json!({"memory": "512"}), "0.4"),
            ("2", json!({"memory": 100}), "0.2674"),
            ("2", json!({"memory": 32}), "0"),
            ("2", json!({"memory": "lots"}), "0"), // not numeric: skipped, not an error
            ("2", json!({}), "0"),
        ];
        for (qty, desc, want) in cases {
            assert_eq!(
                price(&b, None, "compute", &point(qty, desc.clone())),
                want,
                "{desc}"
            );
        }
        // A field rate threshold multiplies before qty; it competes with service thresholds by
        // level, and a service one at the same level (seen first) wins.
        let mut b = Book::default();
        b.map("svc:compute", None, Flat, "1")
            .thr("field:compute.vcpus", "4", Rate, "0.5")
            .thr("svc:compute", "4", Flat, "100");
        assert_eq!(
            price(&b, None, "compute", &point("3", json!({"vcpus": 8}))),
            "1.5"
        );
        assert_eq!(
            price(&b, None, "compute", &point("4", json!({"vcpus": 8}))),
            "104"
        );
    }

    #[test]
    fn worked_example_with_groups() {
        // reference §2.3: storage group (ssd flat 0.002, premium rate 1.25, service threshold
        // 100 → rate 0.9) + default group (service flat 0.001).
        let mut b = Book::default();
        b.map_in(
            "field:volume.size.volume_type",
            Some("ssd"),
            Flat,
            "0.002",
            "storage",
        )
        .map_in(
            "field:volume.size.availability_zone",
            Some("az-premium"),
            Rate,
            "1.25",
            "storage",
        )
        .rule(
            true,
            "svc:volume.size",
            Some("100"),
            Rate,
            "0.9",
            Some("storage"),
            None,
        )
        .map("svc:volume.size", None, Flat, "0.001");
        let cases = [
            ("150", "ssd", "0.4875"),
            ("80", "ssd", "0.28"),
            ("150", "hdd", "0.15"),
        ];
        for (qty, vt, want) in cases {
            let p = point(
                qty,
                json!({"volume_type": vt, "availability_zone": "az-premium"}),
            );
            assert_eq!(price(&b, None, "volume.size", &p), want, "{qty} {vt}");
        }
    }

    #[test]
    fn tenant_rules_override_global_ones_per_group_and_key() {
        let mut b = Book::default();
        b.map("svc:instance", None, Flat, "0.05")
            .map("field:instance.flavor_name", Some("2c4g"), Flat, "0.08")
            .thr("svc:instance", "1", Flat, "0.5")
            // tenant A: cheaper service mapping (same key, same group) and its own threshold
            .rule(false, "svc:instance", None, Flat, "0.01", None, Some("A"))
            .rule(
                true,
                "svc:instance",
                Some("1"),
                Flat,
                "0.2",
                None,
                Some("A"),
            )
            // tenant B: a rule in another group adds up instead of replacing
            .rule(
                false,
                "svc:instance",
                None,
                Flat,
                "1",
                Some("gB"),
                Some("B"),
            );
        let p = point("1", json!({"flavor_name": "1c1g"}));
        assert_eq!(price(&b, None, "instance", &p), "0.55");
        assert_eq!(price(&b, Some("A"), "instance", &p), "0.21");
        assert_eq!(price(&b, Some("B"), "instance", &p), "1.55");
        assert_eq!(price(&b, Some("C"), "instance", &p), "0.55");
        // The flavor mapping still competes with A's override: max(0.01, 0.08) + 0.2.
        let p = point("1", json!({"flavor_name": "2c4g"}));
        assert_eq!(price(&b, Some("A"), "instance", &p), "0.28");
    }

    #[test]
    fn exact_decimals_and_overflow() {
        let mut b = Book::default();
        b.map("svc:x", None, Flat, "0.1")
            .map("svc:x", None, Rate, "3");
        assert_eq!(price(&b, None, "x", &point("0.1", json!({}))), "0.03");
        let mut b = Book::default();
        b.map("svc:x", None, Flat, "999999999999");
        let huge = point("79228162514264337593543950335", json!({}));
        assert!(b.rules.compile(None).price("x", &huge).is_err());
        assert!(!b.rules.compile(None).has_service("y"));
    }
}
