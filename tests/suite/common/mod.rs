//! Helpers shared by the integration tests: a fresh PostgreSQL database per test, the
//! real application on port 0, and a small HTTP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod nats;

use parkade::api::wire;
use parkade::app::{Application, Hooks};
use parkade::log::{OsStorage, Storage, WritableFile};
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
    on_own_thread(async move {
        let pool = sqlx::PgPool::connect(&admin_url())
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (the test script starts it)");
        sqlx::query(&sql)
            .execute(&pool)
            .await
            .expect("admin statement");
        pool.close().await;
    })
    .join()
    .expect("admin SQL thread");
}

/// Run `work` to its end on a thread and runtime of its own, beside (and outliving) the
/// test's actix system.
pub fn on_own_thread<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(work)
    })
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
        self.projections().await.expect("projections").log_end
    }

    /// Wait until the occupancy projection has folded everything in the log.
    pub async fn wait_projection_caught_up(&self) {
        self.wait_caught_up("occupancy").await
    }

    /// Wait until projection `name` has everything in the log.
    pub async fn wait_caught_up(&self, name: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.projections().await.expect("projections");
            let caught_up = all
                .projections
                .iter()
                .any(|p| p.name == name && p.checkpoint == all.log_end && p.state == "running");
            if caught_up {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "projection {name} did not catch up: {all:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What an endpoint refused with: the status and the error body (a body that is not
/// our JSON error is kept as its message).
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: wire::ErrorBody,
}

/// An endpoint's typed reply.
pub type Reply<T> = Result<T, Refused>;

/// The typed client: one method per endpoint, sending and reading the wire types.
impl TestApp {
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: awc::ClientRequest,
        body: Option<String>,
    ) -> Reply<T> {
        let content_type = body.is_some().then_some("application/json");
        let (status, bytes) = send(req, content_type, body).await;
        if (200..300).contains(&status) {
            return Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("a {status} reply that does not fit its type ({e}): {bytes:?}")
            }));
        }
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| wire::ErrorBody::new("not_json", String::from_utf8_lossy(&bytes)));
        Err(Refused { status, body })
    }

    async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> Reply<T> {
        self.call(awc::Client::new().get(self.url(path)), None)
            .await
    }

    async fn post_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Reply<T> {
        let text = serde_json::to_string(body).expect("a request body");
        self.call(awc::Client::new().post(self.url(path)), Some(text))
            .await
    }

    /// `POST /v1/events` with one event.
    pub async fn send_event(&self, event: &wire::EventIn) -> Reply<wire::Ack> {
        self.post_as("/v1/events", event).await
    }

    /// `POST /v1/events` with an array of events.
    pub async fn send_events(&self, events: &[wire::EventIn]) -> Reply<wire::BatchReply> {
        self.post_as("/v1/events", &events).await
    }

    /// `POST /v1/lots`.
    pub async fn register_lot(&self, lot: &wire::RegisterIn) -> Reply<wire::Ack> {
        self.post_as("/v1/lots", lot).await
    }

    /// `GET /v1/lots`.
    pub async fn lots(&self) -> Reply<wire::LotList> {
        self.get_as("/v1/lots").await
    }

    /// `GET /v1/lots/{id}`.
    pub async fn lot(&self, id: &str) -> Reply<wire::Lot> {
        self.get_as(&format!("/v1/lots/{id}")).await
    }

    /// `PATCH /v1/lots/{id}`.
    pub async fn change_capacity(&self, id: &str, body: &wire::CapacityIn) -> Reply<wire::Ack> {
        let text = serde_json::to_string(body).expect("a request body");
        let req = awc::Client::new().patch(self.url(&format!("/v1/lots/{id}")));
        self.call(req, Some(text)).await
    }

    /// `POST /v1/lots/{id}/count`.
    pub async fn count(&self, id: &str, body: &wire::CountIn) -> Reply<wire::Ack> {
        self.post_as(&format!("/v1/lots/{id}/count"), body).await
    }

    /// `GET /v1/lots/{id}/history?{query}`.
    pub async fn history(&self, id: &str, query: &str) -> Reply<wire::History> {
        self.get_as(&format!("/v1/lots/{id}/history?{query}")).await
    }

    /// `GET /v1/lots/{id}/forecast`.
    pub async fn forecast(&self, id: &str) -> Reply<wire::Forecast> {
        self.get_as(&format!("/v1/lots/{id}/forecast")).await
    }

    /// `GET /v1/lots/{id}/timespan?{query}`.
    pub async fn timespan(&self, id: &str, query: &str) -> Reply<wire::Timespan> {
        self.get_as(&format!("/v1/lots/{id}/timespan?{query}"))
            .await
    }

    /// `GET /v1/lots/{id}/recent`.
    pub async fn recent(&self, id: &str) -> Reply<wire::Recent> {
        self.get_as(&format!("/v1/lots/{id}/recent")).await
    }

    /// `GET /v1/admin/projections`.
    pub async fn projections(&self) -> Reply<wire::Projections> {
        self.get_as("/v1/admin/projections").await
    }

    /// `POST /v1/admin/replay?projection={name}`.
    pub async fn replay(&self, name: &str) -> Reply<wire::Replayed> {
        let path = format!("/v1/admin/replay?projection={name}");
        self.post_as(&path, &serde_json::json!({})).await
    }

    /// `POST /v1/admin/known-events`.
    pub async fn known_events(&self, events: &[(String, String)]) -> Reply<wire::Known> {
        let body = wire::KnownEventsIn {
            events: events
                .iter()
                .map(|(lot, id)| wire::EventKey {
                    lot_id: lot.clone(),
                    event_id: id.clone(),
                })
                .collect(),
        };
        self.post_as("/v1/admin/known-events", &body).await
    }

    /// `GET /healthz`: the status (200 or 503) and the body, which both carry.
    pub async fn health(&self) -> (u16, wire::Health) {
        self.status_and::<wire::Health>("/healthz").await
    }

    /// `GET /readyz`: the status (200 or 503) and the body, which both carry.
    pub async fn ready(&self) -> (u16, wire::Ready) {
        self.status_and::<wire::Ready>("/readyz").await
    }

    /// A GET whose reply body has one type whatever the status.
    async fn status_and<T: serde::de::DeserializeOwned>(&self, path: &str) -> (u16, T) {
        let (status, bytes) = send(awc::Client::new().get(self.url(path)), None, None).await;
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{path}: a {status} reply not of its type ({e}): {bytes:?}")
        });
        (status, body)
    }
}

/// An event of `kind` (`ARRIVAL`, `DEPARTURE`, ...) at `lot`, stamped by the server.
pub fn event(lot: &str, kind: &str) -> wire::EventIn {
    wire::EventIn {
        lot_id: lot.into(),
        event_type: kind.into(),
        ..Default::default()
    }
}

/// A registration of lot `id` named "Lot {id}".
pub fn lot(id: &str, capacity: u32) -> wire::RegisterIn {
    wire::RegisterIn {
        lot_id: id.into(),
        name: format!("Lot {id}"),
        capacity,
        ..Default::default()
    }
}

/// Send `req` with `body` (as `content_type`); the status and the whole reply body.
async fn send(
    req: awc::ClientRequest,
    content_type: Option<&str>,
    body: Option<String>,
) -> (u16, actix_web::web::Bytes) {
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
    (status, bytes)
}

pub async fn request(
    req: awc::ClientRequest,
    content_type: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let (status, bytes) = send(req, content_type, body).await;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}

/// Register lot `id` named "Lot {id}" with `capacity`, expecting it accepted.
pub async fn register(app: &TestApp, id: &str, capacity: u32) {
    let ack = app.register_lot(&lot(id, capacity)).await;
    let ack = ack.unwrap_or_else(|e| panic!("registering {id}: {e:?}"));
    assert_eq!(ack.status, wire::AckStatus::Accepted);
}

/// One arrival at `lot`, expecting it accepted; its offset.
pub async fn arrive(app: &TestApp, lot: &str) -> u64 {
    let ack = app.send_event(&event(lot, "ARRIVAL")).await;
    ack.unwrap_or_else(|e| panic!("an arrival at {lot}: {e:?}"))
        .offset
}

/// Projection `name`'s line in a `/v1/admin/projections` reply (none before it has
/// reported for the first time).
pub fn projection_view<'a>(
    status: &'a wire::Projections,
    name: &str,
) -> Option<&'a wire::ProjectionView> {
    status.projections.iter().find(|p| p.name == name)
}

/// Projection `name`'s state and checkpoint on `app`.
pub async fn projection_state(app: &TestApp, name: &str) -> Result<(String, u64), String> {
    let all = app.projections().await.map_err(|e| format!("{e:?}"))?;
    let p = projection_view(&all, name).ok_or(format!("no {name} line"))?;
    Ok((p.state.clone(), p.checkpoint))
}

/// Wait until projection `name` on `app` stands by (another node holds its lease).
pub async fn wait_standby(app: &TestApp, name: &str) {
    eventually(
        Duration::from_secs(20),
        "the second node to stand by",
        || async {
            match projection_state(app, name).await? {
                (s, _) if s == "standby" => Ok(()),
                other => Err(format!("{name}: {other:?}")),
            }
        },
    )
    .await;
}

/// Projection `name`'s line in a `/v1/admin/projections` reply (null when absent).
pub fn projection(status: &Value, name: &str) -> Value {
    status["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_default()
}

/// The first reason `/readyz` gives for not being ready: (reason, projection).
pub fn first_reason(ready: &wire::Ready) -> Option<(&str, Option<&str>)> {
    let first = ready.reasons.as_ref()?.first()?;
    Some((first.reason.as_str(), first.projection.as_deref()))
}

/// A temporary data directory that is removed at the end of the test.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("parkade-test-")
        .tempdir()
        .expect("a temp dir")
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Wait until the server at `base` answers `GET /healthz` with 200 (a minute at most).
pub async fn wait_healthy(base: &str) {
    wait_ok(
        base,
        "/healthz",
        "the server to be healthy",
        Duration::from_secs(60),
    )
    .await
}

/// Wait until `GET {base}{path}` answers with a success, for up to `within`.
pub async fn wait_ok(base: &str, path: &str, what: &str, within: Duration) {
    eventually(within, what, || async {
        match awc::Client::new().get(format!("{base}{path}")).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// POST a JSON body (a client's 30 s deadline): the status and the JSON reply, `None`
/// when there was no answer (a server killed, a connection refused).
pub async fn post_json(
    base: &str,
    path: &str,
    body: &serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    let mut resp = awc::Client::new()
        .post(format!("{base}{path}"))
        .timeout(Duration::from_secs(30))
        .insert_header(("content-type", "application/json"))
        .send_body(body.to_string())
        .await
        .ok()?;
    let bytes = resp.body().limit(16 << 20).await.ok()?;
    Some((resp.status().as_u16(), serde_json::from_slice(&bytes).ok()?))
}

/// Run a command to its end: whether it succeeded, and its output and errors.
pub fn output(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
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
        on_own_thread(async move {
            {
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
            }
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

/// The one fault-injecting storage of the tests: a real disk whose syncs wait while
/// `hold` is set, whose writes fail as a full disk does (ENOSPC) while `full` is set,
/// and whose syncs fail while `failing_syncs` is set; it counts the syncs.
#[derive(Clone, Default)]
pub struct FaultyDisk {
    pub hold: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    pub full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub failing_syncs: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Syncs done.
    pub syncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Syncs begun (counted before a held sync waits).
    pub entered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultyDisk {
    /// Hold every sync from now on (`true`) or let them through (`false`).
    pub fn hold(&self, on: bool) {
        let (lock, cv) = &*self.hold;
        *lock.lock().unwrap() = on;
        cv.notify_all();
    }
}

struct FaultyFile(Box<dyn WritableFile>, FaultyDisk);

impl Storage for FaultyDisk {
    fn open_writable(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        Ok(Box::new(FaultyFile(
            OsStorage.open_writable(path)?,
            self.clone(),
        )))
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        OsStorage.sync_dir(dir)
    }
}

impl WritableFile for FaultyFile {
    fn write_all_at(&mut self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        if self.1.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.0.write_all_at(buf, pos)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        self.1.entered.fetch_add(1, Ordering::SeqCst);
        let (lock, cv) = &*self.1.hold;
        let mut held = lock.lock().unwrap();
        while *held {
            held = cv.wait(held).unwrap();
        }
        drop(held);
        if self.1.failing_syncs.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: the sync failed"));
        }
        self.1.syncs.fetch_add(1, Ordering::SeqCst);
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
}
