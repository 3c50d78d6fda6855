//! `cargo xtask fuzz [--runs N] [--max-time SECS] [TARGET...]`: runs the cargo-fuzz targets in `fuzz/` one after
//! another, each for `N` executions (10 million unless told), and prints what each did: executions, executions
//! per second, coverage (libFuzzer's `cov:` edges and `ft:` features, at the start and at the end) and the crash
//! files of any it found.
//!
//! It installs what it needs when missing (the nightly toolchain, cargo-fuzz), builds in
//! `~/.cache/daig/fuzz-target` (apart from the main target folder, since the fuzz build's flags differ), writes
//! fresh seeds with `daig-fuzz-seedgen`, and keeps everything that grows under `~/.cache/daig/fuzz`: the corpora
//! (`corpus/<target>`, kept between runs), crashes (`artifacts/<target>`) and libFuzzer's logs (`logs/<target>.log`).
//!
//! Inputs are bounded: an input that makes a target hold more than `RSS_LIMIT_MB` or ask for `MALLOC_LIMIT_MB` at
//! once is a crash, so a reader that allocates what a header declares before checking it is a finding.
//!
//! Fuzzing is not a test: `cargo xtask test` and CI never run it. On a shared machine, run it under `nice -n 19`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::paths::{cargo_program, workspace_root};

/// Every target in `fuzz/Cargo.toml`, in the order they run.
const TARGETS: &[&str] = &["decode_frame", "npy", "npz", "csv", "idx", "shard", "model_json", "keras"];
const DEFAULT_RUNS: u64 = 10_000_000;
const RSS_LIMIT_MB: u32 = 2048;
const MALLOC_LIMIT_MB: u32 = 512;
/// Seconds one input may take before it counts as a hang.
const TIMEOUT_SECS: u32 = 25;
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What one target's run did, read from libFuzzer's output.
#[derive(Default)]
struct Outcome {
    target: String,
    executions: Option<u64>,
    execs_per_sec: Option<u64>,
    /// `cov:` and `ft:` once the seeds and the kept corpus are loaded (`INITED`).
    initial: Option<(u64, u64)>,
    /// `cov:` and `ft:` at the end.
    last: Option<(u64, u64)>,
    corpus_units: Option<u64>,
    peak_rss_mb: Option<u64>,
    wall_secs: f64,
    /// Crash, leak, timeout or out-of-memory inputs libFuzzer wrote.
    artifacts: Vec<String>,
    /// The exit status, when it was not success.
    failure: Option<String>,
}

pub fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let mut runs = DEFAULT_RUNS;
    let mut max_time = None;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            let text = match arg.split_once('=') {
                Some((_, v)) => v.to_owned(),
                None => args.next().with_context(|| format!("{name} needs a value"))?.clone(),
            };
            text.replace('_', "").parse().with_context(|| format!("{name} {text} is not a whole number"))
        };
        match arg.as_str() {
            a if a == "--runs" || a.starts_with("--runs=") => runs = value("--runs")?,
            a if a == "--max-time" || a.starts_with("--max-time=") => max_time = Some(value("--max-time")?),
            a if TARGETS.contains(&a) => targets.push(a.to_owned()),
            a => bail!(
                "unknown fuzz argument `{a}`: use `cargo xtask fuzz [--runs N] [--max-time SECS] [TARGET...]` with \
                 targets among {}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }

    let root = workspace_root()?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let cache = Path::new(&home).join(".cache/daig");
    let target_dir = cache.join("fuzz-target");
    let work = cache.join("fuzz");
    ensure_tools()?;

    let seeds = work.join("seeds");
    let _ = std::fs::remove_dir_all(&seeds);
    let mut seedgen = nightly_cargo();
    seedgen
        .args(["run", "--quiet", "--release", "--package", "daig-fuzz-seedgen", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        .arg("--")
        .arg(&seeds)
        .arg(&root)
        .env("CARGO_TARGET_DIR", &target_dir);
    crate::run(&mut seedgen)?;

    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(&root, &target_dir, &work, target, runs, max_time)?);
    }
    let table = summary(&outcomes, runs);
    println!("\n{table}");
    std::fs::write(work.join("summary.txt"), &table)?;
    eprintln!("(also in {})", work.join("summary.txt").display());
    let failed: Vec<&str> = outcomes.iter().filter(|o| o.failure.is_some()).map(|o| o.target.as_str()).collect();
    if !failed.is_empty() {
        bail!("fuzzing found problems in {}: see the artifacts above", failed.join(", "));
    }
    Ok(())
}

/// `cargo +nightly`, through rustup's proxy on `PATH` (the `cargo` that runs xtask may be a toolchain's own).
fn nightly_cargo() -> Command {
    let mut command = Command::new("cargo");
    command.arg("+nightly").env_remove("RUSTUP_TOOLCHAIN");
    command
}

/// Installs the nightly toolchain and the pinned cargo-fuzz when they are missing.
fn ensure_tools() -> anyhow::Result<()> {
    let toolchains = Command::new("rustup").args(["toolchain", "list"]).output().context("running rustup")?;
    if !String::from_utf8_lossy(&toolchains.stdout).lines().any(|l| l.starts_with("nightly")) {
        crate::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let version = Command::new("cargo-fuzz").arg("--version").output().ok();
    let installed = version.is_some_and(|v| String::from_utf8_lossy(&v.stdout).trim().ends_with(CARGO_FUZZ_VERSION));
    if !installed {
        eprintln!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (once; a few minutes)");
        crate::run(Command::new(cargo_program()).args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }
    Ok(())
}

fn run_target(
    root: &Path,
    target_dir: &Path,
    work: &Path,
    target: &str,
    runs: u64,
    max_time: Option<u64>,
) -> anyhow::Result<Outcome> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let logs = work.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir)?;
    }
    let seeds = work.join("seeds").join(target);
    let dict = work.join("seeds").join(format!("{target}.dict"));
    let mut command = nightly_cargo();
    command
        .args(["fuzz", "run", "--fuzz-dir"])
        .arg(root.join("fuzz"))
        .arg("--target-dir")
        .arg(target_dir)
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-runs={runs}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .current_dir(root)
        .stderr(Stdio::piped());
    if dict.is_file() {
        command.arg(format!("-dict={}", dict.display()));
    }
    if let Some(secs) = max_time {
        command.arg(format!("-max_total_time={secs}"));
    }
    eprintln!("\n== fuzz {target}: {runs} executions\n$ {command:?}");
    let log_path = logs.join(format!("{target}.log"));
    let mut log = std::io::BufWriter::new(std::fs::File::create(&log_path)?);
    let started = Instant::now();
    let mut child = command.spawn().context("running cargo fuzz")?;
    let mut outcome = Outcome { target: target.to_owned(), ..Outcome::default() };
    let stderr = child.stderr.take().context("no stderr from cargo fuzz")?;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        writeln!(log, "{line}")?;
        read_line(&line, &mut outcome);
        // New corpus units scroll by in thousands; the log keeps them.
        if !(line.contains("\tNEW ") || line.contains("\tREDUCE ") || line.contains("\tRELOAD ")) {
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    log.flush()?;
    outcome.wall_secs = started.elapsed().as_secs_f64();
    // libFuzzer divides by whole seconds: a run shorter than one says 0.
    if outcome.execs_per_sec == Some(0) {
        outcome.execs_per_sec = outcome.executions.map(|n| (n as f64 / outcome.wall_secs.max(0.001)) as u64);
    }
    if !status.success() {
        outcome.failure = Some(status.to_string());
        eprintln!("fuzz target {target} failed ({status}); its log is {}", log_path.display());
    }
    Ok(outcome)
}

/// Picks the figures out of one line of libFuzzer's output.
fn read_line(line: &str, outcome: &mut Outcome) {
    let stat = |name: &str| line.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(v) = stat("stat::number_of_executed_units:") {
        outcome.executions = Some(v);
    } else if let Some(v) = stat("stat::average_exec_per_sec:") {
        outcome.execs_per_sec = Some(v);
    } else if let Some(v) = stat("stat::peak_rss_mb:") {
        outcome.peak_rss_mb = Some(v);
    } else if let Some(path) = line.split("Test unit written to ").nth(1) {
        outcome.artifacts.push(path.trim().to_owned());
    } else if line.starts_with('#') {
        let field = |name: &str| {
            let mut words = line.split_whitespace().skip_while(|w| *w != name);
            words.nth(1).and_then(|v| v.split('/').next()?.parse::<u64>().ok())
        };
        if let (Some(cov), Some(ft)) = (field("cov:"), field("ft:")) {
            if line.contains("INITED") {
                outcome.initial = Some((cov, ft));
            }
            outcome.last = Some((cov, ft));
            outcome.corpus_units = field("corp:").or(outcome.corpus_units);
        }
    }
}

fn summary(outcomes: &[Outcome], runs: u64) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    let pair = |v: Option<(u64, u64)>| v.map_or_else(|| "?".to_owned(), |(a, b)| format!("{a}/{b}"));
    let mut table = format!(
        "fuzzing, {runs} executions per target asked (cov/ft: libFuzzer's edges/features, at start and end)\n\
         {:<13} {:>11} {:>8} {:>9} {:>15} {:>15} {:>7} {:>8}  result\n",
        "target", "executions", "exec/s", "wall s", "cov/ft start", "cov/ft end", "corpus", "RSS MB"
    );
    for o in outcomes {
        let result = match (&o.failure, o.artifacts.is_empty()) {
            (None, _) => "ok".to_owned(),
            (Some(status), true) => format!("failed ({status})"),
            (Some(_), false) => format!("FOUND: {}", o.artifacts.join(", ")),
        };
        table.push_str(&format!(
            "{:<13} {:>11} {:>8} {:>9.0} {:>15} {:>15} {:>7} {:>8}  {result}\n",
            o.target,
            show(o.executions),
            show(o.execs_per_sec),
            o.wall_secs,
            pair(o.initial),
            pair(o.last),
            show(o.corpus_units),
            show(o.peak_rss_mb),
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_figures() {
        let mut outcome = Outcome::default();
        for line in [
            "#21\tINITED cov: 455 ft: 1024 corp: 20/1210b exec/s: 0 rss: 41Mb",
            "#1048576\tpulse  cov: 612 ft: 2210 corp: 301/9876b lim: 4096 exec/s: 95325 rss: 60Mb",
            "#10000000\tDONE   cov: 640 ft: 2403 corp: 322/11Kb lim: 4096 exec/s: 90909 rss: 61Mb",
            "stat::number_of_executed_units: 10000000",
            "stat::average_exec_per_sec:     90909",
            "stat::peak_rss_mb:              61",
            "artifact_prefix='/a/'; Test unit written to /a/crash-0123",
        ] {
            read_line(line, &mut outcome);
        }
        assert_eq!(outcome.initial, Some((455, 1024)));
        assert_eq!(outcome.last, Some((640, 2403)));
        assert_eq!(outcome.corpus_units, Some(322));
        assert_eq!(
            (outcome.executions, outcome.execs_per_sec, outcome.peak_rss_mb),
            (Some(10_000_000), Some(90909), Some(61))
        );
        assert_eq!(outcome.artifacts, ["/a/crash-0123"]);
    }
}
