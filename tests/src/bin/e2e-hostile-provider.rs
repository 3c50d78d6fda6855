//! A hostile provider for the end-to-end tests: the native provider's own protocol code (`daig_provider::native`),
//! with a [`Tamper`] that changes what it computes or sends. It shows what a visitor who rewrites the provider can
//! do, and the tests show that the server catches it.
//!
//! `e2e-hostile-provider --server URL --project ID --attack ATTACK --dir DIR [--connections N]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, ValueEnum};
use daig_provider::gpu::trainer::StepResult;
use daig_provider::native::{BackendChoice, Options, Tamper, run};
use daig_provider::session::TrainJob;
use daig_shared::wire::ProjectId;
use tokio::sync::watch;

/// What the provider does instead of honest work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Attack {
    /// Zero deltas.
    Zero,
    /// The honest delta times -10.
    Negate,
    /// 1e25 everywhere (finite).
    Huge,
    /// 3e38 everywhere (finite; a sum of two overflows).
    Max,
    /// Random noise as large as the honest delta.
    Noise,
    /// Its first honest delta, sent again for every later lease.
    Replay,
    /// A Hello that claims 1e9 samples a second, and zero deltas at once without training.
    Fast,
    /// Honest training on the wrong labels (each sample gets its neighbour's).
    WrongLabels,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    server: String,
    #[arg(long)]
    project: u64,
    #[arg(long, value_enum)]
    attack: Attack,
    /// Where the caches go (one per connection).
    #[arg(long)]
    dir: PathBuf,
    /// Connections opened at once by this one client, each a provider of its own.
    #[arg(long, default_value_t = 1)]
    connections: usize,
}

#[derive(Debug)]
struct Hostile {
    attack: Attack,
    /// The first delta, for `Replay`.
    first: Mutex<Option<StepResult>>,
    /// xorshift64 state, for `Noise`.
    rng: Mutex<u64>,
}

impl Hostile {
    fn noise(&self, like: &[f32]) -> Vec<f32> {
        let rms = (like.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / like.len().max(1) as f64).sqrt();
        let mut state = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        like.iter()
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                let unit = (*state >> 11) as f64 / (1u64 << 53) as f64;
                ((unit * 2.0 - 1.0) * rms * 3f64.sqrt()) as f32
            })
            .collect()
    }
}

impl Tamper for Hostile {
    fn claimed_speed(&self) -> Option<f32> {
        (self.attack == Attack::Fast).then_some(1e9)
    }

    fn before(&self, job: &mut TrainJob) -> Option<StepResult> {
        match self.attack {
            Attack::Fast => Some(StepResult {
                delta: vec![0.0; job.params.len()],
                mean_loss: 2.3,
                accuracy: None,
                samples: job.samples,
            }),
            Attack::WrongLabels => {
                let width = job.labels.len() / job.samples.max(1);
                job.labels.rotate_left(width);
                None
            }
            _ => None,
        }
    }

    fn after(&self, _job: &TrainJob, mut result: StepResult) -> StepResult {
        match self.attack {
            Attack::Zero => result.delta.fill(0.0),
            Attack::Negate => result.delta.iter_mut().for_each(|v| *v *= -10.0),
            Attack::Huge => result.delta.fill(1e25),
            Attack::Max => result.delta.fill(3e38),
            Attack::Noise => result.delta = self.noise(&result.delta),
            Attack::Replay => {
                let mut first = self.first.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match &*first {
                    Some(earlier) => {
                        result.delta.clone_from(&earlier.delta);
                        result.mean_loss = earlier.mean_loss;
                    }
                    None => *first = Some(result.clone()),
                }
            }
            Attack::Fast | Attack::WrongLabels => {}
        }
        result
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("warn").init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let (_stop_tx, stop) = watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..args.connections {
            let tamper =
                Hostile { attack: args.attack, first: Mutex::new(None), rng: Mutex::new(0x9e37_79b9 + i as u64) };
            let options = Options {
                server: args.server.clone(),
                project: Some(ProjectId(args.project)),
                backend: BackendChoice::Cpu,
                site_key: None,
                provider_key: None,
                cache_dir: args.dir.join(format!("cache-{i}")),
                cache_max_bytes: 1 << 30,
                device_memory_bytes: 0,
                max_contributions: None,
                quiet: true,
                tamper: Some(Arc::new(tamper)),
            };
            tasks.push(tokio::spawn(run(options, stop.clone())));
        }
        for task in tasks {
            match task.await {
                Ok(Ok(exit)) => eprintln!("hostile provider ended: {exit:?}"),
                Ok(Err(e)) => eprintln!("hostile provider stopped: {e:#}"),
                Err(e) => eprintln!("hostile provider panicked: {e}"),
            }
        }
    });
    ExitCode::SUCCESS
}
