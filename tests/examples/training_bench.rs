//! Benchmarks of distributed training, recorded in BENCHMARKS.md:
//!
//! - `speedup`: wall time until the MNIST MLP reaches the target validation accuracy (90%) with 1, 2, 4 and 8
//!   native providers: the `daig-server` and `daig-provider` release binaries as processes on this machine, a
//!   fresh data directory per run, the project finishing at the first epoch end past the target; then the same
//!   for a fixed budget of epochs without a target (throughput without the rounding up to an epoch's end).
//!   Updates, contributions applied, stale and refused (the server's `/metrics` counters), and the applied ones
//!   by staleness (the ledger).
//! - `efficiency`: the accuracy after a fixed sample budget (3 epochs, no target) with 4 providers, at max
//!   staleness 2 and 0, beside the centralised reference trainer (`Trainer` + `Optimizer`, in this process)
//!   trained from the same initial parameters on the same train split with the same global batch (K x batch
//!   size), optimiser and epochs, over several shuffles (their spread is the noise floor), all evaluated on the
//!   project's validation split as the server stored it (read from its database and object store).
//! - `aggregate`: GB/s of contribution deltas aggregated and applied by the server's arithmetic, for each
//!   aggregation rule (`--rules`): `Aggregator::push` per contribution, `Aggregator::finish` and one Adam
//!   `Optimizer::step` per K contributions, and the aggregation alone without the step, each beside
//!   `copy_from_slice` of the same bytes in the same run.
//! - `connections`: N simulated providers (this process, a plain WebSocket client of the wire protocol)
//!   connected to one `daig-server` process over loopback, answering heartbeats, while a subset sends
//!   contributions for its leases one at a time and times each Ack; the idle ones in the same project (every
//!   update's parameters go to all N) or in another; the connections still held at the end, Acks per second,
//!   the Ack latency percentiles, and the CPU and memory of both processes.
//!
//! Build the binaries first (`cargo xtask bench training` does both):
//!
//! ```text
//! cargo build --release -p daig-server -p daig-provider
//! cargo run --release -p daig-tests --example training_bench -- [all|speedup|efficiency|aggregate|connections]
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use daig_server::training::aggregate::{self, Aggregation, Aggregator};
use daig_shared::data::{ShardView, npy, permutation};
use daig_shared::model::{Limits, Model};
use daig_shared::params::{from_safetensors, init_params};
use daig_shared::train::{Batch, DropoutKey, Labels, Method, Optimizer, OptimizerConfig, Schedule, Trainer};
use daig_shared::wire::{
    AckOutcome, Backend, ContributionInfo, Frame, Heartbeat, Hello, LeaseId, ProjectId, Reassembler, SampleSelection,
    TransferId, TransferKind, transfer_frames,
};
use daig_tests::{Api, Programs, Provider, Server, cpu_secs, mnist_model, open_db, prometheus, rss_mib};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use ndarray::Array2;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Parser)]
struct Args {
    /// Which benchmarks: all, speedup, efficiency, aggregate or connections.
    #[arg(default_value = "all")]
    which: String,
    /// The directory holding the `daig-server` and `daig-provider` release binaries [default: the parent of
    /// this example's directory, i.e. `target/release`].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The MNIST directory (`images.npy`, `labels.npy`) [default: `shared/data/mnist-8k`, searched upward].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the temporary directories go (data directories, provider caches, logs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directories (server and provider logs) and print where they are.
    #[arg(long)]
    keep: bool,

    /// speedup: the provider counts, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8])]
    providers: Vec<usize>,
    /// speedup: the project's target validation accuracy.
    #[arg(long, default_value_t = 0.9)]
    target: f64,
    /// speedup: the epochs a run may take before it stops short of the target.
    #[arg(long, default_value_t = 10)]
    max_epochs: u32,
    /// speedup: the project's seed.
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// speedup: runs per provider count (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// speedup: the epochs of the fixed-budget runs (no target), which show throughput without the rounding of
    /// the time to the target up to an epoch's end.
    #[arg(long, default_value_t = 10)]
    budget_epochs: u32,

    /// efficiency: the seeds (of the split, the shuffles and the initial parameters), one run each. The
    /// validation split holds 800 samples, so one run's accuracy has a standard error near one point: the
    /// comparison needs many seeds.
    #[arg(long, value_delimiter = ',', default_values_t = [11u64, 12, 13, 14, 15, 16, 17, 18, 19, 20])]
    seeds: Vec<u64>,
    /// efficiency: the providers of the distributed run.
    #[arg(long, default_value_t = 4)]
    efficiency_providers: usize,
    /// efficiency: the sample budget, in epochs.
    #[arg(long, default_value_t = 3)]
    epochs: u32,
    /// efficiency: the projects' max staleness, one run each (0 is pure K-batch sync).
    #[arg(long, value_delimiter = ',', default_values_t = [2u32, 0])]
    staleness: Vec<u32>,
    /// efficiency: shuffles of the centralised run per seed (its spread is the noise floor of the comparison).
    #[arg(long, default_value_t = 10)]
    shuffles: usize,

    /// aggregate: parameter counts.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000usize, 1_000_000, 10_000_000])]
    params: Vec<usize>,
    /// aggregate: contributions per update (K).
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// aggregate: timed runs of each case (the median is reported), after one of warm-up.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// aggregate: the aggregation rules, each beside memcpy in the same run.
    #[arg(long, value_delimiter = ',', default_values_t = ["mean".to_owned(), "trimmed_mean".to_owned(), "median".to_owned(), "centered_clip".to_owned()])]
    rules: Vec<String>,

    /// connections: the numbers of simulated providers, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10_000])]
    connections: Vec<usize>,
    /// connections: how many of them send contributions (each one at a time, the next after its Ack).
    #[arg(long, default_value_t = 100)]
    active: usize,
    /// connections: where the idle providers work, one run each: `same` (the active project: every update's
    /// parameters go to all N) or `other` (a second running project without contributions).
    #[arg(long, value_delimiter = ',', default_values_t = ["same".to_owned(), "other".to_owned()])]
    idle_in: Vec<String>,
    /// connections: seconds of measurement once every provider is welcomed (after 2 s of warm-up).
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    /// connections: the server's heartbeat interval (it drops a provider silent for three).
    #[arg(long, default_value_t = 5000)]
    heartbeat_interval_ms: u64,
    /// connections: WebSocket handshakes (up to the Welcome) in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// connections: worker threads of the load generator's runtime [default: one per core].
    #[arg(long)]
    client_threads: Option<usize>,
    /// connections: samples of the synthetic dataset (4 features, 3 classes); enough that no epoch ends
    /// during a run, since each provider holds up to two leases of one sample.
    #[arg(long, default_value_t = 400_000)]
    samples: usize,
}

const WHICH: [&str; 5] = ["all", "speedup", "efficiency", "aggregate", "connections"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !WHICH.contains(&args.which.as_str()) {
        bail!("unknown benchmark {:?}: use one of {}", args.which, WHICH.join(", "));
    }
    if let Some(other) = args.idle_in.iter().find(|i| *i != "same" && *i != "other") {
        bail!("--idle-in takes `same` and `other`, not {other:?}");
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| text.lines().find(|l| l.starts_with("model name")).map(str::to_owned))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    println!("machine: {cores} cores ({cpu}); release build: {}", !cfg!(debug_assertions));
    let run = |name: &str| args.which == "all" || args.which == name;
    if run("aggregate") {
        aggregate_bench(&args)?;
    }
    if run("speedup") || run("efficiency") || run("connections") {
        daig_tests::install_tls();
        let bins = Programs::release(args.bin_dir.as_deref())?;
        let threads = args.client_threads.unwrap_or(cores);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
        runtime.block_on(async {
            if run("speedup") {
                speedup_bench(&args, &bins).await?;
            }
            if run("efficiency") {
                efficiency_bench(&args, &bins).await?;
            }
            if run("connections") {
                println!("\nconnections: load generator runtime with {threads} worker threads");
                for &n in &args.connections {
                    for idle in &args.idle_in {
                        connections_bench(&args, &bins, n, idle == "same").await?;
                    }
                }
            }
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Processes and the API.

/// A temporary directory, kept with `--keep`.
fn temp_dir(args: &Args, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).disable_cleanup(args.keep);
    let dir = match &args.dir {
        Some(dir) => builder.tempdir_in(dir)?,
        None => builder.tempdir()?,
    };
    if args.keep {
        println!("  (logs and data kept in {})", dir.path().display());
    }
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------------------------
// MNIST: speedup and statistical efficiency.

fn mnist_settings(seed: u64, epochs: u32, target: Option<f64>) -> Value {
    json!({"batch_size": 32, "k": 4, "epochs": epochs, "samples_per_shard": 1000, "seed": seed, "max_staleness": 2,
           "optimizer": {"method": {"type": "adam"}, "learning_rate": 0.003}, "target_accuracy": target})
}

fn mnist_dir(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.data {
        return Ok(dir.clone());
    }
    daig_tests::find_mnist().context("no shared/data/mnist-8k above the workspace: pass --data DIR")
}

/// What one training run gave.
struct TrainRun {
    /// From `POST start` to the first poll that saw a metrics row at or above the target.
    to_target: Option<(Duration, i64, i64)>,
    /// From `POST start` to the project finished.
    to_finish: Duration,
    view: Value,
    credits: Value,
    applied: f64,
    stale: f64,
    refused: f64,
    updates: f64,
    exits: usize,
    /// Applied contributions by their staleness (versions behind when applied), from the ledger.
    staleness: Vec<(i64, i64)>,
}

/// Starts project `id` and `providers` provider processes, and polls until it finishes.
async fn train(
    bins: &Programs,
    server: &Server,
    api: &Api,
    id: i64,
    providers: usize,
    dir: &Path,
    target: f64,
) -> anyhow::Result<TrainRun> {
    let limit = Duration::from_secs(1200);
    let start = Instant::now();
    api.post(&format!("/api/projects/{id}/start"), &json!({})).await?;
    let mut children: Vec<Provider> = (0..providers)
        .map(|i| Provider::start(bins, server, id, dir, &format!("provider{i}")))
        .collect::<Result<_, _>>()?;
    let mut to_target = None;
    let view = loop {
        let view = api.get(&format!("/api/projects/{id}")).await?;
        if to_target.is_none()
            && let Some(row) = view["metrics"]
                .as_array()
                .and_then(|rows| rows.iter().find(|m| m["val_accuracy"].as_f64().is_some_and(|a| a >= target)))
        {
            let version = row["version"].as_i64().unwrap_or(0);
            let samples = row["samples"].as_i64().unwrap_or(0);
            to_target = Some((start.elapsed(), version, samples));
        }
        if view["state"] == "finished" {
            break view;
        }
        if view["state"] != "running" || start.elapsed() > limit {
            bail!("project {id} is {} after {:?}: {view}", view["state"], start.elapsed());
        }
        // Runs take well under a second here: poll often enough that the period does not round the times.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let to_finish = start.elapsed();
    let exits = children.iter_mut().filter_map(|p| p.wait(Duration::from_secs(30))).filter(|s| s.success()).count();
    let credits = api.get(&format!("/api/projects/{id}/credits")).await?;
    let metrics = server.metrics().await?;
    let outcome = |o: &str| prometheus(&metrics, &format!("daig_contributions_total{{outcome=\"{o}\"}}"));
    let db = open_db(&server.data_dir).await?;
    let staleness = sqlx::query_as(
        "SELECT version - 1 - base_version AS s, COUNT(*) FROM contributions WHERE project_id = ? GROUP BY s ORDER BY s",
    )
    .bind(id)
    .fetch_all(&db)
    .await?;
    db.close().await;
    Ok(TrainRun {
        staleness,
        to_target,
        to_finish,
        applied: outcome("applied"),
        stale: outcome("stale"),
        refused: outcome("refused"),
        updates: prometheus(&metrics, "daig_updates_total"),
        view,
        credits,
        exits,
    })
}

fn last_accuracy(view: &Value) -> Option<f64> {
    view["metrics"].as_array()?.iter().rev().find_map(|m| m["val_accuracy"].as_f64())
}

/// The MNIST project of one run.
struct MnistProject {
    seed: u64,
    epochs: u32,
    /// The project's `target_accuracy`.
    target: Option<f64>,
    max_staleness: u32,
}

/// One MNIST project trained to completion by `n` providers on a fresh server.
async fn mnist_run(
    args: &Args,
    bins: &Programs,
    n: usize,
    project: MnistProject,
    name: &str,
) -> anyhow::Result<(TrainRun, Server, Api, tempfile::TempDir)> {
    let MnistProject { seed, epochs, target, max_staleness } = project;
    let mnist = mnist_dir(args)?;
    let features = std::fs::read(mnist.join("images.npy"))?;
    let labels = std::fs::read(mnist.join("labels.npy"))?;
    let dir = temp_dir(args, &format!("daig-{name}-"))?;
    // Every provider runs on this machine, from its one address.
    let per_address = ["--max-provider-connections-per-address".to_owned(), "1000".to_owned()];
    let server = Server::start(bins, dir.path(), &per_address).await?;
    let api = Api::sign_up(&server, "bench").await?;
    let mut settings = mnist_settings(seed, epochs, target);
    settings["max_staleness"] = json!(max_staleness);
    let id = api.project(&mnist_model(), &settings, features, labels).await?;
    let run = train(bins, &server, &api, id, n, dir.path(), args.target).await?;
    Ok((run, server, api, dir))
}

async fn speedup_bench(args: &Args, bins: &Programs) -> anyhow::Result<()> {
    println!(
        "\nspeedup: MNIST MLP 784-64(relu)-10 on {}, batch 32, K = 4, max staleness 2, Adam 0.003, seed {}; server \
         and providers (--backend cpu) as release processes, a fresh data directory per run, {} runs per row \
         (median); time from `POST start` (providers started right after it) to the project finished",
        mnist_dir(args)?.display(),
        args.seed,
        args.repeats
    );
    let mut tables = Vec::new();
    for (what, epochs, target) in [
        (
            format!("to the target {} (at most {} epochs)", args.target, args.max_epochs),
            args.max_epochs,
            Some(args.target),
        ),
        (format!("a fixed budget of {} epochs, no target", args.budget_epochs), args.budget_epochs, None),
    ] {
        println!("  {what}:");
        let mut rows = vec![
            "| providers | wall time s (median) | runs s | speedup | epochs | updates | applied / stale / refused | \
             samples/s | final accuracy |"
                .to_owned(),
            "|---|---|---|---|---|---|---|---|---|".to_owned(),
        ];
        let mut base = None;
        for &n in &args.providers {
            let mut runs = Vec::new();
            for r in 0..args.repeats {
                let name = format!("speedup-{n}-{r}");
                let (run, server, _api, _dir) =
                    mnist_run(args, bins, n, MnistProject { seed: args.seed, epochs, target, max_staleness: 2 }, &name)
                        .await?;
                drop(server);
                let per_provider: Vec<i64> = run.credits["providers"]
                    .as_array()
                    .map(|p| p.iter().filter_map(|l| l["contributions"].as_i64()).collect())
                    .unwrap_or_default();
                let samples = run.credits["samples"].as_f64().unwrap_or(0.0);
                println!(
                    "    {n} provider(s), run {r}: finished after {:.2} s at epoch {}, accuracy {:.4}; first row >= {} \
                     {}; {} updates; contributions applied {} / stale {} / refused {}, applied by staleness {:?}, per \
                     provider {per_provider:?}; {:.0} samples/s; {}/{n} providers exited 0",
                    run.to_finish.as_secs_f64(),
                    run.view["epoch"],
                    last_accuracy(&run.view).unwrap_or(f64::NAN),
                    args.target,
                    match run.to_target {
                        Some((t, v, s)) => format!("after {:.2} s (version {v}, {s} samples)", t.as_secs_f64()),
                        None => "never".into(),
                    },
                    run.updates,
                    run.applied,
                    run.stale,
                    run.refused,
                    run.staleness,
                    samples / run.to_finish.as_secs_f64(),
                    run.exits,
                );
                runs.push((run.to_finish.as_secs_f64(), run, samples));
            }
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let all: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.0)).collect();
            let (secs, run, samples) = &runs[runs.len() / 2];
            let base = *base.get_or_insert(*secs);
            rows.push(format!(
                "| {n} | {secs:.2} | {} | {:.2} | {} | {} | {} / {} / {} | {:.0} | {:.4} |",
                all.join(", "),
                base / secs,
                run.view["epoch"],
                run.updates,
                run.applied,
                run.stale,
                run.refused,
                samples / secs,
                last_accuracy(&run.view).unwrap_or(f64::NAN),
            ));
        }
        tables.push((what, rows));
    }
    for (what, rows) in tables {
        println!("\n  {what} (the median run's figures):");
        for row in rows {
            println!("  {row}");
        }
    }
    Ok(())
}

/// A split as the server stored it, decoded as the server decodes it.
struct Split {
    x: Array2<f32>,
    classes: Vec<u32>,
}

/// The server's SQLite database, opened beside it (WAL lets both read).
/// Reads project `id`'s train and validation shards from the server's database and local object store.
async fn read_splits(data_dir: &Path, id: i64) -> anyhow::Result<(Split, Split)> {
    let db = open_db(data_dir).await?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT role, object_key FROM shards WHERE project_id = ? ORDER BY role, number")
            .bind(id)
            .fetch_all(&db)
            .await?;
    db.close().await;
    let mut train = (Vec::new(), Vec::new());
    let mut validation = (Vec::new(), Vec::new());
    let mut width = 0;
    for (role, key) in rows {
        let bytes = std::fs::read(data_dir.join("objects").join(&key)).with_context(|| format!("shard {key}"))?;
        let view = ShardView::decode(&bytes)?;
        let normalization = daig_server::training::data::resolve(None, view.header().feature_dtype);
        width = view.sample_elements();
        let (x, classes) = if role == "train" { &mut train } else { &mut validation };
        let mut sample = vec![0f32; width];
        for i in 0..view.len() {
            view.sample_f32(i, &normalization, &mut sample)?;
            x.extend_from_slice(&sample);
            classes.push(view.label(i)?.class().context("a class label")?);
        }
    }
    let split = |(x, classes): (Vec<f32>, Vec<u32>)| -> anyhow::Result<Split> {
        Ok(Split { x: Array2::from_shape_vec((classes.len(), width), x)?, classes })
    };
    Ok((split(train)?, split(validation)?))
}

fn accuracy(model: &Model, params: &[f32], split: &Split) -> anyhow::Result<f64> {
    let mut trainer = Trainer::new(model);
    let evaluation = trainer.evaluate(params, &Batch { x: split.x.view(), y: Labels::Classes(&split.classes) })?;
    evaluation.accuracy.context("no accuracy")
}

/// The centralised reference: synchronous minibatch training of `model` from `init_params(model, seed)` on the
/// whole train split, reshuffled each epoch (from `shuffle`), with batches of `batch` samples and `optimizer`.
fn centralised(
    model: &Model,
    seed: u64,
    shuffle: u64,
    train: &Split,
    batch: usize,
    epochs: u32,
    optimizer: OptimizerConfig,
) -> anyhow::Result<Vec<f32>> {
    let mut params = init_params(model, seed);
    let mut optimizer = Optimizer::new(optimizer, params.len())?;
    let mut trainer = Trainer::new(model);
    let data = Batch { x: train.x.view(), y: Labels::Classes(&train.classes) };
    for epoch in 0..u64::from(epochs) {
        let order = permutation(train.classes.len(), shuffle ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))?;
        for (step, indices) in order.chunks(batch).enumerate() {
            trainer.load_params(&params)?;
            let (grad, _) = trainer.gradient(&data, indices, DropoutKey { seed, step: step as u64 })?;
            optimizer.step(&mut params, grad)?;
        }
    }
    Ok(params)
}

async fn efficiency_bench(args: &Args, bins: &Programs) -> anyhow::Result<()> {
    let model = Model::from_json(&mnist_model().to_string(), &Limits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (k, batch_size) = (4usize, 32usize);
    println!(
        "\nstatistical efficiency: MNIST MLP, {} epochs, {} providers (K = {k}, batch {batch_size}, Adam 0.003) with \
         max staleness {:?}, vs the centralised reference trainer (global batch {}, Adam 0.003, {} shuffles of the \
         same train split), the same initial parameters; all evaluated on the project's validation split",
        args.epochs,
        args.efficiency_providers,
        args.staleness,
        k * batch_size,
        args.shuffles,
    );
    let config = OptimizerConfig {
        method: Method::adam(),
        learning_rate: 0.003,
        schedule: Schedule::Constant,
        weight_decay: 0.0,
        clip_norm: None,
    };
    let mut rows = vec![
        "| seed | max staleness | distributed | updates | applied / stale / refused | centralised (mean of shuffles) | \
         centralised range | centralised - distributed (points) |"
            .to_owned(),
        "|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    let mut gaps: std::collections::BTreeMap<u32, Vec<f64>> = std::collections::BTreeMap::new();
    for &seed in &args.seeds {
        for &staleness in &args.staleness {
            let name = format!("efficiency-{seed}-{staleness}");
            let project = MnistProject { seed, epochs: args.epochs, target: None, max_staleness: staleness };
            let (run, server, api, _dir) = mnist_run(args, bins, args.efficiency_providers, project, &name).await?;
            let id = run.view["id"].as_i64().context("the project's id")?;
            let file = api.get_bytes(&format!("/api/projects/{id}/model")).await?;
            let distributed = from_safetensors(&model.params, &file)?;
            let (train_split, validation) = read_splits(&server.data_dir, id).await?;
            drop(server);
            // The first shuffle is the seed's own; the others show how much the order alone moves the result.
            let mut reference = Vec::new();
            for shuffle in 0..args.shuffles.max(1) as u64 {
                let params = centralised(
                    &model,
                    seed,
                    seed + shuffle * 1000,
                    &train_split,
                    k * batch_size,
                    args.epochs,
                    config.clone(),
                )?;
                reference.push(accuracy(&model, &params, &validation)?);
            }
            let a_distributed = accuracy(&model, &distributed, &validation)?;
            let mean = reference.iter().sum::<f64>() / reference.len() as f64;
            let (low, high) = reference.iter().fold((f64::MAX, f64::MIN), |(l, h), &a| (l.min(a), h.max(a)));
            let gap = (mean - a_distributed) * 100.0;
            println!(
                "  seed {seed}, max staleness {staleness}: distributed {a_distributed:.4} (the server's last row {:.4}; {} \
                 updates in {:.2} s; contributions applied {} / stale {} / refused {}, applied by staleness {:?}); \
                 centralised {reference:.4?} ({} steps each); gap {gap:+.2} points ({} train, {} validation samples)",
                last_accuracy(&run.view).unwrap_or(f64::NAN),
                run.view["version"],
                run.to_finish.as_secs_f64(),
                run.applied,
                run.stale,
                run.refused,
                run.staleness,
                u64::from(args.epochs) * train_split.classes.len().div_ceil(k * batch_size) as u64,
                train_split.classes.len(),
                validation.classes.len(),
            );
            gaps.entry(staleness).or_default().push(gap);
            rows.push(format!(
                "| {seed} | {staleness} | {a_distributed:.4} | {} | {} / {} / {} | {mean:.4} | {low:.4} to {high:.4} | {gap:+.2} |",
                run.view["version"], run.applied, run.stale, run.refused,
            ));
        }
    }
    println!();
    for row in rows {
        println!("  {row}");
    }
    for (staleness, mut gaps) in gaps {
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        println!(
            "  max staleness {staleness}: centralised - distributed over {} seeds: mean {mean:+.2} points, median \
             {:+.2} (goal: within 0.5)",
            gaps.len(),
            median(&mut gaps)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Aggregation throughput.

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Times `reps` calls of `f`, in seconds.
fn timed(reps: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64()
}

/// Repetitions of `f` that take about `secs` (at least 3), from one timed call.
fn reps_for(secs: f64, mut f: impl FnMut()) -> usize {
    let once = timed(1, &mut f).max(1e-9);
    ((secs / once) as usize).clamp(3, 100_000)
}

fn aggregate_bench(args: &Args) -> anyhow::Result<()> {
    let k = args.k.max(1);
    let rules: Vec<Aggregation> = args
        .rules
        .iter()
        .map(|r| serde_json::from_value(Value::from(r.as_str())).with_context(|| format!("the rule {r:?}")))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "\naggregation: one update = K = {k} x Aggregator::push of a delta (norm bound at its default factor) + \
         Aggregator::finish + one Adam Optimizer::step, as the training core runs it; bytes = K x params x 4 (the \
         deltas read); peer: K x copy_from_slice of the same deltas, in the same run; each case about 0.3 s per \
         run, median of {} runs after one of warm-up",
        args.runs
    );
    println!(
        "  | rule | params | memcpy GB/s | update GB/s | update / memcpy | ms per update | aggregate GB/s | \
         aggregate / memcpy | aggregate ms |"
    );
    for &n in &args.params {
        let deltas: Vec<Vec<f32>> =
            (0..k).map(|c| (0..n).map(|i| ((i * 7 + c * 13) % 101) as f32 * 1e-4 - 5e-3).collect()).collect();
        let mut copy = vec![0f32; n];
        let config = OptimizerConfig {
            method: Method::adam(),
            learning_rate: 1e-3,
            schedule: Schedule::Constant,
            weight_decay: 0.0,
            clip_norm: None,
        };
        let weight = aggregate::weight(32, 0);
        let bytes = (k * n * 4) as f64;
        let mut memcpy_once = || {
            for delta in &deltas {
                copy.copy_from_slice(std::hint::black_box(delta));
                std::hint::black_box(&mut copy);
            }
        };
        let memcpy_reps = reps_for(0.3, &mut memcpy_once);
        for &rule in &rules {
            let mut params: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.01).collect();
            let mut optimizer = Optimizer::new(config.clone(), n)?;
            let mut aggregator = Aggregator::new(rule, n, Some(aggregate::DEFAULT_NORM_BOUND_FACTOR));
            let mut update_once = |step: bool| {
                for delta in &deltas {
                    aggregator.push(std::hint::black_box(delta), weight, 1);
                }
                let gradient = aggregator.finish();
                if step {
                    optimizer.step(&mut params, gradient).expect("a finite gradient");
                    std::hint::black_box(&mut params);
                } else {
                    std::hint::black_box(gradient);
                }
            };
            let update_reps = reps_for(0.3, || update_once(true));
            let aggregate_reps = reps_for(0.3, || update_once(false));
            let (mut memcpy, mut update, mut alone) = (vec![], vec![], vec![]);
            for run in 0..=args.runs {
                let memcpy_secs = timed(memcpy_reps, &mut memcpy_once);
                let update_secs = timed(update_reps, || update_once(true));
                let alone_secs = timed(aggregate_reps, || update_once(false));
                if run > 0 {
                    memcpy.push(bytes * memcpy_reps as f64 / memcpy_secs / 1e9);
                    update.push(bytes * update_reps as f64 / update_secs / 1e9);
                    alone.push(bytes * aggregate_reps as f64 / alone_secs / 1e9);
                }
            }
            assert_eq!(aggregator.bounded(), 0, "no delta of the benchmark is beyond the norm bound");
            let (memcpy_gbs, update_gbs, alone_gbs) = (median(&mut memcpy), median(&mut update), median(&mut alone));
            let name = serde_json::to_value(rule)?;
            println!(
                "  | {} | {n} | {memcpy_gbs:.2} | {update_gbs:.3} | {:.3} | {:.3} | {alone_gbs:.3} | {:.3} | {:.3} |",
                name.as_str().unwrap_or("?"),
                update_gbs / memcpy_gbs,
                bytes / update_gbs / 1e6,
                alone_gbs / memcpy_gbs,
                bytes / alone_gbs / 1e6,
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Connections.

/// The small model of the server's tests: 4 inputs, 8 hidden units, 3 classes (67 parameters).
fn small_model() -> Value {
    json!({"input_shape": [4], "layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 3}],
           "loss": "cross_entropy"})
}

/// What the simulated providers saw, shared by their tasks.
#[derive(Default)]
struct Counters {
    welcomed: AtomicUsize,
    /// Connections ended: by a Goodbye, a close or an error.
    ended: AtomicUsize,
    connect_errors: AtomicUsize,
    heartbeats: AtomicU64,
    params: AtomicU64,
    leases: AtomicU64,
    cancels: AtomicU64,
    applied: AtomicU64,
    stale: AtomicU64,
    refused: AtomicU64,
    /// Why connections ended, counted (a Goodbye's reason, or the error).
    endings: Mutex<HashMap<String, usize>>,
}

impl Counters {
    fn ended(&self, why: String) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        *self.endings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(why).or_default() += 1;
    }
}

/// The phases the driver moves the providers through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Active providers send contributions; latencies are not recorded yet.
    WarmUp,
    Measuring,
    /// Active providers stop sending; everyone keeps answering heartbeats.
    Holding,
    Closing,
}

/// One simulated provider: Hello, then answers heartbeats; an active one sends a zero contribution for its
/// oldest lease whenever none is in flight, on the newest parameters it has, and times the Ack.
async fn simulated_provider(
    url: String,
    project: i64,
    active: bool,
    counters: Arc<Counters>,
    mut phase: tokio::sync::watch::Receiver<Phase>,
    connect: Arc<tokio::sync::Semaphore>,
) -> Option<Histogram<u64>> {
    // Only active providers time Acks (a histogram is a few hundred KiB).
    let mut latencies_us = active.then(|| Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"));
    let permit = connect.acquire_owned().await.expect("the semaphore stays open");
    // A small read buffer: 10,000 connections of the default 128 KiB would cost the generator 1.3 GB.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let mut ws = None;
    for attempt in 0..5 {
        match tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true).await {
            Ok((socket, _)) => {
                ws = Some(socket);
                break;
            }
            Err(e) => {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                if attempt == 4 {
                    counters.ended(format!("connect: {e}"));
                    return latencies_us;
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    let mut ws = ws.expect("connected or returned");
    let hello = Hello::new(Backend::Cpu, "simulated provider", Some(ProjectId(project as u64)));
    if let Err(e) = ws.send(Message::Binary(Frame::Hello(hello).encode().into())).await {
        counters.ended(format!("send Hello: {e}"));
        return latencies_us;
    }
    let mut permit = Some(permit);
    let mut reassembler = Reassembler::new(1 << 20);
    let mut param_count = 0usize;
    let mut version: Option<u64> = None;
    let mut leases: VecDeque<(LeaseId, u32)> = VecDeque::new();
    let mut in_flight: Option<(LeaseId, Instant)> = None;
    let mut next_transfer = 0u32;
    loop {
        let current = *phase.borrow_and_update();
        if current == Phase::Closing {
            let _ = ws.close(None).await;
            return latencies_us;
        }
        let sending = active && (current == Phase::WarmUp || current == Phase::Measuring);
        if sending
            && in_flight.is_none()
            && let Some(base_version) = version
            && let Some((lease_id, samples)) = leases.pop_front()
        {
            next_transfer = next_transfer.wrapping_add(1);
            let info = ContributionInfo { lease_id, base_version, sample_count: samples, mean_loss: 1.0 };
            let zeros = vec![0u8; param_count * 4];
            let frames: Vec<Message> =
                transfer_frames(TransferId(next_transfer), TransferKind::Contribution(info), &zeros)
                    .map(|f| Message::Binary(f.encode().into()))
                    .collect();
            in_flight = Some((lease_id, Instant::now()));
            let mut sent = Ok(());
            for frame in frames {
                sent = ws.feed(frame).await;
                if sent.is_err() {
                    break;
                }
            }
            if let Err(e) = sent.and(ws.flush().await) {
                counters.ended(format!("send contribution: {e}"));
                return latencies_us;
            }
        }
        let message = tokio::select! {
            message = ws.next() => message,
            _ = phase.changed() => continue,
        };
        let bytes = match message {
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(_))) | None => {
                counters.ended("closed by the server".into());
                return latencies_us;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                counters.ended(format!("receive: {e}"));
                return latencies_us;
            }
        };
        let frame = match Frame::decode(&bytes) {
            Ok(frame) => frame,
            Err(e) => {
                counters.ended(format!("undecodable frame: {e}"));
                return latencies_us;
            }
        };
        match frame {
            Frame::Welcome(welcome) => {
                param_count = welcome.training.param_count as usize;
                counters.welcomed.fetch_add(1, Ordering::Relaxed);
                drop(permit.take());
            }
            Frame::Heartbeat(_) => {
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                let beat = Message::Binary(Frame::Heartbeat(Heartbeat::default()).encode().into());
                if let Err(e) = ws.send(beat).await {
                    counters.ended(format!("send Heartbeat: {e}"));
                    return latencies_us;
                }
            }
            Frame::Lease(lease) => {
                counters.leases.fetch_add(1, Ordering::Relaxed);
                let samples = match &lease.samples {
                    SampleSelection::Shards(parts) => parts.iter().map(|p| p.indices.len() as u32).sum(),
                    SampleSelection::Indices(indices) => indices.len() as u32,
                };
                leases.push_back((lease.lease_id, samples));
            }
            Frame::CancelLease(cancel) => {
                counters.cancels.fetch_add(1, Ordering::Relaxed);
                leases.retain(|(id, _)| *id != cancel.lease_id);
            }
            Frame::Ack(ack) => {
                match ack.outcome {
                    AckOutcome::Applied { .. } => counters.applied.fetch_add(1, Ordering::Relaxed),
                    AckOutcome::Stale { .. } => counters.stale.fetch_add(1, Ordering::Relaxed),
                    AckOutcome::Refused { .. } => counters.refused.fetch_add(1, Ordering::Relaxed),
                };
                if let Some((lease, sent)) = in_flight
                    && lease == ack.lease_id
                {
                    in_flight = None;
                    if *phase.borrow() == Phase::Measuring
                        && let Some(histogram) = &mut latencies_us
                    {
                        histogram.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                }
            }
            frame @ (Frame::TransferStart(_) | Frame::Chunk(_)) => match reassembler.feed(&frame) {
                Ok(Some(transfer)) => {
                    if let TransferKind::Params { version: v } = transfer.kind {
                        counters.params.fetch_add(1, Ordering::Relaxed);
                        version = Some(v);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    counters.ended(format!("transfer: {e}"));
                    return latencies_us;
                }
            },
            Frame::Goodbye(goodbye) => {
                counters.ended(format!("Goodbye({:?}): {}", goodbye.reason, goodbye.detail));
                return latencies_us;
            }
            Frame::Hello(_) | Frame::ShardRequest(_) => {}
        }
    }
}

/// One run of the connections benchmark: `n` providers, the idle ones in the active project or in another.
async fn connections_bench(args: &Args, bins: &Programs, n: usize, same_project: bool) -> anyhow::Result<()> {
    let dir = temp_dir(args, &format!("daig-connections-{n}-"))?;
    let server = Server::start(
        bins,
        dir.path(),
        &[
            "--max-provider-connections".into(),
            (n + 1000).to_string(),
            // Every simulated provider connects from this machine's one address.
            "--max-provider-connections-per-address".into(),
            (n + 1000).to_string(),
            "--heartbeat-interval-ms".into(),
            args.heartbeat_interval_ms.to_string(),
        ],
    )
    .await?;
    let rss_idle = server.rss_mib();
    let api = Api::sign_up(&server, "bench").await?;
    let m = args.samples;
    let features: Vec<f32> = (0..m * 4).map(|i| (i % 1000) as f32 / 1000.0).collect();
    let labels: Vec<i64> = (0..m as i64).map(|i| i % 3).collect();
    let settings = json!({"batch_size": 1, "k": 1, "epochs": 10000, "samples_per_shard": 65536, "seed": 1,
                          "max_providers": 100_000, "max_staleness": 100, "checkpoint_every": 100_000});
    let id =
        api.project(&small_model(), &settings, npy::to_vec(&[m, 4], &features)?, npy::to_vec(&[m], &labels)?).await?;
    api.post(&format!("/api/projects/{id}/start"), &json!({})).await?;
    // The idle providers' project: the active one, or a second running project that receives no contributions.
    let idle_id = if same_project {
        id
    } else {
        let other = api
            .project(&small_model(), &settings, npy::to_vec(&[m, 4], &features)?, npy::to_vec(&[m], &labels)?)
            .await?;
        api.post(&format!("/api/projects/{other}/start"), &json!({})).await?;
        other
    };
    let active = args.active.min(n);
    println!(
        "\n  N = {n} simulated providers, {active} active; the idle ones {}; heartbeat every {} ms, model 4-8(relu)-3 \
         (67 parameters), batch 1, K = 1 (every contribution is an update), {m} samples",
        if same_project {
            "in the same project (each update's parameters go to all N)"
        } else {
            "in another project (each update's parameters go to the active ones only)"
        },
        args.heartbeat_interval_ms
    );

    let counters = Arc::new(Counters::default());
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Connecting);
    let connect = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let url = format!("ws://{}/ws/provider", server.addr);
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(simulated_provider(
                url.clone(),
                if i < active { id } else { idle_id },
                i < active,
                Arc::clone(&counters),
                phase_rx.clone(),
                Arc::clone(&connect),
            ))
        })
        .collect();
    // Connect everyone (or give up after a long while).
    let ramp_limit = Duration::from_secs(60 + n as u64 / 20);
    loop {
        let welcomed = counters.welcomed.load(Ordering::Relaxed);
        let ended = counters.ended.load(Ordering::Relaxed);
        if welcomed + ended >= n || started.elapsed() > ramp_limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp = started.elapsed().as_secs_f64();
    let welcomed = counters.welcomed.load(Ordering::Relaxed);
    println!(
        "  connected: {welcomed} of {n} welcomed in {ramp:.1} s ({:.0} per second), {} connect errors retried or \
         failed, server RSS {:.0} MiB (idle before: {:.0} MiB)",
        welcomed as f64 / ramp,
        counters.connect_errors.load(Ordering::Relaxed),
        server.rss_mib().unwrap_or(f64::NAN),
        rss_idle.unwrap_or(f64::NAN),
    );

    let _ = phase_tx.send(Phase::WarmUp);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (counters.applied.load(Ordering::Relaxed), counters.stale.load(Ordering::Relaxed));
    let refused_before = counters.refused.load(Ordering::Relaxed);
    let heartbeats_before = counters.heartbeats.load(Ordering::Relaxed);
    let params_before = counters.params.load(Ordering::Relaxed);
    let cpu_before = (server.cpu_secs(), cpu_secs("/proc/self/stat"));
    let _ = phase_tx.send(Phase::Measuring);
    let measuring = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let _ = phase_tx.send(Phase::Holding);
    let secs = measuring.elapsed().as_secs_f64();
    let cpu_after = (server.cpu_secs(), cpu_secs("/proc/self/stat"));
    let cpu_server = cpu_after.0.zip(cpu_before.0).map_or(f64::NAN, |(a, b)| (a - b) / secs);
    let cpu_client = cpu_after.1.zip(cpu_before.1).map_or(f64::NAN, |(a, b)| (a - b) / secs);
    let applied = counters.applied.load(Ordering::Relaxed) - before.0;
    let stale = counters.stale.load(Ordering::Relaxed) - before.1;
    let refused = counters.refused.load(Ordering::Relaxed) - refused_before;
    let heartbeats = counters.heartbeats.load(Ordering::Relaxed) - heartbeats_before;
    let params = counters.params.load(Ordering::Relaxed) - params_before;
    // In-flight Acks arrive; then the connections stay open one more heartbeat round, idle.
    tokio::time::sleep(Duration::from_millis(args.heartbeat_interval_ms.max(1000))).await;
    let metrics = server.metrics().await?;
    let held_server = prometheus(&metrics, "daig_provider_connections");
    let joined_server = prometheus(&metrics, "daig_providers_connected");
    let ended = counters.ended.load(Ordering::Relaxed);
    let rss = server.rss_mib().unwrap_or(f64::NAN);
    let client_rss = rss_mib("/proc/self/status").unwrap_or(f64::NAN);
    let _ = phase_tx.send(Phase::Closing);
    let mut latencies_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for task in tasks {
        if let Some(histogram) = task.await? {
            latencies_us.add(histogram)?;
        }
    }
    let q = |p: f64| latencies_us.value_at_quantile(p) as f64 / 1000.0;
    let acks = applied + stale + refused;
    println!(
        "  held: {} of {n} connections open at the end on the generator's side; the server's gauges: \
         daig_provider_connections {held_server}, daig_providers_connected {joined_server}; server RSS {rss:.0} MiB \
         ({:.1} KiB per connection over idle), generator RSS {client_rss:.0} MiB",
        n - ended,
        (rss - rss_idle.unwrap_or(f64::NAN)) * 1024.0 / n as f64,
    );
    println!(
        "  over {secs:.1} s: {:.0} Acks/s ({applied} applied, {stale} stale, {refused} refused); Ack latency p50 \
         {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} timed); {:.0} heartbeats/s and {:.0} parameter \
         transfers/s received by the generator; CPU: server {cpu_server:.2} cores, generator {cpu_client:.2} cores",
        acks as f64 / secs,
        q(0.5),
        q(0.9),
        q(0.99),
        latencies_us.max() as f64 / 1000.0,
        latencies_us.len(),
        heartbeats as f64 / secs,
        params as f64 / secs,
    );
    let endings = counters.endings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if !endings.is_empty() {
        let mut endings: Vec<(String, usize)> = endings.into_iter().collect();
        endings.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        println!("  connections that ended before the close: {endings:?}");
    }
    Ok(())
}
