//! Dashboard sessions: `POST /api/session` logs in with a password and sets the `daig_session` and `daig_csrf`
//! cookies; `DELETE /api/session` logs out.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::response::AppendHeaders;

pub use daig_shared::api::accounts::{LogIn, SessionView};

use crate::api::users::{PASSWORD_CHARS, UserView};
use crate::auth::{AuthMethod, CurrentUser, cookie, password, secret};
use crate::db::{self, now_unix};
use crate::error::{AppError, ErrorBody};
use crate::extract::Json;
use crate::limits::AuthRateLimit;
use crate::state::AppState;

type SetCookies = AppendHeaders<[(axum::http::HeaderName, String); 2]>;

/// Logs in with a password and sets the session cookies. Rate-limited per client IP.
#[utoipa::path(post, path = "/api/session", tag = "session", request_body = LogIn, responses(
    (status = 200, description = "Logged in; `Set-Cookie` carries `daig_session` (HttpOnly) and `daig_csrf`",
        body = SessionView),
    (status = 401, description = "Wrong login or password (which one is not said)", body = ErrorBody),
    (status = 429, description = "Too many attempts from this IP", body = ErrorBody),
))]
pub async fn log_in(
    _: AuthRateLimit,
    State(state): State<AppState>,
    Json(body): Json<LogIn>,
) -> Result<(SetCookies, Json<SessionView>), AppError> {
    if !PASSWORD_CHARS.contains(&body.password.chars().count()) {
        // No stored password can match; do not spend a hash on it.
        return Err(AppError::InvalidCredentials);
    }
    let row = db::accounts::find_login(state.db(), &body.login).await?;
    let stored_hash = row.as_ref().map(|r| r.1.clone());
    let matches = password::verify(body.password, stored_hash).await?;
    let Some((db::accounts::UserRow { id, username, email }, _, created_at_unix)) = row.filter(|_| matches) else {
        return Err(AppError::InvalidCredentials);
    };

    let now = now_unix();
    let ttl_secs = state.settings().session_ttl_secs;
    let expires_at_unix = now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    let session = secret::random_secret()?;
    let csrf = secret::random_secret()?;
    db::accounts::delete_expired_sessions(state.db(), now).await?;
    let (session_hash, csrf_hash) = (secret::digest(&session), secret::digest(&csrf));
    db::accounts::insert_session(state.db(), id, &session_hash, &csrf_hash, now, expires_at_unix).await?;
    let secure = state.settings().secure_cookies;
    let cookies = AppendHeaders([
        (SET_COOKIE, cookie::set(cookie::SESSION, &session, ttl_secs, true, secure)),
        (SET_COOKIE, cookie::set(cookie::CSRF, &csrf, ttl_secs, false, secure)),
    ]);
    let user = UserView { id, username, email, created_at_unix };
    Ok((cookies, Json(SessionView { user, csrf_token: csrf, expires_at_unix })))
}

/// Logs out: ends the cookie's session and clears both cookies. With a bearer token there is no session to end;
/// the answer is the same.
#[utoipa::path(delete, path = "/api/session", tag = "session", security(("bearer" = []), ("session" = [])),
    params(("X-CSRF-Token" = Option<String>, Header, description = "The daig_csrf cookie's value, with a session cookie")),
    responses(
        (status = 204, description = "Logged out; both cookies cleared"),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 403, description = "Session cookie without a matching X-CSRF-Token", body = ErrorBody),
    )
)]
pub async fn log_out(State(state): State<AppState>, user: CurrentUser) -> Result<(StatusCode, SetCookies), AppError> {
    if let AuthMethod::Session { session_id } = user.auth {
        db::accounts::delete_session(state.db(), session_id).await?;
    }
    let secure = state.settings().secure_cookies;
    let cookies = AppendHeaders([
        (SET_COOKIE, cookie::set(cookie::SESSION, "", 0, true, secure)),
        (SET_COOKIE, cookie::set(cookie::CSRF, "", 0, false, secure)),
    ]);
    Ok((StatusCode::NO_CONTENT, cookies))
}
