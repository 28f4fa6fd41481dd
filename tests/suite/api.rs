//! The HTTP API against the real application and a real PostgreSQL, called as a client
//! would call it.

use parkade::api::wire;
use parkade::app::Hooks;
use serde_json::{json, Value};

use crate::common;
use common::{register, test_config, TestApp, TestDb};

fn event(lot: &str, kind: &str) -> Value {
    json!({"lot_id": lot, "event_type": kind})
}

#[actix_web::test]
async fn events_flow_from_http_to_the_lot_and_into_postgres() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), Some(&db)), Hooks::default()).await;
    register(&app, " North-1 ", 3).await;

    let ack = app
        .send_event(&common::event("NORTH-1", "arrival"))
        .await
        .unwrap();
    assert_eq!(ack.status, wire::AckStatus::Accepted);
    assert_eq!((ack.offset, ack.lot.occupancy), (1, 1));

    let mut at_ten = common::event("north-1", "ARRIVAL");
    at_ten.stamp.timestamp = Some(json!("2026-11-27T10:00:00+01:00"));
    let ack = app.send_event(&at_ten).await.unwrap();
    let updated = ack.lot.updated_at.expect("an event time").to_datetime();
    assert_eq!(
        updated,
        "2026-11-27T09:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );

    let lot = app.lot("%20NORTH-1").await.unwrap();
    assert_eq!(
        (lot.lot_id.as_str(), lot.occupancy, lot.free, lot.offset),
        ("north-1", 2, 1, Some(2))
    );
    assert_eq!(app.lots().await.unwrap().lots.len(), 1);

    let counted = wire::CountIn {
        count: 0,
        ..Default::default()
    };
    let ack = app.count("north-1", &counted).await.unwrap();
    assert_eq!(ack.lot.occupancy, 0);

    app.wait_projection_caught_up().await;
    let rows = db
        .query("SELECT lot_id, name, capacity::bigint, occupancy::bigint, last_offset FROM current_lot_occupancy")
        .await;
    assert_eq!(rows, vec![vec!["north-1", "Lot  North-1", "3", "0", "3"]]);
    app.stop().await;
}

type Case = (
    &'static str,
    Option<&'static str>,
    String,
    u16,
    Option<&'static str>,
);

#[actix_web::test]
async fn bad_input_gets_a_specific_error_and_appends_nothing() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    register(&app, "south", 1).await;
    let (status, _) = app.post("/v1/events", event("south", "ARRIVAL")).await;
    assert_eq!(status, 200);
    let end = app.log_end().await;

    // (what, content type, body, expected status, field named in the error)
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Some("application/json"),
            "{\"lot_id\": ".into(),
            400,
            None,
        ),
        (
            "missing field",
            Some("application/json"),
            json!({"lot_id": "south"}).to_string(),
            400,
            Some("event_type"),
        ),
        (
            "wrong type",
            Some("application/json"),
            json!({"lot_id": 7, "event_type": "ARRIVAL"}).to_string(),
            400,
            Some("lot_id"),
        ),
        (
            "bad event type",
            Some("application/json"),
            json!({"lot_id": "south", "event_type": "PARK"}).to_string(),
            400,
            Some("event_type"),
        ),
        (
            "bad timestamp",
            Some("application/json"),
            json!({"lot_id": "south", "event_type": "DEPARTURE", "timestamp": "noon"}).to_string(),
            400,
            Some("timestamp"),
        ),
        (
            "unknown field",
            Some("application/json"),
            json!({"lot_id": "south", "event_type": "DEPARTURE", "when": 1}).to_string(),
            400,
            Some("when"),
        ),
        (
            "unknown lot",
            Some("application/json"),
            event("nowhere", "ARRIVAL").to_string(),
            404,
            None,
        ),
        (
            "full lot",
            Some("application/json"),
            event("south", "ARRIVAL").to_string(),
            409,
            None,
        ),
        (
            "no content type",
            None,
            event("south", "DEPARTURE").to_string(),
            415,
            None,
        ),
        (
            "wrong content type",
            Some("text/plain"),
            event("south", "DEPARTURE").to_string(),
            415,
            None,
        ),
        (
            "body too large",
            Some("application/json"),
            format!(
                "[{}]",
                vec![event("south", "DEPARTURE").to_string(); 2000].join(",")
            ),
            413,
            None,
        ),
        (
            "too many events",
            Some("application/json"),
            format!(
                "[{}]",
                vec![r#"{"lot_id":"south","event_type":"DEPARTURE"}"#; 501].join(",")
            ),
            413,
            None,
        ),
        (
            "empty array",
            Some("application/json"),
            "[]".into(),
            400,
            None,
        ),
    ];
    for (what, ct, body, want, field) in cases {
        let (status, reply) = app.post_raw("/v1/events", ct, body).await;
        assert_eq!(status, want, "{what}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {reply}"
        );
        if let Some(f) = field {
            assert_eq!(reply["field"], f, "{what}: {reply}");
        }
    }
    let (status, reply) = app.post("/v1/events", event("south", "ARRIVAL")).await;
    assert_eq!((status, reply["error"].as_str()), (409, Some("lot_full")));
    assert_eq!(
        reply["lot"]["occupancy"], 1,
        "a 409 shows the lot's state: {reply}"
    );

    let lot_cases = vec![
        (
            "/v1/lots",
            json!({"lot_id": "x", "name": "X", "capacity": 0}),
            400,
            Some("capacity"),
        ),
        (
            "/v1/lots",
            json!({"lot_id": "x", "name": "", "capacity": 5}),
            400,
            Some("name"),
        ),
        (
            "/v1/lots",
            json!({"lot_id": "a b/c", "name": "X", "capacity": 5}),
            400,
            Some("lot_id"),
        ),
        (
            "/v1/lots",
            json!({"lot_id": "south", "name": "Other", "capacity": 5}),
            409,
            None,
        ),
        ("/v1/lots/south/count", json!({"count": 2}), 409, None),
        (
            "/v1/lots/south/count",
            json!({"count": -1}),
            400,
            Some("count"),
        ),
        ("/v1/lots/nowhere/count", json!({"count": 0}), 404, None),
    ];
    for (path, body, want, field) in lot_cases {
        let (status, reply) = app.post(path, body.clone()).await;
        assert_eq!(status, want, "{path} {body}: {reply}");
        if let Some(f) = field {
            assert_eq!(reply["field"], f, "{path} {body}: {reply}");
        }
    }
    let (status, reply) = app.patch("/v1/lots/south", json!({"capacity": 0})).await;
    assert_eq!(status, 400, "{reply}");
    let (status, _) = app.get("/v1/lots/nowhere").await;
    assert_eq!(status, 404);

    assert_eq!(
        app.log_end().await,
        end,
        "rejected requests appended nothing"
    );
    assert_eq!(app.lot("south").await.unwrap().occupancy, 1);
    app.stop().await;
}

#[actix_web::test]
async fn arrays_and_ndjson_answer_every_event_in_order() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    register(&app, "a", 2).await;
    register(&app, "b", 5).await;
    let batch = json!([
        event("a", "ARRIVAL"),
        event("b", "ARRIVAL"),
        event("a", "ARRIVAL"),
        event("a", "ARRIVAL"),
        {"lot_id": "b"},
        event("zzz", "ARRIVAL"),
        event("b", "DEPARTURE"),
        event("b", "DEPARTURE"),
    ]);
    // Sent as raw JSON: one of the events is not a valid EventIn.
    let (status, reply) = app.post("/v1/events", batch).await;
    assert_eq!(status, 200, "{reply}");
    let reply: wire::BatchReply = serde_json::from_value(reply).unwrap();
    // Each event's outcome, in order: "" for accepted, the code of a rejection.
    let codes: Vec<&str> = reply
        .results
        .iter()
        .map(|r| match r {
            wire::BatchItem::Accepted { .. } => "",
            wire::BatchItem::Rejected { code, .. } => code.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "",
            "",
            "",
            "lot_full",
            "invalid_event",
            "lot_not_found",
            "",
            "lot_empty"
        ]
    );
    assert_eq!((reply.accepted, reply.rejected), (4, 4));

    // Epoch milliseconds, an hour ago (one request spans at most 31 days of event time).
    let ms = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let nd = format!("{{\"lot_id\":\"a\",\"event_type\":\"departure\"}}\n\n{{\"lot_id\":\"b\",\"event_type\":\"arrival\",\"timestamp\":{ms}}}\nnot json\n");
    let (status, reply) = app
        .post_raw("/v1/events", Some("application/x-ndjson"), nd)
        .await;
    assert_eq!(status, 200, "{reply}");
    let reply: wire::BatchReply = serde_json::from_value(reply).unwrap();
    assert_eq!((reply.accepted, reply.rejected), (2, 1));
    let (a, b) = (app.lot("a").await.unwrap(), app.lot("b").await.unwrap());
    assert_eq!((a.occupancy, b.occupancy), (1, 1));
    assert_eq!(app.log_end().await, 2 + 4 + 2);
    app.stop().await;
}

#[actix_web::test]
async fn a_retry_with_the_same_event_id_is_acknowledged_once_also_after_a_restart() {
    let dir = common::data_dir();
    let with_id = |id: &str| {
        let mut e = common::event("c", "ARRIVAL");
        e.stamp.event_id = Some(id.to_owned());
        e
    };
    let retry = with_id(&uuid::Uuid::new_v4().to_string());

    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    register(&app, "c", 10).await;
    let first = app.send_event(&retry).await.unwrap();
    assert_eq!(first.status, wire::AckStatus::Accepted);
    let again = app.send_event(&retry).await.unwrap();
    assert_eq!(
        (again.status, again.offset),
        (wire::AckStatus::Duplicate, first.offset)
    );
    // In a batch, a repeat of an id in the same request is a duplicate too.
    let same = with_id(&uuid::Uuid::new_v4().to_string());
    let batch = app.send_events(&[same.clone(), same]).await.unwrap();
    assert!(
        matches!(batch.results[1], wire::BatchItem::Duplicate { .. }),
        "{batch:?}"
    );
    app.stop().await;

    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    let end = app.log_end().await;
    let after = app.send_event(&retry).await.unwrap();
    assert_eq!(
        (after.status, after.offset),
        (wire::AckStatus::Duplicate, first.offset)
    );
    assert_eq!(app.log_end().await, end);
    assert_eq!(app.lot("c").await.unwrap().occupancy, 2);
    app.stop().await;
}

#[actix_web::test]
async fn a_lot_without_an_event_for_the_stale_time_is_marked_stale_with_its_last_event() {
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    config.lots.stale_after_secs = 600;
    let app = TestApp::spawn(config, Hooks::default()).await;
    // The gate's last event was an hour ago.
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut quiet = common::lot("quiet", 10);
    quiet.stamp.timestamp = Some(json!(hour_ago.to_rfc3339()));
    app.register_lot(&quiet).await.unwrap();
    register(&app, "busy", 10).await;

    let lot = app.lot("quiet").await.unwrap();
    assert_eq!(lot.stale, Some(true), "{lot:?}");
    let last = lot
        .updated_at
        .expect("the time of its last event")
        .to_datetime();
    assert_eq!(last.timestamp_millis(), hour_ago.timestamp_millis());
    assert_eq!(app.lot("busy").await.unwrap().stale, Some(false));
    let listed: Vec<(String, Option<bool>)> = app
        .lots()
        .await
        .unwrap()
        .lots
        .into_iter()
        .map(|l| (l.lot_id, l.stale))
        .collect();
    assert_eq!(
        listed,
        [("busy".into(), Some(false)), ("quiet".into(), Some(true))]
    );

    // The websocket's snapshot says so too, with the rule for what comes after it.
    let mut ws = awc::Client::new()
        .ws(app.url("/v1/ws?lots=quiet"))
        .connect()
        .await
        .expect("websocket")
        .1;
    let snapshot = loop {
        use futures_util::StreamExt;
        match ws.next().await.expect("a frame").expect("a valid frame") {
            awc::ws::Frame::Text(t) => break serde_json::from_slice::<Value>(&t).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(snapshot["stale_after_secs"], 600, "{snapshot}");
    assert_eq!(snapshot["lots"][0]["stale"], true, "{snapshot}");
    {
        use futures_util::SinkExt;
        ws.send(awc::ws::Message::Close(None)).await.unwrap();
    }

    // An event makes it fresh again; a command's reply does not judge staleness.
    let ack = app
        .send_event(&common::event("quiet", "ARRIVAL"))
        .await
        .unwrap();
    assert_eq!(ack.lot.stale, None);
    assert_eq!(app.lot("quiet").await.unwrap().stale, Some(false));
    app.stop().await;
}
