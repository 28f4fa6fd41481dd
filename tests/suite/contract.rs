//! The API contract: schemathesis (from PyPI; scripts/test.sh installs it) reads
//! `GET /openapi.json` from the real server and exercises every operation in it with
//! generated requests, valid and invalid: no reply is a 5xx, and every reply's status,
//! content type, headers and body match the document.

use std::path::PathBuf;
use std::process::Command;

use parkade::app::Hooks;

use crate::common;
use common::{register, test_config, TestApp, TestDb};

/// The schemathesis command beside the tests' Python.
fn schemathesis() -> PathBuf {
    let python = PathBuf::from(common::python());
    let beside = python.with_file_name("schemathesis");
    if beside.exists() {
        beside
    } else {
        PathBuf::from("schemathesis")
    }
}

#[actix_web::test]
async fn the_document_covers_every_route_and_names_the_wire_types() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/v1/events",
        "/v1/lots",
        "/v1/lots/{id}",
        "/v1/lots/{id}/count",
        "/v1/lots/{id}/history",
        "/v1/lots/{id}/forecast",
        "/v1/lots/{id}/timespan",
        "/v1/lots/{id}/recent",
        "/v1/ws",
        "/v1/admin/replay",
        "/v1/admin/projections",
        "/v1/admin/known-events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains(&p), "{p} is not in the document: {paths:?}");
    }
    let schemas = &doc["components"]["schemas"];
    for s in [
        "Ack",
        "Lot",
        "BatchReply",
        "ErrorBody",
        "History",
        "Forecast",
    ] {
        assert!(schemas[s].is_object(), "no schema {s}");
    }
    // Every operation lists the replies any route may give.
    let ops = &doc["paths"]["/v1/events"]["post"]["responses"];
    for status in ["200", "400", "401", "403", "413", "421", "429", "503"] {
        assert!(
            ops[status].is_object(),
            "POST /v1/events lacks {status}: {ops}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn schemathesis_finds_no_server_error_and_no_reply_off_the_document() {
    let db = TestDb::new();
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), Some(&db));
    // Generated requests come fast from one address and one (absent) token.
    config.limits.max_connections_per_address = 4_096;
    let app = TestApp::spawn(config, Hooks::default()).await;
    for lot in ["north", "south"] {
        register(&app, lot, 50).await;
        common::arrive(&app, lot).await;
    }
    let url = app.url("/openapi.json");
    let examples = std::env::var("PARKADE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    // Its caches (examples, crashes) go to the test's own folder, not the work tree.
    let scratch = dir.path().to_path_buf();
    let out = actix_web::rt::task::spawn_blocking(move || {
        Command::new(schemathesis())
            .current_dir(&scratch)
            .args([
                "run",
                &url,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
                "--max-examples",
                &examples,
                "--seed",
                "20261128",
                // One worker: with two, CPython 3.11's `ast` (which hypothesis uses to
                // describe its strategies) can fail inside the tool when both threads
                // parse at once ("AST constructor recursion depth mismatch").
                "--workers",
                "1",
                "--no-color",
                "--generation-database",
                "none",
            ])
            .output()
            .expect("schemathesis runs (scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // It tested every operation it read from the document (all but the document's own
    // route, which it leaves out), not none.
    let (_, doc) = app.get("/openapi.json").await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    let figure = |after: &str| -> usize {
        let at = text
            .find(after)
            .unwrap_or_else(|| panic!("no {after:?} in:\n{text}"));
        text[at + after.len()..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (selected, tested) = (figure("Selected:"), figure("Tested:"));
    assert_eq!(selected, tested, "{text}");
    assert!(
        tested + 1 >= operations,
        "{tested} of {operations} operations:\n{text}"
    );
    app.stop().await;
}
