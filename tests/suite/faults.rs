//! Faults of the real services under ingest: PostgreSQL and the S3 server go away for
//! a minute (`PARKADE_FAULT_SECS`, default 60) while events keep coming. Ingest goes
//! on, `/readyz` and `/v1/admin/projections` show the projection behind, and once the
//! service is back the read model equals the fold of the log (`parkade verify`) and the
//! archive holds every event once.
//!
//! The services are shared with the tests running beside these, so they are not stopped
//! for real: parkade reaches them through a forwarder that cuts every connection and
//! refuses new ones while "down" (what a client sees of a stopped server).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parkade::app::Hooks;
use parkade::projections::archive::{S3Config, S3Store};
use serde_json::{json, Value};

use crate::common;
use common::{eventually, projection_view, register, test_config, FaultProxy, TestApp, TestDb};

fn fault_secs() -> u64 {
    std::env::var("PARKADE_FAULT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// `postgres://user@host:port/db` with the host and port replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, rest) = rest.split_once('@').unwrap_or(("", rest));
    let (_, path) = rest.split_once('/').expect("a path");
    let user = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    format!("{scheme}://{user}{addr}/{path}")
}

/// The `host:port` of a URL.
fn authority(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once("://").expect("a URL").1;
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    let host = rest.split('/').next().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(host)
        .unwrap()
        .next()
        .unwrap()
}

/// Post arrivals and departures for `secs`, checking each is acknowledged; returns how
/// many were sent. Calls `during` once, halfway.
async fn ingest_for(app: &TestApp, secs: u64, mut during: impl AsyncFnMut()) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    let mut checked = false;
    let mut arrive = true;
    while started.elapsed() < Duration::from_secs(secs) {
        let kind = if arrive { "ARRIVAL" } else { "DEPARTURE" };
        arrive = !arrive;
        let batch: Vec<Value> = (0..10)
            .map(|_| json!({"lot_id": "north", "event_type": kind}))
            .collect();
        let (status, reply) = app.post("/v1/events", Value::Array(batch)).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["accepted"], 10, "{reply}");
        sent += 10;
        if !checked && started.elapsed() > Duration::from_secs(secs / 2) {
            checked = true;
            during().await;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    sent
}

#[actix_web::test]
async fn ingest_goes_on_while_postgresql_is_away_and_the_read_model_catches_up() {
    let db = TestDb::new();
    let proxy = FaultProxy::start(authority(&db.url));
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    config.database_url = Some(via(&db.url, proxy.addr));
    let app = TestApp::spawn(config, Hooks::default()).await;
    register(&app, "north", 1000).await;
    app.wait_projection_caught_up().await;

    proxy.down();
    let sent = ingest_for(&app, fault_secs(), async || {
        let (code, ready) = app.ready().await;
        assert_eq!(code, 503, "{ready:?}");
        let failing: Vec<&str> = ready
            .reasons
            .iter()
            .flatten()
            .filter_map(|r| r.projection.as_deref())
            .collect();
        assert!(failing.contains(&"occupancy"), "{ready:?}");
        let status = app.projections().await.expect("projections");
        let occ = projection_view(&status, "occupancy").expect("occupancy");
        assert_eq!(occ.state, "failing", "{status:?}");
        assert!(occ.lag.unwrap() > 0, "{status:?}");
    })
    .await;
    assert!(sent > 0);
    proxy.up();
    app.wait_caught_up("occupancy").await;
    app.wait_caught_up("features").await;
    // Every PostgreSQL user (the lake exporter and the predictor too) recovers.
    eventually(Duration::from_secs(30), "/readyz to answer 200", || async {
        let (code, ready) = app.get("/readyz").await;
        if code == 200 {
            Ok(())
        } else {
            Err(ready.to_string())
        }
    })
    .await;

    // The read model equals an independent fold of the log.
    let out = std::process::Command::new(common::binary())
        .arg("verify")
        .env("PARKADE_DATA_DIR", dir.path())
        .env("PARKADE_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = db
        .query("SELECT occupancy::bigint, last_offset FROM current_lot_occupancy")
        .await;
    assert_eq!(rows[0][1], (sent).to_string(), "{rows:?}");
    app.stop().await;
}

#[actix_web::test]
async fn ingest_goes_on_while_the_s3_server_is_away_and_the_archive_catches_up_once() {
    let endpoint = std::env::var("PARKADE_TEST_S3_ENDPOINT").expect(
        "PARKADE_TEST_S3_ENDPOINT is not set: this test needs a real S3 server; ./scripts/test.sh starts Garage",
    );
    let proxy = FaultProxy::start(authority(&endpoint));
    let cfg = S3Config {
        bucket: std::env::var("PARKADE_TEST_S3_BUCKET").unwrap_or_else(|_| "parkade-test".into()),
        prefix: format!("faults-{}", uuid::Uuid::new_v4().simple()),
        region: std::env::var("PARKADE_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
        endpoint: Some(format!("http://{}", proxy.addr)),
        path_style: true,
    };
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    config.archive.s3 = Some(cfg.clone());
    config.archive.roll_secs = 1;
    let app = TestApp::spawn(config, Hooks::default()).await;
    register(&app, "north", 1000).await;
    app.wait_caught_up("archive").await;

    proxy.down();
    let sent = ingest_for(&app, fault_secs(), async || {
        let status = app.projections().await.expect("projections");
        let archive = projection_view(&status, "archive").expect("archive");
        assert!(archive.lag.unwrap() > 0, "{status:?}");
        assert_eq!(archive.state, "failing", "{status:?}");
        let (code, ready) = app.get("/readyz").await;
        assert_eq!(code, 503, "{ready}");
    })
    .await;
    proxy.up();
    eventually(
        Duration::from_secs(60),
        "the archive to catch up",
        || async {
            let status = app.projections().await.expect("projections");
            let a = projection_view(&status, "archive");
            if a.is_some_and(|a| a.lag == Some(0) && a.state == "running") {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await;

    // Every event once: the flushed files' offset ranges tile 0..=sent with no overlap.
    let direct = S3Config {
        endpoint: Some(endpoint),
        ..cfg
    };
    let store = S3Store::connect(&direct).await;
    let gen = String::from_utf8(store.get("_current").await.unwrap().unwrap()).unwrap();
    let files = store
        .list(&format!("{}/events/", gen.trim()))
        .await
        .unwrap();
    let mut ranges = BTreeMap::new();
    for key in &files {
        let name = key.rsplit('/').next().unwrap();
        let (a, b) = name.trim_end_matches(".parquet").split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(
            ranges.insert(a, b).is_none(),
            "two files start at {a}: {files:?}"
        );
    }
    let mut next = 0;
    for (a, b) in &ranges {
        assert_eq!(*a, next, "a gap or an overlap before {a}: {ranges:?}");
        next = b + 1;
    }
    assert_eq!(
        next,
        sent + 1,
        "the archive holds offsets 0..{next}, the log 0..={sent}"
    );
    app.stop().await;
}
