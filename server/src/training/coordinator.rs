//! The coordinator of one running project: the task around its [`Core`] that does the I/O.
//!
//! It loads the project (model, settings, dataset, latest checkpoint), feeds the core what happens (providers
//! joining and leaving, heartbeats, contributions, evaluation results, a tick twice a second, lifecycle
//! commands, each with the current time), and carries out the core's effects in order: messages to the
//! providers' connections (with `try_send`, never waiting: a connection that cannot keep up leaves), updates
//! recorded in the database before their acks, new parameters on a `watch`, evaluations on the blocking pool,
//! metrics rows, checkpoints in the object store, and the final model. An effect that fails stops training
//! with a [`TrainingError`] whose cause reaches the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use daig_shared::model::{DeviceNeed, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Evaluation, Optimizer, Trainer};
use daig_shared::wire::{
    Backend, ContributionInfo, LeaseProgress, ProjectId, ProviderId, ShardHash, TrainingInfo, Welcome,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::checkpoint;
use super::core::{CheckPolicy, Core, CoreConfig, Effect, EvalRequest, JoinInfo, Restore};
use super::data::{ShardObject, Validation};
use super::error::TrainingError;
use super::verify::{CheckDone, Checker};
use super::{LiveStatus, ParamsSnapshot, ToProvider};
use crate::db::{self, now_unix};
use crate::project::{ProjectRow, keys};
use crate::state::AppState;

pub use super::core::Command;

/// What a connection tells its coordinator.
pub enum Event {
    Join { provider: JoinRequest, reply: oneshot::Sender<Result<Joined, String>> },
    Leave { provider: ProviderId },
    Heartbeat { provider: ProviderId, leases: Vec<LeaseProgress> },
    Contribution { provider: ProviderId, info: ContributionInfo, delta: Vec<f32> },
    Control { command: Command, reply: oneshot::Sender<()> },
}

/// A provider joining.
pub struct JoinRequest {
    pub id: ProviderId,
    pub backend: Backend,
    pub adapter: String,
    pub samples_per_sec: f32,
    pub cached: HashSet<ShardHash>,
    /// The site its work is credited to, if any (checked by the connection).
    pub site_key: Option<String>,
    /// The checks its persistent identity passed before (0 without one).
    pub verified: u64,
    pub tx: mpsc::Sender<ToProvider>,
}

/// The answer to a join.
pub struct Joined {
    pub welcome: Welcome,
    pub params: watch::Receiver<Arc<ParamsSnapshot>>,
    /// The shards the provider may request.
    pub shards: Arc<HashMap<ShardHash, ShardObject>>,
}

/// What [`Coordinator::start`] hands back to the registry.
pub struct Started {
    pub events: mpsc::Sender<Event>,
    /// What training the project takes on a provider's device.
    pub need: DeviceNeed,
    pub status: watch::Receiver<LiveStatus>,
    pub task: tokio::task::JoinHandle<()>,
}

/// The `providers` row of a provider's connection: its id is the row's.
fn provider_row(provider: ProviderId) -> i64 {
    i64::try_from(provider.0).unwrap_or(i64::MAX)
}

/// An evaluation's result, with the evaluator handed back.
type EvalDone = (Option<Trainer>, EvalRequest, Result<Evaluation, String>);

/// The shell around a project's [`Core`].
pub struct Coordinator {
    state: AppState,
    id: i64,
    model: Arc<Model>,
    core: Core,
    /// The connection of each provider the core has.
    providers: HashMap<ProviderId, mpsc::Sender<ToProvider>>,
    params_tx: watch::Sender<Arc<ParamsSnapshot>>,
    status_tx: watch::Sender<LiveStatus>,
    /// The one trainer that evaluates, away while an evaluation runs (the core runs one at a time).
    evaluator: Option<Trainer>,
    eval_tx: mpsc::Sender<EvalDone>,
    validation: Option<Arc<Validation>>,
    shard_objects: Arc<HashMap<ShardHash, ShardObject>>,
    checker: Checker,
    check_tx: mpsc::Sender<CheckDone>,
    welcome: Welcome,
    /// The origin of the core's clock.
    started: Instant,
}

impl Coordinator {
    /// Loads project `row` (its latest checkpoint, or fresh parameters from its seed), drops the records of
    /// updates after that checkpoint, and spawns the coordinator task.
    ///
    /// # Errors
    /// The project has no dataset, or the model, dataset or checkpoint cannot be read.
    pub async fn start(state: AppState, row: &ProjectRow) -> Result<Started, TrainingError> {
        let model = Arc::new(row.model()?);
        let settings = row.settings()?;
        let mut data = super::data::load(&state, row.id, &model, settings.normalization.as_ref()).await?;
        let n = model.param_count();
        let (params, trainer) = match checkpoint::load_latest(&state, row.id, &model).await? {
            Some(found) => found,
            None => {
                let optimizer = Optimizer::new(settings.optimizer.clone(), n)
                    .map_err(|e| TrainingError::other("the optimiser", e))?;
                (
                    init_params(&model, settings.seed),
                    checkpoint::TrainerState {
                        version: 0,
                        epoch: 0,
                        applied: Vec::new(),
                        samples_applied: 0,
                        optimizer: optimizer.state().clone(),
                    },
                )
            }
        };
        let optimizer = Optimizer::restore(settings.optimizer.clone(), trainer.optimizer.clone(), n)
            .map_err(|e| TrainingError::other("restoring the optimiser", e))?;
        let mut tx = state.db().begin().await?;
        db::training::reset_after(&mut tx, row.id, trainer.version, trainer.epoch).await?;
        tx.commit().await?;
        let project = ProjectId(u64::try_from(row.id).unwrap_or(0));
        let validation = data.validation.take().map(Arc::new);
        let config = CoreConfig {
            project,
            batch_size: settings.batch_size,
            k: settings.k,
            local_steps: settings.local_steps,
            max_staleness: settings.max_staleness,
            epochs: settings.epochs,
            seed: settings.seed,
            max_providers: settings.max_providers,
            local_learning_rate: settings.local_learning_rate,
            checkpoint_every: settings.checkpoint_every,
            target_accuracy: settings.target_accuracy,
            aggregation: settings.aggregation,
            norm_bound_factor: settings.norm_bound_factor,
            has_validation: validation.is_some(),
            eval_share: f64::from(state.settings().eval_cpu_percent) / 100.0,
            lease_secs: f64::from(state.settings().lease_seconds),
            checks: if state.settings().check_contributions {
                CheckPolicy::on(rand::random())
            } else {
                tracing::warn!(project = row.id, "contributions are not checked (check_contributions = false)");
                CheckPolicy::off()
            },
        };
        let restore = Restore {
            params,
            optimizer,
            version: trainer.version,
            epoch: trainer.epoch,
            applied: trainer.applied,
            samples_applied: trainer.samples_applied,
        };
        let largest_shard = data.train.iter().map(|s| s.samples).max().unwrap_or(0);
        let need = model.device_need(settings.batch_size, largest_shard);
        let core = Core::new(config, data.train.clone(), restore, state.training().lease_ids());
        let (params_tx, _) = watch::channel(core.snapshot());
        let (status_tx, status_rx) = watch::channel(core.status());
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (eval_tx, eval_rx) = mpsc::channel(2);
        // Each held contribution has one check in flight; a provider holds at most a few.
        let (check_tx, check_rx) = mpsc::channel(64);
        let welcome = Welcome {
            provider_id: ProviderId(0),
            project_id: project,
            model_json: model.spec.to_json(),
            training: TrainingInfo {
                param_count: n as u64,
                batch_size: settings.batch_size,
                heartbeat_interval_ms: u32::try_from(state.settings().heartbeat_interval_ms).unwrap_or(u32::MAX),
                normalisation: data.wire_normalisation.clone(),
            },
        };
        let shard_objects = Arc::new(std::mem::take(&mut data.objects));
        let checker = Checker::new(
            state.clone(),
            Arc::clone(&model),
            data.wire_normalisation.clone(),
            Arc::clone(&shard_objects),
        );
        let coordinator = Coordinator {
            state,
            id: row.id,
            evaluator: Some(Trainer::new(&model)),
            model,
            core,
            providers: HashMap::new(),
            params_tx,
            status_tx,
            eval_tx,
            validation,
            shard_objects,
            checker,
            check_tx,
            welcome,
            started: Instant::now(),
        };
        let task = tokio::spawn(coordinator.run(events_rx, eval_rx, check_rx));
        Ok(Started { events: events_tx, need, status: status_rx, task })
    }

    /// Milliseconds since the coordinator started: the core's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut evals: mpsc::Receiver<EvalDone>,
        mut checks: mpsc::Receiver<CheckDone>,
    ) {
        tracing::info!(project = self.id, version = self.core.version(), epoch = self.core.epoch(), "training started");
        let now = self.now_ms();
        self.core.start(now);
        let mut result = self.execute().await;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while result.is_ok() && !self.core.is_done() {
            result = tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Control { command, reply }) => {
                        self.core.stop(command);
                        self.execute_stopping().await;
                        self.publish_status();
                        let _ = reply.send(());
                        return;
                    }
                    Some(event) => self.handle(event).await,
                    None => {
                        self.core.stop(Command::Shutdown);
                        self.execute_stopping().await;
                        self.publish_status();
                        return;
                    }
                },
                Some((trainer, request, outcome)) = evals.recv() => {
                    if trainer.is_some() {
                        self.evaluator = trainer;
                    }
                    let now = self.now_ms();
                    self.core.evaluated(now, &request, outcome);
                    self.execute().await
                }
                Some((lease, outcome)) = checks.recv() => {
                    let now = self.now_ms();
                    self.core.verified(now, lease, outcome);
                    self.execute().await
                }
                _ = tick.tick() => {
                    let now = self.now_ms();
                    self.core.tick(now);
                    let executed = self.execute().await;
                    self.publish_status();
                    executed
                }
            };
        }
        if let Err(e) = result {
            tracing::error!(project = self.id, "training stopped by an error: {e}");
            self.core.abort(format!("the server stopped training this project: {e}"));
            // Only messages are left to carry out: a failure among them is a provider that is gone.
            let _ = self.execute().await;
            return;
        }
        // Finished: answer the remaining controls until the registry drops the sender.
        while let Some(event) = events.recv().await {
            if let Event::Control { reply, .. } = event {
                let _ = reply.send(());
            }
        }
    }

    async fn handle(&mut self, event: Event) -> Result<(), TrainingError> {
        let now = self.now_ms();
        match event {
            Event::Join { provider, reply } => {
                let JoinRequest { id, backend, adapter, samples_per_sec, cached, site_key, verified, tx } = provider;
                let info = JoinInfo {
                    id,
                    backend,
                    adapter,
                    samples_per_sec,
                    cached,
                    site_key,
                    connected_at_unix: now_unix(),
                    verified,
                };
                match self.core.join(now, info) {
                    Ok(()) => {
                        self.providers.insert(id, tx);
                        let mut welcome = self.welcome.clone();
                        welcome.provider_id = id;
                        let joined = Joined {
                            welcome,
                            params: self.params_tx.subscribe(),
                            shards: Arc::clone(&self.shard_objects),
                        };
                        // Its leases follow in the connection's queue, read after the Welcome.
                        let _ = reply.send(Ok(joined));
                    }
                    Err(why) => {
                        let _ = reply.send(Err(why));
                    }
                }
            }
            Event::Leave { provider } => {
                self.providers.remove(&provider);
                self.core.leave(now, provider);
            }
            Event::Heartbeat { provider, leases } => self.core.heartbeat(now, provider, &leases),
            Event::Contribution { provider, info, delta } => self.core.contribution(now, provider, info, &delta),
            Event::Control { .. } => {}
        }
        self.execute().await
    }

    /// Carries out the core's effects in order.
    async fn execute(&mut self) -> Result<(), TrainingError> {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Send { provider, message } => self.send(provider, message),
                Effect::Persist(update) => {
                    let mut tx = self.state.db().begin().await?;
                    let (version, epoch) = (update.version, update.epoch);
                    db::training::record_update(&mut tx, self.id, version, epoch, &update.contributions, now_unix())
                        .await?;
                    tx.commit().await?;
                }
                Effect::Publish(snapshot) => {
                    self.params_tx.send_replace(snapshot);
                }
                Effect::Evaluate(request) => self.evaluate(request),
                Effect::RecordMetrics(row) => {
                    db::training::record_metrics(self.state.db(), self.id, &row, now_unix()).await?;
                }
                Effect::Checkpoint { params, state } => {
                    checkpoint::save(&self.state, self.id, &self.model, &params, &state).await?;
                }
                Effect::Finish { version, params } => self.finish(version, &params).await?,
                Effect::Verify(request) => self.checker.check(request, self.check_tx.clone()),
                Effect::CheckPassed { provider } => {
                    db::trust::check_passed(self.state.db(), provider_row(provider)).await?;
                }
                Effect::ShutOut { provider, reason } => {
                    tracing::warn!(project = self.id, %provider, "provider shut out: {reason}");
                    let now = now_unix();
                    let ban = self.state.settings().shut_out_ban_secs;
                    let until = (ban > 0).then(|| now.saturating_add(i64::try_from(ban).unwrap_or(i64::MAX)));
                    let mut tx = self.state.db().begin().await?;
                    db::trust::shut_out(&mut tx, provider_row(provider), self.id, &reason, until, now).await?;
                    tx.commit().await?;
                }
            }
        }
        Ok(())
    }

    /// Carries out the effects of a stop: when the checkpoint fails, the providers are still told (the
    /// messages queued behind it are sent; nothing else is carried out).
    async fn execute_stopping(&mut self) {
        if let Err(e) = self.execute().await {
            tracing::error!(project = self.id, "cannot checkpoint while stopping: {e}");
            while let Some(effect) = self.core.poll_effect() {
                if let Effect::Send { provider, message } = effect {
                    self.send(provider, message);
                }
            }
        }
    }

    /// Sends without waiting; a connection that is gone or not reading leaves, and its leases return.
    fn send(&mut self, provider: ProviderId, message: ToProvider) {
        let detach = matches!(message, ToProvider::Detach(_));
        let Some(tx) = self.providers.get(&provider) else { return };
        if tx.try_send(message).is_err() {
            self.providers.remove(&provider);
            let now = self.now_ms();
            self.core.leave(now, provider);
        } else if detach {
            self.providers.remove(&provider);
        }
    }

    /// Runs `request` on the blocking pool; the result comes back through `evals`.
    fn evaluate(&mut self, request: EvalRequest) {
        let tx = self.eval_tx.clone();
        let Some(validation) = self.validation.clone() else {
            // No validation split: the result says so at once.
            let _ = tx.try_send((None, request, Err("no validation split".into())));
            return;
        };
        let Some(mut trainer) = self.evaluator.take() else {
            let _ = tx.try_send((None, request, Err("an evaluation is already running".into())));
            return;
        };
        let model = Arc::clone(&self.model);
        // The server's evaluation threads (`eval_threads`) are shared by every project: an evaluation waits for
        // one, and the wait counts in its cost (see `CoreConfig::eval_share`).
        let permits = self.state.training().eval_permits();
        tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else { return };
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    validation.evaluate(&mut trainer, &request.params)
                }));
                // A panic must not leave the epoch waiting for its evaluation: it is answered as an error, with
                // a new trainer in place of the one it may have left half-written.
                let done = match evaluated {
                    Ok(result) => (Some(trainer), request, result),
                    Err(_) => (Some(Trainer::new(&model)), request, Err("the evaluation panicked".to_owned())),
                };
                let _ = tx.blocking_send(done);
            });
        });
    }

    /// Stores the final model and its metrics, marks the project finished and leaves the registry.
    async fn finish(&mut self, version: u64, params: &[f32]) -> Result<(), TrainingError> {
        let file = checkpoint::params_file(&self.model, params, version)?;
        self.state.store().put(&keys::model_key(self.id), bytes::Bytes::from(file)).await?;
        let metrics = super::metrics_json(&self.state, self.id).await?;
        self.state.store().put(&keys::metrics_key(self.id), bytes::Bytes::from(metrics)).await?;
        db::training::mark_finished(self.state.db(), self.id, now_unix()).await?;
        self.publish_status();
        self.state.training().forget(self.id);
        Ok(())
    }

    /// Publishes the live status for the API. It lists every provider, so it runs on the tick (twice a second)
    /// and at the ends of training, not after every join or update: with thousands of providers that would
    /// make joining quadratic.
    fn publish_status(&self) {
        self.status_tx.send_replace(self.core.status());
    }
}
