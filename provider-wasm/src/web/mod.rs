//! The browser provider: the [`Session`] driven inside a dedicated Web Worker, over the browser's WebSocket,
//! training with the GPU engine through WebGPU (or the CPU reference trainer when WebGPU is missing or fails its
//! self-check), with shards cached in Cache Storage ([`cache`]).
//!
//! The page talks to the worker with `postMessage` (see `web/static/embed.js`, which owns consent, visibility
//! and battery): `{type: "start", server, project, siteKey, throttle, software, cacheBytes}`, then `pause`,
//! `resume`, `throttle` (`value`, the share of time spent computing, 0.05 to 1) and `stop`. The worker answers
//! `{type: "ready"}` once it listens, then `{type: "status", ...}` whenever something changes (see
//! [`Figures`]). Pausing says `Goodbye` so that the server hands the provider's leases to others at once; resuming
//! connects again.
//!
//! One task owns the engine and trains one job at a time ([`trainer`]); the connection loop keeps reading
//! frames and sending heartbeats meanwhile. After each job the trainer rests so that computing takes the
//! throttle's share of the time.

mod bench;
mod cache;
mod trainer;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use daig_shared::wire::{DEFAULT_MAX_TRANSFER_BYTES, GoodbyeReason, MAX_FRAME_BYTES, ProjectId, ProviderKey};
use futures_channel::mpsc;
use futures_util::{FutureExt as _, StreamExt as _};
use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::JsCast as _;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, DedicatedWorkerGlobalScope, MessageEvent, WebSocket};

use self::cache::ShardCache;
pub use self::trainer::{MEMORY_SHARE, WASM_MEMORY_BYTES, device_capacity};
use self::trainer::{Probe, Report, Trainer};
use crate::backoff::Backoff;
use crate::session::{Closed, Event, Initiator, Session, SessionConfig, ShardMemory};

/// Shards kept in memory across leases and reconnections.
const MEMORY_SHARD_BYTES: u64 = 64 << 20;
/// The Cache Storage budget unless the page gives one.
const DEFAULT_CACHE_BYTES: u64 = 128 << 20;
/// The heartbeat interval before a `Welcome` gives the project's.
const INITIAL_HEARTBEAT_MS: u32 = 10_000;

/// What the page asked for.
#[derive(Clone, Debug, Default)]
struct Options {
    /// The server's provider socket, `ws(s)://host/ws/provider`.
    url: String,
    project: Option<ProjectId>,
    site_key: Option<String>,
    /// The browser's persistent key (kept by the page in local storage: workers have none).
    provider_key: Option<ProviderKey>,
    /// Train on a software adapter (SwiftShader) too: for tests on machines without a GPU.
    software: bool,
    cache_bytes: u64,
}

/// What the worker shows the page.
#[derive(Clone, Debug, Default)]
struct Figures {
    /// `starting`, `connecting`, `waiting`, `training`, `paused`, `stopped` or `error`.
    state: &'static str,
    /// `webgpu` or `cpu`.
    backend: &'static str,
    adapter: String,
    project: Option<u64>,
    provider: Option<u64>,
    /// Leases trained and sent.
    batches: u64,
    samples_per_sec: f64,
    applied: u64,
    /// Samples of applied contributions: what the server credits.
    credit: u64,
    message: String,
}

/// Something for the connection loop.
enum Input {
    Command(Command),
    /// An event of connection number `.0`.
    Socket(u64, SocketEvent),
    Report(Report),
}

enum Command {
    Start(Options, f64),
    Pause,
    Resume,
    Throttle(f64),
    Stop,
}

enum SocketEvent {
    Open,
    Bytes(Vec<u8>),
    Closed(String),
}

/// Entry point, called by `worker.js` once the module is loaded: listens for the page's commands and runs.
#[wasm_bindgen]
pub fn start_worker() {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let (tx, rx) = mpsc::unbounded::<Input>();
    let commands = tx.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        if let Some(command) = parse_command(&event.data()) {
            let _ = commands.unbounded_send(Input::Command(command));
        }
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    wasm_bindgen_futures::spawn_local(run(scope.clone(), tx, rx));
    post(&scope, &[("type", "ready".into())]);
}

fn parse_command(data: &JsValue) -> Option<Command> {
    let get =
        |key: &str| Reflect::get(data, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null());
    let kind = get("type")?.as_string()?;
    Some(match kind.as_str() {
        "start" => {
            let server = get("server")?.as_string()?;
            let options = Options {
                url: provider_url(&server),
                project: get("project").and_then(|v| v.as_f64()).map(|p| ProjectId(p as u64)),
                site_key: get("siteKey").and_then(|v| v.as_string()).filter(|k| !k.is_empty()),
                provider_key: get("providerKey").and_then(|v| v.as_string()).and_then(|k| ProviderKey::from_hex(&k)),
                software: get("software").and_then(|v| v.as_bool()).unwrap_or(false),
                cache_bytes: get("cacheBytes").and_then(|v| v.as_f64()).map_or(DEFAULT_CACHE_BYTES, |b| b as u64),
            };
            Command::Start(options, get("throttle").and_then(|v| v.as_f64()).unwrap_or(0.5))
        }
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "throttle" => Command::Throttle(get("value")?.as_f64()?),
        "stop" => Command::Stop,
        _ => return None,
    })
}

/// `http(s)://host[/prefix]` to `ws(s)://host[/prefix]/ws/provider`.
fn provider_url(server: &str) -> String {
    let server = server.trim().trim_end_matches('/');
    let rest = server.strip_prefix("https://").map(|r| format!("wss://{r}"));
    let rest = rest.or_else(|| server.strip_prefix("http://").map(|r| format!("ws://{r}")));
    format!("{}/ws/provider", rest.unwrap_or_else(|| server.to_owned()))
}

fn post(scope: &DedicatedWorkerGlobalScope, fields: &[(&str, JsValue)]) {
    let message = Object::new();
    for (key, value) in fields {
        let _ = Reflect::set(&message, &JsValue::from_str(key), value);
    }
    let _ = scope.post_message(&message);
}

fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

/// Resolves after `ms` milliseconds.
async fn sleep_ms(ms: f64) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
        let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms.clamp(0.0, 2e9) as i32);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// The worker's state across connections.
struct Worker {
    scope: DedicatedWorkerGlobalScope,
    tx: mpsc::UnboundedSender<Input>,
    options: Options,
    figures: Figures,
    trainer: Option<Trainer>,
    throttle: Rc<Cell<f64>>,
    cache: Option<Rc<ShardCache>>,
    memory: Option<ShardMemory>,
    paused: bool,
    stopped: bool,
    /// Numbers connections; training reports of earlier ones are dropped.
    connection: u64,
    /// Samples of each contribution sent, by lease, until its ack.
    pending_credit: std::collections::HashMap<u64, u64>,
}

async fn run(
    scope: DedicatedWorkerGlobalScope,
    tx: mpsc::UnboundedSender<Input>,
    mut rx: mpsc::UnboundedReceiver<Input>,
) {
    let mut worker = Worker {
        scope,
        tx,
        options: Options::default(),
        figures: Figures { state: "starting", ..Figures::default() },
        trainer: None,
        throttle: Rc::new(Cell::new(0.5)),
        cache: None,
        memory: Some(ShardMemory::new(MEMORY_SHARD_BYTES)),
        paused: false,
        stopped: false,
        connection: 0,
        pending_credit: Default::default(),
    };
    // Wait for `start`.
    while let Some(input) = rx.next().await {
        match input {
            Input::Command(Command::Start(options, throttle)) => {
                worker.options = options;
                worker.throttle.set(throttle.clamp(0.05, 1.0));
                break;
            }
            Input::Command(Command::Stop) => return,
            _ => {}
        }
    }
    worker.publish();
    worker.cache = Some(Rc::new(ShardCache::open(&worker.options.url, worker.options.cache_bytes).await));
    let (trainer, probe) = Trainer::start(worker.options.software, worker.throttle.clone(), worker.tx.clone()).await;
    worker.figures.backend = if probe.gpu { "webgpu" } else { "cpu" };
    worker.figures.adapter = probe.adapter.clone();
    worker.trainer = Some(trainer);
    let mut backoff = Backoff::new((js_sys::Math::random() * (1u64 << 53) as f64) as u64);
    while !worker.stopped {
        if worker.paused {
            worker.figures.state = "paused";
            worker.publish();
            // Wait for resume or stop.
            while let Some(input) = rx.next().await {
                match input {
                    Input::Command(Command::Resume) => worker.paused = false,
                    Input::Command(Command::Stop) => worker.stopped = true,
                    Input::Command(Command::Throttle(t)) => worker.throttle.set(t.clamp(0.05, 1.0)),
                    _ => {}
                }
                if !worker.paused || worker.stopped {
                    break;
                }
            }
            continue;
        }
        let healthy = worker.connect_once(&probe, &mut rx).await;
        if worker.stopped || worker.paused {
            continue;
        }
        if healthy {
            backoff.reset();
        }
        worker.figures.state = "connecting";
        worker.publish();
        let delay = sleep_ms(backoff.next_delay().as_secs_f64() * 1000.0).fuse();
        futures_util::pin_mut!(delay);
        loop {
            futures_util::select! {
                () = delay => break,
                input = rx.next() => match input {
                    Some(Input::Command(Command::Stop)) | None => { worker.stopped = true; break }
                    Some(Input::Command(Command::Pause)) => { worker.paused = true; break }
                    Some(Input::Command(Command::Throttle(t))) => worker.throttle.set(t.clamp(0.05, 1.0)),
                    _ => {}
                },
            }
        }
    }
    if worker.figures.state != "error" {
        worker.figures.state = "stopped";
    }
    worker.publish();
}

impl Worker {
    fn publish(&self) {
        let f = &self.figures;
        let opt = |v: Option<u64>| v.map_or(JsValue::NULL, |v| JsValue::from_f64(v as f64));
        post(
            &self.scope,
            &[
                ("type", "status".into()),
                ("state", f.state.into()),
                ("backend", f.backend.into()),
                ("adapter", f.adapter.as_str().into()),
                ("project", opt(f.project)),
                ("provider", opt(f.provider)),
                ("batches", JsValue::from_f64(f.batches as f64)),
                ("samplesPerSec", JsValue::from_f64(f.samples_per_sec)),
                ("applied", JsValue::from_f64(f.applied as f64)),
                ("credit", JsValue::from_f64(f.credit as f64)),
                ("message", f.message.as_str().into()),
            ],
        );
    }

    fn session_config(&self, probe: &Probe) -> SessionConfig {
        let mut config = SessionConfig::new(probe.backend, probe.adapter.clone());
        config.samples_per_sec = self.figures.samples_per_sec as f32;
        config.site_key = self.options.site_key.clone();
        config.project_id = self.options.project;
        config.provider_key = self.options.provider_key;
        config.device = probe.device;
        config.stored_shards = self.cache.as_ref().map(|c| c.list()).unwrap_or_default();
        config.max_shard_bytes = DEFAULT_MAX_TRANSFER_BYTES;
        config.initial_heartbeat_interval_ms = INITIAL_HEARTBEAT_MS;
        config
    }

    /// One connection, until it ends or the page pauses or stops; true when it was welcomed.
    async fn connect_once(&mut self, probe: &Probe, rx: &mut mpsc::UnboundedReceiver<Input>) -> bool {
        self.connection += 1;
        let connection = self.connection;
        if let Some(trainer) = &self.trainer {
            trainer.set_connection(connection);
        }
        self.figures.state = "connecting";
        self.figures.message.clear();
        self.publish();
        let socket = match open_socket(&self.options.url, self.tx.clone(), connection) {
            Ok(socket) => socket,
            Err(e) => {
                self.figures.message = format!("cannot open {}: {e:?}", self.options.url);
                return false;
            }
        };
        let mut session: Option<Session> = None;
        let mut welcomed = false;
        let mut dropped: Option<String> = None;
        loop {
            if let Some(session) = session.as_mut() {
                while let Some(event) = session.poll_event() {
                    self.on_event(session, event, &mut welcomed).await;
                }
                while let Some(frame) = session.poll_transmit() {
                    let _ = socket.socket.send_with_u8_array(&frame.encode());
                }
                if session.is_finished() {
                    break;
                }
            }
            let timeout = session.as_ref().and_then(Session::poll_timeout);
            let wait = match timeout {
                Some(at) => at.saturating_sub(now_ms()) as f64,
                None => 3_600_000.0,
            };
            let timer = sleep_ms(wait).fuse();
            futures_util::pin_mut!(timer);
            futures_util::select! {
                () = timer => {
                    if let Some(session) = session.as_mut() {
                        session.handle_timeout(now_ms());
                    }
                }
                input = rx.next() => match input {
                    None => break,
                    Some(Input::Socket(of, _)) if of != connection => {}
                    Some(Input::Socket(_, SocketEvent::Open)) => {
                        let mut config = self.session_config(probe);
                        config.model_limits = Default::default();
                        let memory = self.memory.take().unwrap_or_else(|| ShardMemory::new(MEMORY_SHARD_BYTES));
                        session = Some(Session::new(config, memory, now_ms()));
                        self.figures.state = "waiting";
                        self.publish();
                    }
                    Some(Input::Socket(_, SocketEvent::Bytes(bytes))) => {
                        if let Some(session) = session.as_mut() {
                            session.handle_bytes(&bytes, now_ms());
                        }
                    }
                    Some(Input::Socket(_, SocketEvent::Closed(why))) => {
                        dropped = Some(why);
                        break;
                    }
                    Some(Input::Report(Report::Trained { connection: of, job_id, result, seconds, samples })) => {
                        if of == connection && let Some(session) = session.as_mut() {
                            if result.is_ok() && seconds > 0.0 {
                                let rate = samples as f64 / seconds;
                                let old = self.figures.samples_per_sec;
                                self.figures.samples_per_sec = if old == 0.0 { rate } else { 0.7 * old + 0.3 * rate };
                            }
                            session.training_finished(job_id, result);
                        }
                    }
                    Some(Input::Report(Report::EngineReady { gpu, adapter })) => {
                        self.figures.backend = if gpu { "webgpu" } else { "cpu" };
                        self.figures.adapter = adapter;
                        self.publish();
                    }
                    Some(Input::Command(command)) => match command {
                        Command::Pause | Command::Stop => {
                            if matches!(command, Command::Stop) { self.stopped = true } else { self.paused = true }
                            match session.as_mut() {
                                Some(session) => session.close(GoodbyeReason::Normal, "the visitor paused or stopped"),
                                None => break,
                            }
                        }
                        Command::Throttle(t) => self.throttle.set(t.clamp(0.05, 1.0)),
                        Command::Resume | Command::Start(..) => {}
                    },
                },
            }
        }
        socket.close();
        if let Some(session) = session {
            if let Some(Closed { initiator: Initiator::Server, reason, detail }) = session.closed() {
                self.figures.message = format!("the server ended the session ({reason:?}): {detail}");
                if *reason == GoodbyeReason::Unauthorized
                    || *reason == GoodbyeReason::ShutOut
                    || *reason == GoodbyeReason::DeviceTooSmall
                    || matches!(reason, GoodbyeReason::UnsupportedVersion { .. })
                    || (*reason == GoodbyeReason::Normal && self.options.project.is_some())
                {
                    // Trying again would get the same answer.
                    self.figures.state = if *reason == GoodbyeReason::Normal { "stopped" } else { "error" };
                    self.stopped = true;
                }
            }
            self.memory = Some(session.into_memory());
        } else if let Some(why) = dropped {
            self.figures.message = why;
        }
        self.publish();
        welcomed
    }

    async fn on_event(&mut self, session: &mut Session, event: Event, welcomed: &mut bool) {
        match event {
            Event::Welcome { provider_id, project_id, model, training, .. } => {
                *welcomed = true;
                self.figures.project = Some(project_id.0);
                self.figures.provider = Some(provider_id.0);
                self.figures.state = "training";
                self.publish();
                if let Some(trainer) = &self.trainer {
                    trainer.load_model((*model).clone(), training.batch_size as usize);
                }
            }
            Event::LoadShard(shard) => match self.cache.as_ref() {
                Some(cache) => match cache.load(shard).await {
                    Some(bytes) => {
                        if session.provide_shard(shard, bytes).is_err() {
                            cache.remove(shard).await;
                        }
                    }
                    None => session.shard_unavailable(shard),
                },
                None => session.shard_unavailable(shard),
            },
            Event::StoreShard { shard, bytes } => {
                if let Some(cache) = self.cache.clone() {
                    wasm_bindgen_futures::spawn_local(async move { cache.store(shard, &bytes).await });
                }
            }
            Event::Train(job) => {
                if let Some(trainer) = &self.trainer {
                    trainer.train(self.connection, job);
                }
            }
            Event::ContributionSent { lease_id, sample_count, .. } => {
                self.figures.batches += 1;
                self.pending_credit.insert(lease_id.0, u64::from(sample_count));
                self.publish();
            }
            Event::Acked(ack) => {
                let samples = self.pending_credit.remove(&ack.lease_id.0).unwrap_or(0);
                if matches!(ack.outcome, daig_shared::wire::AckOutcome::Applied { .. }) {
                    self.figures.applied += 1;
                    self.figures.credit += samples;
                }
                self.publish();
            }
            Event::LeaseCancelled(_) | Event::Warning(_) => {}
            Event::Closed(closed) => {
                self.figures.message = closed.detail;
            }
        }
    }
}

/// The WebSocket and the callbacks that feed the connection loop.
struct Socket {
    socket: WebSocket,
    _callbacks: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Socket {
    fn close(&self) {
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        self.socket.set_onerror(None);
        self.socket.set_onopen(None);
        let _ = self.socket.close();
    }
}

fn open_socket(url: &str, tx: mpsc::UnboundedSender<Input>, connection: u64) -> Result<Socket, JsValue> {
    let socket = WebSocket::new(url)?;
    socket.set_binary_type(BinaryType::Arraybuffer);
    let sent = Rc::new(RefCell::new(false));
    let on_open = {
        let tx = tx.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |_| {
            let _ = tx.unbounded_send(Input::Socket(connection, SocketEvent::Open));
        })
    };
    let on_message = {
        let tx = tx.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let event: MessageEvent = event.unchecked_into();
            let data = event.data();
            if let Some(buffer) = data.dyn_ref::<js_sys::ArrayBuffer>() {
                if buffer.byte_length() as usize <= MAX_FRAME_BYTES {
                    let _ = tx.unbounded_send(Input::Socket(
                        connection,
                        SocketEvent::Bytes(Uint8Array::new(buffer).to_vec()),
                    ));
                } else {
                    let _ = tx.unbounded_send(Input::Socket(
                        connection,
                        SocketEvent::Closed("a frame over the size limit".into()),
                    ));
                }
            } else {
                let _ = tx.unbounded_send(Input::Socket(
                    connection,
                    SocketEvent::Closed("the server sent a text message; the protocol has binary messages only".into()),
                ));
            }
        })
    };
    let on_close = {
        let tx = tx.clone();
        let sent = sent.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            if sent.replace(true) {
                return;
            }
            let reason = event
                .dyn_ref::<web_sys::CloseEvent>()
                .map(|e| format!("the connection closed ({} {})", e.code(), e.reason()))
                .unwrap_or_else(|| "the connection failed".to_owned());
            let _ = tx.unbounded_send(Input::Socket(connection, SocketEvent::Closed(reason)));
        })
    };
    socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    socket.set_onerror(Some(on_close.as_ref().unchecked_ref()));
    Ok(Socket { socket, _callbacks: vec![on_open, on_message, on_close] })
}
