//! The cluster tests, with real processes: `nats-server` nodes (the stream replicated
//! three times) and `parkade serve` nodes, on one PostgreSQL where the projections run.
//! The fault run sends a mixed load through three nodes while NATS and parkade nodes
//! are killed -9 and stalled in turn; afterwards every acknowledged event is in the
//! stream exactly once, each lot's occupancy stayed within its bounds at every event,
//! every node's copy and the read model equal the fold of the stream (`parkade
//! verify`), a websocket subscriber saw every event in order without a gap, and every
//! node answered again within seconds of each fault. Beside it: refusals decided on
//! fresh state, and readiness while a node's copy is behind.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parkade::api::wire;
use parkade::domain::LotEvent;
use parkade::live::Message;
use parkade::log::jetstream::{JetStreamOptions, Stream};
use serde_json::{json, Value};

use crate::common::nats::Nats;
use crate::common::{self, TestDb};

const LOTS: [(&str, u32); 2] = [("gate", 150), ("west", 40)];

struct Node {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn new() -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Node {
            dir: common::data_dir(),
            port,
            child: None,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self, nats: &Nats, db: &TestDb) {
        self.start_on(nats, Some(db), 3);
    }

    /// `parkade serve` on the stream of `replicas` copies, with PostgreSQL or on the
    /// embedded read side.
    fn start_on(&mut self, nats: &Nats, db: Option<&TestDb>, replicas: usize) {
        self.start_with(nats, db, replicas, "");
    }

    /// [`Self::start_on`] with `config` as its configuration file.
    fn start_with(&mut self, nats: &Nats, db: Option<&TestDb>, replicas: usize, config: &str) {
        let mut command = Command::new(common::binary());
        if let Some(db) = db {
            command.env("PARKADE_DATABASE_URL", &db.url);
        }
        if !config.is_empty() {
            let path = self.dir.path().join("parkade.toml");
            std::fs::write(&path, config).unwrap();
            command.env("PARKADE_CONFIG", path);
        }
        let child = command
            .arg("serve")
            .env("PARKADE_DATA_DIR", self.dir.path())
            .env("PARKADE_BIND", format!("127.0.0.1:{}", self.port))
            .env("PARKADE_LOG_BACKEND", "jetstream")
            .env("PARKADE_NATS_URL", nats.urls())
            .env("PARKADE_NATS_REPLICAS", replicas.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start parkade serve");
        self.child = Some(child);
    }

    /// SIGSTOP, then SIGCONT: the process keeps its sockets and answers nothing.
    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {which} {pid}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    async fn wait_healthy(&self) {
        common::wait_healthy(&self.base()).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gate: sends batches of arrivals and departures with its own event ids to its node,
/// and a batch that got no answer (the node died, or said 503) to the other node, the
/// same ids again, until one answers; so too the events of a batch marked `error` (the
/// log could not take them, or not say in time whether it did). Returns the ids
/// acknowledged.
async fn gate(
    bases: Vec<String>,
    first: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut n = seed;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<(String, Value)> = (0..10)
            .map(|_| {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let (lot, _) = LOTS[(n >> 33) as usize % 2];
                let kind = if (n >> 40).is_multiple_of(3) {
                    "DEPARTURE"
                } else {
                    "ARRIVAL"
                };
                let id = uuid::Uuid::new_v4().to_string();
                let e = json!({"lot_id": lot, "event_type": kind, "event_id": id});
                (id, e)
            })
            .collect();
        let mut target = first;
        let started = std::time::Instant::now();
        let mut batch = batch;
        while !batch.is_empty() {
            let body = json!(batch.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>());
            let reply = match common::post_json(&bases[target], "/v1/events", &body).await {
                Some((200, reply)) => reply,
                _ => {
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "no node took a batch for 60 s"
                    );
                    target = (target + 1) % bases.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let mut again = Vec::new();
            let mut a = acked.lock().unwrap();
            for ((id, e), r) in batch.into_iter().zip(reply["results"].as_array().unwrap()) {
                match r["status"].as_str() {
                    Some("accepted" | "duplicate") => a.push(id),
                    Some("rejected") => {}
                    Some("error") => again.push((id, e)),
                    other => panic!("{other:?}: {r}"),
                }
            }
            batch = again;
            if !batch.is_empty() {
                target = (target + 1) % bases.len();
            }
        }
    }
}

/// Every change a subscriber receives: (offset, lot, occupancy), from its snapshot on.
/// Closed as a slow consumer (a test process starved of the shared cores falls behind),
/// it resumes after the last change it has, as the close reason tells clients to: the
/// changes it collects must still be every one, in order.
async fn subscribe(
    base: String,
    seen: Arc<Mutex<Vec<(u64, String, u32)>>>,
    from: Arc<Mutex<Option<u64>>>,
) {
    let mut resume: Option<u64> = None;
    loop {
        let mut url = format!("{}/v1/ws", base.replace("http://", "ws://"));
        if let Some(next) = resume {
            url.push_str(&format!("?from_offset={next}"));
        }
        let (_, mut ws) = awc::Client::new()
            .ws(url)
            .max_frame_size(1 << 20)
            .connect()
            .await
            .expect("websocket handshake");
        let mut closed_slow = false;
        while let Some(frame) = ws.next().await {
            match frame.expect("a valid frame") {
                awc::ws::Frame::Text(b) => match serde_json::from_slice::<Message>(&b).unwrap() {
                    Message::Snapshot { next_offset, .. } => {
                        let mut from = from.lock().unwrap();
                        from.get_or_insert(next_offset);
                    }
                    Message::Change {
                        offset,
                        lot_id,
                        occupancy,
                        ..
                    } => seen
                        .lock()
                        .unwrap()
                        .push((offset, lot_id.into_owned(), occupancy)),
                    Message::Live { .. } => {}
                },
                awc::ws::Frame::Ping(p) => ws.send(awc::ws::Message::Pong(p)).await.unwrap(),
                awc::ws::Frame::Close(Some(r)) if r.code == awc::ws::CloseCode::Other(4008) => {
                    let last = seen.lock().unwrap().last().map(|c| c.0 + 1);
                    resume = last.or(*from.lock().unwrap());
                    closed_slow = true;
                    break;
                }
                awc::ws::Frame::Close(r) => panic!("the subscriber was closed: {r:?}"),
                _ => {}
            }
        }
        if !closed_slow {
            return;
        }
    }
}

/// One client, strictly one request after the other, on a lot of one space: an arrival
/// through one node, then the departure through the other, and so on. Each request is
/// sent once its predecessor was acknowledged, so none may be refused: a node that has
/// not yet followed the other's event must find it before it refuses (full, empty).
#[actix_web::test]
async fn a_node_refuses_only_on_state_as_fresh_as_the_other_nodes_acknowledgements() {
    let nats = Nats::single();
    let mut nodes = [Node::new(), Node::new()];
    for n in &mut nodes {
        n.start_on(&nats, None, 1);
    }
    for n in &nodes {
        n.wait_healthy().await;
    }
    let (status, reply) = common::post_json(
        &nodes[0].base(),
        "/v1/lots",
        &json!({"lot_id": "one", "name": "One space", "capacity": 1}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{reply}");
    // The other node knows the lot.
    common::wait_ok(
        &nodes[1].base(),
        "/v1/lots/one",
        "the lot on the other node",
        Duration::from_secs(10),
    )
    .await;
    let mut refused = Vec::new();
    for i in 0..120 {
        let kind = if i % 2 == 0 { "ARRIVAL" } else { "DEPARTURE" };
        // Arrivals through one node, departures through the other: each request goes
        // to the node that did not take the one before.
        let node = &nodes[i % 2];
        let (status, reply) = common::post_json(
            &node.base(),
            "/v1/events",
            &json!({"lot_id": "one", "event_type": kind}),
        )
        .await
        .unwrap();
        match status {
            200 => {}
            409 => refused.push((i, kind, reply["error"].clone())),
            _ => panic!("request {i} ({kind}): {status} {reply}"),
        }
    }
    assert!(
        refused.is_empty(),
        "refused on stale state: {} of 120: {refused:?}",
        refused.len()
    );
}

/// A node whose copy of the stream is behind it by more than `[log] max_copy_lag` says
/// it is not ready, and ready again once its copy caught up; `/metrics` shows the lag
/// and that the server keeps no consumer for its reads.
#[actix_web::test]
async fn a_node_whose_copy_is_behind_is_not_ready_until_it_caught_up() {
    let nats = Nats::single();
    let mut node = Node::new();
    node.start_with(&nats, None, 1, "[log]\nmax_copy_lag = 0\n");
    node.wait_healthy().await;
    let (status, reply) = common::post_json(
        &node.base(),
        "/v1/lots",
        &json!({"lot_id": "big", "name": "Big", "capacity": 1_000_000}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{reply}");
    // Another writer appends to the stream without pause; the node's copy follows.
    let stream = Stream::connect_existing(&JetStreamOptions {
        url: nats.urls(),
        stream: "PARKADE".into(),
        replicas: 1,
        credentials: None,
        max_copy_lag: 0,
    })
    .await
    .unwrap();
    let writer = actix_web::rt::spawn(async move {
        let mut last = stream
            .last_of_lot(&parkade::domain::LotId::parse("big").unwrap())
            .await
            .unwrap();
        let mut n = 0u64;
        for _ in 0..40 {
            // After the registration (the lot's first event), as the node would write them.
            let events: Vec<_> = crate::conformance::arrivals("big", 0, 1_000)
                .into_iter()
                .map(|mut e| {
                    n += 1;
                    (e.lot_seq, e.occupancy, e.capacity) = (n + 1, n as u32, 1_000_000);
                    e
                })
                .collect();
            let offsets = stream.append_lot(Some(last), &events).await.unwrap();
            last = offsets.last().unwrap() + 1;
        }
    });
    let mut behind = None;
    while !writer.is_finished() {
        let r = awc::Client::new()
            .get(format!("{}/readyz", node.base()))
            .send()
            .await;
        if let Ok(mut r) = r {
            if r.status() == 503 {
                let body: Value = r.json().await.unwrap();
                if body.to_string().contains("log_copy_behind") {
                    behind = Some(body);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.unwrap();
    let behind =
        behind.expect("/readyz never said the copy was behind while it followed 40,000 events");
    println!("while behind: {behind}");
    common::wait_ok(
        &node.base(),
        "/readyz",
        "ready again",
        Duration::from_secs(20),
    )
    .await;
    let mut r = awc::Client::new()
        .get(format!("{}/metrics", node.base()))
        .send()
        .await
        .unwrap();
    let page = String::from_utf8(r.body().limit(1 << 24).await.unwrap().to_vec()).unwrap();
    assert!(page.contains("parkade_log_copy_lag_events 0"), "{page}");
    assert!(page.contains("parkade_jetstream_consumers 0"), "{page}");
}

/// A probe of one node: one event at a time (its own event id, sent again to the same
/// node until it is answered), noting when the node answered (accepted, duplicate or
/// refused: the node decided). Returns the ids acknowledged.
async fn probe(
    base: String,
    node: usize,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(usize, std::time::Instant)>>>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let kind = if k % 2 == 1 { "ARRIVAL" } else { "DEPARTURE" };
        let id = uuid::Uuid::new_v4().to_string();
        let body = json!({"lot_id": "west", "event_type": kind, "event_id": id});
        loop {
            match common::post_json(&base, "/v1/events", &body).await {
                Some((200, _)) => {
                    acked.push(id);
                    break;
                }
                Some((409, _)) => break,
                _ if stop.load(Ordering::Relaxed) => return acked,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        answers
            .lock()
            .unwrap()
            .push((node, std::time::Instant::now()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acked
}

/// The acceptance's fault run: three NATS nodes, three parkade nodes on one PostgreSQL,
/// a mixed load with client event ids (gates sending batches and failing over, and a
/// probe per node), while in turn the stream's leader is stalled, a NATS follower is
/// killed -9 and restarted, a NATS follower is stalled, a parkade node is killed -9
/// and restarted, and a parkade node is stalled. Afterwards: every acknowledged event
/// in the stream once, each lot within bounds at every event, every node's lots equal
/// to the stream's fold, a websocket on a node no fault touched gapless and in order,
/// the read model equal to the stream (`parkade verify`), no consumer on the stream;
/// and every node answered again within 10 s of each fault's end.
#[actix_web::test]
async fn three_nodes_lose_nothing_and_answer_again_within_seconds_through_kills_and_stalls() {
    let mut nats = Nats::cluster(3);
    let db = TestDb::new();
    let mut nodes = [Node::new(), Node::new(), Node::new()];
    nodes[0].start(&nats, &db);
    nodes[0].wait_healthy().await;
    for (lot, capacity) in LOTS {
        let (status, reply) = common::post_json(
            &nodes[0].base(),
            "/v1/lots",
            &json!({"lot_id": lot, "name": lot, "capacity": capacity}),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{reply}");
    }
    for n in &mut nodes[1..] {
        n.start(&nats, &db);
    }
    for n in &nodes[1..] {
        n.wait_healthy().await;
    }
    let bases: Vec<String> = nodes.iter().map(Node::base).collect();
    // Every node knows the lots.
    for base in &bases {
        common::wait_ok(
            base,
            "/v1/lots/west",
            "the lots on every node",
            Duration::from_secs(20),
        )
        .await;
    }

    let seen: Arc<Mutex<Vec<(u64, String, u32)>>> = Arc::default();
    let from: Arc<Mutex<Option<u64>>> = Arc::default();
    let watcher = actix_web::rt::spawn(subscribe(bases[0].clone(), seen.clone(), from.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let gates: Vec<_> = (0..3)
        .map(|i| {
            actix_web::rt::spawn(gate(
                bases.clone(),
                i,
                i as u64 + 11,
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    let answers: Arc<Mutex<Vec<(usize, std::time::Instant)>>> = Arc::default();
    let probes: Vec<_> = (0..3)
        .map(|i| actix_web::rt::spawn(probe(bases[i].clone(), i, stop.clone(), answers.clone())))
        .collect();
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let urls: Vec<String> = nats.nodes.iter().map(|n| n.url()).collect();
    let stream = |i: usize| {
        let url = urls[i].clone();
        async move {
            Stream::connect_existing(&JetStreamOptions {
                url,
                stream: "PARKADE".into(),
                replicas: 3,
                credentials: None,
                max_copy_lag: parkade::log::jetstream::DEFAULT_MAX_COPY_LAG,
            })
            .await
        }
    };
    let mut faults: Vec<(String, std::time::Instant)> = Vec::new();
    let stall = Duration::from_secs(10);
    // 1. The stream's leader stalls.
    let watch = stream(0).await.unwrap();
    let lead = stream_leader(&watch).await;
    let li = nats.nodes.iter().position(|n| n.name == lead).unwrap();
    nats.nodes[li].stall();
    tokio::time::sleep(stall).await;
    nats.nodes[li].resume();
    faults.push((
        format!("NATS {lead} (the stream's leader) stalled {stall:?}"),
        std::time::Instant::now(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // 2. A NATS follower is killed -9, and comes back.
    let watch = stream(li).await.unwrap();
    let lead = stream_leader(&watch).await;
    let fi = (0..3).find(|&i| nats.nodes[i].name != lead).unwrap();
    nats.nodes[fi].kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    nats.nodes[fi].start();
    faults.push((
        format!(
            "NATS {} (a follower) killed -9 for 4 s",
            nats.nodes[fi].name
        ),
        std::time::Instant::now(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // 3. A NATS follower stalls.
    let lead = stream_leader(&watch).await;
    let fi = (0..3).rev().find(|&i| nats.nodes[i].name != lead).unwrap();
    nats.nodes[fi].stall();
    tokio::time::sleep(stall).await;
    nats.nodes[fi].resume();
    faults.push((
        format!(
            "NATS {} (a follower) stalled {stall:?}",
            nats.nodes[fi].name
        ),
        std::time::Instant::now(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // 4. A parkade node is killed -9, and comes back.
    nodes[2].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[2].start(&nats, &db);
    nodes[2].wait_healthy().await;
    faults.push((
        "parkade node 3 killed -9 and restarted".into(),
        std::time::Instant::now(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // 5. A parkade node stalls.
    nodes[1].signal("-STOP");
    tokio::time::sleep(Duration::from_secs(8)).await;
    nodes[1].signal("-CONT");
    faults.push((
        "parkade node 2 stalled 8 s".into(),
        std::time::Instant::now(),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for g in gates {
        g.await.unwrap();
    }
    let mut acked = acked.lock().unwrap().clone();
    for p in probes {
        acked.extend(p.await.unwrap());
    }
    let load_ended = std::time::Instant::now();

    // Every node answered again within 10 s of each fault's end.
    let answers = answers.lock().unwrap().clone();
    let mut report = Vec::new();
    for (what, end) in &faults {
        let mut again = Vec::new();
        for n in 0..3 {
            let first = answers
                .iter()
                .filter(|(node, at)| *node == n && at >= end)
                .map(|(_, at)| at.duration_since(*end))
                .min();
            again.push(first);
        }
        report.push(format!("{what}: answered again after {again:?}"));
        for (n, first) in again.iter().enumerate() {
            let first =
                first.unwrap_or_else(|| panic!("node {} never answered after {what}", n + 1));
            assert!(
                first <= Duration::from_secs(10),
                "node {} answered {first:?} after {what}",
                n + 1
            );
        }
    }
    let mut longest = [Duration::ZERO; 3];
    for (n, l) in longest.iter_mut().enumerate() {
        let times: Vec<_> = answers
            .iter()
            .filter(|(node, _)| *node == n)
            .map(|(_, at)| *at)
            .collect();
        for w in times.windows(2) {
            *l = (*l).max(w[1] - w[0]);
        }
    }

    // The stream: every acknowledged event once; each lot within bounds at each event.
    let stream = stream(0).await.unwrap();
    let end = stream.end().await.unwrap();
    let mut events = Vec::new();
    while (events.len() as u64) < end {
        events.extend(stream.read(events.len() as u64, 10_000).await.unwrap());
    }
    let mut ids = HashSet::new();
    for e in &events {
        assert!(
            ids.insert(e.event.event_id.to_string()),
            "{} twice",
            e.event.event_id
        );
    }
    let missing = acked.iter().filter(|id| !ids.contains(*id)).count();
    assert_eq!(missing, 0, "acknowledged events not in the stream");
    let mut occupancy: HashMap<String, i64> = HashMap::new();
    let mut lot_seq: HashMap<String, u64> = HashMap::new();
    for e in &events {
        let lot = e.event.lot_id.to_string();
        let capacity = LOTS.iter().find(|(l, _)| *l == lot).unwrap().1;
        let seq = lot_seq.entry(lot.clone()).or_default();
        *seq += 1;
        assert_eq!(e.event.lot_seq, *seq, "{lot}: lot_seq at {}", e.offset);
        let occ = occupancy.entry(lot.clone()).or_default();
        match e.event.event {
            LotEvent::VehicleArrived => *occ += 1,
            LotEvent::VehicleDeparted => *occ -= 1,
            _ => {}
        }
        assert!(
            (0..=i64::from(capacity)).contains(occ),
            "{lot}: {occ} at {}",
            e.offset
        );
        assert_eq!(i64::from(e.event.occupancy), *occ, "{lot} at {}", e.offset);
    }
    assert_eq!(
        stream.state().await.unwrap().consumer_count,
        0,
        "consumers left on the stream"
    );

    // Every node's copy reaches the stream's fold.
    for base in &bases {
        common::eventually(
            Duration::from_secs(30),
            "every node's lots to equal the stream",
            || {
                let (base, occupancy) = (base.clone(), occupancy.clone());
                async move {
                    for (lot, want) in &occupancy {
                        let mut r = awc::Client::new()
                            .get(format!("{base}/v1/lots/{lot}"))
                            .send()
                            .await
                            .map_err(|e| e.to_string())?;
                        let v: Value = r.json().await.map_err(|e| e.to_string())?;
                        if v["occupancy"] != *want
                            || v["offset"].as_u64().map(|o| o + 1) > Some(end)
                        {
                            return Err(format!("{base} {lot}: {v} (the stream: {want})"));
                        }
                    }
                    Ok(())
                }
            },
        )
        .await;
    }
    let converged = load_ended.elapsed();

    // The websocket on the node no fault touched saw every event after its snapshot.
    let first = from.lock().unwrap().expect("a snapshot");
    common::eventually(
        Duration::from_secs(20),
        "the subscriber to see the end",
        || {
            let n = seen.lock().unwrap().len() as u64;
            async move {
                if first + n >= end {
                    Ok(())
                } else {
                    Err(format!(
                        "{n} changes from {first}, the stream ends at {end}"
                    ))
                }
            }
        },
    )
    .await;
    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    let want: Vec<(u64, String, u32)> = events[first as usize..]
        .iter()
        .map(|e| (e.offset, e.event.lot_id.to_string(), e.event.occupancy))
        .collect();
    assert_eq!(
        seen, want,
        "the subscriber's changes are the stream's events"
    );

    // The read model reaches the end and equals the fold of the stream.
    common::eventually(
        Duration::from_secs(60),
        "the read model to reach the end",
        || {
            let bases = bases.clone();
            async move {
                for base in &bases {
                    let Ok(mut r) = awc::Client::new()
                        .get(format!("{base}/v1/admin/projections"))
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let v: wire::Projections = r.json().await.map_err(|e| e.to_string())?;
                    if let Some(p) = common::projection_view(&v, "occupancy") {
                        if p.state == "running" && p.checkpoint == end {
                            return Ok(());
                        }
                    }
                }
                Err("no node's occupancy projection is at the end".to_owned())
            }
        },
    )
    .await;
    let (ok, text) = common::output(
        Command::new(common::binary())
            .arg("verify")
            .env("PARKADE_DATA_DIR", nodes[0].dir.path())
            .env("PARKADE_DATABASE_URL", &db.url)
            .env("PARKADE_LOG_BACKEND", "jetstream")
            .env("PARKADE_NATS_URL", nats.urls()),
    );
    assert!(ok, "{text}");
    assert!(text.contains("no differences"), "{text}");
    println!(
        "fault run: {} s, {} events in the stream, {} acknowledged, {} faults; longest without an answer per node {longest:?}; copies converged {converged:?} after the load; {}",
        started.elapsed().as_secs(),
        events.len(),
        acked.len(),
        faults.len(),
        report.join("; ")
    );
}

/// The stream's leader, once there is one.
async fn stream_leader(s: &Stream) -> String {
    common::eventually(Duration::from_secs(30), "a stream leader", || async {
        match s.leader().await {
            Ok(Some(l)) => Ok(l),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// A projection whose checkpoint (left by the last holder of its lease) lies past this
/// node's copy of the stream stands by until the copy has caught up, instead of
/// failing as on a log that lost events. Here the checkpoint is moved three events
/// ahead in the database and the lease handed to a holder long silent, so that the
/// node's runner takes the lease again and finds the checkpoint there; then three
/// events arrive.
#[actix_web::test]
async fn a_new_holder_whose_copy_is_behind_the_checkpoint_stands_by_until_it_caught_up() {
    let nats = Nats::single();
    let db = TestDb::new();
    let mut node = Node::new();
    node.start_on(&nats, Some(&db), 1);
    node.wait_healthy().await;
    let base = node.base();
    let (status, reply) = common::post_json(
        &base,
        "/v1/lots",
        &json!({"lot_id": "one", "name": "One", "capacity": 100}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{reply}");
    let arrive = |n: usize| {
        let base = base.clone();
        async move {
            for _ in 0..n {
                let (s, r) = common::post_json(
                    &base,
                    "/v1/events",
                    &json!({"lot_id": "one", "event_type": "ARRIVAL"}),
                )
                .await
                .unwrap();
                assert_eq!(s, 200, "{r}");
            }
        }
    };
    arrive(2).await;
    let occupancy = |base: String| async move {
        let mut r = awc::Client::new()
            .get(format!("{base}/v1/admin/projections"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: wire::Projections = r.json().await.map_err(|e| e.to_string())?;
        let p = common::projection_view(&v, "occupancy").ok_or("no occupancy")?;
        Ok::<(String, u64), String>((p.state.to_string(), p.checkpoint))
    };
    let expect = |state: &'static str, checkpoint: u64| {
        let base = base.clone();
        async move {
            common::eventually(
                Duration::from_secs(20),
                "the occupancy projection's state",
                || {
                    let base = base.clone();
                    async move {
                        match occupancy(base).await? {
                            (s, c) if s == state && c == checkpoint => Ok(()),
                            other => Err(format!("{other:?}, not ({state}, {checkpoint})")),
                        }
                    }
                },
            )
            .await
        }
    };
    expect("running", 3).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE projection_checkpoints SET next_offset = next_offset + 3 WHERE projection = 'occupancy'")
        .execute(&pool)
        .await
        .unwrap();
    // The lease handed to a holder that has not renewed it for a minute: the node
    // finds it lost at its next renewal and takes it again at once.
    sqlx::query("UPDATE projection_leases SET holder = gen_random_uuid(), renewed_at = now() - interval '1 minute' WHERE name = 'occupancy'")
        .execute(&pool)
        .await
        .unwrap();
    expect("standby", 6).await;
    arrive(3).await;
    expect("running", 6).await;
    pool.close().await;
}

/// The occupancy projection's state and checkpoint as a node shows them.
async fn occupancy_state(base: &str) -> Result<(String, u64, u64), String> {
    state_of(base, "occupancy").await
}

/// Projection `name`'s state and checkpoint on the node at `base`, and its log's end.
async fn state_of(base: &str, name: &str) -> Result<(String, u64, u64), String> {
    let mut r = awc::Client::new()
        .get(format!("{base}/v1/admin/projections"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: wire::Projections = r.json().await.map_err(|e| e.to_string())?;
    let p = common::projection_view(&v, name).ok_or(format!("no {name}"))?;
    Ok((p.state.to_string(), p.checkpoint, v.log_end))
}

/// The node holding the projections' leases stalls (SIGSTOP) with its database
/// sessions open: within seconds the other node takes the PostgreSQL projections' lease
/// over and the read model goes on, and once the grace has passed the archive's (on a
/// shared bucket) too; resumed, the stalled node finds it lost both and stands by, and
/// the archive holds every event exactly once.
#[actix_web::test]
async fn a_stalled_lease_holder_is_taken_over_and_the_read_model_goes_on() {
    use parkade::projections::lease::TAKEOVER_GRACE;
    let nats = Nats::single();
    let db = TestDb::new();
    let bucket = crate::archive_s3::s3(&format!("stall-{}", uuid::Uuid::new_v4().simple()));
    let lake = crate::archive_s3::config_text(&bucket, 2);
    let mut nodes = [Node::new(), Node::new()];
    nodes[0].start_with(&nats, Some(&db), 1, &lake);
    nodes[0].wait_healthy().await;
    let (status, reply) = common::post_json(
        &nodes[0].base(),
        "/v1/lots",
        &json!({"lot_id": "one", "name": "One", "capacity": 1000}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{reply}");
    // The archive takes its lease at its first write: let the first node's be done
    // before the second starts, so that the first holds both leases (else which node
    // writes the archive first is a race).
    let first = nodes[0].base();
    common::eventually(
        Duration::from_secs(20),
        "the first node's archive written",
        || {
            let base = first.clone();
            async move {
                match state_of(&base, "archive").await? {
                    (s, cp, _) if s == "running" && cp >= 1 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    nodes[1].start_with(&nats, Some(&db), 1, &lake);
    nodes[1].wait_healthy().await;
    let bases: Vec<String> = nodes.iter().map(Node::base).collect();
    let holder = common::eventually(
        Duration::from_secs(20),
        "one holder, one standing by",
        || {
            let bases = bases.clone();
            async move {
                let a = occupancy_state(&bases[0]).await?;
                let b = occupancy_state(&bases[1]).await?;
                match (a.0.as_str(), b.0.as_str()) {
                    ("running", "standby") => Ok(0),
                    ("standby", "running") => Ok(1),
                    _ => Err(format!("{a:?} {b:?}")),
                }
            }
        },
    )
    .await;
    let other = 1 - holder;
    let arrive = |base: String, n: usize| async move {
        for _ in 0..n {
            let (s, r) = common::post_json(
                &base,
                "/v1/events",
                &json!({"lot_id": "one", "event_type": "ARRIVAL"}),
            )
            .await
            .unwrap();
            assert_eq!(s, 200, "{r}");
        }
    };
    // The read model running on `base`, folded up to at least `to` and to the log's end.
    let caught_up = |base: String, to: u64| async move {
        common::eventually(Duration::from_secs(30), "the read model folded on", || {
            let base = base.clone();
            async move {
                match occupancy_state(&base).await? {
                    (s, cp, end) if s == "running" && cp == end && cp >= to => Ok(end),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    };
    // The archive on `base` written up to at least `to` and to the log's end.
    let archived = |base: String, to: u64, within: Duration| async move {
        common::eventually(within, "the archive written on", || {
            let base = base.clone();
            async move {
                match state_of(&base, "archive").await? {
                    (s, cp, end) if s == "running" && cp == end && cp >= to => Ok(end),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    };
    archived(bases[holder].clone(), 1, Duration::from_secs(20)).await;
    assert_eq!(
        state_of(&bases[other], "archive").await.unwrap().0,
        "standby",
        "the archive's lease is the first node's too"
    );
    nodes[holder].signal("-STOP");
    let stalled = std::time::Instant::now();
    arrive(bases[other].clone(), 5).await;
    // The lot's registration and five arrivals.
    let end = caught_up(bases[other].clone(), 6).await;
    println!(
        "the stalled holder's lease taken over and the read model at {end} after {:?}",
        stalled.elapsed()
    );
    archived(
        bases[other].clone(),
        end,
        TAKEOVER_GRACE + Duration::from_secs(20),
    )
    .await;
    println!(
        "the stalled holder's archive lease taken over and the archive at {end} after {:?}",
        stalled.elapsed()
    );
    assert!(
        stalled.elapsed() >= TAKEOVER_GRACE - Duration::from_secs(3),
        "the archive's next holder waited out the grace: {:?}",
        stalled.elapsed()
    );
    nodes[holder].signal("-CONT");
    common::eventually(
        Duration::from_secs(20),
        "the resumed node to stand by",
        || {
            let base = bases[holder].clone();
            async move {
                let states = (
                    occupancy_state(&base).await?.0,
                    state_of(&base, "archive").await?.0,
                );
                match &states {
                    (a, b) if a == "standby" && b == "standby" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    arrive(bases[holder].clone(), 2).await;
    caught_up(bases[other].clone(), end + 2).await;
    archived(bases[other].clone(), end + 2, Duration::from_secs(20)).await;
    for node in &mut nodes {
        node.kill();
    }
    let store = parkade::projections::archive::S3Store::connect(&bucket).await;
    let gen = crate::archive_s3::current_generation(&store).await;
    let lake = common::read_lake_at(&format!(
        "s3://{}/{}/{gen}/events",
        bucket.bucket, bucket.prefix
    ));
    assert_eq!(
        common::lake_offsets(&lake),
        (0..end + 2).collect::<Vec<_>>(),
        "every event in the archive exactly once"
    );
}
