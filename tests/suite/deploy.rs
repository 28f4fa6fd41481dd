//! What `deploy/` holds, checked: the systemd unit (valid, hardened, with room for the
//! default connection limit; needs `systemd-analyze`, Debian's `systemd` package, which
//! the test command installs when it can, and fails without it), and the container
//! files (`containers` below).

use std::path::Path;
use std::process::Command;

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/parkade.service");
    std::fs::read_to_string(path).expect("deploy/parkade.service")
}

/// The unit, with `ExecStart` pointing at the binary under test, in a folder of its own.
fn unit_here() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = unit_text().replace("/usr/local/bin/parkade", env!("CARGO_BIN_EXE_parkade"));
    let path = dir.path().join("parkade.service");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze runs (apt-get install systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_unit_verifies_without_a_warning() {
    let (_dir, unit) = unit_here();
    let (ok, text) = analyze(&["verify", unit.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify says:\n{text}"
    );
}

#[test]
fn the_unit_is_hardened() {
    let (_dir, unit) = unit_here();
    // Exposure is 0.0 (locked down) to 10.0 (none); the threshold is in tenths.
    let (ok, text) = analyze(&[
        "security",
        "--offline=true",
        "--threshold=20",
        unit.to_str().unwrap(),
    ]);
    assert!(ok, "exposure above 2.0:\n{text}");
    let unit = unit_text();
    for line in [
        "CapabilityBoundingSet=\n",
        "UMask=0077",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "Type=notify",
        "WatchdogSec=",
        "MemoryMax=",
        "TasksMax=",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
}

#[test]
fn the_unit_holds_the_default_connection_limit() {
    let unit = unit_text();
    let nofile: usize = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE is set")
        .trim()
        .parse()
        .expect("a number");
    let connections = parkade::config::DEFAULT_MAX_CONNECTIONS;
    assert!(
        nofile >= connections + 256,
        "LimitNOFILE={nofile} cannot hold the default {connections} connections and the log's files"
    );
}

mod containers {
    //! The container files in `deploy/` (Dockerfile, compose.yaml, the NATS and parkade
    //! configs it mounts), checked as far as can be without a container engine: the
    //! compose file parsed by PyYAML (installed with schemathesis), every file it mounts
    //! present, every parkade variable one the binary knows, each parkade config loaded
    //! by parkade, the NATS config tested by the real `nats-server`, the Dockerfile's
    //! stages, user and healthcheck, and `parkade healthcheck` itself.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use serde_json::Value;

    use crate::common::{self, TestApp};

    fn deploy() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
    }

    fn compose() -> Value {
        let out = Command::new(common::python())
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(deploy().join("compose.yaml"))
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// The `PARKADE_*` variables the binary reads.
    fn known_variables() -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut known = vec!["PARKADE_TOKENS".to_owned()];
        let mut files = Vec::new();
        for dir in ["src/app", "src/cli"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                files.push(entry.unwrap().path());
            }
        }
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            for part in text.split("env = \"").skip(1) {
                known.push(part.split('"').next().unwrap().to_owned());
            }
        }
        known
    }

    #[test]
    fn the_compose_file_runs_the_whole_set_and_mounts_only_what_is_there() {
        let c = compose();
        let services = c["services"].as_object().expect("services");
        for name in [
            "postgres",
            "nats1",
            "nats2",
            "nats3",
            "s3",
            "s3-bucket",
            "parkade1",
            "parkade2",
        ] {
            assert!(services.contains_key(name), "no service {name}");
        }
        let known = known_variables();
        for (name, s) in services {
            for v in s["volumes"].as_array().into_iter().flatten() {
                let source = v.as_str().unwrap().split(':').next().unwrap();
                if source.starts_with('.') {
                    assert!(
                        deploy().join(source).exists(),
                        "{name} mounts {source}, which is not in deploy/"
                    );
                }
            }
            for port in s["ports"].as_array().into_iter().flatten() {
                assert!(
                    port.as_str().unwrap().starts_with("127.0.0.1:"),
                    "{name} publishes {port} beyond this machine"
                );
            }
            if !name.starts_with("parkade") {
                continue;
            }
            let dockerfile = s["build"]["dockerfile"].as_str().unwrap();
            let context = deploy().join(s["build"]["context"].as_str().unwrap());
            assert!(context.join(dockerfile).exists(), "{name}: {dockerfile}");
            let env = s["environment"].as_object().unwrap();
            for key in env.keys().filter(|k| k.starts_with("PARKADE_")) {
                assert!(known.contains(key), "{name}: parkade does not read {key}");
            }
            assert_eq!(env["PARKADE_LOG_BACKEND"], "jetstream");
            let urls = env["PARKADE_NATS_URL"].as_str().unwrap();
            for node in ["nats1", "nats2", "nats3"] {
                assert!(urls.contains(&format!("nats://{node}:4222")), "{urls}");
            }
        }
    }

    #[test]
    fn the_configs_it_mounts_are_ones_parkade_and_nats_take() {
        let mut lakes = Vec::new();
        for file in ["parkade-1.toml", "parkade-2.toml"] {
            let path = deploy().join("compose").join(file);
            let config =
                parkade::Config::load(Some(&path)).unwrap_or_else(|e| panic!("{file}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(config.auth.allow_open, "{file}");
            let s3 = config
                .archive
                .s3
                .unwrap_or_else(|| panic!("{file}: no lake"));
            lakes.push((s3.bucket, s3.prefix));
        }
        assert_eq!(
            lakes[0], lakes[1],
            "both nodes share one lake, under its lease"
        );
        let out = Command::new(common::nats::server_binary())
            .args(["-t", "-c"])
            .arg(deploy().join("compose/nats.conf"))
            .env("SERVER_NAME", "nats1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nats-server -t: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = std::fs::read_to_string(deploy().join("compose/nats.conf")).unwrap();
        assert!(conf.contains("sync_interval: always"), "{conf}");
    }

    #[test]
    fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
        let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("FROM ")).count(),
            2,
            "a build stage and a runtime stage"
        );
        for l in lines
            .iter()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        {
            let words: Vec<&str> = l.split_whitespace().collect();
            for source in &words[1..words.len() - 1] {
                assert!(
                    root.join(source).exists(),
                    "COPY {source}: not in the repository"
                );
            }
        }
        let user = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("USER "))
            .expect("a USER");
        assert!(!user.contains(" root") && !user.contains(" 0"), "{user}");
        let health = text.split("HEALTHCHECK").nth(1).expect("a HEALTHCHECK");
        assert!(
            health.contains(r#"CMD ["parkade", "healthcheck"]"#),
            "{health}"
        );
    }

    #[actix_web::test]
    async fn the_healthcheck_says_healthy_only_while_the_server_answers() {
        let dir = common::data_dir();
        let app = TestApp::spawn(
            common::test_config(dir.path(), None),
            parkade::app::Hooks::default(),
        )
        .await;
        let address = app.base.trim_start_matches("http://").to_owned();
        // Off the test's own thread, which also serves the app.
        let check = |address: String| async move {
            let out = actix_web::rt::task::spawn_blocking(move || {
                Command::new(common::binary())
                    .args(["healthcheck", "--address", &address])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success(), text)
        };
        let (ok, text) = check(address.clone()).await;
        assert!(ok, "{text}");
        app.stop().await;
        let (ok, text) = check(address).await;
        assert!(!ok, "{text}");
        assert!(text.starts_with("unhealthy"), "{text}");
    }
}
