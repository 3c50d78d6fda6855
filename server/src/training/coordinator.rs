//! The coordinator of one running project: a task that owns the parameters, the optimiser, the epoch plan, the
//! leases and the aggregation buffer, and talks to its providers' connections through channels.
//!
//! K-batch sync SGD: a contribution made on version `v'` while the server is at `v` is refused as stale when
//! `v - v' > max_staleness`; otherwise its delta is added to the buffer with the weight `samples / (1 + v - v')`.
//! When the buffer holds `k` contributions (or the epoch's last batches), the weighted mean delta `d` becomes
//! the pseudo-gradient `-d` of the server optimiser, the version goes up by one, the buffered batches and
//! contributions are recorded as applied in one transaction, the contributors are acked and the new parameters
//! go to every provider of the project. With `local_steps = 1` and `local_learning_rate = 1` the delta is minus
//! the gradient, so this is synchronous SGD with a global batch of `k * batch_size`; with server SGD at
//! learning rate 1 it is model averaging.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daig_shared::model::Model;
use daig_shared::params::init_params;
use daig_shared::train::{Optimizer, Trainer};
use daig_shared::wire::{
    Ack, AckOutcome, Backend, CancelLease, ContributionInfo, Lease, LeaseId, LeaseProgress, ProjectId, ProviderId,
    RefusalReason, SampleSelection, ShardHash, ShardSamples, TrainingInfo, Welcome,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::aggregate;
use super::checkpoint::{self, TrainerState};
use super::data::{ProjectData, ShardObject, Validation};
use super::plan::{EpochPlan, Unit};
use super::{Detach, LiveProvider, LiveStatus, ParamsSnapshot, ToProvider};
use crate::api::projects::{ProjectRow, TrainingSettings};
use crate::db::now_unix;
use crate::error::AppError;
use crate::state::AppState;

/// Leases a provider holds at once: one to train, one queued so that it never waits for a round trip.
const LEASE_DEPTH: usize = 2;
/// How long a lease should take at the provider's measured speed; leases of several batches are cut to it.
const TARGET_LEASE_SECS: f64 = 5.0;
/// A lease's deadline: this many times its expected duration, and at least [`MIN_DEADLINE`].
const DEADLINE_FACTOR: f64 = 6.0;
const MIN_DEADLINE: Duration = Duration::from_secs(20);
/// The deadline of a provider's first lease, before its speed is known.
const FIRST_DEADLINE: Duration = Duration::from_secs(120);
/// The least time between two evaluations of the validation split, besides those at epoch ends.
const EVAL_INTERVAL: Duration = Duration::from_millis(500);
/// Cancelled leases remembered for their refusal message.
const MAX_CANCELLED_REMEMBERED: usize = 4096;

/// What a connection tells its coordinator.
pub enum Event {
    Join { provider: JoinRequest, reply: oneshot::Sender<Result<Joined, String>> },
    Leave { provider: ProviderId },
    Heartbeat { provider: ProviderId, leases: Vec<LeaseProgress> },
    Contribution { provider: ProviderId, info: ContributionInfo, delta: Vec<f32> },
    Control { command: Command, reply: oneshot::Sender<()> },
}

/// A lifecycle command from the API or the server's shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Checkpoint, return every lease and stop.
    Pause,
    /// Stop for good.
    Cancel,
    /// Checkpoint and stop; the project stays running and resumes at the next start.
    Shutdown,
}

/// A provider joining.
pub struct JoinRequest {
    pub id: ProviderId,
    pub backend: Backend,
    pub adapter: String,
    pub samples_per_sec: f32,
    pub cached: HashSet<ShardHash>,
    pub site_key: Option<String>,
    pub tx: mpsc::Sender<ToProvider>,
}

/// The answer to a join.
pub struct Joined {
    pub welcome: Welcome,
    pub params: watch::Receiver<Arc<ParamsSnapshot>>,
    /// The shards the provider may request.
    pub shards: Arc<HashMap<ShardHash, ShardObject>>,
}

struct Provider {
    backend: Backend,
    adapter: String,
    site_key: Option<String>,
    cached: HashSet<ShardHash>,
    tx: mpsc::Sender<ToProvider>,
    leases: Vec<LeaseId>,
    /// Samples per second, smoothed; the provider's own estimate until a contribution is measured.
    speed: Option<f64>,
    applied: u64,
    connected_at: i64,
}

struct LeaseRecord {
    provider: ProviderId,
    units: Vec<Unit>,
    samples: u32,
    issued: Instant,
    deadline: Instant,
    window: Duration,
    steps_done: u32,
    epoch: u64,
}

struct Buffered {
    provider: ProviderId,
    site_key: Option<String>,
    lease: LeaseId,
    units: Vec<Unit>,
    base_version: u64,
    samples: u32,
    loss: f32,
}

/// Everything the coordinator needs, built by [`Coordinator::start`].
pub struct Coordinator {
    state: AppState,
    id: i64,
    model: Arc<Model>,
    settings: TrainingSettings,
    data: ProjectData,
    params: Vec<f32>,
    optimizer: Optimizer,
    version: u64,
    plan: EpochPlan,
    samples_applied: u64,
    sum: Vec<f32>,
    weight: f64,
    buffer: Vec<Buffered>,
    leases: HashMap<LeaseId, LeaseRecord>,
    /// Why recent leases were cancelled, for the refusal of a contribution already on its way.
    cancelled: HashMap<LeaseId, &'static str>,
    providers: HashMap<ProviderId, Provider>,
    params_tx: watch::Sender<Arc<ParamsSnapshot>>,
    status_tx: watch::Sender<LiveStatus>,
    updates_since_checkpoint: u32,
    /// The training loss of the updates since the last metrics row: sum of loss * samples, and samples.
    train_loss: (f64, u64),
    evaluator: Option<Trainer>,
    last_eval: Option<Instant>,
    last_update: Option<Instant>,
    update_interval: Option<f64>,
    eval_rx: mpsc::Receiver<(Trainer, u64, u64, Result<daig_shared::train::Evaluation, String>)>,
    eval_tx: mpsc::Sender<(Trainer, u64, u64, Result<daig_shared::train::Evaluation, String>)>,
    validation: Option<Arc<Validation>>,
    shard_objects: Arc<HashMap<ShardHash, ShardObject>>,
    welcome: Welcome,
    finished: bool,
}

/// What [`Coordinator::start`] hands back to the registry.
pub struct Started {
    pub events: mpsc::Sender<Event>,
    pub status: watch::Receiver<LiveStatus>,
    pub task: tokio::task::JoinHandle<()>,
}

fn internal(context: &str, e: impl std::fmt::Display) -> AppError {
    AppError::Internal(anyhow::anyhow!("{context}: {e}"))
}

fn snapshot(version: u64, params: &[f32]) -> Arc<ParamsSnapshot> {
    Arc::new(ParamsSnapshot {
        version,
        bytes: bytes::Bytes::from(daig_shared::wire::f32s_to_le_bytes(params).into_owned()),
    })
}

impl Coordinator {
    /// Loads project `row` (its latest checkpoint, or fresh parameters from its seed), drops the records of
    /// updates after that checkpoint, and spawns the coordinator task.
    ///
    /// # Errors
    /// The dataset or the checkpoint cannot be read.
    pub async fn start(state: AppState, row: &ProjectRow) -> Result<Started, AppError> {
        let model = Arc::new(row.model()?);
        let settings = row.settings()?;
        let mut data = super::data::load(&state, row.id, &model, settings.normalization.as_ref()).await?;
        let n = model.param_count();
        let (params, trainer) = match checkpoint::load_latest(&state, row.id, &model).await? {
            Some(found) => found,
            None => {
                let optimizer = Optimizer::new(settings.optimizer.clone(), n).map_err(|e| internal("optimiser", e))?;
                (
                    init_params(&model, settings.seed),
                    TrainerState {
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
            .map_err(|e| internal("restoring the optimiser", e))?;
        let after = i64::try_from(trainer.version).unwrap_or(i64::MAX);
        for sql in [
            "DELETE FROM contributions WHERE project_id = ? AND version > ?",
            "DELETE FROM applied_batches WHERE project_id = ? AND version > ?",
            "DELETE FROM metrics WHERE project_id = ? AND version > ?",
        ] {
            sqlx::query(sql).bind(row.id).bind(after).execute(state.db()).await?;
        }
        sqlx::query("UPDATE projects SET version = ?, epoch = ? WHERE id = ?")
            .bind(after)
            .bind(i64::try_from(trainer.epoch).unwrap_or(i64::MAX))
            .bind(row.id)
            .execute(state.db())
            .await?;
        let plan =
            EpochPlan::new(trainer.epoch, settings.seed, settings.batch_size, data.train.clone(), &trainer.applied);
        let (params_tx, _) = watch::channel(snapshot(trainer.version, &params));
        let (status_tx, status_rx) = watch::channel(LiveStatus::default());
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (eval_tx, eval_rx) = mpsc::channel(2);
        let welcome = Welcome {
            provider_id: ProviderId(0),
            project_id: ProjectId(u64::try_from(row.id).unwrap_or(0)),
            model_json: model.spec.to_json(),
            training: TrainingInfo {
                param_count: n as u64,
                batch_size: settings.batch_size,
                heartbeat_interval_ms: u32::try_from(state.settings().heartbeat_interval_ms).unwrap_or(u32::MAX),
                normalisation: data.wire_normalisation.clone(),
            },
        };
        let validation = data.validation.take().map(Arc::new);
        let shard_objects = Arc::new(std::mem::take(&mut data.objects));
        let coordinator = Coordinator {
            state,
            id: row.id,
            evaluator: Some(Trainer::new(&model)),
            model,
            settings,
            data,
            sum: vec![0.0; n],
            params,
            optimizer,
            version: trainer.version,
            plan,
            samples_applied: trainer.samples_applied,
            weight: 0.0,
            buffer: Vec::new(),
            leases: HashMap::new(),
            cancelled: HashMap::new(),
            providers: HashMap::new(),
            params_tx,
            status_tx,
            updates_since_checkpoint: 0,
            train_loss: (0.0, 0),
            last_eval: None,
            last_update: None,
            update_interval: None,
            eval_rx,
            eval_tx,
            validation,
            shard_objects,
            welcome,
            finished: false,
        };
        coordinator.publish_status();
        let task = tokio::spawn(coordinator.run(events_rx));
        Ok(Started { events: events_tx, status: status_rx, task })
    }

    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        tracing::info!(project = self.id, version = self.version, epoch = self.plan.epoch(), "training started");
        // A plan restored complete (a crash right after the last checkpoint of an epoch) moves on at once.
        if let Err(e) = self.after_update().await {
            tracing::error!(project = self.id, "training stopped: {e}");
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            if self.finished {
                break;
            }
            let result = tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Control { command, reply }) => {
                        self.stop(command).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(event) => self.handle(event).await,
                    None => {
                        self.stop(Command::Shutdown).await;
                        return;
                    }
                },
                Some((trainer, version, epoch, result)) = self.eval_rx.recv() => {
                    self.evaluator = Some(trainer);
                    self.record_eval(version, epoch, result).await
                }
                _ = tick.tick() => self.on_tick(),
            };
            if let Err(e) = result {
                tracing::error!(project = self.id, "training stopped by an error: {e}");
                self.detach_all(Detach::Removed(format!("the server stopped training this project: {e}")));
                return;
            }
        }
        // Finished: answer the remaining controls until the registry drops the sender.
        while let Some(event) = events.recv().await {
            if let Event::Control { reply, .. } = event {
                let _ = reply.send(());
            }
        }
    }

    async fn handle(&mut self, event: Event) -> Result<(), AppError> {
        match event {
            Event::Join { provider, reply } => {
                let joined = self.join(provider);
                let _ = reply.send(joined);
                Ok(())
            }
            Event::Leave { provider } => {
                self.leave(provider);
                Ok(())
            }
            Event::Heartbeat { provider, leases } => {
                for progress in leases {
                    if let Some(lease) = self.leases.get_mut(&progress.lease_id)
                        && lease.provider == provider
                        && progress.steps_done > lease.steps_done
                    {
                        lease.steps_done = progress.steps_done;
                        lease.deadline = Instant::now() + lease.window;
                    }
                }
                Ok(())
            }
            Event::Contribution { provider, info, delta } => self.contribution(provider, info, delta).await,
            Event::Control { .. } => Ok(()),
        }
    }

    fn join(&mut self, request: JoinRequest) -> Result<Joined, String> {
        if self.providers.len() >= self.settings.max_providers as usize {
            return Err(format!("the project has its maximum of {} providers", self.settings.max_providers));
        }
        let id = request.id;
        self.providers.insert(
            id,
            Provider {
                backend: request.backend,
                adapter: request.adapter,
                site_key: request.site_key,
                cached: request.cached,
                tx: request.tx,
                leases: Vec::new(),
                speed: (request.samples_per_sec.is_finite() && request.samples_per_sec > 0.0)
                    .then_some(f64::from(request.samples_per_sec)),
                applied: 0,
                connected_at: now_unix(),
            },
        );
        let mut welcome = self.welcome.clone();
        welcome.provider_id = id;
        let joined = Joined { welcome, params: self.params_tx.subscribe(), shards: Arc::clone(&self.shard_objects) };
        tracing::info!(project = self.id, provider = %id, "provider joined");
        metrics::gauge!("daig_providers_connected").increment(1.0);
        // Its leases follow the Welcome in the connection's queue.
        self.fill(id);
        Ok(joined)
    }

    fn leave(&mut self, provider: ProviderId) {
        if let Some(p) = self.providers.remove(&provider) {
            let returned = p.leases.len();
            for lease in p.leases {
                self.drop_lease(lease);
            }
            metrics::gauge!("daig_providers_connected").decrement(1.0);
            tracing::info!(project = self.id, provider = %provider, returned, "provider left; its leases return to the queue");
            self.fill_all();
        }
    }

    /// Sends `provider` leases until it holds [`LEASE_DEPTH`] or nothing is left to lease.
    fn fill(&mut self, id: ProviderId) {
        while let Some(p) = self.providers.get(&id) {
            if p.leases.len() >= LEASE_DEPTH || self.finished {
                return;
            }
            let batch = f64::from(self.settings.batch_size.max(1));
            let max_units = match p.speed {
                Some(speed) => ((speed * TARGET_LEASE_SECS / batch).floor() as u32).clamp(1, self.settings.local_steps),
                None => self.settings.local_steps,
            };
            let held: HashSet<Unit> =
                p.leases.iter().filter_map(|l| self.leases.get(l)).flat_map(|l| l.units.iter().copied()).collect();
            let now_ms = u64::try_from(now_unix()).unwrap_or(0) * 1000;
            let Some(pick) = self.plan.pick(max_units, &p.cached, &held, now_ms) else { return };
            let mut selection: Vec<ShardSamples> = Vec::new();
            let mut samples = 0u32;
            for unit in &pick.units {
                let shard = self.plan.shards()[unit.shard as usize].hash;
                let indices = self.plan.samples(*unit);
                samples += indices.len() as u32;
                match selection.last_mut() {
                    Some(last) if last.shard == shard => last.indices.extend_from_slice(indices),
                    _ => selection.push(ShardSamples { shard, indices: indices.to_vec() }),
                }
            }
            let window = match p.speed {
                Some(speed) => Duration::from_secs_f64(f64::from(samples) / speed * DEADLINE_FACTOR).max(MIN_DEADLINE),
                None => FIRST_DEADLINE,
            };
            let shards: Vec<ShardHash> = selection.iter().map(|s| s.shard).collect();
            let lease_id = self.state.training().next_lease_id();
            let lease = Lease {
                lease_id,
                project_id: self.welcome.project_id,
                params_version: self.version,
                samples: SampleSelection::Shards(selection),
                local_steps: pick.units.len() as u32,
                learning_rate: self.settings.local_learning_rate,
                deadline_ms: window.as_millis() as u64,
            };
            if p.tx.try_send(ToProvider::Lease(lease)).is_err() {
                // The connection is gone or not reading: it leaves, and the units return.
                self.plan.release(&pick.units);
                self.leave(id);
                return;
            }
            let now = Instant::now();
            self.leases.insert(
                lease_id,
                LeaseRecord {
                    provider: id,
                    units: pick.units,
                    samples,
                    issued: now,
                    deadline: now + window,
                    window,
                    steps_done: 0,
                    epoch: self.plan.epoch(),
                },
            );
            if let Some(p) = self.providers.get_mut(&id) {
                p.leases.push(lease_id);
                // It fetches the lease's shards now (or has them), so later leases prefer them.
                p.cached.extend(shards);
            }
        }
    }

    fn fill_all(&mut self) {
        let ids: Vec<ProviderId> = self.providers.keys().copied().collect();
        for id in ids {
            self.fill(id);
        }
    }

    fn send(&mut self, provider: ProviderId, message: ToProvider) {
        if let Some(p) = self.providers.get(&provider)
            && p.tx.try_send(message).is_err()
        {
            self.leave(provider);
        }
    }

    fn refuse(&mut self, provider: ProviderId, lease_id: LeaseId, reason: RefusalReason, detail: String) {
        tracing::info!(project = self.id, provider = %provider, lease = %lease_id, ?reason, "contribution refused: {detail}");
        metrics::counter!("daig_contributions_total", "outcome" => "refused").increment(1);
        self.send(provider, ToProvider::Ack(Ack { lease_id, outcome: AckOutcome::Refused { reason, detail } }));
    }

    /// Ends lease `lease_id`, tells its provider why, and remembers the reason for a contribution that crosses
    /// the cancellation.
    fn cancel_lease(&mut self, lease_id: LeaseId, reason: &'static str) {
        if let Some(record) = self.drop_lease(lease_id) {
            if self.cancelled.len() >= MAX_CANCELLED_REMEMBERED {
                self.cancelled.clear();
            }
            self.cancelled.insert(lease_id, reason);
            self.send(record.provider, ToProvider::Cancel(CancelLease { lease_id, reason: reason.into() }));
        }
    }

    /// Ends lease `lease_id` without a contribution, returning its units.
    fn drop_lease(&mut self, lease_id: LeaseId) -> Option<LeaseRecord> {
        let record = self.leases.remove(&lease_id)?;
        if record.epoch == self.plan.epoch() {
            self.plan.release(&record.units);
        }
        if let Some(p) = self.providers.get_mut(&record.provider) {
            p.leases.retain(|l| *l != lease_id);
        }
        Some(record)
    }

    async fn contribution(
        &mut self,
        provider: ProviderId,
        info: ContributionInfo,
        delta: Vec<f32>,
    ) -> Result<(), AppError> {
        let lease_id = info.lease_id;
        let Some(record) = self.leases.get(&lease_id).filter(|l| l.provider == provider) else {
            let detail = match self.cancelled.get(&lease_id) {
                Some(reason) => format!("lease {lease_id} was cancelled: {reason}"),
                None => format!("lease {lease_id} is not open on this connection for project {}", self.id),
            };
            self.refuse(provider, lease_id, RefusalReason::UnknownLease, detail);
            return Ok(());
        };
        let problem = if delta.len() != self.params.len() {
            Some((
                RefusalReason::WrongShape,
                format!("the delta has {} values; the model has {} parameters", delta.len(), self.params.len()),
            ))
        } else if !info.mean_loss.is_finite() || delta.iter().any(|v| !v.is_finite()) {
            Some((RefusalReason::NonFinite, "the delta or the loss holds NaN or infinity".to_owned()))
        } else if info.sample_count != record.samples {
            Some((
                RefusalReason::Rejected,
                format!("it reports {} samples; the lease holds {}", info.sample_count, record.samples),
            ))
        } else if info.base_version > self.version {
            Some((
                RefusalReason::Rejected,
                format!("its base version {} is ahead of the server's {}", info.base_version, self.version),
            ))
        } else if record.epoch != self.plan.epoch() || !self.plan.can_buffer(&record.units) {
            Some((RefusalReason::Other, "its batches were already contributed by another provider".to_owned()))
        } else {
            None
        };
        if let Some((reason, detail)) = problem {
            self.drop_lease(lease_id);
            self.refuse(provider, lease_id, reason, detail);
            self.fill(provider);
            return Ok(());
        }
        let staleness = self.version - info.base_version;
        if staleness > u64::from(self.settings.max_staleness) {
            self.drop_lease(lease_id);
            metrics::counter!("daig_contributions_total", "outcome" => "stale").increment(1);
            self.send(
                provider,
                ToProvider::Ack(Ack { lease_id, outcome: AckOutcome::Stale { current_version: self.version } }),
            );
            self.fill(provider);
            return Ok(());
        }
        let record = self.leases.remove(&lease_id).expect("checked above");
        let elapsed = record.issued.elapsed().as_secs_f64().max(1e-3);
        let site_key = match self.providers.get_mut(&provider) {
            Some(p) => {
                p.leases.retain(|l| *l != lease_id);
                let measured = f64::from(record.samples) / elapsed;
                p.speed = Some(match p.speed {
                    Some(old) if p.applied > 0 => 0.7 * old + 0.3 * measured,
                    _ => measured,
                });
                p.site_key.clone()
            }
            None => None,
        };
        self.plan.buffer(&record.units);
        // Other copies of these batches can no longer win.
        let copies: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.units.iter().any(|u| record.units.contains(u)))
            .map(|(id, _)| *id)
            .collect();
        for copy in copies {
            self.cancel_lease(copy, "another provider contributed these batches first");
        }
        let weight = aggregate::weight(info.sample_count, staleness);
        aggregate::accumulate(&mut self.sum, &delta, weight);
        self.weight += weight;
        self.buffer.push(Buffered {
            provider,
            site_key,
            lease: lease_id,
            units: record.units,
            base_version: info.base_version,
            samples: info.sample_count,
            loss: info.mean_loss,
        });
        if self.buffer.len() >= self.settings.k as usize || self.plan.all_contributed() {
            self.apply_update().await?;
            self.after_update().await?;
        }
        self.fill(provider);
        Ok(())
    }

    /// Applies the buffer as one update.
    async fn apply_update(&mut self) -> Result<(), AppError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        aggregate::into_gradient(&mut self.sum, self.weight);
        let buffer = std::mem::take(&mut self.buffer);
        let stepped = self.optimizer.step(&mut self.params, &self.sum);
        self.sum.fill(0.0);
        self.weight = 0.0;
        if let Err(e) = stepped {
            // Every delta was finite, so only overflow in the sum gets here: nothing changes and the batches
            // are leased again.
            for b in &buffer {
                self.plan.unbuffer(&b.units);
                self.refuse(b.provider, b.lease, RefusalReason::NonFinite, format!("the update failed: {e}"));
            }
            return Ok(());
        }
        self.version += 1;
        let version = i64::try_from(self.version).unwrap_or(i64::MAX);
        let epoch = i64::try_from(self.plan.epoch()).unwrap_or(i64::MAX);
        let now = now_unix();
        let mut tx = self.state.db().begin().await?;
        for b in &buffer {
            let contribution: i64 = sqlx::query_scalar(
                "INSERT INTO contributions (project_id, provider_id, site_key, lease_id, base_version, version, samples,
                                            mean_loss, applied_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(self.id)
            .bind(i64::try_from(b.provider.0).unwrap_or(i64::MAX))
            .bind(&b.site_key)
            .bind(i64::try_from(b.lease.0).unwrap_or(i64::MAX))
            .bind(i64::try_from(b.base_version).unwrap_or(i64::MAX))
            .bind(version)
            .bind(i64::from(b.samples))
            .bind(f64::from(b.loss))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            for unit in &b.units {
                sqlx::query(
                    "INSERT INTO applied_batches (project_id, epoch, shard, batch, contribution_id, version)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(self.id)
                .bind(epoch)
                .bind(i64::from(unit.shard))
                .bind(i64::from(unit.batch))
                .bind(contribution)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        for b in &buffer {
            self.plan.apply(&b.units);
            self.samples_applied += u64::from(b.samples);
            self.train_loss.0 += f64::from(b.loss) * f64::from(b.samples);
            self.train_loss.1 += u64::from(b.samples);
            if let Some(p) = self.providers.get_mut(&b.provider) {
                p.applied += 1;
            }
            metrics::counter!("daig_contributions_total", "outcome" => "applied").increment(1);
            self.send(
                b.provider,
                ToProvider::Ack(Ack { lease_id: b.lease, outcome: AckOutcome::Applied { new_version: self.version } }),
            );
        }
        metrics::counter!("daig_updates_total").increment(1);
        self.params_tx.send_replace(snapshot(self.version, &self.params));
        if let Some(last) = self.last_update.replace(Instant::now()) {
            let secs = last.elapsed().as_secs_f64();
            self.update_interval = Some(self.update_interval.map_or(secs, |old| 0.8 * old + 0.2 * secs));
        }
        self.updates_since_checkpoint += 1;
        Ok(())
    }

    /// Epoch ends, evaluation, checkpoints and completion after an update.
    async fn after_update(&mut self) -> Result<(), AppError> {
        if self.plan.is_complete() {
            // The epoch's last update: evaluate it, move on, checkpoint.
            let epoch = self.plan.epoch() + 1;
            let reached = self.evaluate_now(epoch).await?;
            // Leases still open are copies of applied batches; they end with the epoch.
            let open: Vec<LeaseId> = self.leases.keys().copied().collect();
            for id in open {
                self.cancel_lease(id, "the epoch is complete");
            }
            self.plan =
                EpochPlan::new(epoch, self.settings.seed, self.settings.batch_size, self.data.train.clone(), &[]);
            self.save_checkpoint().await?;
            tracing::info!(project = self.id, epoch, version = self.version, "epoch done");
            if epoch >= u64::from(self.settings.epochs) || reached {
                return self.finish().await;
            }
            self.fill_all();
        } else {
            if self.plan.all_contributed() && !self.buffer.is_empty() {
                // Only reachable after a refused update; apply what is left.
                return Box::pin(async {
                    self.apply_update().await?;
                    self.after_update().await
                })
                .await;
            }
            if self.updates_since_checkpoint >= self.settings.checkpoint_every {
                self.save_checkpoint().await?;
            }
            self.maybe_evaluate();
        }
        Ok(())
    }

    fn maybe_evaluate(&mut self) {
        if self.last_eval.is_some_and(|t| t.elapsed() < EVAL_INTERVAL) {
            return;
        }
        let (Some(validation), Some(mut trainer)) = (self.validation.clone(), self.evaluator.take()) else { return };
        self.last_eval = Some(Instant::now());
        let params = self.params.clone();
        let (version, epoch) = (self.version, self.plan.epoch());
        let tx = self.eval_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = validation.evaluate(&mut trainer, &params);
            let _ = tx.blocking_send((trainer, version, epoch, result));
        });
    }

    /// Evaluates the current parameters now (waiting for a running evaluation first), records the row, and
    /// says whether the target accuracy is reached.
    async fn evaluate_now(&mut self, epoch: u64) -> Result<bool, AppError> {
        while self.evaluator.is_none() {
            match self.eval_rx.recv().await {
                Some((trainer, version, epoch, result)) => {
                    self.evaluator = Some(trainer);
                    self.record_eval(version, epoch, result).await?;
                }
                None => break,
            }
        }
        let result = match (self.validation.clone(), self.evaluator.take()) {
            (Some(validation), Some(mut trainer)) => {
                let params = self.params.clone();
                let (trainer, result) = tokio::task::spawn_blocking(move || {
                    let result = validation.evaluate(&mut trainer, &params);
                    (trainer, result)
                })
                .await
                .map_err(|e| internal("evaluation task", e))?;
                self.evaluator = Some(trainer);
                Some(result)
            }
            _ => None,
        };
        self.last_eval = Some(Instant::now());
        let accuracy = match result {
            Some(result) => {
                let accuracy = result.as_ref().ok().and_then(|e| e.accuracy);
                self.record_eval(self.version, epoch, result).await?;
                accuracy
            }
            None => {
                self.record_eval(self.version, epoch, Err("no validation split".into())).await?;
                None
            }
        };
        Ok(matches!((self.settings.target_accuracy, accuracy), (Some(target), Some(a)) if a >= target))
    }

    async fn record_eval(
        &mut self,
        version: u64,
        epoch: u64,
        result: Result<daig_shared::train::Evaluation, String>,
    ) -> Result<(), AppError> {
        let (val_loss, val_accuracy) = match result {
            Ok(e) => (Some(e.loss), e.accuracy),
            Err(e) => {
                if self.validation.is_some() {
                    tracing::warn!(project = self.id, "evaluation failed: {e}");
                }
                (None, None)
            }
        };
        let train_loss = (self.train_loss.1 > 0).then(|| self.train_loss.0 / self.train_loss.1 as f64);
        self.train_loss = (0.0, 0);
        sqlx::query(
            "INSERT OR REPLACE INTO metrics (project_id, version, epoch, samples, train_loss, val_loss, val_accuracy, at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(self.id)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
        .bind(i64::try_from(self.samples_applied).unwrap_or(i64::MAX))
        .bind(train_loss)
        .bind(val_loss)
        .bind(val_accuracy)
        .bind(now_unix())
        .execute(self.state.db())
        .await?;
        Ok(())
    }

    async fn save_checkpoint(&mut self) -> Result<(), AppError> {
        let trainer = TrainerState {
            version: self.version,
            epoch: self.plan.epoch(),
            applied: self.plan.applied_units(),
            samples_applied: self.samples_applied,
            optimizer: self.optimizer.state().clone(),
        };
        checkpoint::save(&self.state, self.id, &self.model, &self.params, &trainer).await?;
        self.updates_since_checkpoint = 0;
        Ok(())
    }

    /// Stores the final model and its metrics, marks the project finished and lets its providers go.
    async fn finish(&mut self) -> Result<(), AppError> {
        let file = checkpoint::params_file(&self.model, &self.params, self.version)?;
        self.state.store().put(&crate::api::projects::model_key(self.id), bytes::Bytes::from(file)).await?;
        let metrics = super::metrics_json(&self.state, self.id).await?;
        self.state.store().put(&super::metrics_key(self.id), bytes::Bytes::from(metrics)).await?;
        sqlx::query("UPDATE projects SET state = 'finished', updated_at = ? WHERE id = ? AND state = 'running'")
            .bind(now_unix())
            .bind(self.id)
            .execute(self.state.db())
            .await?;
        tracing::info!(project = self.id, version = self.version, "training finished");
        self.finished = true;
        self.detach_all(Detach::Finished);
        self.publish_status();
        self.state.training().forget(self.id);
        Ok(())
    }

    fn detach_all(&mut self, reason: Detach) {
        let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        for id in ids {
            if let Some(record) = self.drop_lease(id) {
                let _ = self.providers.get(&record.provider).map(|p| {
                    p.tx.try_send(ToProvider::Cancel(CancelLease { lease_id: id, reason: reason.to_string() }))
                });
            }
        }
        for (_, p) in self.providers.drain() {
            let _ = p.tx.try_send(ToProvider::Detach(reason.clone()));
            metrics::gauge!("daig_providers_connected").decrement(1.0);
        }
    }

    async fn stop(&mut self, command: Command) {
        // Buffered contributions are not applied: their batches are leased again after a resume.
        if command != Command::Cancel
            && let Err(e) = self.save_checkpoint().await
        {
            tracing::error!(project = self.id, "cannot checkpoint while stopping: {e}");
        }
        let reason = match command {
            Command::Pause => Detach::Paused,
            Command::Cancel => Detach::Cancelled,
            Command::Shutdown => Detach::ShuttingDown,
        };
        self.detach_all(reason);
        self.publish_status();
    }

    fn on_tick(&mut self) -> Result<(), AppError> {
        let now = Instant::now();
        let expired: Vec<LeaseId> = self.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            tracing::info!(project = self.id, lease = %id, "lease expired");
            self.cancel_lease(id, "its deadline passed");
        }
        self.fill_all();
        self.publish_status();
        Ok(())
    }

    /// Publishes the live status for the API. It lists every provider, so it runs on the tick (twice a second)
    /// and at the ends of training, not after every join or update: with thousands of providers that would
    /// make joining quadratic.
    fn publish_status(&self) {
        let total = u64::from(self.settings.epochs.max(1)) * self.plan.total().max(1) as u64;
        let done = self.plan.epoch().min(u64::from(self.settings.epochs)) * self.plan.total() as u64
            + if self.finished { 0 } else { self.plan.applied() as u64 };
        let providers = self
            .providers
            .iter()
            .map(|(id, p)| LiveProvider {
                id: id.0,
                backend: format!("{:?}", p.backend),
                adapter: p.adapter.clone(),
                samples_per_sec: p.speed.unwrap_or(0.0),
                contributions_applied: p.applied,
                site_key: p.site_key.clone(),
                connected_at_unix: p.connected_at,
            })
            .collect();
        self.status_tx.send_replace(LiveStatus {
            running: !self.finished,
            version: self.version,
            epoch: self.plan.epoch(),
            progress: (done as f64 / total as f64).clamp(0.0, 1.0),
            samples_applied: self.samples_applied,
            providers,
            updates_per_sec: self.update_interval.map(|s| if s > 0.0 { 1.0 / s } else { 0.0 }),
        });
    }
}
