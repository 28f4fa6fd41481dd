//! Access control against the real service: tokens made with `parkade token new`, a
//! request per role and route (401 without a token, 403 with too low a role or a lot
//! outside the token's list, 200 otherwise), closed reads with the websocket's
//! `access_token`, tokens reloaded without a restart, the refusal to serve open on a
//! non-loopback address, and the audit line that names the token but never shows it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use parkade::app::Hooks;
use serde_json::{json, Value};

use crate::common;
use common::{test_config, TestApp};

/// `parkade token new`: the token and the entry for the tokens file.
fn new_token(name: &str, role: &str, lots: Option<&str>) -> (String, String) {
    let mut cmd = Command::new(common::binary());
    cmd.args(["token", "new", "--name", name, "--role", role]);
    if let Some(l) = lots {
        cmd.args(["--lots", l]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("pk_"))
        .unwrap()
        .to_owned();
    let entry = text[text.find("[[token]]").unwrap()..].to_owned();
    assert!(
        !entry.contains(&token),
        "the file entry holds the hash only"
    );
    (token, entry)
}

struct Tokens {
    admin: String,
    ingest: String,
    read: String,
}

fn tokens_file(dir: &Path) -> (std::path::PathBuf, Tokens) {
    let (admin, a) = new_token("ops", "admin", None);
    let (ingest, i) = new_token("gate-north", "ingest", Some("North"));
    let (read, r) = new_token("screen", "read", None);
    let path = dir.join("tokens.toml");
    std::fs::write(&path, format!("{a}\n{i}\n{r}\n")).unwrap();
    (
        path,
        Tokens {
            admin,
            ingest,
            read,
        },
    )
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = awc::Client::new();
    let url = app.url(path);
    let mut req = match method {
        "GET" => client.get(url),
        "PATCH" => client.patch(url),
        _ => client.post(url),
    };
    if let Some(t) = token {
        req = req.insert_header(("authorization", format!("Bearer {t}")));
    }
    common::request(
        req,
        body.as_ref().map(|_| "application/json"),
        body.map(|b| b.to_string()),
    )
    .await
}

async fn app_with_tokens(reads_open: bool) -> (tempfile::TempDir, TestApp, Tokens) {
    let dir = common::data_dir();
    let (path, tokens) = tokens_file(dir.path());
    let mut config = test_config(dir.path(), None);
    config.auth.tokens_file = Some(path);
    config.auth.reads_open = reads_open;
    let app = TestApp::spawn(config, Hooks::default()).await;
    (dir, app, tokens)
}

#[actix_web::test]
async fn every_route_answers_401_403_or_200_by_role() {
    let (_dir, app, t) = app_with_tokens(false).await;
    // The admin registers two lots.
    for lot in ["north", "south"] {
        let (s, r) = call(
            &app,
            "POST",
            "/v1/lots",
            Some(&t.admin),
            Some(json!({"lot_id": lot, "name": lot, "capacity": 100})),
        )
        .await;
        assert_eq!(s, 201, "{r}");
    }
    let arrival = |lot: &str| Some(json!({"lot_id": lot, "event_type": "ARRIVAL"}));
    // (method, path, body, expected status without a token, with read, ingest, admin)
    let cases: Vec<(&str, &str, Option<Value>, [u16; 4])> = vec![
        ("GET", "/healthz", None, [200, 200, 200, 200]),
        ("GET", "/readyz", None, [200, 200, 200, 200]),
        ("GET", "/", None, [200, 200, 200, 200]),
        ("GET", "/v1/lots", None, [401, 200, 200, 200]),
        ("GET", "/v1/lots/north", None, [401, 200, 200, 200]),
        ("GET", "/v1/lots/north/recent", None, [401, 200, 200, 200]),
        ("GET", "/metrics", None, [401, 200, 200, 200]),
        ("GET", "/openapi.json", None, [401, 200, 200, 200]),
        ("POST", "/v1/events", arrival("north"), [401, 403, 200, 200]),
        ("POST", "/v1/events", arrival("south"), [401, 403, 403, 200]),
        (
            "POST",
            "/v1/lots/north/count",
            Some(json!({"count": 1})),
            [401, 403, 200, 200],
        ),
        (
            "POST",
            "/v1/lots/south/count",
            Some(json!({"count": 1})),
            [401, 403, 403, 200],
        ),
        (
            "PATCH",
            "/v1/lots/north",
            Some(json!({"capacity": 120})),
            [401, 403, 403, 200],
        ),
        (
            "POST",
            "/v1/lots",
            Some(json!({"lot_id": "east", "name": "East", "capacity": 5})),
            [401, 403, 403, 201],
        ),
        ("GET", "/v1/admin/projections", None, [401, 403, 403, 200]),
        (
            "POST",
            "/v1/admin/known-events",
            Some(json!({"events": []})),
            [401, 403, 403, 200],
        ),
    ];
    for (method, path, body, want) in cases {
        for (i, token) in [None, Some(&t.read), Some(&t.ingest), Some(&t.admin)]
            .into_iter()
            .enumerate()
        {
            let (status, reply) =
                call(&app, method, path, token.map(String::as_str), body.clone()).await;
            assert_eq!(
                status,
                want[i],
                "{method} {path} as {} -> {reply}",
                ["nobody", "read", "ingest", "admin"][i]
            );
            if status == 401 || status == 403 {
                assert!(
                    reply["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{reply}"
                );
            }
        }
    }
    // A batch from the gate's token: its own lot goes in, another lot is refused by name.
    let (s, r) = call(
        &app,
        "POST",
        "/v1/events",
        Some(&t.ingest),
        Some(json!([
            {"lot_id": "north", "event_type": "ARRIVAL"},
            {"lot_id": "south", "event_type": "ARRIVAL"}
        ])),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["results"][0]["status"], "accepted", "{r}");
    assert_eq!(r["results"][1]["code"], "forbidden", "{r}");
    // Both refusals of a lot the token may not move (the single event's 403 above and
    // the batch's item) are counted, as the README says.
    let metrics = awc::Client::new()
        .get(format!("{}/metrics", app.base))
        .insert_header(("authorization", format!("Bearer {}", t.read)))
        .send()
        .await
        .unwrap()
        .body()
        .limit(1 << 22)
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    let forbidden = metrics
        .lines()
        .find(|l| {
            l.starts_with("parkade_events_total")
                && l.contains(r#"outcome="rejected""#)
                && l.contains(r#"reason="forbidden""#)
        })
        .unwrap_or_else(|| panic!("no forbidden count in:\n{metrics}"));
    assert!(forbidden.ends_with(" 2"), "{forbidden}");
    // A wrong token is not a missing one, and it is told so.
    let (s, r) = call(&app, "GET", "/v1/lots", Some("pk_nope"), None).await;
    assert_eq!(s, 401);
    assert!(r["message"].as_str().unwrap().contains("not known"), "{r}");
    // The websocket takes a read token as a query parameter, and nothing without one.
    let ws = app.base.replace("http://", "ws://");
    assert!(awc::Client::new()
        .ws(format!("{ws}/v1/ws"))
        .connect()
        .await
        .is_err());
    let (_, mut socket) = awc::Client::new()
        .ws(format!("{ws}/v1/ws?access_token={}", t.read))
        .connect()
        .await
        .expect("a read token opens the websocket");
    use futures_util::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, awc::ws::Frame::Text(_)), "{first:?}");
    // Say goodbye, so the graceful stop does not wait for the socket.
    use futures_util::SinkExt;
    let _ = socket.send(awc::ws::Message::Close(None)).await;
    drop(socket);
    app.stop().await;
}

#[actix_web::test]
async fn open_reads_need_no_token_but_writes_do() {
    let (_dir, app, t) = app_with_tokens(true).await;
    let (s, _) = call(&app, "GET", "/v1/lots", None, None).await;
    assert_eq!(s, 200);
    let (s, r) = call(
        &app,
        "POST",
        "/v1/lots",
        None,
        Some(json!({"lot_id": "x", "name": "X", "capacity": 5})),
    )
    .await;
    assert_eq!(s, 401, "{r}");
    // A cross-site form post carries no token and no JSON: the replay it aimed at is
    // refused as a form (415) before the token is even looked for.
    let (s, _) = common::request(
        awc::Client::new().post(app.url("/v1/admin/replay?projection=occupancy")),
        Some("application/x-www-form-urlencoded"),
        Some("a=b".into()),
    )
    .await;
    assert_eq!(s, 415);
    let (s, _) = call(&app, "GET", "/v1/lots", Some(&t.read), None).await;
    assert_eq!(s, 200);
    app.stop().await;
}

#[actix_web::test]
async fn without_tokens_a_cross_site_form_can_make_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    common::register(&app, "north", 10).await;
    let end = app.log_end().await;
    let before = app.projections().await.expect("projections");
    let writes = [
        ("POST", "/v1/events"),
        ("POST", "/v1/lots"),
        ("PATCH", "/v1/lots/north"),
        ("POST", "/v1/lots/north/count"),
        ("POST", "/v1/admin/replay?projection=archive"),
        ("POST", "/v1/admin/known-events"),
    ];
    // What an HTML form (or a no-preflight fetch) can send.
    let kinds = [
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("text/plain"),
        None,
    ];
    for (method, path) in writes {
        for ct in kinds {
            let req = awc::Client::new().request(method.parse().unwrap(), app.url(path));
            let (s, r) =
                common::request(req, ct, Some("lot_id=north&event_type=ARRIVAL".into())).await;
            assert_eq!(s, 415, "{method} {path} as {ct:?}: {r}");
            assert_eq!(r["error"], "unsupported_media_type", "{r}");
        }
    }
    assert_eq!(app.log_end().await, end, "nothing was appended");
    let after = app.projections().await.expect("projections");
    assert_eq!(
        common::projection_view(&before, "archive").map(|p| p.checkpoint),
        common::projection_view(&after, "archive").map(|p| p.checkpoint),
        "no rebuild ran"
    );
    // JSON is taken, as before.
    let (s, r) = app
        .post(
            "/v1/events",
            json!({"lot_id": "north", "event_type": "ARRIVAL"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    app.stop().await;
}

#[actix_web::test]
async fn tokens_are_added_and_revoked_without_a_restart() {
    let (dir, app, t) = app_with_tokens(false).await;
    let path = dir.path().join("tokens.toml");
    let (late, entry) = new_token("late", "read", None);
    let (s, _) = call(&app, "GET", "/v1/lots", Some(&late), None).await;
    assert_eq!(s, 401);
    let before = std::fs::read_to_string(&path).unwrap();
    // A different modification time than the first write, whatever the clock's grain.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&path, format!("{before}\n{entry}")).unwrap();
    common::eventually(
        Duration::from_secs(10),
        "the new token to be accepted",
        || async {
            match call(&app, "GET", "/v1/lots", Some(&late), None).await {
                (200, _) => Ok(()),
                (s, r) => Err(format!("{s} {r}")),
            }
        },
    )
    .await;
    // Revoke the read token: keep only the others.
    std::thread::sleep(Duration::from_millis(1100));
    let kept: Vec<&str> = before
        .split("[[token]]")
        .filter(|e| !e.contains("\"screen\""))
        .collect();
    std::fs::write(&path, format!("{}\n{entry}", kept.join("[[token]]"))).unwrap();
    common::eventually(
        Duration::from_secs(10),
        "the revoked token to be refused",
        || async {
            match call(&app, "GET", "/v1/lots", Some(&t.read), None).await {
                (401, _) => Ok(()),
                (s, r) => Err(format!("{s} {r}")),
            }
        },
    )
    .await;
    let (s, _) = call(&app, "GET", "/v1/lots", Some(&t.admin), None).await;
    assert_eq!(s, 200, "the other tokens stay");
    app.stop().await;
}

#[test]
fn serve_refuses_to_be_open_on_a_network_address() {
    let dir = common::data_dir();
    let out = Command::new(common::binary())
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env("PARKADE_DATA_DIR", dir.path())
        .env_remove("PARKADE_DATABASE_URL")
        .env_remove("PARKADE_TOKENS")
        .env_remove("PARKADE_TOKENS_FILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refusing to serve") && err.contains("allow_open"),
        "{err}"
    );
}

#[test]
fn admin_actions_are_audited_by_token_name_and_no_token_reaches_the_log() {
    let dir = common::data_dir();
    let (path, t) = tokens_file(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(common::binary())
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("PARKADE_DATA_DIR", dir.path())
        .env("PARKADE_TOKENS_FILE", &path)
        .env("RUST_LOG", "info,parkade::http=info")
        .env_remove("PARKADE_DATABASE_URL")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while String::from_utf8_lossy(&curl(&[&format!("{base}/healthz")]).stdout) != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = curl(&[
        "-H",
        &format!("authorization: Bearer {}", t.admin),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"lot_id": "north", "name": "North", "capacity": 10}"#,
        &format!("{base}/v1/lots"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
    let out = curl(&[&format!("{base}/v1/lots?access_token={}", t.read)]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut logs = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        logs.push_str(&line.unwrap());
        logs.push('\n');
    }
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        out.push_str(&line.unwrap());
        out.push('\n');
    }
    let all = format!("{logs}{out}");
    assert!(
        all.lines()
            .any(|l| l.contains("admin action") && l.contains("ops") && l.contains("/v1/lots")),
        "{all}"
    );
    for secret in [&t.admin, &t.read, &t.ingest] {
        assert!(
            !all.contains(secret.as_str()),
            "a token is in the log:\n{all}"
        );
    }
}

#[actix_web::test]
async fn import_and_replay_through_the_server_carry_a_token() {
    let (dir, app, t) = app_with_tokens(false).await;
    let csv = dir.path().join("counts.csv");
    std::fs::write(
        &csv,
        "SystemCodeNumber,Capacity,Occupancy,LastUpdated\nNORTH,100,10,2016-10-04 07:59:42\nNORTH,100,12,2016-10-04 08:25:42\n",
    )
    .unwrap();
    // Run beside the server (on a blocking thread, so the test's own runtime goes on).
    let run = |mut cmd: Command| async move {
        actix_web::rt::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    };
    let import = |token: Option<&str>| {
        let mut cmd = Command::new(common::binary());
        cmd.args(["import", "--url", &app.base])
            .arg(&csv)
            .env_remove("PARKADE_TOKEN");
        if let Some(t) = token {
            cmd.env("PARKADE_TOKEN", t);
        }
        run(cmd)
    };
    let out = import(None).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("401"), "{err}");
    let out = import(Some(&t.ingest)).await;
    assert!(
        !out.status.success(),
        "an ingest token cannot register lots"
    );
    let out = import(Some(&t.admin)).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 accepted"), "{text}");
    let mut replay = Command::new(common::binary());
    replay.args([
        "replay",
        "--projection",
        "archive",
        "--url",
        &app.base,
        "--token",
        &t.admin,
    ]);
    let out = run(replay).await;
    assert!(out.status.success(), "{out:?}");
    app.stop().await;
}

/// `curl` from a blocking thread: the status and the response headers.
async fn curl(args: Vec<String>) -> (String, String) {
    actix_web::rt::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let status = text[text.len().saturating_sub(3)..].to_owned();
        (status, text.to_ascii_lowercase())
    })
    .await
    .unwrap()
}

#[actix_web::test]
async fn a_page_on_another_name_gets_nothing_and_the_dashboard_cannot_be_framed() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    // DNS rebinding: a page at evil.example whose name now points here.
    for path in ["/v1/lots", "/", "/v1/admin/projections"] {
        let (status, _) = curl(vec![
            "-H".into(),
            format!("Host: evil.example:{port}"),
            app.url(path),
        ])
        .await;
        assert_eq!(status, "421", "{path}");
    }
    let (status, _) = curl(vec![
        "-H".into(),
        format!("Host: localhost:{port}"),
        app.url("/v1/lots"),
    ])
    .await;
    assert_eq!(status, "200");
    let (status, headers) = curl(vec![app.url("/")]).await;
    assert_eq!(status, "200");
    for h in [
        "content-security-policy: default-src 'none'",
        "frame-ancestors 'none'",
        "x-frame-options: deny",
        "referrer-policy: no-referrer",
        "x-content-type-options: nosniff",
    ] {
        assert!(headers.contains(h), "{h} missing in:\n{headers}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn readiness_details_are_for_admins_when_tokens_are_configured() {
    let (_dir, app, t) = app_with_tokens(true).await;
    let (s, body) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(body, json!({"status": "ready"}));
    let (_, body) = call(&app, "GET", "/readyz", Some(&t.read), None).await;
    assert_eq!(body, json!({"status": "ready"}));
    let (_, body) = call(&app, "GET", "/readyz", Some(&t.admin), None).await;
    assert!(body["log_end"].is_u64(), "{body}");
    app.stop().await;
}

/// The spellings of `path` a client may send for the same route: each segment with its
/// first character percent-encoded, and the whole path encoded (upper-case hex).
fn encoded_variants(path: &str) -> Vec<String> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut out = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let Some(first) = seg.chars().next() else {
            continue;
        };
        let mut v = segments.clone();
        let spelled = format!("%{:02x}{}", first as u32, &seg[first.len_utf8()..]);
        v[i] = &spelled;
        out.push(v.join("/"));
    }
    let all: String = path
        .chars()
        .map(|c| match c {
            '/' => "/".to_owned(),
            c => format!("%{:02X}", c as u32),
        })
        .collect();
    out.push(all);
    out
}

#[actix_web::test]
async fn every_documented_route_needs_its_role_however_its_path_is_spelled() {
    let (_dir, app, t) = app_with_tokens(false).await;
    let (s, r) = call(
        &app,
        "POST",
        "/v1/lots",
        Some(&t.admin),
        Some(json!({"lot_id": "north", "name": "North", "capacity": 100})),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let (s, doc) = call(&app, "GET", "/openapi.json", Some(&t.admin), None).await;
    assert_eq!(s, 200);
    let identities = [None, Some(&t.read), Some(&t.ingest), Some(&t.admin)];
    let mut checked = 0;
    let mut refusals = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{id}", "north")
            .replace("{file}", "app.js");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            // A body every write route refuses after the role check (400), so nothing
            // is changed whoever asks.
            let body = (method != "GET").then(|| json!({}));
            for (who, token) in identities.iter().enumerate() {
                let token = token.map(String::as_str);
                let (canonical, _) = call(&app, &method, &path, token, body.clone()).await;
                if canonical != 401 && canonical != 403 {
                    continue;
                }
                refusals += 1;
                for spelled in encoded_variants(&path) {
                    let (status, reply) = call(&app, &method, &spelled, token, body.clone()).await;
                    assert!(
                        matches!(status, 401 | 403 | 404),
                        "{method} {spelled} as {} answered {status} where {path} answers {canonical}: {reply}",
                        ["nobody", "read", "ingest", "admin"][who]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(
        refusals >= 15 && checked >= 60,
        "{refusals} refusals, {checked} spellings"
    );
    // The spelling the review found: the admin view without a token.
    let (s, _) = call(&app, "GET", "/v1/%61dmin/projections", None, None).await;
    assert_eq!(s, 401);
    // And a spelled path still reaches its route for a caller who may use it.
    let (s, r) = call(&app, "GET", "/v1/%61dmin/projections", Some(&t.admin), None).await;
    assert_eq!(s, 200, "{r}");
    app.stop().await;
}

#[actix_web::test]
async fn a_tokens_file_is_reloaded_only_when_it_parses_whole_and_by_its_content() {
    let (dir, app, t) = app_with_tokens(false).await;
    let path = dir.path().join("tokens.toml");
    let before = std::fs::read_to_string(&path).unwrap();
    let status = |token: String| {
        let app = &app;
        async move { call(app, "GET", "/v1/lots", Some(&token), None).await.0 }
    };
    // Two checks of the watcher (every 2 s) and its settling time.
    let two_checks = || tokio::time::sleep(Duration::from_millis(4_500));
    // An empty file (a write that has truncated and not yet written) revokes nothing.
    std::fs::write(&path, "").unwrap();
    two_checks().await;
    assert_eq!(
        status(t.read.clone()).await,
        200,
        "an empty file was loaded"
    );
    // An ingest entry without its lots is not taken as an unrestricted token.
    let (cut, entry) = new_token("cut", "ingest", Some("North"));
    let cut_entry: String = entry
        .lines()
        .filter(|l| !l.starts_with("lots"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, format!("{before}\n{cut_entry}")).unwrap();
    two_checks().await;
    assert_eq!(status(cut.clone()).await, 401, "a cut entry was loaded");
    assert_eq!(
        status(t.read.clone()).await,
        200,
        "the previous tokens stay"
    );
    // A new content under the old modification time is still seen.
    std::fs::write(&path, &before).unwrap();
    let stamp = std::fs::metadata(&path).unwrap().modified().unwrap();
    let (late, late_entry) = new_token("late", "read", None);
    std::fs::write(&path, format!("{before}\n{late_entry}")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    common::eventually(
        Duration::from_secs(10),
        "the new token, under the old modification time",
        || async {
            match status(late.clone()).await {
                200 => Ok(()),
                s => Err(format!("{s}")),
            }
        },
    )
    .await;
    // Revoking every token is said explicitly.
    std::fs::write(&path, "no_tokens = true\n").unwrap();
    common::eventually(Duration::from_secs(10), "every token revoked", || async {
        match status(t.admin.clone()).await {
            401 => Ok(()),
            s => Err(format!("{s}")),
        }
    })
    .await;
    app.stop().await;
}
