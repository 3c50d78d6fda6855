//! The native provider's training thread: it owns the [`Engine`] (and the GPU, across models), takes
//! models and jobs in order from the connection loop and reports back over a tokio channel, so that the
//! loop keeps reading frames and sending heartbeats while a lease trains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use daig_shared::model::Model;
use daig_shared::wire;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::Tamper;
use crate::engine::{AdapterPolicy, Backend, Engine, self_check};
use crate::gpu::trainer::StepResult;
use crate::gpu::{AdapterSummary, Gpu};
use crate::session::{JobId, TrainJob};

/// Which engine the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The GPU when a hardware adapter passes the self-check, the CPU otherwise.
    Auto,
    /// The GPU, software adapters included; fail when none passes the self-check.
    Gpu,
    /// The CPU reference trainer.
    Cpu,
}

/// What the provider found to train on, for its `Hello`.
#[derive(Clone, Debug)]
pub struct Probe {
    pub backend: wire::Backend,
    pub adapter: String,
    /// The adapter's largest storage buffer, for `Hello`; 0 on the CPU (no such limit).
    pub max_buffer_bytes: u64,
}

/// A message from the training thread.
#[derive(Debug)]
pub enum Report {
    /// The engine for the last model is built.
    EngineReady { backend: Backend },
    /// A job finished (or failed), after `seconds` of training.
    Trained { connection: u64, job_id: JobId, result: Result<StepResult, String>, seconds: f64 },
}

enum Command {
    Model { model: Box<Model>, max_batch: usize },
    Train { connection: u64, job: Box<TrainJob> },
}

/// The connection loop's side of the training thread.
pub struct Trainer {
    commands: mpsc::Sender<Command>,
    /// Jobs of older connections are skipped: their results could not be sent.
    connection: Arc<AtomicU64>,
}

impl Trainer {
    /// Starts the thread, which opens the GPU as `choice` says, and waits for what it found; the receiver
    /// gets the thread's reports.
    ///
    /// # Errors
    /// With `BackendChoice::Gpu`, when no adapter opens or passes the self-check; when the thread cannot
    /// start.
    pub fn start(
        choice: BackendChoice,
        tamper: Option<Arc<dyn Tamper>>,
    ) -> anyhow::Result<(Trainer, UnboundedReceiver<Report>, Probe)> {
        let (commands, command_rx) = mpsc::channel();
        let (report_tx, reports) = unbounded_channel();
        let (probe_tx, probe_rx) = mpsc::channel();
        let connection = Arc::new(AtomicU64::new(0));
        let current = connection.clone();
        std::thread::Builder::new()
            .name("daig-trainer".into())
            .spawn(move || {
                let opened = open(choice);
                let (gpu, cpu_reason, probe) = match opened {
                    Ok(found) => found,
                    Err(e) => {
                        let _ = probe_tx.send(Err(e));
                        return;
                    }
                };
                let _ = probe_tx.send(Ok(probe));
                let policy =
                    if choice == BackendChoice::Gpu { AdapterPolicy::Any } else { AdapterPolicy::HardwareOnly };
                serve(gpu, cpu_reason, policy, &command_rx, &report_tx, &current, tamper.as_deref());
            })
            .context("cannot start the training thread")?;
        let probe = probe_rx.recv().context("the training thread stopped while opening the GPU")??;
        Ok((Trainer { commands, connection }, reports, probe))
    }

    /// Builds the engine for a model (after the jobs given before it).
    pub fn load_model(&self, model: Model, max_batch: usize) {
        let _ = self.commands.send(Command::Model { model: Box::new(model), max_batch });
    }

    /// Queues a job of connection `connection`.
    pub fn train(&self, connection: u64, job: Box<TrainJob>) {
        let _ = self.commands.send(Command::Train { connection, job });
    }

    /// Marks `connection` as the current one: queued jobs of earlier connections are skipped.
    pub fn set_connection(&self, connection: u64) {
        self.connection.store(connection, Ordering::Relaxed);
    }
}

/// Opens the GPU the choice asks for, self-checked: the GPU (if any), the reason the CPU trains otherwise,
/// and the probe.
fn open(choice: BackendChoice) -> anyhow::Result<(Option<Gpu>, String, Probe)> {
    let cpu = |reason: String| {
        let probe = Probe {
            backend: wire::Backend::Cpu,
            adapter: format!("CPU reference trainer ({reason})"),
            max_buffer_bytes: 0,
        };
        Ok((None, reason, probe))
    };
    if choice == BackendChoice::Cpu {
        return cpu("--backend cpu".into());
    }
    let checked = match pollster::block_on(Gpu::new()) {
        Ok(gpu) if gpu.adapter.software && choice == BackendChoice::Auto => {
            return cpu(gpu.adapter.slower_than_the_cpu());
        }
        Ok(gpu) => pollster::block_on(self_check(gpu)),
        Err(e) => Err(e),
    };
    match checked {
        Ok(gpu) => {
            let probe = Probe {
                backend: wire_backend(&gpu.adapter),
                adapter: gpu.adapter.label(),
                max_buffer_bytes: gpu.max_buffer_bytes(),
            };
            Ok((Some(gpu), String::new(), probe))
        }
        Err(e) if choice == BackendChoice::Gpu => bail!("--backend gpu, but {e}"),
        Err(e) => cpu(e.to_string()),
    }
}

/// The wire's name for an adapter's backend.
pub fn wire_backend(adapter: &AdapterSummary) -> wire::Backend {
    match adapter.backend.as_str() {
        "Vulkan" => wire::Backend::Vulkan,
        "Metal" => wire::Backend::Metal,
        "Dx12" => wire::Backend::Dx12,
        "Gl" => wire::Backend::Gl,
        _ => wire::Backend::WebGpu,
    }
}

fn serve(
    mut gpu: Option<Gpu>,
    cpu_reason: String,
    policy: AdapterPolicy,
    commands: &mpsc::Receiver<Command>,
    reports: &UnboundedSender<Report>,
    connection: &AtomicU64,
    tamper: Option<&dyn Tamper>,
) {
    let mut engine: Option<(Engine, usize)> = None;
    while let Ok(command) = commands.recv() {
        match command {
            Command::Model { model, max_batch } => {
                if let Some((current, batch)) = &engine
                    && current.model() == &*model
                    && *batch == max_batch
                {
                    let _ = reports.send(Report::EngineReady { backend: current.backend().clone() });
                    continue;
                }
                if let Some((old, _)) = engine.take() {
                    gpu = gpu.or(old.into_gpu());
                }
                let built = match gpu.take() {
                    Some(g) => pollster::block_on(Engine::from_gpu(Ok(g), *model, max_batch, policy)),
                    None => Engine::cpu(*model, cpu_reason.clone()),
                };
                let _ = reports.send(Report::EngineReady { backend: built.backend().clone() });
                engine = Some((built, max_batch));
            }
            Command::Train { connection: of, mut job } => {
                if of != connection.load(Ordering::Relaxed) {
                    continue;
                }
                let started = Instant::now();
                let at_once = tamper.and_then(|t| t.before(&mut job));
                let result = match (at_once, &mut engine) {
                    (Some(result), _) => Ok(result),
                    (None, Some((engine, _))) => pollster::block_on(job.run(engine)).map_err(|e| e.to_string()),
                    (None, None) => Err("no model was loaded before the job".to_owned()),
                };
                let result = match tamper {
                    Some(t) => result.map(|r| t.after(&job, r)),
                    None => result,
                };
                let seconds = started.elapsed().as_secs_f64();
                let _ = reports.send(Report::Trained { connection: of, job_id: job.job_id, result, seconds });
            }
        }
    }
}
