//! [`AppError`], the one error type every handler and extractor returns, and the JSON shape it is sent in:
//! `{"error": {"code": "...", "message": "...", "details": ...}}`.
//!
//! Server errors (5xx) keep their cause out of the response; [`AppError::Internal`] is logged here, once, when it
//! becomes a response, and nowhere else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is wrong in a way no other variant names (a bad path parameter, say).
    #[error("{0}")]
    BadRequest(String),
    /// The body is not JSON at all.
    #[error("the request body is not valid JSON")]
    MalformedJson(String),
    /// The body is JSON of the wrong shape: wrong types, missing or unknown fields.
    #[error("the request body does not have the expected fields and types")]
    InvalidBody(String),
    /// The body is not declared as `application/json`.
    #[error("expected a request with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// The body is larger than the configured limit.
    #[error("the request body is larger than the server accepts")]
    PayloadTooLarge,
    /// Field values that break a rule; every broken rule is listed.
    #[error("some fields are invalid")]
    Validation(Vec<FieldError>),
    /// Query options of a request that break a rule (an unknown option, a bad value, options that do not go
    /// together); every broken rule is listed, each naming its option in `field`.
    #[error("invalid query options: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    InvalidQuery(Vec<FieldError>),
    /// A project to create is invalid: every problem of its model (with the layer and field the shared
    /// `SpecError` names) and of its fields, all at once.
    #[error("the project is invalid: {} problem(s), listed in details", .model.len() + .fields.len())]
    InvalidProject { model: Vec<daig_shared::model::SpecError>, fields: Vec<FieldError> },
    /// An uploaded dataset was refused: `part` is `features`, `labels` or `dataset` (the two together).
    #[error("the {part} {} refused: {reason}", if *.part == "dataset" { "was" } else { "were" })]
    InvalidDataset { part: &'static str, reason: String },
    /// No credentials, or credentials that are unknown, revoked or expired.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A log-in with a wrong login or password; which of the two is not said.
    #[error("wrong login or password")]
    InvalidCredentials,
    /// A cookie-authenticated write without a matching `X-CSRF-Token` header.
    #[error("missing or wrong X-CSRF-Token header (send the value of the daig_csrf cookie)")]
    CsrfFailed,
    /// The caller may not have this, with a sentence saying why (a site a project does not list).
    #[error("{0}")]
    Forbidden(String),
    /// The resource does not exist, or belongs to someone else.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// Something that does not exist yet, with a sentence saying why (a model whose training has not finished).
    #[error("{0}")]
    Missing(String),
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The resource would clash with an existing one (a taken username, say).
    #[error("{message}")]
    Conflict { message: String, field: &'static str },
    /// Too many attempts from this client; retry after the given time.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The account sends as many dataset uploads at once as it may.
    #[error("this account is already sending {max} uploads, the most it may send at once; wait for one to finish")]
    TooManyUploads { max: usize },
    /// The account has as many projects as it may have (`max_projects_per_account`).
    #[error("this account has {max} projects, the most it may have (project quota); delete one to create another")]
    ProjectQuota { max: usize },
    /// The account runs as many projects at once as it may (`max_running_projects_per_account`).
    #[error(
        "this account already runs {max} projects, the most it may run at once (running quota); pause, cancel or \
         let one finish first"
    )]
    RunningQuota { max: usize },
    /// The project's model or memory is over the server's model budget (`max_project_*`).
    #[error("this project cannot run here: {message} (model budget)")]
    ModelBudget { message: String },
    /// A dataset would take the account's stored datasets past `max_dataset_bytes_per_account`.
    #[error(
        "this dataset would take the account's stored datasets past {limit_bytes} bytes (storage quota; its other \
         projects' datasets take {used_bytes}); delete a dataset or send a smaller one"
    )]
    StorageQuota { limit_bytes: u64, used_bytes: u64 },
    /// The account holds as many live-update streams open as it may.
    #[error(
        "this account already has {max} live-update streams open, the most it may hold at once; close a project \
         page or wait for a stream to end"
    )]
    TooManyStreams { max: usize },
    /// An upload's body sent nothing for too long.
    #[error("the upload sent nothing for {secs} s and was dropped; send it again")]
    UploadStalled { secs: u64 },
    /// The client's address holds as many provider connections as one client may.
    #[error("this address already holds {max} provider connections, the most one client may hold at once")]
    TooManyConnections { max: usize },
    /// The request took longer than the configured timeout.
    #[error("the request took too long")]
    Timeout,
    /// The server is handling as many requests as it is allowed to.
    #[error("the server is busy; retry shortly")]
    Overloaded,
    /// Anything else: a bug or a failing dependency. Its cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// One broken rule in [`AppError::Validation`] (shared with clients).
pub use daig_shared::api::FieldError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and people (`message`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code, e.g. `validation_failed`, `unauthenticated`, `not_found`.
    pub code: &'static str,
    /// A sentence for a person.
    pub message: String,
    /// More about the error where there is more: the invalid fields, the parser's complaint, the clashing field.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl AppError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::InvalidBody(_)
            | Self::Validation(_)
            | Self::InvalidQuery(_)
            | Self::InvalidProject { .. }
            | Self::InvalidDataset { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthenticated(_) | Self::InvalidCredentials => StatusCode::UNAUTHORIZED,
            Self::CsrfFailed => StatusCode::FORBIDDEN,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::Missing(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. }
            | Self::ProjectQuota { .. }
            | Self::RunningQuota { .. }
            | Self::ModelBudget { .. } => StatusCode::CONFLICT,
            Self::StorageQuota { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. }
            | Self::TooManyConnections { .. }
            | Self::TooManyUploads { .. }
            | Self::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UploadStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Timeout | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Validation(_) | Self::InvalidProject { .. } => "validation_failed",
            Self::InvalidQuery(_) => "invalid_query",
            Self::InvalidDataset { .. } => "invalid_dataset",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::InvalidCredentials => "invalid_credentials",
            Self::CsrfFailed => "csrf_failed",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) | Self::Missing(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict { .. } => "conflict",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooManyConnections { .. } => "too_many_connections",
            Self::TooManyUploads { .. } => "too_many_uploads",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::UploadStalled { .. } => "upload_stalled",
            Self::ProjectQuota { .. } => "project_quota",
            Self::RunningQuota { .. } => "running_quota",
            Self::ModelBudget { .. } => "model_budget",
            Self::StorageQuota { .. } => "storage_quota",
            Self::Timeout => "timeout",
            Self::Overloaded => "overloaded",
            Self::Internal(_) => "internal",
        }
    }

    fn details(&self) -> Option<serde_json::Value> {
        match self {
            Self::MalformedJson(reason) | Self::InvalidBody(reason) => Some(serde_json::json!({ "reason": reason })),
            Self::Validation(fields) | Self::InvalidQuery(fields) => Some(serde_json::json!({ "fields": fields })),
            Self::InvalidProject { model, fields } => Some(serde_json::json!({ "model": model, "fields": fields })),
            Self::InvalidDataset { part, reason } => Some(serde_json::json!({ "part": part, "reason": reason })),
            Self::Conflict { field, .. } => Some(serde_json::json!({ "field": field })),
            Self::RateLimited { retry_after_secs } => Some(serde_json::json!({ "retry_after_secs": retry_after_secs })),
            Self::TooManyConnections { max } | Self::TooManyUploads { max } | Self::TooManyStreams { max } => {
                Some(serde_json::json!({ "max": max }))
            }
            Self::ProjectQuota { max } | Self::RunningQuota { max } => Some(serde_json::json!({ "limit": max })),
            Self::StorageQuota { limit_bytes, used_bytes } => {
                Some(serde_json::json!({ "limit": limit_bytes, "used": used_bytes }))
            }
            _ => None,
        }
    }

    /// The response body for this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code(), message: self.to_string(), details: self.details() } }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            // The one place an internal error is logged; the client sees only "internal error".
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthenticated(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Overloaded | Self::Timeout => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::TooManyConnections { .. } | Self::TooManyUploads { .. } | Self::TooManyStreams { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            _ => {}
        }
        response
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Internal(anyhow::Error::new(e).context("object store"))
    }
}

impl From<tokio::task::JoinError> for AppError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(anyhow::Error::new(e).context("blocking task"))
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    /// A refused part reads as English whichever part it is: "the features were", "the dataset was".
    #[test]
    fn a_refused_dataset_part_is_named_in_a_sentence() {
        let refused = |part| AppError::InvalidDataset { part, reason: "no".into() }.to_string();
        assert_eq!(refused("features"), "the features were refused: no");
        assert_eq!(refused("labels"), "the labels were refused: no");
        assert_eq!(refused("dataset"), "the dataset was refused: no");
    }

    /// Each quota's error: its status, its stable code, a message naming the quota and its limit, and the limit in
    /// `details`.
    #[test]
    fn quota_errors_name_the_quota_and_its_limit() {
        let cases = [
            (
                AppError::ProjectQuota { max: 100 },
                StatusCode::CONFLICT,
                "project_quota",
                "this account has 100 projects, the most it may have (project quota); delete one to create another",
                serde_json::json!({ "limit": 100 }),
            ),
            (
                AppError::RunningQuota { max: 4 },
                StatusCode::CONFLICT,
                "running_quota",
                "this account already runs 4 projects, the most it may run at once (running quota); pause, cancel \
                 or let one finish first",
                serde_json::json!({ "limit": 4 }),
            ),
            (
                AppError::StorageQuota { limit_bytes: 10_737_418_240, used_bytes: 5 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "storage_quota",
                "this dataset would take the account's stored datasets past 10737418240 bytes (storage quota; its \
                 other projects' datasets take 5); delete a dataset or send a smaller one",
                serde_json::json!({ "limit": 10_737_418_240u64, "used": 5 }),
            ),
        ];
        for (error, status, code, message, details) in cases {
            assert_eq!(error.status(), status, "{error}");
            let body = serde_json::to_value(error.body()).unwrap();
            assert_eq!(body, serde_json::json!({ "error": { "code": code, "message": message, "details": details } }));
        }
    }

    #[test]
    fn too_many_streams_names_the_limit_and_says_what_to_do() {
        let error = AppError::TooManyStreams { max: 8 };
        let response = AppError::TooManyStreams { max: 8 }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "30");
        expect![[r#"
            {
              "error": {
                "code": "too_many_streams",
                "message": "this account already has 8 live-update streams open, the most it may hold at once; close a project page or wait for a stream to end",
                "details": {
                  "max": 8
                }
              }
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&error.body()).unwrap());
    }
}
