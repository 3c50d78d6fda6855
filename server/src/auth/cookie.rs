//! The two dashboard cookies: `daig_session` (HttpOnly, the credential) and `daig_csrf` (readable by the page's
//! script, which echoes it in `X-CSRF-Token`), both `SameSite=Lax`, `Secure` when configured.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

/// The session cookie's name.
pub const SESSION: &str = daig_shared::api::accounts::SESSION_COOKIE;
/// The CSRF cookie's name.
pub const CSRF: &str = daig_shared::api::accounts::CSRF_COOKIE;
/// The header that must repeat the CSRF cookie on cookie-authenticated writes.
pub const CSRF_HEADER: &str = daig_shared::api::accounts::CSRF_HEADER;

/// The value of cookie `name` in the request's `Cookie` headers, if any.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// A `Set-Cookie` value; `max_age_secs` 0 deletes the cookie.
pub fn set(name: &str, value: &str, max_age_secs: u64, http_only: bool, secure: bool) -> String {
    let mut cookie = format!("{name}={value}; Path=/; Max-Age={max_age_secs}; SameSite=Lax");
    if http_only {
        cookie.push_str("; HttpOnly");
    }
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}
