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
    let started = Instant::now();
    let moved = common::eventually(Duration::from_secs(10), "the 7 lots to fill", || async {
        let lots: serde_json::Value = client
            .get(format!("{url}/v1/lots"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lots = lots["lots"].as_array().cloned().unwrap_or_default();
        let parked: u64 = lots
            .iter()
            .map(|l| l["occupancy"].as_u64().unwrap_or(0))
            .sum();
        if lots.len() == 7 && parked > 0 {
            Ok(parked)
        } else {
            Err(format!("{lots:?}"))
        }
    })
    .await;
    println!(
        "{moved} vehicles parked after {} ms",
        started.elapsed().as_millis()
    );
    let _ = child.kill();
    let _ = child.wait();
}
