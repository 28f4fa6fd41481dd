//! `parkade demo` as a user runs it: it starts on embedded defaults with weeks of
//! history and a trained model, prints the dashboard URL, and events flow within a few
//! seconds.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parkade::api::wire;

use crate::common;

/// A running `parkade demo`, killed when dropped.
pub struct Demo {
    child: Child,
    /// The dashboard's address, without the trailing slash.
    pub url: String,
    /// What it printed before the address.
    pub printed: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Start the demo in a fresh data folder with `args` besides the address and
    /// folder; returns once it printed the dashboard's address.
    pub fn start(args: &[&str]) -> Demo {
        Demo::start_in(common::data_dir(), args)
    }

    /// [`Demo::start`] with its data in `dir`'s `demo` folder.
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Demo {
        let mut child = Command::new(common::binary())
            .args(["demo", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("demo"))
            .args(args)
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
        let mut printed = Vec::new();
        let url = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(70))
                .unwrap_or_else(|_| {
                    panic!("the demo prints the dashboard URL; printed {printed:?}")
                });
            if let Some(u) = line.strip_prefix("Dashboard: ") {
                break u.trim_end_matches('/').to_owned();
            }
            printed.push(line);
        };
        Demo {
            child,
            url,
            printed,
            _dir: dir,
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_web::test]
async fn the_demo_starts_with_history_and_forecasts_and_events_flow_within_seconds() {
    let started = Instant::now();
    // A fixed load (the campus's own traffic is thin at night).
    let demo = Demo::start(&["--duration", "30", "--rate", "50"]);
    println!(
        "the demo was ready after {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        demo.printed
    );
    assert!(
        demo.printed.iter().any(|l| l.contains("preparing history")),
        "progress while it prepares: {:?}",
        demo.printed
    );
    let url = &demo.url;
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
            let status = r.status().as_u16();
            let body = r.json::<serde_json::Value>().limit(1 << 22).await.unwrap();
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let lots = get(format!("{url}/v1/lots")).await;
    let lots: wire::LotList = serde_json::from_value(lots).unwrap();
    assert_eq!(lots.lots.len(), 7, "{lots:?}");
    // Four weeks of history are in before the dashboard opens: a usual profile at once,
    // days of the campus's time zone, weekdays busier than weekends (whatever part of
    // the campus's year the four weeks fall in: term, exams, a break).
    let from = (chrono::Utc::now() - chrono::Duration::days(30)).format("%Y-%m-%dT%H:%M:%SZ");
    let h = get(format!(
        "{url}/v1/lots/north-lot/history?bucket=1d&from={from}"
    ))
    .await;
    assert_eq!(h["timezone"], "America/Vancouver", "{h}");
    let h: wire::History = serde_json::from_value(h).unwrap();
    assert!(h.points.len() >= 28, "{h:?}");
    let (mut weekdays, mut weekends) = (Vec::new(), Vec::new());
    for p in &h.points {
        use chrono::Datelike;
        let day = p.start.with_timezone(&chrono_tz::America::Vancouver);
        match day.weekday().num_days_from_monday() {
            0..=4 => weekdays.push(p.arrivals as f64),
            _ => weekends.push(p.arrivals as f64),
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (weekday, weekend) = (mean(&weekdays), mean(&weekends));
    println!("arrivals a day at north-lot: weekdays {weekday:.0}, weekends {weekend:.0}");
    assert!(weekday > 1.5 * weekend, "{weekdays:?} / {weekends:?}");
    // And every lot has a forecast of the model trained on it, with its interval.
    for lot in &lots.lots {
        let f = get(format!("{url}/v1/lots/{}/forecast", lot.lot_id)).await;
        let f: wire::Forecast = serde_json::from_value(f).unwrap();
        assert_eq!(f.points.len(), 96, "{f:?}");
        assert!(f.points.iter().any(|p| p.high > p.low), "{f:?}");
    }
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
}

/// A demo that cannot listen (its port taken) says how to choose another and leaves no
/// folder behind, so the retry on a free port prepares the whole demo, history and all.
#[actix_web::test]
async fn a_demo_that_cannot_listen_leaves_nothing_and_the_retry_prepares_it_all() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = common::data_dir();
    let folder = dir.path().join("demo");
    let out = Command::new(common::binary())
        .args(["demo", "--bind", &addr, "--data-dir"])
        .arg(&folder)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the demo ran on a taken port");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [addr.as_str(), "--bind"] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert!(
        !folder.exists(),
        "the failed start left {} behind",
        folder.display()
    );
    drop(taken);
    let demo = Demo::start_in(dir, &["--duration", "5", "--rate", "5"]);
    assert!(
        demo.printed.iter().any(|l| l.contains("days of history")),
        "the retry prepared the history: {:?}",
        demo.printed
    );
}
