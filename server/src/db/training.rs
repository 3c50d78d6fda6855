//! The training ledger: providers, checkpoints, applied contributions and batches, metrics, and the credits
//! read from them.

use daig_shared::api::training::{CheckpointView, CreditLine, MetricPoint, ProviderProjectCredit, SiteCredit};
use sqlx::{SqliteConnection, SqliteExecutor};

use crate::training::core::{AppliedContribution, MetricsRecord};

pub const DELETE_CONTRIBUTIONS_AFTER: &str = "DELETE FROM contributions WHERE project_id = ? AND version > ?";
pub const DELETE_BATCHES_AFTER: &str = "DELETE FROM applied_batches WHERE project_id = ? AND version > ?";
pub const DELETE_METRICS_AFTER: &str = "DELETE FROM metrics WHERE project_id = ? AND version > ?";
pub const SET_VERSION: &str = "UPDATE projects SET version = ?, epoch = ? WHERE id = ?";
pub const INSERT_CONTRIBUTION: &str = "INSERT INTO contributions (project_id, provider_id, site_key, lease_id, \
     base_version, version, samples, mean_loss, applied_at, verified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     RETURNING id";
pub const INSERT_APPLIED_BATCH: &str = "INSERT INTO applied_batches (project_id, epoch, shard, batch, \
     contribution_id, version) VALUES (?, ?, ?, ?, ?, ?)";
pub const RECORD_METRICS: &str = "INSERT OR REPLACE INTO metrics (project_id, version, epoch, samples, train_loss, \
     val_loss, val_accuracy, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
pub const METRICS_HISTORY: &str = "SELECT version, epoch, samples, train_loss, val_loss, val_accuracy, at FROM metrics \
     WHERE project_id = ? ORDER BY version";
/// Takes over a row of the same provider that is not connected: the same key (or, keyless, the same address), the
/// same backend, adapter and site key, never shut out. So a provider that reconnects adds no row.
pub const REUSE_PROVIDER: &str = "UPDATE providers SET connected_at = ?1, disconnected_at = NULL, address = ?2 \
     WHERE id = (SELECT id FROM providers WHERE backend = ?3 AND adapter = ?4 AND site_key IS ?5 \
     AND identity_id IS ?6 AND (identity_id IS NOT NULL OR address = ?2) AND disconnected_at IS NOT NULL \
     AND shut_out_at IS NULL ORDER BY id LIMIT 1) AND disconnected_at IS NOT NULL RETURNING id";
pub const ALL_PROVIDERS_DISCONNECTED: &str = "UPDATE providers SET disconnected_at = ? WHERE disconnected_at IS NULL";
pub const METRICS_AFTER: &str = "SELECT version, epoch, samples, train_loss, val_loss, val_accuracy, at FROM metrics \
     WHERE project_id = ? AND version > ? ORDER BY version";
pub const REGISTER_PROVIDER: &str = "INSERT INTO providers (backend, adapter, site_key, connected_at, identity_id, \
     address) VALUES (?, ?, ?, ?, ?, ?) RETURNING id";
pub const PROVIDER_DISCONNECTED: &str = "UPDATE providers SET disconnected_at = ? WHERE id = ?";
pub const PROVIDER_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM providers WHERE id = ?)";
pub const INSERT_CHECKPOINT: &str = "INSERT OR REPLACE INTO checkpoints (project_id, version, epoch, params_key, \
     state_key, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)";
pub const SET_CHECKPOINT_VERSION: &str =
    "UPDATE projects SET version = ?, epoch = ?, checkpoint_version = ?, updated_at = ? WHERE id = ?";
pub const CHECKPOINTS_BEYOND: &str = "SELECT version, params_key, state_key FROM checkpoints WHERE project_id = ? \
     ORDER BY version DESC LIMIT -1 OFFSET ?";
pub const DELETE_CHECKPOINT: &str = "DELETE FROM checkpoints WHERE project_id = ? AND version = ?";
pub const CHECKPOINT_VERSION: &str = "SELECT checkpoint_version FROM projects WHERE id = ?";
pub const CHECKPOINT_KEYS: &str = "SELECT params_key, state_key FROM checkpoints WHERE project_id = ? AND version = ?";
pub const LIST_CHECKPOINTS: &str =
    "SELECT version, epoch, size_bytes, created_at FROM checkpoints WHERE project_id = ? ORDER BY version DESC";
pub const PROVIDER_CREDITS_OF_PROJECT: &str = "SELECT MAX(c.provider_id), MAX(c.site_key), MAX(p.backend), \
     COUNT(*) AS contributions, SUM(c.verified) AS verified, SUM(c.samples) AS samples FROM contributions c \
     LEFT JOIN providers p ON p.id = c.provider_id WHERE c.project_id = ? AND c.withdrawn_at IS NULL \
     GROUP BY COALESCE(-p.identity_id, c.provider_id) ORDER BY samples DESC";
pub const SITE_CREDITS_OF_PROJECT: &str = "SELECT site_key, COUNT(*) AS contributions, SUM(samples) AS samples \
     FROM contributions WHERE project_id = ? AND withdrawn_at IS NULL GROUP BY site_key ORDER BY samples DESC";
pub const PROJECT_CREDITS_OF_PROVIDER: &str = "SELECT project_id, COUNT(*) AS contributions, SUM(samples) AS samples \
     FROM contributions WHERE withdrawn_at IS NULL AND provider_id IN (SELECT id FROM providers WHERE id = ? \
     OR identity_id = (SELECT identity_id FROM providers WHERE id = ? AND identity_id IS NOT NULL)) \
     GROUP BY project_id ORDER BY project_id";

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Deletes the records of versions after `version` (contributions, applied batches, metrics) and sets the
/// project's version and epoch: a coordinator starting from a checkpoint leases those batches again.
pub async fn reset_after(tx: &mut SqliteConnection, project: i64, version: u64, epoch: u64) -> Result<(), sqlx::Error> {
    for sql in [DELETE_CONTRIBUTIONS_AFTER, DELETE_BATCHES_AFTER, DELETE_METRICS_AFTER] {
        sqlx::query(sql).bind(project).bind(int(version)).execute(&mut *tx).await?;
    }
    sqlx::query(SET_VERSION).bind(int(version)).bind(int(epoch)).bind(project).execute(&mut *tx).await?;
    Ok(())
}

/// Records an update's contributions and the batches they applied, within `tx`.
pub async fn record_update(
    tx: &mut SqliteConnection,
    project: i64,
    version: u64,
    epoch: u64,
    contributions: &[AppliedContribution],
    now: i64,
) -> Result<(), sqlx::Error> {
    for b in contributions {
        let contribution: i64 = sqlx::query_scalar(INSERT_CONTRIBUTION)
            .bind(project)
            .bind(int(b.provider.0))
            .bind(&b.site_key)
            .bind(int(b.lease.0))
            .bind(int(b.base_version))
            .bind(int(version))
            .bind(i64::from(b.samples))
            .bind(f64::from(b.mean_loss))
            .bind(now)
            .bind(b.verified)
            .fetch_one(&mut *tx)
            .await?;
        for unit in &b.units {
            sqlx::query(INSERT_APPLIED_BATCH)
                .bind(project)
                .bind(int(epoch))
                .bind(i64::from(unit.shard))
                .bind(i64::from(unit.batch))
                .bind(contribution)
                .bind(int(version))
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

/// Records a row of the metrics history (replacing one of the same version).
pub async fn record_metrics(
    db: impl SqliteExecutor<'_>,
    project: i64,
    row: &MetricsRecord,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(RECORD_METRICS)
        .bind(project)
        .bind(int(row.version))
        .bind(int(row.epoch))
        .bind(int(row.samples))
        .bind(row.train_loss)
        .bind(row.val_loss)
        .bind(row.val_accuracy)
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}

/// Marks a running project finished.
pub async fn mark_finished(db: impl SqliteExecutor<'_>, project: i64, now: i64) -> Result<(), sqlx::Error> {
    super::projects::mark_finished(db, project, now).await
}

/// The project's metrics history, oldest first.
pub async fn metrics_history(db: impl SqliteExecutor<'_>, project: i64) -> Result<Vec<MetricPoint>, sqlx::Error> {
    let rows: Vec<MetricRow> = sqlx::query_as(METRICS_HISTORY).bind(project).fetch_all(db).await?;
    Ok(metric_points(rows))
}

/// The rows of the project's metrics history of versions above `after_version`, oldest first: what a
/// live-update stream that sent the history up to that version sends next.
pub async fn metrics_after(
    db: impl SqliteExecutor<'_>,
    project: i64,
    after_version: i64,
) -> Result<Vec<MetricPoint>, sqlx::Error> {
    let rows: Vec<MetricRow> = sqlx::query_as(METRICS_AFTER).bind(project).bind(after_version).fetch_all(db).await?;
    Ok(metric_points(rows))
}

type MetricRow = (i64, i64, i64, Option<f64>, Option<f64>, Option<f64>, i64);

fn metric_points(rows: Vec<MetricRow>) -> Vec<MetricPoint> {
    rows.into_iter()
        .map(|(version, epoch, samples, train_loss, val_loss, val_accuracy, at_unix)| MetricPoint {
            version,
            epoch,
            samples,
            train_loss,
            val_loss,
            val_accuracy,
            at_unix,
        })
        .collect()
}

/// A provider connection to register.
#[derive(Debug)]
pub struct NewProvider<'a> {
    pub backend: &'a str,
    pub adapter: &'a str,
    pub site_key: Option<&'a str>,
    /// The persistent identity it presented, if any.
    pub identity: Option<i64>,
    /// The client address it came from (see `training::connection::address_key`).
    pub address: &'a str,
}

/// Registers a provider's connection, in the row of its last connection if it has one that is free (see
/// [`REUSE_PROVIDER`]); its id.
pub async fn register_provider(
    db: &sqlx::SqlitePool,
    provider: &NewProvider<'_>,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let reused: Option<i64> = sqlx::query_scalar(REUSE_PROVIDER)
        .bind(now)
        .bind(provider.address)
        .bind(provider.backend)
        .bind(provider.adapter)
        .bind(provider.site_key)
        .bind(provider.identity)
        .fetch_optional(db)
        .await?;
    if let Some(id) = reused {
        return Ok(id);
    }
    sqlx::query_scalar(REGISTER_PROVIDER)
        .bind(provider.backend)
        .bind(provider.adapter)
        .bind(provider.site_key)
        .bind(now)
        .bind(provider.identity)
        .bind(provider.address)
        .fetch_one(db)
        .await
}

/// Marks every provider row disconnected, at start: no connection outlives the server that held it.
pub async fn all_providers_disconnected(db: impl SqliteExecutor<'_>, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(ALL_PROVIDERS_DISCONNECTED).bind(now).execute(db).await?;
    Ok(())
}

/// Records the end of a provider's connection.
pub async fn provider_disconnected(db: impl SqliteExecutor<'_>, provider: i64, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(PROVIDER_DISCONNECTED).bind(now).bind(provider).execute(db).await?;
    Ok(())
}

/// Whether provider `id` ever connected.
pub async fn provider_exists(db: impl SqliteExecutor<'_>, provider: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(PROVIDER_EXISTS).bind(provider).fetch_one(db).await
}

/// A checkpoint to register.
#[derive(Debug)]
pub struct NewCheckpoint<'a> {
    pub version: u64,
    pub epoch: u64,
    pub params_key: &'a str,
    pub state_key: &'a str,
    pub size_bytes: u64,
}

/// Registers a checkpoint and makes it the one the project resumes from, with its version and epoch, within `tx`.
pub async fn record_checkpoint(
    tx: &mut SqliteConnection,
    project: i64,
    checkpoint: &NewCheckpoint<'_>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let (version, epoch) = (int(checkpoint.version), int(checkpoint.epoch));
    sqlx::query(INSERT_CHECKPOINT)
        .bind(project)
        .bind(version)
        .bind(epoch)
        .bind(checkpoint.params_key)
        .bind(checkpoint.state_key)
        .bind(int(checkpoint.size_bytes))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(SET_CHECKPOINT_VERSION)
        .bind(version)
        .bind(epoch)
        .bind(version)
        .bind(now)
        .bind(project)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The project's checkpoints beyond the newest `keep`: version, params key and state key.
pub async fn checkpoints_beyond(
    db: impl SqliteExecutor<'_>,
    project: i64,
    keep: usize,
) -> Result<Vec<(i64, String, String)>, sqlx::Error> {
    sqlx::query_as(CHECKPOINTS_BEYOND).bind(project).bind(i64::try_from(keep).unwrap_or(i64::MAX)).fetch_all(db).await
}

/// Unregisters a checkpoint.
pub async fn delete_checkpoint(db: impl SqliteExecutor<'_>, project: i64, version: i64) -> Result<(), sqlx::Error> {
    sqlx::query(DELETE_CHECKPOINT).bind(project).bind(version).execute(db).await?;
    Ok(())
}

/// The version the project resumes from, if it has a checkpoint.
pub async fn checkpoint_version(db: impl SqliteExecutor<'_>, project: i64) -> Result<Option<i64>, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(CHECKPOINT_VERSION).bind(project).fetch_optional(db).await?.flatten())
}

/// The params and state keys of the project's checkpoint of `version`, if it is registered.
pub async fn checkpoint_keys(
    db: impl SqliteExecutor<'_>,
    project: i64,
    version: i64,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as(CHECKPOINT_KEYS).bind(project).bind(version).fetch_optional(db).await
}

/// The project's checkpoints, newest first.
pub async fn list_checkpoints(db: impl SqliteExecutor<'_>, project: i64) -> Result<Vec<CheckpointView>, sqlx::Error> {
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(LIST_CHECKPOINTS).bind(project).fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(version, epoch, size_bytes, created_at_unix)| CheckpointView {
            version,
            epoch,
            size_bytes,
            created_at_unix,
        })
        .collect())
}

/// The project's credit per provider, most samples first: the connections of one persistent key are one
/// provider (named by its latest connection), a connection without a key is one of its own.
pub async fn provider_credits_of_project(
    db: impl SqliteExecutor<'_>,
    project: i64,
) -> Result<Vec<CreditLine>, sqlx::Error> {
    type Row = (i64, Option<String>, Option<String>, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(PROVIDER_CREDITS_OF_PROJECT).bind(project).fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(provider_id, site_key, backend, contributions, verified, samples)| CreditLine {
            provider_id,
            site_key,
            backend,
            contributions,
            verified,
            samples,
        })
        .collect())
}

/// The project's credit per site, most samples first.
pub async fn site_credits_of_project(
    db: impl SqliteExecutor<'_>,
    project: i64,
) -> Result<Vec<SiteCredit>, sqlx::Error> {
    let rows: Vec<(Option<String>, i64, i64)> =
        sqlx::query_as(SITE_CREDITS_OF_PROJECT).bind(project).fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(site_key, contributions, samples)| SiteCredit { site_key, contributions, samples })
        .collect())
}

/// A provider's credit per project: connection `provider`'s, with that of every other connection of its
/// persistent key.
pub async fn project_credits_of_provider(
    db: impl SqliteExecutor<'_>,
    provider: i64,
) -> Result<Vec<ProviderProjectCredit>, sqlx::Error> {
    let rows: Vec<(i64, i64, i64)> =
        sqlx::query_as(PROJECT_CREDITS_OF_PROVIDER).bind(provider).bind(provider).fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(project_id, contributions, samples)| ProviderProjectCredit { project_id, contributions, samples })
        .collect())
}
