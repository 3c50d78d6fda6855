//! The embedded database: SQLite in `<data_dir>/daig.sqlite`, created if missing, migrated from
//! `server/migrations/` (embedded at build time) on every start.
//!
//! Queries use `sqlx::query` with binds; nothing needs a database at build time.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::config::Settings;
use crate::state::StartError;

/// Opens the database, creating the data directory and the file if missing, and applies the migrations.
///
/// # Errors
/// [`StartError`] when the directory cannot be created, the database not opened, or a migration fails.
pub async fn open(settings: &Settings) -> Result<SqlitePool, StartError> {
    let dir = &settings.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir { path: dir.clone(), source })?;
    let path = settings.database_path();
    let database_error = |source| StartError::Database { path: path.clone(), source };
    let options = SqliteConnectOptions::from_str("sqlite:")
        .map_err(database_error)?
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await.map_err(database_error)?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Seconds since the Unix epoch, the unit of every timestamp in the database and the API.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
