//! The `daig-server` binary: `--help`, and refusing invalid settings before it binds.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_daig-server");

#[test]
fn help_lists_the_settings() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--listen", "--data-dir", "--config", "--body-limit-bytes", "DAIG_LISTEN"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn invalid_settings_are_refused_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--concurrency-limit", "0", "--auth-rate-burst", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("DAIG_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("concurrency_limit") && err.contains("auth_rate_burst"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing is created before the settings are valid");
}

/// Started, it says where to go next: the dashboard, the contribute page and the embed page, at the address it
/// actually listens on (here a port the system chose).
#[test]
fn at_start_it_prints_the_pages_to_open() {
    use std::io::BufRead as _;

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--web-dir"])
        .arg(dir.path().join("no-pages"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("DAIG_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Up to the note about the missing pages (the log may come first, on the same stream).
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok).take(20) {
            let last = line.contains("cargo xtask web");
            lines.push(line);
            if last {
                break;
            }
        }
        let _ = tx.send(lines);
    });
    let lines = rx.recv_timeout(std::time::Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.expect("the server printed where to go within a minute").join("\n");
    let url = |path: &str| {
        lines
            .lines()
            .find(|l| l.trim_end().ends_with(path) && l.contains("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no URL ending {path} in:\n{lines}"))
            .to_owned()
    };
    let (dashboard, contribute, sites) = (url("/"), url("/contribute"), url("/sites"));
    assert!(dashboard.contains("dashboard") && contribute.contains("contribute") && sites.contains("embed"), "{lines}");
    assert!(!lines.contains(":0/"), "the chosen port, not 0:\n{lines}");
    assert!(lines.contains("cargo xtask web"), "missing pages are pointed out:\n{lines}");
}
