//! `vmmon-collector store copy --from DIR --to postgres://…`: moves a SQLite store into an empty
//! PostgreSQL store in one transaction, table by table in insertion order, then proves the copy:
//! per table the row count and a checksum over every row's values (order-independent: the sum of
//! each row's SHA-256 prefix), computed on both sides. A mismatch rolls everything back.

use sha2::{Digest, Sha256};

use vmmon_common::vocab::DAY_MS;

use super::db::{Connection, Param, Value, ValueRef};
use super::{Result, Store, StoreError};

/// Tables other tables reference, in an order that satisfies every foreign key; `instances`
/// before the instance-keyed tables, whose rows take their project from it on PostgreSQL.
const PARENTS_FIRST: &[&str] = &[
    "users",
    "cdn_users",
    "hashmap_services",
    "hashmap_fields",
    "hashmap_groups",
    "instances",
];

/// One table's figures after the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    /// Table name.
    pub table: String,
    /// Rows in the SQLite source.
    pub source_rows: u64,
    /// Checksum of the source rows (hex).
    pub source_checksum: String,
    /// Rows in PostgreSQL after the copy.
    pub target_rows: u64,
    /// Checksum of the copied rows as PostgreSQL returns them (hex).
    pub target_checksum: String,
}

/// Folds one row into a checksum: its values as canonical text (type-tagged, so NULL, 1, 1.0 and
/// "1" all differ), hashed, summed.
fn add_row(sum: &mut u64, values: &[ValueRef<'_>]) {
    let mut h = Sha256::new();
    for v in values {
        match v {
            ValueRef::Null => h.update(b"N"),
            ValueRef::Int(i) => h.update(format!("i{i}").as_bytes()),
            ValueRef::Real(f) => h.update(format!("r{f:?}").as_bytes()),
            ValueRef::Text(t) => {
                h.update(b"t");
                h.update(t.as_bytes());
            }
            ValueRef::Blob(b) => {
                h.update(b"b");
                h.update(b);
            }
        }
        h.update(b"\x1f");
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    *sum = sum.wrapping_add(u64::from_be_bytes(first));
}

struct Owned(Value<'static>, Option<String>, Option<Vec<u8>>);

impl Param for Owned {
    fn value(&self) -> Result<Value<'_>> {
        Ok(match (&self.0, &self.1, &self.2) {
            (_, Some(t), _) => Value::Text(t),
            (_, _, Some(b)) => Value::Blob(b),
            (v, _, _) => *v,
        })
    }
}

fn owned(v: ValueRef<'_>) -> Owned {
    match v {
        ValueRef::Null => Owned(Value::Null, None, None),
        ValueRef::Int(i) => Owned(Value::Int(i), None, None),
        ValueRef::Real(f) => Owned(Value::Real(f), None, None),
        ValueRef::Text(t) => Owned(Value::Null, Some(t.to_string()), None),
        ValueRef::Blob(b) => Owned(Value::Null, None, Some(b.to_vec())),
    }
}

/// Copies the SQLite store in `from` (migrated first) into the empty PostgreSQL store `to`.
pub async fn sqlite_to_postgres(from: &std::path::Path, to: &Store) -> Result<Vec<TableCopy>> {
    if !to.is_postgres() {
        return Err(StoreError::Location(
            "the target must be a postgres:// store".into(),
        ));
    }
    let source = Store::open(from)?;
    let path = source
        .path()
        .ok_or_else(|| StoreError::Location("the source must be a SQLite store".into()))?
        .to_path_buf();
    drop(source);
    let src =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    to.write(move |dst| copy_all(&Connection::Sqlite(src), dst))
        .await
}

/// Newest days of samples whose partitions a copy makes (older ones wait in the default
/// partition until retention).
const COPY_PARTITION_DAYS: i64 = 62;

/// Whether the target's `table` has `column`.
fn has_column(dst: &Connection, table: &str, column: &str) -> Result<bool> {
    let n: i64 = dst.query_row(
        "SELECT COUNT(*) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = ?1 AND column_name = ?2",
        super::params![table, column],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

fn copy_all(src: &Connection, dst: &Connection) -> Result<Vec<TableCopy>> {
    let Connection::Sqlite(raw) = src else {
        return Err(StoreError::Location("the source must be SQLite".into()));
    };
    let mut tables: Vec<(String, bool)> = Vec::new();
    {
        let mut stmt = raw.prepare(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        for row in rows {
            let (name, sql) = row?;
            let without_rowid = sql.unwrap_or_default().contains("WITHOUT ROWID");
            tables.push((name, without_rowid));
        }
    }
    // Referenced tables first, so each foreign key finds its row.
    tables.sort_by_key(|(name, _)| {
        PARENTS_FIRST
            .iter()
            .position(|p| p == name)
            .unwrap_or(PARENTS_FIRST.len())
    });
    // The day partitions of the copied samples (the newest days, as the v4 migration does), so
    // they land in their days instead of the default partition.
    let days: Vec<i64> = {
        let mut stmt = raw.prepare(&format!(
            "SELECT DISTINCT sampled_at_ms - ((sampled_at_ms % {DAY_MS}) + {DAY_MS}) % {DAY_MS} AS d
             FROM vm_samples ORDER BY d DESC LIMIT {COPY_PARTITION_DAYS}"
        ))?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for day in days {
        super::partitions::ensure_day(dst, day)?;
    }
    let mut out = Vec::new();
    for (table, without_rowid) in tables {
        let existing: i64 = dst.query_row(
            &format!("SELECT COUNT(*) FROM {table}"),
            super::params![],
            |r| r.get(0),
        )?;
        if existing > 0 {
            return Err(StoreError::Location(format!(
                "the target's table {table} already has {existing} rows: copy only into an empty store"
            )));
        }
        let columns: Vec<String> = {
            let mut stmt = raw.prepare(&format!("PRAGMA table_info({table})"))?;
            let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
            names.collect::<rusqlite::Result<_>>()?
        };
        let cols = columns.join(", ");
        let mut marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        // PostgreSQL's instance-keyed tables carry the project (`InstanceKey`), SQLite's do not:
        // each row takes its instance's (copied before), '' for an instance no longer there.
        let mut target_cols = cols.clone();
        if let Some(k) = columns.iter().position(|c| c == "instance_id")
            && !columns.iter().any(|c| c == "project")
            && has_column(dst, &table, "project")?
        {
            target_cols.push_str(", project");
            marks.push(format!(
                "COALESCE((SELECT project FROM instances WHERE instance_id = ?{}), '')",
                k + 1
            ));
        }
        let insert = format!(
            "INSERT INTO {table} ({target_cols}) VALUES ({})",
            marks.join(", ")
        );
        let order = if without_rowid { "" } else { " ORDER BY rowid" };
        let mut read = raw.prepare(&format!("SELECT {cols} FROM {table}{order}"))?;
        let mut rows = read.query([])?;
        let (mut n, mut sum) = (0u64, 0u64);
        let mut stmt = dst.prepare_cached(&insert)?;
        while let Some(r) = rows.next()? {
            let row = super::db::Row::Sqlite(r);
            let mut vals = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                vals.push(row.get_ref(i)?);
            }
            add_row(&mut sum, &vals);
            let params: Vec<Owned> = vals.into_iter().map(owned).collect();
            let refs: Vec<&dyn Param> = params.iter().map(|p| p as &dyn Param).collect();
            stmt.execute(refs.as_slice())?;
            n += 1;
        }
        let identity: Option<String> = if columns.iter().any(|c| c == "id") {
            dst.query_row(
                "SELECT pg_get_serial_sequence(?1, 'id')",
                [table.as_str()],
                |r| r.get(0),
            )?
        } else {
            None
        };
        if let Some(seq) = identity {
            // Identity columns continue after the copied ids.
            dst.query_row(
                &format!("SELECT setval(CAST(?1 AS regclass), GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))"),
                [seq.as_str()],
                |r| r.get::<_, i64>(0),
            )?;
        }
        let (mut tn, mut tsum) = (0u64, 0u64);
        dst.prepare_cached(&format!("SELECT {cols} FROM {table}"))?
            .for_each(super::params![], |r| {
                let mut vals = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    vals.push(r.get_ref(i)?);
                }
                add_row(&mut tsum, &vals);
                tn += 1;
                Ok(())
            })?;
        let copy = TableCopy {
            table: table.clone(),
            source_rows: n,
            source_checksum: format!("{sum:016x}"),
            target_rows: tn,
            target_checksum: format!("{tsum:016x}"),
        };
        if copy.source_rows != copy.target_rows || copy.source_checksum != copy.target_checksum {
            return Err(StoreError::Corrupt(format!(
                "copy of {table} does not match: {copy:?}"
            )));
        }
        out.push(copy);
    }
    Ok(out)
}
