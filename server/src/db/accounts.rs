//! Users, API tokens and sessions.

use sqlx::SqliteExecutor;

/// A user as credentials resolve to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    pub email: String,
}

pub const FIND_LIVE_TOKEN: &str = "SELECT t.id, t.last_used_at, u.id, u.username, u.email FROM api_tokens t \
     JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND t.revoked_at IS NULL AND t.expires_at > ?";
pub const TOUCH_TOKEN: &str =
    "UPDATE api_tokens SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)";
pub const FIND_LIVE_SESSION: &str = "SELECT s.id, s.csrf_hash, u.id, u.username, u.email FROM sessions s \
     JOIN users u ON u.id = s.user_id WHERE s.token_hash = ? AND s.expires_at > ?";
pub const FIND_LOGIN: &str =
    "SELECT id, username, email, password_hash, created_at FROM users WHERE username = ? COLLATE NOCASE OR email = ?";
pub const DELETE_EXPIRED_SESSIONS: &str = "DELETE FROM sessions WHERE expires_at <= ?";
pub const INSERT_SESSION: &str =
    "INSERT INTO sessions (user_id, token_hash, csrf_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?)";
pub const DELETE_SESSION: &str = "DELETE FROM sessions WHERE id = ?";
pub const COUNT_LIVE_TOKENS: &str =
    "SELECT COUNT(*) FROM api_tokens WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?";
pub const INSERT_TOKEN: &str = "INSERT INTO api_tokens (user_id, name, token_hash, prefix, created_at, expires_at) \
     VALUES (?, ?, ?, ?, ?, ?) RETURNING id";
pub const LIST_LIVE_TOKENS: &str = "SELECT id, name, prefix, created_at, expires_at, last_used_at FROM api_tokens \
     WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? ORDER BY id";
pub const TOKEN_OWNER: &str = "SELECT user_id FROM api_tokens WHERE id = ? AND revoked_at IS NULL";
pub const REVOKE_TOKEN: &str = "UPDATE api_tokens SET revoked_at = ? WHERE id = ?";
pub const NAME_OR_EMAIL_TAKEN: &str =
    "SELECT username = ? COLLATE NOCASE FROM users WHERE username = ? COLLATE NOCASE OR email = ?";
pub const INSERT_USER: &str =
    "INSERT INTO users (username, email, password_hash, created_at) VALUES (?, ?, ?, ?) RETURNING id";
pub const USER_CREATED_AT: &str = "SELECT created_at FROM users WHERE id = ?";

/// The live (unrevoked, unexpired at `now`) token with digest `token_hash`: its id, when it was last used, and its
/// user.
pub async fn find_live_token(
    db: impl SqliteExecutor<'_>,
    token_hash: &[u8],
    now: i64,
) -> Result<Option<(i64, Option<i64>, UserRow)>, sqlx::Error> {
    let row: Option<(i64, Option<i64>, i64, String, String)> =
        sqlx::query_as(FIND_LIVE_TOKEN).bind(token_hash).bind(now).fetch_optional(db).await?;
    Ok(row.map(|(token, last_used, id, username, email)| (token, last_used, UserRow { id, username, email })))
}

/// Sets a token's `last_used_at` to `now` unless it is at or after `since` already.
pub async fn touch_token(db: impl SqliteExecutor<'_>, token_id: i64, now: i64, since: i64) -> Result<(), sqlx::Error> {
    sqlx::query(TOUCH_TOKEN).bind(now).bind(token_id).bind(since).execute(db).await?;
    Ok(())
}

/// The live session with digest `token_hash`: its id, its CSRF token's digest, and its user.
pub async fn find_live_session(
    db: impl SqliteExecutor<'_>,
    token_hash: &[u8],
    now: i64,
) -> Result<Option<(i64, Vec<u8>, UserRow)>, sqlx::Error> {
    let row: Option<(i64, Vec<u8>, i64, String, String)> =
        sqlx::query_as(FIND_LIVE_SESSION).bind(token_hash).bind(now).fetch_optional(db).await?;
    Ok(row.map(|(session, csrf, id, username, email)| (session, csrf, UserRow { id, username, email })))
}

/// A user found by login (username, case-insensitive, or lowercase e-mail), with its password hash and creation
/// time.
pub async fn find_login(
    db: impl SqliteExecutor<'_>,
    login: &str,
) -> Result<Option<(UserRow, String, i64)>, sqlx::Error> {
    let row: Option<(i64, String, String, String, i64)> =
        sqlx::query_as(FIND_LOGIN).bind(login).bind(login.to_lowercase()).fetch_optional(db).await?;
    Ok(row.map(|(id, username, email, hash, created)| (UserRow { id, username, email }, hash, created)))
}

/// Deletes the sessions expired at `now`.
pub async fn delete_expired_sessions(db: impl SqliteExecutor<'_>, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(DELETE_EXPIRED_SESSIONS).bind(now).execute(db).await?;
    Ok(())
}

/// Stores a session (the digests of its token and CSRF token).
pub async fn insert_session(
    db: impl SqliteExecutor<'_>,
    user_id: i64,
    token_hash: &[u8],
    csrf_hash: &[u8],
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_SESSION)
        .bind(user_id)
        .bind(token_hash)
        .bind(csrf_hash)
        .bind(now)
        .bind(expires_at)
        .execute(db)
        .await?;
    Ok(())
}

/// Ends a session.
pub async fn delete_session(db: impl SqliteExecutor<'_>, session_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(DELETE_SESSION).bind(session_id).execute(db).await?;
    Ok(())
}

/// How many live tokens the user holds at `now`.
pub async fn count_live_tokens(db: impl SqliteExecutor<'_>, user_id: i64, now: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(COUNT_LIVE_TOKENS).bind(user_id).bind(now).fetch_one(db).await
}

/// A token to store.
#[derive(Debug)]
pub struct NewToken<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub token_hash: &'a [u8],
    pub prefix: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Stores a token; its id.
pub async fn insert_token(db: impl SqliteExecutor<'_>, token: &NewToken<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(INSERT_TOKEN)
        .bind(token.user_id)
        .bind(token.name)
        .bind(token.token_hash)
        .bind(token.prefix)
        .bind(token.created_at)
        .bind(token.expires_at)
        .fetch_one(db)
        .await
}

/// A live token as listed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
}

/// The user's live tokens, oldest first.
pub async fn list_live_tokens(
    db: impl SqliteExecutor<'_>,
    user_id: i64,
    now: i64,
) -> Result<Vec<TokenRow>, sqlx::Error> {
    sqlx::query_as(LIST_LIVE_TOKENS).bind(user_id).bind(now).fetch_all(db).await
}

/// The owner of unrevoked token `id`, if there is one.
pub async fn token_owner(db: impl SqliteExecutor<'_>, id: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(TOKEN_OWNER).bind(id).fetch_optional(db).await
}

/// Revokes token `id` at `now`.
pub async fn revoke_token(db: impl SqliteExecutor<'_>, id: i64, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(REVOKE_TOKEN).bind(now).bind(id).execute(db).await?;
    Ok(())
}

/// Whether a user has this username or e-mail: `Some(true)` when the username is taken, `Some(false)` when only
/// the e-mail is.
pub async fn name_or_email_taken(
    db: impl SqliteExecutor<'_>,
    username: &str,
    email: &str,
) -> Result<Option<bool>, sqlx::Error> {
    let taken: Option<(bool,)> =
        sqlx::query_as(NAME_OR_EMAIL_TAKEN).bind(username).bind(username).bind(email).fetch_optional(db).await?;
    Ok(taken.map(|(username_taken,)| username_taken))
}

/// Stores a user; its id.
///
/// # Errors
/// A unique violation when the username or e-mail is taken.
pub async fn insert_user(
    db: impl SqliteExecutor<'_>,
    username: &str,
    email: &str,
    password_hash: &str,
    now: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(INSERT_USER).bind(username).bind(email).bind(password_hash).bind(now).fetch_one(db).await
}

/// When user `id` signed up.
pub async fn user_created_at(db: impl SqliteExecutor<'_>, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(USER_CREATED_AT).bind(id).fetch_one(db).await
}
