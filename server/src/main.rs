//! `daig-server`: loads the settings, opens the database, binds, and serves until Ctrl-C or SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use daig_server::config::{Args, Settings};
use daig_server::{AppState, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(Args::parse())?;
    telemetry::init_tracing(&settings.log)?;
    let listen = settings.listen;
    let data_dir = settings.data_dir.clone();
    let state = AppState::new(settings).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %data_dir.display(), "serving the DAIG API");
    let db = state.db().clone();
    daig_server::run(listener, state, daig_server::shutdown_signal()).await.context("server")?;
    // Waits for open connections to finish and checkpoints the write-ahead log into the database file.
    db.close().await;
    Ok(())
}
