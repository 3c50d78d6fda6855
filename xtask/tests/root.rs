//! xtask finds the checkout it works on when it runs, not where it was built: the built binary, run in a small
//! workspace at another path (as a binary reused from a shared `CARGO_TARGET_DIR` runs in another clone), reports
//! that workspace, never this checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A folder under the temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("daig-xtask-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir.canonicalize().unwrap())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A workspace with one member, `member/`, at a fresh temp path.
fn fake_workspace(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    std::fs::write(dir.0.join("Cargo.toml"), "[workspace]\nresolver = \"3\"\nmembers = [\"member\"]\n").unwrap();
    std::fs::create_dir_all(dir.0.join("member/src")).unwrap();
    std::fs::write(
        dir.0.join("member/Cargo.toml"),
        "[package]\nname = \"member\"\nversion = \"0.0.0\"\nedition = \"2024\"\n",
    )
    .unwrap();
    std::fs::write(dir.0.join("member/src/lib.rs"), "").unwrap();
    dir
}

/// `xtask root` run in `cwd`: its stdout, trimmed, as a canonical path.
fn xtask_root(cwd: &Path) -> PathBuf {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask")).arg("root").current_dir(cwd).output().unwrap();
    assert!(output.status.success(), "xtask root failed: {}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    Path::new(printed.trim()).canonicalize().unwrap()
}

fn this_checkout() -> PathBuf {
    manifest_dir().parent().unwrap().canonicalize().unwrap()
}

#[test]
fn root_is_the_workspace_it_runs_in() {
    let workspace = fake_workspace("root");
    let root = xtask_root(&workspace.0);
    assert_eq!(root, workspace.0);
    assert_ne!(root, this_checkout());
}

#[test]
fn root_is_found_from_a_member_folder() {
    let workspace = fake_workspace("member");
    assert_eq!(xtask_root(&workspace.0.join("member/src")), workspace.0);
}

#[test]
fn root_in_this_checkout_is_this_checkout() {
    assert_eq!(xtask_root(&this_checkout().join("xtask")), this_checkout());
}

#[test]
fn outside_any_workspace_xtask_fails() {
    let dir = TempDir::new("none");
    // Unless the temp directory itself lies inside a workspace.
    let inside = dir.0.ancestors().any(|d| d.join("Cargo.toml").is_file());
    let output = Command::new(env!("CARGO_BIN_EXE_xtask")).arg("root").current_dir(&dir.0).output().unwrap();
    if !inside {
        assert!(!output.status.success(), "xtask root succeeded outside a workspace: {output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("locate-project"), "{output:?}");
    }
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
