//! Exact decimals: parsing from JSON and text, the string form written to JSON (as upstream's
//! WSME does), and Python's `str()` of a description value (what hashmap field mappings match).

use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;

/// Largest number of integer digits a rule's cost or level may have (upstream: Numeric(40,28)).
pub const MAX_INTEGER_DIGITS: u32 = 12;

/// Parses decimal text: `1`, `-0.25`, `1e-5`, `2.5E3`. No floats are involved.
pub fn parse(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty decimal".into());
    }
    if t.contains(['e', 'E']) {
        return Decimal::from_scientific(t).map_err(|e| format!("{t:?} is not a decimal: {e}"));
    }
    Decimal::from_str_exact(t)
        .or_else(|_| Decimal::from_str(t))
        .map_err(|e| format!("{t:?} is not a decimal: {e}"))
}

/// A decimal from a JSON number (its shortest text, never through arithmetic on a float) or a
/// JSON string.
pub fn from_json(v: &Value) -> Result<Decimal, String> {
    match v {
        Value::Number(n) => parse(&n.to_string()),
        Value::String(s) => parse(s),
        other => Err(format!("{other} is not a decimal")),
    }
}

/// A measured float (e.g. a CPU percentage) as a decimal of its shortest round-trip text;
/// non-finite values count as 0.
pub fn from_f64(f: f64) -> Decimal {
    if !f.is_finite() {
        return Decimal::ZERO;
    }
    parse(&format!("{f}"))
        .or_else(|_| Decimal::from_f64_retain(f).ok_or(()))
        .unwrap_or(Decimal::ZERO)
}

/// The JSON string form: normalized (no trailing zeros), `"0"` for zero.
pub fn to_text(d: Decimal) -> String {
    let n = d.normalize();
    if n.is_zero() {
        "0".into()
    } else {
        n.to_string()
    }
}

/// The summary's `rate`: rounded to 5 decimal places (half to even), trailing zeros dropped.
pub fn summary_text(d: Decimal) -> String {
    to_text(d.round_dp_with_strategy(5, RoundingStrategy::MidpointNearestEven))
}

/// Whether `d` has at most [`MAX_INTEGER_DIGITS`] integer digits.
pub fn fits_cost(d: Decimal) -> bool {
    d.abs() < Decimal::from(10u64.pow(MAX_INTEGER_DIGITS))
}

/// Python's `str()` of a JSON value, as upstream compares `str(desc[field]) == mapping.value`:
/// `8` → "8", `1.0` → "1.0", `true` → "True", `null` → "None", strings as they are.
pub fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                n.to_string()
            } else {
                python_float(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::Array(_) | Value::Object(_) => v.to_string(),
    }
}

/// `repr(float)` of Python 3: shortest round-trip digits, `.0` on integral values, exponent form
/// below 1e-4 and from 1e16.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust: "1e16", "1.5e-5" → Python: "1e+16", "1.5e-05".
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// A description value as a number (field thresholds compare it with their level); None when it
/// is not numeric.
pub fn numeric(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(_) | Value::String(_) => from_json(v).ok(),
        Value::Bool(b) => Some(Decimal::from(u8::from(*b))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(s: &str) -> Decimal {
        parse(s).unwrap()
    }

    #[test]
    fn parsing_is_exact() {
        let cases = [
            (json!(0.1), "0.1"),
            (json!("0.1"), "0.1"),
            (json!(1), "1"),
            (json!("1.50"), "1.5"),
            (json!(1e-5), "0.00001"),
            (json!("2.5E3"), "2500"),
            (json!(-3), "-3"),
            (
                json!("0.0000000000000000000000000001"),
                "0.0000000000000000000000000001",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(to_text(from_json(&input).unwrap()), want, "{input}");
        }
        for bad in [
            json!("abc"),
            json!(""),
            json!(true),
            json!(null),
            json!([1]),
        ] {
            assert!(from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_forms() {
        assert_eq!(to_text(d("0.000")), "0");
        assert_eq!(to_text(d("-0")), "0");
        assert_eq!(to_text(d("2.00000000")), "2");
        assert_eq!(summary_text(d("81.648")), "81.648");
        assert_eq!(summary_text(d("1.234565")), "1.23456");
        assert_eq!(summary_text(d("1.234575")), "1.23458");
        assert_eq!(summary_text(d("0.000001")), "0");
        assert_eq!(summary_text(d("0.00001")), "0.00001");
        assert!(fits_cost(d("999999999999.9")));
        assert!(!fits_cost(d("1000000000000")));
    }

    #[test]
    fn python_str_matches_python() {
        let cases = [
            (json!("m1.tiny"), "m1.tiny"),
            (json!(8), "8"),
            (json!(1.0), "1.0"),
            (json!(2.5), "2.5"),
            (json!(true), "True"),
            (json!(false), "False"),
            (json!(null), "None"),
            (json!(1e16), "1e+16"),
            (json!(1.5e-5), "1.5e-05"),
            (json!(0.0001), "0.0001"),
        ];
        for (v, want) in cases {
            assert_eq!(python_str(&v), want, "{v}");
        }
    }

    #[test]
    fn floats_become_their_shortest_decimal() {
        assert_eq!(to_text(from_f64(50.0)), "50");
        assert_eq!(to_text(from_f64(0.1)), "0.1");
        assert_eq!(to_text(from_f64(f64::NAN)), "0");
        assert_eq!(numeric(&json!("512")), Some(d("512")));
        assert_eq!(numeric(&json!("big")), None);
    }
}
