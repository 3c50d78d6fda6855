//! [`CliError`], every way a `daig` command fails, how it is printed on stderr and the exit code it gives.
//!
//! A server error is printed as `error: <message>` followed by what its `details` hold (each field error, each
//! model problem with its layer and field, the reason a dataset was refused), so that one run shows everything to
//! fix.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

/// The exit codes, also listed in `daig --help`.
pub mod exit {
    /// A server refusal that is none of the below (409, 422, 5xx), or a local I/O failure.
    pub const FAILURE: u8 = 1;
    /// Wrong command-line use, or an input file that cannot be used.
    pub const USAGE: u8 = 2;
    /// Not logged in, or the token is wrong, revoked or expired.
    pub const AUTH: u8 = 3;
    /// No such project (or someone else's), or nothing to download yet.
    pub const NOT_FOUND: u8 = 4;
    /// The server could not be reached.
    pub const UNREACHABLE: u8 = 5;
}

/// Every way a command fails.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or an input file is unusable.
    #[error("{0}")]
    Usage(String),
    /// No credentials to send: never logged in, logged out, or logged in to another server.
    #[error("{0}")]
    NotLoggedIn(String),
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        /// The stable `error.code`, or `http_<status>` for a body that is not in the error shape.
        code: String,
        message: String,
        details: Option<Value>,
    },
    /// The server could not be reached at `url`; `tls` when the connection opened but TLS failed.
    #[error("cannot reach the DAIG server at {url}: {reason}")]
    Unreachable { url: String, reason: String, tls: bool },
    /// Anything else: local I/O, an answer that does not parse.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Usage(_) => exit::USAGE,
            Self::NotLoggedIn(_) => exit::AUTH,
            Self::Api { status: 401 | 403, .. } => exit::AUTH,
            Self::Api { status: 404, .. } => exit::NOT_FOUND,
            Self::Api { .. } | Self::Other(_) => exit::FAILURE,
            Self::Unreachable { .. } => exit::UNREACHABLE,
        })
    }

    /// The text printed on stderr: `error: ...`, the details, and a hint where one helps.
    pub fn render(&self) -> String {
        let mut out = match self {
            Self::Other(e) => format!("error: {e:#}\n"),
            other => format!("error: {other}\n"),
        };
        match self {
            Self::Api { details: Some(details), .. } => render_details(details, &mut out),
            Self::NotLoggedIn(_) => out.push_str("hint: run `daig login --server URL --username NAME`\n"),
            Self::Unreachable { tls: true, .. } => out.push_str(
                "hint: the TLS handshake failed: use an http:// URL for a server without TLS; an https server's \
                 certificate must be trusted by this system\n",
            ),
            Self::Unreachable { tls: false, .. } => {
                out.push_str("hint: is the server running? Set its address with --server or DAIG_SERVER\n");
            }
            _ => {}
        }
        if let Self::Api { status: 401, .. } = self {
            out.push_str("hint: the token is wrong, revoked or expired; run `daig login` to get a new one\n");
        }
        out
    }
}

/// Appends the lines `details` calls for: one per field error and per model problem, the reason, the retry time.
fn render_details(details: &Value, out: &mut String) {
    let mut known = false;
    for problem in details.get("model").and_then(Value::as_array).into_iter().flatten() {
        known = true;
        let mut place = Vec::new();
        if let Some(layer) = problem.get("layer").and_then(Value::as_u64) {
            match problem.get("layer_type").and_then(Value::as_str) {
                Some(kind) => place.push(format!("layer {layer} ({kind})")),
                None => place.push(format!("layer {layer}")),
            }
        }
        if let Some(field) = problem.get("field").and_then(Value::as_str) {
            place.push(field.to_owned());
        }
        let place = if place.is_empty() { "model".to_owned() } else { format!("model {}", place.join(", ")) };
        let _ = writeln!(out, "  - {place}: {}", text(problem.get("message")));
    }
    for field in details.get("fields").and_then(Value::as_array).into_iter().flatten() {
        known = true;
        let _ = writeln!(out, "  - {}: {}", text(field.get("field")), text(field.get("message")));
    }
    if let Some(reason) = details.get("reason").and_then(Value::as_str) {
        known = true;
        match details.get("part").and_then(Value::as_str) {
            Some(part) => _ = writeln!(out, "  {part}: {reason}"),
            None => _ = writeln!(out, "  reason: {reason}"),
        }
    }
    // A conflict names its field for programs; its message already says it for people.
    known |= details.get("field").is_some();
    if let Some(secs) = details.get("retry_after_secs").and_then(Value::as_u64) {
        known = true;
        let _ = writeln!(out, "  retry in {secs} s");
    }
    if !known {
        let _ = writeln!(out, "  details: {details}");
    }
}

/// A JSON string as text, anything else as JSON.
fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn api(status: u16, details: Value) -> CliError {
        CliError::Api { status, code: "x".into(), message: "some fields are invalid".into(), details: Some(details) }
    }

    #[test]
    fn every_model_problem_and_field_error_is_printed() {
        let details = json!({
            "model": [
                {"layer": 1, "layer_type": "dense", "field": "units", "message": "must be at least 1"},
                {"layer": null, "layer_type": null, "field": "loss", "message": "unknown loss"},
                {"message": "no layers"}
            ],
            "fields": [{"field": "settings.k", "message": "must be between 1 and 1024, not 0"}]
        });
        let text = api(422, details).render();
        assert_eq!(
            text,
            "error: some fields are invalid\n  - model layer 1 (dense), units: must be at least 1\n  - model loss: \
             unknown loss\n  - model: no layers\n  - settings.k: must be between 1 and 1024, not 0\n"
        );
    }

    #[test]
    fn reasons_fields_and_unknown_details_are_printed() {
        let text = api(422, json!({"part": "labels", "reason": "pickles are refused"})).render();
        assert!(text.ends_with("  labels: pickles are refused\n"), "{text}");
        let text = api(409, json!({"field": "username"})).render();
        assert_eq!(text, "error: some fields are invalid\n");
        let text = api(400, json!({"what": 1})).render();
        assert!(text.ends_with("  details: {\"what\":1}\n"), "{text}");
    }

    #[test]
    fn a_401_suggests_logging_in_and_codes_differ_by_kind() {
        let unauthenticated = api(401, json!({}));
        assert!(unauthenticated.render().contains("daig login"));
        let codes = [
            unauthenticated.exit_code(),
            api(404, json!({})).exit_code(),
            api(422, json!({})).exit_code(),
            CliError::Usage("x".into()).exit_code(),
            CliError::Unreachable { url: "u".into(), reason: "r".into(), tls: false }.exit_code(),
        ];
        let expected = [exit::AUTH, exit::NOT_FOUND, exit::FAILURE, exit::USAGE, exit::UNREACHABLE];
        assert_eq!(codes, expected.map(ExitCode::from));
    }
}
