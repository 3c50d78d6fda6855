//! The embedded database: SQLite in `<data_dir>/daig.sqlite`, created if missing, migrated from
//! `server/migrations/` (embedded at build time) on every start.
//!
//! Every SQL statement of the server is here, as a `const` in the module of its tables, run by a typed function:
//! - [`accounts`]: users, API tokens, sessions;
//! - [`projects`]: project rows and their states;
//! - [`datasets`]: datasets and shards;
//! - [`training`]: providers, checkpoints, contributions, applied batches, metrics and credits;
//! - [`trust`]: providers' persistent identities and standing, shut-outs, address bans, withdrawn credit.
//!
//! Statements use `sqlx::query` with binds, so nothing needs a database at build time; instead, every statement is
//! listed in [`ALL_STATEMENTS`] and a test prepares each against the migrated schema, so that a schema change that
//! breaks one fails the build's tests whether or not a test runs that statement.

pub mod accounts;
pub mod datasets;
pub mod projects;
pub mod training;
pub mod trust;

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
    migrate(&pool).await?;
    Ok(pool)
}

/// Applies the migrations embedded from `server/migrations/`.
///
/// # Errors
/// A migration that fails.
pub async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

pub const PING: &str = "SELECT 1";

/// Whether the database answers a query.
pub async fn ping(db: impl sqlx::SqliteExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(PING).execute(db).await?;
    Ok(())
}

macro_rules! statements {
    ($($module:ident :: $name:ident),* $(,)?) => {
        &[$((concat!(stringify!($module), "::", stringify!($name)), $module::$name)),*]
    };
}

/// Every statement the server runs, by name (`module::CONST`), for the test that prepares them all.
pub const ALL_STATEMENTS: &[(&str, &str)] = statements![
    self::PING,
    accounts::FIND_LIVE_TOKEN,
    accounts::TOUCH_TOKEN,
    accounts::FIND_LIVE_SESSION,
    accounts::FIND_LOGIN,
    accounts::DELETE_EXPIRED_SESSIONS,
    accounts::INSERT_SESSION,
    accounts::DELETE_SESSION,
    accounts::COUNT_LIVE_TOKENS,
    accounts::INSERT_TOKEN,
    accounts::LIST_LIVE_TOKENS,
    accounts::TOKEN_OWNER,
    accounts::REVOKE_TOKEN,
    accounts::NAME_OR_EMAIL_TAKEN,
    accounts::INSERT_USER,
    accounts::USER_CREATED_AT,
    projects::GET,
    projects::GET_OF_USER,
    projects::LIST_OF_USER,
    projects::LIST_RUNNING,
    projects::LIST_PUBLIC,
    projects::INSERT,
    projects::SET_SETTINGS,
    projects::DELETE,
    projects::MOVE,
    projects::COUNT_RUNNING_OF_USER,
    projects::TOUCH_DRAFT,
    projects::STATE,
    projects::ADMISSION,
    projects::BY_SITE_KEY,
    datasets::VALIDATION_SAMPLES,
    training::REUSE_PROVIDER,
    training::ALL_PROVIDERS_DISCONNECTED,
    projects::MARK_FINISHED,
    datasets::EXISTS,
    datasets::GET,
    datasets::FEATURE_DTYPE,
    datasets::SHARD_COUNTS,
    datasets::SHARD_KEYS,
    datasets::STORED_BYTES_OF_USER_EXCEPT,
    datasets::SHARDS,
    datasets::DELETE_SHARDS,
    datasets::DELETE,
    datasets::INSERT,
    datasets::INSERT_SHARD,
    training::DELETE_CONTRIBUTIONS_AFTER,
    training::DELETE_BATCHES_AFTER,
    training::DELETE_METRICS_AFTER,
    training::SET_VERSION,
    training::INSERT_CONTRIBUTION,
    training::INSERT_APPLIED_BATCH,
    training::RECORD_METRICS,
    training::METRICS_HISTORY,
    training::METRICS_AFTER,
    training::REGISTER_PROVIDER,
    training::PROVIDER_DISCONNECTED,
    training::PROVIDER_EXISTS,
    training::INSERT_CHECKPOINT,
    training::SET_CHECKPOINT_VERSION,
    training::CHECKPOINTS_BEYOND,
    training::DELETE_CHECKPOINT,
    training::CHECKPOINT_VERSION,
    training::CHECKPOINT_KEYS,
    training::LIST_CHECKPOINTS,
    training::PROVIDER_CREDITS_OF_PROJECT,
    training::SITE_CREDITS_OF_PROJECT,
    training::PROJECT_CREDITS_OF_PROVIDER,
    trust::UPSERT_IDENTITY,
    trust::ACTIVE_BAN,
    trust::CHECK_PASSED,
    trust::SHUT_OUT_CONNECTION,
    trust::SHUT_OUT_IDENTITY,
    trust::BAN_ADDRESS,
    trust::WITHDRAW_CREDIT,
    trust::SHUT_OUT_OF_PROJECT,
    trust::DELETE_EXPIRED_BANS,
];

/// Seconds since the Unix epoch, the unit of every timestamp in the database and the API.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sqlx::{Executor, SqlSafeStr};

    use super::*;

    async fn migrated() -> SqlitePool {
        let options = SqliteConnectOptions::from_str("sqlite::memory:").unwrap().foreign_keys(true);
        // One connection: every connection to `:memory:` is a database of its own.
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
        migrate(&pool).await.unwrap();
        pool
    }

    #[tokio::test]
    async fn every_statement_prepares_against_the_migrated_schema() {
        let pool = migrated().await;
        let mut failures = Vec::new();
        for (name, sql) in ALL_STATEMENTS {
            if let Err(e) = pool.prepare(sql.into_sql_str()).await {
                failures.push(format!("{name}: {e}"));
            }
        }
        assert!(failures.is_empty(), "statements that do not prepare:\n{}", failures.join("\n"));
    }

    /// The names of the `pub const NAME: &str` items of a module's source.
    fn constants(module: &str, source: &str) -> BTreeSet<String> {
        source
            .lines()
            .filter_map(|line| line.strip_prefix("pub const ")?.split_once(": &str")?.0.split_whitespace().next())
            .filter(|name| *name != "ALL_STATEMENTS")
            .map(|name| format!("{module}::{name}"))
            .collect()
    }

    #[test]
    fn every_statement_constant_is_listed() {
        let mut declared = BTreeSet::new();
        for (module, source) in [
            ("self", include_str!("mod.rs")),
            ("accounts", include_str!("accounts.rs")),
            ("projects", include_str!("projects.rs")),
            ("datasets", include_str!("datasets.rs")),
            ("training", include_str!("training.rs")),
            ("trust", include_str!("trust.rs")),
        ] {
            declared.extend(constants(module, source));
        }
        let listed: BTreeSet<String> = ALL_STATEMENTS.iter().map(|(name, _)| (*name).to_owned()).collect();
        assert_eq!(listed.len(), ALL_STATEMENTS.len(), "a statement is listed twice");
        let missing: Vec<_> = declared.difference(&listed).collect();
        assert!(missing.is_empty(), "statements missing from ALL_STATEMENTS: {missing:?}");
    }
}
