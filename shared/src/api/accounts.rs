//! Accounts, sessions and API tokens: the rules for usernames, e-mail addresses, passwords and token names, the
//! names of the dashboard's cookies and CSRF header, and the request and response bodies of `/api/users`,
//! `/api/me`, `/api/session` and `/api/tokens`.

use serde::{Deserialize, Serialize};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "daig_session";
/// The CSRF cookie's name.
pub const CSRF_COOKIE: &str = "daig_csrf";
/// The header that must repeat the CSRF cookie on cookie-authenticated writes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Password length in characters.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=128;

/// Username length in characters.
pub const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=32;

/// Longest e-mail address, in bytes (RFC 5321's path limit).
pub const EMAIL_MAX_BYTES: usize = 254;

/// A sign-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    /// 3 to 32 ASCII letters, digits, `_` or `-`, starting with a letter or digit; unique ignoring case.
    pub username: String,
    /// An e-mail address; unique ignoring case.
    pub email: String,
    /// 8 to 128 characters.
    pub password: String,
}

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserView {
    pub id: i64,
    pub username: String,
    /// Lowercased.
    pub email: String,
    pub created_at_unix: i64,
}

/// The current user and how the request was authenticated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    #[serde(flatten)]
    pub user: UserView,
    pub auth: AuthMethod,
}

/// How the current request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthMethod {
    /// An API token, by its id.
    Token { token_id: i64 },
    /// A dashboard session cookie, by the session's id.
    Session { session_id: i64 },
}

/// A log-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogIn {
    /// The username or the e-mail address, either ignoring case.
    pub login: String,
    pub password: String,
}

/// A new session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionView {
    pub user: UserView,
    /// The value of the `daig_csrf` cookie, to send as `X-CSRF-Token` on writes.
    pub csrf_token: String,
    pub expires_at_unix: i64,
}

/// Longest token name, in characters.
pub const TOKEN_NAME_MAX_CHARS: usize = 64;

/// Live tokens a user may hold at once.
pub const MAX_LIVE_TOKENS: i64 = 100;

/// A token to create.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 64 characters, no control characters.
    pub name: String,
    /// Lifetime in seconds, at least 60 and at most the server's `token_ttl_secs` (its default).
    pub expires_in_secs: Option<u64>,
}

/// A token just created: the only time `token` is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}
