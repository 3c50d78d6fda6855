//! The management API's vocabulary without I/O: the project rules (states, moves, access, sites), the training
//! settings with their defaults, ranges and explanations, and the request and response bodies, for the server
//! and its clients alike.
//!
//! With the `openapi` feature every type also derives `utoipa::ToSchema`, for the server's OpenAPI document.

pub mod accounts;
pub mod datasets;
pub mod project;
pub mod settings;
pub mod training;

use serde::{Deserialize, Serialize};

/// One broken rule in a request: the field it names and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// The request field, as named in the body.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// The health report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Always `ok` when the server answers 200.
    pub status: String,
}
