//! Defects found by hostile input and a review, each with the test that shows it fixed:
//! event times out of bounds on every path, names a database cannot store, replies that
//! showed state not yet durable, two rebuilds at once, errors that leaked internals, a
//! replay over an unreadable log, and a disk that fills up.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parkade::app::Hooks;
use parkade::domain::{Capacity, LotEvent, LotId, NewEvent, Timestamp};
use parkade::log::{EventLog, FileLog, LogOptions};
use serde_json::{json, Value};

use crate::common;
use common::{register, test_config, FaultyDisk, TestApp, TestDb};

#[actix_web::test]
async fn every_endpoint_that_creates_events_keeps_one_time_rule() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    register(&app, "north-1", 10).await;
    let end = app.log_end().await;
    let far = ["2100-01-01T00:00:00Z", "9999-12-31T23:59:59Z"];
    let early = ["1999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"];
    for ts in far.iter().chain(&early) {
        let cases: Vec<(&str, &str, Value)> = vec![
            (
                "POST",
                "/v1/lots/north-1/count",
                json!({"count": 3, "timestamp": ts}),
            ),
            (
                "PATCH",
                "/v1/lots/north-1",
                json!({"capacity": 20, "timestamp": ts}),
            ),
            (
                "POST",
                "/v1/lots",
                json!({"lot_id": "south", "name": "South", "capacity": 5, "timestamp": ts}),
            ),
            (
                "POST",
                "/v1/events",
                json!({"lot_id": "north-1", "event_type": "ARRIVAL", "timestamp": ts}),
            ),
            (
                "POST",
                "/v1/events",
                json!({"lot_id": "north-1", "event_type": "COUNT", "count": 2, "timestamp": ts}),
            ),
        ];
        for (method, path, body) in cases {
            let (status, reply) = match method {
                "PATCH" => app.patch(path, body.clone()).await,
                _ => app.post(path, body.clone()).await,
            };
            assert_eq!(status, 400, "{method} {path} {body} -> {reply}");
            assert_eq!(reply["field"], "timestamp", "{reply}");
            let message = reply["message"].as_str().unwrap();
            assert!(
                message.contains("ahead of the server clock") || message.contains("before 2000"),
                "{message}"
            );
        }
        // Epoch milliseconds too.
        let ms = chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .timestamp_millis();
        let (status, reply) = app
            .post(
                "/v1/lots/north-1/count",
                json!({"count": 3, "timestamp": ms}),
            )
            .await;
        assert_eq!(status, 400, "{ts} as {ms} -> {reply}");
    }
    // In a batch, the bad event is refused by name and the good one goes in.
    let (status, reply) = app
        .post(
            "/v1/events",
            json!([
                {"lot_id": "north-1", "event_type": "ARRIVAL", "timestamp": far[0]},
                {"lot_id": "north-1", "event_type": "ARRIVAL"}
            ]),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"][0]["field"], "timestamp", "{reply}");
    assert_eq!(reply["accepted"], 1, "{reply}");
    assert_eq!(
        app.log_end().await,
        end + 1,
        "only the valid event was appended"
    );
    // A timestamp a few minutes ahead (clock skew) is fine.
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let (status, reply) = app
        .post(
            "/v1/lots/north-1/count",
            json!({"count": 4, "timestamp": soon}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    app.stop().await;
}

#[actix_web::test]
async fn names_a_database_cannot_store_are_refused_on_every_path() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    for (name, why) in [
        ("a\u{0}b", "control characters"),
        ("line\nbreak", "control characters"),
        ("\u{1b}[31mred", "control characters"),
        (&*"n".repeat(201), "longer than 200"),
        ("   ", "empty"),
    ] {
        let (status, reply) = app
            .post(
                "/v1/lots",
                json!({"lot_id": "x", "name": name, "capacity": 5}),
            )
            .await;
        assert_eq!(status, 400, "{name:?} -> {reply}");
        assert_eq!(reply["field"], "name");
        assert!(reply["message"].as_str().unwrap().contains(why), "{reply}");
    }
    assert_eq!(app.log_end().await, 0, "nothing was appended");

    // Through the server, as `parkade import --url` sends it, and into a local log.
    let csv = dir.path().join("counts.csv");
    let long_code = format!("A{}B", " ".repeat(5000));
    std::fs::write(
        &csv,
        format!(
            "SystemCodeNumber,Capacity,Occupancy,LastUpdated\n\"{long_code}\",100,10,2016-10-04 07:59:42\n\"T\tAB\",100,10,2016-10-04 07:59:42\nGOOD,100,10,2016-10-04 07:59:42\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["import", "--url", &app.base])
        .arg(&csv)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("name"), "{text}");
    let lots = app.lots().await.unwrap().lots;
    let ids: Vec<&str> = lots.iter().map(|l| l.lot_id.as_str()).collect();
    assert_eq!(ids, vec!["good"], "{text}");
    app.stop().await;

    let local = common::data_dir();
    let out = std::process::Command::new(common::binary())
        .arg("import")
        .arg(&csv)
        .env("PARKADE_DATA_DIR", local.path())
        .env_remove("PARKADE_DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name"), "{text}");
    let log = FileLog::open(
        local.path().join("log"),
        LogOptions {
            mode: parkade::log::OpenMode::ReadOnly,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let events = log.cursor(0).next_batch(100).unwrap();
    assert!(
        events.iter().all(|e| e.event.lot_id.as_str() == "good"),
        "{events:?}"
    );
}

/// A log written before names were checked, holding a NUL in a name.
fn old_log_with_a_nul_name(dir: &Path) {
    let log = FileLog::open(dir.join("log"), LogOptions::default()).unwrap();
    let at = Timestamp::from_micros(1_764_234_000_000_000);
    let reg = |lot: &str, name: &str, seq: u64| NewEvent {
        lot_id: LotId::parse(lot).unwrap(),
        lot_seq: seq,
        event_id: uuid::Uuid::now_v7(),
        client_event_id: false,
        occurred_at: at,
        event: LotEvent::LotRegistered {
            name: name.into(),
            capacity: Capacity::new(10).unwrap(),
        },
        occupancy: 0,
        capacity: 10,
    };
    log.append_any(&[reg("fine", "Fine", 1), reg("bad", "a\u{0}b", 1)])
        .unwrap();
    log.close();
}

#[actix_web::test]
async fn a_projection_names_the_event_its_database_cannot_store() {
    let db = TestDb::new();
    let dir = common::data_dir();
    old_log_with_a_nul_name(dir.path());
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), Hooks::default()).await;
    let status = common::eventually(
        Duration::from_secs(20),
        "the occupancy projection to report the event",
        || async {
            let v = app.projections().await.expect("projections");
            match common::projection_view(&v, "occupancy") {
                Some(p) if p.state == "failing" => {
                    Ok((p.last_error.clone().unwrap_or_default(), p.checkpoint))
                }
                _ => Err(format!("{v:?}")),
            }
        },
    )
    .await;
    let (err, checkpoint) = status;
    assert!(
        err.contains("offset 1") && err.contains("lot bad") && err.contains("NUL"),
        "{err}"
    );
    assert_eq!(checkpoint, 0, "nothing was skipped");
    let (code, ready) = app.ready().await;
    assert_eq!(code, 503);
    assert_eq!(
        common::first_reason(&ready),
        Some(("projection_failing", Some("occupancy"))),
        "{ready:?}"
    );
    app.stop().await;
}

/// The service writing its log through `disk`.
async fn app_on(disk: &FaultyDisk) -> (tempfile::TempDir, TestApp) {
    let dir = common::data_dir();
    let hooks = Hooks {
        storage: Some(Arc::new(disk.clone())),
        ..Hooks::default()
    };
    let app = TestApp::spawn(test_config(dir.path(), None), hooks).await;
    (dir, app)
}

/// One arrival at `lot`, posted from a task of its own.
fn arrive_in_background(app: &TestApp, lot: &str) -> actix_web::rt::task::JoinHandle<(u16, Value)> {
    let url = app.url("/v1/events");
    let body = json!({"lot_id": lot, "event_type": "ARRIVAL"}).to_string();
    actix_web::rt::spawn(async move {
        common::request(
            awc::Client::new()
                .post(url)
                .timeout(Duration::from_secs(30)),
            Some("application/json"),
            Some(body),
        )
        .await
    })
}

#[actix_web::test]
async fn a_rejection_reports_only_state_that_is_durable() {
    let disk = FaultyDisk::default();
    let (_dir, app) = app_on(&disk).await;
    register(&app, "small", 1).await;
    disk.hold(true);
    let before = disk.entered.load(Ordering::SeqCst);
    // This arrival is appended but cannot become durable yet: the writer is inside the
    // sync that would make it so.
    let arrival = arrive_in_background(&app, "small");
    common::eventually(
        Duration::from_secs(10),
        "the arrival's sync to begin",
        || {
            let n = disk.entered.load(Ordering::SeqCst);
            async move {
                if n > before {
                    Ok(())
                } else {
                    Err(format!("{n} syncs begun"))
                }
            }
        },
    )
    .await;
    // The lot is now full in memory: a second arrival is refused, and its 409 must not
    // show the first arrival's offset before that is on disk.
    let refused = arrive_in_background(&app, "small");
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !refused.is_finished(),
        "a 409 was sent while the state it shows was not durable"
    );
    disk.hold(false);
    let (s1, first) = arrival.await.unwrap();
    let (s2, second) = refused.await.unwrap();
    assert_eq!(s1, 200, "{first}");
    assert_eq!(s2, 409, "{second}");
    assert_eq!(second["lot"]["offset"], first["offset"], "{second}");
    assert_eq!(second["lot"]["occupancy"], 1);
    app.stop().await;
}

#[actix_web::test]
async fn a_full_disk_answers_503_acknowledges_nothing_and_leaks_nothing() {
    let disk = FaultyDisk::default();
    let (dir, app) = app_on(&disk).await;
    register(&app, "north", 100).await;
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(common::arrive(&app, "north").await);
    }
    disk.full.store(true, Ordering::SeqCst);
    let (s, r) = app
        .post(
            "/v1/events",
            json!({"lot_id": "north", "event_type": "ARRIVAL"}),
        )
        .await;
    assert_eq!(s, 503, "{r}");
    let (s, batch) = app
        .post(
            "/v1/events",
            json!([{"lot_id": "north", "event_type": "ARRIVAL"}]),
        )
        .await;
    assert_eq!(s, 503, "{batch}");
    let (hs, health) = app.get("/healthz").await;
    let (rs, ready) = app.get("/readyz").await;
    assert_eq!((hs, rs), (503, 503));
    assert_eq!(health["reason"], "log_failed");
    // What clients see names no file and no OS error; the server's log has those.
    let dir_text = dir.path().to_str().unwrap();
    for body in [&r, &batch, &health, &ready] {
        let text = body.to_string();
        assert!(
            !text.contains(dir_text) && !text.contains("os error") && !text.contains(".seg"),
            "{text}"
        );
    }
    app.stop().await;

    // After a restart on a disk with room, every acknowledged event is there.
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    let lot = app.lot("north").await.unwrap();
    assert_eq!(lot.occupancy, 5, "{lot:?}");
    assert_eq!(lot.offset, acked.last().copied());
    app.stop().await;
}

/// Service manager messages received within `within`, one line each.
async fn pings(socket: &tokio::net::UnixDatagram, within: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        got.extend(text.lines().map(str::to_owned));
    }
    got
}

#[actix_web::test]
async fn a_log_that_refuses_writes_stops_the_watchdog_so_systemd_restarts_the_service() {
    let disk = FaultyDisk::default();
    let dir = common::data_dir();
    let path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    // As systemd sets them for a unit with Type=notify and WatchdogSec. SAFETY: the test
    // runner runs each test in a process of its own, and nothing else in this one reads
    // the environment while these are set, before the server starts.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "200000");
    }
    let hooks = Hooks {
        storage: Some(Arc::new(disk.clone())),
        ..Hooks::default()
    };
    let app = TestApp::spawn(test_config(dir.path(), None), hooks).await;
    register(&app, "north", 100).await;
    let healthy = pings(&socket, Duration::from_millis(600)).await;
    assert_eq!(
        healthy.first().map(String::as_str),
        Some("READY=1"),
        "{healthy:?}"
    );
    let watchdog = healthy.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        watchdog >= 3,
        "a ping every 100 ms while healthy: {healthy:?}"
    );

    disk.full.store(true, Ordering::SeqCst);
    let (s, _) = app
        .post(
            "/v1/events",
            json!({"lot_id": "north", "event_type": "ARRIVAL"}),
        )
        .await;
    assert_eq!(s, 503);
    pings(&socket, Duration::from_millis(150)).await; // one may have been on its way
    let failed = pings(&socket, Duration::from_millis(600)).await;
    assert!(
        !failed.iter().any(|m| m == "WATCHDOG=1"),
        "no ping once the log refuses writes: {failed:?}"
    );
    app.stop().await;
    let stopping = pings(&socket, Duration::from_millis(300)).await;
    assert_eq!(stopping, ["STOPPING=1"], "told once that it stops");
}

#[actix_web::test]
async fn a_second_rebuild_of_a_projection_is_refused_not_run_beside_the_first() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), Hooks::default()).await;
    register(&app, "north", 10).await;
    app.wait_projection_caught_up().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // A rebuild beside the server (`parkade replay`) holds the lock...
    let held = parkade::projections::db::lock_rebuild(
        &pool,
        parkade::projections::ProjectionName::Occupancy,
    )
    .await
    .unwrap();
    for name in ["occupancy"] {
        let (s, r) = app
            .post(&format!("/v1/admin/replay?projection={name}"), Value::Null)
            .await;
        assert_eq!(s, 409, "{r}");
        assert_eq!(r["error"], "replay_running", "{r}");
    }
    let out = std::process::Command::new(common::binary())
        .args(["replay", "--projection", "occupancy"])
        .env("PARKADE_DATA_DIR", dir.path())
        .env("PARKADE_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    held.release().await;
    // ...and once it is done, a rebuild runs and the read model is whole.
    let (s, r) = app
        .post("/v1/admin/replay?projection=occupancy", Value::Null)
        .await;
    assert_eq!(s, 200, "{r}");
    let rows = db.query("SELECT lot_id FROM current_lot_occupancy").await;
    assert_eq!(rows, vec![vec!["north".to_owned()]]);

    // Two rebuilds started together: one runs, the other is refused; never an empty
    // table with a complete checkpoint.
    let log: Arc<dyn EventLog> = Arc::new(
        FileLog::open(
            dir.path().join("log"),
            LogOptions {
                mode: parkade::log::OpenMode::ReadOnly,
                ..LogOptions::default()
            },
        )
        .unwrap(),
    );
    let (a, b) = tokio::join!(
        parkade::projections::occupancy::rebuild(&pool, log.clone(), |_, _| {}),
        parkade::projections::occupancy::rebuild(&pool, log.clone(), |_, _| {}),
    );
    let refused = [&a, &b]
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(parkade::projections::ProjectionError::RebuildRunning(_))
            )
        })
        .count();
    assert!(a.is_ok() || b.is_ok(), "{a:?} {b:?}");
    assert!(refused <= 1);
    let rows = db.query("SELECT lot_id FROM current_lot_occupancy").await;
    assert_eq!(rows, vec![vec!["north".to_owned()]]);
    app.stop().await;
}

#[actix_web::test]
async fn a_replay_over_an_unreadable_log_fails_and_keeps_the_current_archive() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    register(&app, "north", 100).await;
    for _ in 0..20 {
        common::arrive(&app, "north").await;
    }
    app.stop().await;
    let out = std::process::Command::new(common::binary())
        .args(["replay", "--projection", "archive"])
        .env("PARKADE_DATA_DIR", dir.path())
        .env_remove("PARKADE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lake = dir.path().join("archive");
    let current = std::fs::read_to_string(lake.join("_current")).unwrap();

    // Damage a record in the middle of the log.
    let seg = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[48 + 8 + 30] ^= 0x04; // inside the first record's payload
    std::fs::write(&seg, &bytes).unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["replay", "--projection", "archive"])
        .env("PARKADE_DATA_DIR", dir.path())
        .env_remove("PARKADE_DATABASE_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("damaged at byte 48"), "{err}");
    assert_eq!(
        std::fs::read_to_string(lake.join("_current")).unwrap(),
        current,
        "the current generation stays"
    );
    // The server refuses to start on it too, and says how to repair.
    let out = std::process::Command::new(common::binary())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("PARKADE_DATA_DIR", dir.path())
        .env_remove("PARKADE_DATABASE_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("parkade repair-log"), "{err}");
}

#[actix_web::test]
async fn a_trickled_body_times_out_and_others_are_served_meanwhile() {
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    config.limits.body_timeout_secs = 1;
    let app = TestApp::spawn(config, Hooks::default()).await;
    register(&app, "north", 10).await;
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    // A client that announces 100 bytes and sends 10, then nothing.
    let slow = actix_web::rt::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"lot_id\":",
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = std::time::Instant::now();
        let mut reply = vec![0u8; 4096];
        let n = s.read(&mut reply).unwrap_or(0);
        (
            String::from_utf8_lossy(&reply[..n]).to_string(),
            started.elapsed(),
        )
    });
    // Meanwhile another client is served.
    common::arrive(&app, "north").await;
    let (reply, took) = slow.await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "{reply}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    app.stop().await;
}

#[actix_web::test]
async fn registrations_stop_at_the_lot_limit_and_the_others_go_on() {
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    config.limits.max_lots = 2;
    let app = TestApp::spawn(config, Hooks::default()).await;
    register(&app, "a", 10).await;
    register(&app, "b", 10).await;
    let (s, r) = app
        .post(
            "/v1/lots",
            json!({"lot_id": "c", "name": "C", "capacity": 5}),
        )
        .await;
    assert_eq!(s, 409, "{r}");
    assert_eq!(r["error"], "lot_limit", "{r}");
    // The lots there are still served, and registering one of them again is fine.
    let (s, r) = app
        .post(
            "/v1/lots",
            json!({"lot_id": "a", "name": "Lot a", "capacity": 10}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    common::arrive(&app, "b").await;
    assert_eq!(
        app.log_end().await,
        3,
        "nothing appended for the refused lot"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_key_given_twice_and_a_lot_id_of_dots_are_refused_on_every_endpoint() {
    let dir = common::data_dir();
    let app = TestApp::spawn(common::test_config(dir.path(), None), Hooks::default()).await;
    common::register(&app, "north", 10).await;
    let end = app.log_end().await;
    let raw = |method: &'static str, path: &'static str, body: &'static str| {
        let req = awc::Client::new().request(method.parse().unwrap(), app.url(path));
        common::request(req, Some("application/json"), Some(body.into()))
    };
    for (method, path, body) in [
        (
            "POST",
            "/v1/lots",
            r#"{"lot_id": "east", "name": "East", "capacity": 5, "capacity": 500}"#,
        ),
        (
            "PATCH",
            "/v1/lots/north",
            r#"{"capacity": 20, "capacity": 2000}"#,
        ),
        (
            "POST",
            "/v1/lots/north/count",
            r#"{"count": 1, "count": 9}"#,
        ),
        (
            "POST",
            "/v1/events",
            r#"{"lot_id": "north", "lot_id": "south", "event_type": "ARRIVAL"}"#,
        ),
        (
            "POST",
            "/v1/admin/known-events",
            r#"{"events": [], "events": []}"#,
        ),
    ] {
        let (s, r) = raw(method, path, body).await;
        assert_eq!(s, 400, "{method} {path}: {r}");
        assert!(
            r["message"].as_str().unwrap().contains("duplicate"),
            "{method} {path}: {r}"
        );
    }
    for id in [".", ".."] {
        let (s, r) = app
            .post(
                "/v1/lots",
                json!({"lot_id": id, "name": "Dots", "capacity": 5}),
            )
            .await;
        assert_eq!(s, 400, "{id}: {r}");
        assert_eq!(r["field"], "lot_id", "{r}");
    }
    assert_eq!(app.log_end().await, end, "nothing was appended");
    app.stop().await;
}

/// A UTC offset can carry a time of year 0000 or 9999 past the years an RFC 3339 reply
/// can write (issue 26): such a time is refused where it comes in, by name, and no reply
/// shows a year outside 0000 to 9999.
#[actix_web::test]
async fn times_past_year_9999_or_before_year_0000_in_utc_are_refused_where_they_come_in() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    register(&app, "north", 10).await;
    let end = app.log_end().await;
    let past = ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+00:01"];
    let mut replies = Vec::new();
    for ts in past {
        let (status, body) = app
            .post(
                "/v1/events",
                json!({"lot_id": "north", "event_type": "ARRIVAL", "timestamp": ts}),
            )
            .await;
        assert_eq!(status, 400, "{ts}: {body}");
        replies.push(body);
    }
    for q in [
        "from=9999-12-31T22:00:00-23:59&to=9999-12-31T23:00:00-23:59&bucket=1h",
        "from=0000-01-01T00:00:00%2B00:30&to=0000-01-01T00:10:00Z&bucket=15m",
    ] {
        let (status, body) = app.get(&format!("/v1/lots/north/history?{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(
            ["from", "to"].contains(&body["field"].as_str().unwrap_or_default()),
            "{q}: {body}"
        );
        replies.push(body);
    }
    for body in &replies {
        let text = body.to_string();
        assert!(
            text.contains("outside years 0000 to 9999"),
            "not told why: {text}"
        );
        assert!(
            !text.contains("+10000") && !text.contains("-0001"),
            "a reply shows a year outside 0000 to 9999: {text}"
        );
    }
    assert_eq!(app.log_end().await, end, "nothing was appended");
}
