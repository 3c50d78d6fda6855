//! Datasets and their shards.

use sqlx::{SqliteConnection, SqliteExecutor};

pub const VALIDATION_SAMPLES: &str =
    "SELECT COALESCE(SUM(sample_count), 0) FROM shards WHERE project_id = ? AND role = 'validation'";
pub const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM datasets WHERE project_id = ?)";
pub const GET: &str = "SELECT format, feature_dtype, sample_shape, train_samples, validation_samples FROM datasets \
     WHERE project_id = ?";
pub const FEATURE_DTYPE: &str = "SELECT feature_dtype FROM datasets WHERE project_id = ?";
pub const SHARD_COUNTS: &str = "SELECT role, COUNT(*) FROM shards WHERE project_id = ? GROUP BY role";
pub const SHARD_KEYS: &str = "SELECT object_key FROM shards WHERE project_id = ?";
pub const SHARDS: &str = "SELECT role, number, object_key, sha256, sample_count, size_bytes FROM shards \
     WHERE project_id = ? ORDER BY role, number";
pub const STORED_BYTES_OF_USER_EXCEPT: &str = "SELECT COALESCE(SUM(s.size_bytes), 0) FROM shards AS s \
     JOIN projects AS p ON p.id = s.project_id WHERE p.user_id = ? AND p.id != ?";
pub const DELETE_SHARDS: &str = "DELETE FROM shards WHERE project_id = ?";
pub const DELETE: &str = "DELETE FROM datasets WHERE project_id = ?";
pub const INSERT: &str = "INSERT INTO datasets (project_id, format, feature_dtype, sample_shape, train_samples, \
     validation_samples, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)";
pub const INSERT_SHARD: &str = "INSERT INTO shards (project_id, role, number, object_key, sha256, sample_count, \
     size_bytes) VALUES (?, ?, ?, ?, ?, ?, ?)";

/// A committed dataset as stored; `sample_shape` is JSON.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DatasetRow {
    pub format: String,
    pub feature_dtype: String,
    pub sample_shape: String,
    pub train_samples: i64,
    pub validation_samples: i64,
}

/// A shard as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ShardRow {
    pub role: String,
    pub number: i64,
    pub object_key: String,
    pub sha256: String,
    pub sample_count: i64,
    pub size_bytes: i64,
}

/// The bytes of the committed shards of `user_id`'s projects other than `project`: what counts against the
/// account's storage quota while `project`'s dataset is replaced.
pub async fn stored_bytes_of_user_except(
    db: impl SqliteExecutor<'_>,
    user_id: i64,
    project: i64,
) -> Result<u64, sqlx::Error> {
    let bytes: i64 = sqlx::query_scalar(STORED_BYTES_OF_USER_EXCEPT).bind(user_id).bind(project).fetch_one(db).await?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

/// Whether the project has a committed dataset.
pub async fn exists(db: impl SqliteExecutor<'_>, project: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(EXISTS).bind(project).fetch_one(db).await
}

/// The project's committed dataset, if any.
pub async fn get(db: impl SqliteExecutor<'_>, project: i64) -> Result<Option<DatasetRow>, sqlx::Error> {
    sqlx::query_as(GET).bind(project).fetch_optional(db).await
}

/// The element type of the project's features, if it has a dataset.
pub async fn feature_dtype(db: impl SqliteExecutor<'_>, project: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(FEATURE_DTYPE).bind(project).fetch_optional(db).await
}

/// How many shards the project has per role (`train`, `validation`).
pub async fn shard_counts(db: impl SqliteExecutor<'_>, project: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(SHARD_COUNTS).bind(project).fetch_all(db).await
}

/// The object keys of the project's registered shards.
pub async fn shard_keys(db: impl SqliteExecutor<'_>, project: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(SHARD_KEYS).bind(project).fetch_all(db).await
}

/// The project's shards, by role and number.
pub async fn shards(db: impl SqliteExecutor<'_>, project: i64) -> Result<Vec<ShardRow>, sqlx::Error> {
    sqlx::query_as(SHARDS).bind(project).fetch_all(db).await
}

/// Deletes the project's dataset and shard rows.
pub async fn delete(tx: &mut SqliteConnection, project: i64) -> Result<(), sqlx::Error> {
    sqlx::query(DELETE_SHARDS).bind(project).execute(&mut *tx).await?;
    sqlx::query(DELETE).bind(project).execute(&mut *tx).await?;
    Ok(())
}

/// Stores the project's dataset row.
pub async fn insert(
    tx: &mut SqliteConnection,
    project: i64,
    dataset: &DatasetRow,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT)
        .bind(project)
        .bind(&dataset.format)
        .bind(&dataset.feature_dtype)
        .bind(&dataset.sample_shape)
        .bind(dataset.train_samples)
        .bind(dataset.validation_samples)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Stores a shard row.
pub async fn insert_shard(tx: &mut SqliteConnection, project: i64, shard: &ShardRow) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_SHARD)
        .bind(project)
        .bind(&shard.role)
        .bind(shard.number)
        .bind(&shard.object_key)
        .bind(&shard.sha256)
        .bind(shard.sample_count)
        .bind(shard.size_bytes)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The samples of project `id`'s validation split (0 without one).
pub async fn validation_samples(db: impl SqliteExecutor<'_>, id: i64) -> Result<u64, sqlx::Error> {
    let samples: i64 = sqlx::query_scalar(VALIDATION_SAMPLES).bind(id).fetch_one(db).await?;
    Ok(u64::try_from(samples).unwrap_or(0))
}
