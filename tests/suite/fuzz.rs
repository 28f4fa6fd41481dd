//! Hostile input, generated: the log record decoder, the ingest parser, and the HTTP
//! bodies of the event and lot endpoints of a real running server.
//!
//! The test command runs a short form (thousands of inputs each). The long form sets
//! `PARKADE_FUZZ_CASES` (inputs per pure target) and `PARKADE_FUZZ_HTTP_CASES`
//! (requests per endpoint), see docs/testing.md.
//!
//! What must hold for every input: no panic; no 5xx; a rejected input appends nothing
//! (the log's end moves by exactly the events the reply says were accepted); every
//! record the encoder writes, the decoder reads back as it was; memory stays flat.

use std::time::Instant;

use parkade::app::Hooks;
use parkade::domain::{
    Capacity, LotEvent, LotId, LotName, NewEvent, Timestamp, EARLIEST_EVENT_MICROS,
};
use parkade::ingest::{parse_body, EdgeRules};
use parkade::log::format;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PtConfig, TestRng, TestRunner};
use serde_json::{json, Map, Value};

use crate::common;

fn cases(default: u64) -> u64 {
    env_or("PARKADE_FUZZ_CASES", default)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runner with a fixed seed, so a failure can be replayed.
fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        PtConfig::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    )
}

/// Draw `n` values of `s` and hand each to `check`.
fn each<S: Strategy>(n: u64, s: S, mut check: impl FnMut(S::Value)) {
    let mut r = runner();
    for _ in 0..n {
        let v = s.new_tree(&mut r).expect("a value").current();
        check(v);
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Text that tends to break things: control characters, NUL, long runs, non-ASCII.
fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ._-]{0,80}",
        ".{0,40}",
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}a]{0,10}",
        (1usize..5000).prop_map(|n| "a ".repeat(n)),
        (60usize..70).prop_map(|n| "x".repeat(n)),
        Just("north-1".to_owned()),
        Just(String::new()),
    ]
}

fn timestamp_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..400_000_000_000_000).prop_map(|ms| json!(ms)),
        any::<i64>().prop_map(|ms| json!(ms)),
        any::<u64>().prop_map(|ms| json!(ms)),
        (1900i32..10_000, 1u32..13, 1u32..29, 0u32..24)
            .prop_map(|(y, m, d, h)| json!(format!("{y:04}-{m:02}-{d:02}T{h:02}:00:00Z"))),
        Just(json!("2100-01-01T00:00:00Z")),
        Just(json!("9999-12-31T23:59:59Z")),
        Just(json!("1970-01-01T00:00:00Z")),
        Just(json!(chrono::Utc::now().to_rfc3339())),
        Just(json!(1.5)),
        nasty_text().prop_map(|s| json!(s)),
    ]
}

fn int_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..2000).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        nasty_text().prop_map(|s| json!(s)),
        Just(Value::Null),
    ]
}

/// One JSON object with fields an endpoint knows (and some it does not).
fn object(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        8 => prop::sample::select(fields).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ];
    prop::collection::vec((field, 0u8..6), 0..7).prop_flat_map(|pairs| {
        let values: Vec<_> = pairs
            .into_iter()
            .map(|(k, kind)| {
                let v = match (k.as_str(), kind) {
                    ("timestamp", _) => timestamp_value().boxed(),
                    ("count" | "capacity", _) => int_value().boxed(),
                    ("event_type", 0..=3) => prop::sample::select(vec![
                        "ARRIVAL",
                        "departure",
                        "COUNT",
                        " Arrival ",
                        "PARKED",
                    ])
                    .prop_map(|s| json!(s))
                    .boxed(),
                    ("lot_id", 0..=3) => prop::sample::select(vec!["north-1", "North 1", "ghost"])
                        .prop_map(|s| json!(s))
                        .boxed(),
                    ("event_id", 0..=2) => Just(json!(uuid::Uuid::new_v4().to_string())).boxed(),
                    (_, 0..=3) => nasty_text().prop_map(|s| json!(s)).boxed(),
                    _ => int_value().boxed(),
                };
                v.prop_map(move |v| (k.clone(), v))
            })
            .collect();
        values.prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
    })
}

/// A request body: an object, an array of objects, or broken bytes.
fn body(fields: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => object(fields).prop_map(|v| v.to_string().into_bytes()),
        2 => prop::collection::vec(object(fields), 0..20)
            .prop_map(|v| Value::Array(v).to_string().into_bytes()),
        1 => (object(fields), any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let s = v.to_string().into_bytes();
            let cut = i.index(s.len() + 1);
            s[..cut].to_vec()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ]
}

const EVENT_FIELDS: &[&str] = &["lot_id", "event_type", "timestamp", "count", "event_id"];
const LOT_FIELDS: &[&str] = &["lot_id", "name", "capacity", "event_id", "timestamp"];
const COUNT_FIELDS: &[&str] = &["count", "event_id", "timestamp"];
const PATCH_FIELDS: &[&str] = &["capacity", "event_id", "timestamp"];

#[test]
fn the_record_decoder_takes_any_bytes_without_panicking() {
    each(
        cases(20_000),
        prop::collection::vec(any::<u8>(), 0..600),
        |bytes| {
            if let format::Frame::Record(p, _) = format::next_frame(&bytes) {
                let _ = format::decode_payload(p, &mut |s| LotId::parse(s).unwrap());
            }
            let _ = format::decode_header(&bytes);
        },
    );
}

/// Valid events as the domain can make them: parsed ids and names, any counts and
/// capacities in range, any instants.
fn valid_event() -> impl Strategy<Value = NewEvent> {
    // An id of dots alone is refused (it names folders), so the first is not a dot.
    let lot = "[a-z0-9_-][a-z0-9._-]{0,63}".prop_map(|s| LotId::parse(&s).unwrap());
    // Any text made valid (control characters replaced, blank made non-blank, cut to
    // 200 bytes), so every draw is used: no rejects.
    let name =
        prop_oneof!["[ -~]{1,200}", ".{1,60}", "[\\u{100}-\\u{10ffff}]{1,50}"].prop_map(|s| {
            let mut n: String = s
                .chars()
                .map(|c| if c.is_control() { 'x' } else { c })
                .collect();
            if n.trim().is_empty() {
                n.push('x');
            }
            while n.trim().len() > parkade::domain::MAX_NAME_LEN {
                n.pop();
            }
            LotName::parse(&n).expect("made valid")
        });
    let event = prop_oneof![
        (name, 1u32..=parkade::domain::MAX_CAPACITY).prop_map(|(n, c)| {
            LotEvent::LotRegistered {
                name: n.as_str().to_owned(),
                capacity: Capacity::new(i64::from(c)).unwrap(),
            }
        }),
        (1u32..=parkade::domain::MAX_CAPACITY).prop_map(|c| LotEvent::LotCapacityChanged {
            capacity: Capacity::new(i64::from(c)).unwrap()
        }),
        Just(LotEvent::VehicleArrived),
        Just(LotEvent::VehicleDeparted),
        any::<u32>().prop_map(|count| LotEvent::OccupancyCounted { count }),
    ];
    (
        lot,
        event,
        any::<u64>(),
        any::<u128>(),
        any::<bool>(),
        any::<i64>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(lot_id, event, lot_seq, id, client, at, occupancy, capacity)| NewEvent {
                lot_id,
                lot_seq,
                event_id: uuid::Uuid::from_u128(id),
                client_event_id: client,
                occurred_at: Timestamp::from_micros(at),
                event,
                occupancy,
                capacity,
            },
        )
}

#[test]
fn the_encoder_writes_only_what_the_decoder_reads_back() {
    each(
        cases(20_000),
        (valid_event(), any::<u64>(), any::<i64>()),
        |(e, offset, recorded)| {
            assert!(format::encodable(&e), "{e:?}");
            let mut buf = Vec::new();
            format::encode_record(&mut buf, offset, Timestamp::from_micros(recorded), &e);
            let format::Frame::Record(p, n) = format::next_frame(&buf) else {
                panic!("the decoder refuses {e:?}")
            };
            assert_eq!(n, buf.len());
            let back = format::decode_payload(p, &mut |s| LotId::parse(s).unwrap()).unwrap();
            assert_eq!(back.event, e);
            assert_eq!(back.offset, offset);
            assert_eq!(back.recorded_at.micros(), recorded);
        },
    );
}

#[test]
fn the_ingest_parser_names_a_problem_or_keeps_every_rule() {
    let now = Timestamp::now();
    let rules = EdgeRules {
        now,
        max_future_micros: 900_000_000,
        max_events: 50,
    };
    each(
        cases(20_000),
        (body(EVENT_FIELDS), any::<bool>()),
        |(b, nd)| {
            let Ok((_, events)) = parse_body(&b, nd, &rules) else {
                return;
            };
            for e in events.into_iter().flatten() {
                let at = e.request.occurred_at.micros();
                assert!(at >= EARLIEST_EVENT_MICROS, "{at}");
                assert!(at <= now.micros() + rules.max_future_micros, "{at}");
                assert!(!e.lot_id.as_str().is_empty() && e.lot_id.as_str().len() <= 64);
            }
        },
    );
}

#[actix_rt::test]
async fn the_http_edge_takes_generated_bodies_without_a_5xx_or_a_stray_append() {
    let dir = common::data_dir();
    let app = common::TestApp::spawn(common::test_config(dir.path(), None), Hooks::default()).await;
    let (s, v) = app
        .post(
            "/v1/lots",
            json!({"lot_id": "north-1", "name": "North 1", "capacity": 50}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let n = env_or("PARKADE_FUZZ_HTTP_CASES", 1_500);
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut accepted_total = 0u64;
    let targets: [(&str, &str, &'static [&'static str]); 4] = [
        ("POST", "/v1/events", EVENT_FIELDS),
        ("POST", "/v1/lots", LOT_FIELDS),
        ("POST", "/v1/lots/north-1/count", COUNT_FIELDS),
        ("PATCH", "/v1/lots/north-1", PATCH_FIELDS),
    ];
    for (method, path, fields) in targets {
        let mut r = runner();
        let s = body(fields);
        for _ in 0..n {
            let b = s.new_tree(&mut r).expect("a body").current();
            let before = app.log_end().await;
            let client = awc::Client::new();
            let req = match method {
                "PATCH" => client.patch(app.url(path)),
                _ => client.post(app.url(path)),
            };
            let req = req.insert_header(("content-type", "application/json"));
            let mut resp = req.send_body(b.clone()).await.expect("the server answers");
            let status = resp.status().as_u16();
            let reply: Value = resp
                .body()
                .limit(16 << 20)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let input = String::from_utf8_lossy(&b);
            assert!(status < 500, "{method} {path} {input} -> {status} {reply}");
            let after = app.log_end().await;
            let accepted = match (status, reply.get("accepted")) {
                (200, Some(a)) => a.as_u64().unwrap(),
                (200 | 201, None) if reply["status"] == "accepted" => 1,
                _ => 0,
            };
            assert_eq!(
                after - before,
                accepted,
                "{method} {path} {input} -> {status} {reply}: the log moved by {}",
                after - before
            );
            accepted_total += accepted;
        }
    }
    let rss_after = rss_kib();
    println!(
        "fuzz: {} generated requests in {:.1} s, {accepted_total} events accepted, no 5xx; RSS {} -> {} MiB",
        4 * n,
        started.elapsed().as_secs_f64(),
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(
        rss_after < rss_before + 256 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Some generated inputs were valid, so the accepting path was exercised too.
    assert!(accepted_total > 0);
    app.stop().await;
}
