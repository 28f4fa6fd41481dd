//! `GET /v1/ws` against the real server: snapshot then changes, resume from an offset
//! with no gap and no duplicate, and a slow consumer closed while ingestion goes on.

use std::time::Duration;

use awc::ws::Frame;
use futures_util::{SinkExt, StreamExt};
use parkade::api::wire;
use parkade::app::Hooks;
use parkade::live::Message;
use serde_json::{json, Value};

use crate::common;
use common::{arrive, test_config, TestApp};

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

async fn connect(app: &TestApp, query: &str) -> Socket {
    let url = format!("{}/v1/ws{query}", app.base.replace("http://", "ws://"));
    let (_, socket) = awc::Client::new()
        .ws(url)
        .max_frame_size(1 << 20)
        .connect()
        .await
        .expect("websocket handshake");
    socket
}

/// The next text message as JSON (answering pings on the way).
async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a valid frame");
        match frame {
            Frame::Text(b) => return serde_json::from_slice(&b).expect("JSON"),
            Frame::Ping(p) => ws.send(awc::ws::Message::Pong(p)).await.unwrap(),
            Frame::Close(r) => panic!("closed: {r:?}"),
            _ => {}
        }
    }
}

/// The next message, typed.
async fn next_message(ws: &mut Socket) -> Message<'static> {
    let v = next_json(ws).await;
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not a message ({e}): {v}"))
}

/// A change's offset, or the message that came instead.
fn change_offset(m: &Message) -> u64 {
    match m {
        Message::Change { offset, .. } => *offset,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// Say goodbye, so the server's graceful stop does not wait for the socket.
async fn close(mut ws: Socket) {
    let _ = ws.send(awc::ws::Message::Close(None)).await;
}

async fn setup() -> (tempfile::TempDir, TestApp) {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    for lot in ["a", "b"] {
        let (status, _) = app
            .post(
                "/v1/lots",
                json!({"lot_id": lot, "name": lot, "capacity": 50}),
            )
            .await;
        assert_eq!(status, 201);
    }
    (dir, app)
}

#[actix_web::test]
async fn a_subscriber_gets_a_snapshot_then_one_message_per_change_of_its_lots() {
    let (_dir, app) = setup().await;
    arrive(&app, "a").await;
    // The fan-out follows the log a moment behind: reconnect until the snapshot is at
    // the end (a snapshot is consistent at whatever offset it names).
    let end = app.log_end().await;
    let snap = common::eventually(
        Duration::from_secs(20),
        "a snapshot at the log's end",
        || async {
            let mut ws = connect(&app, "?lots=a").await;
            match next_message(&mut ws).await {
                Message::Snapshot {
                    offset,
                    next_offset,
                    lots,
                    ..
                } if next_offset == end => return Ok((ws, offset, lots)),
                Message::Snapshot { .. } => {}
                other => panic!("a snapshot comes first, not {other:?}"),
            }
            close(ws).await;
            Err("a snapshot behind the log's end".to_owned())
        },
    )
    .await;
    let (mut ws, offset, lots) = snap;
    assert_eq!(offset, Some(end - 1));
    let status = app.projections().await.unwrap();
    assert_eq!(status.live.subscribers, 1, "{status:?}");
    let lots: Vec<wire::Lot> = serde_json::from_value(lots.into_owned().into()).unwrap();
    assert_eq!(lots.len(), 1, "{lots:?}");
    assert_eq!((lots[0].lot_id.as_str(), lots[0].occupancy), ("a", 1));

    let first = arrive(&app, "a").await;
    arrive(&app, "b").await;
    let last = arrive(&app, "a").await;
    let m1 = next_message(&mut ws).await;
    let m2 = next_message(&mut ws).await;
    let Message::Change {
        offset,
        occupancy,
        free,
        ..
    } = m1
    else {
        panic!("expected a change, got {m1:?}")
    };
    assert_eq!((offset, occupancy, free), (first, 2, 48));
    // The change of lot b was not sent to this subscriber.
    let Message::Change {
        offset,
        occupancy,
        lot_id,
        ..
    } = m2
    else {
        panic!("expected a change, got {m2:?}")
    };
    assert_eq!((offset, occupancy, lot_id.as_ref()), (last, 3, "a"));
    // A ping is answered with its payload.
    ws.send(awc::ws::Message::Ping("hello".into()))
        .await
        .unwrap();
    let pong = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Frame::Pong(p)))) => break p,
            Ok(Some(Ok(Frame::Ping(_)))) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    };
    assert_eq!(&pong[..], b"hello");
    close(ws).await;
    app.stop().await;
}

#[actix_web::test]
async fn resuming_from_far_back_reads_the_log_then_joins_the_live_stream_without_gap() {
    let (_dir, app) = setup().await;
    // More than one catch-up batch (4,096) behind, so the session reads the log at the
    // client's pace before it joins.
    let mut expected = Vec::new();
    for _ in 0..25 {
        let batch: Vec<Value> = (0..500)
            .map(|i| {
                let lot = ["a", "b"][i % 2];
                let kind = if i % 4 < 2 { "ARRIVAL" } else { "DEPARTURE" };
                json!({"lot_id": lot, "event_type": kind})
            })
            .collect();
        let (status, r) = app.post("/v1/events", json!(batch)).await;
        assert_eq!(status, 200, "{r}");
        let results = r["results"].as_array().unwrap();
        for (i, res) in results.iter().enumerate() {
            let o = res["offset"].as_u64().expect("accepted");
            if i % 2 == 1 && o > 100 {
                expected.push(o);
            }
        }
    }
    expected.sort_unstable();
    let mut ws = connect(&app, "?from_offset=100&lots=b").await;
    // Events keep arriving while the subscriber catches up.
    let mut offsets = Vec::new();
    let mut lives = 0;
    while offsets.len() < expected.len() {
        if offsets.len() % 1_000 == 999 {
            expected.push(arrive(&app, "b").await);
            arrive(&app, "a").await;
        }
        match next_message(&mut ws).await {
            Message::Live { .. } => lives += 1,
            Message::Change { lot_id, offset, .. } if lot_id == "b" => offsets.push(offset),
            other => panic!("a change of lot b or the live marker, not {other:?}"),
        }
    }
    assert!(expected.len() > 6_000, "{}", expected.len());
    assert_eq!(lives, 1, "one live marker");
    assert!(offsets == expected, "gap or duplicate");
    close(ws).await;
    app.stop().await;
}

#[actix_web::test]
async fn stopping_the_service_closes_its_websockets_with_going_away() {
    let dir = common::data_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(common::binary())
        .arg("serve")
        .env("PARKADE_DATA_DIR", dir.path())
        .env("PARKADE_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env_remove("PARKADE_DATABASE_URL")
        .spawn()
        .expect("start parkade serve");
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let mut ws = common::eventually(
        Duration::from_secs(30),
        "the server to accept a websocket",
        || async {
            awc::Client::new()
                .ws(url.as_str())
                .connect()
                .await
                .map(|(_, ws)| ws)
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert!(matches!(
        next_message(&mut ws).await,
        Message::Snapshot { .. }
    ));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The subscriber is told, and the service does not wait out its 30 s graceful
    // stop for the open socket.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Frame::Close(r)))) => break r.map(|r| u16::from(r.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    let exit = common::eventually(
        Duration::from_secs(20),
        "parkade to stop after SIGTERM with a websocket open",
        || {
            let exited = child.try_wait().unwrap();
            async move { exited.ok_or_else(|| "still running".to_owned()) }
        },
    )
    .await;
    assert!(exit.success(), "{exit:?}");
}

#[actix_web::test]
async fn resuming_from_an_offset_gets_exactly_the_missing_changes() {
    let (_dir, app) = setup().await;
    for i in 0..30 {
        arrive(&app, ["a", "b"][i % 2]).await;
    }
    let end = app.log_end().await;
    let mut ws = connect(&app, "?from_offset=5").await;
    // Changes from the log, a "live" marker where the fan-out takes over, then changes
    // from the fan-out: together every offset after 5, once.
    let mut offsets = Vec::new();
    let mut live_at = None;
    while live_at.is_none() || offsets.last() != Some(&(end - 1)) {
        let m = next_message(&mut ws).await;
        if let Message::Live { next_offset } = m {
            assert_eq!(live_at, None, "one live marker");
            live_at = Some(next_offset);
            assert_eq!(next_offset, offsets.last().map_or(6, |o| o + 1), "{m:?}");
            continue;
        }
        offsets.push(change_offset(&m));
    }
    assert!(live_at.is_some());
    assert_eq!(offsets, (6..end).collect::<Vec<_>>());
    let next = arrive(&app, "b").await;
    assert_eq!(change_offset(&next_message(&mut ws).await), next);
    close(ws).await;

    // An offset the log does not hold is refused at the handshake.
    let url = format!(
        "{}/v1/ws?from_offset=999999",
        app.base.replace("http://", "ws://")
    );
    let err = awc::Client::new()
        .ws(url)
        .connect()
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("400") || format!("{err:?}").contains("400"),
        "{err:?}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_slow_consumer_is_closed_while_ingestion_goes_on() {
    let dir = common::data_dir();
    let mut cfg = test_config(dir.path(), None);
    cfg.live.buffer_messages = 64;
    let app = TestApp::spawn(cfg, Hooks::default()).await;
    let (status, _) = app
        .post(
            "/v1/lots",
            json!({"lot_id": "gate", "name": "Gate", "capacity": 10}),
        )
        .await;
    assert_eq!(status, 201);
    let mut slow = connect(&app, "").await;
    assert!(matches!(
        next_message(&mut slow).await,
        Message::Snapshot { .. }
    ));
    // The subscriber now stops reading. 120,000 events (about 20 MB of messages, more
    // than the socket buffers hold) are all accepted.
    let started = std::time::Instant::now();
    let mut accepted = 0;
    for _ in 0..240 {
        let batch: Vec<Value> = (0..500)
            .map(|i| json!({"lot_id": "gate", "event_type": if i % 2 == 0 { "ARRIVAL" } else { "DEPARTURE" }}))
            .collect();
        let (status, r) = app.post("/v1/events", json!(batch)).await;
        assert_eq!(status, 200, "{r}");
        accepted += r["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 120_000);
    println!(
        "120,000 events accepted in {:.2} s with a stalled subscriber",
        started.elapsed().as_secs_f64()
    );
    // Reading again: what was buffered, then a close with code 4008.
    let mut texts = 0;
    let code = loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), slow.next())
            .await
            .expect("the server closes the slow consumer");
        match frame {
            Some(Ok(Frame::Text(_))) => texts += 1,
            Some(Ok(Frame::Close(reason))) => break reason.map(|r| u16::from(r.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("protocol error after {texts} messages: {e}"),
            None => panic!("the connection ended without a close frame after {texts} messages"),
        }
    };
    assert_eq!(code, Some(4008), "after {texts} messages");
    assert!(texts < 120_000, "{texts}");
    // Once the fan-out has caught up, a new subscriber's snapshot is the end of the log,
    // and it gets the next change.
    let end = app.log_end().await;
    let mut fresh = common::eventually(
        Duration::from_secs(20),
        "the fan-out to catch up",
        || async {
            let mut ws = connect(&app, "").await;
            let snap = next_message(&mut ws).await;
            if matches!(snap, Message::Snapshot { next_offset, .. } if next_offset == end) {
                return Ok(ws);
            }
            close(ws).await;
            Err(format!("{snap:?}"))
        },
    )
    .await;
    let (status, r) = app
        .post(
            "/v1/events",
            json!({"lot_id": "gate", "event_type": "ARRIVAL"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(change_offset(&next_message(&mut fresh).await), end);
    close(fresh).await;
    app.stop().await;
}

#[actix_web::test]
async fn a_ping_flood_from_a_client_that_never_reads_is_bounded_and_closed() {
    let (_dir, app) = setup().await;
    let mut ws = connect(&app, "").await;
    assert!(matches!(
        next_message(&mut ws).await,
        Message::Snapshot { .. }
    ));
    // Far more pongs than an outbox may hold (8 MiB), while reading nothing.
    let payload = bytes::Bytes::from(vec![b'p'; 125]);
    let pings = 150_000;
    let mut sent = 0;
    for _ in 0..pings {
        let send = ws.send(awc::ws::Message::Ping(payload.clone()));
        match tokio::time::timeout(Duration::from_secs(2), send).await {
            Ok(Ok(())) => sent += 1,
            // The server stopped reading (its outbox for us is full) or closed.
            _ => break,
        }
    }
    let mut pongs = 0u64;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Frame::Pong(_)))) => pongs += 1,
            Ok(Some(Ok(Frame::Close(r)))) => break r.map(|r| u16::from(r.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "expected a 4008 close after {pongs} pongs ({sent} pings sent), got {other:?}"
            ),
        }
    };
    assert_eq!(close, Some(4008), "{pongs} pongs for {sent} pings");
    assert!(
        pongs < pings,
        "every ping was answered: the server held {pongs} pongs for a client that did not read"
    );
    app.stop().await;
}

#[actix_web::test]
async fn only_this_servers_pages_and_the_cors_origins_may_open_the_live_feed() {
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    config.auth.cors_origins = vec!["https://maps.campus.example".into()];
    let app = TestApp::spawn(config, Hooks::default()).await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    let url = format!("{}/v1/ws", app.base.replace("http://", "ws://"));
    let handshake = |origin: Option<String>| {
        let mut req = awc::Client::new().ws(url.clone());
        if let Some(o) = origin {
            req = req.origin(o.as_str());
        }
        async move {
            match req.connect().await {
                Ok((resp, socket)) => {
                    close(socket).await;
                    resp.status().as_u16()
                }
                Err(awc::error::WsClientError::InvalidResponseStatus(s)) => s.as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    for (origin, want) in [
        (None, 101),
        (Some(format!("http://127.0.0.1:{port}")), 101),
        (Some("https://maps.campus.example".into()), 101),
        (Some("https://evil.example".into()), 403),
        (Some(format!("http://127.0.0.1.evil.example:{port}")), 403),
        (
            Some(format!(
                "http://127.0.0.1:{}",
                port.parse::<u16>().unwrap() ^ 1
            )),
            403,
        ),
        (Some("null".into()), 403),
    ] {
        assert_eq!(handshake(origin.clone()).await, want, "Origin {origin:?}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn catch_ups_from_far_back_are_bounded_in_number_and_others_keep_their_place() {
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    config.live.max_catch_ups = 1;
    config.limits.max_batch_events = 10_000;
    config.limits.max_body_bytes = 1 << 20;
    let app = TestApp::spawn(config, Hooks::default()).await;
    common::register(&app, "a", 50).await;
    // Far more changes behind than the connection's buffers hold, so a client that
    // does not read keeps its catch-up reading.
    for _ in 0..20 {
        let batch: Vec<Value> = (0..10_000)
            .map(|i| {
                let kind = if i % 2 == 0 { "ARRIVAL" } else { "DEPARTURE" };
                json!({"lot_id": "a", "event_type": kind})
            })
            .collect();
        let (status, r) = app.post("/v1/events", json!(batch)).await;
        assert_eq!(status, 200, "{r}");
    }
    let url = |q: &str| format!("{}/v1/ws{q}", app.base.replace("http://", "ws://"));
    let status_of = |q: &'static str| {
        let u = url(q);
        async move {
            match awc::Client::new().ws(u).connect().await {
                Ok((resp, socket)) => (resp.status().as_u16(), Some(socket)),
                Err(awc::error::WsClientError::InvalidResponseStatus(s)) => (s.as_u16(), None),
                Err(e) => panic!("{e}"),
            }
        }
    };
    // A catch-up whose client does not read holds the one place...
    let (s, first) = status_of("?from_offset=0").await;
    assert_eq!(s, 101);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a second gets 503; a snapshot subscriber is served.
    let (s, _) = status_of("?from_offset=0").await;
    assert_eq!(s, 503);
    let mut live = connect(&app, "").await;
    assert!(matches!(
        next_message(&mut live).await,
        Message::Snapshot { .. }
    ));
    // Once the first has joined or been closed, its place is free again.
    drop(first);
    common::eventually(
        Duration::from_secs(20),
        "the catch-up's place back",
        || async {
            match status_of("?from_offset=5000").await {
                (101, Some(s)) => {
                    close(s).await;
                    Ok(())
                }
                (s, _) => Err(format!("{s}")),
            }
        },
    )
    .await;
    close(live).await;
    app.stop().await;
}

#[actix_web::test]
async fn a_client_that_breaks_the_protocol_is_closed_in_the_servers_words() {
    let (_dir, app) = setup().await;
    let mut ws = connect(&app, "").await;
    assert!(matches!(
        next_message(&mut ws).await,
        Message::Snapshot { .. }
    ));
    // A text frame past the server's frame limit (64 KiB).
    ws.send(awc::ws::Message::Text("x".repeat(100_000).into()))
        .await
        .unwrap();
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Frame::Close(r)))) => break r.expect("a close reason"),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(u16::from(reason.code), 1002);
    let words = reason.description.unwrap_or_default();
    assert!(
        words.starts_with("the client broke the websocket protocol"),
        "{words}"
    );
    assert!(
        !words.to_ascii_lowercase().contains("payload reached"),
        "{words}"
    );
    app.stop().await;
}
