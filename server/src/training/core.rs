//! The training core of one project: a synchronous state machine that does no I/O and reads no clock.
//!
//! It owns the providers at work, their leases (sized by each provider's measured speed, with deadlines),
//! the contribution checks, the staleness weights, the aggregation buffer, the parameters and the server
//! optimiser, and the epoch plan. Inputs are method calls carrying the current time in milliseconds
//! ([`Core::join`], [`Core::leave`], [`Core::heartbeat`], [`Core::contribution`], [`Core::evaluated`],
//! [`Core::tick`], [`Core::stop`]); what must happen outside comes out of [`Core::poll_effect`] as an
//! [`Effect`], in the order it must be carried out: send this message to that provider, persist this update
//! (before the acks that follow it), publish new parameters, evaluate, record metrics, checkpoint, finish.
//! The coordinator task (`coordinator.rs`) is the shell that feeds it events and carries its effects out;
//! tests drive it directly with simulated time.
//!
//! K-batch sync SGD: a contribution made on version `v'` while the core is at `v` is acked `Stale` when
//! `v - v' > max_staleness`; otherwise its delta joins the buffer with the weight `samples / (1 + v - v')`.
//! When the buffer holds `k` contributions (or the epoch's last batches), their aggregate `d` (the weighted mean,
//! or a robust rule; norm-bounded: `aggregate.rs`) becomes the pseudo-gradient `-d` of the server optimiser and
//! the version goes up by one.
//!
//! Exactly once: a contribution is buffered only for units its own open lease holds in the current epoch and
//! that the plan still has leased ([`EpochPlan::can_buffer`]); an update's units are applied in the plan only
//! after its [`Effect::Persist`], which the shell carries out before anything that follows it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use daig_shared::train::lease::LeaseWork;
use daig_shared::train::verify::{Comparison, Tolerance};
use daig_shared::train::{Evaluation, LocalResult, Optimizer};
use daig_shared::wire::{
    Ack, AckOutcome, Backend, CancelLease, ContributionInfo, Lease, LeaseId, LeaseProgress, ProjectId, ProviderId,
    RefusalReason, SampleSelection, ShardHash, ShardSamples,
};

use super::aggregate;
use super::checkpoint::TrainerState;
use super::plan::{EpochPlan, TrainShard, Unit};
use super::{Detach, LiveProvider, LiveStatus, ParamsSnapshot, ToProvider};
use daig_shared::api::training::Standing;

/// Leases a provider holds at once: one to train, one queued so that it never waits for a round trip.
pub const LEASE_DEPTH: usize = 2;
/// A lease's deadline: this many times its expected duration, and at least [`MIN_DEADLINE_MS`].
const DEADLINE_FACTOR: f64 = 6.0;
const MIN_DEADLINE_MS: u64 = 20_000;
/// The deadline of a provider's first lease, before its speed is known.
pub const FIRST_DEADLINE_MS: u64 = 120_000;
/// Heartbeats that report progress move a lease's deadline to one window after the report, but never past
/// this many windows after the lease was issued: a provider cannot keep batches from the others for ever.
pub const MAX_LEASE_WINDOWS: u64 = 3;
/// The least time between two evaluations of the validation split, besides those at epoch ends.
pub const EVAL_INTERVAL_MS: u64 = 500;
/// Cancelled leases remembered for their refusal message.
const MAX_CANCELLED_REMEMBERED: usize = 4096;
/// Leases in a row that a provider lets expire before it is moved out of the project, so that a provider that
/// never returns work cannot hold a provider slot (or batches) for long.
pub const MAX_EXPIRED_IN_A_ROW: u32 = 2;

/// Lease ids, unique across the server's projects and its restarts.
#[derive(Debug)]
pub struct LeaseIds(AtomicU64);

impl LeaseIds {
    /// Ids from `first` on. The server starts them at the current time in microseconds.
    pub fn starting_at(first: u64) -> LeaseIds {
        LeaseIds(AtomicU64::new(first))
    }

    pub fn next(&self) -> LeaseId {
        LeaseId(self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// The settings the core trains by (from the project's `TrainingSettings`).
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    pub project: ProjectId,
    pub batch_size: u32,
    pub k: u32,
    pub local_steps: u32,
    pub max_staleness: u32,
    pub epochs: u32,
    pub seed: u64,
    pub max_providers: u32,
    pub local_learning_rate: f32,
    pub checkpoint_every: u32,
    pub target_accuracy: Option<f64>,
    /// How contributions are combined, and the norm bound's factor (`None`: no bound).
    pub aggregation: aggregate::Aggregation,
    pub norm_bound_factor: Option<f64>,
    /// Whether the project has a validation split: without one only epoch ends are evaluated (recorded with
    /// no validation figures).
    pub has_validation: bool,
    /// Which contributions are checked by recomputation.
    pub checks: CheckPolicy,
    /// The share of wall-clock time evaluations between epoch ends may take (`eval_cpu_percent` / 100): after one that
    /// took `t`, the next waits `t * (1 / share - 1)`, and at least [`EVAL_INTERVAL_MS`].
    pub eval_share: f64,
    /// How long a lease should take at the provider's measured speed (`lease_seconds`); leases of several
    /// batches are cut to it.
    pub lease_secs: f64,
}

/// Which contributions the core has recomputed before they count ([`Effect::Verify`]).
///
/// A provider starts untrusted: each of its contributions is held until its check passes. After `trust_after`
/// passed checks it is trusted, and a random share of its contributions is checked, `(trust_after / (verified
/// + 1))²` and never less than `min_rate`; the others are applied at once. One failed check shuts it out.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckPolicy {
    /// Off only where every provider is trusted by construction (benchmarks of other parts).
    pub enabled: bool,
    pub trust_after: u32,
    pub min_rate: f64,
    /// The secret the random choice is drawn from, so that a provider cannot tell which contributions are
    /// checked.
    pub secret: u64,
    pub tolerance: Tolerance,
}

impl CheckPolicy {
    /// Verified contributions before a provider is trusted.
    pub const TRUST_AFTER: u32 = 5;
    /// The least share of a trusted provider's contributions that is checked.
    pub const MIN_RATE: f64 = 0.05;

    /// Checks on, at the default rates, with `secret`.
    pub fn on(secret: u64) -> CheckPolicy {
        CheckPolicy {
            enabled: true,
            trust_after: Self::TRUST_AFTER,
            min_rate: Self::MIN_RATE,
            secret,
            tolerance: Tolerance::DEFAULT,
        }
    }

    /// No checks: every contribution counts as it arrives.
    pub fn off() -> CheckPolicy {
        CheckPolicy { enabled: false, ..CheckPolicy::on(0) }
    }

    /// The share of contributions checked for a provider with `verified` passed checks.
    pub fn rate(&self, verified: u64) -> f64 {
        if !self.enabled {
            0.0
        } else if verified < u64::from(self.trust_after) {
            1.0
        } else {
            // BOINC-style adaptive replication: the share falls fast once a record exists (to the floor after
            // about 4 x trust_after checks), and the floor is what bounds what a trusted provider can slip in.
            (f64::from(self.trust_after) / (verified + 1) as f64).powi(2).max(self.min_rate)
        }
    }

    /// Whether a provider with `verified` passed checks is in good standing: trusted with speculative copies of
    /// others' batches.
    pub fn trusts(&self, verified: u64) -> bool {
        !self.enabled || verified >= u64::from(self.trust_after)
    }

    /// Whether the contribution for `lease` of a provider with `verified` passed checks is checked: a draw
    /// from the secret and the lease id, below [`CheckPolicy::rate`].
    pub fn picks(&self, verified: u64, lease: LeaseId) -> bool {
        let rate = self.rate(verified);
        let draw = (splitmix64(self.secret ^ lease.0) >> 11) as f64 / (1u64 << 53) as f64;
        rate >= 1.0 || draw < rate
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where training starts: a checkpoint's state, or fresh parameters at version 0.
pub struct Restore {
    pub params: Vec<f32>,
    pub optimizer: Optimizer,
    pub version: u64,
    pub epoch: u64,
    /// The batches of `epoch` already applied.
    pub applied: Vec<Unit>,
    pub samples_applied: u64,
}

/// A provider joining, as the core needs it.
#[derive(Debug, Clone)]
pub struct JoinInfo {
    pub id: ProviderId,
    pub backend: Backend,
    pub adapter: String,
    /// Its own estimate, shown to operators; leases are sized only by what the core measures.
    pub samples_per_sec: f32,
    pub cached: HashSet<ShardHash>,
    pub site_key: Option<String>,
    pub connected_at_unix: i64,
    /// Checks it passed before (its standing under a persistent key); 0 for a new provider.
    pub verified: u64,
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

/// One contribution of an update, as the ledger records it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedContribution {
    pub provider: ProviderId,
    pub site_key: Option<String>,
    pub lease: LeaseId,
    pub base_version: u64,
    pub samples: u32,
    pub mean_loss: f32,
    pub units: Vec<Unit>,
    /// Whether its check by recomputation passed before it was applied (else the sample skipped it).
    pub verified: bool,
}

/// An update to record: its version, the epoch it belongs to and what it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRecord {
    pub version: u64,
    pub epoch: u64,
    pub contributions: Vec<AppliedContribution>,
}

/// A row of the metrics history.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRecord {
    pub version: u64,
    pub epoch: u64,
    pub samples: u64,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

/// A contribution to recompute: the lease's work from the parameters the provider says it started from. The
/// reference result comes back through [`Core::verified`], which compares it with the contribution.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub lease: LeaseId,
    pub provider: ProviderId,
    /// The parameters of the contribution's base version.
    pub params: Arc<[f32]>,
    pub selection: Vec<ShardSamples>,
    pub work: LeaseWork,
}

/// An evaluation to run on the validation split; its result comes back through [`Core::evaluated`].
#[derive(Debug, Clone)]
pub struct EvalRequest {
    pub version: u64,
    pub epoch: u64,
    pub params: Vec<f32>,
    /// The evaluation of an epoch's last update: training moves on only after its result.
    pub epoch_end: bool,
}

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Send `message` to `provider`'s connection without waiting; if that fails, the shell calls
    /// [`Core::leave`]. After a `Detach` the provider is no longer the core's.
    Send { provider: ProviderId, message: ToProvider },
    /// Record the update (contributions and applied batches) in one transaction, before any effect after it.
    Persist(UpdateRecord),
    /// Hand these parameters to every provider of the project.
    Publish(Arc<ParamsSnapshot>),
    /// Evaluate these parameters and call [`Core::evaluated`] with the result.
    Evaluate(EvalRequest),
    /// Record a row of the metrics history.
    RecordMetrics(MetricsRecord),
    /// Store a checkpoint of these parameters and this state.
    Checkpoint { params: Vec<f32>, state: TrainerState },
    /// Training is done: store these parameters as the final model, the metrics beside it, and mark the
    /// project finished.
    Finish { version: u64, params: Vec<f32> },
    /// Recompute this contribution on the reference trainer and call [`Core::verified`] with the result.
    Verify(VerifyRequest),
    /// `provider` passed a check: the shell adds it to the standing of its persistent identity.
    CheckPassed { provider: ProviderId },
    /// `provider` failed a check and is shut out: the shell records why, withdraws its credit and refuses it
    /// (its connection is told with a `Detach` after this effect).
    ShutOut { provider: ProviderId, reason: String },
}

struct Provider {
    backend: Backend,
    adapter: String,
    site_key: Option<String>,
    cached: HashSet<ShardHash>,
    leases: Vec<LeaseId>,
    /// Samples per second, smoothed, as measured from its contributions; `None` until the first.
    speed: Option<f64>,
    applied: u64,
    connected_at_unix: i64,
    /// Its checks by recomputation passed, including those before it joined (its standing).
    verified: u64,
    /// Its checks that passed in this project.
    verified_here: u64,
    /// Its contributions applied without a check.
    unchecked: u64,
    /// Its contributions held until their check.
    held: usize,
    /// Its leases that expired since its last contribution.
    expired_in_a_row: u32,
}

/// An open lease.
#[derive(Debug, Clone)]
struct LeaseRecord {
    provider: ProviderId,
    units: Vec<Unit>,
    samples: u32,
    /// The version the lease was issued on: a contribution must start from it or a later one.
    params_version: u64,
    issued_ms: u64,
    deadline_ms: u64,
    window_ms: u64,
    steps_done: u32,
    epoch: u64,
    /// A copy of units another lease holds.
    speculative: bool,
}

/// An open lease as tests and the status see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLease {
    pub id: LeaseId,
    pub provider: ProviderId,
    pub units: Vec<Unit>,
    pub speculative: bool,
    pub deadline_ms: u64,
}

struct Buffered {
    contribution: AppliedContribution,
}

/// A contribution held until its check by recomputation.
struct Held {
    provider: ProviderId,
    record: LeaseRecord,
    info: ContributionInfo,
    delta: Vec<f32>,
}

/// Where an epoch's end stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpochEnd {
    /// Training within an epoch.
    None,
    /// The epoch's last update is applied; its evaluation waits for the one running.
    Waiting,
    /// The epoch's last update is being evaluated.
    Evaluating,
}

/// The training state machine of one project (see the module docs).
pub struct Core {
    config: CoreConfig,
    shards: Vec<TrainShard>,
    lease_ids: Arc<LeaseIds>,
    params: Vec<f32>,
    optimizer: Optimizer,
    version: u64,
    plan: EpochPlan,
    samples_applied: u64,
    aggregator: aggregate::Aggregator,
    buffer: Vec<Buffered>,
    leases: HashMap<LeaseId, LeaseRecord>,
    /// Why recent leases were cancelled, for the refusal of a contribution already on its way.
    cancelled: HashMap<LeaseId, &'static str>,
    providers: HashMap<ProviderId, Provider>,
    /// Contributions waiting for their check, by lease.
    held: HashMap<LeaseId, Held>,
    /// The parameters of the versions a contribution may still start from (the last `max_staleness + 1`),
    /// kept while checks are on.
    history: VecDeque<(u64, Arc<[f32]>)>,
    updates_since_checkpoint: u32,
    /// The training loss of the updates since the last metrics row: sum of loss * samples, and samples.
    train_loss: (f64, u64),
    eval_running: bool,
    last_eval_ms: Option<u64>,
    /// No periodic evaluation before this time: the evaluation budget (see [`CoreConfig::eval_share`]).
    next_eval_ms: u64,
    /// The last version sent to evaluation: a periodic evaluation waits for a newer one.
    last_eval_version: Option<u64>,
    epoch_end: EpochEnd,
    last_update_ms: Option<u64>,
    /// Seconds between updates, smoothed.
    update_interval: Option<f64>,
    finished: bool,
    stopped: bool,
    effects: VecDeque<Effect>,
}

impl Core {
    /// A core at `restore`'s state over the train `shards`.
    pub fn new(config: CoreConfig, shards: Vec<TrainShard>, restore: Restore, lease_ids: Arc<LeaseIds>) -> Core {
        let plan = EpochPlan::new(restore.epoch, config.seed, config.batch_size, shards.clone(), &restore.applied);
        let mut history = VecDeque::new();
        if config.checks.enabled {
            history.push_back((restore.version, Arc::from(restore.params.as_slice())));
        }
        let aggregator = aggregate::Aggregator::new(config.aggregation, restore.params.len(), config.norm_bound_factor);
        Core {
            config,
            shards,
            lease_ids,
            aggregator,
            params: restore.params,
            optimizer: restore.optimizer,
            version: restore.version,
            plan,
            samples_applied: restore.samples_applied,
            buffer: Vec::new(),
            leases: HashMap::new(),
            cancelled: HashMap::new(),
            providers: HashMap::new(),
            held: HashMap::new(),
            history,
            updates_since_checkpoint: 0,
            train_loss: (0.0, 0),
            eval_running: false,
            last_eval_ms: None,
            next_eval_ms: 0,
            last_eval_version: None,
            epoch_end: EpochEnd::None,
            last_update_ms: None,
            update_interval: None,
            finished: false,
            stopped: false,
            effects: VecDeque::new(),
        }
    }

    /// Starts training: a plan restored complete (a crash right after the last checkpoint of an epoch) moves
    /// on at once.
    pub fn start(&mut self, now_ms: u64) {
        self.after_update(now_ms);
    }

    /// The next thing to do, oldest first.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn epoch(&self) -> u64 {
        self.plan.epoch()
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The current parameters as providers receive them.
    pub fn snapshot(&self) -> Arc<ParamsSnapshot> {
        snapshot(self.version, &self.params)
    }

    /// Whether training is over (finished, or stopped by a command): the shell stops feeding events.
    pub fn is_done(&self) -> bool {
        self.finished || self.stopped
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Batches applied in the current epoch.
    pub fn applied_in_epoch(&self) -> usize {
        self.plan.applied()
    }

    /// Batches in an epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.total()
    }

    /// The providers at work.
    pub fn provider_count(&self) -> usize {
        self.providers.len()
    }

    /// The open leases, in id order.
    pub fn open_leases(&self) -> Vec<OpenLease> {
        let mut open: Vec<OpenLease> = self
            .leases
            .iter()
            .map(|(&id, l)| OpenLease {
                id,
                provider: l.provider,
                units: l.units.clone(),
                speculative: l.speculative,
                deadline_ms: l.deadline_ms,
            })
            .collect();
        open.sort_by_key(|l| l.id);
        open
    }

    /// A provider joins: it gets leases at once (as `Send` effects), or an error saying why it cannot join.
    ///
    /// # Errors
    /// The project has its maximum of providers, or training is over.
    pub fn join(&mut self, now_ms: u64, info: JoinInfo) -> Result<(), String> {
        if self.is_done() {
            return Err("the project is no longer training".to_owned());
        }
        if self.providers.len() >= self.config.max_providers as usize {
            return Err(format!("the project has its maximum of {} providers", self.config.max_providers));
        }
        let id = info.id;
        let provider = Provider {
            backend: info.backend,
            adapter: info.adapter,
            site_key: info.site_key,
            cached: info.cached,
            leases: Vec::new(),
            speed: None,
            applied: 0,
            connected_at_unix: info.connected_at_unix,
            verified: info.verified,
            verified_here: 0,
            unchecked: 0,
            held: 0,
            expired_in_a_row: 0,
        };
        if let Some(old) = self.providers.insert(id, provider) {
            // The same id joining twice is a new session of it: its old leases return.
            for lease in old.leases {
                self.drop_lease(lease);
            }
        } else {
            metrics::gauge!("daig_providers_connected").increment(1.0);
        }
        tracing::info!(project = self.config.project.0, provider = %id, "provider joined");
        self.fill(id, now_ms);
        Ok(())
    }

    /// A provider left (its socket closed, or the shell could not send to it): its leases return.
    pub fn leave(&mut self, now_ms: u64, provider: ProviderId) {
        if let Some(p) = self.providers.remove(&provider) {
            let returned = p.leases.len();
            for lease in p.leases {
                self.drop_lease(lease);
            }
            metrics::gauge!("daig_providers_connected").decrement(1.0);
            tracing::info!(
                project = self.config.project.0, provider = %provider, returned,
                "provider left; its leases return to the queue"
            );
            self.fill_all(now_ms);
        }
    }

    /// A provider reports progress on its leases: each lease that advanced gets a new deadline one window from
    /// now, within [`MAX_LEASE_WINDOWS`] of its issue. Progress beyond a lease's steps is ignored.
    pub fn heartbeat(&mut self, now_ms: u64, provider: ProviderId, leases: &[LeaseProgress]) {
        for progress in leases {
            if let Some(lease) = self.leases.get_mut(&progress.lease_id)
                && lease.provider == provider
                && progress.steps_done > lease.steps_done
                && progress.steps_done as usize <= lease.units.len()
            {
                lease.steps_done = progress.steps_done;
                let latest = lease.issued_ms.saturating_add(lease.window_ms.saturating_mul(MAX_LEASE_WINDOWS));
                lease.deadline_ms = lease.deadline_ms.max(now_ms.saturating_add(lease.window_ms).min(latest));
            }
        }
    }

    /// Expires leases past their deadline (their batches return) and hands out work to idle providers.
    pub fn tick(&mut self, now_ms: u64) {
        let mut expired: Vec<LeaseId> =
            self.leases.iter().filter(|(_, l)| l.deadline_ms <= now_ms).map(|(id, _)| *id).collect();
        expired.sort_unstable();
        let mut idle: Vec<ProviderId> = Vec::new();
        for id in expired {
            tracing::info!(project = self.config.project.0, lease = %id, "lease expired");
            if let Some(provider) = self.leases.get(&id).map(|l| l.provider)
                && let Some(p) = self.providers.get_mut(&provider)
            {
                p.expired_in_a_row += 1;
                if p.expired_in_a_row >= MAX_EXPIRED_IN_A_ROW && !idle.contains(&provider) {
                    idle.push(provider);
                }
            }
            self.cancel_lease(id, "its deadline passed");
        }
        for provider in idle {
            // A provider that returns nothing must not hold a slot: it is moved out (it may connect again).
            if let Some(p) = self.providers.remove(&provider) {
                tracing::info!(
                    project = self.config.project.0, %provider,
                    "provider moved out: it let {MAX_EXPIRED_IN_A_ROW} leases in a row expire"
                );
                for lease in p.leases {
                    self.cancel_lease(lease, "its provider was moved out of the project");
                }
                metrics::gauge!("daig_providers_connected").decrement(1.0);
                let why = format!("it let {MAX_EXPIRED_IN_A_ROW} leases in a row pass their deadlines");
                self.send(provider, ToProvider::Detach(Detach::Removed(why)));
            }
        }
        self.fill_all(now_ms);
        self.maybe_evaluate(now_ms);
    }

    /// A provider's contribution for one of its leases: refused, acked stale, held for its check by
    /// recomputation, or buffered (and applied with the buffer once it holds `k`).
    pub fn contribution(&mut self, now_ms: u64, provider: ProviderId, info: ContributionInfo, delta: &[f32]) {
        let lease_id = info.lease_id;
        let Some(record) = self.leases.get(&lease_id).filter(|l| l.provider == provider) else {
            let detail = match self.cancelled.get(&lease_id) {
                Some(reason) => format!("lease {lease_id} was cancelled: {reason}"),
                None => {
                    format!("lease {lease_id} is not open on this connection for project {}", self.config.project.0)
                }
            };
            self.refuse(provider, lease_id, RefusalReason::UnknownLease, detail);
            return;
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
        } else if info.base_version < record.params_version {
            Some((
                RefusalReason::Rejected,
                format!("its base version {} is older than the lease's {}", info.base_version, record.params_version),
            ))
        } else if record.epoch != self.plan.epoch() || !self.plan.can_buffer(&record.units) {
            Some((RefusalReason::Other, "its batches were already contributed by another provider".to_owned()))
        } else {
            None
        };
        if let Some((reason, detail)) = problem {
            self.drop_lease(lease_id);
            self.refuse(provider, lease_id, reason, detail);
            self.fill(provider, now_ms);
            return;
        }
        let staleness = self.version - info.base_version;
        if staleness > u64::from(self.config.max_staleness) {
            self.drop_lease(lease_id);
            self.ack_stale(provider, lease_id);
            self.fill(provider, now_ms);
            return;
        }
        let Some(record) = self.leases.remove(&lease_id) else { return };
        let elapsed = (now_ms.saturating_sub(record.issued_ms) as f64 / 1000.0).max(1e-3);
        let verified = match self.providers.get_mut(&provider) {
            Some(p) => {
                p.leases.retain(|l| *l != lease_id);
                p.expired_in_a_row = 0;
                let measured = f64::from(record.samples) / elapsed;
                p.speed = Some(match p.speed {
                    Some(old) if p.applied > 0 => 0.7 * old + 0.3 * measured,
                    _ => measured,
                });
                p.verified
            }
            None => 0,
        };
        if self.config.checks.picks(verified, lease_id) {
            self.hold(provider, lease_id, record, info, delta.to_vec());
        } else {
            metrics::counter!("daig_checks_total", "outcome" => "not_picked").increment(1);
            self.accept(now_ms, lease_id, record, &info, delta, false);
        }
        self.fill(provider, now_ms);
    }

    /// The reference result of an [`Effect::Verify`]: a contribution within rounding of it counts as if it
    /// had just arrived (and is acked stale if the wait made it too stale); any other shuts its provider out.
    /// A recomputation that failed on the server's side is no one's fault: the contribution is refused and
    /// its batches are leased again.
    pub fn verified(&mut self, now_ms: u64, lease: LeaseId, result: Result<LocalResult, String>) {
        let Some(held) = self.held.remove(&lease) else { return };
        let provider = held.provider;
        if let Some(p) = self.providers.get_mut(&provider) {
            p.held -= 1;
        }
        let reference = match result {
            Ok(reference) => reference,
            Err(e) => {
                tracing::error!(project = self.config.project.0, %lease, "cannot check a contribution: {e}");
                metrics::counter!("daig_checks_total", "outcome" => "error").increment(1);
                self.release_record(&held.record);
                let detail = format!("the server could not check it ({e}); its batches are leased again");
                self.refuse(provider, lease, RefusalReason::Other, detail);
                self.fill_all(now_ms);
                return;
            }
        };
        let comparison =
            Comparison::new(&held.delta, f64::from(held.info.mean_loss), &reference.delta, reference.mean_loss);
        let backend = self.providers.get(&provider).map_or("gone", |p| backend_name(p.backend));
        metrics::histogram!("daig_check_relative_distance", "backend" => backend).record(comparison.relative_distance);
        match comparison.check(&self.config.checks.tolerance) {
            Ok(()) => {
                metrics::counter!("daig_checks_total", "outcome" => "passed").increment(1);
                if let Some(p) = self.providers.get_mut(&provider) {
                    p.verified += 1;
                    p.verified_here += 1;
                }
                self.effects.push_back(Effect::CheckPassed { provider });
                let Held { record, info, delta, .. } = held;
                let staleness = self.version - info.base_version;
                if record.epoch != self.plan.epoch() || !self.plan.can_buffer(&record.units) {
                    self.release_record(&record);
                    let detail = "its batches were already contributed by another provider".to_owned();
                    self.refuse(provider, lease, RefusalReason::Other, detail);
                } else if staleness > u64::from(self.config.max_staleness) {
                    self.release_record(&record);
                    self.ack_stale(provider, lease);
                } else {
                    self.accept(now_ms, lease, record, &info, &delta, true);
                }
                self.fill(provider, now_ms);
            }
            Err(why) => {
                metrics::counter!("daig_checks_total", "outcome" => "failed").increment(1);
                self.release_record(&held.record);
                let detail = format!("it is not the computation its lease asked for: {why}");
                self.refuse(provider, lease, RefusalReason::Rejected, detail.clone());
                self.shut_out(now_ms, provider, detail);
            }
        }
    }

    /// Holds a contribution and asks for its check.
    fn hold(
        &mut self,
        provider: ProviderId,
        lease: LeaseId,
        record: LeaseRecord,
        info: ContributionInfo,
        delta: Vec<f32>,
    ) {
        let Some(params) = self.history.iter().find(|(v, _)| *v == info.base_version).map(|(_, p)| Arc::clone(p))
        else {
            // Unreachable: the history holds every version within the staleness bound.
            self.release_record(&record);
            self.ack_stale(provider, lease);
            return;
        };
        let request = VerifyRequest {
            lease,
            provider,
            params,
            selection: self.selection(&record.units),
            work: LeaseWork {
                batch_size: self.config.batch_size as usize,
                local_steps: record.units.len(),
                learning_rate: self.config.local_learning_rate,
                seed: lease.0,
            },
        };
        if let Some(p) = self.providers.get_mut(&provider) {
            p.held += 1;
        }
        self.held.insert(lease, Held { provider, record, info, delta });
        self.effects.push_back(Effect::Verify(request));
    }

    /// Buffers a contribution (for `record`'s provider) that passed its checks, `verified` if its
    /// recomputation was one of them, and applies the buffer once it holds `k`.
    fn accept(
        &mut self,
        now_ms: u64,
        lease_id: LeaseId,
        record: LeaseRecord,
        info: &ContributionInfo,
        delta: &[f32],
        verified: bool,
    ) {
        let provider = record.provider;
        let staleness = self.version - info.base_version;
        let site_key = match self.providers.get_mut(&provider) {
            Some(p) => {
                p.unchecked += u64::from(!verified);
                p.site_key.clone()
            }
            None => None,
        };
        self.plan.buffer(&record.units);
        // Other copies of these batches can no longer win.
        let mut copies: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.units.iter().any(|u| record.units.contains(u)))
            .map(|(id, _)| *id)
            .collect();
        copies.sort_unstable();
        for copy in copies {
            self.cancel_lease(copy, "another provider contributed these batches first");
        }
        let weight = aggregate::weight(info.sample_count, staleness);
        self.aggregator.push(delta, weight, record.units.len() as u32);
        self.buffer.push(Buffered {
            contribution: AppliedContribution {
                provider,
                site_key,
                lease: lease_id,
                base_version: info.base_version,
                samples: info.sample_count,
                mean_loss: info.mean_loss,
                units: record.units,
                verified,
            },
        });
        if self.buffer.len() >= self.config.k as usize || self.plan.all_contributed() {
            self.apply_update(now_ms);
            self.after_update(now_ms);
        }
    }

    /// Shuts `provider` out after a failed check: its leases return, its held contributions are dropped, and
    /// so is the buffer if it holds one of its contributions (they cannot be taken out of the running sum; the
    /// others' batches are leased again and their providers told why).
    fn shut_out(&mut self, now_ms: u64, provider: ProviderId, reason: String) {
        tracing::warn!(project = self.config.project.0, %provider, "provider shut out: {reason}");
        metrics::counter!("daig_providers_shut_out_total").increment(1);
        let mut held: Vec<LeaseId> =
            self.held.iter().filter(|(_, h)| h.provider == provider).map(|(id, _)| *id).collect();
        held.sort_unstable();
        for lease in held {
            if let Some(h) = self.held.remove(&lease) {
                self.release_record(&h.record);
            }
        }
        if self.buffer.iter().any(|b| b.contribution.provider == provider) {
            for b in std::mem::take(&mut self.buffer) {
                let b = b.contribution;
                self.plan.unbuffer(&b.units);
                if b.provider != provider {
                    let detail = "dropped with the contribution of a provider that was shut out in the same update; \
                                  its batches are leased again"
                        .to_owned();
                    self.refuse(b.provider, b.lease, RefusalReason::Other, detail);
                }
            }
            self.aggregator.discard();
        }
        // Recorded (credit withdrawn, key and address refused) before the provider is told: whoever it tells
        // finds the records done.
        self.effects.push_back(Effect::ShutOut { provider, reason: reason.clone() });
        if let Some(p) = self.providers.remove(&provider) {
            for lease in p.leases {
                self.drop_lease(lease);
            }
            metrics::gauge!("daig_providers_connected").decrement(1.0);
            self.send(provider, ToProvider::Detach(Detach::ShutOut(reason)));
        }
        self.fill_all(now_ms);
    }

    fn ack_stale(&mut self, provider: ProviderId, lease_id: LeaseId) {
        metrics::counter!("daig_contributions_total", "outcome" => "stale").increment(1);
        let ack = Ack { lease_id, outcome: AckOutcome::Stale { current_version: self.version } };
        self.send(provider, ToProvider::Ack(ack));
    }

    /// Returns the units of a lease that is no longer in `leases` (a held contribution's) to the plan.
    fn release_record(&mut self, record: &LeaseRecord) {
        if record.epoch == self.plan.epoch() {
            self.plan.release(&record.units);
        }
    }

    /// The samples of `units`, shard by shard, as a lease names them.
    fn selection(&self, units: &[Unit]) -> Vec<ShardSamples> {
        let mut selection: Vec<ShardSamples> = Vec::new();
        for unit in units {
            let shard = self.plan.shards()[unit.shard as usize].hash;
            let indices = self.plan.samples(*unit);
            match selection.last_mut() {
                Some(last) if last.shard == shard => last.indices.extend_from_slice(indices),
                _ => selection.push(ShardSamples { shard, indices: indices.to_vec() }),
            }
        }
        selection
    }

    /// The result of an [`Effect::Evaluate`]: recorded as a metrics row; after an epoch's last update, the
    /// epoch ends (open leases cancelled, next plan, checkpoint) and training finishes or goes on.
    pub fn evaluated(&mut self, now_ms: u64, request: &EvalRequest, result: Result<Evaluation, String>) {
        self.eval_running = false;
        // Its cost, queueing for an evaluation thread included, sets how long the next periodic one waits.
        let took = now_ms.saturating_sub(self.last_eval_ms.unwrap_or(now_ms));
        let share = self.config.eval_share.clamp(0.001, 1.0);
        let rest = (took as f64 * (1.0 / share - 1.0)).min(u64::MAX as f64) as u64;
        self.next_eval_ms = now_ms.saturating_add(rest.max(EVAL_INTERVAL_MS));
        let accuracy = result.as_ref().ok().and_then(|e| e.accuracy);
        self.record_eval(request.version, request.epoch, result);
        if self.stopped || self.finished {
            return;
        }
        match (self.epoch_end, request.epoch_end) {
            (EpochEnd::Evaluating, true) => {
                self.epoch_end = EpochEnd::None;
                let reached = matches!(
                    (self.config.target_accuracy, accuracy),
                    (Some(target), Some(a)) if a >= target
                );
                self.next_epoch(now_ms, request.epoch, reached);
            }
            (EpochEnd::Waiting, false) => self.evaluate_epoch_end(now_ms),
            _ => {}
        }
    }

    /// Stops training for `command`: a checkpoint (unless cancelled) and every provider let go. Buffered
    /// contributions are not applied: their batches are leased again after a resume.
    pub fn stop(&mut self, command: Command) {
        if self.is_done() {
            return;
        }
        if command != Command::Cancel {
            self.checkpoint();
        }
        let reason = match command {
            Command::Pause => Detach::Paused,
            Command::Cancel => Detach::Cancelled,
            Command::Shutdown => Detach::ShuttingDown,
        };
        self.detach_all(&reason);
        self.stopped = true;
    }

    /// Lets every provider go after an error outside the core (the shell stops training). Effects still
    /// queued behind the one that failed are dropped: after a failed `Persist` its acks, parameters and any
    /// checkpoint would claim an update the database lacks. Only the detach messages remain.
    pub fn abort(&mut self, why: String) {
        self.effects.clear();
        self.detach_all(&Detach::Removed(why));
        self.stopped = true;
    }

    /// The live status for the API at `now_ms`.
    pub fn status(&self) -> LiveStatus {
        let epochs = u64::from(self.config.epochs.max(1));
        let total = epochs * self.plan.total().max(1) as u64;
        let done = self.plan.epoch().min(u64::from(self.config.epochs)) * self.plan.total() as u64
            + if self.finished { 0 } else { self.plan.applied() as u64 };
        let mut providers: Vec<LiveProvider> = self
            .providers
            .iter()
            .map(|(id, p)| LiveProvider {
                id: id.0,
                backend: format!("{:?}", p.backend),
                adapter: p.adapter.clone(),
                samples_per_sec: p.speed.unwrap_or(0.0),
                contributions_applied: p.applied,
                site_key: p.site_key.clone(),
                connected_at_unix: p.connected_at_unix,
                verified: p.verified_here,
                unchecked: p.unchecked,
                held: p.held as u64,
                standing: if self.config.checks.trusts(p.verified) { Standing::Trusted } else { Standing::New },
            })
            .collect();
        providers.sort_by_key(|p| p.id);
        LiveStatus {
            running: !self.finished,
            version: self.version,
            epoch: self.plan.epoch(),
            progress: (done as f64 / total as f64).clamp(0.0, 1.0),
            samples_applied: self.samples_applied,
            providers,
            updates_per_sec: self.update_interval.map(|s| if s > 0.0 { 1.0 / s } else { 0.0 }),
        }
    }

    /// Sends `provider` leases until it holds [`LEASE_DEPTH`] (counting its contributions held for a check) or
    /// nothing is left to lease. A provider whose speed is not measured yet gets leases of one batch; only a
    /// trusted one gets speculative copies of others' batches.
    fn fill(&mut self, id: ProviderId, now_ms: u64) {
        while let Some(p) = self.providers.get(&id) {
            // A new provider's held contributions count against its leases in flight: it never has more than
            // LEASE_DEPTH pieces of work unverified. A trusted one keeps training while a sampled check of its
            // work waits, up to LEASE_DEPTH held besides its leases.
            let trusted = self.config.checks.trusts(p.verified);
            let held = if trusted { p.held.saturating_sub(LEASE_DEPTH) } else { p.held };
            if p.leases.len() + held >= LEASE_DEPTH || self.is_done() {
                return;
            }
            let batch = f64::from(self.config.batch_size.max(1));
            let max_units = match p.speed {
                Some(speed) => {
                    ((speed * self.config.lease_secs / batch).floor() as u32).clamp(1, self.config.local_steps)
                }
                None => 1,
            };
            let speculate = self.config.checks.trusts(p.verified);
            let held: HashSet<Unit> =
                p.leases.iter().filter_map(|l| self.leases.get(l)).flat_map(|l| l.units.iter().copied()).collect();
            let Some(pick) = self.plan.pick(max_units, &p.cached, &held, now_ms, speculate) else { return };
            let selection = self.selection(&pick.units);
            let samples: u32 = selection.iter().map(|s| s.indices.len() as u32).sum();
            let window_ms = match p.speed {
                Some(speed) => ((f64::from(samples) / speed * DEADLINE_FACTOR * 1000.0) as u64).max(MIN_DEADLINE_MS),
                None => FIRST_DEADLINE_MS,
            };
            let shards: Vec<ShardHash> = selection.iter().map(|s| s.shard).collect();
            let lease_id = self.lease_ids.next();
            let lease = Lease {
                lease_id,
                project_id: self.config.project,
                params_version: self.version,
                samples: SampleSelection::Shards(selection),
                local_steps: pick.units.len() as u32,
                learning_rate: self.config.local_learning_rate,
                deadline_ms: window_ms,
            };
            self.leases.insert(
                lease_id,
                LeaseRecord {
                    provider: id,
                    units: pick.units,
                    samples,
                    params_version: self.version,
                    issued_ms: now_ms,
                    deadline_ms: now_ms.saturating_add(window_ms),
                    window_ms,
                    steps_done: 0,
                    epoch: self.plan.epoch(),
                    speculative: pick.speculative,
                },
            );
            if let Some(p) = self.providers.get_mut(&id) {
                p.leases.push(lease_id);
                // It fetches the lease's shards now (or has them), so later leases prefer them.
                p.cached.extend(shards);
            }
            self.send(id, ToProvider::Lease(lease));
        }
    }

    fn fill_all(&mut self, now_ms: u64) {
        let mut ids: Vec<ProviderId> = self.providers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.fill(id, now_ms);
        }
    }

    fn send(&mut self, provider: ProviderId, message: ToProvider) {
        self.effects.push_back(Effect::Send { provider, message });
    }

    fn refuse(&mut self, provider: ProviderId, lease_id: LeaseId, reason: RefusalReason, detail: String) {
        tracing::info!(
            project = self.config.project.0, provider = %provider, lease = %lease_id, ?reason,
            "contribution refused: {detail}"
        );
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

    /// Applies the buffer as one update.
    fn apply_update(&mut self, now_ms: u64) {
        if self.buffer.is_empty() {
            return;
        }
        let buffer = std::mem::take(&mut self.buffer);
        let stepped = self.optimizer.step(&mut self.params, self.aggregator.finish());
        if let Err(e) = stepped {
            // The aggregate of finite deltas is finite, so only overflow in the optimiser gets here: nothing
            // changes and the batches are leased again.
            for b in &buffer {
                let b = &b.contribution;
                self.plan.unbuffer(&b.units);
                self.refuse(b.provider, b.lease, RefusalReason::NonFinite, format!("the update failed: {e}"));
            }
            return;
        }
        self.version += 1;
        if self.config.checks.enabled {
            self.history.push_back((self.version, Arc::from(self.params.as_slice())));
            let oldest = self.version.saturating_sub(u64::from(self.config.max_staleness));
            while self.history.front().is_some_and(|(v, _)| *v < oldest) {
                self.history.pop_front();
            }
        }
        let record = UpdateRecord {
            version: self.version,
            epoch: self.plan.epoch(),
            contributions: buffer.into_iter().map(|b| b.contribution).collect(),
        };
        for b in &record.contributions {
            self.plan.apply(&b.units);
            self.samples_applied += u64::from(b.samples);
            self.train_loss.0 += f64::from(b.mean_loss) * f64::from(b.samples);
            self.train_loss.1 += u64::from(b.samples);
            if let Some(p) = self.providers.get_mut(&b.provider) {
                p.applied += 1;
            }
        }
        let acks: Vec<(ProviderId, LeaseId)> = record.contributions.iter().map(|b| (b.provider, b.lease)).collect();
        self.effects.push_back(Effect::Persist(record));
        for (provider, lease_id) in acks {
            metrics::counter!("daig_contributions_total", "outcome" => "applied").increment(1);
            let outcome = AckOutcome::Applied { new_version: self.version };
            self.send(provider, ToProvider::Ack(Ack { lease_id, outcome }));
        }
        metrics::counter!("daig_updates_total").increment(1);
        self.effects.push_back(Effect::Publish(self.snapshot()));
        if let Some(last) = self.last_update_ms.replace(now_ms) {
            let secs = now_ms.saturating_sub(last) as f64 / 1000.0;
            self.update_interval = Some(self.update_interval.map_or(secs, |old| 0.8 * old + 0.2 * secs));
        }
        self.updates_since_checkpoint += 1;
    }

    /// Epoch ends, evaluation and checkpoints after an update.
    fn after_update(&mut self, now_ms: u64) {
        if self.is_done() || self.epoch_end != EpochEnd::None {
            return;
        }
        if self.plan.is_complete() {
            // The epoch's last update: evaluate it, then move on (in `evaluated`).
            if self.eval_running {
                self.epoch_end = EpochEnd::Waiting;
            } else {
                self.evaluate_epoch_end(now_ms);
            }
            return;
        }
        if self.plan.all_contributed() && !self.buffer.is_empty() {
            // Only reachable after a refused update; apply what is left.
            self.apply_update(now_ms);
            self.after_update(now_ms);
            return;
        }
        if self.updates_since_checkpoint >= self.config.checkpoint_every {
            self.checkpoint();
        }
        self.maybe_evaluate(now_ms);
    }

    fn evaluate_epoch_end(&mut self, now_ms: u64) {
        self.epoch_end = EpochEnd::Evaluating;
        self.eval_running = true;
        self.last_eval_ms = Some(now_ms);
        self.effects.push_back(Effect::Evaluate(EvalRequest {
            version: self.version,
            epoch: self.plan.epoch() + 1,
            params: self.params.clone(),
            epoch_end: true,
        }));
    }

    /// The epoch whose last update was evaluated ends: its remaining leases (copies of applied batches) are
    /// cancelled, the next epoch's plan made and checkpointed, and training finishes or goes on.
    fn next_epoch(&mut self, now_ms: u64, epoch: u64, reached: bool) {
        let mut open: Vec<LeaseId> = self.leases.keys().copied().collect();
        open.sort_unstable();
        for id in open {
            self.cancel_lease(id, "the epoch is complete");
        }
        self.plan = EpochPlan::new(epoch, self.config.seed, self.config.batch_size, self.shards.clone(), &[]);
        self.checkpoint();
        tracing::info!(project = self.config.project.0, epoch, version = self.version, "epoch done");
        if epoch >= u64::from(self.config.epochs) || reached {
            self.finish();
        } else {
            self.fill_all(now_ms);
        }
    }

    fn maybe_evaluate(&mut self, now_ms: u64) {
        if !self.config.has_validation
            || self.eval_running
            || self.is_done()
            || now_ms < self.next_eval_ms
            || self.last_eval_version == Some(self.version)
        {
            return;
        }
        self.eval_running = true;
        self.last_eval_ms = Some(now_ms);
        self.last_eval_version = Some(self.version);
        self.effects.push_back(Effect::Evaluate(EvalRequest {
            version: self.version,
            epoch: self.plan.epoch(),
            params: self.params.clone(),
            epoch_end: false,
        }));
    }

    fn record_eval(&mut self, version: u64, epoch: u64, result: Result<Evaluation, String>) {
        let (val_loss, val_accuracy) = match result {
            Ok(e) => (Some(e.loss), e.accuracy),
            Err(e) => {
                if self.config.has_validation {
                    tracing::warn!(project = self.config.project.0, "evaluation failed: {e}");
                }
                (None, None)
            }
        };
        let train_loss = (self.train_loss.1 > 0).then(|| self.train_loss.0 / self.train_loss.1 as f64);
        self.train_loss = (0.0, 0);
        self.effects.push_back(Effect::RecordMetrics(MetricsRecord {
            version,
            epoch,
            samples: self.samples_applied,
            train_loss,
            val_loss,
            val_accuracy,
        }));
    }

    fn checkpoint(&mut self) {
        let state = TrainerState {
            version: self.version,
            epoch: self.plan.epoch(),
            applied: self.plan.applied_units(),
            samples_applied: self.samples_applied,
            optimizer: self.optimizer.state().clone(),
        };
        self.effects.push_back(Effect::Checkpoint { params: self.params.clone(), state });
        self.updates_since_checkpoint = 0;
    }

    /// Stores the final model and lets the providers go.
    fn finish(&mut self) {
        tracing::info!(project = self.config.project.0, version = self.version, "training finished");
        self.effects.push_back(Effect::Finish { version: self.version, params: self.params.clone() });
        self.finished = true;
        self.detach_all(&Detach::Finished);
    }

    fn detach_all(&mut self, reason: &Detach) {
        self.held.clear();
        let mut ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(record) = self.drop_lease(id) {
                let cancel = CancelLease { lease_id: id, reason: reason.to_string() };
                self.send(record.provider, ToProvider::Cancel(cancel));
            }
        }
        let mut providers: Vec<ProviderId> = self.providers.keys().copied().collect();
        providers.sort_unstable();
        for id in providers {
            self.providers.remove(&id);
            self.send(id, ToProvider::Detach(reason.clone()));
            metrics::gauge!("daig_providers_connected").decrement(1.0);
        }
    }
}

/// The backend's name as metrics label it.
fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::WebGpu => "webgpu",
        Backend::Vulkan => "vulkan",
        Backend::Metal => "metal",
        Backend::Dx12 => "dx12",
        Backend::Gl => "gl",
        Backend::Cpu => "cpu",
    }
}

/// Parameters as providers receive them: little-endian `f32` bytes, encoded once per version.
pub fn snapshot(version: u64, params: &[f32]) -> Arc<ParamsSnapshot> {
    Arc::new(ParamsSnapshot {
        version,
        bytes: bytes::Bytes::from(daig_shared::wire::f32s_to_le_bytes(params).into_owned()),
    })
}

#[cfg(test)]
mod tests;
