//! The Parquet archive on a local folder: every event exactly once after a flush cut
//! short, replay into a new generation with the same rows, and an independent reader
//! (pyarrow) agreeing with the log.

use std::path::{Path, PathBuf};
use std::process::Command;

use parkade::app::Hooks;
use serde_json::{json, Value};

use crate::common;
use common::{read_lake, test_config, TestApp};

fn current_events(dir: &Path) -> PathBuf {
    let root = dir.join("archive");
    let gen = std::fs::read_to_string(root.join("_current")).expect("_current");
    root.join(gen.trim()).join("events")
}

async fn traffic(app: &TestApp) -> Vec<u64> {
    for (lot, cap) in [("north", 40), ("south", 25)] {
        let (s, _) = app
            .post(
                "/v1/lots",
                json!({"lot_id": lot, "name": format!("{lot} lot"), "capacity": cap}),
            )
            .await;
        assert_eq!(s, 201);
    }
    let mut batch = Vec::new();
    for i in 0..80 {
        let lot = if i % 2 == 0 { "north" } else { "south" };
        let kind = if i % 5 == 4 { "DEPARTURE" } else { "ARRIVAL" };
        // Two event dates, so the lake has two partitions.
        let day = if i < 40 { "2026-11-26" } else { "2026-11-27" };
        batch.push(json!({"lot_id": lot, "event_type": kind, "timestamp": format!("{day}T{:02}:{:02}:00Z", 8 + i / 60, i % 60)}));
    }
    let (s, reply) = app.post("/v1/events", Value::Array(batch)).await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post(
            "/v1/lots/south/count",
            json!({"count": 3, "timestamp": "2026-11-27T12:00:00Z"}),
        )
        .await;
    assert_eq!(s, 200);
    reply["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["offset"].as_u64())
        .collect()
}

#[actix_web::test]
async fn the_lake_holds_every_event_once_and_pyarrow_reads_what_the_log_says() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    let offsets = traffic(&app).await;
    app.wait_caught_up("archive").await;
    let end = app.log_end().await;
    let (_, north) = app.get("/v1/lots/north").await;
    app.stop().await;

    let lake = read_lake(&current_events(dir.path()));
    assert_eq!(lake["rows"].as_u64(), Some(end));
    let records = lake["records"].as_array().unwrap();
    let got = common::lake_offsets(&lake);
    assert_eq!(
        got,
        (0..end).collect::<Vec<_>>(),
        "every offset exactly once"
    );
    let schema: Vec<(String, String)> = lake["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].as_str().unwrap().to_owned(),
                c[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (name, ty) in [
        ("offset", "int64"),
        ("event_id", "string"),
        ("lot_id", "string"),
        ("event_type", "string"),
        ("occurred_at", "timestamp[us, tz=UTC]"),
        ("recorded_at", "timestamp[us, tz=UTC]"),
        ("occupancy", "int32"),
        ("capacity", "int32"),
        ("count", "int32"),
        ("name", "string"),
    ] {
        assert!(
            schema.contains(&(name.to_owned(), ty.to_owned())),
            "{name} {ty} in {schema:?}"
        );
    }
    // A few values against what the API said.
    assert_eq!(records[0]["event_type"], "LotRegistered");
    assert_eq!(records[0]["name"], "north lot");
    // The batch's first event (north's first arrival) at the offset the API gave it.
    let first = &records[offsets[0] as usize];
    assert_eq!(first["event_type"], "VehicleArrived");
    assert_eq!(first["lot_id"], "north");
    assert_eq!(first["occupancy"], 1);
    assert_eq!(first["date"], "2026-11-26");
    assert_eq!(first["occurred_at"], "2026-11-26T08:00:00+00:00");
    let last_north = records
        .iter()
        .rev()
        .find(|r| r["lot_id"] == "north")
        .unwrap();
    assert_eq!(last_north["occupancy"], north["occupancy"]);
    let count = records.last().unwrap();
    assert_eq!(
        (count["event_type"].as_str(), count["count"].as_u64()),
        (Some("OccupancyCounted"), Some(3))
    );
    assert_eq!(count["occurred_at"], "2026-11-27T12:00:00+00:00");
    assert!(offsets.iter().all(|o| *o < end));
}

#[actix_web::test]
async fn a_flush_cut_short_is_written_again_without_duplicates() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    traffic(&app).await;
    app.wait_caught_up("archive").await;
    app.stop().await;

    // More events while the archive is off...
    let mut off = test_config(dir.path(), None);
    off.archive.enabled = false;
    let app = TestApp::spawn(off, Hooks::default()).await;
    let before = app.log_end().await;
    traffic_more(&app).await;
    let end = app.log_end().await;
    app.stop().await;
    // ...and a flush of them that crashed after one file, before its progress marker.
    let events = current_events(dir.path());
    let some_file = std::fs::read_dir(events.join("date=2026-11-27"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let orphan = events
        .join("date=2026-11-27")
        .join(format!("{before:020}-{:020}.parquet", end - 1));
    std::fs::copy(&some_file, &orphan).unwrap();

    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    app.wait_caught_up("archive").await;
    app.stop().await;
    let lake = read_lake(&events);
    let got = common::lake_offsets(&lake);
    assert_eq!(
        got,
        (0..end).collect::<Vec<_>>(),
        "every offset exactly once after the retry"
    );
}

async fn traffic_more(app: &TestApp) {
    let batch: Vec<Value> = (0..30)
        .map(|i| json!({"lot_id": "north", "event_type": if i % 3 == 2 { "DEPARTURE" } else { "ARRIVAL" }, "timestamp": format!("2026-11-27T13:{i:02}:00Z")}))
        .collect();
    let (s, _) = app.post("/v1/events", Value::Array(batch)).await;
    assert_eq!(s, 200);
}

#[actix_web::test]
async fn replay_writes_a_new_generation_with_the_same_rows_and_switches_to_it() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    traffic(&app).await;
    app.wait_caught_up("archive").await;
    let live_path = current_events(dir.path());
    let live = read_lake(&live_path);

    // From the command line, beside the running server.
    let out = Command::new(common::binary())
        .args(["replay", "--projection", "archive"])
        .env("PARKADE_DATA_DIR", dir.path())
        .env_remove("PARKADE_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt_path = current_events(dir.path());
    assert_ne!(live_path, rebuilt_path, "a fresh generation");
    let rebuilt = read_lake(&rebuilt_path);
    assert_eq!(rebuilt["records"], live["records"]);
    assert_eq!(rebuilt["schema"], live["schema"]);

    // The running server follows the new generation with new events.
    traffic_more(&app).await;
    app.wait_caught_up("archive").await;
    let end = app.log_end().await;
    let after = read_lake(&rebuilt_path);
    assert_eq!(after["rows"].as_u64(), Some(end), "{}", text);

    // Over HTTP too.
    let (status, reply) = app
        .post("/v1/admin/replay?projection=archive", json!({}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let again = read_lake(&current_events(dir.path()));
    assert_eq!(again["records"], after["records"]);
    assert!(
        dir.path().join("archive/current").join("events").exists(),
        "the current symlink points at the live generation"
    );
    app.stop().await;
}

#[actix_web::test]
async fn the_service_stops_promptly_after_an_archive_replay_over_http() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    common::register(&app, "north", 10).await;
    let (s, r) = app
        .post("/v1/admin/replay?projection=archive", Value::Null)
        .await;
    assert_eq!(s, 200, "{r}");
    // The archive follower switches to the new generation; a stop right then must not
    // leave it waiting for a second stop signal.
    tokio::time::timeout(std::time::Duration::from_secs(20), app.stop())
        .await
        .expect("the service stopped within 20 s of the stop");
}
