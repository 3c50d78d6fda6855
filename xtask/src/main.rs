//! Build automation that Cargo cannot express.
//!
//! - `cargo xtask test`: every check CI runs: formatting, the workspace's tests (the GPU engine's on whatever
//!   adapter is present: Mesa's lavapipe where there is no GPU), clippy with warnings denied, and the
//!   build of `daig-shared` for `wasm32-unknown-unknown` (an invariant: the shared crate runs in browsers).
//! - `cargo xtask test-browser`: only the browser tests (part of `test`).
//! - `cargo xtask bench [server|training]`: the benchmarks recorded in BENCHMARKS.md, each beside its peer in the
//!   same run; with `server`, only the management server's (dataset upload and status requests over loopback); with
//!   `training`, only distributed training's (speedup and statistical efficiency with native providers, aggregation
//!   throughput, provider connections), and any further arguments go to its example (`cargo xtask bench training
//!   connections --connections 10000`).
//!
//! Set `CARGO_TARGET_DIR` to keep builds outside the checkout (`.ci/run` does).

use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => test(),
        "test-browser" => browser_tests(),
        "bench" => match std::env::args().nth(2).as_deref() {
            None => bench(),
            Some("server") => bench_server(),
            Some("training") => bench_training(&std::env::args().skip(3).collect::<Vec<_>>()),
            Some(other) => bail!("unknown benchmark group `{other}`: use `cargo xtask bench [server|training]`"),
        },
        _ => {
            eprintln!("usage: cargo xtask <test|test-browser|bench [server|training [ARGS]]>");
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
    browser_tests()?;
    Ok(())
}

/// The provider's engine in headless Chromium, in a Web Worker: once with WebGPU (SwiftShader), once
/// without, through wasm-bindgen-test-runner and chromedriver (installed by `.ci/run`).
fn browser_tests() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_owned();
    let chromium = std::env::var("DAIG_CHROMIUM").unwrap_or_else(|_| "/usr/lib/chromium/chromium".to_owned());
    let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned());
    // Chromium killed rather than closed leaves folders in the temp directory: give it one we clear.
    let tmp = std::env::temp_dir().join("daig-browser-tests");
    for webgpu in [true, false] {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("profile"))?;
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-quic".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", tmp.join("profile").display()),
        ];
        if webgpu {
            args.push("--enable-unsafe-webgpu".to_owned());
        }
        let config = format!(
            r#"{{"goog:chromeOptions": {{"binary": "{chromium}", "args": [{}]}}}}"#,
            args.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
        );
        std::fs::write(root.join("provider-wasm/webdriver.json"), config)?;
        eprintln!("$ cargo test -p daig-provider --target wasm32-unknown-unknown --test web (WebGPU: {webgpu})");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .args(["test", "--package", "daig-provider", "--target", "wasm32-unknown-unknown", "--test", "web"])
            .current_dir(root.join("provider-wasm"))
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", "wasm-bindgen-test-runner")
            .env("CHROMEDRIVER", &chromedriver)
            .env("DAIG_EXPECT_WEBGPU", if webgpu { "1" } else { "0" })
            .env("TMPDIR", &tmp)
            .env("WASM_BINDGEN_TEST_TIMEOUT", "300")
            .status()?;
        if !status.success() {
            bail!("the browser tests (WebGPU: {webgpu}) failed ({status})");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn bench() -> anyhow::Result<()> {
    cargo(&["bench", "--package", "daig-shared", "--bench", "frame"])?;
    cargo(&["bench", "--package", "daig-shared", "--bench", "trainer"])?;
    cargo(&["run", "--release", "--package", "daig-provider", "--example", "gpu_bench", "--", "--quick"])?;
    bench_server()?;
    bench_training(&[])
}

/// The management server's benchmarks: a real server on loopback, in a release build.
fn bench_server() -> anyhow::Result<()> {
    cargo(&["run", "--release", "--package", "daig-server", "--example", "server_bench"])
}

/// Distributed training's benchmarks: the release `daig-server` and `daig-provider` binaries as processes, driven by
/// the `training_bench` example (which finds them beside itself); `args` go to the example.
fn bench_training(args: &[String]) -> anyhow::Result<()> {
    cargo(&["build", "--release", "--package", "daig-server", "--package", "daig-provider"])?;
    let mut run = vec!["run", "--release", "--package", "daig-server", "--example", "training_bench", "--"];
    run.extend(args.iter().map(String::as_str));
    cargo(&run)
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
