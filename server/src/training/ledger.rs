//! The training ledger in the database: updates (contributions and applied batches), metrics rows, the reset
//! to a checkpoint's version, and the finished state.

use sqlx::SqlitePool;

use super::core::{MetricsRecord, UpdateRecord};
use crate::db::now_unix;

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Deletes the records of versions after `version` (contributions, applied batches, metrics) and sets the
/// project's version and epoch: a coordinator starting from a checkpoint leases those batches again.
pub async fn reset_after(db: &SqlitePool, project: i64, version: u64, epoch: u64) -> Result<(), sqlx::Error> {
    for sql in [
        "DELETE FROM contributions WHERE project_id = ? AND version > ?",
        "DELETE FROM applied_batches WHERE project_id = ? AND version > ?",
        "DELETE FROM metrics WHERE project_id = ? AND version > ?",
    ] {
        sqlx::query(sql).bind(project).bind(int(version)).execute(db).await?;
    }
    sqlx::query("UPDATE projects SET version = ?, epoch = ? WHERE id = ?")
        .bind(int(version))
        .bind(int(epoch))
        .bind(project)
        .execute(db)
        .await?;
    Ok(())
}

/// Records an update's contributions and applied batches in one transaction.
pub async fn record_update(db: &SqlitePool, project: i64, update: &UpdateRecord) -> Result<(), sqlx::Error> {
    let now = now_unix();
    let mut tx = db.begin().await?;
    for b in &update.contributions {
        let contribution: i64 = sqlx::query_scalar(
            "INSERT INTO contributions (project_id, provider_id, site_key, lease_id, base_version, version, samples,
                                        mean_loss, applied_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(project)
        .bind(int(b.provider.0))
        .bind(&b.site_key)
        .bind(int(b.lease.0))
        .bind(int(b.base_version))
        .bind(int(update.version))
        .bind(i64::from(b.samples))
        .bind(f64::from(b.mean_loss))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        for unit in &b.units {
            sqlx::query(
                "INSERT INTO applied_batches (project_id, epoch, shard, batch, contribution_id, version)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(project)
            .bind(int(update.epoch))
            .bind(i64::from(unit.shard))
            .bind(i64::from(unit.batch))
            .bind(contribution)
            .bind(int(update.version))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

/// Records a row of the metrics history.
pub async fn record_metrics(db: &SqlitePool, project: i64, row: &MetricsRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR REPLACE INTO metrics (project_id, version, epoch, samples, train_loss, val_loss, val_accuracy, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(project)
    .bind(int(row.version))
    .bind(int(row.epoch))
    .bind(int(row.samples))
    .bind(row.train_loss)
    .bind(row.val_loss)
    .bind(row.val_accuracy)
    .bind(now_unix())
    .execute(db)
    .await?;
    Ok(())
}

/// Marks a running project finished.
pub async fn mark_finished(db: &SqlitePool, project: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projects SET state = 'finished', updated_at = ? WHERE id = ? AND state = 'running'")
        .bind(now_unix())
        .bind(project)
        .execute(db)
        .await?;
    Ok(())
}
