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

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::{Extension, Router, middleware};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{ServiceBuilder, ServiceExt as _};
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
        .fallback(move |request: Request| pages.clone().serve(request))
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
/// Each connection is served by hyper with a timeout on reading a request's head (`header_read_timeout_ms`),
/// and every request carries the peer's address as `ConnectInfo<SocketAddr>` (for `ClientIp`).
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
    if let Err(e) = db::training::all_providers_disconnected(state.db(), db::now_unix()).await {
        tracing::warn!("cannot mark the last run's provider connections ended: {e}");
    }
    api::datasets::sweep_uploads(&state).await;
    training::resume_running(&state).await;
    let training = Arc::clone(state.training_arc());
    let header_timeout = Duration::from_millis(state.settings().header_read_timeout_ms);
    let app = app(state);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A client has this long to send a request's head; hyper's own default does nothing without a timer, which
    // `axum::serve` does not set, so a client sending one header byte a minute held its connection for ever.
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    // Connections hold a receiver each; shutdown tells them to finish and waits until all are dropped.
    let (close_tx, close_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for connections to close rather than spin.
                    tracing::error!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone().map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let mut close = close_rx.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection.with_upgrades());
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = close.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::trace!(%peer, "connection ended: {e}");
            }
            drop(close);
        });
    }
    // Coordinators checkpoint and say goodbye to their providers before the open connections finish.
    training.shutdown().await;
    drop(listener);
    drop(close_rx);
    let _ = close_tx.send(true);
    close_tx.closed().await;
    upkeep.abort();
    Ok(())
}

/// What a person who just started the server opens next: the dashboard, the contribute page and the embed
/// instructions, at the address it listens on (this machine's loopback when it listens on every interface).
pub fn where_to_go(addr: std::net::SocketAddr, web_dir: &std::path::Path) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let host = if addr.ip().is_unspecified() {
        let loopback: IpAddr = if addr.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
        SocketAddr::new(loopback, addr.port())
    } else {
        addr
    };
    let base = format!("http://{host}");
    let mut out = format!(
        "DAIG is running.\n  \
         dashboard (sign up, create a project)   {base}/\n  \
         contribute this machine's GPU           {base}/contribute\n  \
         embed the provider in your own site     {base}/sites\n"
    );
    if !web_dir.join("index.html").is_file() {
        out.push_str(&format!(
            "  (no pages in {}: build them with `cargo xtask web`, or start with `cargo xtask serve`)\n",
            web_dir.display()
        ));
    }
    out
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
        let web_dir = settings.web_dir.clone();
        let state = AppState::new(settings).await?;
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, data_dir = %data_dir.display(), "serving the DAIG API");
        print!("{}", where_to_go(addr, &web_dir));
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

/// Errors of `accept` that concern one connection only (the peer went away before it was accepted).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
