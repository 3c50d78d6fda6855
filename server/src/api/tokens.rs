//! API tokens: `POST /api/tokens` creates one and shows it once, `GET /api/tokens` lists the live ones,
//! `DELETE /api/tokens/{id}` revokes one.

use axum::extract::State;
use axum::http::StatusCode;

pub use daig_shared::api::accounts::{
    CreateToken, CreatedToken, MAX_LIVE_TOKENS, TOKEN_NAME_MAX_CHARS as NAME_MAX_CHARS, TokenList, TokenView,
};

use crate::auth::{CurrentUser, Owned, secret};
use crate::db::{self, now_unix};
use crate::error::{AppError, ErrorBody, FieldError};
use crate::extract::{Json, Path};
use crate::state::AppState;

/// Characters of a token kept to tell tokens apart in a list (`daig_` and 8 more).
const PREFIX_CHARS: usize = 13;
/// Shortest lifetime a token may be given.
const MIN_TTL_SECS: u64 = 60;

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
            message: format!("must be between {MIN_TTL_SECS} and {max_ttl_secs} seconds, not {ttl_secs}"),
        });
    }
    if !errors.is_empty() {
        return Err(AppError::Validation(errors));
    }
    let now = now_unix();
    let live = db::accounts::count_live_tokens(state.db(), user.id, now).await?;
    if live >= MAX_LIVE_TOKENS {
        return Err(AppError::Conflict {
            message: format!("you hold {MAX_LIVE_TOKENS} live tokens, the most allowed; revoke one first"),
            field: "name",
        });
    }
    let token = secret::new_api_token()?;
    let prefix: String = token.chars().take(PREFIX_CHARS).collect();
    let expires_at_unix = now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    let token_hash = secret::digest(&token);
    let new = db::accounts::NewToken {
        user_id: user.id,
        name: &body.name,
        token_hash: &token_hash,
        prefix: &prefix,
        created_at: now,
        expires_at: expires_at_unix,
    };
    let id = db::accounts::insert_token(state.db(), &new).await?;
    let created = CreatedToken { id, name: body.name, token, prefix, created_at_unix: now, expires_at_unix };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists the caller's live tokens (neither revoked nor expired).
#[utoipa::path(get, path = "/api/tokens", tag = "tokens", security(("bearer" = []), ("session" = [])), responses(
    (status = 200, description = "The live tokens, oldest first", body = TokenList),
    (status = 401, description = "No valid credentials", body = ErrorBody),
))]
pub async fn list_tokens(State(state): State<AppState>, user: CurrentUser) -> Result<Json<TokenList>, AppError> {
    let tokens = db::accounts::list_live_tokens(state.db(), user.id, now_unix())
        .await?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            name: t.name,
            prefix: t.prefix,
            created_at_unix: t.created_at,
            expires_at_unix: t.expires_at,
            last_used_at_unix: t.last_used_at,
        })
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// A token's id and owner, for the ownership check.
#[derive(Debug)]
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
    let row = db::accounts::token_owner(state.db(), id).await?.map(|user_id| TokenOwner { id, user_id });
    let token = user.owned(row, "token")?;
    db::accounts::revoke_token(state.db(), token.id, now_unix()).await?;
    Ok(StatusCode::NO_CONTENT)
}
