//! Kill the real server process (SIGKILL) while clients are sending, restart it, and
//! check that every acknowledged event is still there and the read model matches.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common;
use common::TestDb;
use parkade::api::wire;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &std::path::Path, db: &TestDb, port: u16) -> Child {
    Command::new(common::binary())
        .arg("serve")
        .env("PARKADE_DATA_DIR", dir)
        .env("PARKADE_DATABASE_URL", &db.url)
        .env("PARKADE_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start parkade serve")
}

#[actix_web::test]
async fn no_acknowledged_event_is_lost_when_the_process_is_killed() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), &db, port);
    common::wait_healthy(&base).await;
    let (status, _) = common::post_json(
        &base,
        "/v1/lots",
        &json!({"lot_id": "gate", "name": "Gate", "capacity": 1_000_000}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201);

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let acked = acked.clone();
        let base = base.clone();
        clients.push(actix_web::rt::spawn(async move {
            loop {
                let ids: Vec<String> = (0..20).map(|_| uuid::Uuid::new_v4().to_string()).collect();
                let batch: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"lot_id": "gate", "event_type": "ARRIVAL", "event_id": id}))
                    .collect();
                let Some((200, reply)) =
                    common::post_json(&base, "/v1/events", &json!(batch)).await
                else {
                    return;
                };
                let mut a = acked.lock().unwrap();
                for (id, r) in ids.into_iter().zip(reply["results"].as_array().unwrap()) {
                    assert_eq!(r["status"], "accepted", "{r}");
                    a.push(id);
                }
            }
        }));
    }
    // Let the clients get going, then kill the server without warning.
    common::eventually(Duration::from_secs(20), "2,000 acknowledged events", || {
        let n = acked.lock().unwrap().len();
        async move {
            if n >= 2_000 {
                Ok(())
            } else {
                Err(format!("{n} acknowledged"))
            }
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let mut child = start(dir.path(), &db, port);
    common::wait_healthy(&base).await;
    // Every acknowledged event must be recognised as already durable.
    for chunk in acked.chunks(500) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"lot_id": "gate", "event_type": "ARRIVAL", "event_id": id}))
            .collect();
        let (status, reply) = common::post_json(&base, "/v1/events", &json!(batch))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            reply["duplicates"].as_u64(),
            Some(chunk.len() as u64),
            "lost acknowledged events: {reply}"
        );
    }
    let mut resp = awc::Client::new()
        .get(format!("{base}/v1/lots/gate"))
        .send()
        .await
        .unwrap();
    let lot: Value = resp.json().await.unwrap();
    assert!(
        lot["occupancy"].as_u64().unwrap() >= acked.len() as u64,
        "{lot}"
    );

    // Let the projection catch up, stop, and compare the read model with the log.
    common::eventually(
        Duration::from_secs(30),
        "the projection to catch up",
        || async {
            let mut r = awc::Client::new()
                .get(format!("{base}/v1/admin/projections"))
                .send()
                .await
                .unwrap();
            let v: wire::Projections = r.json().await.unwrap();
            let occupancy = common::projection_view(&v, "occupancy");
            if occupancy.is_some_and(|p| p.lag == Some(0) && p.state == "running") {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let out = Command::new(common::binary())
        .arg("verify")
        .env("PARKADE_DATA_DIR", dir.path())
        .env("PARKADE_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("no differences"), "{text}");
}
