//! Who is asking: [`CurrentUser`], extracted from `Authorization: Bearer <token>` or the session cookie (with
//! the CSRF check on cookie-authenticated writes), and [`Owned`], which turns another user's resource into a
//! 404 so that ids of other users' resources are not revealed.

pub mod cookie;
pub mod password;
pub mod secret;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};

pub use daig_shared::api::accounts::AuthMethod;

use crate::db::{self, now_unix};
use crate::error::AppError;
use crate::state::AppState;

/// The authenticated user of a request.
///
/// As an extractor it accepts `Authorization: Bearer <token>` (tried first: a request with a bad bearer token is
/// refused even if it also carries a cookie) or the `daig_session` cookie. On POST, PUT, PATCH and DELETE a
/// cookie-authenticated request must carry an `X-CSRF-Token` header equal to the `daig_csrf` cookie and to the
/// token issued with the session, else 403; bearer requests need no CSRF token since browsers never add them on
/// their own. No, unknown, revoked or expired credentials give 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentUser {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub auth: AuthMethod,
}

/// A resource that belongs to one user.
pub trait Owned {
    /// The owner's user id.
    fn owner_id(&self) -> i64;
}

impl CurrentUser {
    /// Returns `resource` when it exists and belongs to this user.
    ///
    /// # Errors
    /// [`AppError::NotFound`] naming `what` when it is missing *or* someone else's: the two are not told apart.
    pub fn owned<T: Owned>(&self, resource: Option<T>, what: &'static str) -> Result<T, AppError> {
        resource.filter(|r| r.owner_id() == self.id).ok_or(AppError::NotFound(what))
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if let Some(value) = parts.headers.get(AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or(AppError::Unauthenticated("the Authorization header must be `Bearer <token>`"))?;
            return by_token(state, token).await;
        }
        if let Some(session) = cookie::get(&parts.headers, cookie::SESSION) {
            let (user, csrf_hash) = by_session(state, session).await?;
            if is_write(&parts.method) {
                check_csrf(&parts.headers, &csrf_hash)?;
            }
            return Ok(user);
        }
        Err(AppError::Unauthenticated("authentication required: send `Authorization: Bearer <token>` or log in"))
    }
}

/// The 401 for an unknown, revoked or expired credential; which of these is not said.
const INVALID_CREDENTIAL: AppError = AppError::Unauthenticated("invalid, revoked or expired credentials");

/// Seconds between updates of a token's `last_used_at`, so that a busy token does not write on every request.
const LAST_USED_GRANULARITY_SECS: i64 = 60;

async fn by_token(state: &AppState, token: &str) -> Result<CurrentUser, AppError> {
    if !token.starts_with(secret::TOKEN_PREFIX) {
        return Err(INVALID_CREDENTIAL);
    }
    let now = now_unix();
    let row = db::accounts::find_live_token(state.db(), &secret::digest(token), now).await?;
    let (token_id, last_used_at, user) = row.ok_or(INVALID_CREDENTIAL)?;
    // Decided on the value read, not in the UPDATE's WHERE: an UPDATE that changes no row still takes SQLite's
    // write lock, which every request of a busy token would then queue for (see BENCHMARKS.md). The condition is
    // kept in the UPDATE too, so that concurrent requests write at most once.
    if last_used_at.is_none_or(|t| t < now - LAST_USED_GRANULARITY_SECS) {
        db::accounts::touch_token(state.db(), token_id, now, now - LAST_USED_GRANULARITY_SECS).await?;
    }
    let db::accounts::UserRow { id, username, email } = user;
    Ok(CurrentUser { id, username, email, auth: AuthMethod::Token { token_id } })
}

async fn by_session(state: &AppState, session: &str) -> Result<(CurrentUser, Vec<u8>), AppError> {
    let row = db::accounts::find_live_session(state.db(), &secret::digest(session), now_unix()).await?;
    let (session_id, csrf_hash, db::accounts::UserRow { id, username, email }) = row.ok_or(INVALID_CREDENTIAL)?;
    Ok((CurrentUser { id, username, email, auth: AuthMethod::Session { session_id } }, csrf_hash))
}

fn is_write(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method)
}

fn check_csrf(headers: &HeaderMap, csrf_hash: &[u8]) -> Result<(), AppError> {
    let header = headers.get(cookie::CSRF_HEADER).and_then(|v| v.to_str().ok()).ok_or(AppError::CsrfFailed)?;
    let cookie = cookie::get(headers, cookie::CSRF).ok_or(AppError::CsrfFailed)?;
    // Double submit (header equals cookie), and the token must be the one issued with this session, so that a
    // cookie planted by a sibling subdomain does not pass.
    if header == cookie && secret::digest(header) == csrf_hash { Ok(()) } else { Err(AppError::CsrfFailed) }
}
