//! Build automation that Cargo cannot express.
//!
//! - `cargo xtask test`: every check CI runs: formatting, the workspace's tests (the GPU engine's on whatever
//!   adapter is present: Mesa's lavapipe where there is no GPU), clippy with warnings denied, and the
//!   build of `daig-shared` for `wasm32-unknown-unknown` (an invariant: the shared crate runs in browsers).
//! - `cargo xtask test-browser`: only the engine's browser tests (part of `test`).
//! - `cargo xtask web [--dev]`: builds the web pages into `web/dist` (the browser provider's wasm through
//!   wasm-bindgen and wasm-opt, the contribute page, the embed script), which the server serves.
//! - `cargo xtask serve [ARGS]`: builds the pages, then runs the release server with `ARGS`, serving this
//!   checkout's `web/dist` (`--web-dir`, unless `ARGS` or `DAIG_WEB_DIR` name another).
//! - `cargo xtask root`: prints the workspace's root folder, the checkout every other task works in.
//! - `cargo xtask bench [server|training]`: the benchmarks recorded in BENCHMARKS.md, each beside its peer in the
//!   same run; with `server`, only the management server's (dataset upload and status requests over loopback); with
//!   `training`, only distributed training's (speedup and statistical efficiency with native providers, aggregation
//!   throughput, provider connections), and any further arguments go to its example (`cargo xtask bench training
//!   connections --connections 10000`); with `abuse`, only the abuse suite's (`/api/health` latency, peak memory and
//!   training time with thousands of abusive clients, against an undisturbed run).
//! - `cargo xtask fuzz [--runs N] [--max-time SECS] [TARGET...]`: the cargo-fuzz targets in `fuzz/`, one after
//!   another, 10 million executions each unless told, with a summary of executions, speed, coverage and findings
//!   (see [`fuzz`]). Not part of `test`.
//!
//! Set `CARGO_TARGET_DIR` to keep builds outside the checkout (`.ci/run` does). The checkout is found when xtask
//! runs (`cargo locate-project --workspace` from the current directory, see [`paths`]), so one xtask binary in a
//! shared target folder works on whichever clone it is run in.

mod dashboard;
mod fuzz;
mod paths;

use std::process::Command;

use anyhow::{Context, bail};
use paths::{cargo_program, find_wasm_opt, workspace_root};

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => test(),
        "test-browser" => browser_tests(),
        "web" => web(std::env::args().any(|a| a == "--dev")),
        "serve" => serve(&std::env::args().skip(2).collect::<Vec<_>>()),
        "root" => {
            println!("{}", workspace_root()?.display());
            Ok(())
        }
        "bench" => match std::env::args().nth(2).as_deref() {
            None => bench(),
            Some("server") => bench_server(),
            Some("training") => bench_training(&std::env::args().skip(3).collect::<Vec<_>>()),
            Some("trust") => bench_trust(&std::env::args().skip(3).collect::<Vec<_>>()),
            Some("abuse") => bench_abuse(&std::env::args().skip(3).collect::<Vec<_>>()),
            Some("browser") => bench_browser(&std::env::args().skip(3).collect::<Vec<_>>()),
            Some(other) => {
                bail!(
                    "unknown benchmark group `{other}`: use `cargo xtask bench [server|training|trust|abuse|browser]`"
                )
            }
        },
        "fuzz" => fuzz::fuzz(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|test-browser|web [--dev]|serve [SERVER ARGS]|root|bench [server|training|trust [ARGS]|abuse [ARGS]|browser]|fuzz [--runs N] [TARGET...]>"
            );
            bail!("unknown task `{task}`")
        }
    }
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["build", "--package", "daig-shared", "--target", "wasm32-unknown-unknown"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "--deny", "warnings"])?;
    cargo(&["clippy", "--package", "daig-shared", "--target", "wasm32-unknown-unknown", "--", "--deny", "warnings"])?;
    cargo(&[
        "clippy",
        "--package",
        "daig-provider",
        "--target",
        "wasm32-unknown-unknown",
        "--lib",
        "--tests",
        "--",
        "--deny",
        "warnings",
    ])?;
    // The browser end-to-end tests (tests/tests/browser_provider.rs) load the built pages.
    web(false)?;
    cargo(&["test", "--workspace"])?;
    browser_tests()?;
    Ok(())
}

/// The provider's engine in headless Chromium, in a Web Worker: once with WebGPU (SwiftShader), once
/// without, through wasm-bindgen-test-runner and chromedriver (installed by `.ci/run`).
fn browser_tests() -> anyhow::Result<()> {
    let root = workspace_root()?;
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
        let status = Command::new(cargo_program())
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

/// The largest gzipped provider wasm the browser may have to fetch before a visitor's first contribution.
const MAX_PROVIDER_WASM_GZIP: u64 = 400 * 1024;

/// The wasm-bindgen CLI that matches the `wasm-bindgen` pinned in Cargo.toml.
const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// Builds the web pages into `web/dist`: the browser provider (wasm-bindgen, wasm-opt when found, gzipped copies
/// served precompressed) under `provider/`, and the static pages of `web/static`. `dev` skips LTO and wasm-opt.
fn web(dev: bool) -> anyhow::Result<()> {
    let root = workspace_root()?;
    let dist = root.join("web/dist");
    ensure_web_tools()?;
    // Trunk empties `web/dist`: the dashboard first, then the provider and the static pages beside it.
    dashboard::build(&root, !dev)?;
    let target_dir =
        std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let mut build = Command::new(cargo_program());
    build.args([
        "rustc",
        "--package",
        "daig-provider",
        "--lib",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "--crate-type",
        "cdylib",
    ]);
    if !dev {
        build.env("CARGO_PROFILE_RELEASE_LTO", "true").env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
    }
    eprintln!("$ cargo rustc -p daig-provider --lib --release --target wasm32-unknown-unknown --crate-type cdylib");
    if !build.status()?.success() {
        bail!("building the provider's wasm failed");
    }
    let wasm = target_dir.join("wasm32-unknown-unknown/release/daig_provider.wasm");
    let out = dist.join("provider");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    run(Command::new("wasm-bindgen")
        .arg("--target")
        .arg("no-modules")
        .arg("--no-typescript")
        .arg("--out-name")
        .arg("daig_provider")
        .arg("--out-dir")
        .arg(&out)
        .arg(&wasm))?;
    let bindgen_wasm = out.join("daig_provider_bg.wasm");
    match (dev, find_wasm_opt()) {
        (false, Some(wasm_opt)) => {
            run(Command::new(wasm_opt).arg("-O3").args(WASM_FEATURES).arg(&bindgen_wasm).arg("-o").arg(&bindgen_wasm))?
        }
        (false, None) => {
            eprintln!("wasm-opt (binaryen 132) not found: the provider's wasm is not optimised further (set WASM_OPT)")
        }
        (true, _) => {}
    }
    for entry in std::fs::read_dir(root.join("web/static"))? {
        let entry = entry?;
        copy_tree(&entry.path(), &dist.join(entry.file_name()))?;
    }
    let mut gzipped_wasm = 0;
    for file in ["provider/daig_provider_bg.wasm", "provider/daig_provider.js", "provider/worker.js", "embed.js"] {
        let path = dist.join(file);
        let bytes = std::fs::read(&path).with_context(|| format!("{} is missing", path.display()))?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &bytes)?;
        let gz = gz.finish()?;
        if file.ends_with(".wasm") {
            gzipped_wasm = gz.len() as u64;
            eprintln!("provider wasm: {} KB, {} KB gzipped", bytes.len() / 1024, gz.len() / 1024);
        }
        std::fs::write(dist.join(format!("{file}.gz")), gz)?;
    }
    if gzipped_wasm > MAX_PROVIDER_WASM_GZIP && !dev {
        bail!(
            "the provider's wasm is {} KB gzipped, over the {} KB budget",
            gzipped_wasm / 1024,
            MAX_PROVIDER_WASM_GZIP / 1024
        );
    }
    eprintln!("web pages built in {}", dist.display());
    Ok(())
}

/// Builds the pages, then runs the release server with `args`, pointed at this checkout's `web/dist` (unless
/// `args` or `DAIG_WEB_DIR` choose the pages), so that it never serves pages built from other sources.
fn serve(args: &[String]) -> anyhow::Result<()> {
    let root = workspace_root()?;
    web(false)?;
    let web_dir = root.join("web/dist").display().to_string();
    let mut run = vec!["run", "--release", "--package", "daig-server", "--bin", "daig-server", "--"];
    let chosen = std::env::var_os("DAIG_WEB_DIR").is_some()
        || args.iter().any(|a| a == "--web-dir" || a.starts_with("--web-dir="));
    if !chosen {
        run.extend(["--web-dir", &web_dir]);
    }
    run.extend(args.iter().map(String::as_str));
    cargo(&run)
}

/// The wasm features rustc emits by default for wasm32-unknown-unknown, for wasm-opt to accept them.
const WASM_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// The trunk that builds the dashboard.
const TRUNK_VERSION: &str = "0.21.14";

/// Installs what the web build needs when it is missing: the wasm32 target, the pinned wasm-bindgen CLI and trunk
/// (a first install of trunk takes minutes).
fn ensure_web_tools() -> anyhow::Result<()> {
    run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    let version = |tool: &str| {
        let output = Command::new(tool).arg("--version").output().ok()?;
        Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    if !version("wasm-bindgen").is_some_and(|v| v.ends_with(WASM_BINDGEN_VERSION)) {
        cargo(&["install", "wasm-bindgen-cli", "--version", WASM_BINDGEN_VERSION])?;
    }
    if std::env::var_os("TRUNK").is_none() && !version("trunk").is_some_and(|v| v.ends_with(TRUNK_VERSION)) {
        eprintln!("installing trunk {TRUNK_VERSION} (once; several minutes)");
        cargo(&["install", "trunk", "--version", TRUNK_VERSION, "--locked"])?;
    }
    Ok(())
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {command:?}");
    let status = command.status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn bench() -> anyhow::Result<()> {
    cargo(&["bench", "--package", "daig-shared", "--bench", "frame"])?;
    cargo(&["bench", "--package", "daig-shared", "--bench", "trainer"])?;
    cargo(&["run", "--release", "--package", "daig-provider", "--example", "gpu_bench", "--", "--quick"])?;
    bench_server()?;
    bench_training(&[])?;
    bench_trust(&[])?;
    bench_abuse(&[])
}

/// The abuse suite's figures (`/api/health` latency, the server's peak memory and the training time, abused
/// against undisturbed): the release binaries as processes, driven by the `abuse_bench` example; `args` go to it.
fn bench_abuse(args: &[String]) -> anyhow::Result<()> {
    cargo(&["build", "--release", "--package", "daig-server", "--package", "daig-provider"])?;
    let mut run = vec!["run", "--release", "--package", "daig-tests", "--example", "abuse_bench", "--"];
    run.extend(args.iter().map(String::as_str));
    cargo(&run)
}

/// Untrusted providers' benchmarks (the Byzantine table, checks on against off): the release binaries and the
/// hostile provider as processes, driven by the `trust_bench` example; `args` go to the example.
fn bench_trust(args: &[String]) -> anyhow::Result<()> {
    cargo(&["build", "--release", "--package", "daig-server", "--package", "daig-provider"])?;
    cargo(&["build", "--release", "--package", "daig-tests", "--bin", "e2e-hostile-provider"])?;
    let mut run = vec!["run", "--release", "--package", "daig-tests", "--example", "trust_bench", "--"];
    run.extend(args.iter().map(String::as_str));
    cargo(&run)
}

/// The management server's benchmarks: a real server on loopback, in a release build.
fn bench_server() -> anyhow::Result<()> {
    cargo(&["run", "--release", "--package", "daig-tests", "--example", "server_bench"])
}

/// Distributed training's benchmarks: the release `daig-server` and `daig-provider` binaries as processes, driven by
/// the `training_bench` example (which finds them beside itself); `args` go to the example.
fn bench_training(args: &[String]) -> anyhow::Result<()> {
    cargo(&["build", "--release", "--package", "daig-server", "--package", "daig-provider"])?;
    let mut run = vec!["run", "--release", "--package", "daig-tests", "--example", "training_bench", "--"];
    run.extend(args.iter().map(String::as_str));
    cargo(&run)
}

/// The browser provider's engine beside TensorFlow.js in one headless Chromium (`bench/browser/tfjs_bench.mjs`), with
/// the npm packages installed in `~/.cache/daig/npm` (or `$DAIG_NODE_MODULES`); `args` go to the script
/// (`--quick`).
fn bench_browser(args: &[String]) -> anyhow::Result<()> {
    let root = workspace_root()?;
    web(false)?;
    let home = std::env::var("HOME").unwrap_or_default();
    let npm = std::path::Path::new(&home).join(".cache/daig/npm");
    let modules =
        std::env::var("DAIG_NODE_MODULES").map(std::path::PathBuf::from).unwrap_or_else(|_| npm.join("node_modules"));
    if !modules.join("@tensorflow/tfjs-backend-wasm").is_dir() || !modules.join("playwright-core").is_dir() {
        std::fs::create_dir_all(&npm)?;
        run(Command::new("npm").arg("install").arg("--prefix").arg(&npm).args([
            "--no-audit",
            "--no-fund",
            "playwright-core@1.65.1",
            "@tensorflow/tfjs@4.22.0",
            "@tensorflow/tfjs-backend-webgpu@4.22.0",
            "@tensorflow/tfjs-backend-wasm@4.22.0",
        ]))?;
    }
    let mnist = root
        .ancestors()
        .map(|dir| dir.join("shared/data/mnist-8k"))
        .find(|dir| dir.join("images.npy").is_file())
        .context("no shared/data/mnist-8k above the checkout")?;
    run(Command::new("node")
        .arg(root.join("bench/browser/tfjs_bench.mjs"))
        .arg(mnist)
        .arg(root.join("web/dist"))
        .arg(modules)
        .args(args))
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = cargo_program();
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo).args(args).status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
