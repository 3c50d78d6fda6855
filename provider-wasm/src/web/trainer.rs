//! The browser provider's training task: it owns the [`Engine`] (and the GPU, across models), takes models and
//! jobs in order from the connection loop and reports back through its input channel, so that the loop keeps
//! reading frames and sending heartbeats while a lease trains. After each job it rests long enough that
//! computing takes the throttle's share of the time.

use std::cell::Cell;
use std::rc::Rc;

use daig_shared::model::Model;
use daig_shared::wire;
use futures_channel::mpsc;
use futures_util::StreamExt as _;

use super::{Input, now_ms, sleep_ms};
use crate::engine::{AdapterPolicy, Engine, self_check};
use crate::gpu::Gpu;
use crate::session::{JobId, TrainJob};

/// What the provider found to train on, for its `Hello` and the page.
#[derive(Clone, Debug)]
pub struct Probe {
    pub gpu: bool,
    pub backend: wire::Backend,
    pub adapter: String,
    /// What the device can hold, for `Hello`.
    pub device: wire::DeviceCapacity,
}

/// A message from the training task.
pub enum Report {
    /// The engine for the last model is built.
    EngineReady { gpu: bool, adapter: String },
    /// A job finished (or failed) after `seconds` of training.
    Trained {
        connection: u64,
        job_id: JobId,
        result: Result<crate::gpu::trainer::StepResult, String>,
        seconds: f64,
        samples: usize,
    },
}

enum Command {
    Model { model: Box<Model>, max_batch: usize },
    Train { connection: u64, job: Box<TrainJob> },
}

/// The connection loop's side of the training task.
pub struct Trainer {
    commands: mpsc::UnboundedSender<Command>,
    connection: Rc<Cell<u64>>,
}

impl Trainer {
    /// Opens WebGPU (software adapters only when `software`), self-checks it, and starts the task.
    pub async fn start(
        software: bool,
        throttle: Rc<Cell<f64>>,
        reports: mpsc::UnboundedSender<Input>,
    ) -> (Trainer, Probe) {
        let policy = if software { AdapterPolicy::Any } else { AdapterPolicy::HardwareOnly };
        let (gpu, cpu_reason) = match Gpu::new().await {
            Ok(gpu) if gpu.adapter.software && !software => {
                let reason = gpu.adapter.slower_than_the_cpu();
                (None, reason)
            }
            Ok(gpu) => match self_check(gpu).await {
                Ok(gpu) => (Some(gpu), String::new()),
                Err(e) => (None, format!("the GPU failed its self-check: {e}")),
            },
            Err(e) => (None, e.to_string()),
        };
        let probe = match &gpu {
            Some(gpu) => Probe {
                gpu: true,
                backend: wire::Backend::WebGpu,
                adapter: describe(&gpu.adapter),
                device: device_capacity(Some(gpu)),
            },
            None => Probe {
                gpu: false,
                backend: wire::Backend::Cpu,
                adapter: format!("CPU ({cpu_reason})"),
                device: device_capacity(None),
            },
        };
        let (commands, rx) = mpsc::unbounded();
        let connection = Rc::new(Cell::new(0));
        wasm_bindgen_futures::spawn_local(serve(gpu, cpu_reason, policy, rx, reports, connection.clone(), throttle));
        (Trainer { commands, connection }, probe)
    }

    /// Builds the engine for a model (after the jobs given before it).
    pub fn load_model(&self, model: Model, max_batch: usize) {
        let _ = self.commands.unbounded_send(Command::Model { model: Box::new(model), max_batch });
    }

    /// Queues a job of connection `connection`.
    pub fn train(&self, connection: u64, job: Box<TrainJob>) {
        let _ = self.commands.unbounded_send(Command::Train { connection, job });
    }

    /// Marks `connection` as the current one: queued jobs of earlier connections are skipped.
    pub fn set_connection(&self, connection: u64) {
        self.connection.set(connection);
    }
}

/// The share of the memory the browser reports that one project's training may take: the tab shares it with
/// the page, the browser and everything else the visitor runs.
pub const MEMORY_SHARE: u64 = 4;
/// What the CPU fallback may hold: wasm32 addresses 4 GiB, and the page needs some of it.
pub const WASM_MEMORY_BYTES: u64 = 2 << 30;

/// What this browser states it can hold: the WebGPU adapter's buffer limit, and a quarter of the memory
/// the browser reports (`navigator.deviceMemory`, in GiB, rounded down and capped at 8 by Chromium; absent in
/// Firefox and Safari, which leaves it unstated on the GPU).
pub fn device_capacity(gpu: Option<&Gpu>) -> wire::DeviceCapacity {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok();
    let gib = navigator
        .and_then(|n| js_sys::Reflect::get(&n, &"deviceMemory".into()).ok())
        .and_then(|m| m.as_f64())
        .filter(|m| m.is_finite() && *m > 0.0);
    let reported = gib.map_or(0, |g| (g * f64::from(1u32 << 30)) as u64 / MEMORY_SHARE);
    match gpu {
        Some(gpu) => wire::DeviceCapacity { max_buffer_bytes: gpu.max_buffer_bytes(), memory_bytes: reported },
        None => wire::DeviceCapacity {
            max_buffer_bytes: WASM_MEMORY_BYTES,
            memory_bytes: if reported == 0 { WASM_MEMORY_BYTES } else { reported.min(WASM_MEMORY_BYTES) },
        },
    }
}

async fn serve(
    mut gpu: Option<Gpu>,
    cpu_reason: String,
    policy: AdapterPolicy,
    mut commands: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<Input>,
    connection: Rc<Cell<u64>>,
    throttle: Rc<Cell<f64>>,
) {
    let mut engine: Option<(Engine, usize)> = None;
    while let Some(command) = commands.next().await {
        match command {
            Command::Model { model, max_batch } => {
                if let Some((current, batch)) = &engine
                    && current.model() == &*model
                    && *batch == max_batch
                {
                    continue;
                }
                if let Some((old, _)) = engine.take() {
                    gpu = gpu.or(old.into_gpu());
                }
                let built = match gpu.take() {
                    Some(g) => Engine::from_gpu(Ok(g), *model, max_batch, policy).await,
                    None => Engine::cpu(*model, cpu_reason.clone()),
                };
                let (is_gpu, adapter) = match built.backend() {
                    crate::engine::Backend::Gpu(a) => (true, describe(a)),
                    crate::engine::Backend::Cpu { reason } => (false, format!("CPU ({reason})")),
                };
                let _ = reports.unbounded_send(Input::Report(Report::EngineReady { gpu: is_gpu, adapter }));
                engine = Some((built, max_batch));
            }
            Command::Train { connection: of, job } => {
                if of != connection.get() {
                    continue;
                }
                let started = now_ms();
                let result = match &mut engine {
                    Some((engine, _)) => job.run(engine).await.map_err(|e| e.to_string()),
                    None => Err("no model was loaded before the job".to_owned()),
                };
                let elapsed = (now_ms() - started) as f64;
                let report = Report::Trained {
                    connection: of,
                    job_id: job.job_id,
                    result,
                    seconds: elapsed / 1000.0,
                    samples: job.samples,
                };
                let _ = reports.unbounded_send(Input::Report(report));
                // Rest so that computing is `share` of the time: elapsed / (elapsed + rest) = share.
                let share = throttle.get().clamp(0.05, 1.0);
                if share < 1.0 {
                    sleep_ms(elapsed.max(1.0) * (1.0 - share) / share).await;
                }
            }
        }
    }
}

/// An adapter for people: browsers may hide its name.
pub(super) fn describe(adapter: &crate::gpu::AdapterSummary) -> String {
    let name = adapter.label();
    if adapter.software { format!("{name} (software)") } else { name }
}
