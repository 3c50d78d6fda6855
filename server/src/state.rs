//! [`AppState`]: the runtime objects built from [`Settings`], shared by every handler as a cheap clone.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::SqlitePool;
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::error::AppError;
use crate::limits::{RateLimiter, Slot, Slots};
use crate::store::{ObjectStore, StoreError};
use crate::training::Training;

/// A handle around `Arc`: cloning it is cheap and every clone sees the same database, limiter and metrics.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The key under which [`AppState::upload_slot`] and [`AppState::stream_slot`] count every account's uploads and
/// streams (account ids are positive).
const ALL_ACCOUNTS: i64 = -1;

struct Inner {
    settings: Settings,
    db: SqlitePool,
    /// Log-in and sign-up attempts per client IP.
    auth_limiter: RateLimiter,
    /// Provider connections opened per client address (an IPv6 address by its /64).
    provider_connect_limiter: RateLimiter,
    /// The global concurrency limit's permits (`limits::concurrency`).
    concurrency: Arc<Semaphore>,
    /// Dataset uploads in flight, per account; `ALL_ACCOUNTS` counts them all together.
    uploads: Slots<i64>,
    /// Live-update streams open, per account; `ALL_ACCOUNTS` counts them all together.
    streams: Slots<i64>,
    metrics: PrometheusHandle,
    /// Dataset shards, checkpoints and trained models.
    store: Arc<dyn ObjectStore>,
    /// Projects whose dataset is being validated and sharded, so that two commits of one project never run at
    /// once. A std `Mutex`: nothing awaits while it is held.
    ingesting: Mutex<HashSet<i64>>,
    /// The coordinators of running projects.
    training: Arc<Training>,
}

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    /// The database could not be opened.
    #[error("cannot open the database {path}: {source}")]
    Database { path: std::path::PathBuf, source: sqlx::Error },
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The object store could not be opened.
    #[error("cannot open the object store: {0}")]
    Store(#[from] StoreError),
    /// The Prometheus recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

impl AppState {
    /// Creates the data directory if missing, opens (or creates) the SQLite database in it, applies the
    /// migrations, opens the object store and installs the metrics recorder.
    ///
    /// # Errors
    /// [`StartError`] naming what could not be set up.
    pub async fn new(settings: Settings) -> Result<Self, StartError> {
        let db = crate::db::open(&settings).await?;
        let store = crate::store::open(&settings.store).await?;
        let metrics = crate::telemetry::metrics_handle()?;
        let auth_limiter = RateLimiter::new(settings.auth_rate_burst, settings.auth_rate_per_minute);
        let provider_connect_limiter =
            RateLimiter::new(settings.provider_connects_per_minute, settings.provider_connects_per_minute);
        let concurrency = Arc::new(Semaphore::new(settings.concurrency_limit));
        let ingesting = Mutex::new(HashSet::new());
        let training = Arc::new(Training::new(
            settings.max_provider_connections,
            settings.check_threads,
            settings.eval_threads,
            settings.max_reassembly_bytes,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                db,
                auth_limiter,
                provider_connect_limiter,
                concurrency,
                uploads: Slots::default(),
                streams: Slots::default(),
                metrics,
                store,
                ingesting,
                training,
            }),
        })
    }

    /// The validated settings this state was built from.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The database pool.
    pub fn db(&self) -> &SqlitePool {
        &self.inner.db
    }

    /// The rate limiter for log-in and sign-up.
    /// The limiter of provider connections opened per client address.
    pub fn provider_connect_limiter(&self) -> &RateLimiter {
        &self.inner.provider_connect_limiter
    }

    pub fn auth_limiter(&self) -> &RateLimiter {
        &self.inner.auth_limiter
    }

    /// A place for one more dataset upload of account `user`, within `max_uploads_per_account` and, all accounts
    /// together, `max_uploads`; held until dropped.
    ///
    /// # Errors
    /// [`AppError::TooManyUploads`] for the account's budget, [`AppError::Overloaded`] for the server's.
    pub fn upload_slot(&self, user: i64) -> Result<(Slot<i64>, Slot<i64>), AppError> {
        let settings = &self.inner.settings;
        let max = settings.max_uploads_per_account;
        let own = self.inner.uploads.acquire(&user, max).ok_or(AppError::TooManyUploads { max })?;
        let all = self.inner.uploads.acquire(&ALL_ACCOUNTS, settings.max_uploads).ok_or(AppError::Overloaded)?;
        Ok((own, all))
    }

    /// A place for one more live-update stream of account `user`, within `max_event_streams_per_account` and, all
    /// accounts together, `max_event_streams`; held until dropped, that is as long as the stream lasts.
    ///
    /// # Errors
    /// [`AppError::TooManyStreams`] for the account's budget, [`AppError::Overloaded`] for the server's.
    pub fn stream_slot(&self, user: i64) -> Result<(Slot<i64>, Slot<i64>), AppError> {
        let settings = &self.inner.settings;
        let max = settings.max_event_streams_per_account;
        let own = self.inner.streams.acquire(&user, max).ok_or(AppError::TooManyStreams { max })?;
        let all = self.inner.streams.acquire(&ALL_ACCOUNTS, settings.max_event_streams).ok_or(AppError::Overloaded)?;
        Ok((own, all))
    }

    /// How many live-update streams account `user` holds open.
    pub fn streams_open(&self, user: i64) -> usize {
        self.inner.streams.count(&user)
    }

    /// The semaphore behind the global concurrency limit.
    pub fn concurrency(&self) -> Arc<Semaphore> {
        Arc::clone(&self.inner.concurrency)
    }

    /// The Prometheus handle that renders `/metrics`.
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The registry of running projects.
    pub fn training(&self) -> &Training {
        &self.inner.training
    }

    /// The registry, shared.
    pub fn training_arc(&self) -> &Arc<Training> {
        &self.inner.training
    }

    /// Marks `project_id` as being ingested, or returns `None` if it already is; the mark goes with the guard.
    pub fn begin_ingest(&self, project_id: i64) -> Option<IngestGuard> {
        let mut set = self.inner.ingesting.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(project_id).then(|| IngestGuard { state: self.clone(), project_id })
    }
}

/// A project's dataset ingestion in progress; see [`AppState::begin_ingest`].
pub struct IngestGuard {
    state: AppState,
    project_id: i64,
}

impl Drop for IngestGuard {
    fn drop(&mut self) {
        let mut set = self.state.inner.ingesting.lock().unwrap_or_else(PoisonError::into_inner);
        set.remove(&self.project_id);
    }
}
