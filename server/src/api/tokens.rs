//! API tokens: `POST /api/tokens` creates one and shows it once, `GET /api/tokens` lists the live ones,
//! `DELETE /api/tokens/{id}` revokes one.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{CurrentUser, Owned, secret};
use crate::db::now_unix;
use crate::error::{AppError, ErrorBody, FieldError};
use crate::extract::{Json, Path};
use crate::state::AppState;

/// Longest token name, in characters.
pub const NAME_MAX_CHARS: usize = 64;
/// Live tokens a user may hold at once.
pub const MAX_LIVE_TOKENS: i64 = 100;
/// Characters of a token kept to tell tokens apart in a list (`daig_` and 8 more).
const PREFIX_CHARS: usize = 13;
/// Shortest lifetime a token may be given.
const MIN_TTL_SECS: u64 = 60;

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 64 characters, no control characters.
    pub name: String,
    /// Lifetime in seconds, at least 60 and at most the server's `token_ttl_secs` (its default).
    pub expires_in_secs: Option<u64>,
}

/// A token just created: the only time `token` is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    pub id: i64,
    pub name: String,
    /// `daig_` and 43 base64url characters; send it as `Authorization: Bearer <token>`. Only its hash is kept.
    pub token: String,
    pub prefix: String,
    pub created_at_unix: i64,
    pub expires_at_unix: i64,
}

/// A live token, without its secret.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    /// The token's first characters.
    pub prefix: String,
    pub created_at_unix: i64,
    pub expires_at_unix: i64,
    /// To the minute.
    pub last_used_at_unix: Option<i64>,
}

/// The caller's live tokens, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// Creates a token.
#[utoipa::path(post, path = "/api/tokens", tag = "tokens", request_body = CreateToken,
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 201, description = "Created; the token is shown this once", body = CreatedToken),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 409, description = "The user already holds the most live tokens allowed", body = ErrorBody),
        (status = 422, description = "Invalid fields", body = ErrorBody),
    )
)]
pub async fn create_token(
    State(state): State<AppState>,
    user: CurrentUser,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), AppError> {
    let max_ttl_secs = state.settings().token_ttl_secs;
    let ttl_secs = body.expires_in_secs.unwrap_or(max_ttl_secs);
    let mut errors = Vec::new();
    let name_chars = body.name.chars().count();
    if name_chars == 0 || name_chars > NAME_MAX_CHARS || body.name.chars().any(char::is_control) {
        errors.push(FieldError { field: "name", message: "must be 1 to 64 characters, none of them control".into() });
    }
    if !(MIN_TTL_SECS..=max_ttl_secs).contains(&ttl_secs) {
        errors.push(FieldError {
            field: "expires_in_secs",
            message: format!("must be in {MIN_TTL_SECS}..={max_ttl_secs}"),
        });
    }
    if !errors.is_empty() {
        return Err(AppError::Validation(errors));
    }
    let now = now_unix();
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_tokens WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?",
    )
    .bind(user.id)
    .bind(now)
    .fetch_one(state.db())
    .await?;
    if live >= MAX_LIVE_TOKENS {
        return Err(AppError::Conflict {
            message: format!("you hold {MAX_LIVE_TOKENS} live tokens, the most allowed; revoke one first"),
            field: "name",
        });
    }
    let token = secret::new_api_token()?;
    let prefix: String = token.chars().take(PREFIX_CHARS).collect();
    let expires_at_unix = now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_tokens (user_id, name, token_hash, prefix, created_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(user.id)
    .bind(&body.name)
    .bind(secret::digest(&token))
    .bind(&prefix)
    .bind(now)
    .bind(expires_at_unix)
    .fetch_one(state.db())
    .await?;
    let created = CreatedToken { id, name: body.name, token, prefix, created_at_unix: now, expires_at_unix };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists the caller's live tokens (neither revoked nor expired).
#[utoipa::path(get, path = "/api/tokens", tag = "tokens", security(("bearer" = []), ("session" = [])), responses(
    (status = 200, description = "The live tokens, oldest first", body = TokenList),
    (status = 401, description = "No valid credentials", body = ErrorBody),
))]
pub async fn list_tokens(State(state): State<AppState>, user: CurrentUser) -> Result<Json<TokenList>, AppError> {
    let tokens = sqlx::query_as::<_, TokenView>(
        "SELECT id, name, prefix, created_at AS created_at_unix, expires_at AS expires_at_unix,
                last_used_at AS last_used_at_unix
         FROM api_tokens WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? ORDER BY id",
    )
    .bind(user.id)
    .bind(now_unix())
    .fetch_all(state.db())
    .await?;
    Ok(Json(TokenList { tokens }))
}

/// A token's id and owner, for the ownership check.
#[derive(Debug, sqlx::FromRow)]
struct TokenOwner {
    id: i64,
    user_id: i64,
}

impl Owned for TokenOwner {
    fn owner_id(&self) -> i64 {
        self.user_id
    }
}

/// Revokes a token at once; requests with it get 401 from then on.
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "tokens", security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
        (status = 404, description = "No live token with this id belongs to the caller", body = ErrorBody),
    )
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, AppError> {
    let row = sqlx::query_as::<_, TokenOwner>("SELECT id, user_id FROM api_tokens WHERE id = ? AND revoked_at IS NULL")
        .bind(id)
        .fetch_optional(state.db())
        .await?;
    let token = user.owned(row, "token")?;
    sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ?")
        .bind(now_unix())
        .bind(token.id)
        .execute(state.db())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
