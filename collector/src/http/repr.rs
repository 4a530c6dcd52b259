//! The Python 2 `repr` of a record, as the replaced server produced it
//! (`{u'cmd': u'sshd', …, u'_id': ObjectId('…')}`): a second serde serializer over the same
//! `#[derive(Serialize)]` records the JSON answers use, so the two shapes cannot drift.
//!
//! Rules, from CPython 2.7's `unicode_repr` and `float_repr`:
//! * text is `u'…'`, or `u"…"` when it holds `'` and no `"`; `\\`, the quote, `\t \n \r` are
//!   escaped, other characters below 0x20 and 0x7f–0xff as `\xNN`, the rest of the BMP as
//!   `\uNNNN`, beyond it `\UNNNNNNNN`;
//! * floats are the shortest text that reads back, always with a `.` or an exponent; from 1e16
//!   up and below 1e-4 Python switches to exponent form (`1e+16`, `1e-05`);
//! * `None`, `True`, `False`; a newtype named [`OBJECT_ID`] prints as `ObjectId('…')`;
//! * struct fields in declaration order (the seed's order).

use std::fmt::Write as _;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// Name of the newtype struct printed as `ObjectId('…')` (a plain string in JSON).
pub const OBJECT_ID: &str = "ObjectId";

/// A 24-hex ObjectId-style id: a string in JSON, `ObjectId('…')` in repr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId(pub String);

impl Serialize for ObjectId {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(OBJECT_ID, &self.0)
    }
}

impl ObjectId {
    /// 4 bytes of seconds (like MongoDB's), a 1-byte table tag and 7 bytes of row id, so the id
    /// is unique per stored record and stable across queries.
    pub fn new(seconds: i64, tag: u8, row_id: i64) -> ObjectId {
        ObjectId(format!(
            "{:08x}{:02x}{:014x}",
            (seconds as u64) & 0xffff_ffff,
            tag,
            (row_id as u64) & 0x00ff_ffff_ffff_ffff
        ))
    }
}

/// A value serde cannot express as a Python 2 repr.
#[derive(Debug, thiserror::Error)]
#[error("cannot write a Python repr: {0}")]
pub struct ReprError(String);

impl ser::Error for ReprError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ReprError(msg.to_string())
    }
}

/// The Python 2 repr of `value`.
pub fn to_python_repr<T: Serialize + ?Sized>(value: &T) -> Result<String, ReprError> {
    let mut out = String::with_capacity(256);
    value.serialize(Repr { out: &mut out })?;
    Ok(out)
}

/// Python 2 `repr(unicode)`.
pub fn unicode(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push('u');
    out.push(quote);
    for c in s.chars() {
        let n = c as u32;
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            _ if n < 0x20 || (0x7f..=0xff).contains(&n) => {
                let _ = write!(out, "\\x{n:02x}");
            }
            _ if n < 0x7f => out.push(c),
            _ if n <= 0xffff => {
                let _ = write!(out, "\\u{n:04x}");
            }
            _ => {
                let _ = write!(out, "\\U{n:08x}");
            }
        }
    }
    out.push(quote);
}

/// Python 2.7 `repr(float)`.
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust's shortest exponent form is "1.5e16" / "1e-5"; Python's is "1.5e+16" / "1e-05".
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

struct Repr<'a> {
    out: &'a mut String,
}

/// Writes a `{k: v, …}` or `[v, …]` body.
struct Compound<'a> {
    out: &'a mut String,
    first: bool,
    close: char,
}

impl Compound<'_> {
    fn sep(&mut self) {
        if !self.first {
            self.out.push_str(", ");
        }
        self.first = false;
    }
}

impl<'a> ser::Serializer for Repr<'a> {
    type Ok = ();
    type Error = ReprError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Impossible<(), ReprError>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Impossible<(), ReprError>;

    fn serialize_bool(self, v: bool) -> Result<(), ReprError> {
        self.out.push_str(if v { "True" } else { "False" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), ReprError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), ReprError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), ReprError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), ReprError> {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), ReprError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), ReprError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), ReprError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), ReprError> {
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), ReprError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), ReprError> {
        self.out.push_str(&python_float(v));
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), ReprError> {
        unicode(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), ReprError> {
        unicode(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), ReprError> {
        Err(ReprError("bytes".into()))
    }
    fn serialize_none(self) -> Result<(), ReprError> {
        self.out.push_str("None");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), ReprError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), ReprError> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), ReprError> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), ReprError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<(), ReprError> {
        if name == OBJECT_ID {
            // ObjectId's text is hex, so its repr needs no escaping; Python prints it with
            // plain (not unicode) quotes.
            self.out.push_str("ObjectId('");
            let mut inner = String::new();
            v.serialize(Repr { out: &mut inner })?;
            self.out
                .push_str(inner.trim_start_matches("u'").trim_end_matches('\''));
            self.out.push_str("')");
            return Ok(());
        }
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), ReprError> {
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, ReprError> {
        self.out.push('[');
        Ok(Compound {
            out: self.out,
            first: true,
            close: ']',
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, ReprError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, ReprError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ReprError> {
        Err(ReprError("tuple variants".into()))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, ReprError> {
        self.out.push('{');
        Ok(Compound {
            out: self.out,
            first: true,
            close: '}',
        })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Compound<'a>, ReprError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ReprError> {
        Err(ReprError("struct variants".into()))
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = ReprError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ReprError> {
        self.sep();
        v.serialize(Repr { out: self.out })
    }
    fn end(self) -> Result<(), ReprError> {
        self.out.push(self.close);
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = ReprError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ReprError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<(), ReprError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = ReprError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ReprError> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<(), ReprError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = ReprError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), ReprError> {
        self.sep();
        k.serialize(Repr { out: self.out })
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ReprError> {
        self.out.push_str(": ");
        v.serialize(Repr { out: self.out })
    }
    fn end(self) -> Result<(), ReprError> {
        self.out.push(self.close);
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = ReprError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), ReprError> {
        ser::SerializeMap::serialize_entry(self, key, v)
    }
    fn end(self) -> Result<(), ReprError> {
        ser::SerializeMap::end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Rec {
        net_incoming: f64,
        shutdown_time: Option<f64>,
        cpu_util: f64,
        cmd: String,
        pid: i64,
        #[serde(rename = "_id")]
        id: ObjectId,
    }

    fn rec(cmd: &str) -> Rec {
        Rec {
            net_incoming: 0.6,
            shutdown_time: None,
            cpu_util: 50.0,
            cmd: cmd.into(),
            pid: 489,
            id: ObjectId("58690637594c10403e25b048".into()),
        }
    }

    #[test]
    fn struct_repr_matches_python2() {
        assert_eq!(
            to_python_repr(&rec("sshd \\ é 中")).unwrap(),
            "{u'net_incoming': 0.6, u'shutdown_time': None, u'cpu_util': 50.0, \
             u'cmd': u'sshd \\\\ \\xe9 \\u4e2d', u'pid': 489, \
             u'_id': ObjectId('58690637594c10403e25b048')}"
        );
        // The same struct in JSON: ObjectId is a plain string, fields in the same order.
        assert_eq!(
            serde_json::to_string(&rec("a")).unwrap(),
            r#"{"net_incoming":0.6,"shutdown_time":null,"cpu_util":50.0,"cmd":"a","pid":489,"_id":"58690637594c10403e25b048"}"#
        );
    }

    /// Expected texts are what CPython 2.7.18 prints for `repr(u'…')` and `repr(float)`.
    #[test]
    fn text_and_floats_as_python_2_7_prints_them() {
        let u = |s: &str| {
            let mut out = String::new();
            unicode(&mut out, s);
            out
        };
        for (text, python) in [
            ("it's", r#"u"it's""#),
            ("say \"hi\"", r#"u'say "hi"'"#),
            ("both ' and \"", r#"u'both \' and "'"#),
            ("a\\b", r"u'a\\b'"),
            ("l1\nl2\r\tx", r"u'l1\nl2\r\tx'"),
            ("\u{1}\u{1f}\u{7f}", r"u'\x01\x1f\x7f'"),
            ("\u{80}\u{a0}ÿ", r"u'\x80\xa0\xff'"),
            ("中\u{2028}", r"u'\u4e2d\u2028'"),
            ("😀", r"u'\U0001f600'"),
            ("", "u''"),
        ] {
            assert_eq!(u(text), python, "{text:?}");
        }
        for (f, python) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (12.35, "12.35"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.67, "123456789012345.67"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (2.5e-7, "2.5e-07"),
            (1e100, "1e+100"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(python_float(f), python, "{f}");
        }
    }

    #[test]
    fn object_ids_are_24_hex_and_distinct() {
        let a = ObjectId::new(1_483_277_879, 1, 42).0;
        let b = ObjectId::new(1_483_277_879, 2, 42).0;
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(a.starts_with("58690637"));
        assert_ne!(a, b);
    }
}
