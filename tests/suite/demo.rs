//! `parkade demo` as a user runs it: it starts on embedded defaults, prints the
//! dashboard URL, and events flow within a few seconds.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

#[actix_web::test]
async fn the_demo_starts_and_events_flow_within_seconds() {
    let dir = common::data_dir();
    let mut child = Command::new(common::binary())
        .args([
            "demo",
            "--bind",
            "127.0.0.1:0",
            "--duration",
            "20",
            "--data-dir",
        ])
        .arg(dir.path().join("demo"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start parkade demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the demo prints the dashboard URL");
        if let Some(u) = line.strip_prefix("Dashboard: ") {
            break u.trim_end_matches('/').to_owned();
        }
    };
    let client = awc::Client::new();
    let page = client
        .get(format!("{url}/"))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&page).contains("parkade"));
    let get = |path: String| {
        let client = client.clone();
        async move {
            let mut r = client.get(path).send().await.unwrap();
            r.json::<serde_json::Value>().limit(1 << 22).await.unwrap()
        }
    };
    let lots = get(format!("{url}/v1/lots")).await;
    assert_eq!(lots["lots"].as_array().map(Vec::len), Some(7), "{lots}");
    // Four weeks of history are in before the dashboard opens: a usual profile at once,
    // days of the campus's time zone with busy weekdays.
    let from = (chrono::Utc::now() - chrono::Duration::days(30)).format("%Y-%m-%dT%H:%M:%SZ");
    let h = get(format!(
        "{url}/v1/lots/north-lot/history?bucket=1d&from={from}"
    ))
    .await;
    assert_eq!(h["timezone"], "America/Vancouver", "{h}");
    let busy_days = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["arrivals"].as_i64().unwrap_or(0) > 100)
        .count();
    assert!(busy_days >= 19, "{busy_days} busy days in {h}");
    // And live events flow within seconds.
    let end = |v: serde_json::Value| v["log_end"].as_u64().unwrap();
    let before = end(get(format!("{url}/v1/admin/projections")).await);
    let started = Instant::now();
    let moved = common::eventually(Duration::from_secs(10), "live events", || async {
        let now = end(get(format!("{url}/v1/admin/projections")).await);
        if now > before {
            Ok(now - before)
        } else {
            Err(format!("the log still ends at {now}"))
        }
    })
    .await;
    println!(
        "{moved} live events after {} ms",
        started.elapsed().as_millis()
    );
    let _ = child.kill();
    let _ = child.wait();
}
