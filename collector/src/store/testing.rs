//! Test stores on either backend: a SQLite store in a temp dir, or a fresh database of its own
//! in the PostgreSQL cluster named by `VMMON_TEST_PG_URL` (`scripts/test.sh` starts one).

use super::db::Connection;
use super::{AgentTokenRow, Store, StoreLocation};
use vmmon_common::wire::Inventory;

/// The backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in a temporary directory.
    Sqlite,
    /// A new database in the test PostgreSQL cluster.
    Pg,
}

/// A test store and what keeps it alive (the temp dir).
pub struct TestStore {
    /// The store.
    pub store: Store,
    /// Where it lives (to open it again).
    pub location: StoreLocation,
    /// Kept for its lifetime: the SQLite data directory.
    pub dir: tempfile::TempDir,
}

/// A URL for a new, empty database in the test cluster. Panics (the test fails) when
/// `VMMON_TEST_PG_URL` is unset: a plain `cargo test` skips the PostgreSQL tests (marked ignored).
pub async fn fresh_pg_url() -> String {
    let Ok(base) = std::env::var("VMMON_TEST_PG_URL") else {
        panic!(
            "VMMON_TEST_PG_URL is not set: run scripts/test.sh, which starts a PostgreSQL cluster"
        );
    };
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {base}: {e}"));
    let task = tokio::spawn(conn);
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    drop(client);
    let _ = task.await;
    let mut url = url::Url::parse(&base).unwrap_or_else(|e| panic!("bad VMMON_TEST_PG_URL: {e}"));
    url.set_path(&name);
    url.to_string()
}

/// The key of `instance_id` of `project`.
pub fn key<'a>(project: &'a str, instance_id: &'a str) -> super::InstanceKey<'a> {
    super::InstanceKey {
        project,
        instance_id,
    }
}

/// A live agent token `id` of `project` (region `r1`, party `x`, not a CDN edge).
pub fn token(id: i64, project: &str) -> AgentTokenRow {
    AgentTokenRow {
        id,
        project: project.into(),
        region: "r1".into(),
        party: "x".into(),
        created_at_ms: 0,
        revoked_at_ms: None,
        cdn_edge: false,
    }
}

/// A new database in the test cluster at schema `version`: the first `version` PostgreSQL
/// migrations applied and recorded, as a collector of that version left it. Its URL, a client
/// on it and the client connection's task (drop the client and await the task before opening
/// the store, which migrates it the rest of the way).
pub async fn pg_at_version(
    version: usize,
) -> (
    String,
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let url = fresh_pg_url().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let task = tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .await
        .unwrap_or_else(|e| panic!("schema_migrations: {e}"));
    for (i, sql) in super::pg::MIGRATIONS[..version].iter().enumerate() {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("migration {}: {e}", i + 1));
        let v = i as i64 + 1;
        client
            .execute("INSERT INTO schema_migrations VALUES ($1, 0)", &[&v])
            .await
            .unwrap_or_else(|e| panic!("record migration {v}: {e}"));
    }
    (url, client, task)
}

/// Registers `instance_id` for `project` (as agent token 1, region `r1`, a 1 s interval), what a
/// store test needs before storing the instance's samples.
pub fn register(conn: &Connection, instance_id: &str, project: &str) -> super::Result<()> {
    let token = token(1, project);
    super::instances::register(
        conn,
        instance_id,
        &token,
        &Inventory::default(),
        1,
        0,
        Default::default(),
    )
    .map(|_| ())
}

/// Opens an empty store on `backend`.
pub async fn open(backend: Backend) -> TestStore {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let location = match backend {
        Backend::Sqlite => StoreLocation::Sqlite(dir.path().to_path_buf()),
        Backend::Pg => StoreLocation::Postgres(fresh_pg_url().await),
    };
    let store = Store::open_location(&location)
        .await
        .unwrap_or_else(|e| panic!("cannot open {location}: {e}"));
    TestStore {
        store,
        location,
        dir,
    }
}

/// Runs each named `async fn NAME(backend: Backend)` as two tests: `sqlite::NAME` and
/// `pg::NAME` (ignored unless `--include-ignored`, as `scripts/test.sh` runs them).
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::store::testing::Backend::Sqlite).await
                }
            )+
        }
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL (scripts/test.sh starts a cluster)"]
                async fn $name() {
                    super::$name($crate::store::testing::Backend::Pg).await
                }
            )+
        }
    };
}
// Crate-local (not `#[macro_export]`, which would root it at the crate top, above the store).
pub(crate) use on_both_backends;
