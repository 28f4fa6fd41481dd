//! The archive on a real S3-compatible object store (Garage, started by
//! scripts/test.sh): multipart uploads, a server killed while archiving, and pyarrow
//! reading the lake from S3.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use parkade::projections::archive::{S3Config, S3Store};

use crate::common;

/// The bucket given by scripts/test.sh. A missing store fails the test (it never
/// passes by skipping): run the suite with `./scripts/test.sh`, which starts Garage.
pub(crate) fn s3(prefix: &str) -> S3Config {
    let endpoint = std::env::var("PARKADE_TEST_S3_ENDPOINT").expect(
        "PARKADE_TEST_S3_ENDPOINT is not set: these tests need a real S3 server; \
         ./scripts/test.sh starts Garage and sets it",
    );
    S3Config {
        bucket: std::env::var("PARKADE_TEST_S3_BUCKET").unwrap_or_else(|_| "parkade-test".into()),
        prefix: prefix.to_owned(),
        region: std::env::var("PARKADE_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
        endpoint: Some(endpoint),
        path_style: true,
    }
}

fn config_file(dir: &Path, cfg: &S3Config, roll_events: usize) -> std::path::PathBuf {
    let path = dir.join("parkade.toml");
    std::fs::write(&path, config_text(cfg, roll_events)).unwrap();
    path
}

/// A configuration file's text: the archive on `cfg`, rolled every `roll_events`.
pub(crate) fn config_text(cfg: &S3Config, roll_events: usize) -> String {
    format!(
        "[archive]\nroll_events = {roll_events}\nroll_secs = 1\n[archive.s3]\nbucket = \"{}\"\nprefix = \"{}\"\nregion = \"{}\"\nendpoint = \"{}\"\npath_style = true\n",
        cfg.bucket,
        cfg.prefix,
        cfg.region,
        cfg.endpoint.as_deref().unwrap()
    )
}

fn parkade(args: &[&str], dir: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(common::binary());
    cmd.args(args)
        .env("PARKADE_DATA_DIR", dir)
        .env("PARKADE_CONFIG", config)
        .env_remove("PARKADE_DATABASE_URL")
        .env("RUST_LOG", "warn");
    cmd
}

pub(crate) async fn current_generation(store: &S3Store) -> String {
    let raw = store
        .get("_current")
        .await
        .unwrap()
        .expect("_current exists");
    String::from_utf8(raw).unwrap().trim().to_owned()
}

#[tokio::test]
async fn large_objects_go_up_in_parts_and_come_back_whole() {
    let cfg = s3(&format!("multipart-{}", uuid::Uuid::new_v4().simple()));
    let store = S3Store::connect(&cfg).await;
    let body: Vec<u8> = (0..(20u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert!(body.len() > parkade::projections::archive::MULTIPART_THRESHOLD);
    store.put("big/object.bin", body.clone()).await.unwrap();
    assert_eq!(
        store.get("big/object.bin").await.unwrap().as_deref(),
        Some(&body[..])
    );
    assert_eq!(
        store.list("big/").await.unwrap(),
        vec!["big/object.bin".to_owned()]
    );
    store.delete("big/object.bin").await.unwrap();
    assert_eq!(store.get("big/object.bin").await.unwrap(), None);
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn killed_while_archiving_to_s3_then_restarted_every_event_is_there_once() {
    let prefix = format!("lake-{}", uuid::Uuid::new_v4().simple());
    let cfg = s3(&prefix);
    let dir = common::data_dir();
    // Import with the archive off, so the server has the whole backlog to upload.
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[archive]\nenabled = false\n").unwrap();
    let out = parkade(
        &["import", common::birmingham().to_str().unwrap()],
        dir.path(),
        &off,
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let config = config_file(dir.path(), &cfg, 1_000);
    let store = S3Store::connect(&cfg).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve = || {
        parkade(&["serve"], dir.path(), &config)
            .env("PARKADE_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let child = serve();
    // Kill it once a few flushes are done, somewhere in the middle of the backlog.
    common::eventually(Duration::from_secs(60), "three archive flushes", || async {
        let Some(gen) = store.get("_current").await.unwrap() else {
            return Err("no generation yet".to_owned());
        };
        let gen = String::from_utf8(gen).unwrap();
        let marks = store
            .list(&format!("{}/_progress/", gen.trim()))
            .await
            .unwrap();
        if marks.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{} flushes", marks.len()))
        }
    })
    .await;
    kill(child);
    let gen = current_generation(&store).await;
    let marks = store.list(&format!("{gen}/_progress/")).await.unwrap();
    assert!(
        marks.len() < 32,
        "killed before the end: {} flushes done",
        marks.len()
    );

    // A flush cut short after its first file: an object without a progress marker.
    let next_first = marks.len() as u64 * 1_000;
    let orphan = format!(
        "{gen}/events/date=2016-10-04/{next_first:020}-{:020}.parquet",
        next_first + 999
    );
    let some_file = store
        .list(&format!("{gen}/events/"))
        .await
        .unwrap()
        .remove(0);
    store
        .put(&orphan, store.get(&some_file).await.unwrap().unwrap())
        .await
        .unwrap();

    let child = serve();
    let base = format!("http://127.0.0.1:{port}");
    let end = common::eventually(
        Duration::from_secs(120),
        "the archive to catch up after the restart",
        || async {
            let out = Command::new("curl")
                .args(["-s", &format!("{base}/v1/admin/projections")])
                .output()
                .map_err(|e| e.to_string())?;
            let v = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .map_err(|e| e.to_string())?;
            let a = v["projections"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == "archive").cloned())
                .unwrap_or_default();
            if a["checkpoint"] == v["log_end"] && a["state"] == "running" {
                Ok(v["log_end"].as_u64().unwrap())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    kill(child);
    let lake = common::read_lake_at(&format!("s3://{}/{prefix}/{gen}/events", cfg.bucket));
    let offsets = common::lake_offsets(&lake);
    assert_eq!(offsets.len() as u64, end);
    assert_eq!(
        offsets,
        (0..end).collect::<Vec<_>>(),
        "every event exactly once"
    );
    assert_eq!(lake["records"][0]["event_type"], "LotRegistered");
}

/// Two nodes on one shared log (JetStream), one database and one bucket: only the node
/// holding the archive's lease writes the archive (and only the features lake's holder
/// the features lake); the other stands by. When the holder stops, its lease is given
/// back and the other takes it at once, without waiting out the grace: every event is
/// in the lake exactly once. (A holder that stalls instead is followed after the grace:
/// `cluster::a_stalled_lease_holder_is_taken_over_and_the_read_model_goes_on`.)
#[actix_web::test]
async fn of_two_nodes_on_one_bucket_only_the_lease_holder_writes_the_lake() {
    use parkade::projections::lease::TAKEOVER_GRACE;
    let nats = common::nats::Nats::single();
    let db = common::TestDb::new();
    let prefix = format!("lake-{}", uuid::Uuid::new_v4().simple());
    let config = |dir: &Path| {
        let mut c = common::test_config(dir, Some(&db));
        c.log.backend = parkade::config::LogBackend::Jetstream;
        c.log.nats_url = nats.urls();
        c.archive.s3 = Some(s3(&prefix));
        c.archive.roll_events = 5;
        c
    };
    let (dir_a, dir_b) = (common::data_dir(), common::data_dir());
    let a = common::TestApp::spawn(config(dir_a.path()), Default::default()).await;
    common::register(&a, "north", 500).await;
    a.wait_caught_up("archive").await;
    let b = common::TestApp::spawn(config(dir_b.path()), Default::default()).await;
    for name in ["archive", "features-lake"] {
        common::wait_standby(&b, name).await;
    }
    for _ in 0..20 {
        common::arrive(&a, "north").await;
        common::arrive(&b, "north").await;
    }
    a.wait_caught_up("archive").await;
    assert_eq!(
        common::projection_state(&b, "archive").await.unwrap().0,
        "standby"
    );
    // Idle between writes, the holder keeps its lease by renewing it: still standing
    // by after more than the grace.
    tokio::time::sleep(TAKEOVER_GRACE + Duration::from_secs(3)).await;
    assert_eq!(
        common::projection_state(&b, "archive").await.unwrap().0,
        "standby",
        "an idle holder was taken over"
    );

    a.stop().await;
    let stopped = std::time::Instant::now();
    for _ in 0..10 {
        common::arrive(&b, "north").await;
    }
    b.wait_caught_up("archive").await;
    assert!(
        stopped.elapsed() < TAKEOVER_GRACE,
        "the lease given back on a clean stop is taken at once, not after the grace: {:?}",
        stopped.elapsed()
    );
    let end = b.projections().await.unwrap().log_end;
    assert_eq!(end, 51, "the registration and 50 arrivals");
    b.stop().await;

    let store = S3Store::connect(&s3(&prefix)).await;
    let gen = current_generation(&store).await;
    let lake = common::read_lake_at(&format!(
        "s3://{}/{prefix}/{gen}/events",
        s3(&prefix).bucket
    ));
    assert_eq!(
        common::lake_offsets(&lake),
        (0..end).collect::<Vec<_>>(),
        "every event exactly once"
    );
    let features = store.list("features/").await.unwrap();
    assert!(!features.is_empty(), "the features lake was written");
}

/// A lake write under a lease never runs past the budget from the renewal before it;
/// the lease is not taken over while renewed, is once the grace has passed since its
/// last renewal, and the old holder's next write is then refused, not made.
#[tokio::test]
async fn a_lake_write_under_a_lease_ends_within_its_budget_or_not_at_all() {
    use parkade::projections::lease::{LakeLease, LeaseError, WRITE_BUDGET};
    use parkade::projections::ProjectionName;
    let db = common::TestDb::new();
    let pool = parkade::projections::db::connect(&db.url).await.unwrap();
    let board = parkade::projections::StatusBoard::default();
    let shutdown = CancellationToken::new();
    let mut lease = LakeLease::new(pool.clone(), ProjectionName::Archive);
    assert!(lease.take(&board, &shutdown).await);
    let started = std::time::Instant::now();
    let slow = lease
        .write(async {
            tokio::time::sleep(WRITE_BUDGET + Duration::from_secs(5)).await;
            Ok::<_, LeaseError>("written")
        })
        .await;
    assert!(matches!(slow, Err(LeaseError::TooSlow)), "{slow:?}");
    assert!(
        started.elapsed() <= WRITE_BUDGET + Duration::from_secs(1),
        "abandoned at the budget's end: {:?}",
        started.elapsed()
    );
    // Nobody takes a lease renewed within the grace.
    let mut next = LakeLease::new(pool.clone(), ProjectionName::Archive);
    let waited = tokio::time::timeout(Duration::from_secs(3), next.take(&board, &shutdown)).await;
    assert!(waited.is_err(), "a renewed lease was taken over");
    // Once the grace has passed since the last renewal (as when its holder stalled),
    // another process takes it, and the old holder's next write finds out before
    // writing.
    db.query("UPDATE projection_leases SET renewed_at = now() - interval '31 seconds' WHERE name = 'archive'")
        .await;
    assert!(
        next.take(&board, &shutdown).await,
        "taken over after the grace"
    );
    let mut wrote = false;
    let after = lease
        .write(async {
            wrote = true;
            Ok::<_, LeaseError>(())
        })
        .await;
    assert!(matches!(after, Err(LeaseError::Lost(_))), "{after:?}");
    assert!(!wrote, "nothing written without the lease");
}
