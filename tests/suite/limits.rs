//! Every configurable limit crossed against the real server: the client past it gets a
//! clear, specific error while other clients keep being served. Connections, websocket
//! subscribers and their outbox and replay reach, the time span of one request, the
//! history range, `known-events` under the body limit, the ingest rate per token, and
//! CORS.

use std::io::Write;
use std::time::Duration;

use awc::ws::Frame;
use futures_util::{SinkExt, StreamExt};
use parkade::api::limits;
use parkade::app::Hooks;
use parkade::live::Message;
use parkade::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;
use common::{register, test_config, TestApp};

fn port(app: &TestApp) -> u16 {
    app.base.rsplit(':').next().unwrap().parse().unwrap()
}

/// A connection to the app from source address `ip` (any of 127.0.0.0/8).
async fn connect_from(ip: &str, port: u16) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock.connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap()
}

/// `GET path` on an open connection: status, head (lower case) and body.
async fn get_on(s: &mut TcpStream, path: &str) -> (u16, String, Value) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_reply(s).await
}

/// The next reply on a connection: status, head (lower case) and body as JSON.
async fn read_reply(s: &mut TcpStream) -> (u16, String, Value) {
    let (status, head, body) = read_raw_reply(s).await;
    (
        status,
        head,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// The next reply on a connection: status, head (lower case) and body's bytes.
async fn read_raw_reply(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a reply within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before a reply: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() >= at + 4 + len {
            let status = head[9..12].parse().unwrap();
            return (status, head, buf[at + 4..at + 4 + len].to_vec());
        }
    }
}

/// True once the server has closed the connection.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn spawn(config: Config) -> TestApp {
    TestApp::spawn(config, Hooks::default()).await
}

#[actix_web::test]
async fn connections_past_the_cap_of_one_address_get_429_and_others_are_served() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.limits.max_connections_per_address = 3;
    let app = spawn(c).await;
    let p = port(&app);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.2", p).await;
        assert_eq!(get_on(&mut s, "/healthz").await.0, 200);
        held.push(s);
    }
    let mut fourth = connect_from("127.0.0.2", p).await;
    let (status, head, body) = get_on(&mut fourth, "/healthz").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "too_many_connections", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_connections_per_address"),
        "{body}"
    );
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        closed(&mut fourth).await,
        "the refused connection is closed"
    );
    // Another address is served meanwhile, and so is a held connection.
    let mut other = connect_from("127.0.0.3", p).await;
    assert_eq!(get_on(&mut other, "/v1/lots").await.0, 200);
    assert_eq!(get_on(&mut held[0], "/v1/lots").await.0, 200);
    // A place given back is taken again.
    drop(held.pop());
    common::eventually(Duration::from_secs(5), "a freed place", || async {
        let mut s = connect_from("127.0.0.2", p).await;
        match get_on(&mut s, "/healthz").await {
            (200, _, _) => Ok(()),
            (status, _, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    drop((held, other));
    app.stop().await;
}

#[actix_web::test]
async fn connections_past_the_total_cap_get_503() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.limits.max_connections = 4;
    let app = spawn(c).await;
    let p = port(&app);
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = connect_from(&format!("127.0.0.{}", 10 + i), p).await;
        assert_eq!(get_on(&mut s, "/healthz").await.0, 200);
        held.push(s);
    }
    let mut fifth = connect_from("127.0.0.20", p).await;
    let (status, _, body) = get_on(&mut fifth, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "too_many_connections");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("[limits] max_connections"));
    assert!(closed(&mut fifth).await);
    // The held ones are still served.
    assert_eq!(get_on(&mut held[3], "/v1/lots").await.0, 200);
    drop(held);
    common::eventually(Duration::from_secs(5), "places given back", || async {
        let mut s = connect_from("127.0.0.20", p).await;
        match get_on(&mut s, "/healthz").await {
            (200, _, _) => Ok(()),
            (status, _, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    app.stop().await;
}

#[actix_web::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let dir = common::data_dir();
    let app = spawn(test_config(dir.path(), None)).await;
    let mut s = connect_from("127.0.0.4", port(&app)).await;
    let started = std::time::Instant::now();
    let mut b = [0u8; 256];
    let gone = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "an idle connection is closed within 15 s");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.get("/v1/lots").await.0, 200, "others are served");
    app.stop().await;
}

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

async fn ws(app: &TestApp, query: &str) -> Result<Socket, (u16, Value)> {
    let url = format!("{}/v1/ws{query}", app.base.replace("http://", "ws://"));
    match awc::Client::new().ws(url).connect().await {
        Ok((_, s)) => Ok(s),
        Err(awc::error::WsClientError::InvalidResponseStatus(s)) => Err((s.as_u16(), Value::Null)),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// The error a refused websocket handshake answers, read as a plain request.
async fn ws_refusal(app: &TestApp, query: &str) -> (u16, Value) {
    common::request(
        awc::Client::new()
            .get(app.url(&format!("/v1/ws{query}")))
            .insert_header(("connection", "upgrade"))
            .insert_header(("upgrade", "websocket"))
            .insert_header(("sec-websocket-version", "13"))
            .insert_header(("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")),
        None,
        None,
    )
    .await
}

async fn close_frame(ws: &mut Socket) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Frame::Close(r)))) => return r.map(|r| u16::from(r.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[actix_web::test]
async fn websocket_subscribers_past_the_cap_get_503_until_one_leaves() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.live.max_subscribers = 2;
    let app = spawn(c).await;
    register(&app, "north", 10).await;
    let mut a = ws(&app, "").await.expect("first subscriber");
    let b = ws(&app, "").await.expect("second subscriber");
    assert_eq!(ws(&app, "").await.err().map(|e| e.0), Some(503));
    let (status, body) = ws_refusal(&app, "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "too_many_subscribers", "{body}");
    // Plain requests go on.
    assert_eq!(app.get("/v1/lots/north").await.0, 200);
    a.send(awc::ws::Message::Close(None)).await.unwrap();
    assert_eq!(close_frame(&mut a).await, Some(1000));
    let c = common::eventually(
        Duration::from_secs(5),
        "a freed subscriber place",
        || async { ws(&app, "").await.map_err(|(status, _)| status.to_string()) },
    )
    .await;
    for mut s in [b, c] {
        let _ = s.send(awc::ws::Message::Close(None)).await;
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_snapshot_larger_than_the_outbox_closes_that_subscriber_only() {
    let dir = common::data_dir();
    // First the snapshots' sizes on the default outbox: one lot's and all four lots'.
    let app = spawn(test_config(dir.path(), None)).await;
    for lot in ["north", "south", "east", "west"] {
        register(&app, lot, 10).await;
    }
    let mut sizes = Vec::new();
    for query in ["?lots=north", ""] {
        let mut s = ws(&app, query).await.expect("handshake");
        match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
            Ok(Some(Ok(Frame::Text(t)))) => sizes.push(t.len()),
            other => panic!("expected the snapshot: {other:?}"),
        }
        let _ = s.send(awc::ws::Message::Close(None)).await;
    }
    app.stop().await;
    let (one_lot, all_lots) = (sizes[0], sizes[1]);
    assert!(all_lots > one_lot + 100, "{sizes:?}");
    // Then an outbox that holds one lot's snapshot but not all four.
    let mut c = test_config(dir.path(), None);
    c.live.outbox_bytes = (one_lot + all_lots) / 2;
    let app = spawn(c).await;
    let mut s = ws(&app, "").await.expect("handshake");
    assert_eq!(close_frame(&mut s).await, Some(4008), "slow consumer close");
    let mut one = ws(&app, "?lots=north").await.expect("handshake");
    match tokio::time::timeout(Duration::from_secs(5), one.next()).await {
        Ok(Some(Ok(Frame::Text(t)))) => {
            let m: Message = serde_json::from_slice(&t).unwrap();
            assert!(matches!(m, Message::Snapshot { .. }), "{m:?}");
        }
        other => panic!("expected the snapshot: {other:?}"),
    }
    let _ = one.send(awc::ws::Message::Close(None)).await;
    assert_eq!(app.get("/v1/lots").await.0, 200);
    app.stop().await;
}

#[actix_web::test]
async fn from_offset_may_reach_back_only_so_far() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.live.max_replay_events = 5;
    let app = spawn(c).await;
    register(&app, "north", 100).await;
    for _ in 0..10 {
        common::arrive(&app, "north").await;
    }
    let end = app.log_end().await; // 11
    let (status, body) = ws_refusal(&app, "?from_offset=0").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "from_offset", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_replay_events"),
        "{body}"
    );
    assert_eq!(app.get("/v1/lots").await.0, 200, "others are served");
    // Five back is within reach: the changes after it arrive.
    let mut s = ws(&app, &format!("?from_offset={}", end - 6))
        .await
        .expect("within reach");
    let mut offsets = Vec::new();
    while offsets.len() < 5 {
        match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
            Ok(Some(Ok(Frame::Text(t)))) => {
                if let Message::Change { offset, .. } = serde_json::from_slice(&t).unwrap() {
                    offsets.push(offset);
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(offsets, ((end - 5)..end).collect::<Vec<_>>());
    let _ = s.send(awc::ws::Message::Close(None)).await;
    app.stop().await;
}

#[actix_web::test]
async fn one_request_may_span_only_so_much_event_time() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.limits.max_request_span_secs = 7 * 86_400;
    let app = spawn(c).await;
    let now = chrono::Utc::now();
    let at = |days: i64| (now - chrono::Duration::days(days)).to_rfc3339();
    let (s, r) = app
        .post(
            "/v1/lots",
            json!({"lot_id": "north", "name": "North", "capacity": 100, "timestamp": at(60)}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    let end = app.log_end().await;
    let wide = json!([
        {"lot_id": "north", "event_type": "ARRIVAL", "timestamp": at(30)},
        {"lot_id": "north", "event_type": "ARRIVAL", "timestamp": at(1)},
    ]);
    let (s, r) = app.post("/v1/events", wide).await;
    assert_eq!(s, 413, "{r}");
    assert_eq!(r["error"], "span_too_large", "{r}");
    assert!(r["message"]
        .as_str()
        .unwrap()
        .contains("max_request_span_secs"));
    assert_eq!(app.log_end().await, end, "nothing of the request was taken");
    let narrow = json!([
        {"lot_id": "north", "event_type": "ARRIVAL", "timestamp": at(7)},
        {"lot_id": "north", "event_type": "ARRIVAL", "timestamp": at(1)},
    ]);
    let (s, r) = app.post("/v1/events", narrow).await;
    assert_eq!((s, r["accepted"].as_u64()), (200, Some(2)), "{r}");
    app.stop().await;
}

#[actix_web::test]
async fn history_ranges_are_bounded_by_points() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.limits.max_history_points = 10;
    let app = spawn(c).await;
    register(&app, "north", 100).await;
    let (s, r) = app
        .get("/v1/lots/north/history?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z")
        .await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(r["field"], "bucket", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("max_history_points"),
        "{r}"
    );
    assert_eq!(
        app.get("/v1/lots/north/recent").await.0,
        200,
        "others are served"
    );
    let (s, r) = app
        .get("/v1/lots/north/timespan?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z")
        .await;
    assert_eq!(s, 400, "{r}");
    app.stop().await;
}

#[actix_web::test]
async fn known_events_is_held_to_the_body_limit() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    // 64 KiB in the tests' config: 3,000 events are about 200 KB.
    let ids: Vec<Value> = (0..3_000)
        .map(|_| json!({"lot_id": "north", "event_id": uuid::Uuid::new_v4().to_string()}))
        .collect();
    let (s, r) = app
        .post("/v1/admin/known-events", json!({ "events": ids }))
        .await;
    assert_eq!(s, 413, "{r}");
    assert_eq!(r["error"], "payload_too_large", "{r}");
    let (s, r) = app
        .post("/v1/admin/known-events", json!({ "events": &ids[..100] }))
        .await;
    assert_eq!(s, 200, "{r}");
    app.stop().await;
}

/// A tokens file with an ingest token, a second ingest token and an admin token.
fn tokens(dir: &std::path::Path) -> (std::path::PathBuf, [String; 3]) {
    let mut text = String::new();
    let mut out = Vec::new();
    for (name, role) in [("gate-1", "ingest"), ("gate-2", "ingest"), ("ops", "admin")] {
        let (token, hash) = parkade::api::auth::new_token().unwrap();
        let lots = if role == "ingest" {
            "lots = \"*\"\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\n{lots}sha256 = \"{hash}\"\n"
        ));
        out.push(token);
    }
    let path = dir.join("tokens.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    (path, out.try_into().unwrap())
}

async fn post_as(app: &TestApp, token: &str, body: Value) -> (u16, Option<String>, Value) {
    let mut resp = awc::Client::new()
        .post(app.url("/v1/events"))
        .bearer_auth(token)
        .insert_header(("content-type", "application/json"))
        .send_body(body.to_string())
        .await
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
    (resp.status().as_u16(), retry, body)
}

#[actix_web::test]
async fn an_ingest_token_past_its_rate_gets_429_with_retry_after() {
    let dir = common::data_dir();
    let (file, [gate1, gate2, ops]) = tokens(dir.path());
    let mut c = test_config(dir.path(), None);
    c.auth.tokens_file = Some(file);
    c.limits.ingest_events_per_sec = 5;
    c.limits.max_batch_events = 5;
    let app = spawn(c).await;
    let reg = awc::Client::new()
        .post(app.url("/v1/lots"))
        .bearer_auth(&ops)
        .insert_header(("content-type", "application/json"))
        .send_body(json!({"lot_id": "north", "name": "North", "capacity": 1000}).to_string())
        .await
        .unwrap();
    assert_eq!(reg.status(), 201);
    let five = Value::Array(vec![json!({"lot_id": "north", "event_type": "ARRIVAL"}); 5]);
    let (s, _, r) = post_as(&app, &gate1, five.clone()).await;
    assert_eq!(s, 200, "{r}");
    let (s, retry, r) = post_as(&app, &gate1, five.clone()).await;
    assert_eq!(s, 429, "{r}");
    // A throttled token is refused before its body is parsed: a body that would not
    // parse gets the 429, not the parser's 400.
    let resp = awc::Client::new()
        .post(app.url("/v1/events"))
        .bearer_auth(&gate1)
        .insert_header(("content-type", "application/json"))
        .send_body(r#"[{"lot_id": "north"}, {"lot_id": "north"}, {}, {}, {"lot_id": "#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "parsed before the rate was charged");
    assert_eq!(r["error"], "rate_limited", "{r}");
    assert!(r["message"].as_str().unwrap().contains("gate-1"), "{r}");
    let secs: u64 = retry.expect("a Retry-After header").parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    // Another token, and an admin, are served meanwhile; nothing of the 429 was taken.
    let (s, _, r) = post_as(&app, &gate2, five.clone()).await;
    assert_eq!(s, 200, "{r}");
    let (s, _, r) = post_as(&app, &ops, five.clone()).await;
    assert_eq!(s, 200, "{r}");
    let (_, lot) = app.get("/v1/lots/north").await;
    assert_eq!(lot["occupancy"], 15, "{lot}");
    // After the wait it names, the first token may post again.
    actix_web::rt::time::sleep(Duration::from_secs(secs)).await;
    let (s, _, r) = post_as(&app, &gate1, five).await;
    assert_eq!(s, 200, "{r}");
    app.stop().await;
}

#[actix_web::test]
async fn cors_lets_configured_origins_read_and_no_origin_write() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.auth.cors_origins = vec!["https://maps.campus.example".into()];
    let app = spawn(c).await;
    register(&app, "north", 10).await;
    let get = |origin: &'static str| {
        let url = app.url("/v1/lots/north");
        async move {
            let resp = awc::Client::new()
                .get(url)
                .insert_header(("origin", origin))
                .send()
                .await
                .unwrap();
            let allow = resp
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_owned());
            (resp.status().as_u16(), allow)
        }
    };
    assert_eq!(
        get("https://maps.campus.example").await,
        (200, Some("https://maps.campus.example".into()))
    );
    // Another origin gets the data without the header, so its page cannot read it.
    assert_eq!(get("https://evil.example").await, (200, None));
    // A preflight for a write is refused.
    let pre = awc::Client::new()
        .request(awc::http::Method::OPTIONS, app.url("/v1/events"))
        .insert_header(("origin", "https://maps.campus.example"))
        .insert_header(("access-control-request-method", "POST"))
        .insert_header(("access-control-request-headers", "content-type"))
        .send()
        .await
        .unwrap();
    assert!(
        !pre.status().is_success()
            || pre
                .headers()
                .get("access-control-allow-methods")
                .is_none_or(|m| !m.to_str().unwrap().contains("POST")),
        "{:?}",
        pre.headers()
    );
    app.stop().await;

    let mut bad = test_config(dir.path(), None);
    bad.auth.cors_origins = vec!["*".into()];
    let err = parkade::app::Application::build(bad, Hooks::default())
        .await
        .err()
        .expect("a wildcard origin is refused");
    assert!(err.to_string().contains("cors_origins"), "{err}");
}

/// The head of a `POST /v1/events` declaring `len` bytes of JSON.
fn post_head(len: usize) -> String {
    format!("POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
}

#[actix_web::test]
async fn bodies_in_flight_share_one_budget_and_give_it_back() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.limits.max_body_bytes = 64 << 10;
    // A 60 kB body costs about twice that once its bytes arrive: its own buffer and the
    // HTTP server's for it. One fits, two do not.
    c.limits.body_budget_bytes = 200 << 10;
    let app = spawn(c).await;
    let port = port(&app);
    let len = 60_000;
    let body = format!("[{}]", " ".repeat(len - 2));
    // Declared lengths alone hold nothing: ten connections that declare 60 kB and send
    // none of it leave the budget whole.
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut s = connect_from("127.0.0.1", port).await;
        s.write_all(post_head(len).as_bytes()).await.unwrap();
        idle.push(s);
    }
    // One body held: 59 kB sent of its 60 kB.
    let mut held = connect_from("127.0.0.1", port).await;
    held.write_all(post_head(len).as_bytes()).await.unwrap();
    held.write_all(&body.as_bytes()[..59_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A second body does not fit beside it: 503 with Retry-After, nothing taken.
    let mut second = connect_from("127.0.0.2", port).await;
    second.write_all(post_head(len).as_bytes()).await.unwrap();
    second.write_all(body.as_bytes()).await.unwrap();
    let (status, head, reply) = read_reply(&mut second).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"], "busy", "{reply}");
    assert!(head.contains("retry-after:"), "{head}");
    // Once the held body's connection closes, its bytes are given back.
    drop(held);
    common::eventually(Duration::from_secs(10), "the budget given back", || async {
        let mut s = connect_from("127.0.0.3", port).await;
        s.write_all(post_head(len).as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        match read_reply(&mut s).await {
            // An empty array: read whole, then refused for holding no events.
            (400, _, r) => Ok(r),
            (s, _, r) => Err(format!("{s} {r}")),
        }
    })
    .await;
    drop(idle);
    app.stop().await;
}

/// The value of `name` on `/metrics`, read on the open connection `s`.
async fn metric_on(s: &mut TcpStream, name: &str) -> f64 {
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_raw_reply(s).await;
    let page = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{page}");
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} on /metrics:\n{page}"))
}

#[actix_web::test]
async fn a_body_answered_before_its_end_stays_counted_until_its_connection_closes() {
    let dir = common::data_dir();
    let mut c = test_config(dir.path(), None);
    c.limits.body_timeout_secs = 1;
    let app = spawn(c).await;
    let port = port(&app);
    let mut first = connect_from("127.0.0.1", port).await;
    assert_eq!(
        metric_on(&mut first, "parkade_request_body_bytes").await,
        0.0
    );
    let len = 60_000;
    let mut seen_open = 0;
    for _ in 0..3 {
        // 20 kB of a declared 60 kB, then nothing: answered 408 after a second; the
        // server goes on reading the connection for a moment before it closes it.
        let mut stalled = connect_from("127.0.0.2", port).await;
        stalled.write_all(post_head(len).as_bytes()).await.unwrap();
        stalled.write_all(&vec![b' '; 20_000]).await.unwrap();
        // Opened first: the read right after the reply takes one round trip.
        let mut metrics = connect_from("127.0.0.1", port).await;
        let (status, _, reply) = read_reply(&mut stalled).await;
        assert_eq!(status, 408, "{reply}");
        let held = metric_on(&mut metrics, "parkade_request_body_bytes").await;
        let mut b = [0u8; 64];
        let still_open = tokio::time::timeout(Duration::from_millis(1), stalled.read(&mut b))
            .await
            .is_err();
        if still_open {
            // Read while the connection was open: what the HTTP server holds for the
            // body is counted (without that, an attacker reconnecting at once has the
            // buffers of its closing connections outside every budget).
            assert!(
                held >= len as f64,
                "{held} bytes counted while its connection is open"
            );
            seen_open += 1;
        }
        // Closed by the HTTP server at the end of its linger, or (it does not always
        // close then) by the wait for the next request head.
        let closing = limits::NEXT_HEAD_WITHIN + Duration::from_secs(5);
        let mut b = [0u8; 64];
        assert!(
            matches!(
                tokio::time::timeout(closing, stalled.read(&mut b)).await,
                Ok(Ok(0)) | Ok(Err(_))
            ),
            "the connection is closed after the reply"
        );
        common::eventually(Duration::from_secs(5), "the budget given back", || async {
            let mut s = connect_from("127.0.0.1", port).await;
            let n = metric_on(&mut s, "parkade_request_body_bytes").await;
            if n == 0.0 {
                Ok(())
            } else {
                Err(format!("{n} bytes still counted"))
            }
        })
        .await;
    }
    assert!(
        seen_open > 0,
        "the metric was never read before the connection closed"
    );
    app.stop().await;
}

/// Trickle `bytes` one every 500 ms until the server closes the connection; the time
/// it took, or `None` when it was still open after `most`.
async fn trickle_until_closed(s: &mut TcpStream, bytes: &[u8], most: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    for b in bytes.iter().cycle() {
        if started.elapsed() > most {
            return None;
        }
        if s.write_all(&[*b]).await.is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            _ => {}
        }
    }
    unreachable!("cycle never ends")
}

#[actix_web::test]
async fn a_keep_alive_connection_that_trickles_its_next_request_is_closed() {
    let dir = common::data_dir();
    let app = spawn(test_config(dir.path(), None)).await;
    register(&app, "north", 10).await;
    let port = port(&app);
    let most = Duration::from_secs(25);
    // A full request, then the next head a byte at a time.
    let head = async {
        let mut s = connect_from("127.0.0.1", port).await;
        let (status, _, _) = get_on(&mut s, "/healthz").await;
        assert_eq!(status, 200);
        trickle_until_closed(
            &mut s,
            b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaa",
            most,
        )
        .await
    };
    // A GET with a chunked body its handler never reads, trickled.
    let body = async {
        let mut s = connect_from("127.0.0.2", port).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
            .await
            .unwrap();
        trickle_until_closed(&mut s, b"1\r\na\r\n", most).await
    };
    // A websocket is a request in flight for as long as it lives: it stays open.
    let socket = async {
        let url = format!("{}/v1/ws?lots=north", app.base.replace("http://", "ws://"));
        let (_, mut ws) = awc::Client::new().ws(url).connect().await.unwrap();
        tokio::time::sleep(NEXT_HEAD + Duration::from_secs(3)).await;
        common::arrive(&app, "north").await;
        let mut changes = 0;
        while changes == 0 {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Frame::Text(t)))) if String::from_utf8_lossy(&t).contains("change") => {
                    changes += 1
                }
                Ok(Some(Ok(Frame::Ping(p)))) => ws.send(awc::ws::Message::Pong(p)).await.unwrap(),
                Ok(Some(Ok(_))) => {}
                other => panic!("the websocket ended: {other:?}"),
            }
        }
        let _ = ws.send(awc::ws::Message::Close(None)).await;
        changes
    };
    let (head, body, changes) = tokio::join!(head, body, socket);
    let head = head.expect("the trickled head held its connection open");
    let body = body.expect("the trickled body held its connection open");
    for took in [head, body] {
        assert!(
            took >= NEXT_HEAD - Duration::from_secs(1),
            "closed after {took:?}, before its deadline"
        );
    }
    assert_eq!(changes, 1);
    app.stop().await;
}

/// `parkade::api::limits::NEXT_HEAD_WITHIN`.
const NEXT_HEAD: Duration = parkade::api::limits::NEXT_HEAD_WITHIN;

/// A flood of malformed requests (issue 26) is not an ERROR line each, which would fill
/// the disk and bury real errors: the server's log sums them up in at most one WARN line
/// per 10 s, and `/metrics` counts every one.
#[test]
fn malformed_requests_are_counted_and_summed_up_not_logged_one_by_one() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let dir = common::data_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(common::binary())
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("PARKADE_DATA_DIR", dir.path())
        .env_remove("PARKADE_DATABASE_URL")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let send = |request: &[u8]| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request)?;
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    let send = |request: &[u8]| send(request).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .starts_with("HTTP/1.1 200")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    const SENT: u64 = 300;
    for _ in 0..SENT {
        let reply = send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n");
        assert!(!reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let metrics = send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("parkade_http_connection_errors_total "))
        .unwrap_or_else(|| panic!("no connection error counter:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    // Lines as they come (text logs on stderr), until the summary is written or 15 s
    // have passed: it comes at most 10 s after the first of them.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(lines_tx);
    let summary = |l: &str| l.contains("dropped connections with an error");
    let mut logs = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !logs.lines().any(summary) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => logs.push_str(&(line + "\n")),
            Err(_) => break,
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    logs.extend(lines_rx.iter().map(|l| l + "\n"));
    assert!(counted >= SENT, "{counted} of {SENT} counted");
    assert!(
        !logs.lines().any(|l| l.contains("ERROR")),
        "a malformed request was logged at ERROR:\n{logs}"
    );
    let summaries = logs.lines().filter(|l| summary(l)).count();
    assert!(
        (1..=2).contains(&summaries),
        "{summaries} lines about dropped connections:\n{logs}"
    );
}
