//! Where things are, found when xtask runs, never from paths compiled in: with a shared `CARGO_TARGET_DIR`
//! (`.ci/run` sets one), one xtask binary serves every clone that builds the same sources, so a path baked in
//! at compile time (`env!("CARGO_MANIFEST_DIR")`) would name the clone that built it, not the one it runs in.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The cargo that runs xtask (`$CARGO`, set by `cargo run`), or the one on `PATH`.
pub fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The root of the workspace that holds the current directory, as cargo finds it (`cargo locate-project
/// --workspace`): the checkout `cargo xtask` was run in.
///
/// # Errors
/// cargo cannot be run, or the current directory is not inside a Cargo workspace.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let cargo = cargo_program();
    let output = Command::new(&cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .with_context(|| format!("running `{cargo} locate-project`"))?;
    if !output.status.success() {
        bail!(
            "`{cargo} locate-project --workspace` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let manifest = String::from_utf8(output.stdout).context("the workspace's path is not UTF-8")?;
    let manifest = Path::new(manifest.trim());
    Ok(manifest.parent().with_context(|| format!("{} has no parent folder", manifest.display()))?.to_owned())
}

/// binaryen's wasm-opt, for the provider's wasm and for trunk's dashboard build. The first of: `$WASM_OPT`,
/// `wasm-opt` in `$DAIG_WASM_OPT_DIR`, in `$DAIG_NODE_MODULES/.bin`, in `~/.cache/daig/npm/node_modules/.bin`
/// (where `.ci/run` installs npm's `binaryen@132.0.0`), then a `wasm-opt` on `PATH` of version 116 or later
/// (Debian's binaryen 108 writes wasm that browsers refuse).
pub fn find_wasm_opt() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WASM_OPT") {
        return Some(path.into());
    }
    let dirs = [
        std::env::var_os("DAIG_WASM_OPT_DIR").map(PathBuf::from),
        std::env::var_os("DAIG_NODE_MODULES").map(|d| PathBuf::from(d).join(".bin")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/daig/npm/node_modules/.bin")),
    ];
    if let Some(found) = dirs.into_iter().flatten().map(|dir| dir.join("wasm-opt")).find(|path| path.is_file()) {
        return Some(found);
    }
    let version = Command::new("wasm-opt").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&version.stdout);
    let number: u32 = text.split_whitespace().find_map(|w| w.parse().ok())?;
    (number >= 116).then(|| "wasm-opt".into())
}
