//! The provider's side of the wire protocol as a sans-IO state machine: the native provider
//! (`native/`) and the browser provider drive the same [`Session`] with their own sockets, clocks and
//! storage.
//!
//! A session lives for one connection. Its driver
//! - feeds it every binary message the server sends ([`Session::handle_bytes`]),
//! - sends every frame [`Session::poll_transmit`] gives, in order, one binary message each,
//! - carries out every [`Event`] [`Session::poll_event`] gives: build an engine for a model
//!   ([`Event::Welcome`]), load or store a shard in its persistent cache ([`Event::LoadShard`],
//!   [`Event::StoreShard`]), train a lease ([`Event::Train`], with [`TrainJob::run`]) and report the outcome
//!   with [`Session::training_finished`],
//! - calls [`Session::handle_timeout`] once the time [`Session::poll_timeout`] names has come,
//! - and closes the socket once [`Session::is_finished`].
//!
//! Time is a millisecond counter the driver passes in (monotonic, any origin), so that nothing here needs a
//! clock, a thread or a file: the module builds for `wasm32-unknown-unknown`. The session never fails
//! towards its driver: a frame out of sequence, a transfer that breaks the rules or a shard whose bytes do
//! not match its hash queues a `Goodbye(ProtocolError)` and ends the session, which [`Event::Closed`]
//! reports.
//!
//! # Rules it implements
//!
//! - Leases are queued and trained one at a time, in order. A lease starts once the session holds
//!   parameters of at least its `params_version` and every shard it names; it trains from the newest
//!   parameters held and reports their version as the contribution's `base_version`.
//! - Shards a lease lacks are asked for as soon as the lease arrives, so that they travel while the lease
//!   before it trains; a shard must be asked for before it is sent, and its SHA-256 must be its name.
//! - A second `Welcome` moves the provider to another project: queued leases, parameters and contributions
//!   not yet started are dropped, and the result of any lease in training is discarded.
//! - Contributions are sent in the order they finish; other frames may go between their chunks.
//! - A heartbeat listing the open leases goes out every heartbeat interval; a server silent for
//!   [`SILENT_INTERVALS`] intervals is taken for dead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use daig_shared::data::ShardView;
use daig_shared::model::{Limits, Model};
use daig_shared::train::lease::{self, LeaseInputs};
use daig_shared::wire::{
    Ack, AckOutcome, Backend, CancelLease, Chunk, ContributionInfo, DEFAULT_MAX_TRANSFER_BYTES, DeviceCapacity, Frame,
    Goodbye, GoodbyeReason, Heartbeat, Hello, Lease, LeaseId, LeaseProgress, MAX_CHUNK_BYTES, Normalisation,
    PROTOCOL_VERSION, ProjectId, ProviderId, ProviderKey, Reassembler, SampleSelection, ShardHash, ShardRequest,
    TrainingInfo, Transfer, TransferId, TransferKind, TransferStart, Welcome, f32s_from_le_bytes,
};
use sha2::{Digest as _, Sha256};

use crate::engine::{Engine, EngineError};
use crate::gpu::trainer::{DropoutSeed, StepResult};

/// How many heartbeat intervals of silence from the server end a session.
pub const SILENT_INTERVALS: u64 = 3;

/// The most shard hashes a [`Hello`] lists, so that it stays far below the frame limit (33 bytes each).
pub const MAX_HELLO_SHARDS: usize = 8192;

/// The content hash of a shard file, as the server names it: SHA-256 of its bytes.
pub fn shard_hash(bytes: &[u8]) -> ShardHash {
    ShardHash(Sha256::digest(bytes).into())
}

/// What the driver knows before connecting.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Where the provider computes, for [`Hello::backend`].
    pub backend: Backend,
    /// The adapter's description, for [`Hello::adapter`].
    pub adapter: String,
    /// The provider's measured speed in samples per second (0 when unknown), for [`Hello::samples_per_sec`].
    pub samples_per_sec: f32,
    /// The site key, when the server requires one.
    pub site_key: Option<String>,
    /// The project to join; `None` lets the server choose.
    pub project_id: Option<ProjectId>,
    /// The provider's persistent key, for [`Hello::provider_key`]: its standing and credit survive reconnects.
    pub provider_key: Option<ProviderKey>,
    /// What the device can hold, for [`Hello::device`]; unstated by default.
    pub device: DeviceCapacity,
    /// Shards the driver's persistent cache holds (native: the cache directory). The session asks for them
    /// with [`Event::LoadShard`] and lists them in its `Hello`.
    pub stored_shards: Vec<ShardHash>,
    /// The largest shard transfer accepted.
    pub max_shard_bytes: u64,
    /// The heartbeat interval until a `Welcome` gives the project's.
    pub initial_heartbeat_interval_ms: u32,
    /// The limits a model from the server is loaded under.
    pub model_limits: Limits,
}

impl SessionConfig {
    /// A configuration with no site key, no project, no stored shards and default limits.
    pub fn new(backend: Backend, adapter: impl Into<String>) -> SessionConfig {
        SessionConfig {
            backend,
            adapter: adapter.into(),
            samples_per_sec: 0.0,
            site_key: None,
            project_id: None,
            provider_key: None,
            device: DeviceCapacity::default(),
            stored_shards: Vec::new(),
            max_shard_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            initial_heartbeat_interval_ms: 10_000,
            model_limits: Limits::default(),
        }
    }
}

/// Shards held in memory, by hash, under a byte budget; outlives sessions ([`Session::into_memory`]) so
/// that a reconnection does not fetch them again.
#[derive(Debug)]
pub struct ShardMemory {
    shards: HashMap<ShardHash, Resident>,
    max_bytes: u64,
    bytes: u64,
    /// A use counter: the shard with the smallest `last_use` is evicted first.
    clock: u64,
}

#[derive(Debug)]
struct Resident {
    bytes: Arc<[u8]>,
    last_use: u64,
}

impl ShardMemory {
    /// An empty store that evicts the least recently used shards beyond `max_bytes` (shards a queued lease
    /// needs are kept even beyond it).
    pub fn new(max_bytes: u64) -> ShardMemory {
        ShardMemory { shards: HashMap::new(), max_bytes, bytes: 0, clock: 0 }
    }

    /// The shards held, in no order.
    pub fn hashes_unsorted(&self) -> impl Iterator<Item = &ShardHash> {
        self.shards.keys()
    }

    /// Whether the shard is held.
    pub fn contains(&self, shard: &ShardHash) -> bool {
        self.shards.contains_key(shard)
    }

    /// The bytes held in all shards.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn get(&mut self, shard: &ShardHash) -> Option<Arc<[u8]>> {
        self.clock += 1;
        let resident = self.shards.get_mut(shard)?;
        resident.last_use = self.clock;
        Some(resident.bytes.clone())
    }

    /// Adds a shard, then evicts the least recently used ones that are not `pinned` until the store fits.
    fn insert(&mut self, shard: ShardHash, bytes: Arc<[u8]>, pinned: &HashSet<ShardHash>) {
        self.clock += 1;
        let len = bytes.len() as u64;
        if let Some(old) = self.shards.insert(shard, Resident { bytes, last_use: self.clock }) {
            self.bytes -= old.bytes.len() as u64;
        }
        self.bytes += len;
        while self.bytes > self.max_bytes {
            let victim = self
                .shards
                .iter()
                .filter(|(hash, _)| **hash != shard && !pinned.contains(*hash))
                .min_by_key(|(_, resident)| resident.last_use)
                .map(|(hash, _)| *hash);
            let Some(victim) = victim else { break };
            if let Some(old) = self.shards.remove(&victim) {
                self.bytes -= old.bytes.len() as u64;
            }
        }
    }
}

/// Names a [`TrainJob`] so that a result can be matched to it (and a late one ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobId(pub u64);

/// A lease made ready to train: the samples gathered in lease order, normalised, with their labels, and
/// the parameters to start from.
#[derive(Clone, Debug)]
pub struct TrainJob {
    /// Pass it back to [`Session::training_finished`].
    pub job_id: JobId,
    pub lease_id: LeaseId,
    /// The version of `params`, reported as the contribution's base version.
    pub base_version: u64,
    pub params: Arc<[f32]>,
    /// `[samples, input elements]`, normalised.
    pub features: Vec<f32>,
    /// `[samples, 1]` class indices for cross-entropy, `[samples, outputs]` targets otherwise (the layout of
    /// [`Engine::load_shard`]).
    pub labels: Vec<f32>,
    pub samples: usize,
    pub batch_size: usize,
    pub local_steps: usize,
    pub learning_rate: f32,
    /// The lease id as the seed, from step 0, so that any provider draws the same masks for a lease.
    pub dropout: DropoutSeed,
}

impl TrainJob {
    /// Trains the job on `engine`: loads its parameters and samples, then runs its local steps over the
    /// samples in order (indices `0..samples`).
    ///
    /// # Errors
    /// What the engine reports: samples or labels that do not fit its model.
    pub async fn run(&self, engine: &mut Engine) -> Result<StepResult, EngineError> {
        engine.load_params(&self.params)?;
        engine.load_shard(&self.features, &self.labels)?;
        let indices: Vec<u32> = (0..self.samples as u32).collect();
        engine.train(&indices, self.batch_size, self.local_steps, self.learning_rate, self.dropout).await
    }
}

/// Who ended a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// The server sent a `Goodbye`.
    Server,
    /// This side did: [`Session::close`], a protocol error, a failed training or a silent server.
    Provider,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Closed {
    pub initiator: Initiator,
    pub reason: GoodbyeReason,
    pub detail: String,
}

/// Something the driver must do or may want to show.
#[derive(Clone, Debug)]
pub enum Event {
    /// The server accepted the provider (or moved it to another project when `replaced`): build an engine
    /// for `model` (dropping any earlier one), with `training.batch_size` as its largest batch.
    Welcome {
        provider_id: ProviderId,
        project_id: ProjectId,
        model: Arc<Model>,
        training: TrainingInfo,
        replaced: bool,
    },
    /// Read this shard from the persistent cache and pass it to [`Session::provide_shard`], or call
    /// [`Session::shard_unavailable`].
    LoadShard(ShardHash),
    /// A shard arrived from the server and matches its hash: keep it in the persistent cache.
    StoreShard { shard: ShardHash, bytes: Arc<[u8]> },
    /// Train this (with [`TrainJob::run`]) and pass the outcome to [`Session::training_finished`]. Only one
    /// job is given at a time, unless the job in training was cancelled or its project left.
    Train(Box<TrainJob>),
    /// The last chunk of a contribution was handed to the driver.
    ContributionSent { lease_id: LeaseId, sample_count: u32, mean_loss: f32 },
    /// What the server did with a contribution.
    Acked(Ack),
    /// The server cancelled a lease; any work on it is discarded.
    LeaseCancelled(CancelLease),
    /// Something odd but harmless, for the log.
    Warning(String),
    /// The session is over; send what [`Session::poll_transmit`] still gives and close the socket.
    Closed(Closed),
}

/// Counts over one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub leases_received: u64,
    pub contributions_sent: u64,
    pub applied: u64,
    pub stale: u64,
    pub refused: u64,
    /// Samples trained in finished leases, counted once per use (as [`ContributionInfo::sample_count`]).
    pub samples_trained: u64,
}

impl std::ops::AddAssign for SessionStats {
    fn add_assign(&mut self, other: SessionStats) {
        self.leases_received += other.leases_received;
        self.contributions_sent += other.contributions_sent;
        self.applied += other.applied;
        self.stale += other.stale;
        self.refused += other.refused;
        self.samples_trained += other.samples_trained;
    }
}

/// The parameters held, at a version.
#[derive(Debug)]
struct Params {
    version: u64,
    values: Arc<[f32]>,
}

/// What holds between a `Welcome` and the next.
#[derive(Debug)]
struct Joined {
    provider_id: ProviderId,
    project_id: ProjectId,
    model: Arc<Model>,
    training: TrainingInfo,
    params: Option<Params>,
    queue: VecDeque<Lease>,
    /// The lease whose [`TrainJob`] the driver holds.
    in_flight: Option<InFlight>,
}

/// The job the driver trains.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    job_id: JobId,
    lease_id: LeaseId,
    base_version: u64,
}

/// A finished contribution waiting to be sent, or being sent.
#[derive(Debug)]
struct Outgoing {
    info: ContributionInfo,
    payload: LePayload,
    /// The next chunk to send, once the start frame is out.
    next_chunk: Option<usize>,
    transfer_id: TransferId,
}

/// A delta as little-endian bytes: the `f32`s themselves on little-endian hosts, a converted copy otherwise.
#[derive(Debug)]
enum LePayload {
    Native(Vec<f32>),
    Converted(Vec<u8>),
}

impl LePayload {
    fn new(values: Vec<f32>) -> LePayload {
        if cfg!(target_endian = "little") {
            LePayload::Native(values)
        } else {
            LePayload::Converted(values.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            LePayload::Native(values) => bytemuck::cast_slice(values),
            LePayload::Converted(bytes) => bytes,
        }
    }
}

/// The provider's state for one connection; see the module docs.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    memory: ShardMemory,
    /// `None` until the first `Welcome`.
    joined: Option<Joined>,
    closed: Option<Closed>,
    /// Counts `Welcome`s, so that a transfer started before the last one can be recognised.
    generation: u64,
    reassembler: Reassembler,
    /// The generation in which the open incoming transfer started.
    incoming_generation: u64,
    /// Frames other than contribution chunks, which go first.
    control: VecDeque<Frame<'static>>,
    /// Finished contributions; the front one may be on its way.
    outgoing: VecDeque<Outgoing>,
    next_transfer_id: u32,
    next_job_id: u64,
    events: VecDeque<Event>,
    heartbeat_interval_ms: u64,
    next_heartbeat_ms: u64,
    last_received_ms: u64,
    /// Shards in the persistent cache and not in memory.
    stored: HashSet<ShardHash>,
    /// Shards asked of the driver's cache.
    loading: HashSet<ShardHash>,
    /// Shards asked of the server.
    requested: HashSet<ShardHash>,
    /// Contributions sent or queued whose `Ack` has not come.
    awaiting_ack: HashSet<LeaseId>,
    stats: SessionStats,
}

impl Session {
    /// A session for a new connection; its first frame to send is the [`Hello`].
    pub fn new(config: SessionConfig, memory: ShardMemory, now_ms: u64) -> Session {
        let mut cached: Vec<ShardHash> = config.stored_shards.iter().chain(memory.hashes_unsorted()).copied().collect();
        cached.sort_unstable();
        cached.dedup();
        cached.truncate(MAX_HELLO_SHARDS);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            backend: config.backend,
            adapter: config.adapter.clone(),
            samples_per_sec: config.samples_per_sec,
            cached_shards: cached,
            site_key: config.site_key.clone(),
            project_id: config.project_id,
            provider_key: config.provider_key,
            device: config.device,
        };
        let stored = config.stored_shards.iter().filter(|h| !memory.contains(h)).copied().collect();
        let interval = u64::from(config.initial_heartbeat_interval_ms.max(1));
        Session {
            reassembler: Reassembler::new(0),
            memory,
            joined: None,
            closed: None,
            generation: 0,
            incoming_generation: 0,
            control: VecDeque::from([Frame::Hello(hello)]),
            outgoing: VecDeque::new(),
            next_transfer_id: 0,
            next_job_id: 0,
            events: VecDeque::new(),
            heartbeat_interval_ms: interval,
            next_heartbeat_ms: now_ms + interval,
            last_received_ms: now_ms,
            stored,
            loading: HashSet::new(),
            requested: HashSet::new(),
            awaiting_ack: HashSet::new(),
            stats: SessionStats::default(),
            config,
        }
    }

    /// Gives back the shards held in memory, for the next session.
    pub fn into_memory(self) -> ShardMemory {
        self.memory
    }

    /// Counts over this session.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The provider id and project of the last `Welcome`.
    pub fn joined(&self) -> Option<(ProviderId, ProjectId)> {
        self.joined.as_ref().map(|j| (j.provider_id, j.project_id))
    }

    /// How the session ended, once it has.
    pub fn closed(&self) -> Option<&Closed> {
        self.closed.as_ref()
    }

    /// Whether the session is over and its last frame (a `Goodbye`, if any) was handed out: close the socket.
    pub fn is_finished(&self) -> bool {
        self.closed.is_some() && self.control.is_empty()
    }

    /// The leases held and not yet contributed, in order: the one in training first.
    pub fn open_leases(&self) -> Vec<LeaseId> {
        let Some(joined) = &self.joined else { return Vec::new() };
        joined.in_flight.map(|job| job.lease_id).into_iter().chain(joined.queue.iter().map(|l| l.lease_id)).collect()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has a frame.
    pub fn has_transmit(&self) -> bool {
        !self.control.is_empty() || (self.closed.is_none() && !self.outgoing.is_empty())
    }

    /// The next frame to send: control frames (hello, heartbeats, shard requests, goodbye) first, then the
    /// chunks of finished contributions, one transfer at a time.
    pub fn poll_transmit(&mut self) -> Option<Frame<'static>> {
        if let Some(frame) = self.control.pop_front() {
            return Some(frame);
        }
        if self.closed.is_some() {
            return None;
        }
        let out = self.outgoing.front_mut()?;
        let Some(index) = out.next_chunk else {
            out.next_chunk = Some(0);
            let total_bytes = out.payload.bytes().len() as u64;
            let start = TransferStart {
                transfer_id: out.transfer_id,
                kind: TransferKind::Contribution(out.info.clone()),
                total_bytes,
            };
            if total_bytes == 0 {
                self.contribution_sent();
            }
            return Some(Frame::TransferStart(start));
        };
        let bytes = out.payload.bytes();
        let start = index * MAX_CHUNK_BYTES;
        let end = (start + MAX_CHUNK_BYTES).min(bytes.len());
        let chunk = Chunk {
            transfer_id: out.transfer_id,
            index: u32::try_from(index).expect("a delta has fewer than 2^32 chunks"),
            bytes: bytes[start..end].to_vec().into(),
        };
        out.next_chunk = Some(index + 1);
        if end == bytes.len() {
            self.contribution_sent();
        }
        Some(Frame::Chunk(chunk))
    }

    fn contribution_sent(&mut self) {
        if let Some(out) = self.outgoing.pop_front() {
            self.stats.contributions_sent += 1;
            self.events.push_back(Event::ContributionSent {
                lease_id: out.info.lease_id,
                sample_count: out.info.sample_count,
                mean_loss: out.info.mean_loss,
            });
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next (a heartbeat to send, or the server's
    /// silence to judge); `None` once the session is over.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.closed.is_some() {
            return None;
        }
        Some(self.next_heartbeat_ms.min(self.silence_deadline_ms()))
    }

    fn silence_deadline_ms(&self) -> u64 {
        self.last_received_ms + SILENT_INTERVALS * self.heartbeat_interval_ms
    }

    /// Sends a heartbeat when one is due and ends the session when the server has been silent too long.
    /// Feed the frames that have arrived first: a driver that was busy must not mistake its own delay for
    /// the server's silence.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.closed.is_some() {
            return;
        }
        if now_ms >= self.silence_deadline_ms() {
            let silent = now_ms - self.last_received_ms;
            self.close_with(GoodbyeReason::Timeout, format!("nothing came from the server for {silent} ms"));
            return;
        }
        if now_ms >= self.next_heartbeat_ms {
            let leases = self.open_leases().into_iter().map(|lease_id| LeaseProgress { lease_id, steps_done: 0 });
            self.control.push_back(Frame::Heartbeat(Heartbeat { leases: leases.collect() }));
            self.next_heartbeat_ms = now_ms + self.heartbeat_interval_ms;
        }
    }

    /// Ends the session with a `Goodbye` (e.g. `Normal` when the user stops the provider): frames not yet
    /// sent are dropped, so the `Goodbye` goes next, even between the chunks of a contribution.
    pub fn close(&mut self, reason: GoodbyeReason, detail: impl Into<String>) {
        if self.closed.is_none() {
            self.close_with(reason, detail.into());
        }
    }

    fn close_with(&mut self, reason: GoodbyeReason, detail: String) {
        self.control.clear();
        self.outgoing.clear();
        self.control.push_back(Frame::Goodbye(Goodbye { reason, detail: detail.clone() }));
        self.end(Closed { initiator: Initiator::Provider, reason, detail });
    }

    fn end(&mut self, closed: Closed) {
        self.reassembler.abort();
        // Work that can no longer be sent is not worth doing.
        self.events.retain(|e| !matches!(e, Event::Train(_) | Event::LoadShard(_) | Event::Welcome { .. }));
        self.events.push_back(Event::Closed(closed.clone()));
        self.closed = Some(closed);
    }

    /// Feeds one binary message from the server.
    pub fn handle_bytes(&mut self, bytes: &[u8], now_ms: u64) {
        match Frame::decode(bytes) {
            Ok(frame) => self.handle_frame(frame, now_ms),
            Err(e) if self.closed.is_none() => {
                self.close_with(
                    GoodbyeReason::ProtocolError,
                    format!("a message from the server does not decode: {e}"),
                );
            }
            Err(_) => {}
        }
    }

    /// Feeds one frame from the server.
    pub fn handle_frame(&mut self, frame: Frame<'_>, now_ms: u64) {
        if self.closed.is_some() {
            return;
        }
        self.last_received_ms = now_ms;
        let handled = match frame {
            Frame::Goodbye(goodbye) => {
                self.control.clear();
                self.outgoing.clear();
                self.end(Closed { initiator: Initiator::Server, reason: goodbye.reason, detail: goodbye.detail });
                return;
            }
            Frame::Heartbeat(_) => Ok(()),
            Frame::Welcome(welcome) => self.on_welcome(welcome, now_ms),
            Frame::Lease(lease) => self.on_lease(lease),
            Frame::CancelLease(cancel) => self.on_cancel(cancel),
            Frame::Ack(ack) => self.on_ack(ack),
            Frame::TransferStart(start) => self.on_transfer_start(&start),
            Frame::Chunk(chunk) => match self.reassembler.push(&chunk) {
                Ok(Some(transfer)) => self.on_transfer(transfer),
                Ok(None) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            other @ (Frame::Hello(_) | Frame::ShardRequest(_)) => {
                Err(format!("the server sent {}, which only a provider sends", other.name()))
            }
        };
        match handled {
            Ok(()) => self.advance(),
            Err(detail) => self.close_with(GoodbyeReason::ProtocolError, detail),
        }
    }

    fn joined_mut(&mut self, frame: &str) -> Result<&mut Joined, String> {
        self.joined.as_mut().ok_or_else(|| format!("the server sent {frame} before Welcome"))
    }

    fn on_welcome(&mut self, welcome: Welcome, now_ms: u64) -> Result<(), String> {
        let Welcome { provider_id, project_id, model_json, training } = welcome;
        let model = Model::from_json(&model_json, &self.config.model_limits)
            .map_err(|e| format!("the model of project {project_id} does not load here: {e}"))?;
        check_training(&model, &training)?;
        if let Some(wanted) = self.config.project_id
            && self.joined.is_none()
            && wanted != project_id
        {
            self.events.push_back(Event::Warning(format!(
                "asked for project {wanted} but the server assigned project {project_id}"
            )));
        }
        let replaced = self.joined.is_some();
        if replaced {
            // A contribution on its way cannot be stopped between chunks; the others are dropped.
            let sending = self.outgoing.front().is_some_and(|o| o.next_chunk.is_some());
            for dropped in self.outgoing.drain(usize::from(sending)..) {
                self.awaiting_ack.remove(&dropped.info.lease_id);
            }
        }
        self.generation += 1;
        let model = Arc::new(model);
        self.heartbeat_interval_ms = u64::from(training.heartbeat_interval_ms);
        self.next_heartbeat_ms = now_ms + self.heartbeat_interval_ms;
        self.events.push_back(Event::Welcome {
            provider_id,
            project_id,
            model: model.clone(),
            training: training.clone(),
            replaced,
        });
        self.joined = Some(Joined {
            provider_id,
            project_id,
            model,
            training,
            params: None,
            queue: VecDeque::new(),
            in_flight: None,
        });
        Ok(())
    }

    fn on_lease(&mut self, lease: Lease) -> Result<(), String> {
        let lease_id = lease.lease_id;
        let known = self.open_leases().contains(&lease_id) || self.awaiting_ack.contains(&lease_id);
        let joined = self.joined_mut("Lease")?;
        if lease.project_id != joined.project_id {
            return Err(format!(
                "lease {lease_id} is for project {} but this provider joined project {}",
                lease.project_id, joined.project_id
            ));
        }
        if known {
            return Err(format!("lease {lease_id} was already given"));
        }
        if lease.local_steps == 0 {
            return Err(format!("lease {lease_id} asks for 0 local steps"));
        }
        if !lease.learning_rate.is_finite() {
            return Err(format!("lease {lease_id} has the learning rate {}", lease.learning_rate));
        }
        let shards = match &lease.samples {
            SampleSelection::Shards(shards) if shards.iter().any(|s| !s.indices.is_empty()) => shards,
            SampleSelection::Shards(_) => return Err(format!("lease {lease_id} has no samples")),
            SampleSelection::Indices(_) => {
                return Err(format!(
                    "lease {lease_id} selects samples by dataset index; this provider trains on shards only"
                ));
            }
        };
        let hashes: Vec<ShardHash> = shards.iter().map(|s| s.shard).collect();
        joined.queue.push_back(lease);
        self.stats.leases_received += 1;
        for hash in hashes {
            self.ensure_shard(hash);
        }
        Ok(())
    }

    /// Makes sure a shard is in memory or on its way.
    fn ensure_shard(&mut self, shard: ShardHash) {
        if self.memory.contains(&shard) || self.loading.contains(&shard) || self.requested.contains(&shard) {
            return;
        }
        if self.stored.contains(&shard) {
            self.loading.insert(shard);
            self.events.push_back(Event::LoadShard(shard));
        } else {
            self.requested.insert(shard);
            self.control.push_back(Frame::ShardRequest(ShardRequest { shard }));
        }
    }

    fn on_cancel(&mut self, cancel: CancelLease) -> Result<(), String> {
        let lease_id = cancel.lease_id;
        let joined = self.joined_mut("CancelLease")?;
        let mut found = false;
        if joined.in_flight.is_some_and(|job| job.lease_id == lease_id) {
            joined.in_flight = None;
            found = true;
        }
        let queued = joined.queue.len();
        joined.queue.retain(|l| l.lease_id != lease_id);
        found |= joined.queue.len() != queued;
        // A contribution already on its way cannot be stopped between chunks; one waiting can.
        if let Some(pos) = self.outgoing.iter().position(|o| o.info.lease_id == lease_id && o.next_chunk.is_none()) {
            self.outgoing.remove(pos);
            self.awaiting_ack.remove(&lease_id);
            found = true;
        }
        if found {
            self.events.push_back(Event::LeaseCancelled(cancel));
        }
        Ok(())
    }

    fn on_ack(&mut self, ack: Ack) -> Result<(), String> {
        self.joined_mut("Ack")?;
        if !self.awaiting_ack.remove(&ack.lease_id) {
            self.events.push_back(Event::Warning(format!(
                "the server acknowledged lease {}, for which no contribution is awaiting an answer",
                ack.lease_id
            )));
            return Ok(());
        }
        match ack.outcome {
            AckOutcome::Applied { .. } => self.stats.applied += 1,
            AckOutcome::Stale { .. } => self.stats.stale += 1,
            AckOutcome::Refused { .. } => self.stats.refused += 1,
        }
        self.events.push_back(Event::Acked(ack));
        Ok(())
    }

    fn on_transfer_start(&mut self, start: &TransferStart) -> Result<(), String> {
        let joined = self.joined_mut("TransferStart")?;
        let limit = match &start.kind {
            TransferKind::Params { version } => {
                let expected = joined.training.param_count * 4;
                if start.total_bytes != expected {
                    return Err(format!(
                        "parameters of version {version} are {} bytes but the model's {} parameters take {expected}",
                        start.total_bytes, joined.training.param_count
                    ));
                }
                expected
            }
            TransferKind::Shard { shard } => {
                if !self.requested.contains(shard) {
                    return Err(format!("the server sent shard {shard}, which was not requested"));
                }
                self.config.max_shard_bytes
            }
            TransferKind::Contribution(_) => {
                return Err("the server started a contribution transfer, which only a provider sends".into());
            }
        };
        self.reassembler.set_max_transfer_bytes(limit);
        self.incoming_generation = self.generation;
        match self.reassembler.start(start) {
            Ok(Some(transfer)) => self.on_transfer(transfer),
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn on_transfer(&mut self, transfer: Transfer) -> Result<(), String> {
        match transfer.kind {
            TransferKind::Params { version } => {
                if self.incoming_generation != self.generation {
                    // Parameters of the project the provider was moved away from.
                    return Ok(());
                }
                let values = f32s_from_le_bytes(&transfer.bytes).map_err(|e| e.to_string())?;
                let joined = self.joined_mut("parameters")?;
                match &joined.params {
                    Some(held) if held.version > version => {
                        let held = held.version;
                        self.events.push_back(Event::Warning(format!(
                            "parameters of version {version} arrived after version {held}; kept {held}"
                        )));
                    }
                    _ => joined.params = Some(Params { version, values: values.into() }),
                }
                Ok(())
            }
            TransferKind::Shard { shard } => {
                self.requested.remove(&shard);
                check_shard(shard, &transfer.bytes)?;
                let bytes: Arc<[u8]> = transfer.bytes.into();
                self.keep_shard(shard, bytes.clone());
                self.events.push_back(Event::StoreShard { shard, bytes });
                Ok(())
            }
            TransferKind::Contribution(_) => unreachable!("refused when the transfer started"),
        }
    }

    fn keep_shard(&mut self, shard: ShardHash, bytes: Arc<[u8]>) {
        let pinned: HashSet<ShardHash> = self
            .joined
            .iter()
            .flat_map(|j| j.queue.iter())
            .flat_map(|lease| match &lease.samples {
                SampleSelection::Shards(shards) => shards.iter().map(|s| s.shard).collect(),
                SampleSelection::Indices(_) => Vec::new(),
            })
            .collect();
        self.memory.insert(shard, bytes, &pinned);
    }

    /// Answers [`Event::LoadShard`] with the bytes from the persistent cache.
    ///
    /// # Errors
    /// When the bytes are not the shard (a corrupt cache file, which the driver should delete); the session
    /// then asks the server for it.
    pub fn provide_shard(&mut self, shard: ShardHash, bytes: Vec<u8>) -> Result<(), String> {
        self.loading.remove(&shard);
        self.stored.remove(&shard);
        if self.closed.is_some() {
            return Ok(());
        }
        if let Err(e) = check_shard(shard, &bytes) {
            self.ensure_shard(shard);
            return Err(e);
        }
        self.keep_shard(shard, bytes.into());
        self.advance();
        Ok(())
    }

    /// Answers [`Event::LoadShard`] when the persistent cache no longer holds the shard: the session asks
    /// the server for it.
    pub fn shard_unavailable(&mut self, shard: ShardHash) {
        self.loading.remove(&shard);
        self.stored.remove(&shard);
        if self.closed.is_none() {
            self.ensure_shard(shard);
        }
    }

    /// Reports the outcome of [`Event::Train`]. The result of a job whose lease was cancelled, or whose
    /// project was left, is ignored; a failed training ends the session with `Goodbye(InternalError)`, which
    /// returns its leases to the server.
    pub fn training_finished(&mut self, job_id: JobId, result: Result<StepResult, String>) {
        if self.closed.is_some() {
            return;
        }
        let Some(joined) = self.joined.as_mut() else { return };
        let Some(job) = joined.in_flight.filter(|job| job.job_id == job_id) else { return };
        joined.in_flight = None;
        let lease_id = job.lease_id;
        let param_count = joined.training.param_count;
        let result = match result {
            Ok(result) if result.delta.len() as u64 == param_count => result,
            Ok(result) => {
                let detail = format!(
                    "training lease {lease_id} gave {} values for {param_count} parameters",
                    result.delta.len()
                );
                self.close_with(GoodbyeReason::InternalError, detail);
                return;
            }
            Err(e) => {
                self.close_with(GoodbyeReason::InternalError, format!("training lease {lease_id} failed: {e}"));
                return;
            }
        };
        let info = ContributionInfo {
            lease_id,
            base_version: job.base_version,
            sample_count: u32::try_from(result.samples).unwrap_or(u32::MAX),
            mean_loss: result.mean_loss,
        };
        let transfer_id = TransferId(self.next_transfer_id);
        self.next_transfer_id = self.next_transfer_id.wrapping_add(1);
        self.stats.samples_trained += result.samples as u64;
        self.awaiting_ack.insert(lease_id);
        self.outgoing.push_back(Outgoing {
            info,
            payload: LePayload::new(result.delta),
            next_chunk: None,
            transfer_id,
        });
        self.advance();
    }

    /// Starts the next lease when nothing trains and it has what it needs.
    fn advance(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let Some(joined) = self.joined.as_mut() else { return };
        if joined.in_flight.is_some() {
            return;
        }
        let Some(lease) = joined.queue.front() else { return };
        let Some(params) = joined.params.as_ref().filter(|p| p.version >= lease.params_version) else { return };
        let SampleSelection::Shards(selection) = &lease.samples else { unreachable!("refused on arrival") };
        if !selection.iter().all(|s| self.memory.contains(&s.shard)) {
            return;
        }
        let memory = &mut self.memory;
        let gathered = lease::gather(&joined.model, &joined.training.normalisation, selection, |h| memory.get(&h));
        let LeaseInputs { features, labels, samples } = match gathered {
            Ok(gathered) => gathered,
            Err(e) => {
                let detail = format!("lease {}: {e}", lease.lease_id);
                self.close_with(GoodbyeReason::ProtocolError, detail);
                return;
            }
        };
        let job_id = JobId(self.next_job_id);
        self.next_job_id += 1;
        let job = TrainJob {
            job_id,
            lease_id: lease.lease_id,
            base_version: params.version,
            params: params.values.clone(),
            features,
            labels,
            samples,
            batch_size: joined.training.batch_size as usize,
            local_steps: lease.local_steps as usize,
            learning_rate: lease.learning_rate,
            dropout: DropoutSeed { seed: lease.lease_id.0, first_step: 0 },
        };
        joined.in_flight = Some(InFlight { job_id, lease_id: lease.lease_id, base_version: params.version });
        joined.queue.pop_front();
        self.events.push_back(Event::Train(Box::new(job)));
    }
}

/// Checks a `Welcome`'s training settings against its model.
fn check_training(model: &Model, training: &TrainingInfo) -> Result<(), String> {
    if model.params.total as u64 != training.param_count {
        return Err(format!(
            "the Welcome says {} parameters but its model has {}",
            training.param_count, model.params.total
        ));
    }
    if training.batch_size == 0 {
        return Err("the Welcome's batch size is 0".into());
    }
    if training.heartbeat_interval_ms == 0 {
        return Err("the Welcome's heartbeat interval is 0 ms".into());
    }
    let inputs = model.input_shape().elements().unwrap_or(0);
    match &training.normalisation {
        Normalisation::None => {}
        Normalisation::Global { offset, scale } => {
            if !(offset.is_finite() && scale.is_finite()) {
                return Err(format!("the normalisation's offset {offset} and scale {scale} must be finite"));
            }
        }
        Normalisation::PerFeature { offset, scale } => {
            if offset.len() != inputs || scale.len() != inputs {
                return Err(format!(
                    "the normalisation has {} offsets and {} scales for {inputs} input features",
                    offset.len(),
                    scale.len()
                ));
            }
            if !offset.iter().chain(scale).all(|v| v.is_finite()) {
                return Err("the normalisation's offsets and scales must be finite".into());
            }
        }
    }
    Ok(())
}

/// Checks that `bytes` are the shard named `shard`: its SHA-256 and a valid shard file.
fn check_shard(shard: ShardHash, bytes: &[u8]) -> Result<(), String> {
    let got = shard_hash(bytes);
    if got != shard {
        return Err(format!("shard {shard} arrived as {} bytes whose SHA-256 is {got}", bytes.len()));
    }
    ShardView::decode(bytes).map_err(|e| format!("shard {shard} is not a valid shard: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use daig_shared::data::{Dtype, LabelRef, ShardHeader, ShardLabels, ShardWriter};
    use daig_shared::wire::ShardSamples;
    use daig_shared::wire::{RefusalReason, transfer_frames};

    use super::*;

    /// 3 inputs, 2 classes: 8 parameters.
    const MODEL: &str = r#"{"input_shape": [3], "layers": [{"type": "dense", "units": 2}], "loss": "cross_entropy"}"#;
    const PARAMS: usize = 8;
    const PROJECT: ProjectId = ProjectId(7);
    const INTERVAL_MS: u32 = 1000;

    /// A shard of `n` u8 samples of 3 features (sample i is [i, 2i, 3i] + `base`), class i % 2.
    fn shard(n: u8, base: u8) -> (ShardHash, Vec<u8>) {
        let header = ShardHeader {
            feature_dtype: Dtype::U8,
            sample_shape: vec![3],
            sample_count: usize::from(n),
            labels: ShardLabels::Classes { count: 2 },
        };
        let mut writer = ShardWriter::new(Vec::new(), header).unwrap();
        for i in 0..n {
            writer.push(&[base + i, base + 2 * i, base + 3 * i], LabelRef::Class(u32::from(i % 2))).unwrap();
        }
        let bytes = writer.finish().unwrap();
        (shard_hash(&bytes), bytes)
    }

    fn config() -> SessionConfig {
        SessionConfig { project_id: Some(PROJECT), ..SessionConfig::new(Backend::Vulkan, "Test GPU") }
    }

    fn session() -> Session {
        let mut s = Session::new(config(), ShardMemory::new(1 << 20), 0);
        assert!(matches!(s.poll_transmit(), Some(Frame::Hello(_))));
        s
    }

    fn welcome(project: ProjectId, normalisation: Normalisation) -> Frame<'static> {
        Frame::Welcome(Welcome {
            provider_id: ProviderId(3),
            project_id: project,
            model_json: MODEL.into(),
            training: TrainingInfo {
                param_count: PARAMS as u64,
                batch_size: 2,
                heartbeat_interval_ms: INTERVAL_MS,
                normalisation,
            },
        })
    }

    fn params(version: u64, value: f32) -> Vec<Frame<'static>> {
        let bytes: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), PARAMS).flatten().collect();
        transfer_frames(TransferId(version as u32), TransferKind::Params { version }, &bytes)
            .map(Frame::into_owned)
            .collect()
    }

    fn shard_frames(hash: ShardHash, bytes: &[u8]) -> Vec<Frame<'static>> {
        transfer_frames(TransferId(100), TransferKind::Shard { shard: hash }, bytes).map(Frame::into_owned).collect()
    }

    fn lease(id: u64, params_version: u64, parts: Vec<(ShardHash, Vec<u32>)>) -> Frame<'static> {
        Frame::Lease(Lease {
            lease_id: LeaseId(id),
            project_id: PROJECT,
            params_version,
            samples: SampleSelection::Shards(
                parts.into_iter().map(|(shard, indices)| ShardSamples { shard, indices }).collect(),
            ),
            local_steps: 2,
            learning_rate: 0.5,
            deadline_ms: 60_000,
        })
    }

    /// Feeds frames as the server would send them: encoded, one message each.
    fn feed(s: &mut Session, frames: impl IntoIterator<Item = Frame<'static>>, now_ms: u64) {
        for frame in frames {
            s.handle_bytes(&frame.encode(), now_ms);
        }
    }

    fn sent(s: &mut Session) -> Vec<Frame<'static>> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn train_jobs(s: &mut Session) -> Vec<TrainJob> {
        events(s)
            .into_iter()
            .filter_map(|e| match e {
                Event::Train(job) => Some(*job),
                _ => None,
            })
            .collect()
    }

    fn result(job: &TrainJob, delta: f32) -> Result<StepResult, String> {
        Ok(StepResult {
            delta: vec![delta; job.params.len()],
            mean_loss: 0.25,
            accuracy: None,
            samples: job.samples * job.local_steps / 2,
        })
    }

    fn goodbye(frames: &[Frame<'_>]) -> Option<(GoodbyeReason, String)> {
        frames.iter().find_map(|f| match f {
            Frame::Goodbye(g) => Some((g.reason, g.detail.clone())),
            _ => None,
        })
    }

    /// A session with a Welcome, parameters of version 1 and one shard in memory.
    fn ready(shard_bytes: &[u8]) -> Session {
        let mut s = session();
        let hash = shard_hash(shard_bytes);
        feed(&mut s, [welcome(PROJECT, Normalisation::None)], 0);
        feed(&mut s, params(1, 0.5), 0);
        s.requested.insert(hash);
        feed(&mut s, shard_frames(hash, shard_bytes), 0);
        events(&mut s);
        s
    }

    #[test]
    fn hello_says_who_the_provider_is_and_which_shards_it_holds() {
        let (a, a_bytes) = shard(2, 0);
        let (b, _) = shard(3, 0);
        let mut memory = ShardMemory::new(1 << 20);
        memory.insert(a, a_bytes.into(), &HashSet::new());
        let config = SessionConfig {
            samples_per_sec: 1234.0,
            site_key: Some("site".into()),
            provider_key: Some(ProviderKey([3; 32])),
            stored_shards: vec![b, a],
            ..config()
        };
        let mut s = Session::new(config, memory, 0);
        let frames = sent(&mut s);
        let mut cached = vec![a, b];
        cached.sort();
        assert_eq!(
            frames,
            vec![Frame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                backend: Backend::Vulkan,
                adapter: "Test GPU".into(),
                samples_per_sec: 1234.0,
                cached_shards: cached,
                site_key: Some("site".into()),
                project_id: Some(PROJECT),
                provider_key: Some(ProviderKey([3; 32])),
                device: DeviceCapacity::default(),
            })]
        );
    }

    #[test]
    fn a_lease_asks_for_its_shard_trains_and_sends_its_contribution() {
        let (hash, bytes) = shard(4, 10);
        let mut s = session();
        feed(&mut s, [welcome(PROJECT, Normalisation::Global { offset: 10.0, scale: 0.5 })], 0);
        let welcomed = events(&mut s);
        assert!(matches!(
            &welcomed[..],
            [Event::Welcome { provider_id: ProviderId(3), project_id: PROJECT, replaced: false, training, .. }]
                if training.batch_size == 2
        ));
        feed(&mut s, params(1, 0.5), 10);
        feed(&mut s, [lease(40, 1, vec![(hash, vec![3, 0, 2])])], 20);
        assert_eq!(sent(&mut s), vec![Frame::ShardRequest(ShardRequest { shard: hash })]);
        assert!(train_jobs(&mut s).is_empty(), "no training before the shard arrives");

        feed(&mut s, shard_frames(hash, &bytes), 30);
        let events = events(&mut s);
        assert!(matches!(&events[0], Event::StoreShard { shard, bytes: b } if *shard == hash && **b == *bytes));
        let Event::Train(job) = &events[1] else { panic!("expected a job, got {events:?}") };
        assert_eq!((job.lease_id, job.base_version, job.samples), (LeaseId(40), 1, 3));
        assert_eq!((job.batch_size, job.local_steps, job.learning_rate), (2, 2, 0.5));
        assert_eq!(job.dropout, DropoutSeed { seed: 40, first_step: 0 });
        assert_eq!(&*job.params, &[0.5; PARAMS]);
        // Samples 3, 0, 2 of the shard, (x - 10) * 0.5.
        assert_eq!(job.features, vec![1.5, 3.0, 4.5, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]);
        assert_eq!(job.labels, vec![1.0, 0.0, 0.0]);
        assert_eq!(s.open_leases(), vec![LeaseId(40)]);

        s.training_finished(job.job_id, result(job, -0.125));
        let frames = sent(&mut s);
        let [Frame::TransferStart(start), Frame::Chunk(chunk)] = &frames[..] else { panic!("{frames:?}") };
        assert_eq!(start.total_bytes, PARAMS as u64 * 4);
        assert_eq!(
            start.kind,
            TransferKind::Contribution(ContributionInfo {
                lease_id: LeaseId(40),
                base_version: 1,
                sample_count: 3,
                mean_loss: 0.25
            })
        );
        assert_eq!((chunk.transfer_id, chunk.index), (start.transfer_id, 0));
        assert_eq!(f32s_from_le_bytes(&chunk.bytes).unwrap(), vec![-0.125; PARAMS]);
        assert!(matches!(&self::events(&mut s)[..], [Event::ContributionSent { lease_id: LeaseId(40), .. }]));
        assert!(s.open_leases().is_empty());

        feed(&mut s, [Frame::Ack(Ack { lease_id: LeaseId(40), outcome: AckOutcome::Applied { new_version: 2 } })], 40);
        assert_eq!(
            s.stats(),
            SessionStats {
                leases_received: 1,
                contributions_sent: 1,
                applied: 1,
                samples_trained: 3,
                ..SessionStats::default()
            }
        );
        assert!(!s.is_finished());
    }

    #[test]
    fn a_lease_waits_for_its_parameter_version_and_trains_from_the_newest() {
        let (hash, bytes) = shard(4, 0);
        let mut s = ready(&bytes);
        feed(&mut s, [lease(1, 3, vec![(hash, vec![0, 1])])], 0);
        assert!(train_jobs(&mut s).is_empty(), "version 1 is held, the lease needs 3");
        feed(&mut s, params(2, 2.0), 0);
        assert!(train_jobs(&mut s).is_empty());
        // A transfer in progress is not a version held.
        let v4 = params(4, 4.0);
        feed(&mut s, v4[..1].iter().cloned(), 0);
        assert!(train_jobs(&mut s).is_empty());
        feed(&mut s, v4[1..].iter().cloned(), 0);
        let jobs = train_jobs(&mut s);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].base_version, 4);
        assert_eq!(&*jobs[0].params, &[4.0; PARAMS]);

        // Older parameters arriving late do not replace newer ones.
        feed(&mut s, params(3, 3.0), 0);
        assert!(matches!(&events(&mut s)[..], [Event::Warning(w)] if w.contains("kept 4")));
        s.training_finished(jobs[0].job_id, result(&jobs[0], 0.0));
        feed(&mut s, [lease(2, 1, vec![(hash, vec![2])])], 0);
        let jobs = train_jobs(&mut s);
        assert_eq!(jobs[0].base_version, 4, "a lease on an older version trains from the newest held");
    }

    #[test]
    fn leases_are_trained_one_at_a_time_in_order_and_chunks_make_room_for_heartbeats() {
        let (hash, bytes) = shard(4, 0);
        let mut s = ready(&bytes);
        feed(&mut s, [lease(1, 1, vec![(hash, vec![0])]), lease(2, 1, vec![(hash, vec![1])])], 0);
        let jobs = train_jobs(&mut s);
        assert_eq!(jobs.iter().map(|j| j.lease_id).collect::<Vec<_>>(), vec![LeaseId(1)]);
        assert_eq!(s.open_leases(), vec![LeaseId(1), LeaseId(2)]);
        s.training_finished(jobs[0].job_id, result(&jobs[0], 1.0));
        let next = train_jobs(&mut s);
        assert_eq!(next[0].lease_id, LeaseId(2), "the next lease starts without waiting for the Ack");
        // The contribution's start frame, then a heartbeat due in between goes before its chunk.
        assert!(matches!(s.poll_transmit(), Some(Frame::TransferStart(_))));
        s.handle_timeout(u64::from(INTERVAL_MS));
        assert_eq!(
            s.poll_transmit(),
            Some(Frame::Heartbeat(Heartbeat { leases: vec![LeaseProgress { lease_id: LeaseId(2), steps_done: 0 }] }))
        );
        assert!(matches!(s.poll_transmit(), Some(Frame::Chunk(_))));
        assert_eq!(s.poll_transmit(), None);
    }

    #[test]
    fn a_cancelled_lease_is_dropped_whether_queued_or_training() {
        let (hash, bytes) = shard(4, 0);
        let mut s = ready(&bytes);
        feed(&mut s, [lease(1, 1, vec![(hash, vec![0])]), lease(2, 1, vec![(hash, vec![1])])], 0);
        feed(&mut s, [lease(3, 1, vec![(hash, vec![2])])], 0);
        let first = train_jobs(&mut s).remove(0);
        let cancel = |id| Frame::CancelLease(CancelLease { lease_id: LeaseId(id), reason: "expired".into() });
        feed(&mut s, [cancel(2)], 0);
        assert_eq!(s.open_leases(), vec![LeaseId(1), LeaseId(3)]);
        feed(&mut s, [cancel(1)], 0);
        let events = events(&mut s);
        assert!(matches!(&events[0], Event::LeaseCancelled(c) if c.lease_id == LeaseId(2)));
        assert!(matches!(&events[1], Event::LeaseCancelled(c) if c.lease_id == LeaseId(1)));
        let Event::Train(third) = &events[2] else { panic!("{events:?}") };
        assert_eq!(third.lease_id, LeaseId(3), "the next lease starts when the one training is cancelled");
        // The cancelled job's result is discarded: nothing is sent for it.
        s.training_finished(first.job_id, result(&first, 1.0));
        assert_eq!(sent(&mut s), vec![]);
        s.training_finished(third.job_id, result(third, 1.0));
        let frames = sent(&mut s);
        assert!(matches!(
            &frames[0],
            Frame::TransferStart(TransferStart {
                kind: TransferKind::Contribution(ContributionInfo { lease_id: LeaseId(3), .. }),
                ..
            })
        ));
        // A finished contribution not yet on its way is dropped too; an unknown lease is ignored.
        feed(&mut s, [lease(4, 1, vec![(hash, vec![3])])], 0);
        let fourth = train_jobs(&mut s).remove(0);
        s.training_finished(fourth.job_id, result(&fourth, 1.0));
        feed(&mut s, [cancel(4), cancel(99)], 0);
        assert_eq!(sent(&mut s), vec![]);
        assert!(!s.is_finished());
    }

    #[test]
    fn a_second_welcome_drops_leases_parameters_and_work_in_progress() {
        let (hash, bytes) = shard(4, 0);
        let mut s = ready(&bytes);
        feed(&mut s, [lease(1, 1, vec![(hash, vec![0])]), lease(2, 1, vec![(hash, vec![1])])], 0);
        feed(&mut s, [lease(3, 1, vec![(hash, vec![2])])], 0);
        // Lease 1's contribution is finished but not on its way, lease 2 trains, lease 3 waits.
        let first = train_jobs(&mut s).remove(0);
        s.training_finished(first.job_id, result(&first, 1.0));
        let old = train_jobs(&mut s).remove(0);
        assert_eq!(old.lease_id, LeaseId(2));
        let other = ProjectId(8);
        feed(&mut s, [welcome(other, Normalisation::None)], 0);
        assert!(
            matches!(&events(&mut s)[..], [Event::Welcome { project_id, replaced: true, .. }] if *project_id == other)
        );
        assert!(s.open_leases().is_empty());
        assert_eq!(s.joined(), Some((ProviderId(3), other)));
        s.training_finished(old.job_id, result(&old, 1.0));
        assert_eq!(sent(&mut s), vec![], "the old project's results are discarded");

        let new_lease = Frame::Lease(Lease {
            project_id: other,
            ..match lease(5, 1, vec![(hash, vec![0])]) {
                Frame::Lease(l) => l,
                _ => unreachable!(),
            }
        });
        feed(&mut s, [new_lease], 0);
        assert!(train_jobs(&mut s).is_empty(), "the old project's parameters were dropped");
        feed(&mut s, params(1, 9.0), 0);
        let jobs = train_jobs(&mut s);
        assert_eq!((jobs[0].lease_id, jobs[0].params[0]), (LeaseId(5), 9.0));
        // The shard is content-addressed and stays in memory across projects.
        assert!(sent(&mut s).is_empty());
    }

    #[test]
    fn frames_out_of_sequence_end_the_session_with_a_protocol_error() {
        let (hash, bytes) = shard(4, 0);
        type Script<'a> = Box<dyn Fn(&mut Session) + 'a>;
        let cases: Vec<(&str, Script<'_>)> = vec![
            ("Lease before Welcome", Box::new(|s| feed(s, [lease(1, 1, vec![(hash, vec![0])])], 0))),
            ("bytes that are no frame", Box::new(|s| s.handle_bytes(&[0xff, 0xff, 0xff], 0))),
            (
                "Hello",
                Box::new(|s| {
                    let mut other = Session::new(config(), ShardMemory::new(0), 0);
                    feed(s, other.poll_transmit(), 0);
                }),
            ),
            (
                "params larger than the model",
                Box::new(|s| {
                    feed(s, [welcome(PROJECT, Normalisation::None)], 0);
                    let bytes = vec![0u8; (PARAMS + 1) * 4];
                    feed(
                        s,
                        transfer_frames(TransferId(1), TransferKind::Params { version: 1 }, &bytes)
                            .map(Frame::into_owned),
                        0,
                    );
                }),
            ),
            (
                "a shard not asked for",
                Box::new(move |s| {
                    feed(s, [welcome(PROJECT, Normalisation::None)], 0);
                    feed(s, shard_frames(hash, &bytes), 0);
                }),
            ),
            (
                "a chunk with no transfer",
                Box::new(|s| {
                    feed(s, [welcome(PROJECT, Normalisation::None)], 0);
                    feed(s, params(1, 0.0).into_iter().skip(1), 0);
                }),
            ),
            (
                "a lease of another project",
                Box::new(|s| {
                    feed(s, [welcome(ProjectId(8), Normalisation::None)], 0);
                    feed(s, [lease(1, 1, vec![(hash, vec![0])])], 0);
                }),
            ),
            (
                "a lease given twice",
                Box::new(|s| {
                    feed(s, [welcome(PROJECT, Normalisation::None)], 0);
                    feed(s, [lease(1, 1, vec![(hash, vec![0])]), lease(1, 1, vec![(hash, vec![0])])], 0);
                }),
            ),
            (
                "a Welcome whose parameter count is not its model's",
                Box::new(|s| {
                    let Frame::Welcome(mut w) = welcome(PROJECT, Normalisation::None) else { unreachable!() };
                    w.training.param_count = 9;
                    feed(s, [Frame::Welcome(w)], 0);
                }),
            ),
        ];
        for (case, script) in cases {
            let mut s = session();
            script(&mut s);
            let frames = sent(&mut s);
            let (reason, detail) = goodbye(&frames).unwrap_or_else(|| panic!("{case}: no Goodbye in {frames:?}"));
            assert_eq!(reason, GoodbyeReason::ProtocolError, "{case}: {detail}");
            assert!(s.is_finished(), "{case}");
            assert!(
                events(&mut s).iter().any(|e| matches!(e, Event::Closed(c) if c.initiator == Initiator::Provider)),
                "{case}"
            );
            // Nothing more is sent or done once closed.
            feed(&mut s, [welcome(PROJECT, Normalisation::None)], 0);
            assert!(sent(&mut s).is_empty() && events(&mut s).is_empty(), "{case}");
        }
    }

    #[test]
    fn a_shard_whose_bytes_do_not_match_its_hash_is_a_protocol_error() {
        let (hash, mut bytes) = shard(4, 0);
        let mut s = session();
        feed(&mut s, [welcome(PROJECT, Normalisation::None)], 0);
        feed(&mut s, params(1, 0.0), 0);
        feed(&mut s, [lease(1, 1, vec![(hash, vec![0])])], 0);
        assert_eq!(sent(&mut s), vec![Frame::ShardRequest(ShardRequest { shard: hash })]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        feed(&mut s, shard_frames(hash, &bytes), 0);
        let (reason, detail) = goodbye(&sent(&mut s)).unwrap();
        assert_eq!(reason, GoodbyeReason::ProtocolError);
        assert!(
            detail.starts_with(&format!("shard {hash} arrived as {} bytes whose SHA-256 is", bytes.len())),
            "{detail}"
        );
        assert!(!events(&mut s).iter().any(|e| matches!(e, Event::StoreShard { .. } | Event::Train(_))));
    }

    #[test]
    fn stored_shards_are_loaded_from_the_cache_and_a_damaged_copy_is_fetched_again() {
        let (a, a_bytes) = shard(4, 0);
        let (b, b_bytes) = shard(4, 1);
        let stored = SessionConfig { stored_shards: vec![a, b], ..config() };
        let mut s = Session::new(stored, ShardMemory::new(1 << 20), 0);
        sent(&mut s);
        feed(&mut s, [welcome(PROJECT, Normalisation::None)], 0);
        feed(&mut s, params(1, 0.0), 0);
        feed(&mut s, [lease(1, 1, vec![(a, vec![0]), (b, vec![1])])], 0);
        let asked: Vec<_> = events(&mut s).into_iter().filter(|e| matches!(e, Event::LoadShard(_))).collect();
        assert!(matches!(&asked[..], [Event::LoadShard(x), Event::LoadShard(y)] if *x == a && *y == b));
        assert!(sent(&mut s).is_empty(), "nothing is asked of the server for stored shards");
        assert_eq!(s.provide_shard(a, a_bytes), Ok(()));
        let mut damaged = b_bytes.clone();
        damaged[30] ^= 1;
        assert!(s.provide_shard(b, damaged).is_err());
        assert_eq!(sent(&mut s), vec![Frame::ShardRequest(ShardRequest { shard: b })]);
        feed(&mut s, shard_frames(b, &b_bytes), 0);
        let jobs = train_jobs(&mut s);
        assert_eq!(jobs[0].features, vec![0.0, 0.0, 0.0, 2.0, 3.0, 4.0]);

        // A shard the cache lost is fetched from the server.
        let (c, _) = shard(2, 5);
        let stored = SessionConfig { stored_shards: vec![c], ..config() };
        let mut s = Session::new(stored, ShardMemory::new(1 << 20), 0);
        sent(&mut s);
        feed(&mut s, [welcome(PROJECT, Normalisation::None), lease(1, 1, vec![(c, vec![0])])], 0);
        s.shard_unavailable(c);
        assert_eq!(sent(&mut s), vec![Frame::ShardRequest(ShardRequest { shard: c })]);
    }

    #[test]
    fn heartbeats_go_out_every_interval_and_a_silent_server_ends_the_session() {
        let mut s = session();
        // Before the Welcome, the configured interval.
        assert_eq!(s.poll_timeout(), Some(10_000));
        s.handle_timeout(10_000);
        assert_eq!(sent(&mut s), vec![Frame::Heartbeat(Heartbeat::default())]);
        feed(&mut s, [welcome(PROJECT, Normalisation::None)], 10_500);
        assert_eq!(s.poll_timeout(), Some(11_500));
        s.handle_timeout(11_000);
        assert!(sent(&mut s).is_empty(), "not due yet");
        s.handle_timeout(11_500);
        assert_eq!(sent(&mut s), vec![Frame::Heartbeat(Heartbeat::default())]);
        // The server's heartbeats keep the session alive.
        feed(&mut s, [Frame::Heartbeat(Heartbeat::default())], 12_000);
        s.handle_timeout(14_999);
        assert!(s.closed().is_none());
        s.handle_timeout(15_000);
        let (reason, detail) = goodbye(&sent(&mut s)).unwrap();
        assert_eq!((reason, detail.as_str()), (GoodbyeReason::Timeout, "nothing came from the server for 3000 ms"));
        assert!(s.is_finished());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn closing_sends_goodbye_next_even_between_chunks() {
        let (hash, bytes) = shard(4, 0);
        let mut s = ready(&bytes);
        feed(&mut s, [lease(1, 1, vec![(hash, vec![0])])], 0);
        let job = train_jobs(&mut s).remove(0);
        s.training_finished(job.job_id, result(&job, 1.0));
        assert!(matches!(s.poll_transmit(), Some(Frame::TransferStart(_))));
        s.close(GoodbyeReason::Normal, "provider stopped by its user");
        assert_eq!(
            sent(&mut s),
            vec![Frame::Goodbye(Goodbye {
                reason: GoodbyeReason::Normal,
                detail: "provider stopped by its user".into()
            })]
        );
        assert!(s.is_finished());
        assert_eq!(
            s.closed(),
            Some(&Closed {
                initiator: Initiator::Provider,
                reason: GoodbyeReason::Normal,
                detail: "provider stopped by its user".into()
            })
        );
    }

    #[test]
    fn the_servers_goodbye_and_acks_are_reported() {
        let (hash, bytes) = shard(4, 0);
        let mut s = ready(&bytes);
        feed(&mut s, [lease(1, 1, vec![(hash, vec![0])]), lease(2, 1, vec![(hash, vec![1])])], 0);
        for _ in 0..2 {
            let job = train_jobs(&mut s).remove(0);
            s.training_finished(job.job_id, result(&job, 1.0));
        }
        sent(&mut s);
        events(&mut s);
        let refused = AckOutcome::Refused { reason: RefusalReason::Expired, detail: "too late".into() };
        feed(
            &mut s,
            [
                Frame::Ack(Ack { lease_id: LeaseId(1), outcome: AckOutcome::Stale { current_version: 9 } }),
                Frame::Ack(Ack { lease_id: LeaseId(2), outcome: refused.clone() }),
                Frame::Ack(Ack { lease_id: LeaseId(2), outcome: refused }),
            ],
            0,
        );
        assert_eq!((s.stats().applied, s.stats().stale, s.stats().refused), (0, 1, 1));
        let evs = events(&mut s);
        assert!(matches!(&evs[2], Event::Warning(w) if w.contains("lease 2")), "{evs:?}");
        feed(&mut s, [Frame::Goodbye(Goodbye { reason: GoodbyeReason::Normal, detail: "project done".into() })], 0);
        assert!(s.is_finished());
        assert!(sent(&mut s).is_empty(), "no Goodbye answers the server's");
        assert!(matches!(
            &events(&mut s)[..],
            [Event::Closed(Closed { initiator: Initiator::Server, reason: GoodbyeReason::Normal, .. })]
        ));
    }

    #[test]
    fn normalisation_per_feature_and_value_labels_are_gathered() {
        let model = Model::from_json(
            r#"{"input_shape": [2], "layers": [{"type": "dense", "units": 2}], "loss": "mse"}"#,
            &Limits::default(),
        )
        .unwrap();
        let header = ShardHeader {
            feature_dtype: Dtype::F32,
            sample_shape: vec![2],
            sample_count: 2,
            labels: ShardLabels::Values { shape: vec![2] },
        };
        let mut writer = ShardWriter::new(Vec::new(), header).unwrap();
        for (x, y) in [([1.0f32, 2.0], [0.5f32, -0.5]), ([3.0, 4.0], [1.5, 2.5])] {
            let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            writer.push(&raw, LabelRef::Values(&y)).unwrap();
        }
        let bytes = writer.finish().unwrap();
        let hash = shard_hash(&bytes);
        let mut memory = ShardMemory::new(1 << 20);
        memory.insert(hash, bytes.into(), &HashSet::new());
        let norm = Normalisation::PerFeature { offset: vec![1.0, 2.0], scale: vec![2.0, 0.5] };
        let selection = [ShardSamples { shard: hash, indices: vec![1, 0, 1] }];
        let LeaseInputs { features: x, labels: y, samples: n } =
            lease::gather(&model, &norm, &selection, |h| memory.get(&h)).unwrap();
        assert_eq!(n, 3);
        assert_eq!(x, vec![4.0, 1.0, 0.0, 0.0, 4.0, 1.0]);
        assert_eq!(y, vec![1.5, 2.5, 0.5, -0.5, 1.5, 2.5]);

        let out_of_range = [ShardSamples { shard: hash, indices: vec![2] }];
        let e = lease::gather(&model, &norm, &out_of_range, |h| memory.get(&h)).unwrap_err();
        assert!(e.contains("sample 2 is past the shard's 2 samples"), "{e}");
        let classes = Model::from_json(MODEL, &Limits::default()).unwrap();
        let e = lease::gather(&classes, &Normalisation::None, &selection, |h| memory.get(&h)).unwrap_err();
        assert!(e.contains("samples of 2 values but the model takes 3"), "{e}");
    }

    #[test]
    fn memory_evicts_the_least_recently_used_unpinned_shards() {
        let mut memory = ShardMemory::new(25);
        let h = |n| ShardHash([n; 32]);
        memory.insert(h(1), vec![0u8; 10].into(), &HashSet::new());
        memory.insert(h(2), vec![0u8; 10].into(), &HashSet::new());
        memory.get(&h(1));
        memory.insert(h(3), vec![0u8; 10].into(), &HashSet::new());
        assert!(memory.contains(&h(1)) && !memory.contains(&h(2)) && memory.contains(&h(3)));
        memory.insert(h(4), vec![0u8; 10].into(), &HashSet::from([h(1), h(3)]));
        assert_eq!(memory.bytes(), 30, "pinned shards stay even over the budget");
    }
}
