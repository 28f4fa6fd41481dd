//! Helpers shared by the integration tests: a fresh PostgreSQL database per test, the
//! real application on port 0, and a small HTTP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use parkade::app::{Application, Hooks};
use parkade::Config;
use serde_json::Value;

/// Server-level URL of the test PostgreSQL (the test script starts it if it is down).
pub fn admin_url() -> String {
    std::env::var("PARKADE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test and dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let name = format!("parkade_test_{}", uuid::Uuid::new_v4().simple());
        run_admin_sql(&format!("CREATE DATABASE {name}"));
        let admin = admin_url();
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin);
        TestDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Run SQL against this database and return the rows as text (psql-free: through sqlx).
    pub async fn query(&self, sql: &str) -> Vec<Vec<String>> {
        use sqlx::Row;
        let pool = sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to the test database");
        let rows = sqlx::query(sql).fetch_all(&pool).await.expect("query");
        let out = rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        r.try_get::<String, _>(i)
                            .or_else(|_| r.try_get::<i64, _>(i).map(|v| v.to_string()))
                            .or_else(|_| r.try_get::<i32, _>(i).map(|v| v.to_string()))
                            .or_else(|_| {
                                r.try_get::<chrono::DateTime<chrono::Utc>, _>(i)
                                    .map(|v| v.to_rfc3339())
                            })
                            .unwrap_or_else(|_| "?".into())
                    })
                    .collect()
            })
            .collect();
        pool.close().await;
        out
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        run_admin_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Run one statement on the server's admin database from a thread of its own (usable
/// from sync code and from `Drop`).
fn run_admin_sql(sql: &str) {
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&admin_url())
                .await
                .expect("PostgreSQL must run on 127.0.0.1:5432 (the test script starts it)");
            sqlx::query(&sql)
                .execute(&pool)
                .await
                .expect("admin statement");
            pool.close().await;
        })
    })
    .join()
    .expect("admin SQL thread");
}

/// A config for tests: port 0, a given data dir, maybe a database.
pub fn test_config(data_dir: &Path, db: Option<&TestDb>) -> Config {
    let mut c = Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        database_url: db.map(|d| d.url.clone()),
        http_workers: 2,
        ..Config::default()
    };
    c.limits.max_body_bytes = 64 * 1024;
    c.limits.max_batch_events = 500;
    c.projections.max_backoff_secs = 1;
    c.archive.roll_secs = 1;
    c
}

/// The application running inside the current actix system.
pub struct TestApp {
    pub base: String,
    pub lots: parkade::Lots,
    pub board: parkade::projections::StatusBoard,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn(config: Config, hooks: Hooks) -> TestApp {
        let app = Application::build(config, hooks)
            .await
            .expect("the application builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let lots = app.lots().clone();
        let board = app.board().clone();
        let handle = app.server_handle();
        let task = actix_web::rt::spawn(app.run_until_stopped());
        TestApp {
            base,
            lots,
            board,
            handle,
            task,
        }
    }

    /// Stop gracefully and wait until the log is closed.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.task.await.expect("run task").expect("clean stop");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        request(awc::Client::new().get(self.url(path)), None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let text = body.to_string();
        request(
            awc::Client::new().post(self.url(path)),
            Some("application/json"),
            Some(text),
        )
        .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: String,
    ) -> (u16, Value) {
        request(
            awc::Client::new().post(self.url(path)),
            content_type,
            Some(body),
        )
        .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        request(
            awc::Client::new().patch(self.url(path)),
            Some("application/json"),
            Some(body.to_string()),
        )
        .await
    }

    /// The durable end of the log, as `/readyz` or the projections endpoint reports it.
    pub async fn log_end(&self) -> u64 {
        let (_, v) = self.get("/v1/admin/projections").await;
        v["log_end"].as_u64().expect("log_end")
    }

    /// Wait until the occupancy projection has folded everything in the log.
    pub async fn wait_projection_caught_up(&self) {
        self.wait_caught_up("occupancy").await
    }

    /// Wait until projection `name` has everything in the log.
    pub async fn wait_caught_up(&self, name: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = self.get("/v1/admin/projections").await;
            let end = v["log_end"].as_u64().unwrap();
            let p = projection(&v, name);
            if p["checkpoint"].as_u64() == Some(end) && p["state"] == "running" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "projection did not catch up: {v}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn request(
    req: awc::ClientRequest,
    content_type: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let req = match content_type {
        Some(ct) => req.insert_header(("content-type", ct)),
        None => req,
    };
    let mut resp = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    }
    .expect("the request reaches the server");
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(64 << 20).await.expect("a body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}

/// Register lot `id` named "Lot {id}" with `capacity`, expecting 201.
pub async fn register(app: &TestApp, id: &str, capacity: i64) {
    let (status, body) = app
        .post(
            "/v1/lots",
            serde_json::json!({"lot_id": id, "name": format!("Lot {id}"), "capacity": capacity}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// One arrival at `lot`, expecting it accepted; its offset.
pub async fn arrive(app: &TestApp, lot: &str) -> u64 {
    let (status, r) = app
        .post(
            "/v1/events",
            serde_json::json!({"lot_id": lot, "event_type": "ARRIVAL"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    r["offset"].as_u64().expect("an offset")
}

/// Projection `name`'s line in a `/v1/admin/projections` reply (null when absent).
pub fn projection(status: &Value, name: &str) -> Value {
    status["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_default()
}

/// A temporary data directory that is removed at the end of the test.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("parkade-test-")
        .tempdir()
        .expect("a temp dir")
}

/// Path of the built `parkade` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_parkade"))
}

/// The Python with pyarrow that scripts/test.sh prepares (an independent Parquet reader).
pub fn python() -> String {
    std::env::var("PARKADE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Read a Parquet lake with pyarrow; returns its JSON description (see tests/py/read_lake.py).
pub fn read_lake(path: &Path) -> serde_json::Value {
    read_lake_at(&path.to_string_lossy())
}

/// Like [`read_lake`], for a local path or an `s3://bucket/key` location.
pub fn read_lake_at(path: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/read_lake.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(path)
        .output()
        .expect("run python (scripts/test.sh installs pyarrow into a virtualenv)");
    assert!(
        out.status.success(),
        "pyarrow could not read {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from read_lake.py")
}

/// The `offset` of every record of a lake read by [`read_lake`], in order.
pub fn lake_offsets(lake: &serde_json::Value) -> Vec<u64> {
    lake["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["offset"].as_u64().expect("an offset"))
        .collect()
}

/// The real Birmingham counts shipped in `data/birmingham/` (see `data/README.md`).
pub fn birmingham() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/birmingham/train.csv")
}

/// Run the parkade binary on a data directory (and database); exit code and output.
pub fn parkade(args: &[&str], dir: &Path, db: Option<&TestDb>) -> (i32, String) {
    let mut cmd = std::process::Command::new(binary());
    cmd.args(args)
        .env("PARKADE_DATA_DIR", dir)
        .env("RUST_LOG", "warn");
    match db {
        Some(db) => cmd.env("PARKADE_DATABASE_URL", &db.url),
        None => cmd.env_remove("PARKADE_DATABASE_URL"),
    };
    let out = cmd.output().expect("run parkade");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Ask `check` again every 20 ms until it gives `Ok`, and fail the test with `what` and
/// the last answer once `timeout` has passed. The one poll loop of the tests: every
/// wait has a deadline and says what it waited for.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out after {} s waiting for {what}; last seen: {last}",
                    timeout.as_secs_f64()
                );
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP forwarder in front of a real service (PostgreSQL, the S3 server) that a test
/// can take down and bring back: while down, open connections are cut and new ones are
/// closed at once, as when the service is stopped. The service itself is shared by
/// other tests running at the same time, so it is never stopped for real.
pub struct FaultProxy {
    pub addr: std::net::SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
}

impl FaultProxy {
    /// Forward a new local port to `target` (on its own thread and runtime, so it
    /// outlives the test's actix system tasks).
    pub fn start(target: std::net::SocketAddr) -> FaultProxy {
        use std::sync::atomic::Ordering;
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (d, c) = (down.clone(), cut.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if d.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let cut = c.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.notified() => {}
                        }
                    });
                }
            });
        });
        FaultProxy { addr, down, cut }
    }

    /// The service goes away: every open connection is cut, new ones are refused.
    pub fn down(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// The service is back.
    pub fn up(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
