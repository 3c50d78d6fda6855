//! Benchmarks of untrusted providers, recorded in BENCHMARKS.md:
//!
//! - `byzantine`: the MNIST MLP trained by 10 providers of which 1, 2 or 3 are hostile (`e2e-hostile-provider`,
//!   each attack in turn), against a clean run of 10 honest providers with the same seed: the held-out accuracy,
//!   the contributions each hostile connection got applied before it was shut out (credit later withdrawn) and
//!   its failed checks, the hostile credit left, and honest providers shut out.
//! - `overhead`: 4 honest providers train the MNIST MLP with checks on (the default rates) and off
//!   (`--check-contributions false`), alternating: samples per second on as a ratio of off, and the server's
//!   CPU seconds per applied contribution in each.
//!
//! Every process runs on this machine, from one address (`--max-provider-connections-per-address 1000`, no
//! address bans). Build the binaries first:
//!
//! ```text
//! cargo build --release -p daig-server -p daig-provider -p daig-tests --bin e2e-hostile-provider
//! cargo run --release -p daig-tests --example trust_bench -- [all|byzantine|overhead]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use daig_tests::{Api, Programs, Provider, Server, open_db, prometheus};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Which benchmarks: all, byzantine or overhead.
    #[arg(default_value = "all")]
    which: String,
    /// The directory of the release binaries [default: target/release].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The MNIST directory [default: shared/data/mnist-8k, searched upward].
    #[arg(long)]
    data: Option<PathBuf>,
    /// byzantine: the attacks.
    #[arg(long, value_delimiter = ',', default_values_t = ["zero", "negate", "huge", "max", "noise", "replay", "fast", "wrong-labels"].map(str::to_owned))]
    attacks: Vec<String>,
    /// byzantine: hostile providers among the 10, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3])]
    hostile: Vec<usize>,
    /// byzantine and overhead: the epochs of a run.
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    /// overhead: runs with checks on and off each, alternating.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

fn settings(epochs: u32) -> Value {
    let updates = epochs * 6000 / 32 / 4;
    json!({"batch_size": 32, "k": 4, "epochs": epochs, "samples_per_shard": 1000, "validation_fraction": 0.25,
           "seed": 11, "max_staleness": 2, "checkpoint_every": 1000,
           "optimizer": {"method": {"type": "adam"}, "learning_rate": 0.003,
                         "schedule": {"type": "cosine", "warmup_steps": 0, "total_steps": updates, "min_lr": 0.0003}}})
}

/// What one run gave.
struct Run {
    accuracy: f64,
    seconds: f64,
    /// Train samples applied per second, from start to finish.
    samples_per_sec: f64,
    applied: f64,
    server_cpu: f64,
    /// Per hostile connection that was shut out: its applied (then withdrawn) contributions.
    hostile_applied: Vec<i64>,
    hostile_credit: i64,
    honest_out: i64,
    failed_checks: f64,
    passed_checks: f64,
}

fn hostile(bin: &Path, server: &Server, project: i64, attack: &str, dir: &Path, n: usize) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("hostile{n}.log")))?;
    Ok(Command::new(bin)
        .args(["--server", &server.url(""), "--project", &project.to_string(), "--attack", attack, "--dir"])
        .arg(dir.join(format!("hostile{n}")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// One MNIST run on a fresh server: `hostile` providers playing `attack` (started first), then `honest` ones.
async fn run(
    bins: &Programs,
    hostile_bin: &Path,
    mnist: &Path,
    epochs: u32,
    honest: usize,
    attack: Option<(&str, usize)>,
    checks: bool,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = [
        "--shut-out-ban-secs",
        "0",
        "--max-provider-connections-per-address",
        "1000",
        "--check-contributions",
        if checks { "true" } else { "false" },
    ]
    .map(str::to_owned)
    .to_vec();
    let server = Server::start(bins, dir.path(), &args).await?;
    let api = Api::sign_up(&server, "bench").await?;
    let id = api.mnist_project(mnist, settings(epochs)).await?;
    let start = Instant::now();
    let cpu_before = server.cpu_secs().unwrap_or(0.0);
    let mut bad: Vec<Child> = match attack {
        Some((name, n)) => {
            (0..n).map(|i| hostile(hostile_bin, &server, id, name, dir.path(), i)).collect::<Result<_, _>>()?
        }
        None => Vec::new(),
    };
    let mut good: Vec<Provider> = (0..honest)
        .map(|i| Provider::start(bins, &server, id, dir.path(), &format!("honest{i}")))
        .collect::<Result<_, _>>()?;
    let view = loop {
        let view = api.get(&format!("/api/projects/{id}")).await?;
        if view["state"] == "finished" {
            break view;
        }
        if view["state"] != "running" || start.elapsed() > Duration::from_secs(1200) {
            bail!("project {id} is {} after {:?}", view["state"], start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds = start.elapsed().as_secs_f64();
    let server_cpu = server.cpu_secs().unwrap_or(0.0) - cpu_before;
    for child in &mut bad {
        let _ = child.kill();
        let _ = child.wait();
    }
    for provider in &mut good {
        provider.wait(Duration::from_secs(30));
    }
    let accuracy = view["metrics"]
        .as_array()
        .and_then(|m| m.iter().rev().find_map(|m| m["val_accuracy"].as_f64()))
        .context("no accuracy")?;
    let metrics = server.metrics().await?;
    let db = open_db(&server.data_dir).await?;
    let hostile_applied: Vec<i64> = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM contributions c WHERE c.provider_id = p.id) FROM providers p
         WHERE p.identity_id IS NULL AND p.shut_out_project = ? ORDER BY p.id",
    )
    .bind(id)
    .fetch_all(&db)
    .await?;
    let hostile_credit: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM contributions c JOIN providers p ON p.id = c.provider_id
         WHERE c.project_id = ? AND p.identity_id IS NULL AND c.withdrawn_at IS NULL",
    )
    .bind(id)
    .fetch_one(&db)
    .await?;
    let honest_out: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM providers WHERE identity_id IS NOT NULL AND shut_out_project = ?")
            .bind(id)
            .fetch_one(&db)
            .await?;
    let samples: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(samples), 0) FROM contributions WHERE project_id = ?")
        .bind(id)
        .fetch_one(&db)
        .await?;
    db.close().await;
    Ok(Run {
        accuracy,
        seconds,
        samples_per_sec: samples as f64 / seconds,
        applied: prometheus(&metrics, "daig_contributions_total{outcome=\"applied\"}"),
        server_cpu,
        hostile_applied,
        hostile_credit,
        honest_out,
        failed_checks: prometheus(&metrics, "daig_checks_total{outcome=\"failed\"}"),
        passed_checks: prometheus(&metrics, "daig_checks_total{outcome=\"passed\"}"),
    })
}

async fn byzantine(args: &Args, bins: &Programs, hostile_bin: &Path, mnist: &Path) -> anyhow::Result<()> {
    let clean = run(bins, hostile_bin, mnist, args.epochs, 10, None, true).await?;
    println!("\n## byzantine: 10 providers, MNIST MLP, {} epochs", args.epochs);
    println!(
        "clean (10 honest): accuracy {:.4}, {:.1} s, {} failed checks",
        clean.accuracy, clean.seconds, clean.failed_checks
    );
    println!(
        "\n| attack | hostile | accuracy | vs clean | hostile shut out | applied before shut out (max) | failed checks | \
         hostile credit left | honest shut out |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for attack in &args.attacks {
        for &n in &args.hostile {
            let r = run(bins, hostile_bin, mnist, args.epochs, 10 - n, Some((attack, n)), true).await?;
            println!(
                "| {attack} | {n} ({}%) | {:.4} | {:+.2} pt | {} | {} | {} | {} | {} |",
                n * 10,
                r.accuracy,
                (r.accuracy - clean.accuracy) * 100.0,
                r.hostile_applied.len(),
                r.hostile_applied.iter().max().copied().unwrap_or(0),
                r.failed_checks,
                r.hostile_credit,
                r.honest_out,
            );
        }
    }
    Ok(())
}

async fn overhead(args: &Args, bins: &Programs, hostile_bin: &Path, mnist: &Path) -> anyhow::Result<()> {
    println!("\n## overhead: 4 honest providers, MNIST MLP, {} epochs, checks on (default rates) and off", args.epochs);
    println!(
        "\n| run | checks | seconds | samples/s | applied | checks passed | server CPU s | server CPU ms per contribution |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for repeat in 0..args.repeats {
        for checks in [true, false] {
            let r = run(bins, hostile_bin, mnist, args.epochs, 4, None, checks).await?;
            println!(
                "| {repeat} | {} | {:.2} | {:.0} | {} | {} | {:.2} | {:.3} |",
                if checks { "on" } else { "off" },
                r.seconds,
                r.samples_per_sec,
                r.applied,
                r.passed_checks,
                r.server_cpu,
                r.server_cpu * 1000.0 / r.applied.max(1.0)
            );
            if checks { on.push(r) } else { off.push(r) }
        }
    }
    let median = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let speed = median(&on, |r| r.samples_per_sec) / median(&off, |r| r.samples_per_sec);
    let cpu_on = median(&on, |r| r.server_cpu * 1000.0 / r.applied.max(1.0));
    let cpu_off = median(&off, |r| r.server_cpu * 1000.0 / r.applied.max(1.0));
    println!(
        "\nmedians: samples/s with checks on / off = {speed:.3}; server CPU per applied contribution {cpu_on:.3} ms on, \
         {cpu_off:.3} ms off ({:+.3} ms)",
        cpu_on - cpu_off
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !["all", "byzantine", "overhead"].contains(&args.which.as_str()) {
        bail!("unknown benchmark {}: all, byzantine or overhead", args.which);
    }
    let bins = Programs::release(args.bin_dir.as_deref())?;
    let hostile_bin = bins.server.with_file_name("e2e-hostile-provider");
    if !hostile_bin.is_file() {
        bail!("{} is missing: cargo build --release -p daig-tests --bin e2e-hostile-provider", hostile_bin.display());
    }
    let mnist = match &args.data {
        Some(dir) => dir.clone(),
        None => daig_tests::find_mnist().context("no shared/data/mnist-8k above the workspace: pass --data DIR")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if args.which == "all" || args.which == "byzantine" {
            byzantine(&args, &bins, &hostile_bin, &mnist).await?;
        }
        if args.which == "all" || args.which == "overhead" {
            overhead(&args, &bins, &hostile_bin, &mnist).await?;
        }
        Ok(())
    })
}
