//! Builds the requestor dashboard (`web/`) with trunk into `web/dist`, which the server serves at `/`.
//!
//! Trunk runs offline (`web/Trunk.toml`): `wasm-bindgen` 0.2.130 must be on `PATH` (`cargo install
//! wasm-bindgen-cli --version 0.2.130`), and for release builds `wasm-opt` of binaryen 132 (npm's `binaryen@132.0.0`;
//! Debian's binaryen 108 produces wasm that fails to load). `wasm-opt` is the one the provider's build uses
//! ([`crate::paths::find_wasm_opt`]: `$WASM_OPT`, `$DAIG_WASM_OPT_DIR`, `$DAIG_NODE_MODULES/.bin`,
//! `~/.cache/daig/npm/node_modules/.bin`, then `PATH`), put first on trunk's `PATH` (trunk runs the file named
//! `wasm-opt` there).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `trunk build` (with `--release`: optimised for size, `opt-level = "z"` and `wasm-opt -Oz`) in `root/web`,
/// writing `root/web/dist`. Trunk empties `dist` first: copy other files into it afterwards.
///
/// # Errors
/// Trunk is missing or the build fails.
pub fn build(root: &Path, release: bool) -> anyhow::Result<()> {
    let web = root.join("web");
    // Trunk looks for `wasm-opt` on PATH: put the one the provider's build uses first.
    let mut path: Vec<PathBuf> = Vec::new();
    if let Some(dir) = crate::paths::find_wasm_opt().as_deref().and_then(Path::parent)
        && !dir.as_os_str().is_empty()
    {
        // Absolute: trunk runs in `web/`, and a relative `$WASM_OPT` is relative to where xtask was started.
        path.push(std::path::absolute(dir)?);
    }
    if let Some(system) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&system));
    }
    let mut trunk = Command::new(std::env::var_os("TRUNK").unwrap_or_else(|| "trunk".into()));
    trunk.current_dir(&web).arg("build").env("PATH", std::env::join_paths(path)?);
    if release {
        // Size over speed for the dashboard only: these variables apply to this build, not to the workspace.
        trunk
            .arg("--release")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
    }
    eprintln!("$ (cd web && trunk build{})", if release { " --release" } else { "" });
    let status = trunk
        .status()
        .context("cannot run trunk: install it with `cargo install trunk --version 0.21.14 --locked` (or set TRUNK)")?;
    if !status.success() {
        bail!("trunk build failed ({status})");
    }
    let index = web.join("dist/index.html");
    if !index.is_file() {
        bail!("trunk succeeded but {} is missing", index.display());
    }
    Ok(())
}
