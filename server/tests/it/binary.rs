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
