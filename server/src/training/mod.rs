//! Training coordination: the provider WebSocket endpoint, one coordinator task per running project, and the
//! registry that starts, stops and finds them.
//!
//! - [`aggregate`]: contributions combined into the pseudo-gradient: the weighted mean or a robust rule, after
//!   a bound on each one's norm.
//! - [`plan`]: an epoch's batches (per shard, seeded) and their states; exactly-once bookkeeping.
//! - [`core`]: the sans-IO state machine of one project's training (providers, leases, contribution checks,
//!   K-batch sync SGD, epochs): events and the time in, effects out.
//! - [`coordinator`]: the task around a project's core that carries out its effects (messages, the ledger,
//!   evaluations, checkpoints, the final model).
//! - [`error`]: the training error type, [`TrainingError`], whose causes reach the logs.
//! - [`connection`]: one provider's socket (a `Sink`/`Stream` of messages): the handshake, frames, transfers,
//!   heartbeats and assignment to projects.
//! - [`checkpoint`]: parameters and trainer state in the object store, registered in the database.
//! - [`data`]: the shard list and the decoded validation split.
//!
//! The database agrees with the latest checkpoint plus the updates applied since: a coordinator that starts
//! from a checkpoint first deletes the records (contributions, applied batches, metrics) of later versions,
//! whose batches are then leased again.

pub mod aggregate;
pub mod checkpoint;
pub mod connection;
pub mod coordinator;
pub mod core;
pub mod data;
pub mod error;
pub mod plan;
pub mod verify;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use daig_shared::model::DeviceNeed;
use daig_shared::wire::{Ack, CancelLease, Lease};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use self::core::LeaseIds;
use crate::db;
use crate::limits::{Slot, Slots};
use crate::project::{Access, ProjectRow};
use crate::state::AppState;
use coordinator::{Command, Coordinator, Event};
pub use error::TrainingError;

/// A parameter version as providers receive it: little-endian `f32` bytes, encoded once per update.
#[derive(Debug)]
pub struct ParamsSnapshot {
    pub version: u64,
    pub bytes: Bytes,
}

/// What a coordinator sends a provider's connection.
#[derive(Debug)]
pub enum ToProvider {
    Lease(Lease),
    Ack(Ack),
    Cancel(CancelLease),
    /// The provider no longer belongs to the project.
    Detach(Detach),
}

/// Why a provider leaves its project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detach {
    Finished,
    Paused,
    Cancelled,
    ShuttingDown,
    Removed(String),
    /// It failed a check by recomputation.
    ShutOut(String),
}

impl fmt::Display for Detach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detach::Finished => f.write_str("the project finished training"),
            Detach::Paused => f.write_str("the project was paused"),
            Detach::Cancelled => f.write_str("the project was cancelled"),
            Detach::ShuttingDown => f.write_str("the server is shutting down"),
            Detach::Removed(why) => f.write_str(why),
            Detach::ShutOut(why) => write!(f, "shut out: {why}"),
        }
    }
}

pub use daig_shared::api::training::{LiveProvider, MetricPoint};

/// A running project's state, published by its coordinator.
#[derive(Debug, Clone, Default)]
pub struct LiveStatus {
    pub running: bool,
    pub version: u64,
    pub epoch: u64,
    pub progress: f64,
    pub samples_applied: u64,
    pub providers: Vec<LiveProvider>,
    pub updates_per_sec: Option<f64>,
}

/// A running project in the registry.
#[derive(Clone)]
pub struct ProjectHandle {
    pub id: i64,
    pub events: mpsc::Sender<Event>,
    pub status: watch::Receiver<LiveStatus>,
    pub access: Access,
    pub site_key: Option<String>,
    /// The origins that may embed a `site_key` project (canonical, see `api::projects::parse_origin`).
    pub sites: Vec<String>,
    /// What its training takes on a provider's device: providers whose device says it holds less are not let in.
    pub need: DeviceNeed,
}

/// Where a provider's socket was opened, from its `Origin` header: what the Origin checks of `site_key` projects
/// look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketOrigin {
    /// No `Origin`: not a browser (the native provider); the site key alone admits it.
    None,
    /// A page of this server (the contribute page).
    SameOrigin,
    /// A page of another site, by its canonical origin (or the header as sent when it does not parse).
    Site(String),
}

impl SocketOrigin {
    /// Whether a provider from here may train project `access`, `sites`: public projects take every origin;
    /// `site_key` projects take their own sites, this server's pages and non-browser providers.
    pub fn admitted(&self, access: Access, sites: &[String]) -> bool {
        match self {
            _ if access == Access::Public => true,
            SocketOrigin::None | SocketOrigin::SameOrigin => true,
            SocketOrigin::Site(origin) => sites.iter().any(|s| s == origin),
        }
    }
}

/// The registry of running projects, owned by [`AppState`].
pub struct Training {
    projects: Mutex<HashMap<i64, ProjectHandle>>,
    /// Bumped whenever a project starts, so that waiting providers look again.
    changed: watch::Sender<u64>,
    lease_ids: Arc<LeaseIds>,
    provider_connections: Arc<Semaphore>,
    /// Provider connections held per client address (see `connection::address_key`).
    addresses: Slots<String>,
    /// The server's CPU budget for checks by recomputation: one permit per thread, shared by every project.
    check_permits: Arc<Semaphore>,
    /// Memory for contributions being reassembled, in bytes, all connections together.
    reassembly: Arc<Semaphore>,
    /// The server's CPU budget for evaluations: one permit per thread, shared by every project.
    eval_permits: Arc<Semaphore>,
}

impl Training {
    pub fn new(max_connections: usize, check_threads: usize, eval_threads: usize, reassembly_bytes: u64) -> Training {
        // Lease ids stay unique across restarts: they start at the current time in microseconds.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(1));
        Training {
            projects: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            lease_ids: Arc::new(LeaseIds::starting_at(start)),
            provider_connections: Arc::new(Semaphore::new(max_connections)),
            addresses: Slots::default(),
            check_permits: Arc::new(Semaphore::new(check_threads.max(1))),
            eval_permits: Arc::new(Semaphore::new(eval_threads.max(1))),
            reassembly: Arc::new(Semaphore::new(
                usize::try_from(reassembly_bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// The permits an evaluation of a validation split holds while it computes.
    pub fn eval_permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.eval_permits)
    }

    /// The bytes of memory that contributions being received may take, one permit a byte.
    pub fn reassembly_budget(&self) -> Arc<Semaphore> {
        Arc::clone(&self.reassembly)
    }

    /// The permits a check by recomputation holds while it computes.
    pub fn check_permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.check_permits)
    }

    /// The server's lease ids, shared by every project's core.
    pub fn lease_ids(&self) -> Arc<LeaseIds> {
        Arc::clone(&self.lease_ids)
    }

    /// The semaphore bounding provider connections.
    pub fn connections(&self) -> Arc<Semaphore> {
        Arc::clone(&self.provider_connections)
    }

    /// A provider connection slot of client `address`, if it holds fewer than `max`; held until dropped.
    pub fn address_slot(&self, address: &str, max: usize) -> Option<Slot<String>> {
        self.addresses.acquire(&address.to_owned(), max)
    }

    /// Notified when projects start.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, ProjectHandle>> {
        self.projects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The running project `id`.
    pub fn get(&self, id: i64) -> Option<ProjectHandle> {
        self.lock().get(&id).cloned()
    }

    /// Running public projects, fewest providers first, for a provider that named none.
    pub fn public_by_need(&self) -> Vec<ProjectHandle> {
        let mut list: Vec<ProjectHandle> =
            self.lock().values().filter(|p| p.access == Access::Public).cloned().collect();
        list.sort_by_key(|p| (p.status.borrow().providers.len(), p.id));
        list
    }

    /// The running project whose site key is `key`.
    pub fn by_site_key(&self, key: &str) -> Option<ProjectHandle> {
        self.lock().values().find(|p| p.site_key.as_deref() == Some(key)).cloned()
    }

    /// Removes a project that finished by itself.
    pub fn forget(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Replaces the sites of running project `id` (a no-op when it is not running).
    pub fn set_sites(&self, id: i64, sites: Vec<String>) {
        if let Some(handle) = self.lock().get_mut(&id) {
            handle.sites = sites;
        }
    }

    fn insert(&self, handle: ProjectHandle) {
        self.lock().insert(handle.id, handle);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Stops project `id`'s coordinator with `command`, waiting until it has checkpointed.
    pub async fn stop(&self, id: i64, command: Command) {
        let handle = self.lock().remove(&id);
        if let Some(handle) = handle {
            let (reply, done) = oneshot::channel();
            if handle.events.send(Event::Control { command, reply }).await.is_ok() {
                let _ = done.await;
            }
        }
    }

    /// Stops every coordinator (checkpointing), for the server's shutdown.
    pub async fn shutdown(&self) {
        let ids: Vec<i64> = self.lock().keys().copied().collect();
        for id in ids {
            self.stop(id, Command::Shutdown).await;
        }
    }
}

/// Starts the coordinator of running project `row` (from its latest checkpoint).
///
/// # Errors
/// The project has no dataset, or the dataset or checkpoint cannot be loaded.
pub async fn start(state: &AppState, row: &ProjectRow) -> Result<(), TrainingError> {
    if state.training().get(row.id).is_some() {
        return Ok(());
    }
    let settings = row.settings()?;
    let started = Coordinator::start(state.clone(), row).await?;
    state.training().insert(ProjectHandle {
        id: row.id,
        events: started.events,
        status: started.status,
        access: settings.access,
        site_key: row.site_key.clone(),
        sites: settings.canonical_sites(),
        need: started.need,
    });
    drop(started.task);
    Ok(())
}

/// Starts every project the database says is running: after a restart they resume from their checkpoints.
pub async fn resume_running(state: &AppState) {
    let rows = match db::projects::list_running(state.db()).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!("cannot list running projects: {e}");
            return;
        }
    };
    for row in rows {
        match start(state, &row).await {
            Ok(()) => tracing::info!(project = row.id, "resumed training"),
            Err(e) => tracing::error!(project = row.id, "cannot resume training: {e}"),
        }
    }
}

/// The project's metrics history, oldest first.
///
/// # Errors
/// A database error.
pub async fn metrics_history(state: &AppState, id: i64) -> Result<Vec<MetricPoint>, TrainingError> {
    Ok(db::training::metrics_history(state.db(), id).await?)
}

/// The metrics history as the JSON file stored beside the final model.
///
/// # Errors
/// A database error.
pub async fn metrics_json(state: &AppState, id: i64) -> Result<Vec<u8>, TrainingError> {
    let history = db::training::metrics_history(state.db(), id).await?;
    serde_json::to_vec_pretty(&serde_json::json!({ "project": id, "metrics": history }))
        .map_err(|e| TrainingError::other("writing the metrics file", e))
}
