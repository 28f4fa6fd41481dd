//! The documentation's examples, run as a newcomer runs them: every shell block of
//! README.md and of the pages in `docs/` (in [`PAGES`]' order, the order the README's
//! table lists them) is either run here, in order, against one fresh `parkade serve`
//! (each reply compared with the one the page shows after it), or named in
//! [`ELSEWHERE`] with the test that runs it or why it cannot run here. A new block that
//! is neither fails this test, and so does a page of `docs/` left out of [`PAGES`], so
//! an example cannot drift from what the service does.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common;

/// Blocks not run here, by how their first line starts, and why.
const ELSEWHERE: &[(&str, &str)] = &[
    (
        "cargo run --release -- demo",
        "demo and serve: tests/suite/demo.rs runs the demo, this test serve",
    ),
    (
        "createdb parkade",
        "serve with PostgreSQL: the suite runs it so throughout (tests/suite/projections.rs)",
    ),
    (
        "cargo run --release -- token new",
        "tokens and serve with them: tests/suite/auth.rs",
    ),
    (
        "websocat",
        "websocat is not a Debian package; tests/suite/ws.rs follows the feed",
    ),
    (
        "cargo run --release -- simulate",
        "runs until stopped (or 30 s of load): the demo test runs the simulator",
    ),
    (
        "# three nats-server nodes",
        "three NATS servers: tests/suite/cluster.rs",
    ),
    ("cargo bench", "a benchmark, not a test"),
    (
        "CREATE EXTERNAL TABLE",
        "Athena and Glue are AWS services; the layout they read is the one DuckDB and pyarrow read here",
    ),
];

/// The pages whose examples run, in this order (one server for all of them).
const PAGES: &[&str] = &[
    "README.md",
    "docs/api.md",
    "docs/guarantees.md",
    "docs/cluster.md",
    "docs/history.md",
    "docs/forecasting.md",
    "docs/operations.md",
    "docs/testing.md",
    "docs/benchmarks.md",
    "docs/layout.md",
];

/// A code block of a page: the page, its language, its first line's number and its text.
struct Block {
    page: &'static str,
    lang: String,
    line: usize,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        format!("{} block at line {}", self.page, self.line)
    }
}

fn blocks() -> Vec<Block> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut listed: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    listed.retain(|p| !PAGES.contains(&p.as_str()));
    assert!(
        listed.is_empty(),
        "pages of docs/ whose examples nothing runs (add them to PAGES): {listed:?}"
    );
    let mut out = Vec::new();
    for page in PAGES {
        let text = std::fs::read_to_string(root.join(page)).expect(page);
        out.extend(blocks_of(page, &text));
    }
    out
}

fn blocks_of(page: &'static str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut open {
            None if line.trim_start().starts_with("```") && line.trim() != "```" => {
                open = Some(Block {
                    page,
                    lang: line.trim().trim_start_matches('`').to_owned(),
                    line: i + 2,
                    text: String::new(),
                })
            }
            None => {}
            Some(_) if line.trim_start() == "```" => out.extend(open.take()),
            Some(b) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
        }
    }
    out
}

/// A command of a block (continuation lines joined) and the comment lines after it.
struct Example {
    command: String,
    notes: Vec<String>,
}

fn examples(block: &str) -> Vec<Example> {
    let joined = block.replace("\\\n", " ");
    let mut out: Vec<Example> = Vec::new();
    for line in joined.lines() {
        let t = line.trim();
        if let Some(note) = t.strip_prefix('#') {
            if let Some(last) = out.last_mut() {
                last.notes.push(note.trim().to_owned());
            }
        } else if !t.is_empty() {
            out.push(Example {
                command: t.to_owned(),
                notes: Vec::new(),
            });
        }
    }
    out
}

/// The reply a note shows: JSON (compared whole), or a shape `{a, b, c}` / `{"a": [...]}`
/// (compared by its keys).
enum Shown {
    Json(Value),
    Keys(Vec<String>),
}

fn shown(note: &str) -> Option<Shown> {
    if !note.starts_with('{') {
        return None;
    }
    if let Ok(v) = serde_json::from_str(note) {
        return Some(Shown::Json(v));
    }
    let inner = note.strip_prefix('{')?.split('}').next()?;
    let keys = inner
        .split(',')
        .map(|k| {
            k.split(':')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"')
                .to_owned()
        })
        .filter(|k| !k.is_empty())
        .collect();
    Some(Shown::Keys(keys))
}

/// Differences between a reply and the one shown: same keys, same values.
fn differences(shown: &Value, got: &Value, at: &str, out: &mut Vec<String>) {
    match (shown, got) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys()) {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => differences(x, y, &format!("{at}.{k}"), out),
                    (Some(_), None) => out.push(format!("{at}.{k}: shown, not in the reply")),
                    (None, Some(_)) => out.push(format!("{at}.{k}: in the reply, not shown")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(x, y, &format!("{at}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{at}: shown {a}, got {b}")),
    }
}

/// Run `command` with bash in `cwd`; curl's replies end with a line of their status.
fn run(command: &str, cwd: &Path, curl_home: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .env("CURL_HOME", curl_home)
        .env_remove("PARKADE_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[actix_web::test]
async fn every_example_of_the_readme_and_docs_runs_and_answers_as_shown() {
    let all = blocks();
    assert!(all.len() > 10, "the README's shell blocks were found");
    let work = common::data_dir();
    let port = common::free_port();
    let mut server = Command::new(common::binary())
        .arg("serve")
        .current_dir(work.path())
        .env("PARKADE_BIND", format!("127.0.0.1:{port}"))
        .env_remove("PARKADE_DATA_DIR")
        .env_remove("PARKADE_CONFIG")
        .env_remove("PARKADE_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start parkade serve");
    let base = format!("http://127.0.0.1:{port}");
    common::wait_healthy(&base).await;
    // Every curl of the examples writes its status on a last line of its own.
    let curl_home = work.path().join("curl");
    std::fs::create_dir_all(&curl_home).unwrap();
    std::fs::write(
        curl_home.join(".curlrc"),
        "write-out = \"\\n%{http_code}\"\n",
    )
    .unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let binary = common::binary();

    let mut ran = 0;
    let mut failures = Vec::new();
    for block in &all {
        let first = block.text.lines().next().unwrap_or("").trim();
        if ELSEWHERE.iter().any(|(start, _)| first.starts_with(start)) {
            continue;
        }
        match block.lang.as_str() {
            "sh" => {}
            // Configuration and proxy files, not commands (the deploy tests read the
            // shipped ones).
            "toml" | "nginx" | "text" => continue,
            "python" | "sql" => {
                ran += 1;
                if let Err(e) = lake_example(block, work.path()) {
                    failures.push(format!("{}: {e}", block.at()));
                }
                continue;
            }
            other => {
                failures.push(format!(
                    "{}: a {other} block: run it here or name it in ELSEWHERE",
                    block.at()
                ));
                continue;
            }
        }
        for ex in examples(&block.text) {
            let command = ex
                .command
                .replace("localhost:8080", &format!("127.0.0.1:{port}"))
                .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
                .replace("cargo run --release --", &binary.display().to_string())
                .replace(" data/", &format!(" {repo}/data/"));
            let where_ = format!("{}: {}", block.at(), ex.command);
            if !ex.command.starts_with("curl ") && !ex.command.starts_with("cargo run") {
                failures.push(format!(
                    "{where_}: neither a curl nor a parkade command; run it here or name it in ELSEWHERE"
                ));
                continue;
            }
            ran += 1;
            let (ok, out) = run(&command, work.path(), &curl_home);
            if !ok {
                failures.push(format!("{where_}: failed:\n{out}"));
                continue;
            }
            if !ex.command.starts_with("curl ") {
                // A parkade command: the counts it prints as shown (not its timing).
                for note in ex.notes.iter().filter(|n| n.contains("accepted")) {
                    let counts = |s: &str| s.split("rows/s): ").nth(1).map(str::to_owned);
                    let got = out.lines().find_map(counts);
                    if got.is_none() || got != counts(note) {
                        failures.push(format!("{where_}: shown {note:?}, printed:\n{out}"));
                    }
                }
                continue;
            }
            if ex.command.contains('|') {
                if out.trim().is_empty() {
                    failures.push(format!("{where_}: printed nothing"));
                }
                continue;
            }
            let (body, status) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
            let status: u16 = status.trim().parse().unwrap_or(0);
            let notes = ex.notes.join(" ");
            if !(200..300).contains(&status) && !notes.contains(&status.to_string()) {
                failures.push(format!(
                    "{where_}: answered {status} (the page does not say it may): {body}"
                ));
                continue;
            }
            let shown_reply = ex
                .notes
                .iter()
                .find_map(|n| shown(n))
                .or_else(|| ex.command.split(" # ").nth(1).and_then(|c| shown(c.trim())));
            let Some(shown_reply) = shown_reply else {
                continue;
            };
            let got: Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{where_}: not JSON ({e}): {body}"));
                    continue;
                }
            };
            match shown_reply {
                Shown::Json(want) => {
                    let mut diffs = Vec::new();
                    differences(&want, &got, "", &mut diffs);
                    if !diffs.is_empty() {
                        failures.push(format!("{where_}: {}\n  got {got}", diffs.join("; ")));
                    }
                }
                Shown::Keys(keys) => {
                    let mut want = keys.clone();
                    want.sort();
                    let mut have: Vec<String> = got
                        .as_object()
                        .map(|o| o.keys().cloned().collect())
                        .unwrap_or_default();
                    have.sort();
                    if want != have {
                        failures.push(format!(
                            "{where_}: shown the keys {want:?}, the reply has {have:?}"
                        ));
                    }
                }
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    println!("ran {ran} examples of the README and docs/");
    assert!(ran > 15, "the examples were run: {ran}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Run a lake example: the Python block with pyarrow, each DuckDB query of a local
/// folder with DuckDB's Python package (both installed by scripts/test.sh), in `cwd`
/// where the examples' server keeps its data. Queries of S3 need a bucket of their own
/// and are left out (the archive's S3 tests read it with pyarrow).
fn lake_example(block: &Block, cwd: &Path) -> Result<(), String> {
    let python = |code: &str, arg: &str| {
        let out = Command::new(common::python())
            .args(["-c", code, arg])
            .current_dir(cwd)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    if block.lang == "python" {
        // The block, then how many rows it read.
        let code = format!("{}\nprint(t.num_rows)\n", block.text);
        let rows = python(&code, "")?;
        return match rows.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(format!("pyarrow read no rows: {rows}")),
        };
    }
    let mut queries = 0;
    for q in block
        .text
        .lines()
        .filter(|l| l.trim_start().starts_with("SELECT"))
    {
        if q.contains("s3://") {
            continue;
        }
        queries += 1;
        let rows = python(
            "import duckdb, sys; print(len(duckdb.sql(sys.argv[1]).fetchall()))",
            q,
        )
        .map_err(|e| format!("{q}: {e}"))?;
        if rows.trim() == "0" {
            return Err(format!("{q}: no rows"));
        }
    }
    if queries == 0 {
        return Err("no query of a local folder to run".into());
    }
    Ok(())
}
