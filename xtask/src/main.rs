//! Build automation that Cargo cannot express.
//!
//! - `cargo xtask test`: every check CI runs: formatting, the workspace's tests (the GPU engine's on whatever
//!   adapter is present: Mesa's lavapipe where there is no GPU), clippy with warnings denied, and the
//!   build of `daig-shared` for `wasm32-unknown-unknown` (an invariant: the shared crate runs in browsers).
//! - `cargo xtask bench`: the benchmarks recorded in BENCHMARKS.md, each beside its peer in the same run.
//!
//! Set `CARGO_TARGET_DIR` to keep builds outside the checkout (`.ci/run` does).

use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => test(),
        "bench" => bench(),
        _ => {
            eprintln!("usage: cargo xtask <test|bench>");
            bail!("unknown task `{task}`")
        }
    }
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["build", "--package", "daig-shared", "--target", "wasm32-unknown-unknown"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "--deny", "warnings"])?;
    cargo(&["clippy", "--package", "daig-shared", "--target", "wasm32-unknown-unknown", "--", "--deny", "warnings"])?;
    cargo(&["test", "--workspace"])?;
    Ok(())
}

fn bench() -> anyhow::Result<()> {
    cargo(&["bench", "--package", "daig-shared", "--bench", "frame"])?;
    cargo(&["bench", "--package", "daig-shared", "--bench", "trainer"])?;
    cargo(&["run", "--release", "--package", "daig-provider", "--example", "gpu_bench", "--", "--quick"])?;
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo).args(args).status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
