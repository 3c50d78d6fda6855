//! Projects: their rows, their states, their settings.

use sqlx::{SqliteConnection, SqliteExecutor};

/// A project as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProjectRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub state: String,
    pub model_json: String,
    pub settings_json: String,
    pub site_key: Option<String>,
    pub param_count: i64,
    pub flops_per_sample: i64,
    pub epoch: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The columns of [`ProjectRow`], in the statements that read one.
macro_rules! project_columns {
    () => {
        "SELECT id, user_id, name, state, model_json, settings_json, site_key, param_count, flops_per_sample, \
         epoch, version, created_at, updated_at FROM projects"
    };
}

pub const GET: &str = concat!(project_columns!(), " WHERE id = ?");
pub const GET_OF_USER: &str = concat!(project_columns!(), " WHERE id = ? AND user_id = ?");
pub const LIST_OF_USER: &str = concat!(project_columns!(), " WHERE user_id = ? ORDER BY id");
pub const LIST_RUNNING: &str = concat!(project_columns!(), " WHERE state = 'running'");
pub const LIST_PUBLIC: &str = concat!(
    project_columns!(),
    " WHERE site_key IS NULL AND state IN ('running', 'paused') ORDER BY id DESC LIMIT 200"
);
/// Inserts only while the user has fewer projects than the last parameter: counted and inserted in one statement,
/// so that two creations at once cannot both pass the quota.
pub const INSERT: &str = "INSERT INTO projects (user_id, name, state, model_json, settings_json, site_key, \
     param_count, flops_per_sample, created_at, updated_at) SELECT ?1, ?2, 'draft', ?3, ?4, ?5, ?6, ?7, ?8, ?8 \
     WHERE (SELECT COUNT(*) FROM projects WHERE user_id = ?1) < ?9 RETURNING id";
pub const SET_SETTINGS: &str = "UPDATE projects SET settings_json = ?, updated_at = ? WHERE id = ?";
pub const DELETE: &str = "DELETE FROM projects WHERE id = ?";
/// Moves a project, only from the state given, only with a dataset when asked, and only while its owner runs fewer
/// projects than the last parameter (NULL for no limit): one statement, so that two starts at once cannot both
/// pass the running quota.
pub const MOVE: &str = "UPDATE projects SET state = ?1, updated_at = ?2 WHERE id = ?3 AND state = ?4 \
     AND (?5 = 0 OR EXISTS (SELECT 1 FROM datasets WHERE project_id = projects.id)) \
     AND (?6 IS NULL OR (SELECT COUNT(*) FROM projects AS p WHERE p.user_id = projects.user_id \
     AND p.state = 'running') < ?6)";
pub const COUNT_RUNNING_OF_USER: &str = "SELECT COUNT(*) FROM projects WHERE user_id = ? AND state = 'running'";
pub const TOUCH_DRAFT: &str = "UPDATE projects SET updated_at = ? WHERE id = ? AND state = 'draft'";
pub const STATE: &str = "SELECT state FROM projects WHERE id = ?";
pub const ADMISSION: &str = "SELECT state, site_key, settings_json FROM projects WHERE id = ?";
pub const BY_SITE_KEY: &str = "SELECT id, state FROM projects WHERE site_key = ?";
pub const MARK_FINISHED: &str =
    "UPDATE projects SET state = 'finished', updated_at = ? WHERE id = ? AND state = 'running'";

/// Project `id`.
pub async fn get(db: impl SqliteExecutor<'_>, id: i64) -> Result<Option<ProjectRow>, sqlx::Error> {
    sqlx::query_as(GET).bind(id).fetch_optional(db).await
}

/// Project `id` if `user_id` owns it.
pub async fn get_of_user(
    db: impl SqliteExecutor<'_>,
    id: i64,
    user_id: i64,
) -> Result<Option<ProjectRow>, sqlx::Error> {
    sqlx::query_as(GET_OF_USER).bind(id).bind(user_id).fetch_optional(db).await
}

/// The user's projects, oldest first.
pub async fn list_of_user(db: impl SqliteExecutor<'_>, user_id: i64) -> Result<Vec<ProjectRow>, sqlx::Error> {
    sqlx::query_as(LIST_OF_USER).bind(user_id).fetch_all(db).await
}

/// The projects in the `running` state.
pub async fn list_running(db: impl SqliteExecutor<'_>) -> Result<Vec<ProjectRow>, sqlx::Error> {
    sqlx::query_as(LIST_RUNNING).fetch_all(db).await
}

/// The public projects that are running or paused, newest first (at most 200).
pub async fn list_public(db: impl SqliteExecutor<'_>) -> Result<Vec<ProjectRow>, sqlx::Error> {
    sqlx::query_as(LIST_PUBLIC).fetch_all(db).await
}

/// A project to store, in the `draft` state.
#[derive(Debug)]
pub struct NewProject<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub model_json: &'a str,
    pub settings_json: &'a str,
    pub site_key: Option<&'a str>,
    pub param_count: i64,
    pub flops_per_sample: i64,
    pub now: i64,
}

/// Stores a draft project if its user has fewer than `max_projects`: its id, or `None` at the quota.
pub async fn insert(
    db: impl SqliteExecutor<'_>,
    project: &NewProject<'_>,
    max_projects: usize,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(INSERT)
        .bind(project.user_id)
        .bind(project.name)
        .bind(project.model_json)
        .bind(project.settings_json)
        .bind(project.site_key)
        .bind(project.param_count)
        .bind(project.flops_per_sample)
        .bind(project.now)
        .bind(i64::try_from(max_projects).unwrap_or(i64::MAX))
        .fetch_optional(db)
        .await
}

/// Replaces the project's settings.
pub async fn set_settings(
    db: impl SqliteExecutor<'_>,
    id: i64,
    settings_json: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(SET_SETTINGS).bind(settings_json).bind(now).bind(id).execute(db).await?;
    Ok(())
}

/// Deletes the project and, by cascade, its rows in the other tables.
pub async fn delete(db: impl SqliteExecutor<'_>, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(DELETE).bind(id).execute(db).await?;
    Ok(())
}

/// Moves the project from state `from` to `to`, only if it is still in `from`, with `needs_dataset` only if it
/// has a dataset, and with `max_running` only while its owner runs fewer projects: whether it moved.
pub async fn move_state(
    db: impl SqliteExecutor<'_>,
    id: i64,
    from: &str,
    to: &str,
    needs_dataset: bool,
    max_running: Option<usize>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let max_running = max_running.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    let done = sqlx::query(MOVE)
        .bind(to)
        .bind(now)
        .bind(id)
        .bind(from)
        .bind(needs_dataset)
        .bind(max_running)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// How many projects of `user_id` are running.
pub async fn count_running_of_user(db: impl SqliteExecutor<'_>, user_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(COUNT_RUNNING_OF_USER).bind(user_id).fetch_one(db).await
}

/// Within a transaction, takes SQLite's write lock with a write that succeeds only while the project is a draft.
/// `Ok(None)` when it is a draft; else the state it is in (`Some(None)` when there is no such project).
pub async fn lock_draft(tx: &mut SqliteConnection, id: i64, now: i64) -> Result<Option<Option<String>>, sqlx::Error> {
    let done = sqlx::query(TOUCH_DRAFT).bind(now).bind(id).execute(&mut *tx).await?;
    if done.rows_affected() > 0 {
        return Ok(None);
    }
    Ok(Some(sqlx::query_scalar(STATE).bind(id).fetch_optional(&mut *tx).await?))
}

/// What a provider's connection checks before it waits for project `id`: its state, site key and settings.
pub async fn admission(
    db: impl SqliteExecutor<'_>,
    id: i64,
) -> Result<Option<(String, Option<String>, String)>, sqlx::Error> {
    sqlx::query_as(ADMISSION).bind(id).fetch_optional(db).await
}

/// The id and state of the project whose site key is `key`.
pub async fn by_site_key(db: impl SqliteExecutor<'_>, key: &str) -> Result<Option<(i64, String)>, sqlx::Error> {
    sqlx::query_as(BY_SITE_KEY).bind(key).fetch_optional(db).await
}

/// Marks a running project finished.
pub async fn mark_finished(db: impl SqliteExecutor<'_>, id: i64, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(MARK_FINISHED).bind(now).bind(id).execute(db).await?;
    Ok(())
}
