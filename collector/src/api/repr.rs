//! Records of the legacy API in their two shapes: a JSON object, or the Python 2 `repr` string
//! the replaced server produced (`{u'cmd': u'sshd', ..., u'_id': ObjectId('…')}`).
//!
//! Float formatting follows Python's `repr` for the values we produce (shortest round-trip digits,
//! always with a decimal point); Python's exponent form for very large/small floats is not
//! reproduced because rounded rates never reach it.

use serde_json::{Map, Value};

/// One field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// A text value (`u'…'`).
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// `None` / `null`.
    Null,
    /// A 24-hex ObjectId-style id (`ObjectId('…')` in repr, a plain string in JSON).
    ObjectId(String),
}

/// A record: fields in the order the seed documents them.
pub type Record = Vec<(&'static str, Field)>;

/// The record as a JSON object.
pub fn to_json(record: &Record) -> Value {
    let mut map = Map::with_capacity(record.len());
    for (k, v) in record {
        let v = match v {
            Field::Str(s) | Field::ObjectId(s) => Value::String(s.clone()),
            Field::Int(i) => Value::from(*i),
            Field::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Field::Null => Value::Null,
        };
        map.insert((*k).to_string(), v);
    }
    Value::Object(map)
}

/// The record as the old server's Python 2 repr string.
pub fn to_python_repr(record: &Record) -> String {
    let mut out = String::with_capacity(record.len() * 24);
    out.push('{');
    for (i, (k, v)) in record.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_unicode(&mut out, k);
        out.push_str(": ");
        match v {
            Field::Str(s) => push_unicode(&mut out, s),
            Field::Int(n) => out.push_str(&n.to_string()),
            Field::Float(f) => out.push_str(&python_float(*f)),
            Field::Null => out.push_str("None"),
            Field::ObjectId(id) => {
                out.push_str("ObjectId('");
                out.push_str(id);
                out.push_str("')");
            }
        }
    }
    out.push('}');
    out
}

fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

fn push_unicode(out: &mut String, s: &str) {
    out.push_str("u'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (c as u32) < 0x7f => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('\'');
}

/// An ObjectId-style id: 4 bytes of seconds (like MongoDB's), a 1-byte table tag and 7 bytes of
/// row id, so it is unique per stored record and stable across queries.
pub fn object_id(seconds: i64, tag: u8, row_id: i64) -> String {
    format!(
        "{:08x}{:02x}{:014x}",
        (seconds as u64) & 0xffff_ffff,
        tag,
        (row_id as u64) & 0x00ff_ffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python2() {
        let rec: Record = vec![
            ("net_incoming", Field::Float(0.6)),
            ("shutdown_time", Field::Null),
            ("cpu_util", Field::Float(50.0)),
            ("cmd", Field::Str("it's \\ é 中".into())),
            ("pid", Field::Int(489)),
            ("_id", Field::ObjectId("58690637594c10403e25b048".into())),
        ];
        assert_eq!(
            to_python_repr(&rec),
            "{u'net_incoming': 0.6, u'shutdown_time': None, u'cpu_util': 50.0, \
             u'cmd': u'it\\'s \\\\ \\xe9 \\u4e2d', u'pid': 489, \
             u'_id': ObjectId('58690637594c10403e25b048')}"
        );
    }

    #[test]
    fn json_keeps_order_and_types() {
        let rec: Record = vec![
            ("b", Field::Int(1)),
            ("a", Field::Null),
            ("_id", Field::ObjectId("x".into())),
        ];
        assert_eq!(
            serde_json::to_string(&to_json(&rec)).unwrap(),
            r#"{"b":1,"a":null,"_id":"x"}"#
        );
    }

    #[test]
    fn object_ids_are_24_hex_and_distinct() {
        let a = object_id(1_483_277_879, 1, 42);
        let b = object_id(1_483_277_879, 2, 42);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(a.starts_with("58690637"));
        assert_ne!(a, b);
    }
}
