//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver):
//! the page loads without console errors, shows every lot, and a posted event changes
//! the displayed count within a second. Screenshots (desktop and phone) are saved under
//! the target directory's `tmp/` as test artifacts.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use parkade::app::Hooks;
use serde_json::{json, Value};

use crate::common;
use common::{test_config, TestApp};

struct Driver {
    child: Child,
    base: String,
    session: String,
    client: awc::Client,
}

impl Driver {
    async fn start() -> Driver {
        Driver::start_in(None).await
    }

    /// A browser whose own time zone is `tz` (the machine's when `None`).
    async fn start_in(tz: Option<&str>) -> Driver {
        let chromedriver =
            std::env::var("PARKADE_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium =
            std::env::var("PARKADE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(&chromedriver);
        if let Some(tz) = tz {
            command.env("TZ", tz);
        }
        let child = command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromedriver} ({e}); scripts/test.sh installs chromium and chromium-driver"));
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish();
        let base = format!("http://127.0.0.1:{port}");
        common::eventually(Duration::from_secs(20), "chromedriver to start", || async {
            let mut r = client
                .get(format!("{base}/status"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let v: Value = r.json().await.unwrap_or_default();
            if v["value"]["ready"] == true {
                Ok(())
            } else {
                Err(v.to_string())
            }
        })
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900"
            ]}
        }}});
        let mut r = client
            .post(format!("{base}/session"))
            .send_json(&caps)
            .await
            .expect("new session");
        let v: Value = r.json().limit(1 << 20).await.unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Driver {
            child,
            base,
            session,
            client,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.client.get(url),
            "DELETE" => self.client.delete(url),
            _ => self.client.post(url),
        };
        let mut r = if method == "GET" || method == "DELETE" {
            req.send().await
        } else {
            req.send_json(&body).await
        }
        .expect("webdriver call");
        let v: Value = r.json().limit(64 << 20).await.unwrap_or_default();
        v["value"].clone()
    }

    async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let b64 = self.call("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("a screenshot"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// Pictures of the page at desktop size, then at a phone's:
    /// `{name}-desktop.png` and `{name}-phone.png`.
    async fn screenshots(&self, name: &str) {
        self.screenshot(&format!("{name}-desktop.png")).await;
        self.call("POST", "/window/rect", json!({"width": 390, "height": 844}))
            .await;
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        self.screenshot(&format!("{name}-phone.png")).await;
    }

    /// No console errors (the browser log as chromedriver keeps it).
    async fn assert_no_console_errors(&self) {
        let logs = self
            .call("POST", "/se/log", json!({"type": "browser"}))
            .await;
        let severe: Vec<&Value> = logs
            .as_array()
            .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").collect())
            .unwrap_or_default();
        assert!(logs.is_array(), "the browser log is readable: {logs}");
        assert!(severe.is_empty(), "console errors: {severe:?}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_web::test]
async fn the_dashboard_shows_every_lot_and_follows_a_posted_event_within_a_second() {
    let dir = common::data_dir();
    let app = TestApp::spawn(test_config(dir.path(), None), Hooks::default()).await;
    for (id, name, cap) in [
        ("north", "North Lot", 420),
        ("west-mall", "West Mall Parkade", 900),
        ("visitor", "Visitor Lot", 120),
    ] {
        let (status, _) = app
            .post(
                "/v1/lots",
                json!({"lot_id": id, "name": name, "capacity": cap}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let ids = ["north", "west-mall", "visitor"];
    let batch: Vec<Value> = (0..150)
        .map(|i| json!({"lot_id": ids[i % 3], "event_type": "ARRIVAL"}))
        .collect();
    let (status, _) = app.post("/v1/events", json!(batch)).await;
    assert_eq!(status, 200);

    let d = Driver::start().await;
    d.call("POST", "/url", json!({"url": format!("{}/", app.base)}))
        .await;
    common::eventually(
        Duration::from_secs(10),
        "three cards on the page",
        || async {
            let n = d
                .js("return document.querySelectorAll('.card').length")
                .await;
            if n == 3 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    )
    .await;
    let names = d
        .js("return [...document.querySelectorAll('.card h2')].map(e => e.textContent)")
        .await;
    assert_eq!(
        names,
        json!(["North Lot", "Visitor Lot", "West Mall Parkade"])
    );
    let free = "return document.querySelector('[data-lot=north] .free').textContent";
    // The page shows the state after the 150 arrivals (the live view follows the log).
    common::eventually(Duration::from_secs(5), "370 free on the page", || async {
        let shown = d.js(free).await;
        if shown == "370" {
            Ok(())
        } else {
            Err(shown.to_string())
        }
    })
    .await;

    // A posted event is on the page within a second.
    let (status, _) = app
        .post(
            "/v1/events",
            json!({"lot_id": "north", "event_type": "ARRIVAL"}),
        )
        .await;
    assert_eq!(status, 200);
    let posted = Instant::now();
    common::eventually(
        Duration::from_secs(1),
        "the posted event on the page (369 free)",
        || async {
            let shown = d.js(free).await;
            if shown == "369" {
                Ok(())
            } else {
                Err(shown.to_string())
            }
        },
    )
    .await;
    println!(
        "the page showed the event after {} ms",
        posted.elapsed().as_millis()
    );

    // Give the charts a moment, then keep pictures of the page.
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    d.screenshots("dashboard").await;
    d.assert_no_console_errors().await;
    d.call("DELETE", "", Value::Null).await;
    app.stop().await;
}

#[actix_web::test]
async fn the_dashboard_draws_the_lots_hours_not_the_browsers_and_marks_a_quiet_lot_stale() {
    use chrono::TimeZone;
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    // Birmingham's zone: one the tz databases of chrono-tz and of Chromium agree on
    // (for America/Vancouver in late 2026 they do not: UTC-8 and UTC-7).
    config.forecast.timezone = "Europe/London".into();
    config.lots.stale_after_secs = 3600;
    let app = TestApp::spawn(config, Hooks::default()).await;
    // Yesterday's noon in the lots' zone: a registration a minute before it and an
    // arrival at it; nothing since, so the lot is stale too.
    let tz = chrono_tz::Europe::London;
    let day = chrono::Utc::now()
        .with_timezone(&tz)
        .date_naive()
        .pred_opt()
        .unwrap();
    let noon = tz
        .from_local_datetime(&day.and_hms_opt(12, 0, 0).unwrap())
        .single()
        .unwrap()
        .to_utc();
    let at = |t: chrono::DateTime<chrono::Utc>| Some(json!(t.to_rfc3339()));
    let mut lot = common::lot("north", 100);
    lot.stamp.timestamp = at(noon - chrono::Duration::minutes(1));
    app.register_lot(&lot).await.unwrap();
    let mut arrival = common::event("north", "ARRIVAL");
    arrival.stamp.timestamp = at(noon);
    app.send_event(&arrival).await.unwrap();

    // A browser in Tokyo, 9 hours ahead of London in winter (8 in summer).
    let d = Driver::start_in(Some("Asia/Tokyo")).await;
    let zone = d
        .js("return Intl.DateTimeFormat().resolvedOptions().timeZone")
        .await;
    assert_eq!(zone, "Asia/Tokyo", "the browser runs in another zone");
    d.call("POST", "/url", json!({"url": format!("{}/", app.base)}))
        .await;
    // The chart spans the lot's day from x = 30 (right of its y-axis) to 300: noon
    // there is at 165.
    let last_x = "const s = document.querySelector('[data-lot=north] svg.chart .today'); \
        if (!s) return null; \
        if (s.tagName === 'circle') return +s.getAttribute('cx'); \
        const p = s.getAttribute('points').trim().split(' '); \
        return +p[p.length - 1].split(',')[0];";
    let x = common::eventually(Duration::from_secs(10), "today's line drawn", || async {
        match d.js(last_x).await.as_f64() {
            Some(x) if (x - 165.0).abs() < 1.0 => Ok(x),
            other => Err(format!("the last point at {other:?}")),
        }
    })
    .await;
    println!("a London noon drawn at x = {x} in a Tokyo browser");
    let footer = d
        .js("return document.querySelector('#clock').textContent")
        .await;
    assert!(
        footer.as_str().is_some_and(|f| f.contains("Europe/London")),
        "{footer}"
    );
    d.call("DELETE", "", Value::Null).await;
    app.stop().await;
}

#[actix_web::test]
async fn with_closed_reads_the_dashboard_works_from_a_read_token_in_its_address() {
    let dir = common::data_dir();
    let hash = |t: &str| parkade::api::auth::hash_token(t);
    let (admin, read) = (
        "pk_admin_for_the_dashboard_test",
        "pk_read_for_the_dashboard_test",
    );
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n[[token]]\nname = \"screen\"\nrole = \"read\"\nsha256 = \"{}\"\n",
            hash(admin),
            hash(read)
        ),
    )
    .unwrap();
    let mut config = test_config(dir.path(), None);
    config.auth.tokens_file = Some(tokens);
    config.auth.reads_open = false;
    let app = TestApp::spawn(config, Hooks::default()).await;
    let (status, r) = common::request(
        awc::Client::new()
            .post(app.url("/v1/lots"))
            .insert_header(("authorization", format!("Bearer {admin}"))),
        Some("application/json"),
        Some(json!({"lot_id": "north", "name": "North Lot", "capacity": 10}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{r}");

    let d = Driver::start().await;
    // Without a token the page says what it needs.
    d.call("POST", "/url", json!({"url": format!("{}/", app.base)}))
        .await;
    common::eventually(
        Duration::from_secs(10),
        "the page to ask for a token",
        || async {
            let status = d
                .js("return document.querySelector('#status').textContent")
                .await;
            if status.as_str().is_some_and(|s| s.contains("read token")) {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    // With the token in the fragment (never sent to the server) it shows the lot live.
    d.call(
        "POST",
        "/url",
        json!({"url": format!("{}/#access_token={read}", app.base)}),
    )
    .await;
    common::eventually(Duration::from_secs(10), "the lot's card, live", || async {
        let shown = d
            .js("return [document.querySelectorAll('.card').length, document.querySelector('#status').textContent, location.hash]")
            .await;
        if shown[0] == 1 && shown[1] == "live" && shown[2] == "" {
            Ok(())
        } else {
            Err(shown.to_string())
        }
    })
    .await;
    // Close the session (and its websocket), so the graceful stop does not wait for it.
    d.call("DELETE", "", Value::Null).await;
    app.stop().await;
}

/// A zone of whole hours where it is about noon now (`Etc/GMT-N` is N hours ahead of
/// UTC): both Chromium's and chrono-tz's tz databases have them, without daylight time.
fn zone_at_noon() -> String {
    use chrono::Timelike;
    let ahead = 12 - i64::from(chrono::Utc::now().hour());
    match ahead {
        0 => "Etc/GMT".into(),
        n if n > 0 => format!("Etc/GMT-{n}"),
        n => format!("Etc/GMT+{}", -n),
    }
}

#[actix_web::test]
async fn the_demo_opens_on_the_three_answers_for_every_lot() {
    // Its campus at noon, so the test sees a day with a morning behind it and an
    // afternoon ahead whenever it runs (the chart spans the campus's day).
    let zone = zone_at_noon();
    let started = Instant::now();
    let demo = crate::demo::Demo::start(&["--timezone", &zone, "--duration", "180"]);
    println!(
        "the demo ({zone}) was ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let d = Driver::start().await;
    d.call("POST", "/url", json!({"url": format!("{}/", demo.url)}))
        .await;
    // For every card: the live count, today's curve, the usual profile, and the
    // forecast with its interval band.
    let check = "return [...document.querySelectorAll('.card')].map(c => { \
        const n = (sel) => c.querySelectorAll(sel).length; \
        const pts = (sel) => { const e = c.querySelector(sel); \
            return e && e.getAttribute('points') ? e.getAttribute('points').trim().split(' ').length : 0; }; \
        return {lot: c.dataset.lot, free: c.querySelector('.free').textContent, \
            today: pts('svg.chart polyline.today'), usual: pts('svg.chart polyline.profile'), \
            forecast: pts('svg.chart polyline.forecast'), band: n('svg.chart polygon.band'), \
            note: c.querySelector('.note').textContent, tip: c.querySelector('.note').title,             axis: [...c.querySelectorAll('svg.chart text')].map(t => t.textContent).join(' '),             legend: [...c.querySelectorAll('.legend span')].filter(s => !s.hidden).length,             meet: (() => { const t = c.querySelector('svg.chart polyline.today'), f = c.querySelector('svg.chart polyline.forecast');                 if (!t || !f) return null; const tp = t.getAttribute('points').trim().split(' ');                 return tp[tp.length - 1] === f.getAttribute('points').trim().split(' ')[0]; })()}; })";
    let cards = common::eventually(
        Duration::from_secs(90),
        "every card with its count and three curves",
        || async {
            let cards = d.js(check).await;
            let all = cards.as_array().cloned().unwrap_or_default();
            let complete = |c: &Value| {
                c["free"].as_str().is_some_and(|f| !f.is_empty())
                    && c["today"].as_u64() > Some(4)
                    && c["usual"].as_u64() > Some(20)
                    && c["forecast"].as_u64() > Some(4)
                    && c["band"] == 1
            };
            if all.len() == 7 && all.iter().all(complete) {
                Ok(cards)
            } else {
                Err(cards.to_string())
            }
        },
    )
    .await;
    println!("{cards}");
    for c in cards.as_array().unwrap() {
        // No model jargon on the card: the version is in the note's tooltip.
        let note = c["note"].as_str().unwrap();
        assert!(note.starts_with("Forecast"), "{c}");
        assert!(!note.contains("model"), "{c}");
        assert!(
            c["tip"].as_str().is_some_and(|t| t.starts_with("model ")),
            "{c}"
        );
        assert!(
            c["axis"].as_str().is_some_and(|a| a.contains("100%")),
            "{c}"
        );
        assert_eq!(c["legend"], 5, "{c}");
        assert_eq!(c["meet"], true, "today's line meets the forecast: {c}");
    }
    // The four-week view: dates on its axis and a caption of its own.
    d.js("document.querySelector('[data-lot=north-lot] button').click(); return null")
        .await;
    let history = common::eventually(Duration::from_secs(10), "the 4-week view", || async {
        let v = d
            .js("const c = document.querySelector('[data-lot=north-lot]');                 return {dates: [...c.querySelectorAll('svg.chart text.date')].map(t => t.textContent),                     line: c.querySelectorAll('svg.chart polyline.history').length,                     note: c.querySelector('.note').textContent}")
            .await;
        let dates = v["dates"].as_array().map(Vec::len).unwrap_or(0);
        if dates >= 3 && v["line"] == 1 && v["note"].as_str().is_some_and(|n| n.starts_with("Hourly mean")) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    println!("{history}");
    d.screenshot("demo-history-desktop.png").await;
    d.js("document.querySelector('[data-lot=north-lot] button').click(); return null")
        .await;
    d.screenshots("demo").await;
    d.assert_no_console_errors().await;
    d.call("DELETE", "", Value::Null).await;
}

/// With more lots than fit a screen: search, sort and filter appear and work; a stale
/// lot is shown apart and left out of the header's totals; the chart has a y-axis in
/// percent and a "now" marker at the campus's time as the server's tz database tells it
/// (America/Vancouver, where Chromium's and chrono-tz's disagree in late 2026), not the
/// browser's.
#[actix_web::test]
async fn many_lots_can_be_searched_stale_ones_stand_apart_and_now_is_the_servers_time() {
    let dir = common::data_dir();
    let mut config = test_config(dir.path(), None);
    config.forecast.timezone = "America/Vancouver".into();
    config.lots.stale_after_secs = 3600;
    let app = TestApp::spawn(config, Hooks::default()).await;
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    for i in 0..20 {
        let id = format!("lot-{i:02}");
        let mut lot = common::lot(&id, 100);
        if i == 7 {
            lot.stamp.timestamp = Some(json!(two_hours_ago.to_rfc3339()));
        }
        app.register_lot(&lot).await.unwrap();
        if i != 7 {
            app.send_event(&common::event(&id, "ARRIVAL"))
                .await
                .unwrap();
        }
    }
    let d = Driver::start_in(Some("America/Vancouver")).await;
    d.call("POST", "/url", json!({"url": format!("{}/", app.base)}))
        .await;
    let state = "return {cards: document.querySelectorAll('#lots .card').length, \
        stale: [...document.querySelectorAll('#stale-lots .card')].map(c => c.dataset.lot), \
        staleShown: !document.querySelector('#stale-section').hidden, \
        tools: !document.querySelector('#tools').hidden, \
        summary: document.querySelector('#summary').textContent, \
        now: (document.querySelector('[data-lot=lot-00] svg.chart line.now') || {dataset: {}}).dataset.time || null, \
        axis: [...document.querySelectorAll('[data-lot=lot-00] svg.chart text')].map(t => t.textContent)}";
    let seen = common::eventually(Duration::from_secs(15), "the page laid out", || async {
        let v = d.js(state).await;
        if v["cards"] == 19 && v["stale"] == json!(["lot-07"]) && v["now"].is_string() {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(seen["staleShown"], true, "{seen}");
    assert_eq!(seen["tools"], true, "{seen}");
    let summary = seen["summary"].as_str().unwrap();
    assert!(
        summary.contains("19 lots"),
        "the stale lot is left out: {summary}"
    );
    assert!(
        summary.contains("1881 free") || summary.contains("1,881 free"),
        "{summary}"
    );
    assert!(summary.contains("1 stale lot"), "{summary}");
    for label in ["0%", "50%", "100%"] {
        assert!(
            seen["axis"].as_array().unwrap().iter().any(|t| t == label),
            "{seen}"
        );
    }
    // "now" as the server's zone tells it (a minute either way for the clock's tick).
    let shown = seen["now"].as_str().unwrap().to_owned();
    let server_now = chrono::Utc::now().with_timezone(&chrono_tz::America::Vancouver);
    let fmt = |t: chrono::DateTime<chrono_tz::Tz>| t.format("%-H:%M").to_string();
    let near: Vec<String> = [-1, 0, 1]
        .iter()
        .map(|m| fmt(server_now + chrono::Duration::minutes(*m)))
        .collect();
    assert!(
        near.contains(&shown),
        "now shown as {shown}, the server says {near:?}"
    );
    // Search finds one lot; clearing it shows them all again.
    let search = "const s = document.querySelector('#search'); s.value = arguments[0]; \
        s.dispatchEvent(new Event('input')); \
        return [...document.querySelectorAll('#lots .card')].filter(c => !c.hidden).map(c => c.dataset.lot);";
    let found = d
        .call(
            "POST",
            "/execute/sync",
            json!({"script": search, "args": ["lot-13"]}),
        )
        .await;
    assert_eq!(found, json!(["lot-13"]), "{found}");
    let all = d
        .call(
            "POST",
            "/execute/sync",
            json!({"script": search, "args": [""]}),
        )
        .await;
    assert_eq!(all.as_array().map(Vec::len), Some(19), "{all}");
    d.screenshots("many-lots").await;
    d.assert_no_console_errors().await;
    d.call("DELETE", "", Value::Null).await;
    app.stop().await;
}

/// The imported Birmingham file (29 car parks, readings of 2016): every lot is stale,
/// so all stand apart and out of the totals, and the search tools are there.
#[actix_web::test]
async fn the_imported_birmingham_file_reads_at_a_glance() {
    let dir = common::data_dir();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/birmingham/train.csv");
    let (code, out) = common::parkade(&["import", file.to_str().unwrap()], dir.path(), None);
    assert_eq!(code, 0, "{out}");
    let mut config = test_config(dir.path(), None);
    config.forecast.timezone = "Europe/London".into();
    let app = TestApp::spawn(config, Hooks::default()).await;
    let d = Driver::start().await;
    d.call("POST", "/url", json!({"url": format!("{}/", app.base)}))
        .await;
    let state = "return {live: document.querySelectorAll('#lots .card').length, \
        stale: document.querySelectorAll('#stale-lots .card').length, \
        tools: !document.querySelector('#tools').hidden, \
        summary: document.querySelector('#summary').textContent}";
    let seen = common::eventually(Duration::from_secs(15), "29 stale lots apart", || async {
        let v = d.js(state).await;
        if v["stale"] == 29 && v["live"] == 0 {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(seen["tools"], true, "{seen}");
    let summary = seen["summary"].as_str().unwrap();
    assert!(
        summary.contains("0 lots") && summary.contains("29 stale lots"),
        "{summary}"
    );
    // Each "now" label lies inside its chart (the viewBox is 300 wide), whatever the
    // hour: late in the day it reads to the left of its line.
    let outside = d
        .js(
            "return [...document.querySelectorAll('svg.chart text.now')] \
            .map(t => t.getBBox()).filter(b => b.x < 0 || b.x + b.width > 300).length",
        )
        .await;
    assert_eq!(outside, 0, "now labels cut off at a chart's edge");
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    d.screenshots("birmingham").await;
    d.assert_no_console_errors().await;
    d.call("DELETE", "", Value::Null).await;
    app.stop().await;
}
