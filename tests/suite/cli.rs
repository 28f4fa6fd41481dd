//! The commands as Unix tools: exit codes, help without noise, output fit for a pipe or
//! a log, and the configuration file found where an operator puts it.

use std::process::Command;

use crate::common;

/// An import that accepted nothing (every row refused) exits non-zero and says so; its
/// output in a pipe carries no terminal colour codes.
#[test]
fn an_import_that_took_nothing_fails_and_says_so() {
    let dir = common::data_dir();
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "SystemCodeNumber,Capacity,Occupancy,LastUpdated\n\
         north,100,-5,2016-10-04 07:59:42\n\
         north,100,500,2016-10-04 08:25:42\n",
    )
    .unwrap();
    let (code, out) = common::parkade(&["import", csv.to_str().unwrap()], dir.path(), None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing imported"), "{out}");
    assert!(!out.contains('\u{1b}'), "colour codes in a pipe: {out:?}");
}

/// `--help` does not show `[env: NAME=]` for variables that are not set.
#[test]
fn help_shows_no_empty_environment_values() {
    for cmd in ["serve", "import", "demo", "replay", "train"] {
        let out = Command::new(common::binary())
            .args([cmd, "--help"])
            .env_remove("PARKADE_BIND")
            .env_remove("PARKADE_CONFIG")
            .env_remove("PARKADE_DATA_DIR")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd} --help: {text}");
        assert!(text.contains("[env: PARKADE_"), "{cmd}: {text}");
        assert!(
            !text.contains("=]"),
            "{cmd} --help shows an empty value: {text}"
        );
    }
}

/// Without `--config`, `./parkade.toml` is read, and the start says which file it read.
#[test]
fn the_configuration_file_is_found_in_the_working_directory_and_named_at_start() {
    let dir = common::data_dir();
    let port = common::free_port();
    std::fs::write(
        dir.path().join("parkade.toml"),
        format!("bind = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n"),
    )
    .unwrap();
    let child = Command::new(common::binary())
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("PARKADE_CONFIG")
        .env_remove("PARKADE_BIND")
        .env_remove("PARKADE_DATA_DIR")
        .env_remove("PARKADE_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(up, "serve did not listen on the file's port {port}: {logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("configuration read") && l.contains("parkade.toml")),
        "{logs}"
    );
    assert!(
        dir.path().join("data/log").is_dir(),
        "the file's data_dir was used"
    );
    assert!(!logs.contains('\u{1b}'), "colour codes in a log: {logs:?}");
}

/// A stray quote in a CSV row is reported as such, naming its line, and the rows it
/// ran into are named too (not "needs a timestamp").
#[test]
fn a_stray_quote_is_named_with_its_line() {
    let dir = common::data_dir();
    let csv = dir.path().join("quote.csv");
    std::fs::write(
        &csv,
        "SystemCodeNumber,Capacity,Occupancy,LastUpdated\n\
         north,100,10,2016-10-04 07:59:42\n\
         north,100,\"20,2016-10-04 08:25:42\n\
         north,100,30,2016-10-04 08:59:42\n",
    )
    .unwrap();
    let rejects = dir.path().join("rejects.csv");
    let (code, out) = common::parkade(
        &[
            "import",
            csv.to_str().unwrap(),
            "--rejects",
            rejects.to_str().unwrap(),
        ],
        dir.path(),
        None,
    );
    assert_eq!(code, 0, "the first row went in: {out}");
    for want in ["line 3", "lines 3 to 4", "unbalanced_quote"] {
        assert!(out.contains(want), "{want:?} not in: {out}");
    }
    assert!(!out.contains("needs a timestamp"), "{out}");
    let rejected = std::fs::read_to_string(&rejects).unwrap();
    assert!(rejected.contains(",3,unbalanced_quote,"), "{rejected}");
}

/// Shell completions and the manual page come from the same definitions as `--help`.
#[test]
fn completions_and_the_manual_page_name_every_command() {
    let run = |args: &[&str]| {
        let out = Command::new(common::binary()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    // roff writes a hyphen as `\-`.
    let man = run(&["man"]).replace("\\-", "-");
    assert!(
        man.starts_with(".ie") || man.contains(".TH parkade"),
        "{man}"
    );
    for cmd in ["serve", "import", "repair-log", "demo", "train"] {
        assert!(bash.contains(cmd), "{cmd} not in the bash completions");
        assert!(man.contains(cmd), "{cmd} not in the manual page");
    }
}

/// A long import in a pipe prints a progress line every few seconds; Ctrl-C says how
/// far it got and that a rerun resumes, and the rerun does (rows already in are
/// skipped, the rest go in).
#[test]
fn a_long_import_says_how_far_it_is_and_resumes_after_ctrl_c() {
    use std::io::Write;
    let dir = common::data_dir();
    let csv = dir.path().join("big.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
    writeln!(f, "SystemCodeNumber,Capacity,Occupancy,LastUpdated").unwrap();
    let start = chrono::NaiveDate::from_ymd_opt(2016, 1, 4)
        .unwrap()
        .and_hms_opt(8, 0, 0)
        .unwrap();
    let lots = 40;
    let readings = 10_000;
    for i in 0..readings {
        let at = start + chrono::Duration::minutes(30 * i);
        for lot in 0..lots {
            let occupancy = (i * 7 + lot * 13) % 400;
            writeln!(
                f,
                "LOT{lot:02},500,{occupancy},{}",
                at.format("%Y-%m-%d %H:%M:%S")
            )
            .unwrap();
        }
    }
    f.flush().unwrap();
    drop(f);
    let import = || {
        Command::new(common::binary())
            .args(["import", csv.to_str().unwrap()])
            .env("PARKADE_DATA_DIR", dir.path().join("data"))
            .env_remove("PARKADE_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Interrupted part way.
    let child = import();
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "stopped by Ctrl-C: {err}");
    for want in [
        "stopped by Ctrl-C at byte",
        "run the same command again to resume",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    // The rerun: progress lines while it works, the rows of the first run recognised.
    let out = import().wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("parkade import: ") && l.contains("bytes read")),
        "a progress line: {text}"
    );
    let already: u64 = text
        .split(" accepted, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("already imported: {text}"));
    assert!(already > 0, "the rerun resumed: {text}");
}
