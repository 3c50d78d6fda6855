//! The DAIG management server: accounts, projects, datasets, object storage and training coordination.
//!
//! The binary (`src/main.rs`) is thin: it loads [`Settings`], builds [`AppState`] and calls [`run`]. Everything
//! else is here, and tests drive [`app`] without a socket.
//!
//! - [`config`]: flags, environment and TOML merged and validated into [`Settings`].
//! - [`state`]: [`AppState`], the runtime objects built from the settings.
//! - [`db`]: the embedded SQLite database and its migrations.
//! - [`error`]: [`AppError`] and the one JSON error shape.
//! - [`extract`]: `Json`, `Path` and `ClientIp` extractors that reject in that shape.
//! - [`auth`]: [`CurrentUser`] (bearer token or session cookie with CSRF), passwords, secrets, cookies.
//! - [`api`]: the routes and their OpenAPI document.
//! - [`limits`]: rate limits and the answers of the limit layers.
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`store`]: object storage behind one trait: a local directory or S3.
//! - [`training`]: the provider WebSocket (`/ws/provider`), one coordinator per running project (K-batch
//!   sync SGD, leases, checkpoints) and their registry.
//! - [`web`]: the built web pages (dashboard, contribute page, embed script, browser provider) for every other
//!   path.

pub mod api;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod limits;
pub mod project;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod training;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router, middleware};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use auth::CurrentUser;
pub use config::Settings;
pub use daig_shared as shared;
pub use error::AppError;
pub use state::AppState;

/// How often histogram samples are folded into the Prometheus buckets when nobody scrapes `/metrics`.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The whole HTTP application: every route, the fallbacks, and the limit, metrics and trace layers.
///
/// Layers, outermost first: tracing, metrics, caught panics (500 in the error shape), the global concurrency
/// limit (503 `overloaded` at once; dataset transfers have their own budgets), the request timeout (503
/// `timeout`; not for dataset transfers), the body limit (413).
pub fn app(state: AppState) -> Router {
    let (router, openapi) = api::router().split_for_parts();
    let openapi_json = openapi.to_pretty_json().unwrap_or_else(|e| {
        // Serialising plain data does not fail in practice; if it ever does, the server still starts.
        tracing::error!("cannot render the OpenAPI document: {e}");
        "{}".to_owned()
    });
    let limits = ServiceBuilder::new()
        // One shared semaphore, taken by a middleware: Router::layer wraps each route separately, and dataset
        // transfers are bounded by their own budgets instead.
        .layer(middleware::from_fn_with_state(state.clone(), limits::concurrency))
        .layer(middleware::from_fn_with_state(state.clone(), limits::timeout));
    // The provider socket is outside the request limits: it is long-lived and bounded by its own connection
    // limit (`max_provider_connections`).
    let sockets = Router::new().route("/ws/provider", axum::routing::get(training::connection::ws_provider));
    let pages = web::Pages::new(&state.settings().web_dir);
    router
        .layer(Extension(api::OpenApiJson(Arc::from(openapi_json))))
        .fallback(move |request: axum::extract::Request| pages.clone().serve(request))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings().body_limit_bytes))
        .layer(limits)
        .layer(CatchPanicLayer::custom(limits::panic_response))
        .layer(middleware::from_fn(telemetry::track_metrics))
        .merge(sockets)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

/// Serves [`app`] on `listener` until `shutdown` completes, then finishes the requests in flight and returns.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = state.metrics().clone();
    let upkeep = tokio::spawn(async move {
        let mut interval = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            metrics.run_upkeep();
        }
    });
    training::resume_running(&state).await;
    let training = Arc::clone(state.training_arc());
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    // Coordinators checkpoint and say goodbye to their providers before the listener closes.
    let shutdown = async move {
        shutdown.await;
        training.shutdown().await;
    };
    let served = axum::serve(listener, service).with_graceful_shutdown(shutdown).await;
    upkeep.abort();
    served
}

/// The `daig-server` program: loads the settings from the command line, environment and file, opens the database,
/// binds, and serves until Ctrl-C or SIGTERM. The binary is this function; the end-to-end tests (`tests/`) run
/// a copy of the binary that calls it too.
///
/// # Errors
/// Invalid settings, a database, store or listener that cannot be opened, or a server error.
pub fn server_main() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::Parser as _;
    let settings = Settings::load(config::Args::parse())?;
    telemetry::init_tracing(&settings.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(async move {
        let listen = settings.listen;
        let data_dir = settings.data_dir.clone();
        let state = AppState::new(settings).await?;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(addr = %listener.local_addr()?, data_dir = %data_dir.display(), "serving the DAIG API");
        let db = state.db().clone();
        run(listener, state, shutdown_signal()).await.context("server")?;
        // Waits for open connections to finish and checkpoints the write-ahead log into the database file.
        db.close().await;
        Ok(())
    })
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
