//! The PostgreSQL occupancy projection: a crash between write and commit, replay from
//! offset zero, and `verify` (through the real binary).

use std::process::Command;

use parkade::app::Hooks;
use parkade::projections::FaultPoint;
use serde_json::json;

use crate::common;
use common::{test_config, TestApp, TestDb};

const TABLE: &str = "SELECT lot_id, name, capacity::bigint, occupancy::bigint, updated_at, last_offset FROM current_lot_occupancy ORDER BY lot_id";

/// A varied history: registrations, arrivals, departures, counts, a capacity change.
async fn traffic(app: &TestApp, round: usize) {
    for (lot, cap) in [("east", 50), ("west", 8), ("visitor", 3)] {
        let _ = app
            .post(
                "/v1/lots",
                json!({"lot_id": lot, "name": format!("{lot} lot"), "capacity": cap}),
            )
            .await;
    }
    let mut batch = Vec::new();
    for i in 0..60 {
        let lot = ["east", "west", "visitor"][i % 3];
        let kind = if (i + round) % 4 == 3 {
            "DEPARTURE"
        } else {
            "ARRIVAL"
        };
        batch.push(json!({"lot_id": lot, "event_type": kind, "timestamp": 1_764_234_000_000i64 + (round * 100 + i) as i64 * 1000}));
    }
    let (status, _) = app.post("/v1/events", json!(batch)).await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post("/v1/lots/west/count", json!({"count": 2 + round % 3}))
        .await;
    assert_eq!(status, 200);
}

fn cli(args: &[&str], dir: &std::path::Path, db: &TestDb) -> (i32, String) {
    let out = Command::new(common::binary())
        .args(args)
        .env("PARKADE_DATA_DIR", dir)
        .env("PARKADE_DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run parkade");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[actix_web::test]
async fn a_crash_between_write_and_commit_neither_double_counts_nor_skips() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let fault = FaultPoint::default();
    let hooks = Hooks {
        projection_fault: fault.clone(),
        ..Hooks::default()
    };
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), hooks).await;
    traffic(&app, 0).await;
    app.wait_projection_caught_up().await;
    let before = db.query(TABLE).await;
    let cp_before = db
        .query("SELECT next_offset FROM projection_checkpoints WHERE projection = 'occupancy'")
        .await;

    fault.fail_next(u32::MAX);
    traffic(&app, 1).await;
    // The projection now fails every batch after writing its rows, before COMMIT.
    common::eventually(
        std::time::Duration::from_secs(10),
        "the injected fault to fire twice",
        || async {
            if app.board.all().iter().any(|s| s.failures >= 2) {
                Ok(())
            } else {
                Err(format!("{:?}", app.board.all()))
            }
        },
    )
    .await;
    let (status, ready) = app.ready().await;
    assert_eq!(status, 503, "readyz while the projection fails: {ready:?}");
    assert_eq!(
        common::first_reason(&ready),
        Some(("projection_failing", Some("occupancy"))),
        "{ready:?}"
    );
    // The cause is for operators: in the admin view, not in the public readiness reply.
    assert!(
        !format!("{ready:?}").contains("injected fault"),
        "{ready:?}"
    );
    let (_, status) = app.get("/v1/admin/projections").await;
    assert!(status.to_string().contains("injected fault"), "{status}");
    assert_eq!(
        db.query(TABLE).await,
        before,
        "a rolled-back batch left no rows behind"
    );
    assert_eq!(
        db.query("SELECT next_offset FROM projection_checkpoints WHERE projection = 'occupancy'")
            .await,
        cp_before
    );
    let (code, out) = cli(&["verify"], dir.path(), &db);
    assert_eq!(
        code, 0,
        "the read model is consistent at its checkpoint while failing: {out}"
    );
    assert!(out.contains("projection lag"), "{out}");

    fault.fail_next(0);
    app.wait_projection_caught_up().await;
    let after = db.query(TABLE).await;
    assert_ne!(before, after, "the second round changed the read model");
    assert_ne!(
        cp_before,
        db.query("SELECT next_offset FROM projection_checkpoints WHERE projection = 'occupancy'")
            .await
    );
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
    app.stop().await;

    let (code, out) = cli(&["verify"], dir.path(), &db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no differences"), "{out}");
}

#[actix_web::test]
async fn replay_rebuilds_the_same_table_as_the_live_run() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), Hooks::default()).await;
    for round in 0..4 {
        traffic(&app, round).await;
    }
    let (status, _) = app.patch("/v1/lots/east", json!({"capacity": 60})).await;
    assert_eq!(status, 200);
    app.wait_projection_caught_up().await;
    let live = db.query(TABLE).await;
    assert_eq!(live.len(), 3);

    // Over HTTP, while the service runs.
    let (status, reply) = app
        .post("/v1/admin/replay?projection=occupancy", json!({}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["stats"]["events"].as_u64(), Some(app.log_end().await));
    assert_eq!(reply["stats"]["written"].as_u64(), Some(3), "{reply}");
    assert_eq!(reply["stats"]["unit"], "lots", "{reply}");
    assert_eq!(db.query(TABLE).await, live);
    // Asked of the server from the command line: the same line as a rebuild here.
    let (code, out) = cli(
        &["replay", "--projection", "occupancy", "--url", &app.base],
        dir.path(),
        &db,
    );
    assert_eq!(code, 0, "{out}");
    let events = app.log_end().await;
    assert!(
        out.contains(&format!("rebuilt occupancy from {events} events: 3 lots")),
        "{out}"
    );

    // New events after the rebuild still reach the swapped-in table.
    traffic(&app, 9).await;
    app.wait_projection_caught_up().await;
    let live = db.query(TABLE).await;

    // From the command line, beside the running server.
    let (code, out) = cli(&["replay", "--projection", "occupancy"], dir.path(), &db);
    assert_eq!(code, 0, "{out}");
    let events = app.log_end().await;
    assert!(
        out.contains(&format!("rebuilt occupancy from {events} events: 3 lots")),
        "{out}"
    );
    assert!(out.contains("table swapped in"), "{out}");
    assert_eq!(db.query(TABLE).await, live);
    let (status, reply) = app
        .post("/v1/admin/replay?projection=nonsense", json!({}))
        .await;
    assert_eq!(status, 400, "{reply}");
    app.stop().await;
}

#[actix_web::test]
async fn verify_reports_a_read_model_that_drifted_from_the_log() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), Hooks::default()).await;
    traffic(&app, 0).await;
    app.wait_projection_caught_up().await;
    app.stop().await;
    let (code, out) = cli(&["verify"], dir.path(), &db);
    assert_eq!(code, 0, "{out}");

    db.query("UPDATE current_lot_occupancy SET occupancy = occupancy + 1 WHERE lot_id = 'west' RETURNING lot_id").await;
    let (code, out) = cli(&["verify"], dir.path(), &db);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DIFFERENCE lot west"), "{out}");

    let (code, out) = cli(&["replay"], dir.path(), &db);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&["verify"], dir.path(), &db);
    assert_eq!(code, 0, "replay repaired the drift: {out}");
}

#[actix_web::test]
async fn a_panicking_projection_is_reported_restarted_and_the_others_go_on() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let panic = FaultPoint::default();
    let hooks = Hooks {
        projection_panic: panic.clone(),
        ..Hooks::default()
    };
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), hooks).await;
    common::register(&app, "north", 100).await;
    app.wait_projection_caught_up().await;
    panic.fail_next(3);
    common::arrive(&app, "north").await;
    common::eventually(
        std::time::Duration::from_secs(10),
        "the panic on the board and in /readyz",
        || async {
            let p = app.projections().await.expect("projections");
            let occ = common::projection_view(&p, "occupancy");
            let (status, ready) = app.ready().await;
            let panicked = occ.is_some_and(|o| {
                o.state == "failing"
                    && o.last_error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("panicked: a panic injected"))
            });
            match (panicked, status) {
                (true, 503)
                    if common::first_reason(&ready).and_then(|r| r.1) == Some("occupancy") =>
                {
                    Ok(())
                }
                _ => Err(format!("{p:?} / {status} {ready:?}")),
            }
        },
    )
    .await;
    // The other projections go on meanwhile.
    common::arrive(&app, "north").await;
    app.wait_caught_up("features").await;
    // Once the injected panics are spent, the occupancy projection is running again,
    // has every event once, and the service is ready.
    app.wait_projection_caught_up().await;
    let rows = db
        .query("SELECT occupancy::int8 FROM current_lot_occupancy WHERE lot_id = 'north'")
        .await;
    assert_eq!(rows, vec![vec!["2".to_owned()]]);
    let p = app.projections().await.expect("projections");
    assert_eq!(
        common::projection_view(&p, "occupancy").map(|o| o.failures),
        Some(3),
        "{p:?}"
    );
    assert_eq!(app.get("/readyz").await.0, 200);
    app.stop().await;
}

/// Two services on one shared log (JetStream) and one database: one folds the
/// occupancy projection, the other stands by; when the first stops (its database
/// session ends) the other takes the lease over and folds from the checkpoint. While it
/// stands by it shows the holder's checkpoint.
#[actix_web::test]
async fn of_two_nodes_one_folds_a_projection_and_the_other_takes_over_when_it_stops() {
    let nats = common::nats::Nats::single();
    let db = TestDb::new();
    let config = |dir: &std::path::Path| {
        let mut c = test_config(dir, Some(&db));
        c.log.backend = parkade::config::LogBackend::Jetstream;
        c.log.nats_url = nats.urls();
        c.archive.enabled = false;
        c
    };
    let (dir_a, dir_b) = (common::data_dir(), common::data_dir());
    let a = TestApp::spawn(config(dir_a.path()), Hooks::default()).await;
    common::register(&a, "north", 500).await;
    a.wait_caught_up("occupancy").await;
    let b = TestApp::spawn(config(dir_b.path()), Hooks::default()).await;
    common::wait_standby(&b, "occupancy").await;
    // Both take events; the one with the lease folds them all.
    for _ in 0..20 {
        common::arrive(&a, "north").await;
        common::arrive(&b, "north").await;
    }
    // (The holder's copy of the stream holds the other node's last events moments
    // after they were acknowledged.)
    let folded = common::eventually(
        std::time::Duration::from_secs(10),
        "the holder to fold the registration and 40 arrivals",
        || async {
            match common::projection_state(&a, "occupancy").await? {
                (s, cp) if s == "running" && cp >= 41 => Ok(cp),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // The standing-by node shows the holder's progress, not its own (none).
    common::eventually(
        std::time::Duration::from_secs(10),
        "the standby to show the holder's checkpoint",
        || async {
            match common::projection_state(&b, "occupancy").await? {
                (s, cp) if s == "standby" && cp == folded => Ok(()),
                other => Err(format!("{other:?}, holder at {folded}")),
            }
        },
    )
    .await;
    a.stop().await;
    for _ in 0..10 {
        common::arrive(&b, "north").await;
    }
    b.wait_caught_up("occupancy").await;
    let rows = db
        .query("SELECT occupancy::text FROM current_lot_occupancy WHERE lot_id = 'north'")
        .await;
    assert_eq!(rows[0][0], "50", "{rows:?}");
    b.stop().await;
}

/// `n` arrivals at lot north, each acknowledged.
async fn arrive(app: &TestApp, n: usize) {
    for _ in 0..n {
        let (s, r) = app
            .post(
                "/v1/events",
                json!({"lot_id": "north", "event_type": "ARRIVAL"}),
            )
            .await;
        assert_eq!(s, 200, "{r}");
    }
}

/// Acknowledged events gone from the log (here: its newest segment put back as it was
/// three events earlier, as a disk that zeroed the tail or an older copy of the data
/// folder would leave it) while the read model, the features and the archive folded
/// them: the service does not start, naming each and both positions; rebuilt from the
/// log as it is, it starts.
#[actix_web::test]
async fn a_start_on_a_log_that_lost_folded_events_is_refused_until_they_are_rebuilt() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let config = test_config(dir.path(), Some(&db));
    let app = TestApp::spawn(config.clone(), Hooks::default()).await;
    let (s, r) = app
        .post(
            "/v1/lots",
            json!({"lot_id": "north", "name": "North", "capacity": 10}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    arrive(&app, 2).await;
    app.wait_caught_up("occupancy").await;
    app.wait_caught_up("archive").await;
    app.stop().await;
    let segment = {
        let mut all: Vec<_> = std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        all.sort();
        all.pop().expect("a segment")
    };
    let earlier = std::fs::read(&segment).unwrap();

    let app = TestApp::spawn(config.clone(), Hooks::default()).await;
    arrive(&app, 3).await;
    app.wait_caught_up("occupancy").await;
    app.wait_caught_up("features").await;
    app.wait_caught_up("archive").await;
    app.stop().await;
    std::fs::write(&segment, &earlier).unwrap();

    let refused = parkade::app::Application::build(config.clone(), Hooks::default()).await;
    let text = match refused {
        Ok(_) => panic!("the service started on a log that lost 3 acknowledged events"),
        Err(e) => format!("{e:#}"),
    };
    for want in [
        "ends at offset 3",
        "occupancy has folded up to offset 6",
        "features has folded up to offset 6",
        "archive has folded up to offset 6",
        "parkade replay --projection occupancy",
    ] {
        assert!(text.contains(want), "{want:?} not in: {text}");
    }

    for name in ["occupancy", "features", "archive"] {
        let out = Command::new(common::binary())
            .args(["replay", "--projection", name])
            .env("PARKADE_DATA_DIR", dir.path())
            .env("PARKADE_DATABASE_URL", &db.url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "replay {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let app = TestApp::spawn(config, Hooks::default()).await;
    let (s, lot) = app.get("/v1/lots/north").await;
    assert_eq!((s, lot["occupancy"].clone()), (200, json!(2)), "{lot}");
    app.wait_caught_up("occupancy").await;
    app.stop().await;
}

/// A database migrated by a newer parkade is refused at start with what to do, not
/// retried for ever; the projections' own connect says the same.
#[actix_web::test]
async fn a_database_migrated_by_a_newer_parkade_is_refused_at_start() {
    let db = TestDb::new();
    let pool = parkade::projections::db::connect(&db.url).await.unwrap();
    pool.close().await;
    let newer = parkade::projections::db::known_schema() + 1;
    db.query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({newer}, 'from a newer parkade', true, '\\x00'::bytea, 0) RETURNING version::text"
    ))
    .await;
    let dir = common::data_dir();
    let started = std::time::Instant::now();
    let refused =
        parkade::app::Application::build(test_config(dir.path(), Some(&db)), Hooks::default())
            .await;
    let text = match refused {
        Ok(_) => panic!("the service started on a database of a newer parkade"),
        Err(e) => format!("{e:#}"),
    };
    for want in [
        "migrated by a newer parkade",
        &newer.to_string(),
        "upgrade parkade",
    ] {
        assert!(text.contains(want), "{want:?} not in: {text}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused at once, not after retries: {:?}",
        started.elapsed()
    );
    match parkade::projections::db::connect(&db.url).await {
        Err(parkade::projections::ProjectionError::NewerSchema(e)) => assert_eq!(e.applied, newer),
        other => panic!("expected a newer-schema error, got {:?}", other.map(|_| ())),
    }
}

/// PostgreSQL errors name the problem once and fast: a database that does not exist
/// stops the start at once, naming host, port and database (never the password); a
/// server that is not there is retried while `/readyz` says not ready (naming where it
/// tried), each cause said once, and a stop signal ends the server within a second or
/// two, not after the attempt in flight.
#[actix_web::test]
async fn postgresql_errors_name_the_problem_once_and_fast() {
    use std::io::Read;
    let dir = common::data_dir();
    // A database that does not exist: refused at start.
    let missing = format!("parkade_missing_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres:s3cret-pw@127.0.0.1:5432/{missing}");
    let started = std::time::Instant::now();
    let out = Command::new(common::binary())
        .arg("serve")
        .env("PARKADE_DATA_DIR", dir.path())
        .env("PARKADE_BIND", "127.0.0.1:0")
        .env("PARKADE_DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "started on a missing database: {text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "refused at once: {:?}",
        started.elapsed()
    );
    for want in [format!("127.0.0.1:5432/{missing}"), "does not exist".into()] {
        assert!(text.contains(&want), "{want:?} not in: {text}");
    }
    assert!(!text.contains("s3cret-pw"), "the password is shown: {text}");

    // Nothing listening: the service runs, not ready, and says so once.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let port = common::free_port();
    let mut child = Command::new(common::binary())
        .arg("serve")
        .env("PARKADE_DATA_DIR", dir.path())
        .env("PARKADE_BIND", format!("127.0.0.1:{port}"))
        .env(
            "PARKADE_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{dead_port}/parkade"),
        )
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    common::wait_healthy(&base).await;
    let reasons = common::eventually(
        std::time::Duration::from_secs(3),
        "not ready, naming where it tried",
        || async {
            let mut r = awc::Client::new()
                .get(format!("{base}/v1/admin/projections"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body =
                String::from_utf8_lossy(&r.body().await.map_err(|e| e.to_string())?).into_owned();
            let ready = awc::Client::new()
                .get(format!("{base}/readyz"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .status();
            if ready == 503 && body.contains(&format!("127.0.0.1:{dead_port}/parkade")) {
                Ok(body)
            } else {
                Err(format!("readyz {ready}: {body}"))
            }
        },
    )
    .await;
    assert!(
        reasons.contains("cannot connect to PostgreSQL"),
        "{reasons}"
    );
    // A few retries later, the cause was said once.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let stop = std::time::Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        stop.elapsed() < std::time::Duration::from_secs(3),
        "stopped within seconds: {:?}",
        stop.elapsed()
    );
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let said = logs.matches("cannot reach PostgreSQL").count();
    assert_eq!(said, 1, "the cause once, not at every retry:\n{logs}");
}
