//! One connection type for both backends, shaped like the part of `rusqlite` the store uses, so
//! each store function is written once: [`Connection`] is either a SQLite connection or a
//! PostgreSQL client (`tokio-postgres`, from a `deadpool-postgres` pool).
//!
//! SQL is written with SQLite's numbered placeholders (`?1`, `?2`, …); on PostgreSQL they become
//! `$1`, `$2`, … (translated once per statement text; prepared statements are cached per
//! connection). Where the dialects differ a store function asks [`Connection::is_pg`] and picks
//! its text. Values travel as [`Value`], which binds to whatever type the server inferred for a
//! parameter (an `i64` binds to `int4`, `int8` or `numeric` alike), and come back through
//! [`FromCol`], which accepts the integer, float and numeric column types of either backend.
//!
//! The PostgreSQL calls are blocking: they run on the store's writer thread or on the blocking
//! pool (never on an async worker), each awaiting the client's future with
//! [`tokio::runtime::Handle::block_on`]; the pool's connection tasks run on the runtime.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{Result, StoreError};

/// A value bound to a statement parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// Something that binds as a statement parameter.
pub trait Param {
    /// The value to bind; an error when it does not fit (e.g. a `u64` above `i64::MAX`).
    fn value(&self) -> Result<Value<'_>>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Result<Value<'_>> {
                i64::try_from(*self)
                    .map(Value::Int)
                    .map_err(|_| StoreError::Type(format!("integer {} out of range", self)))
            }
        }
    )*};
}
int_param!(i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);

impl Param for bool {
    fn value(&self) -> Result<Value<'_>> {
        Ok(Value::Int(i64::from(*self)))
    }
}
impl Param for f64 {
    fn value(&self) -> Result<Value<'_>> {
        Ok(Value::Real(*self))
    }
}
impl Param for f32 {
    fn value(&self) -> Result<Value<'_>> {
        Ok(Value::Real(f64::from(*self)))
    }
}
impl Param for str {
    fn value(&self) -> Result<Value<'_>> {
        Ok(Value::Text(self))
    }
}
impl Param for String {
    fn value(&self) -> Result<Value<'_>> {
        Ok(Value::Text(self))
    }
}
impl Param for [u8] {
    fn value(&self) -> Result<Value<'_>> {
        Ok(Value::Blob(self))
    }
}
impl Param for Vec<u8> {
    fn value(&self) -> Result<Value<'_>> {
        Ok(Value::Blob(self))
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Result<Value<'_>> {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Result<Value<'_>> {
        match self {
            Some(v) => v.value(),
            None => Ok(Value::Null),
        }
    }
}

/// A statement's parameters: `params![a, b]`, an array `[a, b]` of one type, or `[]` via
/// `params![]`.
pub trait Params {
    /// The values, in placeholder order.
    fn values(&self) -> Result<Vec<Value<'_>>>;
}

impl Params for &[&dyn Param] {
    fn values(&self) -> Result<Vec<Value<'_>>> {
        self.iter().map(|p| p.value()).collect()
    }
}
impl<T: Param, const N: usize> Params for [T; N] {
    fn values(&self) -> Result<Vec<Value<'_>>> {
        self.iter().map(|p| p.value()).collect()
    }
}

/// `params![a, b, …]`: a parameter list of mixed types (like `rusqlite::params!`). Crate-local
/// (a `#[macro_export]` macro would live at the crate root, above the store).
macro_rules! store_params {
    () => { &[] as &[&dyn $crate::store::db::Param] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::Param),+] as &[&dyn $crate::store::db::Param] };
}
pub(crate) use store_params as params;

/// No parameters, for callers outside the crate (benches): `params![]` is crate-local.
pub const NO_PARAMS: &[&dyn Param] = &[];

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as R};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => R::Null,
            Value::Int(i) => R::Integer(i),
            Value::Real(f) => R::Real(f),
            Value::Text(s) => R::Text(s.as_bytes()),
            Value::Blob(b) => R::Blob(b),
        }))
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::FLOAT4 => (i as f32).to_sql(ty, out),
                Type::NUMERIC => {
                    encode_numeric_int(i, out);
                    Ok(IsNull::No)
                }
                _ => i.to_string().as_str().to_sql(&Type::TEXT, out),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => f.to_string().as_str().to_sql(ty, out),
                _ => f.to_sql(&Type::FLOAT8, out),
            },
            Value::Text(s) => s.to_sql(&Type::TEXT, out),
            Value::Blob(b) => b.to_sql(&Type::BYTEA, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::BOOL
                | Type::FLOAT8
                | Type::FLOAT4
                | Type::NUMERIC
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
                | Type::UNKNOWN
                | Type::BYTEA
        )
    }

    to_sql_checked!();
}

/// Binary `numeric` of an integer (base-10000 digits).
fn encode_numeric_int(i: i64, out: &mut BytesMut) {
    use bytes::BufMut;
    let neg = i < 0;
    let mut n = i.unsigned_abs();
    let mut digits = Vec::new();
    while n > 0 {
        digits.push((n % 10_000) as i16);
        n /= 10_000;
    }
    digits.reverse();
    let weight = digits.len() as i16 - 1;
    out.put_i16(digits.len() as i16);
    out.put_i16(if digits.is_empty() { 0 } else { weight });
    out.put_u16(if neg { 0x4000 } else { 0 });
    out.put_u16(0);
    for d in digits {
        out.put_i16(d);
    }
}

/// Binary `numeric` to an integer when it is whole and fits, else a float.
fn decode_numeric(raw: &[u8]) -> std::result::Result<ValueRef<'static>, String> {
    let bad = || "malformed numeric".to_string();
    let word = |i: usize| -> std::result::Result<i16, String> {
        raw.get(i..i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(bad)
    };
    let ndigits = usize::try_from(word(0)?).map_err(|_| bad())?;
    let weight = i32::from(word(2)?);
    let sign = word(4)? as u16;
    let dscale = word(6)?;
    if sign == 0xC000 {
        return Ok(ValueRef::Real(f64::NAN));
    }
    let mut digits = Vec::with_capacity(ndigits);
    for k in 0..ndigits {
        digits.push(word(8 + 2 * k)?);
    }
    let mut float = 0.0f64;
    for (k, d) in digits.iter().enumerate() {
        float += f64::from(*d) * 10_000f64.powi(weight - k as i32);
    }
    let whole = digits
        .iter()
        .enumerate()
        .all(|(k, d)| *d == 0 || (k as i32) <= weight);
    // The integer value when whole and small enough (None on overflow).
    let int = (0..=weight).try_fold(0i128, |acc, k| {
        let d = digits.get(k as usize).copied().unwrap_or(0);
        acc.checked_mul(10_000)?.checked_add(i128::from(d))
    });
    let neg = sign == 0x4000;
    if whole
        && dscale >= 0
        && let Some(int) = int
        && let Ok(v) = i64::try_from(if neg { -int } else { int })
    {
        return Ok(ValueRef::Int(v));
    }
    Ok(ValueRef::Real(if neg { -float } else { float }))
}

/// A column value as read, borrowed from its row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// SQL NULL.
    Null,
    /// An integer (also a boolean: 0 or 1).
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

impl<'a> ValueRef<'a> {
    /// The text, or a type error.
    pub fn as_str(&self) -> Result<&'a str> {
        match *self {
            ValueRef::Text(s) => Ok(s),
            other => Err(StoreError::Type(format!("expected text, found {other:?}"))),
        }
    }
}

/// A Rust type a column converts to.
pub trait FromCol: Sized {
    /// Converts, or a type error.
    fn from_col(v: ValueRef<'_>) -> Result<Self>;
}

fn type_err<T>(what: &str, v: ValueRef<'_>) -> Result<T> {
    Err(StoreError::Type(format!("expected {what}, found {v:?}")))
}

macro_rules! int_col {
    ($($t:ty),*) => {$(
        impl FromCol for $t {
            fn from_col(v: ValueRef<'_>) -> Result<Self> {
                match v {
                    ValueRef::Int(i) => <$t>::try_from(i)
                        .map_err(|_| StoreError::Type(format!("integer {i} out of range"))),
                    other => type_err("an integer", other),
                }
            }
        }
    )*};
}
int_col!(i8, i16, i32, i64, u8, u16, u32, u64, usize);

impl FromCol for f64 {
    fn from_col(v: ValueRef<'_>) -> Result<Self> {
        match v {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Int(i) => Ok(i as f64),
            other => type_err("a number", other),
        }
    }
}
impl FromCol for bool {
    fn from_col(v: ValueRef<'_>) -> Result<Self> {
        match v {
            ValueRef::Int(i) => Ok(i != 0),
            other => type_err("a boolean", other),
        }
    }
}
impl FromCol for String {
    fn from_col(v: ValueRef<'_>) -> Result<Self> {
        v.as_str().map(str::to_string)
    }
}
impl FromCol for Vec<u8> {
    fn from_col(v: ValueRef<'_>) -> Result<Self> {
        match v {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            ValueRef::Text(s) => Ok(s.as_bytes().to_vec()),
            other => type_err("bytes", other),
        }
    }
}
impl<T: FromCol> FromCol for Option<T> {
    fn from_col(v: ValueRef<'_>) -> Result<Self> {
        match v {
            ValueRef::Null => Ok(None),
            v => T::from_col(v).map(Some),
        }
    }
}

/// A column index (only `usize`; lets `r.get::<_, T>(0)` read like rusqlite).
pub trait ColIndex {
    /// The index.
    fn idx(self) -> usize;
}
impl ColIndex for usize {
    fn idx(self) -> usize {
        self
    }
}

/// One result row of either backend.
pub enum Row<'a> {
    /// A SQLite row.
    Sqlite(&'a rusqlite::Row<'a>),
    /// A PostgreSQL row.
    Pg(&'a tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `idx` as `T`.
    pub fn get<I: ColIndex, T: FromCol>(&self, idx: I) -> Result<T> {
        T::from_col(self.get_ref(idx)?)
    }

    /// Column `idx` as borrowed.
    pub fn get_ref<I: ColIndex>(&self, idx: I) -> Result<ValueRef<'_>> {
        let idx = idx.idx();
        match self {
            Row::Sqlite(r) => {
                use rusqlite::types::ValueRef as R;
                Ok(match r.get_ref(idx)? {
                    R::Null => ValueRef::Null,
                    R::Integer(i) => ValueRef::Int(i),
                    R::Real(f) => ValueRef::Real(f),
                    R::Text(t) => ValueRef::Text(
                        std::str::from_utf8(t).map_err(|e| StoreError::Type(e.to_string()))?,
                    ),
                    R::Blob(b) => ValueRef::Blob(b),
                })
            }
            Row::Pg(r) => pg_value(r, idx),
        }
    }
}

fn pg_value(r: &tokio_postgres::Row, idx: usize) -> Result<ValueRef<'_>> {
    let col = r
        .columns()
        .get(idx)
        .ok_or_else(|| StoreError::Type(format!("no column {idx}")))?;
    let ty = col.type_().clone();
    Ok(match ty {
        Type::INT8 => r
            .try_get::<_, Option<i64>>(idx)?
            .map_or(ValueRef::Null, ValueRef::Int),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(idx)?
            .map_or(ValueRef::Null, |v| ValueRef::Int(v.into())),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(idx)?
            .map_or(ValueRef::Null, |v| ValueRef::Int(v.into())),
        Type::BOOL => r
            .try_get::<_, Option<bool>>(idx)?
            .map_or(ValueRef::Null, |v| ValueRef::Int(v.into())),
        Type::FLOAT8 => r
            .try_get::<_, Option<f64>>(idx)?
            .map_or(ValueRef::Null, ValueRef::Real),
        Type::FLOAT4 => r
            .try_get::<_, Option<f32>>(idx)?
            .map_or(ValueRef::Null, |v| ValueRef::Real(v.into())),
        Type::NUMERIC => match r.try_get::<_, Option<RawNumeric<'_>>>(idx)? {
            None => ValueRef::Null,
            Some(raw) => decode_numeric(raw.0).map_err(StoreError::Type)?,
        },
        Type::BYTEA => r
            .try_get::<_, Option<&[u8]>>(idx)?
            .map_or(ValueRef::Null, ValueRef::Blob),
        _ => r
            .try_get::<_, Option<&str>>(idx)?
            .map_or(ValueRef::Null, ValueRef::Text),
    })
}

struct RawNumeric<'a>(&'a [u8]);

impl<'a> tokio_postgres::types::FromSql<'a> for RawNumeric<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        Ok(RawNumeric(raw))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// `.optional()` on a single-row query: "no row" becomes `None` (like rusqlite's).
pub trait OptionalExtension<T> {
    /// `Ok(None)` for "no row", other errors unchanged.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NoRows) => Ok(None),
            Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// An owned parameter value, for a statement sent later ([`Connection::execute_later`]).
#[derive(Debug, Clone, PartialEq)]
enum OwnedValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl OwnedValue {
    fn of(v: &Value<'_>) -> OwnedValue {
        match *v {
            Value::Null => OwnedValue::Null,
            Value::Int(i) => OwnedValue::Int(i),
            Value::Real(f) => OwnedValue::Real(f),
            Value::Text(s) => OwnedValue::Text(s.to_string()),
            Value::Blob(b) => OwnedValue::Blob(b.to_vec()),
        }
    }

    fn borrowed(&self) -> Value<'_> {
        match self {
            OwnedValue::Null => Value::Null,
            OwnedValue::Int(i) => Value::Int(*i),
            OwnedValue::Real(f) => Value::Real(*f),
            OwnedValue::Text(s) => Value::Text(s),
            OwnedValue::Blob(b) => Value::Blob(b),
        }
    }
}

impl ToSql for OwnedValue {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        self.borrowed().to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <Value<'_> as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// A native parameter owned by a statement sent later (e.g. a column array for `UNNEST`).
pub type OwnedParam = Box<dyn ToSql + Sync + Send>;

/// A write whose answer nobody reads, waiting to be sent with the next statement.
struct Deferred {
    stmt: tokio_postgres::Statement,
    params: Vec<OwnedParam>,
}

/// Rows in PostgreSQL's binary `COPY` format, encoded column by column as they are pushed
/// (the types must be exactly the columns': binary `COPY` does not convert).
pub struct CopyRows {
    buf: BytesMut,
}

impl CopyRows {
    /// An empty set of rows (the format's header written).
    pub fn new() -> CopyRows {
        use bytes::BufMut;
        let mut buf = BytesMut::with_capacity(1 << 16);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        CopyRows { buf }
    }

    /// Starts a row of `columns` values.
    pub fn row(&mut self, columns: i16) {
        use bytes::BufMut;
        self.buf.put_i16(columns);
    }

    /// A `text` value.
    pub fn text(&mut self, v: &str) {
        use bytes::BufMut;
        self.buf.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
        self.buf.put_slice(v.as_bytes());
    }

    /// A `bigint` value.
    pub fn int8(&mut self, v: i64) {
        use bytes::BufMut;
        self.buf.put_i32(8);
        self.buf.put_i64(v);
    }

    /// A `double precision` value, or NULL.
    pub fn float8(&mut self, v: Option<f64>) {
        use bytes::BufMut;
        match v {
            Some(f) => {
                self.buf.put_i32(8);
                self.buf.put_f64(f);
            }
            None => self.buf.put_i32(-1),
        }
    }

    fn finish(mut self) -> bytes::Bytes {
        use bytes::BufMut;
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

impl Default for CopyRows {
    fn default() -> Self {
        CopyRows::new()
    }
}

/// A PostgreSQL connection taken from the pool.
pub struct PgConn {
    pub(super) client: deadpool_postgres::Object,
    pub(super) rt: tokio::runtime::Handle,
    /// `?N` SQL text → `$N` SQL text.
    translated: Mutex<HashMap<String, std::sync::Arc<str>>>,
    /// Statements (SQL + which parameters were NULL) whose NULL parameters the server could not
    /// type: they are prepared with `text` NULLs straight away.
    null_text: Mutex<std::collections::HashSet<String>>,
    /// Inside `BEGIN` … `COMMIT`/`ROLLBACK` (a failed prepare there must be undone by a
    /// savepoint, or it aborts the transaction).
    in_tx: std::sync::atomic::AtomicBool,
    /// Writes queued inside the transaction ([`Connection::execute_later`]): sent, in order,
    /// pipelined ahead of the next statement that needs an answer (or `COMMIT`), so a batch's
    /// writes cost no round trip of their own.
    pending: Mutex<Vec<Deferred>>,
    /// A queued write failed: the transaction is aborted and must not be reported committed
    /// (PostgreSQL answers `COMMIT` in an aborted transaction with a rollback, not an error).
    deferred_failed: std::sync::atomic::AtomicBool,
}

impl PgConn {
    pub(super) fn new(client: deadpool_postgres::Object, rt: tokio::runtime::Handle) -> PgConn {
        PgConn {
            client,
            rt,
            translated: Mutex::new(HashMap::new()),
            null_text: Mutex::new(std::collections::HashSet::new()),
            in_tx: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            deferred_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn in_tx(&self) -> bool {
        self.in_tx.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Awaits `fut` (a statement whose answer is needed) after sending the queued writes ahead
    /// of it on the same connection, all in one round trip: tokio-postgres pipelines the
    /// requests of futures polled together, in the order first polled. A failed queued write
    /// is the error returned (and marks the transaction failed).
    fn run<T>(
        &self,
        fut: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let pending = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Err(StoreError::Commit("deferred write queue poisoned".into())),
        };
        if pending.is_empty() {
            return Ok(self.rt.block_on(fut)?);
        }
        let refs: Vec<Vec<&(dyn ToSql + Sync)>> = pending
            .iter()
            .map(|d| {
                d.params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect()
            })
            .collect();
        let writes = futures::future::join_all(
            pending
                .iter()
                .zip(&refs)
                .map(|(d, r)| self.client.execute(&d.stmt, r)),
        );
        let (written, out) = self.rt.block_on(futures::future::join(writes, fut));
        if let Some(e) = written.into_iter().find_map(std::result::Result::err) {
            self.deferred_failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(e.into());
        }
        Ok(out?)
    }

    /// Queues `stmt` with `params` inside a transaction; outside one, runs it now.
    fn defer(&self, stmt: tokio_postgres::Statement, params: Vec<OwnedParam>) -> Result<()> {
        if !self.in_tx() {
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            self.run(self.client.execute(&stmt, &refs))?;
            return Ok(());
        }
        self.pending
            .lock()
            .map_err(|_| StoreError::Commit("deferred write queue poisoned".into()))?
            .push(Deferred { stmt, params });
        Ok(())
    }

    /// Runs `sql` (PostgreSQL text, `$N` placeholders) with owned native parameters (e.g.
    /// column arrays for an `UNNEST` bulk insert) as a write whose answer is not read: inside
    /// a transaction it is sent with the next statement that needs an answer (see
    /// [`Connection::execute_later`]).
    pub fn execute_native_later(&self, sql: &str, params: Vec<OwnedParam>) -> Result<()> {
        let stmt = self.rt.block_on(self.client.prepare_cached(sql))?;
        self.defer(stmt, params)
    }

    /// True (once) when a queued write failed since the last call: the transaction is aborted.
    pub(super) fn take_deferred_failure(&self) -> bool {
        self.deferred_failed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The prepared statement for `sql` with these values: each non-null value's type is given
    /// (`int8`, `float8`, `text`, `bytea`), so `?1 IS NULL OR col = ?1` prepares; a NULL's type is
    /// inferred, or `text` when the server cannot infer it.
    fn statement(&self, sql: &str, values: &[Value<'_>]) -> Result<tokio_postgres::Statement> {
        let text = {
            let mut cache = self
                .translated
                .lock()
                .map_err(|_| StoreError::Commit("statement cache poisoned".into()))?;
            match cache.get(sql) {
                Some(t) => t.clone(),
                None => {
                    let t: std::sync::Arc<str> = translate_placeholders(sql).into();
                    cache.insert(sql.to_string(), t.clone());
                    t
                }
            }
        };
        let typed = |null: Type| -> Vec<Type> {
            values
                .iter()
                .map(|v| match v {
                    Value::Null => null.clone(),
                    Value::Int(_) => Type::INT8,
                    Value::Real(_) => Type::FLOAT8,
                    Value::Text(_) => Type::TEXT,
                    Value::Blob(_) => Type::BYTEA,
                })
                .collect()
        };
        if !values.contains(&Value::Null) {
            return Ok(self.rt.block_on(
                self.client
                    .prepare_typed_cached(&text, &typed(Type::UNKNOWN)),
            )?);
        }
        let key: String = values
            .iter()
            .map(|v| if *v == Value::Null { 'n' } else { 'v' })
            .chain(sql.chars())
            .collect();
        let known_text = self
            .null_text
            .lock()
            .map(|k| k.contains(&key))
            .unwrap_or(false);
        if known_text {
            return Ok(self
                .rt
                .block_on(self.client.prepare_typed_cached(&text, &typed(Type::TEXT)))?);
        }
        // Type::UNKNOWN asks the server to infer the NULL parameters' types; where it cannot
        // (`?1 IS NULL OR col = ?1`), they are text. Inside a transaction the first try runs in
        // a savepoint, so its failure does not abort the transaction.
        let in_tx = self.in_tx.load(std::sync::atomic::Ordering::Relaxed);
        if in_tx {
            self.rt
                .block_on(self.client.batch_execute("SAVEPOINT vmmon_prepare"))?;
        }
        let first = self.rt.block_on(
            self.client
                .prepare_typed_cached(&text, &typed(Type::UNKNOWN)),
        );
        match first {
            Ok(s) => {
                if in_tx {
                    self.rt
                        .block_on(self.client.batch_execute("RELEASE vmmon_prepare"))?;
                }
                Ok(s)
            }
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INDETERMINATE_DATATYPE)
                    || e.code() == Some(&tokio_postgres::error::SqlState::AMBIGUOUS_PARAMETER) =>
            {
                if in_tx {
                    self.rt.block_on(
                        self.client
                            .batch_execute("ROLLBACK TO vmmon_prepare; RELEASE vmmon_prepare"),
                    )?;
                }
                if let Ok(mut k) = self.null_text.lock() {
                    k.insert(key);
                }
                Ok(self
                    .rt
                    .block_on(self.client.prepare_typed_cached(&text, &typed(Type::TEXT)))?)
            }
            Err(e) => {
                if in_tx {
                    let _ = self.rt.block_on(
                        self.client
                            .batch_execute("ROLLBACK TO vmmon_prepare; RELEASE vmmon_prepare"),
                    );
                }
                Err(e.into())
            }
        }
    }

    fn query(&self, sql: &str, values: &[Value<'_>]) -> Result<Vec<tokio_postgres::Row>> {
        let stmt = self.statement(sql, values)?;
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
        self.run(self.client.query(&stmt, &refs))
    }

    fn execute(&self, sql: &str, values: &[Value<'_>]) -> Result<usize> {
        let stmt = self.statement(sql, values)?;
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
        let n = self.run(self.client.execute(&stmt, &refs))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn execute_later(&self, sql: &str, values: &[Value<'_>]) -> Result<()> {
        let stmt = self.statement(sql, values)?;
        let owned = values
            .iter()
            .map(|v| Box::new(OwnedValue::of(v)) as OwnedParam)
            .collect();
        self.defer(stmt, owned)
    }

    /// Runs `sql` (PostgreSQL text, `$N` placeholders) with native parameters, e.g. arrays for
    /// `UNNEST` bulk inserts; the rows changed.
    pub fn execute_native(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let stmt = self.rt.block_on(self.client.prepare_cached(sql))?;
        self.run(self.client.execute(&stmt, params))
    }

    /// Copies rows into a table with `sql`, a binary `COPY … FROM STDIN (FORMAT binary)`, after
    /// the queued writes; `data` is the rows already encoded ([`CopyRows`]). The data goes to
    /// the connection in one message, not in 4 KiB pieces each handed from this thread to the
    /// connection's task. The rows copied.
    pub fn copy_in_binary(&self, sql: &str, data: CopyRows) -> Result<u64> {
        let stmt = self.rt.block_on(self.client.prepare_cached(sql))?;
        self.run(async {
            let sink = self.client.copy_in::<_, bytes::Bytes>(&stmt).await?;
            futures::pin_mut!(sink);
            futures::SinkExt::send(&mut sink, data.finish()).await?;
            sink.as_mut().finish().await
        })
    }

    /// Runs a query (PostgreSQL text, `$N` placeholders) with native parameters (e.g. arrays),
    /// after the queued writes; its rows.
    pub fn query_native(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let stmt = self.rt.block_on(self.client.prepare_cached(sql))?;
        self.run(self.client.query(&stmt, params))
    }

    /// Whether the server connection has gone.
    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// SQLite's `?N` (and bare `?`) placeholders as PostgreSQL's `$N`, outside quoted text.
pub fn translate_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next_bare = 1;
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '?' => {
                let mut num = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    num.push(*d);
                    chars.next();
                }
                out.push('$');
                if num.is_empty() {
                    out.push_str(&next_bare.to_string());
                    next_bare += 1;
                } else {
                    out.push_str(&num);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// A store connection: SQLite or PostgreSQL. Store functions take `&Connection`.
pub enum Connection {
    /// The embedded default.
    Sqlite(rusqlite::Connection),
    /// A shared PostgreSQL database.
    Pg(Box<PgConn>),
}

impl Connection {
    /// True on PostgreSQL (for the few statements whose text differs).
    pub fn is_pg(&self) -> bool {
        matches!(self, Connection::Pg(_))
    }

    /// ` AND project = ?{n}` on PostgreSQL, where every instance-keyed table carries its
    /// instance's project (the Citus distribution column, `docs/postgres.md`), so a query on one
    /// instance's rows names its tenant; empty on SQLite, whose tables have no such column.
    /// Pair it with [`Connection::scoped`]: the project is the statement's last parameter.
    pub fn project_filter(&self, n: usize) -> String {
        if self.is_pg() {
            format!(" AND project = ?{n}")
        } else {
            String::new()
        }
    }

    /// The parameters of a statement built with [`Connection::project_filter`], whose last one
    /// is the project: all of them on PostgreSQL, all but the last on SQLite.
    pub fn scoped<'p>(&self, params: &'p [&'p dyn Param]) -> &'p [&'p dyn Param] {
        match params.split_last() {
            Some((_, rest)) if !self.is_pg() => rest,
            _ => params,
        }
    }

    /// The two-argument maximum: SQLite's scalar `MAX`, PostgreSQL's `GREATEST`.
    pub fn greatest(&self) -> &'static str {
        if self.is_pg() { "GREATEST" } else { "MAX" }
    }

    /// Runs statements without parameters or results (`;`-separated).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Connection::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Connection::Pg(c) => {
                use std::sync::atomic::Ordering::Relaxed;
                if matches!(sql, "BEGIN" | "ROLLBACK") {
                    // Writes queued in a transaction being rolled back (or left over from
                    // one) are discarded, not sent.
                    if let Ok(mut p) = c.pending.lock() {
                        p.clear();
                    }
                    c.deferred_failed.store(false, Relaxed);
                }
                let res = c.run(c.client.batch_execute(sql));
                match sql {
                    "BEGIN" if res.is_ok() => c.in_tx.store(true, Relaxed),
                    "COMMIT" | "ROLLBACK" => c.in_tx.store(false, Relaxed),
                    _ => {}
                }
                res
            }
        }
    }

    /// Runs one write whose row count is not needed. On SQLite it runs now; on PostgreSQL,
    /// inside a transaction, it is queued and sent pipelined ahead of the next statement that
    /// needs an answer (or `COMMIT`), so a batch's writes share one round trip. A queued write
    /// that fails makes that later statement fail, and the writer rolls the whole transaction
    /// back ([`Self::take_deferred_failure`]).
    pub fn execute_later<P: Params>(&self, sql: &str, params: P) -> Result<()> {
        match self {
            Connection::Sqlite(_) => self.execute(sql, params).map(drop),
            Connection::Pg(c) => c.execute_later(sql, &params.values()?),
        }
    }

    /// True (once) when a write queued by [`Self::execute_later`] failed since the last call:
    /// the transaction is aborted and must be rolled back, not reported committed. Always
    /// false on SQLite.
    pub fn take_deferred_failure(&self) -> bool {
        match self {
            Connection::Sqlite(_) => false,
            Connection::Pg(c) => c.take_deferred_failure(),
        }
    }

    /// Runs one statement; returns the rows changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.values()?;
        match self {
            Connection::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values))?),
            Connection::Pg(c) => c.execute(sql, &values),
        }
    }

    /// The first row mapped by `f`; [`StoreError::NoRows`] when there is none.
    pub fn query_row<T, P: Params, F>(&self, sql: &str, params: P, f: F) -> Result<T>
    where
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    /// A statement (prepared and cached on first use).
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        match self {
            Connection::Sqlite(c) => Ok(Statement::Sqlite(c.prepare_cached(sql)?)),
            Connection::Pg(c) => Ok(Statement::Pg(c, sql.to_string())),
        }
    }

    /// Same as [`Self::prepare_cached`].
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        self.prepare_cached(sql)
    }
}

/// A statement of either backend.
pub enum Statement<'c> {
    /// SQLite's cached statement.
    Sqlite(rusqlite::CachedStatement<'c>),
    /// PostgreSQL: the connection and the SQL text (prepared and cached by the client).
    Pg(&'c PgConn, String),
}

impl Statement<'_> {
    /// Runs it; the rows changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        let values = params.values()?;
        match self {
            Statement::Sqlite(s) => Ok(s.execute(rusqlite::params_from_iter(values))?),
            Statement::Pg(c, sql) => c.execute(sql, &values),
        }
    }

    /// Every row mapped by `f`, in order.
    pub fn query_map<T, P: Params, F>(
        &mut self,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>>
    where
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        let values = params.values()?;
        let mut out = Vec::new();
        match self {
            Statement::Sqlite(s) => {
                let mut rows = s.query(rusqlite::params_from_iter(values))?;
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r)));
                }
            }
            Statement::Pg(c, sql) => {
                for r in c.query(sql, &values)? {
                    out.push(f(&Row::Pg(&r)));
                }
            }
        }
        Ok(out.into_iter())
    }

    /// The first row mapped by `f`; [`StoreError::NoRows`] when there is none.
    pub fn query_row<T, P: Params, F>(&mut self, params: P, f: F) -> Result<T>
    where
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        let values = params.values()?;
        match self {
            Statement::Sqlite(s) => {
                let mut rows = s.query(rusqlite::params_from_iter(values))?;
                match rows.next()? {
                    Some(r) => f(&Row::Sqlite(r)),
                    None => Err(StoreError::NoRows),
                }
            }
            Statement::Pg(c, sql) => match c.query(sql, &values)?.first() {
                Some(r) => f(&Row::Pg(r)),
                None => Err(StoreError::NoRows),
            },
        }
    }

    /// Visits every row in order (for loops that borrow from the row).
    pub fn for_each<P: Params, F>(&mut self, params: P, mut f: F) -> Result<()>
    where
        F: FnMut(&Row<'_>) -> Result<()>,
    {
        let values = params.values()?;
        match self {
            Statement::Sqlite(s) => {
                let mut rows = s.query(rusqlite::params_from_iter(values))?;
                while let Some(r) = rows.next()? {
                    f(&Row::Sqlite(r))?;
                }
            }
            Statement::Pg(c, sql) => {
                for r in c.query(sql, &values)? {
                    f(&Row::Pg(&r))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        let cases = [
            ("SELECT ?1, ?2", "SELECT $1, $2"),
            ("a = ? AND b = ?", "a = $1 AND b = $2"),
            ("x = '?1' AND y = ?10", "x = '?1' AND y = $10"),
            ("\"q?\" = ?3", "\"q?\" = $3"),
        ];
        for (sql, want) in cases {
            assert_eq!(translate_placeholders(sql), want, "{sql}");
        }
    }

    #[test]
    fn numeric_decodes_whole_and_fractional() {
        let mut b = BytesMut::new();
        for i in [0i64, 1, 9_999, 10_000, 123_456_789_012, -42, i64::MAX] {
            b.clear();
            encode_numeric_int(i, &mut b);
            assert_eq!(decode_numeric(&b), Ok(ValueRef::Int(i)), "{i}");
        }
        // 1.5 = digits [1, 5000], weight 0, dscale 1.
        let raw = [0u8, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert_eq!(decode_numeric(&raw), Ok(ValueRef::Real(1.5)));
    }
}
