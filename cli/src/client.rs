//! [`Client`]: the CLI's only way to the server, HTTP(S) to its JSON API with `Authorization: Bearer`.
//!
//! It turns every failure into a [`CliError`]: an answer in the error shape keeps its code, message and details;
//! a refused connection names the URL. HTTPS is rustls with the ring provider, installed here because reqwest is
//! built without a provider of its own (`rustls-no-provider`, which keeps aws-lc-sys out of the build);
//! certificates are checked against the system's roots.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::CliError;

use daig_shared::api::accounts::CSRF_HEADER;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an ordinary request may take; uploads and downloads have no limit (see [`Client::request_unbounded`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An HTTP client for one server, with or without a token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The normalised base URL, without a trailing slash.
    server: String,
    token: Option<String>,
}

impl Client {
    /// A client for `server` (as [`super::config::normalize_server`] gives it).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots can be loaded, say).
    pub fn new(server: &str, token: Option<String>) -> Result<Self, CliError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("daig-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| CliError::Other(anyhow::Error::new(e).context("cannot set up the HTTP client")))?;
        Ok(Self { http, server: server.to_owned(), token })
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A request to `path` (`/api/...`) with the token, and the usual timeout.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_unbounded(method, path).timeout(REQUEST_TIMEOUT)
    }

    /// A request with the token but no overall timeout, for streamed uploads and downloads.
    pub fn request_unbounded(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.server));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends `request`; a success is returned as is, anything else becomes the matching [`CliError`].
    ///
    /// # Errors
    /// [`CliError::Unreachable`], [`CliError::Api`], or [`CliError::Other`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response).await)
    }

    /// Sends `request` and reads the JSON answer as a raw value (what `--json` prints) and as `T`.
    ///
    /// # Errors
    /// As [`Client::send`], and an answer that is not JSON.
    pub async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<(Value, T), CliError> {
        let response = self.send(request).await?;
        let bytes = response.bytes().await.map_err(|e| self.transport_error(&e))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Other(anyhow::anyhow!("the server's answer is not JSON ({e}): {}", snippet(&bytes)))
        })?;
        let typed = serde_json::from_value(value.clone())
            .map_err(|e| CliError::Other(anyhow::anyhow!("the server's answer has an unexpected shape: {e}")))?;
        Ok((value, typed))
    }

    /// `GET path`, read as JSON.
    ///
    /// # Errors
    /// See [`Client::json`].
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(Value, T), CliError> {
        self.json(self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body, read as JSON.
    ///
    /// # Errors
    /// See [`Client::json`].
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<(Value, T), CliError> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    /// `PUT path` with a JSON body, read as JSON.
    ///
    /// # Errors
    /// See [`Client::json`].
    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<(Value, T), CliError> {
        self.json(self.request(Method::PUT, path).json(body)).await
    }

    /// `DELETE path`, expecting no body back.
    ///
    /// # Errors
    /// See [`Client::send`].
    pub async fn delete(&self, path: &str) -> Result<(), CliError> {
        self.send(self.request(Method::DELETE, path)).await.map(drop)
    }

    /// The error for a request that got no answer (or whose answer broke off).
    pub fn transport_error(&self, e: &reqwest::Error) -> CliError {
        let reason = chain(e);
        let url = self.server.clone();
        if e.is_connect() {
            CliError::Unreachable { url, reason, tls: is_tls_error(e) }
        } else if e.is_timeout() {
            CliError::Unreachable { url, reason: format!("no answer in time ({reason})"), tls: false }
        } else {
            CliError::Other(anyhow::anyhow!("the request to {} failed: {reason}", self.server))
        }
    }
}

/// The headers that authenticate a dashboard session: its cookies and the CSRF token. Send them from a client
/// without a token, which the server would try first.
///
/// # Errors
/// Values that cannot be header values.
pub fn session_headers(cookies: &str, csrf: &str) -> Result<HeaderMap, CliError> {
    let mut headers = HeaderMap::new();
    let invalid = |_| CliError::Other(anyhow::anyhow!("the server sent a session cookie that cannot be sent back"));
    headers.insert(reqwest::header::COOKIE, HeaderValue::from_str(cookies).map_err(invalid)?);
    headers.insert(CSRF_HEADER, HeaderValue::from_str(csrf).map_err(invalid)?);
    Ok(headers)
}

/// The `name=value` pairs of a response's `Set-Cookie` headers, as one `Cookie` header value.
pub fn cookies_of(response: &Response) -> String {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::trim).map(str::to_owned))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The [`CliError::Api`] for an unsuccessful answer.
async fn api_error(response: Response) -> CliError {
    let status = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let error = body.as_ref().and_then(|b| b.get("error")).filter(|e| e.get("message").is_some());
    match error {
        Some(error) => CliError::Api {
            status: status.as_u16(),
            code: error.get("code").and_then(Value::as_str).unwrap_or("unknown").to_owned(),
            message: error.get("message").and_then(Value::as_str).unwrap_or("").to_owned(),
            details: error.get("details").cloned().filter(|d| !d.is_null()),
        },
        // Not the server's error shape: a proxy in between, or not a DAIG server at all.
        None => CliError::Api {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: format!("the server answered {}{}", describe(status), body_note(&bytes)),
            details: None,
        },
    }
}

fn describe(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn body_note(bytes: &[u8]) -> String {
    if bytes.is_empty() { String::new() } else { format!(": {}", snippet(bytes)) }
}

/// The start of a body, for a message.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its sources, joined by `: `, without repeats and without the generic layers of reqwest and hyper
/// ("error sending request for url (...)", "client error (Connect)"), which say less than their causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        let generic = text.starts_with("error sending request") || text.starts_with("client error (");
        if !generic && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() { e.to_string() } else { parts.join(": ") }
}

/// Whether a rustls error is among `e`'s causes.
fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        // An `io::Error`'s `source` skips the error it wraps (often another `io::Error`); `get_ref` reaches it.
        next = match e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// Installs rustls's ring provider as the process default, once. Any `reqwest::Client` in this crate needs it,
/// since reqwest is built without a provider: without one, building a client panics.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed a provider first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
