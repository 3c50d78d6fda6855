//! [`AppState`]: the runtime objects built from [`Settings`], shared by every handler as a cheap clone.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::SqlitePool;
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::limits::RateLimiter;

/// A handle around `Arc`: cloning it is cheap and every clone sees the same database, limiter and metrics.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    db: SqlitePool,
    /// Log-in and sign-up attempts per client IP.
    auth_limiter: RateLimiter,
    /// Shared by the per-route concurrency-limit layers so that the limit is global, not per route.
    concurrency: Arc<Semaphore>,
    metrics: PrometheusHandle,
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
    /// The Prometheus recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

impl AppState {
    /// Creates the data directory if missing, opens (or creates) the SQLite database in it, applies the
    /// migrations and installs the metrics recorder.
    ///
    /// # Errors
    /// [`StartError`] naming what could not be set up.
    pub async fn new(settings: Settings) -> Result<Self, StartError> {
        let db = crate::db::open(&settings).await?;
        let metrics = crate::telemetry::metrics_handle()?;
        let auth_limiter = RateLimiter::new(settings.auth_rate_burst, settings.auth_rate_per_minute);
        let concurrency = Arc::new(Semaphore::new(settings.concurrency_limit));
        Ok(Self { inner: Arc::new(Inner { settings, db, auth_limiter, concurrency, metrics }) })
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
    pub fn auth_limiter(&self) -> &RateLimiter {
        &self.inner.auth_limiter
    }

    /// The semaphore behind the global concurrency limit.
    pub fn concurrency(&self) -> Arc<Semaphore> {
        Arc::clone(&self.inner.concurrency)
    }

    /// The Prometheus handle that renders `/metrics`.
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }
}
