//! The systemd unit in `deploy/`: valid, hardened, and with room for the default
//! connection limit. Needs `systemd-analyze` (Debian's `systemd` package; the test
//! command installs it when it can), and fails without it.

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
    let limits = parkade::config::Limits::default();
    assert!(
        nofile >= limits.max_connections + 256,
        "LimitNOFILE={nofile} cannot hold max_connections={} and the log's files",
        limits.max_connections
    );
}
