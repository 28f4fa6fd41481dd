//! The features projection against a real PostgreSQL: live rows with a late event,
//! replay equal to the live run, and the history endpoint over them.

use parkade::api::wire;
use parkade::app::Hooks;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common;
use common::{test_config, TestApp, TestDb};

const ROWS: &str = "SELECT lot_id, to_char(bucket_start AT TIME ZONE 'UTC', 'HH24:MI'), \
    occupancy_start::text, occupancy_end::text, occupancy_min::text, occupancy_max::text, \
    round(occupancy_mean::numeric, 6)::text, arrivals::text, departures::text, counts::text, capacity::text \
    FROM lot_features_15m ORDER BY lot_id, bucket_start";

fn event(kind: &str, hhmm: &str) -> Value {
    json!({"lot_id": "north", "event_type": kind, "timestamp": format!("2026-11-20T{hhmm}:00Z")})
}

async fn post_ok(app: &TestApp, path: &str, body: Value) {
    let (status, reply) = app.post(path, body).await;
    assert!(status == 200 || status == 201, "{status} {reply}");
}

#[actix_web::test]
async fn features_fold_a_late_event_and_a_replay_gives_the_same_rows() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), Hooks::default()).await;
    post_ok(
        &app,
        "/v1/lots",
        json!({"lot_id": "north", "name": "North", "capacity": 10, "timestamp": "2026-11-20T08:00:00Z"}),
    )
    .await;
    post_ok(
        &app,
        "/v1/events",
        json!([
            event("ARRIVAL", "08:03"),
            event("ARRIVAL", "08:06"),
            event("DEPARTURE", "08:12"),
            event("ARRIVAL", "08:40")
        ]),
    )
    .await;
    app.wait_caught_up("features").await;
    // The 08:00 bucket before the late event: 0, 1, 2, 1 -> mean 18/15.
    let rows = db.query(ROWS).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0][1..].join(" "), "08:00 0 1 0 2 1.200000 2 1 0 10");
    // Late: an arrival at 08:10 logged after the one at 08:40; then a recount at 08:50.
    post_ok(&app, "/v1/events", event("ARRIVAL", "08:10")).await;
    post_ok(
        &app,
        "/v1/lots/north/count",
        json!({"count": 5, "timestamp": "2026-11-20T08:50:00Z"}),
    )
    .await;
    app.wait_caught_up("features").await;
    let live = db.query(ROWS).await;
    let text: Vec<String> = live.iter().map(|r| r[1..].join(" ")).collect();
    assert_eq!(
        text,
        [
            "08:00 0 2 0 3 1.533333 3 1 0 10",
            "08:15 2 2 2 2 2.000000 0 0 0 10",
            "08:30 2 3 2 3 2.333333 1 0 0 10",
            "08:45 3 5 3 5 4.333333 0 0 1 10",
        ]
    );
    let (status, reply) = app
        .post("/v1/admin/replay?projection=features", json!({}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        db.query(ROWS).await,
        live,
        "the replay equals the live rows"
    );

    // The same rows in the lake, read by pyarrow: one file per day under features/.
    let features = dir.path().join("archive/features");
    let file = features.join("date=2026-11-20/features.parquet");
    let lake = common::eventually(
        std::time::Duration::from_secs(20),
        "the 4 feature rows in the lake",
        || async {
            if !file.exists() {
                return Err(format!("no file {}", file.display()));
            }
            let lake = common::read_lake(&features);
            if lake["rows"] == 4 {
                Ok(lake)
            } else {
                Err(lake.to_string())
            }
        },
    )
    .await;
    let lake_rows: Vec<String> = lake["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {} {:.6} {} {} {} {}",
                &r["bucket_start"].as_str().unwrap()[11..16],
                r["occupancy_start"],
                r["occupancy_end"],
                r["occupancy_min"],
                r["occupancy_max"],
                r["occupancy_mean"].as_f64().unwrap(),
                r["arrivals"],
                r["departures"],
                r["counts"],
                r["capacity"]
            )
        })
        .collect();
    assert_eq!(lake_rows, text);

    // History over the same rows.
    let hour = "from=2026-11-20T08:00:00Z&to=2026-11-20T09:00:00Z";
    let h = app
        .history("north", &format!("{hour}&bucket=1h"))
        .await
        .unwrap();
    assert_eq!(h.points.len(), 1, "{h:?}");
    let p = &h.points[0];
    assert_eq!(
        (p.occupancy_start, p.occupancy_end, p.occupancy_max),
        (0, 5, 5)
    );
    assert_eq!(
        (p.arrivals, p.departures, p.counts, p.buckets_15m),
        (4, 1, 1, 4)
    );
    let h = app.history("north", hour).await.unwrap();
    assert_eq!(h.points.len(), 4, "{h:?}");
    let e = app.history("north", "bucket=5m").await.unwrap_err();
    assert_eq!(
        (e.status, e.body.field.as_deref()),
        (400, Some("bucket")),
        "{e:?}"
    );
    let e = app.history("nowhere", "").await.unwrap_err();
    assert_eq!(e.status, 404);
    app.stop().await;
}

#[actix_web::test]
async fn day_buckets_of_history_are_days_of_the_lots_time_zone() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let mut cfg = test_config(dir.path(), Some(&db));
    cfg.forecast.timezone = "America/Vancouver".into();
    let app = TestApp::spawn(cfg, Hooks::default()).await;
    post_ok(
        &app,
        "/v1/lots",
        json!({"lot_id": "north", "name": "North", "capacity": 10, "timestamp": "2026-11-20T08:00:00Z"}),
    )
    .await;
    // 12:00 and 19:00 on 20 November in Vancouver (two UTC days), then 01:00 on the 21st.
    let at = |t: &str| json!({"lot_id": "north", "event_type": "ARRIVAL", "timestamp": t});
    post_ok(
        &app,
        "/v1/events",
        json!([
            at("2026-11-20T20:00:00Z"),
            at("2026-11-21T03:00:00Z"),
            at("2026-11-21T09:00:00Z")
        ]),
    )
    .await;
    app.wait_caught_up("features").await;
    let h = app
        .history(
            "north",
            "from=2026-11-20T08:00:00Z&to=2026-11-22T08:00:00Z&bucket=1d",
        )
        .await
        .unwrap();
    assert_eq!(h.timezone, "America/Vancouver");
    let days: Vec<(String, i64)> = h
        .points
        .iter()
        .map(|p| {
            (
                p.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                p.arrivals,
            )
        })
        .collect();
    // Local midnight is 08:00 UTC in November (PST).
    assert_eq!(
        days,
        [
            ("2026-11-20T08:00:00Z".to_owned(), 2),
            ("2026-11-21T08:00:00Z".to_owned(), 1)
        ]
    );
    app.stop().await;
}

#[actix_web::test]
async fn without_a_database_history_and_forecasts_come_from_memory() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    post_ok(
        &app,
        "/v1/lots",
        json!({"lot_id": "north", "name": "North", "capacity": 10}),
    )
    .await;
    common::arrive(&app, "north").await;
    app.wait_caught_up("features").await;
    let h = app.history("north", "bucket=1h").await.unwrap();
    let arrivals: i64 = h.points.iter().map(|p| p.arrivals).sum();
    assert_eq!(arrivals, 1, "{h:?}");
    // One arrival is no week of history: the forecast says so, the timespan has the past.
    let e = app.forecast("north").await.unwrap_err();
    assert_eq!(
        (e.status, e.body.error.as_str()),
        (409, "not_enough_history"),
        "{e:?}"
    );
    let ts = app.timespan("north", "").await.unwrap();
    assert!(!ts.series.is_empty(), "{ts:?}");
    assert!(ts
        .series
        .iter()
        .all(|p| matches!(p.kind, wire::SpanKind::History)));
    app.stop().await;

    // With the predictor off, the forecast endpoints say so.
    let mut cfg = test_config(dir.path(), None);
    cfg.forecast.enabled = false;
    let app = TestApp::spawn(cfg, Hooks::default()).await;
    for e in [
        app.forecast("north").await.unwrap_err(),
        app.timespan("north", "").await.unwrap_err(),
    ] {
        assert_eq!(e.status, 503, "{e:?}");
        assert!(e.body.message.contains("[forecast] enabled"), "{e:?}");
    }
    app.stop().await;
}

/// Counts of `lot` every 30 minutes from 07:00 to 19:00 UTC on each of the last `days`
/// days (today included, up to now): a morning rise and an afternoon fall.
fn daily_counts(lot: &str, capacity: f64, days: i64) -> Vec<Value> {
    daily_counts_ending(lot, capacity, days, 0)
}

/// [`daily_counts`] of the `days` days up to `ago` days before today.
fn daily_counts_ending(lot: &str, capacity: f64, days: i64, ago: i64) -> Vec<Value> {
    let now = chrono::Utc::now();
    let today = now.date_naive() - chrono::Days::new(ago as u64);
    let mut out = Vec::new();
    for d in (0..days).rev() {
        let day = today - chrono::Days::new(d as u64);
        for half_hour in 14..=38 {
            let at = day.and_hms_opt(0, 0, 0).unwrap().and_utc()
                + chrono::Duration::minutes(half_hour * 30);
            if at > now {
                break;
            }
            let hour = half_hour as f64 / 2.0;
            let shape = (-((hour - 13.0) / 3.5).powi(2)).exp();
            let count = (capacity * 0.9 * shape).round() as i64;
            out.push(json!({"lot_id": lot, "event_type": "COUNT", "count": count,
                            "timestamp": at.to_rfc3339()}));
        }
    }
    out
}

/// The events of the predictor tests: "busy" with ten days of readings, "young" with
/// six earlier days (one short of the model's seven; six days in a row hold a weekday
/// and a weekend day, so its partial profile has both kinds whatever the day the test
/// runs), "new" with readings of the last hour only (whatever the time of day).
fn predictor_events() -> (String, Vec<Value>) {
    let start = (chrono::Utc::now() - chrono::Duration::days(11)).to_rfc3339();
    let mut events = daily_counts("busy", 100.0, 10);
    events.extend(daily_counts("young", 50.0, 7));
    events.extend([60, 30].iter().map(|m| {
        let at = chrono::Utc::now() - chrono::Duration::minutes(*m);
        json!({"lot_id": "new", "event_type": "COUNT", "count": 5, "timestamp": at.to_rfc3339()})
    }));
    (start, events)
}

/// Run the predictor on `events` with PostgreSQL (`db`) or in memory; check its forecasts
/// and timespan, and return the fitted horizons of the model it trained and saved.
async fn predictor_on(db: Option<&TestDb>, (start, events): &(String, Vec<Value>)) -> Value {
    let dir = common::data_dir();
    let mut cfg = test_config(dir.path(), db);
    cfg.forecast.interval_secs = 1;
    let app = TestApp::spawn(cfg, Hooks::default()).await;
    for (lot, cap) in [("busy", 100), ("young", 50), ("new", 20)] {
        post_ok(
            &app,
            "/v1/lots",
            json!({"lot_id": lot, "name": lot, "capacity": cap, "timestamp": start}),
        )
        .await;
    }
    post_ok(&app, "/v1/events", json!(events)).await;
    app.wait_caught_up("features").await;

    let f = common::eventually(
        std::time::Duration::from_secs(30),
        "a forecast of lot busy",
        || async { app.forecast("busy").await.map_err(|e| format!("{e:?}")) },
    )
    .await;
    assert_eq!(f.points.len(), 96, "24 hours every 15 minutes: {f:?}");
    assert_eq!(f.method, wire::ForecastMethod::Model);
    // A lot with six days: its own partial profile, with the model's interval.
    let young = app.forecast("young").await.unwrap();
    assert_eq!(young.method, wire::ForecastMethod::PartialProfile);
    assert_eq!(young.model_version, f.model_version);
    assert!(!young.points.is_empty());
    for (p, cap) in f
        .points
        .iter()
        .map(|p| (p, 100.0))
        .chain(young.points.iter().map(|p| (p, 50.0)))
    {
        assert!(p.time > f.issued_at, "{p:?}");
        let (occ, low, high) = (p.occupancy, p.low, p.high);
        assert!(
            (0.0..=cap).contains(&occ) && low <= occ + 1e-9 && occ <= high + 1e-9,
            "{p:?}"
        );
    }
    let version = f.model_version.clone();
    let current = std::fs::read_to_string(dir.path().join("models/CURRENT")).unwrap();
    assert_eq!(current.trim(), version);
    if let Some(db) = db {
        let models = db.query("SELECT version FROM forecast_models").await;
        assert_eq!(models, [[version.clone()]]);
    }

    // A lot with readings on no earlier day gets a clear answer, not a number.
    let e = app.forecast("new").await.unwrap_err();
    assert_eq!(
        (e.status, e.body.error.as_str()),
        (409, "not_enough_history"),
        "{e:?}"
    );
    assert!(e.body.days_of_history.unwrap() < 7, "{e:?}");
    assert_eq!(e.body.days_needed, Some(7), "{e:?}");

    // History and forecast in one series.
    let ts = app.timespan("busy", "").await.unwrap();
    let kinds: Vec<wire::SpanKind> = ts.series.iter().map(|p| p.kind).collect();
    let first_forecast = kinds
        .iter()
        .position(|k| matches!(k, wire::SpanKind::Forecast))
        .expect("forecast points");
    assert!(first_forecast > 0, "history comes first: {kinds:?}");
    assert!(kinds[first_forecast..]
        .iter()
        .all(|k| matches!(k, wire::SpanKind::Forecast)));
    assert_eq!(ts.model_version.as_deref(), Some(version.as_str()));
    app.stop().await;
    let model = dir.path().join(format!("models/{version}.json"));
    let model: Value = serde_json::from_slice(&std::fs::read(model).unwrap()).unwrap();
    model["horizons"].clone()
}

#[actix_web::test]
async fn the_predictor_trains_the_same_model_and_forecasts_with_postgres_or_in_memory() {
    let events = predictor_events();
    let db = TestDb::new();
    let on_postgres = predictor_on(Some(&db), &events).await;
    let in_memory = predictor_on(None, &events).await;
    let (a, b) = (
        on_postgres.as_array().unwrap(),
        in_memory.as_array().unwrap(),
    );
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len(), "{on_postgres} / {in_memory}");
    // Equal fits, but for the order floats were summed in.
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["minutes"], y["minutes"]);
        assert_eq!(x["samples"], y["samples"]);
        for key in ["coef", "residual_p10", "residual_p90", "train_mae"] {
            let (xs, ys) = (numbers(&x[key]), numbers(&y[key]));
            assert_eq!(xs.len(), ys.len());
            for (u, v) in xs.iter().zip(&ys) {
                assert!((u - v).abs() < 1e-9, "{key}: {x} / {y}");
            }
        }
    }
}

/// A number, or an array of numbers, as a list.
fn numbers(v: &Value) -> Vec<f64> {
    match v.as_array() {
        Some(a) => a.iter().map(|n| n.as_f64().unwrap()).collect(),
        None => vec![v.as_f64().unwrap()],
    }
}

#[actix_web::test]
async fn the_lake_exporter_writes_a_busy_day_once_per_round() {
    use parkade::projections::archive::Store;
    use parkade::projections::features::lake::export_dirty;
    let db = TestDb::new();
    let dir = common::data_dir();
    let pool = parkade::projections::db::connect(&db.url).await.unwrap();
    sqlx::query("INSERT INTO lot_features_dirty_days (day, version) VALUES ('2026-11-27', 1)")
        .execute(&pool)
        .await
        .unwrap();
    // Steady traffic: today's day is marked again and again while it is exported.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // On a thread and runtime of its own, so it marks while the export runs.
    let marker = {
        let (url, stop) = (db.url.clone(), stop.clone());
        common::on_own_thread(async move {
            {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let mut marks = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && marks < 20_000 {
                    sqlx::query(
                        "UPDATE lot_features_dirty_days SET version = version + 1 WHERE day = '2026-11-27'",
                    )
                    .execute(&pool)
                    .await
                    .unwrap();
                    marks += 1;
                }
                pool.close().await;
                marks
            }
        })
    };
    actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    let store = Store::local(dir.path().join("lake"));
    let written = export_dirty(&pool, &store).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let marks = marker.join().unwrap();
    assert_eq!(
        written, 1,
        "the day was written {written} times in one round"
    );
    assert!(
        marks < 20_000,
        "the export did not return while the day kept changing"
    );
    // (A mark set again during the export stays for the next round, so the newest rows
    // still reach the lake; whether one was set in that window is up to timing.)
    assert!(dir
        .path()
        .join("lake/features/date=2026-11-27/features.parquet")
        .exists());
}

#[actix_web::test]
async fn a_stop_signal_ends_the_features_warm_up_between_batches() {
    use parkade::domain::{Capacity, LotEvent, LotId, NewEvent, Timestamp};
    use parkade::log::{EventLog, FileLog, LogOptions};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let db = TestDb::new();
    let dir = common::data_dir();
    // A long log, written directly: 40 lots, one event a second each.
    let log = Arc::new(FileLog::open(dir.path().join("log"), LogOptions::default()).unwrap());
    let lots: Vec<LotId> = (0..40)
        .map(|i| LotId::parse(&format!("lot-{i}")).unwrap())
        .collect();
    let start = 1_764_000_000_000_000i64;
    let total = 600_000u64;
    let mut next = 0u64;
    while next < total {
        let batch: Vec<NewEvent> = (next..next + 10_000)
            .map(|i| {
                let lot = (i % 40) as usize;
                let round = i / 40;
                NewEvent {
                    lot_id: lots[lot].clone(),
                    lot_seq: round + 1,
                    event_id: uuid::Uuid::now_v7(),
                    client_event_id: false,
                    occurred_at: Timestamp::from_micros(start + round as i64 * 1_000_000),
                    event: match round {
                        0 => LotEvent::LotRegistered {
                            name: format!("Lot {lot}"),
                            capacity: Capacity::new(10).unwrap(),
                        },
                        r if r % 2 == 1 => LotEvent::VehicleArrived,
                        _ => LotEvent::VehicleDeparted,
                    },
                    occupancy: (round % 2) as u32,
                    capacity: 10,
                }
            })
            .collect();
        log.append_any(&batch).unwrap();
        next += 10_000;
    }
    log.wait_durable(total).await.unwrap();
    let log: Arc<dyn EventLog> = log;
    let pool = parkade::projections::db::connect(&db.url).await.unwrap();
    // The whole fold, timed: the rebuild also leaves the checkpoint at the log's end,
    // so a runner starting now first refolds the whole log (its warm-up).
    let t = Instant::now();
    parkade::projections::features::rebuild(&pool, log.clone(), 6 * 3600)
        .await
        .unwrap();
    let full = t.elapsed();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let runner = parkade::projections::Runner {
        pool,
        log,
        board: parkade::projections::StatusBoard::default(),
        batch_events: 10_000,
        max_backoff: Duration::from_secs(1),
        panic: Default::default(),
        holder: uuid::Uuid::now_v7(),
        projection: parkade::projections::features::Features::new(6 * 3600),
    };
    let task = actix_web::rt::spawn(runner.run(stopped));
    actix_web::rt::time::sleep((full / 10).min(Duration::from_millis(300))).await;
    let asked = Instant::now();
    stop.cancel();
    task.await.unwrap();
    let took = asked.elapsed();
    println!("full fold {full:?}; stopped {took:?} after the stop signal");
    assert!(
        took < full / 3 && took < Duration::from_secs(5),
        "the warm-up ran on for {took:?} after the stop signal (a full fold takes {full:?})"
    );
}

/// The application on `db` (forecasts off) with lot "busy" registered 11 days ago and
/// ten days of its counts, the features caught up.
async fn busy_lot(db: &TestDb, dir: &std::path::Path) -> TestApp {
    let mut cfg = test_config(dir, Some(db));
    cfg.forecast.enabled = false;
    let app = TestApp::spawn(cfg, Hooks::default()).await;
    let start = (chrono::Utc::now() - chrono::Duration::days(11)).to_rfc3339();
    post_ok(
        &app,
        "/v1/lots",
        json!({"lot_id": "busy", "name": "busy", "capacity": 100, "timestamp": start}),
    )
    .await;
    post_ok(&app, "/v1/events", json!(daily_counts("busy", 100.0, 10))).await;
    app.wait_caught_up("features").await;
    app
}

#[actix_web::test]
async fn training_from_the_lake_gives_the_model_training_from_postgresql_gives() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let app = busy_lot(&db, dir.path()).await;
    // The lake holds every row of the table once the exporter has been round.
    let rows = db
        .query("SELECT count(*)::int8 FROM lot_features_15m")
        .await[0][0]
        .clone();
    let lake = dir.path().join("archive/features");
    common::eventually(
        std::time::Duration::from_secs(30),
        "the features in the lake",
        || async {
            let got = if lake.exists() {
                common::read_lake(&lake)["rows"].to_string()
            } else {
                "no lake yet".to_owned()
            };
            if got == rows {
                Ok(())
            } else {
                Err(format!("{got} rows in the lake, {rows} in PostgreSQL"))
            }
        },
    )
    .await;
    app.stop().await;

    // The fitted table (samples, training error, interval by horizon) of each source.
    let table = |args: &[&str]| {
        let (code, out) = common::parkade(args, dir.path(), Some(&db));
        assert_eq!(code, 0, "{out}");
        let lines: Vec<String> = out
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains(" min |"))
            .map(str::to_owned)
            .collect();
        assert!(lines.len() > 4, "{out}");
        (lines, out)
    };
    let (from_db, _) = table(&["train"]);
    let (from_lake, out) = table(&["train", "--lake"]);
    assert!(out.contains("features lake"), "{out}");
    assert_eq!(from_lake, from_db);
}

#[actix_web::test]
async fn history_from_the_features_in_memory_is_history_from_postgresql() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let app = busy_lot(&db, dir.path()).await;
    let now = chrono::Utc::now();
    for kind in ["ARRIVAL", "ARRIVAL", "DEPARTURE"] {
        post_ok(
            &app,
            "/v1/events",
            json!({"lot_id": "busy", "event_type": kind}),
        )
        .await;
    }
    app.wait_caught_up("features").await;
    let range = |days: i64| {
        let from = (now - chrono::Duration::days(days)).format("%Y-%m-%dT%H:%M:%SZ");
        let to = (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ");
        format!("from={from}&to={to}")
    };
    let queries = [
        format!("{}&bucket=15m", range(3)),
        format!("{}&bucket=1h", range(11)),
        format!("{}&bucket=1d", range(12)),
    ];
    let mut from_db = Vec::new();
    for q in &queries {
        from_db.push(app.history("busy", q).await.unwrap());
    }
    app.stop().await;

    // The same log without a database: the features are folded into memory.
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    app.wait_caught_up("features").await;
    for (q, db) in queries.iter().zip(&from_db) {
        let memory = app.history("busy", q).await.unwrap();
        assert!(db.points.len() > 10, "{q}: {db:?}");
        assert_eq!(memory.points.len(), db.points.len(), "{q}");
        for (m, d) in memory.points.iter().zip(&db.points) {
            let exact = |p: &wire::HistoryPoint| {
                (
                    p.start,
                    (
                        p.occupancy_start,
                        p.occupancy_end,
                        p.occupancy_min,
                        p.occupancy_max,
                    ),
                    (p.arrivals, p.departures, p.counts),
                    (p.capacity, p.buckets_15m),
                )
            };
            assert_eq!(exact(m), exact(d), "{q}");
            assert!(
                (m.occupancy_mean - d.occupancy_mean).abs() < 1e-9,
                "{q}: {m:?} {d:?}"
            );
        }
    }
    app.stop().await;
}

/// History that ended long ago (an imported file's) is trained on and counted from its
/// newest reading, not from the clock: `parkade train` fits it (the weeks up to that
/// reading, or up to `--until`), and the forecast endpoint says how many days of
/// readings the lot has and that they end too long ago for a forecast of today.
#[actix_web::test]
async fn history_that_ended_long_ago_trains_and_is_counted_from_its_newest_reading() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), Hooks::default()).await;
    let start = (chrono::Utc::now() - chrono::Duration::days(201)).to_rfc3339();
    post_ok(
        &app,
        "/v1/lots",
        json!({"lot_id": "old", "name": "old", "capacity": 100, "timestamp": start}),
    )
    .await;
    post_ok(
        &app,
        "/v1/events",
        json!(daily_counts_ending("old", 100.0, 10, 190)),
    )
    .await;
    app.wait_caught_up("features").await;
    let e = app.forecast("old").await.unwrap_err();
    assert_eq!(e.status, 503, "{e:?}");
    for want in ["9 days of readings end at", "weeks before now"] {
        assert!(e.body.message.contains(want), "{want:?} not in {e:?}");
    }
    app.stop().await;

    let (code, out) = common::parkade(&["train"], dir.path(), Some(&db));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(the newest reading)"), "{out}");
    let readings: usize = out
        .split("training on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the readings trained on: {out}"));
    assert!(readings > 200, "{out}");
    // --until picks the point: before the first reading there is nothing to train on.
    let before = (chrono::Utc::now() - chrono::Duration::days(205)).to_rfc3339();
    let (code, out) = common::parkade(&["train", "--until", &before], dir.path(), Some(&db));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("training on 0 readings"), "{out}");
}
