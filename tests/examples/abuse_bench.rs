//! The abuse suite's figures, recorded in BENCHMARKS.md: the scenario of `tests/abuse.rs` (`daig_tests::abuse`:
//! four honest providers train the MNIST MLP while thousands of abusive clients hit the server) beside an
//! undisturbed run of the same server, project and providers, with the release binaries. Printed: `/api/health`
//! p50, p99 and max in each, the server's peak resident memory in each, and the training time in each and their
//! ratio. Each pair runs undisturbed first, then with the abuse, each on a fresh server.
//!
//! ```text
//! cargo build --release -p daig-server -p daig-provider
//! cargo run --release -p daig-tests --example abuse_bench -- [--repeats N]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use daig_tests::Programs;
use daig_tests::abuse::{self, Figures, Scenario};

#[derive(Debug, Parser)]
struct Args {
    /// The directory of the release binaries [default: target/release].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The MNIST directory [default: shared/data/mnist-8k, searched upward].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Pairs of runs (undisturbed, then abused).
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Leave out the model at the limits (a server without per-project budgets starts it, and its GiBs of
    /// parameters and optimiser state hide the other figures).
    #[arg(long)]
    without_model_at_the_limits: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn line(what: &str, f: &Figures) -> String {
    format!(
        "{what:<12} training {:>6.1} s | /api/health p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  ({} requests, {} failed) | \
         RSS {:>5.0} MiB at rest, {:>5.0} MiB peak",
        f.training.as_secs_f64(),
        ms(f.health.quantile(0.5)),
        ms(f.health.quantile(0.99)),
        ms(f.health.quantile(1.0)),
        f.health.samples.len(),
        f.health.failures,
        f.rss_start_mib,
        f.rss_peak_mib
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let programs = Programs::release(args.bin_dir.as_deref())?;
    let mnist = match &args.data {
        Some(dir) => dir.clone(),
        None => daig_tests::find_mnist().context("no shared/data/mnist-8k above the workspace: pass --data DIR")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        for repeat in 0..args.repeats {
            let dir = tempfile::tempdir()?;
            let calm = abuse::run(&programs, &mnist, dir.path(), Scenario::Undisturbed).await?;
            drop(calm.server);
            let dir = tempfile::tempdir()?;
            let scenario = if args.without_model_at_the_limits {
                Scenario::AbusedWithoutTheModelAtTheLimits
            } else {
                Scenario::Abused
            };
            let abused = abuse::run(&programs, &mnist, dir.path(), scenario).await?;
            let outcome = abused.abuse.as_ref().context("the abuse ran")?;
            println!("run {}:", repeat + 1);
            println!("{}", line("undisturbed", &calm.figures));
            println!("{}", line("abused", &abused.figures));
            println!(
                "training time abused / undisturbed: {:.2}",
                abused.figures.training.as_secs_f64() / calm.figures.training.as_secs_f64()
            );
            println!(
                "abuse: {} idle connections ({} closed for no Hello), {} non-readers dropped (write timeouts: {}), \
                 {} without a lease; uploads {:?}; {} event streams opened; bomb {} {}; long record {} {}; model at \
                 the limits {} {}",
                outcome.idle_connected,
                outcome.idle_timed_out,
                outcome.non_readers_dropped,
                outcome.write_timeout_drops,
                outcome.non_readers_without_lease,
                outcome.uploads,
                outcome.streams_opened,
                outcome.bomb.0,
                outcome.bomb.1,
                outcome.long_record.0,
                outcome.long_record.1,
                outcome.big_model.0,
                outcome.big_model.1,
            );
        }
        anyhow::Ok(())
    })
}
