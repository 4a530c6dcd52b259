//! Helpers for end-to-end tests: start the real `vmmon-collector` and `vmmon-agent` binaries on
//! free ports and temp dirs, talk to them over real sockets, and wait on readiness.
//!
//! The binaries are the ones `cargo build --workspace` put next to this test binary; the README's
//! test command builds them first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use vmmon_common::vocab::now_ms;

/// Admin password every test collector starts with.
pub const ADMIN_PASSWORD: &str = "admin-test-pw";

/// Path of a workspace binary built next to the running test.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/it-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the tests (the README's test command does)",
        path.display()
    );
    path
}

/// Polls `cond` every 50 ms until it is true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` to a process without waiting for it.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: plain kill(2).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

fn kill(child: &mut Child, signal: i32) {
    // SAFETY: plain kill(2) on a child we own.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let _ = child.wait();
}

/// An address on 127.0.0.1 with a port that was free a moment ago (for a collector started later).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Writes a collector config file into a temp dir; keep the dir alive while the collector runs.
pub fn collector_config(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path)
}

/// Test scheduling: every collector a test starts holds a shared claim; a test that measures
/// CPU takes the exclusive claim, waiting for running tests to finish and keeping new ones out,
/// so parallel tests do not steal the cores it measures. (Hand-rolled so the claims are
/// Send + Sync and a thread may hold several shared claims without deadlocking.)
struct RunState {
    shared: usize,
    exclusive: bool,
    waiting_exclusive: usize,
}

static RUN_STATE: std::sync::Mutex<RunState> = std::sync::Mutex::new(RunState {
    shared: 0,
    exclusive: false,
    waiting_exclusive: 0,
});
static RUN_CV: std::sync::Condvar = std::sync::Condvar::new();

thread_local! {
    static EXCLUSIVE_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static SHARED_HERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn run_state() -> std::sync::MutexGuard<'static, RunState> {
    RUN_STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The exclusive claim of a CPU-measuring test.
pub struct Exclusive(());

impl Drop for Exclusive {
    fn drop(&mut self) {
        run_state().exclusive = false;
        EXCLUSIVE_HERE.with(|e| e.set(false));
        RUN_CV.notify_all();
    }
}

/// Waits until no other test runs a collector, then keeps them out until dropped.
pub fn exclusive() -> Exclusive {
    let mut st = run_state();
    st.waiting_exclusive += 1;
    while st.exclusive || st.shared > 0 {
        st = RUN_CV.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    st.waiting_exclusive -= 1;
    st.exclusive = true;
    EXCLUSIVE_HERE.with(|e| e.set(true));
    Exclusive(())
}

/// A shared claim, held by each [`Collector`].
struct SharedRun(());

impl Drop for SharedRun {
    fn drop(&mut self) {
        run_state().shared -= 1;
        SHARED_HERE.with(|n| n.set(n.get().saturating_sub(1)));
        RUN_CV.notify_all();
    }
}

fn shared_claim() -> Option<SharedRun> {
    if EXCLUSIVE_HERE.with(|e| e.get()) {
        return None;
    }
    let reentrant = SHARED_HERE.with(|n| n.get() > 0);
    let mut st = run_state();
    while st.exclusive || (st.waiting_exclusive > 0 && !reentrant) {
        st = RUN_CV.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    st.shared += 1;
    SHARED_HERE.with(|n| n.set(n.get() + 1));
    Some(SharedRun(()))
}

/// The store backend the collectors of this test run use: PostgreSQL when `VMMON_TEST_STORE` is
/// `postgres` (`scripts/test.sh` runs the store-touching suites once more that way, against the
/// cluster in `VMMON_TEST_PG_URL`), else SQLite in each collector's data directory.
pub fn test_store_is_postgres() -> bool {
    std::env::var("VMMON_TEST_STORE").as_deref() == Ok("postgres")
}

/// Runs `f` on a thread of its own, so the PostgreSQL helpers (which block on a runtime of their
/// own) work from async tests too (a runtime cannot be started inside another one).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn pg_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pg_connect(
    rt: &tokio::runtime::Runtime,
    url: &str,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (client, task)
    })
}

/// A new empty database in the test PostgreSQL cluster (`VMMON_TEST_PG_URL`); its URL.
pub fn fresh_pg_database() -> String {
    let base = std::env::var("VMMON_TEST_PG_URL")
        .expect("VMMON_TEST_PG_URL is not set: run scripts/test.sh, which starts a cluster");
    let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    off_runtime(|| {
        let rt = pg_runtime();
        let (client, _task) = pg_connect(&rt, &base);
        rt.block_on(client.batch_execute(&format!("CREATE DATABASE {name}")))
            .unwrap();
    });
    match base.rfind('/') {
        Some(i) if base[..i].contains("//") && i > base.find("//").unwrap() + 1 => {
            format!("{}/{name}", &base[..i])
        }
        _ => panic!("VMMON_TEST_PG_URL needs a database path: {base}"),
    }
}

/// Runs a read-only query on a PostgreSQL store: SQLite's `?N` placeholders become `$N`, each
/// parameter an integer or text; the first column of each row as i64.
fn pg_query_i64(url: &str, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Vec<i64> {
    pg_run(url, sql, params, true)
}

fn pg_run(url: &str, sql: &str, params: &[&dyn rusqlite::ToSql], select: bool) -> Vec<i64> {
    use rusqlite::types::{ToSqlOutput, Value as V, ValueRef as R};
    let mut text = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' {
            text.push('$');
            if !chars.peek().is_some_and(char::is_ascii_digit) {
                panic!("use numbered placeholders (?1) in {sql}");
            }
        } else {
            text.push(c);
        }
    }
    let owned: Vec<Box<dyn tokio_postgres::types::ToSql + Sync>> = params
        .iter()
        .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync> {
            match p.to_sql().unwrap() {
                ToSqlOutput::Borrowed(R::Integer(i)) | ToSqlOutput::Owned(V::Integer(i)) => {
                    Box::new(i)
                }
                ToSqlOutput::Borrowed(R::Text(t)) => {
                    Box::new(String::from_utf8_lossy(t).into_owned())
                }
                ToSqlOutput::Owned(V::Text(t)) => Box::new(t),
                other => panic!("unsupported test parameter {other:?}"),
            }
        })
        .collect();
    off_runtime(|| pg_run_blocking(url, sql, text, &owned, select))
}

fn pg_run_blocking(
    url: &str,
    sql: &str,
    text: String,
    owned: &[Box<dyn tokio_postgres::types::ToSql + Sync>],
    select: bool,
) -> Vec<i64> {
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        owned.iter().map(|b| b.as_ref()).collect();
    let rt = pg_runtime();
    let (client, _task) = pg_connect(&rt, url);
    if !select {
        rt.block_on(client.execute(&text, &refs))
            .unwrap_or_else(|e| panic!("{text}: {e:?}"));
        return Vec::new();
    }
    // Sums are numeric on PostgreSQL: read the first column as bigint.
    let text = format!("SELECT CAST(q.c AS BIGINT) FROM ({text}) AS q(c)");
    let rows = rt
        .block_on(client.query(&text, &refs))
        .unwrap_or_else(|e| panic!("{text}: {e:?}"));
    rows.iter()
        .map(|r| {
            r.try_get::<_, i64>(0)
                .or_else(|_| r.try_get::<_, i32>(0).map(i64::from))
                .unwrap_or_else(|e| panic!("{sql}: column 0 is not an integer: {e}"))
        })
        .collect()
}

/// A running collector with its own data directory.
pub struct Collector {
    /// Data directory (kept across restarts).
    pub data: tempfile::TempDir,
    /// The PostgreSQL URL of its store, when the run uses PostgreSQL (see
    /// [`test_store_is_postgres`]).
    pub store_url: Option<String>,
    _run: Option<SharedRun>,
    /// Bound address.
    pub addr: SocketAddr,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Collector {
    /// Starts a collector on a free port.
    pub fn start() -> Collector {
        Self::start_with(&[])
    }

    /// Starts a collector with extra `serve` arguments (e.g. `--config FILE`).
    pub fn start_with(extra: &[&str]) -> Collector {
        Self::start_on("127.0.0.1:0", extra)
    }

    /// Starts a collector on `listen` (e.g. an address from [`free_addr`]).
    pub fn start_on(listen: &str, extra: &[&str]) -> Collector {
        let store_url = test_store_is_postgres().then(fresh_pg_database);
        Self::start_on_store(listen, extra, store_url)
    }

    /// Starts a collector on `listen` with its store at `store_url` (PostgreSQL; several
    /// collectors may share one) or, when None, SQLite in its data directory.
    pub fn start_on_store(listen: &str, extra: &[&str], store_url: Option<String>) -> Collector {
        let run = shared_claim();
        let data = tempfile::tempdir().unwrap();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(url) = &store_url {
            extra.extend(["--store".to_string(), url.clone()]);
        }
        let (child, addr) = spawn_collector(data.path(), listen, &extra);
        Collector {
            data,
            store_url,
            _run: run,
            addr,
            child: Some(child),
            extra,
        }
    }

    /// A second collector on a free port whose store starts as a snapshot of this one's (same
    /// users, tokens, instances), for failover tests: the agent's token is valid on both. On a
    /// PostgreSQL run it shares this collector's store instead (many collectors, one database).
    pub fn start_sibling(&self) -> Collector {
        let run = shared_claim();
        let data = tempfile::tempdir().unwrap();
        if self.store_url.is_some() {
            // `extra` already names the shared store (--store).
            let (child, addr) = spawn_collector(data.path(), "127.0.0.1:0", &self.extra);
            return Collector {
                data,
                store_url: self.store_url.clone(),
                _run: run,
                addr,
                child: Some(child),
                extra: self.extra.clone(),
            };
        }
        let conn = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute(
            "VACUUM INTO ?1",
            [data.path().join("vmmon.sqlite3").display().to_string()],
        )
        .unwrap();
        drop(conn);
        let (child, addr) = spawn_collector(data.path(), "127.0.0.1:0", &self.extra);
        Collector {
            data,
            store_url: None,
            _run: run,
            addr,
            child: Some(child),
            extra: self.extra.clone(),
        }
    }

    /// The SQLite file, for tests that check what was stored (SQLite runs only; see
    /// [`Self::query_i64`] for checks on either backend).
    pub fn db_path(&self) -> PathBuf {
        self.data.path().join("vmmon.sqlite3")
    }

    /// Runs one read-only query on the store and returns the first column of each row as i64.
    pub fn query_i64(&self, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Vec<i64> {
        if let Some(url) = &self.store_url {
            return pg_query_i64(url, sql, params);
        }
        let conn = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map(params, |r| r.get::<_, i64>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Runs one write statement on the store (either backend), e.g. to set up a state.
    pub fn execute_sql(&self, sql: &str, params: &[&dyn rusqlite::ToSql]) {
        if let Some(url) = &self.store_url {
            pg_run(url, sql, params, false);
            return;
        }
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute(sql, params).unwrap();
    }

    /// The agent batch sequence numbers stored for `instance`, ascending (a number stored twice
    /// appears twice).
    pub fn batch_seqs(&self, instance: &str) -> Vec<u64> {
        self.query_i64(
            "SELECT seq FROM batches WHERE instance_id = ?1 ORDER BY seq",
            &[&instance],
        )
        .into_iter()
        .map(|s| u64::try_from(s).unwrap())
        .collect()
    }

    /// The collector's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the collector process we started is still running (not exited, not re-executed
    /// into a child we do not know).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Status of GET /healthz.
    pub fn healthz(&self) -> u16 {
        self.get("/healthz", &[]).0
    }

    /// SIGKILLs the collector (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, libc::SIGKILL);
        }
    }

    /// Starts it again on the same address and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.to_string();
        let (child, addr) = wait_for(
            Duration::from_secs(20),
            "collector restart on the same port",
            || {
                std::panic::catch_unwind(|| spawn_collector(self.data.path(), &listen, &self.extra))
                    .ok()
            },
        );
        self.addr = addr;
        self.child = Some(child);
    }

    /// `http://addr` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The agents' endpoint.
    pub fn rpc_url(&self) -> String {
        format!("ws://{}/rpc", self.addr)
    }

    /// Runs a `vmmon-collector` admin subcommand against this data dir; returns stdout.
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = Command::new(bin_path("vmmon-collector"));
        match &self.store_url {
            Some(url) => cmd.args(args).arg("--store").arg(url),
            None => cmd.args(args).arg("--data").arg(self.data.path()),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "collector {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates an agent token (`token create`) and returns it; `cdn` makes a CDN edge token.
    pub fn token(
        &self,
        project: &str,
        region: &str,
        party: &str,
        cdn_users: Option<&[&str]>,
    ) -> String {
        let mut args = vec![
            "token",
            "create",
            "--project",
            project,
            "--region",
            region,
            "--party",
            party,
        ];
        if let Some(users) = cdn_users {
            args.push("--cdn");
            for u in users {
                args.extend(["--cdn-user", u]);
            }
        }
        self.cli(&args, &[])
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    }

    /// Creates an agent token for `project`/`region` (party "acme").
    pub fn create_token(&self, project: &str, region: &str) -> String {
        self.token(project, region, "acme", None)
    }

    /// Creates a CDN edge agent token that may report the domains of `cdn_users`.
    pub fn create_cdn_token(&self, project: &str, region: &str, cdn_users: &[&str]) -> String {
        self.token(project, region, "acme", Some(cdn_users))
    }

    /// Adds a tenant user of `project` (password `name` + "-pw").
    pub fn add_tenant(&self, name: &str, project: &str) -> String {
        let pw = format!("{name}-password");
        self.cli(
            &["user", "add", "--name", name, "--project", project],
            &[("VMMON_PASSWORD", &pw)],
        );
        pw
    }

    /// Logs in; returns the session id.
    pub fn login(&self, user: &str, password: &str) -> String {
        let r = self
            .legacy(&json!({"method": 458753, "data": {"user_name": user, "password": password}}));
        assert_eq!(r["status_code"], 1, "login failed: {r}");
        r["session_id"].as_str().unwrap().to_string()
    }

    /// Logs in as the admin.
    pub fn admin_session(&self) -> String {
        self.login("admin", ADMIN_PASSWORD)
    }

    /// POSTs a raw body to /wsgi_app.py; returns the JSON answer (the API always answers 200).
    pub fn legacy_raw(&self, body: &str) -> Value {
        let resp = ureq::post(&self.url("/wsgi_app.py"))
            .set("Content-Type", "application/json")
            .send_string(body)
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_json().unwrap()
    }

    /// POSTs a JSON request to /wsgi_app.py.
    pub fn legacy(&self, req: &Value) -> Value {
        self.legacy_raw(&req.to_string())
    }

    /// GET with headers; returns (status, JSON body).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = ureq::get(&self.url(path));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {path}: {e}"),
        };
        let status = resp.status();
        let body = resp.into_string().unwrap();
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_collector(data: &Path, listen: &str, extra: &[String]) -> (Child, SocketAddr) {
    let mut child = Command::new(bin_path("vmmon-collector"))
        .args(["serve", "--listen", listen, "--data"])
        .arg(data)
        .args(extra)
        .env("VMMON_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("VMMON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("vmmon-collector listening on ") {
                    break rest.trim().parse::<SocketAddr>().unwrap();
                }
            }
            _ => {
                let status = child.wait();
                panic!("collector exited before listening: {status:?}");
            }
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// A running agent.
pub struct Agent {
    /// State directory (kept across restarts).
    pub state: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Starts an agent reporting to `collector` as `instance_id` every `interval_secs`.
    pub fn start(
        collector: &Collector,
        token: &str,
        instance_id: &str,
        interval_secs: u32,
        extra: &[&str],
    ) -> Agent {
        let mut agent = Self::prepare(
            &collector.rpc_url(),
            token,
            instance_id,
            interval_secs,
            extra,
        );
        agent.spawn();
        agent
    }

    /// An agent that is not started yet (to prepare its state dir, or to point it at a collector
    /// that is not up).
    pub fn prepare(
        rpc_url: &str,
        token: &str,
        instance_id: &str,
        interval_secs: u32,
        extra: &[&str],
    ) -> Agent {
        let state = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "--collector".into(),
            rpc_url.into(),
            "--token".into(),
            token.into(),
            "--instance-id".into(),
            instance_id.into(),
            "--interval".into(),
            interval_secs.to_string(),
            "--state-dir".into(),
            state.path().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Agent {
            state,
            child: None,
            args,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the next spawn.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Replaces the command-line arguments for the next spawn.
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Starts the process (its stderr goes to [`Agent::log`]).
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bin_path("vmmon-agent"))
            .args(&self.args)
            .env(
                "VMMON_LOG",
                std::env::var("VMMON_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.state.path().join("agent.log")
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Batches waiting in the spool (as the agent would resume them).
    pub fn spooled(&self) -> usize {
        self.spooled_seqs().len()
    }

    /// Sequence numbers of the batches waiting in the spool, ascending.
    pub fn spooled_seqs(&self) -> Vec<u64> {
        // An error must not read as an empty (drained) spool.
        vmmon_agent::spool::read_spooled(self.state.path())
            .expect("cannot read the agent's spool")
            .into_iter()
            .map(|b| b.seq)
            .collect()
    }

    /// The agent's persisted state (`agent-state.slots`, read as the agent resumes it) as JSON
    /// (null before the agent wrote it).
    pub fn state_file(&self) -> Value {
        vmmon_agent::spool::read_state(self.state.path())
            .ok()
            .flatten()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null)
    }

    /// SIGKILLs the agent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, libc::SIGKILL);
        }
    }

    /// Starts it again on the same state directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The agent's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process that is killed when dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill(&mut self.0, libc::SIGKILL);
    }
}

/// Starts `vmmon-test-load NAME burn`: one core busy under the process name `name` (≤ 15 chars).
pub fn spawn_burner(name: &str) -> ChildGuard {
    spawn_load(&[name, "burn"])
}

/// Starts `vmmon-test-load NAME write MB DIR`: writes `mb` MB with fsync over ~mb/10 seconds.
pub fn spawn_writer(name: &str, dir: &Path, mb: u32) -> ChildGuard {
    spawn_load(&[name, "write", &mb.to_string(), &dir.display().to_string()])
}

/// Starts `vmmon-test-load NAME write MB DIR` waiting for the returned stdin to say go (write a
/// line), so that a test can let the agent see the process before it writes.
pub fn spawn_writer_on_go(
    name: &str,
    dir: &Path,
    mb: u32,
) -> (ChildGuard, std::process::ChildStdin) {
    let mut child = Command::new(bin_path("vmmon-test-load"))
        .args([name, "write", &mb.to_string(), &dir.display().to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (ChildGuard(child), stdin)
}

/// `create_date` of an API record (`YYYY-MM-DDTHH:MM:SS.ffffff`, local time at UTC+`offset_secs`)
/// as epoch seconds.
pub fn create_date_secs(create_date: &str, offset_secs: i32) -> f64 {
    let t = chrono::NaiveDateTime::parse_from_str(create_date, "%Y-%m-%dT%H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("create_date {create_date:?}: {e}"));
    (t.and_utc().timestamp_micros() - i64::from(offset_secs) * 1_000_000) as f64 / 1e6
}

/// Bytes a series of records (oldest first, collector in UTC) stands for: each record's rate
/// (KB/s) times the time since the record before it (the interval its rate covers). The first
/// record has no predecessor and is left out.
pub fn bytes_of(records: &[Value], field: &str) -> f64 {
    records
        .windows(2)
        .map(|w| {
            let at = |r: &Value| create_date_secs(r["create_date"].as_str().unwrap(), 0);
            w[1][field].as_f64().unwrap() * 1024.0 * (at(&w[1]) - at(&w[0]))
        })
        .sum()
}

/// Starts `vmmon-test-load NAME idle`.
pub fn spawn_idle(name: &str) -> ChildGuard {
    spawn_load(&[name, "idle"])
}

fn spawn_load(args: &[&str]) -> ChildGuard {
    let child = Command::new(bin_path("vmmon-test-load"))
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// A client that speaks the agents' real protocol: a jsonrpsee WebSocket to `rpc_url`
/// authenticated with `token` (use `vmmon_common::rpc::MonitorApiClient` on it).
pub async fn agent_client(rpc_url: &str, token: &str) -> jsonrpsee::ws_client::WsClient {
    use jsonrpsee::ws_client::{HeaderMap, HeaderValue, WsClientBuilder};
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    WsClientBuilder::default()
        .set_headers(h)
        .build(rpc_url)
        .await
        .unwrap()
}

/// A registration request for `instance_id` with an empty inventory.
pub fn register_request(
    instance_id: &str,
    interval_secs: u32,
) -> vmmon_common::wire::RegisterRequest {
    vmmon_common::test_support::register_request(instance_id, interval_secs, Default::default())
}

/// A date: (year, month, day).
pub type Ymd = (i32, u8, u8);

/// A test certificate authority (rcgen), for TLS tests.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM (what an agent's `--ca-file` or `curl --cacert` takes).
    pub pem: String,
}

/// A server certificate and its key, PEM, with the agents' pin of its key.
#[derive(Clone)]
pub struct Leaf {
    /// Certificate chain (the leaf only).
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
    /// base64 SHA-256 of the key's SubjectPublicKeyInfo.
    pub pin: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for `names` (DNS names or IPs), valid now.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_valid(names, None)
    }

    /// A server certificate for `names`, valid from/to the given (year, month, day) when given.
    pub fn leaf_valid(&self, names: &[&str], validity: Option<(Ymd, Ymd)>) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        use base64::Engine;
        use sha2::Digest;
        let pin = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
            rcgen::PublicKeyData::subject_public_key_info(&key),
        ));
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            pin,
        }
    }
}

fn write_cert_files(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
}

/// A collector serving HTTPS/WSS from certificate files it re-reads on SIGHUP.
pub struct TlsCollector {
    /// The collector.
    pub collector: Collector,
    /// Holds the config and certificate files.
    pub dir: tempfile::TempDir,
}

impl TlsCollector {
    /// Starts a collector serving `leaf`.
    pub fn start(leaf: &Leaf) -> TlsCollector {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
                dir.path().join("cert.pem"),
                dir.path().join("key.pem")
            ),
        )
        .unwrap();
        write_cert_files(dir.path(), leaf);
        let collector = Collector::start_with(&["--config", &config.display().to_string()]);
        TlsCollector { collector, dir }
    }

    /// Writes `leaf` over the certificate files (the collector serves it after a SIGHUP).
    pub fn write_cert(&self, leaf: &Leaf) {
        write_cert_files(self.dir.path(), leaf);
    }

    /// Writes `leaf` and sends SIGHUP.
    pub fn reload_cert(&self, leaf: &Leaf) {
        self.write_cert(leaf);
        signal(self.collector.pid().unwrap(), libc::SIGHUP);
    }

    /// `wss://127.0.0.1:PORT/rpc`.
    pub fn wss_url(&self) -> String {
        format!("wss://127.0.0.1:{}/rpc", self.collector.addr.port())
    }

    /// `https://127.0.0.1:PORT` + path.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{}", self.collector.addr.port(), path)
    }

    /// GET `path` over TLS trusting only `ca_pem`; returns the status and body, or the TLS or
    /// I/O error (a rustls client, so the test does not depend on curl).
    pub fn https_get(&self, ca_pem: &str, path: &str) -> Result<(u16, String), String> {
        use rustls::pki_types::pem::PemObject;
        use std::io::{Read, Write};
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(|e| e.to_string())?;
        let sock = std::net::TcpStream::connect(self.collector.addr).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        match tls.read_to_end(&mut out) {
            Ok(_) => {}
            // The server may close without close_notify after the answer.
            Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e.to_string()),
        }
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }
}
