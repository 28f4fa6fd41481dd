//! `parkade import` as a user runs it: the real Birmingham file, counted independently;
//! re-import; event CSVs with bad rows; import through a running server.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use parkade::app::Hooks;
use serde_json::json;

use crate::common;
use common::{birmingham, parkade, test_config, TestApp, TestDb};

/// Outcome counts computed straight from the CSV, without parkade's code: a repeated
/// (car park, time) is a duplicate; else a negative count; else a count above capacity.
fn expected_counts(path: &Path) -> (u64, BTreeMap<&'static str, u64>, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut seen = HashSet::new();
    let mut lots = HashSet::new();
    let mut accepted = 0;
    let mut rejected = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (code, cap, occ, time) = (
            f[0],
            f[1].parse::<i64>().unwrap(),
            f[2].parse::<i64>().unwrap(),
            f[3],
        );
        lots.insert(code.to_owned());
        let reason = if !seen.insert((code.to_owned(), time.to_owned())) {
            Some("duplicate")
        } else if occ < 0 {
            Some("negative")
        } else if occ > cap {
            Some("above_capacity")
        } else {
            None
        };
        match reason {
            Some(r) => *rejected.entry(r).or_default() += 1,
            None => accepted += 1,
        }
    }
    (accepted, rejected, lots.len())
}

fn reasons(counts: &BTreeMap<&str, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn the_birmingham_file_imports_with_every_quirk_counted_and_reimports_as_nothing() {
    let file = birmingham();
    let (accepted, rejected, lots) = expected_counts(&file);
    // The data's own README lists these quirks; the independent count must agree.
    assert_eq!(
        (
            rejected["duplicate"],
            rejected["negative"],
            rejected["above_capacity"]
        ),
        (216, 12, 300)
    );
    let db = TestDb::new();
    let dir = common::data_dir();
    let rejects = dir.path().join("rejects.csv");
    let (code, out) = parkade(
        &[
            "import",
            file.to_str().unwrap(),
            "--rejects",
            rejects.to_str().unwrap(),
        ],
        dir.path(),
        Some(&db),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{} rows",
            accepted + rejected.values().sum::<u64>()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{accepted} accepted, 0 already imported")),
        "{out}"
    );
    assert!(out.contains(&format!("({})", reasons(&rejected))), "{out}");
    assert!(out.contains(&format!("{lots} lots registered")), "{out}");
    assert!(out.contains("occupancy read model caught up"), "{out}");
    let rejects_text = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(
        rejects_text.lines().count() as u64,
        1 + rejected.values().sum::<u64>()
    );
    assert!(
        rejects_text
            .lines()
            .any(|l| l.contains(",negative,") && l.contains("NIA North")),
        "{rejects_text}"
    );

    let (code, out) = parkade(&["import", file.to_str().unwrap()], dir.path(), Some(&db));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("0 accepted, {accepted} already imported")),
        "{out}"
    );
    let (code, out) = parkade(&["verify"], dir.path(), Some(&db));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("verified {lots} lots")), "{out}");
}

#[actix_web::test]
async fn event_rows_follow_the_lot_rules_and_bad_rows_are_reported() {
    let dir = common::data_dir();
    let csv = dir.path().join("events.csv");
    std::fs::write(
        &csv,
        "lot_id,event_type,timestamp,event_id\n\
         east,ARRIVAL,2016-10-04T08:00:00Z,\n\
         east,ARRIVAL,2016-10-04T08:00:00Z,\n\
         east,departure,1475568060000,\n\
         East ,DEPARTURE,2016-10-04T08:02:00+01:00,\n\
         nowhere,ARRIVAL,2016-10-04T08:00:00Z,\n\
         east,PARK,2016-10-04T08:00:00Z,\n\
         east,ARRIVAL,yesterday,\n\
         east,ARRIVAL,2016-10-04T09:00:00Z,9a3c7a52-6e1f-4d7e-9d56-1d1b3f1b0c01\n\
         east,ARRIVAL,2016-10-04T09:01:00Z,9a3c7a52-6e1f-4d7e-9d56-1d1b3f1b0c01\n\
         east,DEPARTURE,2016-10-04T09:02:00Z,\n\
         east,DEPARTURE,2016-10-04T09:03:00Z,\n",
    )
    .unwrap();
    // Register the lot through a server, then stop it: the import runs on the data dir.
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    let (status, _) = app
        .post(
            "/v1/lots",
            json!({"lot_id": "east", "name": "East", "capacity": 5}),
        )
        .await;
    assert_eq!(status, 201);
    // While the server runs, a direct import is refused with a pointer to --url.
    let (code, out) = parkade(&["import", csv.to_str().unwrap()], dir.path(), None);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--url"), "{out}");
    app.stop().await;
    let (code, out) = parkade(&["import", csv.to_str().unwrap()], dir.path(), None);
    assert_eq!(code, 0, "{out}");
    // Two identical arrivals are two vehicles; the last departure finds the lot empty.
    assert!(out.contains("11 rows"), "{out}");
    let rejected = "5 rejected (duplicate 1, lot_empty 1, unknown_lot 1, unparsable 2)";
    assert!(
        out.contains(&format!("6 accepted, 0 already imported, {rejected}")),
        "{out}"
    );
    let (code, out) = parkade(&["import", csv.to_str().unwrap()], dir.path(), None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("0 accepted, 6 already imported, {rejected}")),
        "{out}"
    );
}

#[actix_web::test]
async fn an_import_through_a_running_server_counts_the_same() {
    let file = birmingham();
    let (accepted, rejected, lots) = expected_counts(&file);
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    let url = app.base.clone();
    let f = file.clone();
    let out = tokio::task::spawn_blocking(move || {
        parkade(
            &["import", f.to_str().unwrap(), "--url", &url],
            Path::new("/nonexistent"),
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.0, 0, "{}", out.1);
    assert!(
        out.1
            .contains(&format!("{accepted} accepted, 0 already imported")),
        "{}",
        out.1
    );
    assert!(
        out.1.contains(&format!("({})", reasons(&rejected))),
        "{}",
        out.1
    );
    let (_, list) = app.get("/v1/lots").await;
    assert_eq!(list["lots"].as_array().unwrap().len(), lots);
    let end = app.log_end().await;
    let url = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        parkade(
            &["import", file.to_str().unwrap(), "--url", &url],
            Path::new("/nonexistent"),
            None,
        )
    })
    .await
    .unwrap();
    assert!(
        out.1
            .contains(&format!("0 accepted, {accepted} already imported")),
        "{}",
        out.1
    );
    assert_eq!(
        app.log_end().await,
        end,
        "re-import through the server appended nothing"
    );
    app.stop().await;
}

#[test]
fn a_row_refused_by_the_first_import_is_refused_again_not_judged_against_todays_state() {
    let dir = common::data_dir();
    let lots = dir.path().join("lots.csv");
    std::fs::write(
        &lots,
        "SystemCodeNumber,Capacity,Occupancy,LastUpdated\nwest,5,0,2016-10-04 07:00:00\n",
    )
    .unwrap();
    let events = dir.path().join("events.csv");
    // The departure comes first, while the lot is empty; the arrival after it is fine.
    std::fs::write(
        &events,
        "lot_id,event_type,timestamp\nwest,DEPARTURE,2016-10-04T08:00:00Z\nwest,ARRIVAL,2016-10-04T08:01:00Z\n",
    )
    .unwrap();
    let (code, out) = parkade(
        &["import", lots.to_str().unwrap(), events.to_str().unwrap()],
        dir.path(),
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 accepted, 0 already imported, 1 rejected (lot_empty 1)"),
        "{out}"
    );
    // Today the lot holds one vehicle, so the departure alone would now be allowed:
    // the re-import must still refuse it and append nothing.
    let (code, out) = parkade(&["import", events.to_str().unwrap()], dir.path(), None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 accepted, 1 already imported, 1 rejected (previously_rejected 1)"),
        "{out}"
    );
}

#[actix_web::test]
async fn a_reimport_through_a_server_appends_nothing_beyond_its_idempotency_window() {
    let dir = common::data_dir();
    let mut cfg = test_config(dir.path(), None);
    // The server remembers only the last two client ids per lot.
    cfg.lots.dedupe_window = 2;
    let app = TestApp::spawn(cfg, Hooks::default()).await;
    let (status, _) = app
        .post(
            "/v1/lots",
            json!({"lot_id": "west", "name": "West", "capacity": 10}),
        )
        .await;
    assert_eq!(status, 201);
    let events = dir.path().join("events.csv");
    let mut text = "lot_id,event_type,timestamp\nwest,DEPARTURE,2016-10-04T08:00:00Z\n".to_owned();
    for minute in 1..=5 {
        text.push_str(&format!("west,ARRIVAL,2016-10-04T08:0{minute}:00Z\n"));
    }
    std::fs::write(&events, text).unwrap();
    let import = |path: PathBuf, url: String| {
        tokio::task::spawn_blocking(move || {
            parkade(
                &["import", path.to_str().unwrap(), "--url", &url],
                Path::new("/nonexistent"),
                None,
            )
        })
    };
    let (code, out) = import(events.clone(), app.base.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("5 accepted, 0 already imported, 1 rejected (lot_empty 1)"),
        "{out}"
    );
    let end = app.log_end().await;
    // The lot now holds five vehicles, so the departure alone would be allowed, and the
    // first arrivals have left the server's window: the server's whole log is asked.
    let (code, out) = import(events, app.base.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 accepted, 5 already imported, 1 rejected (previously_rejected 1)"),
        "{out}"
    );
    assert_eq!(app.log_end().await, end, "the re-import appended nothing");
    let (_, lot) = app.get("/v1/lots/west").await;
    assert_eq!(lot["occupancy"], 5);
    app.stop().await;
}

#[actix_web::test]
async fn known_events_names_the_bad_id_and_finds_only_client_ids() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    let id = "2d1f7a52-8c1e-4a57-9a0e-3f1b6c7d8e90";
    app.post(
        "/v1/lots",
        json!({"lot_id": "east", "name": "East", "capacity": 3}),
    )
    .await;
    let (status, _) = app
        .post(
            "/v1/events",
            json!({"lot_id": "east", "event_type": "ARRIVAL", "event_id": id}),
        )
        .await;
    assert_eq!(status, 200);
    let other = "7b0c2e11-5d3a-4f6e-8b9c-1a2b3c4d5e6f";
    let key = |lot: &str, id: &str| json!({"lot_id": lot, "event_id": id});
    let (status, reply) = app
        .post(
            "/v1/admin/known-events",
            json!({"events": [key("East", id), key("east", other), key("west", id)]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    // Known with its lot only: the same id on another lot is another event.
    assert_eq!(reply["known"], json!([key("East", id)]));
    let (status, reply) = app
        .post(
            "/v1/admin/known-events",
            json!({"events": [key("east", id), key("east", "nope")]}),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["field"], "events[1].event_id", "{reply}");
    app.stop().await;
}

#[actix_web::test]
async fn an_event_id_on_one_lot_does_not_make_an_import_skip_another_lots_row() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    for lot in ["east", "west"] {
        let (status, _) = app
            .post(
                "/v1/lots",
                json!({"lot_id": lot, "name": lot, "capacity": 10}),
            )
            .await;
        assert_eq!(status, 201);
    }
    // A gate of lot east posts events with the ids west's rows carry.
    let (x, y) = (
        "0d7c51e4-34a1-4f55-9a3f-5d3f9f0f1a01",
        "0d7c51e4-34a1-4f55-9a3f-5d3f9f0f1a02",
    );
    for id in [x, y] {
        let (status, r) = app
            .post(
                "/v1/events",
                json!({"lot_id": "east", "event_type": "ARRIVAL", "event_id": id}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
    }
    let file = |name: &str, id: &str, minute: u32| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("lot_id,event_type,timestamp,event_id\nwest,ARRIVAL,2016-10-04T08:0{minute}:00Z,{id}\n"),
        )
        .unwrap();
        path
    };
    // Through the server (its known-events)...
    let through = file("x.csv", x, 1);
    let url = app.base.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        parkade(
            &["import", through.to_str().unwrap(), "--url", &url],
            Path::new("/nonexistent"),
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 accepted, 0 already imported"), "{out}");
    app.stop().await;
    // ...and offline, on the data directory (the log read by the import itself).
    let offline = file("y.csv", y, 2);
    let (code, out) = parkade(&["import", offline.to_str().unwrap()], dir.path(), None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 accepted, 0 already imported"), "{out}");
}
