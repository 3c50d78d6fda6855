//! The abuse suite of issue 14 ("Bounded resources"), shared by the test `tests/abuse.rs` (which asserts what
//! the server must do) and the `abuse_bench` example (which prints the figures beside an undisturbed run).
//!
//! Four honest native providers train the MNIST MLP to completion while, at the same time and over loopback only:
//! - [`IDLE_SOCKETS`] provider sockets that upgrade and never say `Hello`, [`PER_ADDRESS`] from each of
//!   [`IDLE_ADDRESSES`] loopback addresses (the default per-address cap); each is closed by the server after its
//!   Hello timeout (10 s) with `Goodbye(Timeout)` and opens again at once, so that about as many are held
//!   throughout; and [`OVER_CAP_ADDRESSES`] addresses that open two more than the cap, refused 429;
//! - [`NON_READERS`] provider sockets (small receive buffers) that join the MNIST project, take a lease, ask for
//!   its shard again and again and never read: the server must drop each after its write timeout;
//! - [`SILENT_UPLOADS`] dataset uploads that send their head and nothing more, from [`ACCOUNTS`] accounts: the
//!   server takes `max_uploads` (64) of them, answers those 408 `upload_stalled` after the upload idle timeout,
//!   and answers every other one at once, 429 `too_many_uploads` or 503 `overloaded`;
//! - [`EVENT_STREAMS`] live-update streams (server-sent events) from the project owner and the [`ACCOUNTS`]
//!   accounts, reconnecting as a browser's `EventSource` does whenever the server ends one, and one more than the
//!   owner may hold, refused 429 `too_many_streams`;
//! - an npz bomb (an entry that inflates to 64 MiB from about 64 KiB), a CSV whose fourth record is 100 MB long,
//!   and a model at the limits of `daig_shared::model::Limits` (its parameters exactly `max_params`).
//!
//! Throughout, `GET /api/health` is timed every [`HEALTH_PERIOD`] and the server's resident memory read, from a
//! thread of their own (its own runtime, so that the test's thousands of sockets do not delay the probe).
//! [`run`] with `abuse: false` is the undisturbed run the benchmark compares with: the same server, project and
//! providers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use daig_shared::wire::{
    Backend, Frame, Goodbye, GoodbyeReason, Heartbeat, Hello, ProjectId, SampleSelection, ShardRequest,
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{Api, Programs, Provider, Server};

/// Provider sockets one loopback address holds: the server's default `max_provider_connections_per_address`.
pub const PER_ADDRESS: usize = 8;
/// Addresses the idle sockets come from, [`PER_ADDRESS`] each.
pub const IDLE_ADDRESSES: usize = 250;
/// Idle provider sockets held at once.
pub const IDLE_SOCKETS: usize = IDLE_ADDRESSES * PER_ADDRESS;
/// Addresses that try to open two sockets more than [`PER_ADDRESS`].
pub const OVER_CAP_ADDRESSES: usize = 4;
/// Provider sockets that take a lease, ask for its shard and never read.
pub const NON_READERS: usize = 200;
/// Uploads that send their head and then nothing.
pub const SILENT_UPLOADS: usize = 600;
/// Live-update streams held open, the owner's eight included.
pub const EVENT_STREAMS: usize = 300;
/// Accounts besides the project's owner, each with a draft project: they send the silent uploads and hold most
/// of the streams.
pub const ACCOUNTS: usize = 40;
/// How often `/api/health` is timed.
pub const HEALTH_PERIOD: Duration = Duration::from_millis(20);
/// The server's `max_uploads` (default), what the silent uploads can take at once.
pub const MAX_UPLOADS: usize = 64;
/// The server's `max_uploads_per_account` (default).
pub const MAX_UPLOADS_PER_ACCOUNT: usize = 4;
/// The server's `max_event_streams_per_account` (default).
pub const MAX_STREAMS_PER_ACCOUNT: usize = 8;
/// The server's `upload_idle_timeout_ms` (default): how long a silent upload is held before it is answered 408.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The write timeout the suite sets (`--provider-write-timeout-ms`; the default is 20 s): long enough for any
/// reading provider on a busy machine, short enough that the non-readers' leases come back within the run.
pub const PROVIDER_WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// The server's Hello timeout (a constant of `training::connection`).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most any one run may take, training included.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The first loopback addresses of each kind of client (the honest providers and the probe use 127.0.0.1).
fn idle_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}
fn over_cap_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 2, 0, i as u8 + 1)
}
fn non_reader_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 3, 0, (i / PER_ADDRESS) as u8 + 1)
}
/// Sign-ups come two accounts (four attempts, within the default burst of five) from each address.
fn sign_up_address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 4, 0, (i / 2) as u8 + 1))
}

/// The MNIST project's settings: [`EPOCHS`] epochs of batches of 32, four to an update. `max_providers` is raised above
/// the default 64 so that every non-reader can join at once (they then compete with the honest providers for
/// leases, not for places).
pub fn mnist_settings() -> Value {
    json!({"batch_size": 32, "k": 4, "epochs": EPOCHS, "samples_per_shard": 1000, "seed": 11, "max_staleness": 2,
           "max_providers": 256, "checkpoint_every": 10,
           "optimizer": {"method": {"type": "adam"}, "learning_rate": 0.003}})
}

/// Epochs of the MNIST project.
pub const EPOCHS: i64 = 80;
/// Its batch size.
pub const BATCH_SIZE: i64 = 32;

/// The server's arguments in both runs: defaults but the write timeout (see [`PROVIDER_WRITE_TIMEOUT`]).
pub fn server_args() -> Vec<String> {
    vec!["--provider-write-timeout-ms".into(), PROVIDER_WRITE_TIMEOUT.as_millis().to_string()]
}

/// Timed requests to `/api/health`, in the order they were made.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    pub samples: Vec<Duration>,
    /// Requests that failed or were not answered 200 (timed too, in `samples`).
    pub failures: usize,
}

impl Latencies {
    /// The `q`-quantile (0 < q <= 1) of the samples, nearest rank; zero without samples.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).copied().unwrap_or_default()
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// From the first provider's start to the project's `finished` state.
    pub training: Duration,
    /// `/api/health` from the start of the abuse (or of training) to the end of training.
    pub health: Latencies,
    /// The server's resident memory before the load started, and the most seen during it.
    pub rss_start_mib: f64,
    pub rss_peak_mib: f64,
}

/// What the abusive clients saw. Every vector of `unexpected` strings must be empty.
#[derive(Debug, Default)]
pub struct AbuseOutcome {
    /// Idle sockets' connections that the server upgraded.
    pub idle_connected: usize,
    /// Of those, how many the server closed with `Goodbye(Timeout)`, and the longest it took.
    pub idle_timed_out: usize,
    pub idle_longest_wait: Duration,
    /// Reconnections of an idle socket refused 429 while the server had not yet released the closed one's place.
    pub idle_reconnects_refused: usize,
    /// The first connection of each of the [`IDLE_SOCKETS`], upgraded: the caps let every one in.
    pub idle_first_connected: usize,
    pub idle_unexpected: Vec<String>,
    /// The over-cap addresses' answers: (upgraded, refused 429 `too_many_connections`).
    pub over_cap: (usize, usize),
    pub over_cap_unexpected: Vec<String>,
    /// Non-readers that got a lease and asked for its shard, then found their socket dropped, and the longest
    /// time from the first request to the failed write.
    pub non_readers_dropped: usize,
    pub non_readers_longest: Duration,
    /// Non-readers that got no lease before the project finished (told `Goodbye`).
    pub non_readers_without_lease: usize,
    pub non_readers_unexpected: Vec<String>,
    /// The silent uploads' answers by status and error code, and the longest wait for a 408.
    pub uploads: BTreeMap<(u16, String), usize>,
    pub uploads_longest_408: Duration,
    pub uploads_shortest_408: Duration,
    pub uploads_unexpected: Vec<String>,
    /// Event streams opened (200) over the run, the first of each included, and those that ended without the
    /// server closing them in order.
    pub streams_opened: usize,
    pub streams_first_opened: usize,
    pub stream_over_cap: Option<(u16, String)>,
    pub streams_unexpected: Vec<String>,
    /// (status, error code, message) of the npz bomb, the long CSV record and the start of the model at the
    /// limits (or its creation, when that was refused).
    pub bomb: (u16, String, String),
    pub long_record: (u16, String, String),
    pub big_model: (u16, String, String),
    /// `daig_provider_connections_dropped_total{why="write_timeout"}` at the end.
    pub write_timeout_drops: f64,
}

/// Which run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// No abusive client: the run to compare with.
    Undisturbed,
    /// Every abusive client of the suite.
    Abused,
    /// Every abusive client but the model at the limits: a server without per-project budgets starts it and
    /// allocates its parameters and optimiser state (GiBs), which would hide every other figure.
    AbusedWithoutTheModelAtTheLimits,
}

/// A finished run, its server still up for the caller's checks.
pub struct Run {
    pub server: Server,
    pub owner: Api,
    pub project: i64,
    pub figures: Figures,
    /// How each honest provider exited (`None`: it had not within 30 s of the end), with its log.
    pub provider_exits: Vec<(Option<ExitStatus>, String)>,
    pub abuse: Option<AbuseOutcome>,
}

/// Runs `scenario` in `dir` with `programs`.
///
/// # Errors
/// When the server or a provider cannot be started, setting up fails, or training does not finish within
/// [`RUN_LIMIT`].
pub async fn run(programs: &Programs, mnist: &Path, dir: &Path, scenario: Scenario) -> anyhow::Result<Run> {
    let abuse = scenario != Scenario::Undisturbed;
    let model_at_the_limits = scenario == Scenario::Abused;
    let server = Server::start(programs, dir, &server_args()).await?;
    let owner = Api::sign_up(&server, "ada").await?;
    let project = owner.mnist_project(mnist, mnist_settings()).await?;
    let accounts = if abuse { accounts(&server).await? } else { Vec::new() };
    let probe = Probe::start(server.url("/api/health"), server.pid().context("the server runs")?);
    // Let the probe see the server at rest for a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start_mib = server.rss_mib().unwrap_or(0.0);
    let (stop_tx, stop) = watch::channel(false);
    let load = abuse.then(|| Load::start(&server, project, &owner, &accounts, model_at_the_limits, &stop));
    let start = Instant::now();
    let mut providers: Vec<Provider> = (0..4)
        .map(|i| Provider::start(programs, &server, project, dir, &format!("provider{i}")))
        .collect::<anyhow::Result<_>>()?;
    let finished = owner.wait_until(project, RUN_LIMIT, "finish", |v| v["state"] == "finished").await;
    let training = start.elapsed();
    let _ = stop_tx.send(true);
    let outcome = match load {
        Some(load) => Some(load.finish(&server).await),
        None => None,
    };
    let (health, rss_peak_mib) = probe.stop();
    if let Err(e) = finished {
        anyhow::bail!("{e}\n{}", server.log_text());
    }
    let provider_exits =
        providers.iter_mut().map(|p| (p.wait(Duration::from_secs(30)), p.log_text())).collect::<Vec<_>>();
    let figures = Figures { training, health, rss_start_mib, rss_peak_mib };
    Ok(Run { server, owner, project, figures, provider_exits, abuse: outcome })
}

/// An account of the abuse, with a draft project of the small model.
struct Account {
    api: Api,
    project: i64,
}

/// The model of the accounts' draft projects: 4 features, 3 classes.
fn small_model() -> Value {
    json!({"input_shape": [4], "layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 3}],
           "loss": "cross_entropy"})
}

/// Signs up the [`ACCOUNTS`], two from each loopback address, each with a draft project.
async fn accounts(server: &Server) -> anyhow::Result<Vec<Account>> {
    let mut tasks = Vec::new();
    for i in 0..ACCOUNTS {
        let (name, base) = (format!("abuser{i:02}"), server.url(""));
        tasks.push(tokio::spawn(async move {
            let api = Api::sign_up_at(&base, &name, Some(sign_up_address(i))).await?;
            let body = json!({"name": "draft", "model": small_model(), "settings": {}});
            let project = api.post("/api/projects", &body).await?["id"].as_i64().context("no project id")?;
            anyhow::Ok(Account { api, project })
        }));
    }
    let mut accounts = Vec::new();
    for task in tasks {
        accounts.push(task.await??);
    }
    Ok(accounts)
}

/// The probe's thread: `/api/health` timed every [`HEALTH_PERIOD`], the server's RSS every fifth time.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Latencies, f64)>,
}

impl Probe {
    fn start(url: String, pid: u32) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("a client");
                let status_file = format!("/proc/{pid}/status");
                let mut latencies = Latencies::default();
                let mut rss_peak: f64 = 0.0;
                let mut tick = tokio::time::interval(HEALTH_PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                while !stopping.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let sent = Instant::now();
                    let ok = match client.get(&url).send().await {
                        Ok(reply) => reply.status().is_success() && reply.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    latencies.samples.push(sent.elapsed());
                    latencies.failures += usize::from(!ok);
                    if n.is_multiple_of(5) {
                        rss_peak = rss_peak.max(crate::rss_mib(&status_file).unwrap_or(0.0));
                    }
                    n += 1;
                }
                (latencies, rss_peak.max(crate::rss_mib(&status_file).unwrap_or(0.0)))
            })
        });
        Probe { stop, thread }
    }

    fn stop(self) -> (Latencies, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the probe thread")
    }
}

/// Tallies the abusive tasks add to as they go.
#[derive(Default)]
struct Tally {
    idle_connected: AtomicUsize,
    idle_timed_out: AtomicUsize,
    idle_longest_wait_ms: AtomicUsize,
    idle_reconnects_refused: AtomicUsize,
    idle_first_connected: AtomicUsize,
    streams_opened: AtomicUsize,
    streams_first_opened: AtomicUsize,
    unexpected: Mutex<BTreeMap<&'static str, Vec<String>>>,
}

impl Tally {
    fn unexpected(&self, kind: &'static str, what: String) {
        self.unexpected.lock().expect("not poisoned").entry(kind).or_default().push(what);
    }
}

/// The abusive clients at work.
struct Load {
    tally: Arc<Tally>,
    idle: Vec<tokio::task::JoinHandle<()>>,
    over_cap: tokio::task::JoinHandle<Vec<Result<(), String>>>,
    non_readers: Vec<tokio::task::JoinHandle<NonReader>>,
    uploads: tokio::task::JoinHandle<Vec<UploadTask>>,
    streams: Vec<tokio::task::JoinHandle<()>>,
    stream_over_cap: tokio::task::JoinHandle<Option<(u16, String)>>,
    hostile_data: tokio::task::JoinHandle<anyhow::Result<HostileData>>,
}

impl Load {
    fn start(
        server: &Server,
        project: i64,
        owner: &Api,
        accounts: &[Account],
        model_at_the_limits: bool,
        stop: &watch::Receiver<bool>,
    ) -> Load {
        let addr = server.addr;
        let tally = Arc::new(Tally::default());
        let idle = (0..IDLE_SOCKETS)
            .map(|i| tokio::spawn(idle_socket(addr, idle_address(i / PER_ADDRESS), stop.clone(), Arc::clone(&tally))))
            .collect();
        let over_cap = tokio::spawn(over_cap(addr));
        let non_readers = (0..NON_READERS)
            .map(|i| tokio::spawn(non_reader(addr, non_reader_address(i), project, stop.clone())))
            .collect();
        // The owner's eight streams of the running project, then the rest over the accounts' draft projects.
        let mut streams = Vec::new();
        let owner_url = format!("{}/api/projects/{project}/events", owner.base);
        for _ in 0..MAX_STREAMS_PER_ACCOUNT {
            let client = owner.client.clone();
            let (url, token) = (owner_url.clone(), owner.token.clone());
            streams.push(tokio::spawn(event_stream(client, url, token, stop.clone(), Arc::clone(&tally))));
        }
        for i in 0..EVENT_STREAMS - MAX_STREAMS_PER_ACCOUNT {
            let account = &accounts[i % accounts.len()];
            let url = format!("{}/api/projects/{}/events", account.api.base, account.project);
            let (client, token) = (account.api.client.clone(), account.api.token.clone());
            streams.push(tokio::spawn(event_stream(client, url, token, stop.clone(), Arc::clone(&tally))));
        }
        let stream_over_cap = {
            let (client, token) = (owner.client.clone(), owner.token.clone());
            let tally = Arc::clone(&tally);
            tokio::spawn(async move {
                // Once the owner's eight are open, a ninth.
                let deadline = Instant::now() + Duration::from_secs(60);
                while tally.streams_first_opened.load(Ordering::Relaxed) < EVENT_STREAMS {
                    if Instant::now() > deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let reply = client.get(owner_url).bearer_auth(token).send().await.ok()?;
                let status = reply.status().as_u16();
                let body = tokio::time::timeout(Duration::from_secs(5), reply.text()).await;
                Some((status, error_code(&body.ok()?.ok()?)))
            })
        };
        // The hostile data first, then the silent uploads (which take every upload place of the server for the
        // idle timeout).
        let (upload_tx, upload_rx) = tokio::sync::oneshot::channel();
        let hostile_data = {
            let base = owner.base.clone();
            let target = accounts.first().map(|a| (a.api.token.clone(), a.project));
            let bomber = accounts.get(1).map(|a| (a.api.token.clone(), a.project));
            let modeller = accounts.get(2).map(|a| a.api.token.clone()).filter(|_| model_at_the_limits);
            let uploaders: Vec<(String, i64)> = accounts.iter().map(|a| (a.api.token.clone(), a.project)).collect();
            tokio::spawn(async move {
                let (Some(target), Some(bomber)) = (target, bomber) else { anyhow::bail!("too few accounts") };
                let data = hostile_data(addr, &base, target, bomber, modeller.as_deref()).await;
                let _ = upload_tx.send(silent_uploads(addr, &uploaders).await);
                data
            })
        };
        let uploads = tokio::spawn(async move { upload_rx.await.unwrap_or_default() });
        Load { tally, idle, over_cap, non_readers, uploads, streams, stream_over_cap, hostile_data }
    }

    /// Waits for every abusive task (they end once `stop` is sent, or by themselves within their bounds).
    async fn finish(self, server: &Server) -> AbuseOutcome {
        let mut outcome = AbuseOutcome::default();
        let join_limit = Duration::from_secs(60);
        for task in self.idle.into_iter().chain(self.streams) {
            if tokio::time::timeout(join_limit, task).await.is_err() {
                self.tally.unexpected("idle", "a task did not end within 60 s of the stop".into());
            }
        }
        match tokio::time::timeout(join_limit, self.over_cap).await {
            Ok(Ok(results)) => {
                for result in results {
                    match result {
                        Ok(()) => outcome.over_cap.0 += 1,
                        Err(e) if e.starts_with("429 too_many_connections") => outcome.over_cap.1 += 1,
                        Err(e) => outcome.over_cap_unexpected.push(e),
                    }
                }
            }
            other => outcome.over_cap_unexpected.push(format!("{other:?}")),
        }
        for task in self.non_readers {
            match tokio::time::timeout(join_limit, task).await {
                Ok(Ok(NonReader::Dropped(after))) => {
                    outcome.non_readers_dropped += 1;
                    outcome.non_readers_longest = outcome.non_readers_longest.max(after);
                }
                Ok(Ok(NonReader::NoLease)) => outcome.non_readers_without_lease += 1,
                Ok(Ok(NonReader::Unexpected(e))) => outcome.non_readers_unexpected.push(e),
                other => outcome.non_readers_unexpected.push(format!("{other:?}")),
            }
        }
        outcome.uploads_shortest_408 = Duration::MAX;
        let uploads = tokio::time::timeout(Duration::from_secs(120), self.uploads).await;
        let uploads = uploads.ok().and_then(Result::ok).unwrap_or_default();
        if uploads.len() != SILENT_UPLOADS {
            outcome.uploads_unexpected.push(format!("{} uploads were sent", uploads.len()));
        }
        for task in uploads {
            match tokio::time::timeout(UPLOAD_IDLE_TIMEOUT + join_limit, task).await {
                Ok(Ok(Ok((status, code, after)))) => {
                    if status == 408 {
                        outcome.uploads_longest_408 = outcome.uploads_longest_408.max(after);
                        outcome.uploads_shortest_408 = outcome.uploads_shortest_408.min(after);
                    }
                    *outcome.uploads.entry((status, code)).or_default() += 1;
                }
                Ok(Ok(Err(e))) => outcome.uploads_unexpected.push(e),
                other => outcome.uploads_unexpected.push(format!("{other:?}")),
            }
        }
        outcome.stream_over_cap =
            tokio::time::timeout(join_limit, self.stream_over_cap).await.ok().and_then(Result::ok).flatten();
        match tokio::time::timeout(Duration::from_secs(120), self.hostile_data).await {
            Ok(Ok(Ok(data))) => {
                outcome.bomb = data.bomb;
                outcome.long_record = data.long_record;
                outcome.big_model = data.big_model;
            }
            other => outcome.bomb = (0, String::new(), format!("{other:?}")),
        }
        let tally = &self.tally;
        outcome.idle_connected = tally.idle_connected.load(Ordering::Relaxed);
        outcome.idle_timed_out = tally.idle_timed_out.load(Ordering::Relaxed);
        outcome.idle_longest_wait = Duration::from_millis(tally.idle_longest_wait_ms.load(Ordering::Relaxed) as u64);
        outcome.idle_reconnects_refused = tally.idle_reconnects_refused.load(Ordering::Relaxed);
        outcome.idle_first_connected = tally.idle_first_connected.load(Ordering::Relaxed);
        outcome.streams_opened = tally.streams_opened.load(Ordering::Relaxed);
        outcome.streams_first_opened = tally.streams_first_opened.load(Ordering::Relaxed);
        {
            let mut unexpected = tally.unexpected.lock().expect("not poisoned");
            outcome.idle_unexpected = unexpected.remove("idle").unwrap_or_default();
            outcome.streams_unexpected = unexpected.remove("streams").unwrap_or_default();
        }
        let metrics = server.metrics().await.unwrap_or_default();
        outcome.write_timeout_drops =
            crate::prometheus(&metrics, "daig_provider_connections_dropped_total{why=\"write_timeout\"}");
        outcome
    }
}

type Ws = WebSocketStream<TcpStream>;

/// A silent upload's task: the answer's status, error code and wait, or what went wrong.
type UploadTask = tokio::task::JoinHandle<Result<(u16, String, Duration), String>>;

/// A provider WebSocket from loopback address `source`, with a receive buffer of `recv_buffer` bytes if given;
/// a refusal is `Err("<status> <error code>")`.
async fn connect(server: SocketAddr, source: Ipv4Addr, recv_buffer: Option<u32>) -> Result<Ws, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket.bind(SocketAddr::from((source, 0))).map_err(|e| format!("bind {source}: {e}"))?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).map_err(|e| format!("SO_RCVBUF: {e}"))?;
    }
    let stream = socket.connect(server).await.map_err(|e| format!("connect from {source}: {e}"))?;
    match tokio_tungstenite::client_async(format!("ws://{server}/ws/provider"), stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(reply)) => {
            let body = reply.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            Err(format!("{} {}", reply.status().as_u16(), error_code(&body)))
        }
        Err(e) => Err(format!("upgrade from {source}: {e}")),
    }
}

/// The `error.code` of an error body, or the body itself.
fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// The `error.message` of an error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// The next frame the server sends, `None` once it closes; frames that do not decode are an error.
async fn next_frame(ws: &mut Ws) -> Result<Option<Frame<'static>>, String> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Binary(bytes))) => {
                return Frame::decode(&bytes).map(|f| Some(f.into_owned())).map_err(|e| format!("a bad frame: {e}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
        }
    }
}

/// One idle socket: upgrades and says nothing; the server must close it with `Goodbye(Timeout)` after its Hello
/// timeout; it opens again until `stop`.
async fn idle_socket(server: SocketAddr, source: Ipv4Addr, mut stop: watch::Receiver<bool>, tally: Arc<Tally>) {
    let mut first = true;
    while !*stop.borrow() {
        let mut ws = match connect(server, source, None).await {
            Ok(ws) => ws,
            Err(e) if !first && e.starts_with("429 ") => {
                // The place of the socket just closed is released as its task ends, which may be a moment
                // after the close arrived here.
                tally.idle_reconnects_refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => {
                tally.unexpected("idle", e);
                return;
            }
        };
        tally.idle_connected.fetch_add(1, Ordering::Relaxed);
        if std::mem::take(&mut first) {
            tally.idle_first_connected.fetch_add(1, Ordering::Relaxed);
        }
        let opened = Instant::now();
        let frame = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            frame = tokio::time::timeout(HELLO_TIMEOUT * 3, next_frame(&mut ws)) => frame,
        };
        match frame {
            Ok(Ok(Some(Frame::Goodbye(Goodbye { reason: GoodbyeReason::Timeout, .. })))) => {
                tally.idle_timed_out.fetch_add(1, Ordering::Relaxed);
                let waited = opened.elapsed().as_millis() as usize;
                tally.idle_longest_wait_ms.fetch_max(waited, Ordering::Relaxed);
            }
            other => {
                tally.unexpected("idle", format!("from {source}: {other:?} instead of Goodbye(Timeout)"));
                return;
            }
        }
        drop(ws);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`OVER_CAP_ADDRESSES`] addresses open [`PER_ADDRESS`] + 2 idle sockets each, one after the other: one
/// result per socket, `Err("429 too_many_connections")` for the refused.
async fn over_cap(server: SocketAddr) -> Vec<Result<(), String>> {
    let mut held = Vec::new();
    let mut results = Vec::new();
    for a in 0..OVER_CAP_ADDRESSES {
        for _ in 0..PER_ADDRESS + 2 {
            match connect(server, over_cap_address(a), None).await {
                Ok(ws) => {
                    held.push(ws);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
    }
    results
}

/// How a non-reader ended.
#[derive(Debug)]
enum NonReader {
    /// It got a lease, asked for the shard and stopped reading; a write failed this long after the first request.
    Dropped(Duration),
    /// The project finished before it got a lease (the server said `Goodbye`).
    NoLease,
    Unexpected(String),
}

/// A provider that joins `project`, answers heartbeats until it has a lease, then asks for the lease's shard
/// every 250 ms and never reads again, until a write fails. Its receive buffer is 64 KiB: small, so that the
/// server's writes block soon, but not so small that reading the parameters (200 kB) before the lease takes
/// longer than the write timeout on a busy machine.
async fn non_reader(server: SocketAddr, source: Ipv4Addr, project: i64, mut stop: watch::Receiver<bool>) -> NonReader {
    let mut ws = match connect(server, source, Some(64 << 10)).await {
        Ok(ws) => ws,
        Err(e) => return NonReader::Unexpected(e),
    };
    let hello = Hello::new(Backend::Cpu, "non-reader", Some(ProjectId(project as u64)));
    if let Err(e) = ws.send(Message::Binary(Frame::Hello(hello).encode().into())).await {
        return NonReader::Unexpected(format!("hello: {e}"));
    }
    let shard = loop {
        // Once the project has finished, the server says so within a few seconds.
        let limit = if *stop.borrow() { Duration::from_secs(10) } else { RUN_LIMIT };
        let frame = tokio::time::timeout(limit, next_frame(&mut ws)).await;
        match frame {
            Ok(Ok(Some(Frame::Lease(lease)))) => match lease.samples {
                SampleSelection::Shards(shards) if !shards.is_empty() => break shards[0].shard,
                other => return NonReader::Unexpected(format!("a lease without shards: {other:?}")),
            },
            Ok(Ok(Some(Frame::Heartbeat(_)))) => {
                let beat = Frame::Heartbeat(Heartbeat::default()).encode();
                if let Err(e) = ws.send(Message::Binary(beat.into())).await {
                    return NonReader::Unexpected(format!("heartbeat: {e}"));
                }
            }
            Ok(Ok(Some(Frame::Goodbye(Goodbye { reason: GoodbyeReason::Normal, .. })))) => return NonReader::NoLease,
            Ok(Ok(Some(_))) => {}
            // A reset instead of the goodbye: the server closed the socket with heartbeats of this provider unread,
            // which discards what it had sent. Expected only as the project finishes.
            Ok(Ok(None) | Err(_)) if finishing(&mut stop).await => return NonReader::NoLease,
            other => return NonReader::Unexpected(format!("while waiting for a lease: {other:?}")),
        }
    };
    let request = Frame::ShardRequest(ShardRequest { shard }).encode();
    let first = Instant::now();
    let limit = PROVIDER_WRITE_TIMEOUT + Duration::from_secs(60);
    while first.elapsed() < limit {
        let sent = tokio::time::timeout(Duration::from_secs(5), ws.send(Message::Binary(request.clone().into()))).await;
        match sent {
            Ok(Ok(())) => {}
            // The server closed the socket: the write fails once its reset has come back.
            Ok(Err(_)) => return NonReader::Dropped(first.elapsed()),
            // The server's receive buffer is full: it stopped reading, which it does only while it writes.
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    NonReader::Unexpected(format!("still connected {limit:?} after asking for a shard without reading"))
}

/// Whether the run is stopping (the project finished) or stops within 5 s.
async fn finishing(stop: &mut watch::Receiver<bool>) -> bool {
    tokio::time::timeout(Duration::from_secs(5), stop.wait_for(|s| *s)).await.is_ok()
}

/// The silent uploads: [`MAX_UPLOADS`] from the first accounts, [`MAX_UPLOADS_PER_ACCOUNT`] each, so that those
/// accounts are full; a second later the rest, from every account in turn. Their tasks.
async fn silent_uploads(server: SocketAddr, accounts: &[(String, i64)]) -> Vec<UploadTask> {
    let mut tasks = Vec::new();
    for i in 0..SILENT_UPLOADS {
        if i == MAX_UPLOADS {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let account = if i < MAX_UPLOADS { i / MAX_UPLOADS_PER_ACCOUNT } else { (i - MAX_UPLOADS) % accounts.len() };
        let (token, project) = accounts[account].clone();
        tasks.push(tokio::spawn(silent_upload(server, token, project)));
    }
    tasks
}

/// A dataset upload that sends its head (announcing 100 kB) and nothing more: the answer's status and error code,
/// and how long it took.
async fn silent_upload(server: SocketAddr, token: String, project: i64) -> Result<(u16, String, Duration), String> {
    let mut stream = TcpStream::connect(server).await.map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "PUT /api/projects/{project}/dataset/features HTTP/1.1\r\nHost: {server}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let sent = Instant::now();
    let (status, body) = read_response(&mut stream, UPLOAD_IDLE_TIMEOUT + Duration::from_secs(30)).await?;
    Ok((status, error_code(&body), sent.elapsed()))
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `stream`, within `limit`: its status and body.
async fn read_response(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Result<(u16, String), String> {
    let read = async {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&text[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|n| n.trim().parse::<usize>().ok()));
                if length.is_some_and(|n| text.len() >= end + 4 + n) || length.is_none() {
                    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    return Ok((status, String::from_utf8_lossy(&text[end + 4..]).into_owned()));
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) => return Err(format!("closed after {} bytes: {}", text.len(), String::from_utf8_lossy(&text))),
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    };
    tokio::time::timeout(limit, read).await.map_err(|_| format!("no answer within {limit:?}"))?
}

/// One live-update stream: opens, reads events until the server ends the stream, waits the `retry` second and
/// opens again, until `stop`.
async fn event_stream(
    client: reqwest::Client,
    url: String,
    token: String,
    mut stop: watch::Receiver<bool>,
    tally: Arc<Tally>,
) {
    let mut first = true;
    while !*stop.borrow() {
        let reply = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            reply = tokio::time::timeout(Duration::from_secs(30), client.get(&url).bearer_auth(&token).send()) => reply,
        };
        let mut reply = match reply {
            Ok(Ok(reply)) if reply.status() == 200 => reply,
            Ok(Ok(reply)) => {
                let status = reply.status();
                let body = reply.text().await.unwrap_or_default();
                tally.unexpected("streams", format!("{status} {}", error_code(&body)));
                return;
            }
            other => {
                tally.unexpected("streams", format!("{other:?}"));
                return;
            }
        };
        tally.streams_opened.fetch_add(1, Ordering::Relaxed);
        if std::mem::take(&mut first) {
            tally.streams_first_opened.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let chunk = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                chunk = tokio::time::timeout(Duration::from_secs(30), reply.chunk()) => chunk,
            };
            match chunk {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => break,
                other => {
                    tally.unexpected("streams", format!("while streaming: {other:?}"));
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The answers to the hostile data: (status, error code, message) each.
#[derive(Debug)]
struct HostileData {
    bomb: (u16, String, String),
    long_record: (u16, String, String),
    big_model: (u16, String, String),
}

/// Sends the npz bomb and the long CSV record to the draft projects of `target` and `bomber` (token, project),
/// and creates and starts a model at the limits as `modeller` if given (else its answer is `(0, "skipped", "")`).
async fn hostile_data(
    server: SocketAddr,
    base: &str,
    target: (String, i64),
    bomber: (String, i64),
    modeller: Option<&str>,
) -> anyhow::Result<HostileData> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    // An npz whose features entry declares 4 samples of 4 features and inflates to 64 MiB (about 64 KiB sent).
    let bomb = deflated_npz("x", &zeros_npy("<f4", &[4, 4], 64 << 20));
    let (token, project) = &bomber;
    let reply = client
        .put(format!("{base}/api/projects/{project}/dataset/features?format=npz"))
        .bearer_auth(token)
        .body(bomb)
        .send()
        .await?;
    let status = reply.status().as_u16();
    let text = reply.text().await?;
    let bomb = (status, error_code(&text), error_message(&text));
    let long_record = long_csv_record(server, &target.0, target.1).await;
    let big_model = match modeller {
        Some(modeller) => model_at_the_limits(&client, base, modeller).await?,
        None => (0, "skipped".into(), String::new()),
    };
    Ok(HostileData { bomb, long_record, big_model })
}

/// A CSV of a header, two good rows and a fourth line of 100 MB without a line end, written as it is generated
/// while the answer is read.
async fn long_csv_record(server: SocketAddr, token: &str, project: i64) -> (u16, String, String) {
    let stream = match TcpStream::connect(server).await {
        Ok(stream) => stream,
        Err(e) => return (0, String::new(), format!("connect: {e}")),
    };
    let (mut reader, mut writer) = stream.into_split();
    let head = b"a,b,c,d,label\n1,2,3,4,0\n5,6,7,8,1\n".to_vec();
    let long: usize = 100 << 20;
    let request = format!(
        "PUT /api/projects/{project}/dataset/features?format=csv HTTP/1.1\r\nHost: {server}\r\nAuthorization: Bearer \
         {token}\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
        head.len() + long
    );
    // The write half is kept until the answer is in: dropping it would end the request (a half-closed
    // connection is a client that went away).
    let write = async move {
        let chunk = vec![b'7'; 64 << 10];
        let mut sent = writer.write_all(request.as_bytes()).await;
        if sent.is_ok() {
            sent = writer.write_all(&head).await;
        }
        for _ in 0..long / chunk.len() {
            if sent.is_err() {
                break;
            }
            sent = writer.write_all(&chunk).await;
        }
        (writer, sent)
    };
    let writing = tokio::spawn(write);
    let answer = read_response(&mut reader, Duration::from_secs(60)).await;
    let written = if writing.is_finished() { writing.await.ok().map(|(_, sent)| sent) } else { None };
    match answer {
        Ok((status, body)) => (status, error_code(&body), error_message(&body)),
        Err(e) => (0, String::new(), format!("{e} (the writer: {written:?})")),
    }
}

/// Creates a project whose model has exactly `Limits::default().max_params` parameters (one dense layer of 16,384
/// units over 4,095 inputs), uploads 20 samples and starts it: the first refusal's (status, code, message), or
/// `(200, "started", …)` when nothing refused it.
async fn model_at_the_limits(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<(u16, String, String)> {
    let (inputs, units) = (4095usize, 16384usize);
    assert_eq!((inputs + 1) * units, daig_shared::model::Limits::default().max_params);
    let model =
        json!({"input_shape": [inputs], "layers": [{"type": "dense", "units": units}], "loss": "cross_entropy"});
    let body = json!({"name": "at the limits", "model": model, "settings": {"batch_size": 4, "samples_per_shard": 20}});
    let reply = client.post(format!("{base}/api/projects")).bearer_auth(token).json(&body).send().await?;
    let status = reply.status().as_u16();
    let text = reply.text().await?;
    if status != 201 {
        // Refused at creation: the whole body, whose details name the limit the model is over.
        return Ok((status, error_code(&text), text));
    }
    let id = serde_json::from_str::<Value>(&text)?["id"].as_i64().context("no project id")?;
    let samples = 20;
    let features: Vec<u8> = (0..samples * inputs).flat_map(|i| ((i % 7) as f32).to_le_bytes()).collect();
    let labels: Vec<u8> = (0..samples as i64).flat_map(|i| (i * 97 % units as i64).to_le_bytes()).collect();
    for (part, bytes) in
        [("features", npy("<f4", &[samples, inputs], &features)), ("labels", npy("<i8", &[samples], &labels))]
    {
        let reply = client
            .put(format!("{base}/api/projects/{id}/dataset/{part}"))
            .bearer_auth(token)
            .body(bytes)
            .send()
            .await?;
        let status = reply.status().as_u16();
        if status != 200 {
            let text = reply.text().await?;
            return Ok((status, error_code(&text), error_message(&text)));
        }
    }
    let reply =
        client.post(format!("{base}/api/projects/{id}/start")).bearer_auth(token).json(&json!({})).send().await?;
    let status = reply.status().as_u16();
    let text = reply.text().await?;
    if reply_is_success(status) {
        return Ok((status, "started".into(), text));
    }
    Ok((status, error_code(&text), error_message(&text)))
}

fn reply_is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// A `.npy` of `shape` and dtype `descr` holding `data`.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(header.len()).expect("a short header").to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A `.npy` of `shape` and dtype `descr` whose data is `data_bytes` zero bytes (not what the shape needs).
fn zeros_npy(descr: &str, shape: &[usize], data_bytes: usize) -> Vec<u8> {
    let mut npy = npy(descr, shape, &[]);
    npy.resize(npy.len() + data_bytes, 0);
    npy
}

/// A zip holding `bytes` deflated as `<name>.npy`.
fn deflated_npz(name: &str, bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(format!("{name}.npy"), options).expect("a zip entry");
    zip.write_all(bytes).expect("deflate");
    zip.finish().expect("a zip").into_inner()
}
