//! Logs and metrics: the tracing subscriber the binary installs, the process-wide Prometheus recorder, the
//! middleware that counts requests and times them by method, route and status, and `GET /metrics`.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::{AppState, StartError};

/// Latency buckets in seconds, from 1 ms to 30 s.
const LATENCY_BUCKETS_SECS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the global tracing subscriber (for the binary; tests do not call it).
///
/// # Errors
/// When `filter` is not a valid `EnvFilter` or a subscriber is already installed.
pub fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    tracing_subscriber::fmt().with_env_filter(filter).try_init().map_err(|e| anyhow::anyhow!(e))
}

/// The handle of the process-wide Prometheus recorder, installed on first use.
///
/// The `metrics` facade has one global recorder per process, so every [`AppState`] in a process (tests make
/// many) shares it.
///
/// # Errors
/// [`StartError::Metrics`] when another recorder is already installed.
pub fn metrics_handle() -> Result<PrometheusHandle, StartError> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    // A std mutex: nothing awaits while it is held.
    let mut handle = HANDLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = handle.as_ref() {
        return Ok(handle.clone());
    }
    let installed = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("http_request_duration_seconds".to_owned()), LATENCY_BUCKETS_SECS)
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    *handle = Some(installed.clone());
    Ok(installed)
}

/// Middleware: counts each request (`http_requests_total`) and records its latency
/// (`http_request_duration_seconds`) labelled by method, matched route (not the raw path, so ids do not explode
/// the label set) and status.
pub async fn track_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [("method", method), ("route", route), ("status", response.status().as_u16().to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The Prometheus text exposition: request counts and latencies by method, route and status.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
))]
pub async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let handle = state.metrics();
    handle.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
}
