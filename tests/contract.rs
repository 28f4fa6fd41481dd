//! The API contract: schemathesis (from PyPI; scripts/test.sh installs it) reads
//! `GET /openapi.json` from the real server and exercises every operation in it with
//! generated requests, valid and invalid: no reply is a 5xx, and every reply's status,
//! content type, headers and body match the document.

use std::path::PathBuf;
use std::process::Command;

use parkade::app::Hooks;
use serde_json::Value;

mod common;
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
    let report = dir.path().join("schemathesis.json");
    let report_arg = report.to_str().unwrap().to_owned();
    let out = actix_web::rt::task::spawn_blocking(move || {
        Command::new(schemathesis())
            .args([
                "run",
                &url,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
                "--max-examples",
                &examples,
                "--seed",
                "20261128",
                "--workers",
                "2",
                "--no-color",
                "--report",
                "json",
                "--report-json-path",
                &report_arg,
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
    // It ran every operation of the document, not none.
    let (_, doc) = app.get("/openapi.json").await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert!(operations >= 17, "{operations}");
    assert!(
        text.contains(&format!("Selected: {operations}/{operations}"))
            && text.contains(&format!("Tested: {operations}")),
        "every operation is tested:\n{text}"
    );
    let _: Option<Value> = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    app.stop().await;
}
