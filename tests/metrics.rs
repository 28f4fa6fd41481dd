//! `GET /metrics` against the real server, read by the Prometheus project's own text
//! format parser (prometheus-client from PyPI; scripts/test.sh installs it): the page
//! parses, and its figures follow what happened (events by outcome and reason, requests
//! by route pattern and status, group commits, websocket closes by code, the state read
//! at scrape time).

use std::io::Write;
use std::time::Duration;

use awc::ws::Frame;
use futures_util::{SinkExt, StreamExt};
use parkade::app::Hooks;
use serde_json::{json, Value};

#[path = "suite/common/mod.rs"]
mod common;
use common::{register, test_config, TestApp};

type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

async fn subscribe(app: &TestApp) -> Socket {
    let url = format!("{}/v1/ws", app.base.replace("http://", "ws://"));
    awc::Client::new()
        .ws(url)
        .connect()
        .await
        .expect("handshake")
        .1
}

/// The code of the close frame the server sends next.
async fn close_code(ws: &mut Socket) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Frame::Close(r)))) => return r.map(|r| u16::from(r.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// The metrics page, parsed by prometheus-client (see tests/py/parse_metrics.py).
async fn scrape(app: &TestApp) -> Value {
    let mut resp = awc::Client::new()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.body().limit(16 << 20).await.unwrap().to_vec();
    actix_web::rt::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(common::python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/py/parse_metrics.py"
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python with prometheus-client (scripts/test.sh installs it)");
        child.stdin.take().unwrap().write_all(&text).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused the page: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&text)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(m: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m[family]["samples"].as_array()?.iter().find_map(|s| {
        let ok = s[0] == name && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v));
        ok.then(|| s[2].as_f64().unwrap())
    })
}

#[actix_web::test]
async fn metrics_are_prometheus_text_and_count_what_happened() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    // The recorder is per process (this test is alone in its binary); counters are
    // compared before and after all the same.
    let before = scrape(&app).await;
    let count = |m: &Value, outcome: &str, reason: &str| {
        sample(
            m,
            "parkade_events",
            "parkade_events_total",
            &[("outcome", outcome), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    register(&app, "north", 2).await;
    for _ in 0..2 {
        common::arrive(&app, "north").await;
    }
    let (s, _) = app
        .post(
            "/v1/events",
            json!({"lot_id": "north", "event_type": "ARRIVAL"}),
        )
        .await;
    assert_eq!(s, 409, "the lot is full");
    let (s, _) = app
        .post(
            "/v1/events",
            json!({"lot_id": "nowhere", "event_type": "ARRIVAL"}),
        )
        .await;
    assert_eq!(s, 404);
    let mut sub = subscribe(&app).await;
    // The subscriber joins the fan-out just after its handshake.
    let m = common::eventually(
        Duration::from_secs(5),
        "the subscriber on the page",
        || async {
            let m = scrape(&app).await;
            match sample(&m, "parkade_ws_subscribers", "parkade_ws_subscribers", &[]) {
                Some(n) if n >= 1.0 => Ok(m),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    assert_eq!(
        count(&m, "accepted", "") - count(&before, "accepted", ""),
        3.0
    );
    assert_eq!(
        count(&m, "rejected", "lot_full") - count(&before, "rejected", "lot_full"),
        1.0
    );
    assert_eq!(
        count(&m, "rejected", "lot_not_found") - count(&before, "rejected", "lot_not_found"),
        1.0
    );
    assert_eq!(m["parkade_events"]["type"], "counter");
    // Requests by route pattern (never by lot) and status.
    let by_route = |m: &Value, route: &str, status: &str| {
        sample(
            m,
            "parkade_http_requests",
            "parkade_http_requests_total",
            &[("route", route), ("status", status), ("method", "POST")],
        )
        .unwrap_or(0.0)
    };
    assert!(by_route(&m, "/v1/events", "2xx") >= 2.0);
    assert_eq!(
        by_route(&m, "/v1/events", "4xx") - by_route(&before, "/v1/events", "4xx"),
        2.0,
        "the 409 and the 404"
    );
    assert!(!m.to_string().contains("nowhere"), "no series per lot");
    assert_eq!(
        m["parkade_http_request_duration_seconds"]["type"],
        "histogram"
    );
    // Group commits: each holds at least one event, and took some time.
    let commits = sample(
        &m,
        "parkade_log_commit_events",
        "parkade_log_commit_events_count",
        &[],
    )
    .unwrap();
    let events = sample(
        &m,
        "parkade_log_commit_events",
        "parkade_log_commit_events_sum",
        &[],
    )
    .unwrap();
    assert!((1.0..=3.0).contains(&commits), "{commits} commits");
    assert_eq!(
        events, 3.0,
        "three events written, in {commits} group commits"
    );
    assert_eq!(m["parkade_log_sync_seconds"]["type"], "histogram");
    assert_eq!(m["parkade_log_append_seconds"]["type"], "histogram");
    // State read at scrape time.
    assert_eq!(
        sample(&m, "parkade_log_end_offset", "parkade_log_end_offset", &[]),
        Some(3.0)
    );
    let lag = sample(
        &m,
        "parkade_projection_lag_events",
        "parkade_projection_lag_events",
        &[("projection", "archive")],
    );
    assert!(lag.is_some(), "the archive's lag is shown");
    assert!(sample(&m, "process_open_fds", "process_open_fds", &[]).unwrap() > 3.0);
    assert!(
        sample(
            &m,
            "process_resident_memory_bytes",
            "process_resident_memory_bytes",
            &[]
        )
        .unwrap()
            > 1e6
    );
    // A websocket closed by its client is counted by code.
    let closes = |m: &Value| {
        sample(
            &m.clone(),
            "parkade_ws_closes",
            "parkade_ws_closes_total",
            &[("code", "1000")],
        )
        .unwrap_or(0.0)
    };
    sub.send(awc::ws::Message::Close(None)).await.unwrap();
    assert_eq!(close_code(&mut sub).await, Some(1000));
    let after = scrape(&app).await;
    assert!(closes(&after) >= closes(&m) + 1.0);
    every_dashboard_query_names_what_the_page_has(&after);
    app.stop().await;
}

/// The Grafana dashboard of `deploy/grafana/` is JSON whose every panel queries series
/// this page holds (a metric renamed or dropped leaves no panel blank unnoticed).
fn every_dashboard_query_names_what_the_page_has(page: &Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/parkade.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let exported: std::collections::BTreeSet<&str> = page
        .as_object()
        .unwrap()
        .values()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .map(|s| s[0].as_str().unwrap())
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{}", panels.len());
    let mut missing = Vec::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("parkade_") || w.starts_with("process_"))
                .collect();
            assert!(!names.is_empty(), "a query of no parkade series: {expr}");
            missing.extend(
                names
                    .into_iter()
                    .filter(|n| !exported.contains(n))
                    .map(|n| format!("{} ({n})", panel["title"].as_str().unwrap_or("?"))),
            );
        }
    }
    assert!(
        missing.is_empty(),
        "panels query series /metrics does not have: {missing:?}"
    );
}

/// Send `requests` pipelined on one connection (the last one closes it) and return
/// everything the server answered.
fn raw_exchange(addr: &str, requests: &[String]) -> String {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    for r in requests {
        conn.write_all(r.as_bytes()).unwrap();
    }
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[actix_web::test]
async fn no_request_adds_a_series_of_its_own() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    register(&app, "north", 10).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // 2,000 requests, each with a method of its own (400 characters), and lot paths
    // spelled with percent-encoding: every label must still come from a closed set.
    let requests: Vec<String> = (0..2_000)
        .map(|i| {
            let method = format!("XMETHOD{i:05}{}", "Q".repeat(388));
            let close = if i == 1_999 {
                "Connection: close\r\n"
            } else {
                ""
            };
            let path = if i % 2 == 0 {
                "/v1/lots/%6Eorth"
            } else {
                "/v1/%6Cots"
            };
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{close}\r\n")
        })
        .collect();
    let answered = {
        let addr = addr.clone();
        actix_web::rt::task::spawn_blocking(move || raw_exchange(&addr, &requests))
            .await
            .unwrap()
    };
    assert!(
        answered.matches("HTTP/1.1 ").count() >= 1_000,
        "{}",
        &answered[..answered.len().min(500)]
    );
    let page = awc::Client::new()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .body()
        .limit(16 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&page);
    assert!(!text.contains("XMETHOD"), "a method became a label");
    assert!(
        text.contains("method=\"other\""),
        "the odd methods are counted as other"
    );
    assert!(
        !text.contains("%6E") && !text.contains("%6C"),
        "a raw path became a label"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("parkade_http_requests_total")
                && l.contains("route=\"/v1/lots/{id}\"")
                && l.contains("method=\"other\"")),
        "the encoded path is counted under its route's pattern:\n{text}"
    );
    assert!(page.len() < 64 << 10, "the page is {} bytes", page.len());
    app.stop().await;
}
