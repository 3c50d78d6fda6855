//! The command line of `daig-provider`: flags, logging, signals, and [`super::run`]. The binary calls
//! [`main`]; so do the end-to-end tests' copy of it (`tests/`), so that both run the same code.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::native::progress::LogWriter;
use crate::native::{BackendChoice, Exit, Options, run};
use crate::shared::wire::ProjectId;
use clap::Parser;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// Contribute this machine's GPU (or CPU) to the training projects of a DAIG server.
#[derive(Debug, Parser)]
#[command(name = "daig-provider", version)]
struct Args {
    /// The DAIG server, e.g. http://127.0.0.1:8080 (https:// for TLS; ws:// and wss:// URLs also work).
    #[arg(long, env = "DAIG_SERVER")]
    server: String,
    /// The project to train; without it the server chooses, and moves the provider between projects.
    #[arg(long)]
    project: Option<u64>,
    /// Train on the GPU (software adapters included), the CPU, or the GPU when a hardware adapter passes
    /// its self-check and the CPU otherwise.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// The key of the site this provider joins through, when the server requires one.
    #[arg(long, env = "DAIG_SITE_KEY")]
    site_key: Option<String>,
    /// Where downloaded shards are kept [default: the user's cache directory, daig/shards].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The file holding this provider's persistent key, created on first use: with it the server remembers
    /// the provider's standing and credit across reconnects [default: the user's config directory,
    /// daig/provider.key].
    #[arg(long, conflicts_with = "no_key")]
    key_file: Option<PathBuf>,
    /// Present no persistent key: the server treats every connection as a new provider.
    #[arg(long)]
    no_key: bool,
    /// The most disk space the shard cache takes, in MiB.
    #[arg(long, default_value_t = 4096)]
    cache_max_mb: u64,
    /// The most GPU memory (or, on the CPU, main memory) one project's training may take, in MiB: the server
    /// sends this provider only projects that fit [default: no limit besides the adapter's buffer size].
    #[arg(long)]
    max_device_memory_mb: Option<u64>,
    /// Exit after this many contributions were applied (for tests and benchmarks).
    #[arg(long)]
    max_contributions: Option<u64>,
    /// No progress line, and only warnings and errors in the log (RUST_LOG overrides the level).
    #[arg(long, short)]
    quiet: bool,
}

/// Mesa's implicit device-select layer connects to a Wayland display to rank GPUs, and libwayland prints
/// "error: XDG_RUNTIME_DIR is invalid or not set" on every headless machine. The provider chooses its adapter
/// itself, so the layer is turned off (`NODEVICE_SELECT=1`) unless the user set that variable.
fn quiet_vulkan_layers() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: called first thing in `main`, before the runtime or any other thread exists, so nothing reads
        // the environment concurrently.
        #[expect(unsafe_code, reason = "set_var before any thread is started")]
        unsafe {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    }
}

pub fn main() -> ExitCode {
    quiet_vulkan_layers();
    let args = Args::parse();
    let default_level = if args.quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)))
        .with_writer(LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let Some(cache_dir) = args.cache_dir.or_else(|| dirs::cache_dir().map(|d| d.join("daig").join("shards"))) else {
        eprintln!("error: this system has no cache directory; give one with --cache-dir");
        return ExitCode::FAILURE;
    };
    let provider_key = if args.no_key {
        None
    } else {
        let Some(path) = args.key_file.or_else(|| dirs::config_dir().map(|d| d.join("daig").join("provider.key")))
        else {
            eprintln!("error: this system has no config directory; give a key file with --key-file, or --no-key");
            return ExitCode::FAILURE;
        };
        match crate::native::key::load_or_create(&path) {
            Ok(key) => Some(key),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    };
    let options = Options {
        server: args.server,
        project: args.project.map(ProjectId),
        backend: args.backend,
        site_key: args.site_key,
        provider_key,
        cache_dir,
        cache_max_bytes: args.cache_max_mb.saturating_mul(1 << 20),
        device_memory_bytes: args.max_device_memory_mb.unwrap_or(0).saturating_mul(1 << 20),
        max_contributions: args.max_contributions,
        quiet: args.quiet,
        tamper: None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        match watch_signals(stop_tx) {
            Ok(signals) => drop(tokio::spawn(signals)),
            Err(e) => eprintln!("warning: Ctrl-C will not stop the provider cleanly: {e}"),
        }
        match run(options, stop_rx).await {
            Ok(Exit::Stopped) => {
                eprintln!("daig-provider stopped");
                ExitCode::SUCCESS
            }
            Ok(Exit::ProjectEnded(detail)) => {
                eprintln!("the project ended: {detail}");
                ExitCode::SUCCESS
            }
            Ok(Exit::MaxContributions(n)) => {
                eprintln!("{n} contributions applied; done");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Watches for Ctrl-C (and SIGTERM on Unix): the first asks the provider to say goodbye and stop, a
/// second Ctrl-C quits at once. The handlers are installed before this returns, so that a signal that
/// comes while the provider starts is not lost.
#[cfg(unix)]
fn watch_signals(stop: watch::Sender<bool>) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        stopping(&stop);
        if interrupt.recv().await.is_some() {
            eprintln!("quitting at once");
            std::process::exit(130);
        }
    })
}

#[cfg(not(unix))]
fn watch_signals(stop: watch::Sender<bool>) -> std::io::Result<impl Future<Output = ()>> {
    Ok(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stopping(&stop);
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("quitting at once");
                std::process::exit(130);
            }
        }
    })
}

fn stopping(stop: &watch::Sender<bool>) {
    eprintln!("\nstopping: returning the leases to the server (Ctrl-C again to quit at once)");
    let _ = stop.send(true);
}
