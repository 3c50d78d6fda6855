//! The native provider (`daig-provider`): one WebSocket connection at a time to the server's
//! `/ws/provider`, driving a [`Session`] with tokio, a training thread ([`trainer`]), a shard cache on disk
//! ([`cache`]), a persistent key ([`key`]) and a progress line ([`progress`]). It reconnects with exponential backoff after errors and
//! dropped connections, and on a stop request (Ctrl-C) says `Goodbye` so that the server returns its leases
//! at once.

pub mod cache;
pub mod cli;
pub mod key;
pub mod progress;
pub mod trainer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use daig_shared::wire::{
    AckOutcome, DEFAULT_MAX_TRANSFER_BYTES, DeviceCapacity, GoodbyeReason, MAX_FRAME_BYTES, PROTOCOL_VERSION,
    ProjectId, ProviderKey,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, warn};

use self::cache::DiskCache;
use self::progress::Progress;
pub use self::trainer::BackendChoice;
use self::trainer::{Probe, Report, Trainer};
use crate::backoff::Backoff;
use crate::engine::Backend;
use crate::gpu::trainer::StepResult;
use crate::session::{Closed, Event, Initiator, Session, SessionConfig, SessionStats, ShardMemory, TrainJob};

/// Shards kept in memory across leases and reconnections (the disk cache holds more).
const MEMORY_SHARD_BYTES: u64 = 256 << 20;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the last frames and the close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection that was welcomed and lasted this long resets the backoff.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(10);
/// The heartbeat interval before a `Welcome` gives the project's.
const INITIAL_HEARTBEAT_MS: u32 = 10_000;

/// What the user asked for: the validated command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server, as given (`http(s)://host:port` or a `ws(s)://` URL).
    pub server: String,
    pub project: Option<ProjectId>,
    pub backend: BackendChoice,
    pub site_key: Option<String>,
    /// The persistent key presented in `Hello`.
    pub provider_key: Option<ProviderKey>,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// The most device memory one project's training may take, stated in `Hello` (0: unstated); the
    /// server lets the provider join only projects that fit it and the adapter's buffer limit.
    pub device_memory_bytes: u64,
    /// Exit after this many applied contributions.
    pub max_contributions: Option<u64>,
    /// No progress line.
    pub quiet: bool,
    /// Changes what the provider computes and sends: how the end-to-end tests play a hostile provider with the
    /// same protocol code as an honest one. The command line never sets it.
    pub tamper: Option<Arc<dyn Tamper>>,
}

/// A hostile provider's changes to honest work (see [`Options::tamper`]); each has the honest default.
pub trait Tamper: Send + Sync + std::fmt::Debug {
    /// The speed claimed in `Hello` instead of the measured one.
    fn claimed_speed(&self) -> Option<f32> {
        None
    }

    /// Before a job trains: a result to send at once instead of training, or `None` to train `job` (which it
    /// may change: its samples, labels, rate).
    fn before(&self, job: &mut TrainJob) -> Option<StepResult> {
        let _ = job;
        None
    }

    /// After `job` trained: the result to send.
    fn after(&self, job: &TrainJob, result: StepResult) -> StepResult {
        let _ = job;
        result
    }
}

/// Why the provider stopped without an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The user asked it to stop (Ctrl-C); the server was told.
    Stopped,
    /// The server ended the session normally while the provider was bound to a `--project`: the project
    /// finished or was cancelled. The server's explanation.
    ProjectEnded(String),
    /// `--max-contributions` contributions were applied.
    MaxContributions(u64),
}

/// The WebSocket URL of the provider endpoint for a server URL: `http://host:port` becomes
/// `ws://host:port/ws/provider`, `https` becomes `wss`, a path is kept as a prefix.
///
/// # Errors
/// A URL without a scheme, with a scheme other than http(s) or ws(s), or without a host.
pub fn provider_url(server: &str) -> anyhow::Result<String> {
    let server = server.trim();
    let (scheme, rest) = server
        .split_once("://")
        .ok_or_else(|| anyhow!("the server URL {server:?} has no scheme; write it like http://127.0.0.1:8080"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => bail!("the server URL {server:?} has the scheme {other:?}; use http, https, ws or wss"),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        bail!("the server URL {server:?} has no host");
    }
    let path = path.trim_end_matches('/');
    let path = match path {
        "" => "/ws/provider".to_owned(),
        p if p == "ws/provider" || p.ends_with("/ws/provider") => format!("/{p}"),
        p => format!("/{p}/ws/provider"),
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

/// Runs the provider until the user stops it (`stop` turns true), the project it asked for ends, or
/// `--max-contributions` are applied.
///
/// # Errors
/// A bad server URL, a cache directory that cannot be created, `--backend gpu` without a GPU that passes
/// the self-check, or a server that speaks another protocol version.
pub async fn run(options: Options, mut stop: watch::Receiver<bool>) -> anyhow::Result<Exit> {
    let url = provider_url(&options.server)?;
    let cache = DiskCache::open(&options.cache_dir, options.cache_max_bytes)
        .with_context(|| format!("cannot create the shard cache {}", options.cache_dir.display()))?;
    let choice = options.backend;
    let tamper = options.tamper.clone();
    let (trainer, reports, probe) = tokio::task::spawn_blocking(move || Trainer::start(choice, tamper))
        .await
        .context("the training thread panicked while opening the GPU")??;
    info!(backend = ?probe.backend, adapter = %probe.adapter, "training engine ready");
    let mut provider = Provider {
        progress: Progress::new(!options.quiet, describe_probe(&probe)),
        url,
        cache: Arc::new(cache),
        trainer,
        reports,
        probe,
        totals: SessionStats::default(),
        origin: Instant::now(),
        connection: 0,
        train_samples_per_sec: 0.0,
        options,
    };
    let mut memory = ShardMemory::new(MEMORY_SHARD_BYTES);
    let mut backoff = {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        Backoff::new((nanos as u64) ^ (u64::from(std::process::id()) << 32))
    };
    loop {
        if *stop.borrow() {
            return Ok(Exit::Stopped);
        }
        let (kept, outcome) = provider.connect_once(memory, &mut stop).await;
        memory = kept;
        match outcome {
            Outcome::Exit(exit) => {
                provider.progress.finish();
                return Ok(exit);
            }
            Outcome::Fatal(e) => {
                provider.progress.finish();
                return Err(e);
            }
            Outcome::Retry { healthy } => {
                if healthy {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                info!("reconnecting in {:.1} s", delay.as_secs_f64());
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut stop) => {
                        provider.progress.finish();
                        return Ok(Exit::Stopped);
                    }
                }
            }
        }
    }
}

/// Resolves once `stop` is true; never if its sender is gone without saying so.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What one connection ended in.
enum Outcome {
    Exit(Exit),
    Fatal(anyhow::Error),
    /// Connect again after a backoff; `healthy` when the connection worked for a while.
    Retry {
        healthy: bool,
    },
}

/// The state that outlives connections.
struct Provider {
    options: Options,
    url: String,
    cache: Arc<DiskCache>,
    trainer: Trainer,
    reports: mpsc::UnboundedReceiver<Report>,
    probe: Probe,
    /// Counts of finished sessions.
    totals: SessionStats,
    progress: Progress,
    /// The session clock's zero.
    origin: Instant,
    /// Numbers connections, so that training results of an earlier one are ignored.
    connection: u64,
    /// How fast the engine trains (exponential average), for the next `Hello`.
    train_samples_per_sec: f64,
}

/// What one connection's loop keeps besides the session.
#[derive(Default)]
struct ConnectionState {
    welcomed: bool,
    /// Set when this side decided to end the process (Ctrl-C, `--max-contributions`).
    exit: Option<Exit>,
}

impl Provider {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            backend: self.probe.backend,
            adapter: self.probe.adapter.clone(),
            samples_per_sec: self
                .options
                .tamper
                .as_ref()
                .and_then(|t| t.claimed_speed())
                .unwrap_or(self.train_samples_per_sec as f32),
            site_key: self.options.site_key.clone(),
            project_id: self.options.project,
            provider_key: self.options.provider_key,
            device: DeviceCapacity {
                max_buffer_bytes: self.probe.max_buffer_bytes,
                memory_bytes: self.options.device_memory_bytes,
            },
            stored_shards: self.cache.list(),
            max_shard_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            initial_heartbeat_interval_ms: INITIAL_HEARTBEAT_MS,
            model_limits: Default::default(),
        }
    }

    async fn connect_once(&mut self, memory: ShardMemory, stop: &mut watch::Receiver<bool>) -> (ShardMemory, Outcome) {
        self.connection += 1;
        self.trainer.set_connection(self.connection);
        let config =
            WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES)).max_frame_size(Some(MAX_FRAME_BYTES));
        let connect = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(self.url.as_str(), Some(config), true),
        );
        let connected = tokio::select! {
            connected = connect => connected,
            () = stopped(stop) => return (memory, Outcome::Exit(Exit::Stopped)),
        };
        let ws = match connected {
            Ok(Ok((ws, _response))) => ws,
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                // The server refused the socket (too many connections from this address, overloaded): its
                // answer says why.
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let why: String = body.chars().take(300).collect();
                warn!("{} refused the connection ({}): {why}", self.url, response.status());
                return (memory, Outcome::Retry { healthy: false });
            }
            Ok(Err(e)) => {
                warn!("cannot connect to {}: {e}", self.url);
                return (memory, Outcome::Retry { healthy: false });
            }
            Err(_) => {
                warn!("connecting to {} took over {} s", self.url, CONNECT_TIMEOUT.as_secs());
                return (memory, Outcome::Retry { healthy: false });
            }
        };
        info!("connected to {}", self.url);
        let connected_at = Instant::now();
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::channel::<Message>(4);
        let writer = tokio::spawn(write_messages(sink, rx));
        let mut session = Session::new(self.session_config(), memory, self.now_ms());
        let mut state = ConnectionState::default();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.progress.connected = true;
        // Why the socket ended before the session did, if it did.
        let mut dropped: Option<String> = None;
        // Once the session is over, how long its last frames may take to leave: a server that stopped
        // reading must not hold the provider forever.
        let mut give_up_at: Option<Instant> = None;
        loop {
            while let Some(event) = session.poll_event() {
                self.on_event(&mut session, &mut state, event).await;
            }
            if session.is_finished() {
                break;
            }
            let deadline = session.poll_timeout().map(|ms| self.origin + Duration::from_millis(ms));
            let sleep_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let sending = session.has_transmit();
            if session.closed().is_some() && give_up_at.is_none() {
                give_up_at = Some(Instant::now() + CLOSE_TIMEOUT);
            }
            let give_up = give_up_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                () = stopped(stop), if state.exit.is_none() => {
                    state.exit = Some(Exit::Stopped);
                    session.close(GoodbyeReason::Normal, "provider stopped by its user");
                }
                report = self.reports.recv() => match report {
                    Some(Report::Trained { connection, job_id, result, seconds }) => {
                        if connection == self.connection {
                            if let Ok(r) = &result && seconds > 0.0 {
                                let rate = r.samples as f64 / seconds;
                                self.train_samples_per_sec = if self.train_samples_per_sec == 0.0 {
                                    rate
                                } else {
                                    0.8 * self.train_samples_per_sec + 0.2 * rate
                                };
                            }
                            session.training_finished(job_id, result);
                        }
                    }
                    Some(Report::EngineReady { backend }) => {
                        self.progress.backend = describe_backend(&backend);
                        info!("engine for the project's model: {}", self.progress.backend);
                    }
                    None => {
                        let _ = writer.await;
                        return (session.into_memory(), Outcome::Fatal(anyhow!("the training thread stopped")));
                    }
                },
                message = stream.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => session.handle_bytes(&bytes, self.now_ms()),
                    Some(Ok(Message::Text(_))) => session.close(
                        GoodbyeReason::ProtocolError,
                        "the server sent a text message; the protocol has binary messages only",
                    ),
                    Some(Ok(Message::Close(frame))) => {
                        dropped = Some(match frame {
                            Some(f) if !f.reason.is_empty() => format!("the server closed the connection: {}", f.reason),
                            _ => "the server closed the connection".to_owned(),
                        });
                        break;
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        dropped = Some(format!("the connection failed: {e}"));
                        break;
                    }
                    None => {
                        dropped = Some("the connection ended".to_owned());
                        break;
                    }
                },
                permit = tx.reserve(), if sending => match permit {
                    Ok(permit) => {
                        if let Some(frame) = session.poll_transmit() {
                            permit.send(Message::Binary(frame.encode().into()));
                        }
                    }
                    Err(_) => {
                        dropped = Some("the connection could not be written to".to_owned());
                        break;
                    }
                },
                () = tokio::time::sleep_until(sleep_until.into()), if deadline.is_some() => {
                    session.handle_timeout(self.now_ms());
                }
                () = tokio::time::sleep_until(give_up.into()), if give_up_at.is_some() => {
                    dropped = Some("the server did not take the last frames in time".to_owned());
                    break;
                }
                _ = ticker.tick() => {
                    let mut totals = self.totals;
                    totals += session.stats();
                    self.progress.tick(Instant::now(), &totals);
                }
            }
        }
        self.progress.connected = false;
        self.totals += session.stats();
        drop(tx);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
        if dropped.is_none() {
            // Wait for the server's half of the close handshake.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            })
            .await;
        }
        let healthy = state.welcomed && connected_at.elapsed() >= HEALTHY_CONNECTION;
        let outcome = match (state.exit, session.closed(), dropped) {
            (Some(exit), _, _) => Outcome::Exit(exit),
            (None, _, Some(why)) => {
                warn!("{why}");
                Outcome::Retry { healthy }
            }
            (None, Some(closed), None) => self.judge_close(closed, healthy),
            (None, None, None) => Outcome::Retry { healthy },
        };
        (session.into_memory(), outcome)
    }

    /// What a session's end means for the process.
    fn judge_close(&self, closed: &Closed, healthy: bool) -> Outcome {
        let Closed { initiator, reason, detail } = closed;
        match (initiator, reason) {
            (Initiator::Server, GoodbyeReason::Normal) if self.options.project.is_some() => {
                Outcome::Exit(Exit::ProjectEnded(detail.clone()))
            }
            (Initiator::Server, GoodbyeReason::ShutOut) => {
                Outcome::Fatal(anyhow!("the server shut this provider out: {detail}"))
            }
            (Initiator::Server, GoodbyeReason::DeviceTooSmall) => {
                Outcome::Fatal(anyhow!("this device cannot train the project: {detail}"))
            }
            (Initiator::Server, GoodbyeReason::UnsupportedVersion { supported }) => Outcome::Fatal(anyhow!(
                "the server speaks protocol version {supported} and this provider version {PROTOCOL_VERSION}; \
                 update the older one ({detail})"
            )),
            _ => Outcome::Retry { healthy },
        }
    }

    async fn on_event(&mut self, session: &mut Session, state: &mut ConnectionState, event: Event) {
        match event {
            Event::Welcome { provider_id, project_id, model, training, replaced } => {
                if replaced {
                    info!("moved to project {project_id}");
                } else {
                    info!("joined project {project_id} as provider {provider_id}");
                }
                state.welcomed = true;
                self.progress.project = Some(project_id);
                self.trainer.load_model((*model).clone(), training.batch_size as usize);
            }
            Event::LoadShard(shard) => {
                let cache = self.cache.clone();
                let loaded = tokio::task::spawn_blocking(move || cache.load(shard)).await;
                match loaded {
                    Ok(Ok(Some(bytes))) => {
                        if let Err(e) = session.provide_shard(shard, bytes) {
                            warn!("the cached copy of shard {shard} is damaged ({e}); fetching it again");
                            let cache = self.cache.clone();
                            tokio::task::spawn_blocking(move || cache.remove(shard));
                        }
                    }
                    Ok(Ok(None)) => session.shard_unavailable(shard),
                    Ok(Err(e)) => {
                        warn!("cannot read shard {shard} from {}: {e}", self.cache.dir().display());
                        session.shard_unavailable(shard);
                    }
                    Err(e) => {
                        warn!("reading shard {shard} panicked: {e}");
                        session.shard_unavailable(shard);
                    }
                }
            }
            Event::StoreShard { shard, bytes } => {
                let cache = self.cache.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = cache.store(shard, &bytes) {
                        warn!("cannot cache shard {shard} in {}: {e}", cache.dir().display());
                    }
                });
            }
            Event::Train(job) => {
                debug!(lease = %job.lease_id, samples = job.samples, base_version = job.base_version, "training");
                self.trainer.train(self.connection, job);
            }
            Event::ContributionSent { lease_id, sample_count, mean_loss } => {
                debug!(lease = %lease_id, samples = sample_count, mean_loss, "contribution sent");
            }
            Event::Acked(ack) => {
                let lease = ack.lease_id;
                match ack.outcome {
                    AckOutcome::Applied { new_version } => {
                        debug!(%lease, new_version, "contribution applied");
                    }
                    AckOutcome::Stale { current_version } => {
                        info!(
                            "the contribution for lease {lease} was stale (the server is at version {current_version})"
                        );
                    }
                    AckOutcome::Refused { reason, detail } => {
                        warn!("the contribution for lease {lease} was refused ({reason:?}): {detail}");
                    }
                }
                let applied = self.totals.applied + session.stats().applied;
                if let Some(max) = self.options.max_contributions
                    && applied >= max
                    && state.exit.is_none()
                {
                    info!("{applied} contributions applied; stopping as --max-contributions asks");
                    state.exit = Some(Exit::MaxContributions(applied));
                    session.close(GoodbyeReason::Normal, format!("the provider reached --max-contributions {max}"));
                }
            }
            Event::LeaseCancelled(cancel) => info!("the server cancelled lease {}: {}", cancel.lease_id, cancel.reason),
            Event::Warning(warning) => warn!("{warning}"),
            Event::Closed(Closed { initiator, reason, detail }) => match (initiator, reason) {
                (Initiator::Server, GoodbyeReason::Normal | GoodbyeReason::ShuttingDown) => {
                    info!("the server ended the session ({reason:?}): {detail}");
                }
                (Initiator::Server, _) => warn!("the server ended the session ({reason:?}): {detail}"),
                (Initiator::Provider, GoodbyeReason::Normal) => info!("ending the session: {detail}"),
                (Initiator::Provider, _) => warn!("ending the session ({reason:?}): {detail}"),
            },
        }
    }
}

/// Sends messages until the channel closes, then closes the WebSocket.
async fn write_messages<S>(mut sink: S, mut messages: mpsc::Receiver<Message>)
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    while let Some(message) = messages.recv().await {
        if let Err(e) = sink.send(message).await {
            debug!("writing to the server failed: {e}");
            return;
        }
    }
    let _ = sink.close().await;
}

fn describe_probe(probe: &Probe) -> String {
    match probe.backend {
        daig_shared::wire::Backend::Cpu => probe.adapter.clone(),
        backend => format!("GPU {} ({backend:?})", probe.adapter),
    }
}

fn describe_backend(backend: &Backend) -> String {
    match backend {
        Backend::Gpu(adapter) => format!("GPU {} ({})", adapter.label(), adapter.backend),
        Backend::Cpu { reason } => format!("CPU reference trainer ({reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_map_to_the_provider_endpoint() {
        assert_eq!(provider_url("http://127.0.0.1:8080").unwrap(), "ws://127.0.0.1:8080/ws/provider");
        assert_eq!(provider_url("https://daig.example/").unwrap(), "wss://daig.example/ws/provider");
        assert_eq!(provider_url("http://h:1/daig").unwrap(), "ws://h:1/daig/ws/provider");
        assert_eq!(provider_url("ws://h:1/ws/provider").unwrap(), "ws://h:1/ws/provider");
        assert_eq!(provider_url("WSS://h/x/ws/provider/").unwrap(), "wss://h/x/ws/provider");
        assert!(provider_url("127.0.0.1:8080").unwrap_err().to_string().contains("no scheme"));
        assert!(provider_url("ftp://h").unwrap_err().to_string().contains("\"ftp\""));
        assert!(provider_url("http:///x").unwrap_err().to_string().contains("no host"));
    }
}
