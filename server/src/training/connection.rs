//! `GET /ws/provider`: one provider's WebSocket, owned by one [`Connection`] task.
//!
//! The first message must be a `Hello` (within [`HELLO_TIMEOUT`]); a different protocol version, a wrong site
//! key or an unknown project is answered with a `Goodbye` saying so. The connection then joins a project (the
//! one named, else the public project with the fewest providers) or waits, sending heartbeats, until one
//! needs it. While joined it forwards heartbeats and contributions to the coordinator, serves shard requests
//! from the object store, and sends the coordinator's leases, acks and cancellations and every new parameter
//! version. A provider silent for three heartbeat intervals is dropped; its leases return to the queue. When its
//! project finishes, pauses or is cancelled, a provider that named it is told `Goodbye(Normal)` (or waits for a
//! resume), and any other provider joins another project (a new `Welcome`) or waits.
//!
//! Every frame is checked before use: its size (the WebSocket layer caps messages at `MAX_FRAME_BYTES`), its
//! decoding, its place in the sequence, a transfer's declared size against the model's parameter count. A
//! broken frame ends the connection with `Goodbye(ProtocolError)`.
//!
//! What one connection can cost the server is bounded: frames it sends, by a token bucket
//! (`max_provider_frames_per_sec`); frames to it, by `provider_write_timeout_ms` each (a provider that stops
//! reading is dropped and its leases return); shards, streamed one chunk at a time; contributions, read only
//! for a lease the connection holds open and only within the server-wide `max_reassembly_bytes`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use daig_shared::wire::{
    self, Ack, AckOutcome, Chunk, Frame, Goodbye, GoodbyeReason, Heartbeat, Hello, LeaseId, LeaseProgress,
    MAX_CHUNK_BYTES, ProviderId, Reassembler, RefusalReason, SampleSelection, ShardHash, TransferId, TransferKind,
    TransferStart, transfer_frames,
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::coordinator::{Event, JoinRequest, Joined};
use super::data::ShardObject;
use super::{Detach, ParamsSnapshot, ProjectHandle, SocketOrigin, ToProvider};
use crate::db::{self, now_unix};
use crate::error::AppError;
use crate::extract::ClientIp;
use crate::project::{Access, TrainingSettings, parse_origin};
use crate::state::AppState;

/// Leases that ended whose shards a provider may still ask for: a request may cross a cancellation.
const ENDED_LEASES_SERVED: usize = 8;

/// Lease `lease` ended: its shards move to the few of ended leases still served.
fn end_lease(named: &mut HashMap<LeaseId, Vec<ShardHash>>, ended: &mut VecDeque<Vec<ShardHash>>, lease: LeaseId) {
    if let Some(shards) = named.remove(&lease) {
        if ended.len() >= ENDED_LEASES_SERVED {
            ended.pop_front();
        }
        ended.push_back(shards);
    }
}

/// Time a new connection has to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest adapter description and site key kept.
const MAX_TEXT: usize = 256;
/// The WebSocket read buffer of a connection.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Messages queued from the coordinator to one connection; a connection this far behind is dropped.
const QUEUE: usize = 256;
/// How long the last frames to a provider (a goodbye, the close) may take: a provider that does not read
/// them is not waited for.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(2);

/// A token bucket over the frames a provider sends: `rate` a second on average, bursts of twice that.
#[derive(Debug)]
struct FrameBudget {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl FrameBudget {
    fn new(rate: u32) -> FrameBudget {
        let rate = f64::from(rate.max(1));
        FrameBudget { rate, tokens: 2.0 * rate, at: Instant::now() }
    }

    /// Takes one frame's token at `now`; `false` when the provider sends faster than its budget.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A contribution arriving for a lease this connection does not hold open (it ended: answered, cancelled or
/// expired, or it never existed): its chunks are counted and dropped, never stored, and the provider is told
/// once the last one has arrived.
#[derive(Debug)]
struct Skipped {
    transfer_id: TransferId,
    lease_id: LeaseId,
    next_index: u32,
    left_bytes: u64,
}

/// Upgrades to the provider protocol, within the connection limits: the server's, and the one of each client
/// address.
pub async fn ws_provider(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let origin = socket_origin(&headers);
    if let Err(refusal) = state.provider_connect_limiter().check(network_of(ip)) {
        metrics::counter!("daig_provider_connections_refused_total", "why" => "connect_rate").increment(1);
        return refusal.into_response();
    }
    let address = address_key(ip);
    let max = state.settings().max_provider_connections_per_address;
    let Some(slot) = state.training().address_slot(&address, max) else {
        metrics::counter!("daig_provider_connections_refused_total", "why" => "address").increment(1);
        return AppError::TooManyConnections { max }.into_response();
    };
    let Ok(permit) = state.training().connections().try_acquire_owned() else {
        return AppError::Overloaded.into_response();
    };
    // A small read buffer: tungstenite's default (128 KiB) is zero-filled before every read and costs that much
    // memory per connection, while every frame but a chunk is tiny.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(wire::MAX_FRAME_BYTES)
        .max_frame_size(wire::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            let _slot = slot;
            metrics::gauge!("daig_provider_connections").increment(1.0);
            Connection::run(state, socket, Peer { origin, address }).await;
            metrics::gauge!("daig_provider_connections").decrement(1.0);
        })
}

/// The key a client address counts under, for the per-address connection limit and bans: an IPv4 address (an
/// IPv4-mapped IPv6 one included) as itself, an IPv6 address by its /64, which one client usually holds whole.
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The address a client's connections are counted under for the connection rate: an IPv4 address (an IPv4-mapped
/// one included) as itself, an IPv6 address as its /64, like [`address_key`].
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Who is at the other end of a socket: where its page is, and its client address (see [`address_key`]).
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub origin: SocketOrigin,
    pub address: String,
}

/// Where the socket was opened from (see [`SocketOrigin`]): a browser's `Origin` compared with the `Host` it
/// connected to.
pub(crate) fn socket_origin(headers: &HeaderMap) -> SocketOrigin {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return SocketOrigin::None;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    if !host.is_empty() && authority.eq_ignore_ascii_case(host) {
        return SocketOrigin::SameOrigin;
    }
    SocketOrigin::Site(parse_origin(origin).unwrap_or_else(|_| origin.to_owned()))
}

/// What a connection reads and writes: axum's `WebSocket`, or a pair of channels in unit tests.
pub(crate) trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

/// How a joined session ended.
enum End {
    /// The socket is closed or must be: nothing more to send.
    Closed,
    /// The coordinator let the provider go.
    Detached(Detach),
}

/// Why the connection stops: the goodbye to send, if any.
struct Stop(Option<(GoodbyeReason, String)>);

impl Stop {
    fn protocol(detail: impl Into<String>) -> Stop {
        Stop(Some((GoodbyeReason::ProtocolError, detail.into())))
    }
}

struct Connection<S> {
    state: AppState,
    socket: S,
    origin: SocketOrigin,
    hello: Hello,
    id: ProviderId,
    /// The checks its persistent identity passed before this connection.
    verified: u64,
    interval: Duration,
    next_transfer: u32,
    /// How long one frame to the provider may take.
    write_timeout: Duration,
    /// The frames the provider may still send.
    frames: FrameBudget,
}

impl<S: Socket> Connection<S> {
    /// Serves one provider from its `Hello` to the end of the socket; registers it in the database while it
    /// lasts.
    pub(crate) async fn run(state: AppState, mut socket: S, peer: Peer) {
        let admitted = match read_hello(&mut socket).await {
            Ok(hello) => admit(&state, hello, &peer.address).await,
            Err(stop) => Err(stop),
        };
        let (hello, id, verified) = match admitted {
            Ok(admitted) => admitted,
            Err(Stop(goodbye)) => {
                if let Some((reason, detail)) = goodbye {
                    let goodbye = Frame::Goodbye(Goodbye { reason, detail });
                    let _ = tokio::time::timeout(CLOSING_TIMEOUT, send_frame(&mut socket, &goodbye)).await;
                }
                let _ = tokio::time::timeout(CLOSING_TIMEOUT, socket.send(Message::Close(None))).await;
                return;
            }
        };
        let interval = Duration::from_millis(state.settings().heartbeat_interval_ms);
        let write_timeout = Duration::from_millis(state.settings().provider_write_timeout_ms);
        let frames = FrameBudget::new(state.settings().max_provider_frames_per_sec);
        let mut connection = Connection {
            origin: peer.origin,
            state,
            socket,
            hello,
            id: ProviderId(u64::try_from(id).unwrap_or(0)),
            verified,
            interval,
            next_transfer: 0,
            write_timeout,
            frames,
        };
        let stop = connection.serve().await;
        if let Some((reason, detail)) = stop.0 {
            tracing::debug!(provider = %connection.id, ?reason, "closing: {detail}");
            let goodbye = Frame::Goodbye(Goodbye { reason, detail });
            let _ = tokio::time::timeout(CLOSING_TIMEOUT, send_frame(&mut connection.socket, &goodbye)).await;
        }
        let _ = tokio::time::timeout(CLOSING_TIMEOUT, connection.socket.send(Message::Close(None))).await;
        let _ = db::training::provider_disconnected(connection.state.db(), id, now_unix()).await;
    }

    /// Sends one frame within the write timeout: a provider that does not read (its socket's buffers full) is
    /// dropped rather than waited for, and its leases return to the queue.
    async fn send(&mut self, frame: &Frame<'_>) -> Result<(), Stop> {
        match tokio::time::timeout(self.write_timeout, send_frame(&mut self.socket, frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop(None)),
            Err(_) => {
                metrics::counter!("daig_provider_connections_dropped_total", "why" => "write_timeout").increment(1);
                tracing::info!(provider = %self.id, "dropping a provider that stopped reading");
                Err(Stop(None))
            }
        }
    }

    /// Counts one received message against the provider's frame budget.
    fn count_frame(&mut self) -> Result<(), Stop> {
        if self.frames.take(Instant::now()) {
            return Ok(());
        }
        metrics::counter!("daig_provider_connections_dropped_total", "why" => "frame_rate").increment(1);
        let rate = self.state.settings().max_provider_frames_per_sec;
        Err(Stop::protocol(format!("more than {rate} frames a second: slow down")))
    }

    /// Joins projects one after another until the provider or the server ends the connection.
    async fn serve(&mut self) -> Stop {
        loop {
            let (handle, joined, rx) = match self.assign().await {
                Ok(assigned) => assigned,
                Err(stop) => return stop,
            };
            match self.session(&handle, joined, rx).await {
                Ok(End::Closed) => {
                    let _ = handle.events.send(Event::Leave { provider: self.id }).await;
                    return Stop(None);
                }
                Ok(End::Detached(reason)) => {
                    tracing::info!(provider = %self.id, project = handle.id, "provider detached: {reason}");
                    match reason {
                        Detach::ShuttingDown => return Stop(Some((GoodbyeReason::ShuttingDown, reason.to_string()))),
                        Detach::ShutOut(_) => return Stop(Some((GoodbyeReason::ShutOut, reason.to_string()))),
                        Detach::Finished | Detach::Cancelled | Detach::Removed(_)
                            if self.hello.project_id.is_some() =>
                        {
                            return Stop(Some((GoodbyeReason::Normal, reason.to_string())));
                        }
                        _ => {}
                    }
                }
                Err(stop) => {
                    let _ = handle.events.send(Event::Leave { provider: self.id }).await;
                    return stop;
                }
            }
        }
    }

    /// Finds a project for the provider and joins it, waiting (with heartbeats) while none can take it.
    async fn assign(&mut self) -> Result<(ProjectHandle, Joined, mpsc::Receiver<ToProvider>), Stop> {
        let training = Arc::clone(self.state.training_arc());
        let mut changed = training.subscribe();
        loop {
            changed.borrow_and_update();
            let candidates = match self.hello.project_id {
                Some(project) => {
                    let id = i64::try_from(project.0).unwrap_or(-1);
                    match training.get(id) {
                        Some(handle) => {
                            if handle.access == Access::SiteKey && handle.site_key != self.hello.site_key {
                                return Err(Stop(Some((
                                    GoodbyeReason::Unauthorized,
                                    format!(
                                        "project {id} takes providers only from its sites: the site key is missing or wrong"
                                    ),
                                ))));
                            }
                            self.check_origin(id, handle.access, &handle.sites)?;
                            self.check_device(&handle)?;
                            vec![handle]
                        }
                        None => {
                            self.check_waitable(id).await?;
                            Vec::new()
                        }
                    }
                }
                // A site key binds the provider to its site's project: it waits while that project is not
                // running and never works for another (a site owner's visitors lend their devices to the site's
                // project only).
                None => match self.hello.site_key.clone() {
                    Some(key) => match training.by_site_key(&key) {
                        Some(own) => {
                            self.check_origin(own.id, own.access, &own.sites)?;
                            self.check_device(&own)?;
                            vec![own]
                        }
                        None => {
                            self.check_site_key_waitable(&key).await?;
                            Vec::new()
                        }
                    },
                    // Only projects the device can train; while none fits, it waits like a provider with no project.
                    None => {
                        let device = self.hello.device;
                        training.public_by_need().into_iter().filter(|p| device.refuses(&p.need).is_none()).collect()
                    }
                },
            };
            for handle in candidates {
                let (tx, rx) = mpsc::channel(QUEUE);
                let (reply, answer) = oneshot::channel();
                let request = JoinRequest {
                    id: self.id,
                    backend: self.hello.backend,
                    adapter: self.hello.adapter.clone(),
                    samples_per_sec: self.hello.samples_per_sec,
                    cached: self.hello.cached_shards.iter().copied().collect::<HashSet<ShardHash>>(),
                    site_key: self.credited_site(&handle),
                    verified: self.verified,
                    tx,
                };
                if handle.events.send(Event::Join { provider: request, reply }).await.is_err() {
                    continue;
                }
                if let Ok(Ok(joined)) = answer.await {
                    return Ok((handle, joined, rx));
                }
            }
            self.wait(&mut changed).await?;
        }
    }

    /// A project named in `Hello` that is not running: wait if it may run later, else refuse.
    async fn check_waitable(&mut self, id: i64) -> Result<(), Stop> {
        let row = db::projects::admission(self.state.db(), id)
            .await
            .map_err(|_| Stop(Some((GoodbyeReason::InternalError, "the server failed".into()))))?;
        match row {
            Some((state, site_key, settings)) if state == "draft" || state == "paused" || state == "running" => {
                if site_key.is_some() && site_key != self.hello.site_key {
                    return Err(Stop(Some((
                        GoodbyeReason::Unauthorized,
                        format!("project {id} takes providers only from its sites: the site key is missing or wrong"),
                    ))));
                }
                let settings: TrainingSettings = serde_json::from_str(&settings)
                    .map_err(|_| Stop(Some((GoodbyeReason::InternalError, "the server failed".into()))))?;
                self.check_origin(id, settings.access, &settings.canonical_sites())
            }
            Some((state, _, _)) => Err(Stop(Some((GoodbyeReason::Normal, format!("project {id} is {state}"))))),
            None => Err(Stop(Some((GoodbyeReason::UnknownProject, format!("there is no project {id}"))))),
        }
    }

    /// A site key whose project is not running: wait if it may run later, else refuse.
    async fn check_site_key_waitable(&mut self, key: &str) -> Result<(), Stop> {
        let row = db::projects::by_site_key(self.state.db(), key)
            .await
            .map_err(|_| Stop(Some((GoodbyeReason::InternalError, "the server failed".into()))))?;
        match row {
            Some((id, _)) => self.check_waitable(id).await,
            None => Err(Stop(Some((GoodbyeReason::Unauthorized, "no project has this site key".into())))),
        }
    }

    /// The site the provider's work in project `handle` is credited to: the project's own site key when the
    /// provider presents it (a key is checked against the project; a browser's page must be one of the
    /// project's sites or this server's), else the listed origin of the page a browser came from. A site key
    /// that is not the project's, or an origin it does not list, earns no one anything.
    fn credited_site(&self, handle: &ProjectHandle) -> Option<String> {
        let listed = |origin: &String| handle.sites.iter().any(|s| s == origin);
        let own_key = self.hello.site_key.as_ref().filter(|k| handle.site_key.as_ref() == Some(*k));
        match &self.origin {
            SocketOrigin::Site(origin) if listed(origin) => Some(own_key.cloned().unwrap_or_else(|| origin.clone())),
            SocketOrigin::Site(_) => None,
            SocketOrigin::None | SocketOrigin::SameOrigin => own_key.cloned(),
        }
    }

    /// Refuses a provider whose device says it cannot hold the project's training: a visitor's tab is never
    /// handed a model it cannot allocate.
    fn check_device(&self, handle: &ProjectHandle) -> Result<(), Stop> {
        match self.hello.device.refuses(&handle.need) {
            None => Ok(()),
            Some(why) => Err(Stop(Some((GoodbyeReason::DeviceTooSmall, format!("project {}: {why}", handle.id))))),
        }
    }

    /// Refuses a browser on a site that project `id` does not list.
    fn check_origin(&self, id: i64, access: Access, sites: &[String]) -> Result<(), Stop> {
        if self.origin.admitted(access, sites) {
            return Ok(());
        }
        let SocketOrigin::Site(origin) = &self.origin else { return Ok(()) };
        Err(Stop(Some((
            GoodbyeReason::Unauthorized,
            format!("project {id} does not list {origin} among the sites that may embed it"),
        ))))
    }

    /// Waits until projects change, answering heartbeats; a provider that stays silent is dropped.
    async fn wait(&mut self, changed: &mut watch::Receiver<u64>) -> Result<(), Stop> {
        let mut beat = tokio::time::interval(self.interval);
        let mut silent_until = Instant::now() + 3 * self.interval;
        // Look again now and then anyway: a paused project resumes through the same registry.
        let recheck = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(recheck);
        loop {
            tokio::select! {
                _ = changed.changed() => return Ok(()),
                () = &mut recheck => return Ok(()),
                _ = beat.tick() => self.send(&Frame::Heartbeat(Heartbeat::default())).await?,
                message = tokio::time::timeout_at(silent_until, self.socket.next()) => {
                    let bytes = incoming(message)?;
                    self.count_frame()?;
                    let Some(bytes) = bytes else { continue };
                    silent_until = Instant::now() + 3 * self.interval;
                    match Frame::decode(&bytes).map_err(|e| Stop::protocol(e.to_string()))? {
                        // A contribution or shard request may cross the end of the provider's last project.
                        Frame::Heartbeat(_) | Frame::TransferStart(_) | Frame::Chunk(_) | Frame::ShardRequest(_) => {}
                        Frame::Goodbye(_) => return Err(Stop(None)),
                        other => return Err(Stop::protocol(format!("{} while waiting for a project", other.name()))),
                    }
                }
            }
        }
    }

    /// One project: Welcome, parameters, then frames both ways until the socket closes or the coordinator
    /// lets the provider go.
    async fn session(
        &mut self,
        handle: &ProjectHandle,
        joined: Joined,
        mut rx: mpsc::Receiver<ToProvider>,
    ) -> Result<End, Stop> {
        let Joined { welcome, mut params, shards } = joined;
        let param_bytes = welcome.training.param_count.saturating_mul(4);
        self.send(&Frame::Welcome(welcome)).await?;
        let first = params.borrow_and_update().clone();
        self.send_params(&first).await?;
        let mut reassembler = Reassembler::new(param_bytes);
        // The share of the server's reassembly budget the contribution being received holds.
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        let mut skipped: Option<Skipped> = None;
        // Heartbeats reach the coordinator at most four times an interval, however many the provider sends.
        let mut next_beat_forwarded = Instant::now();
        let mut open: HashMap<LeaseId, u32> = HashMap::new();
        // Training data only by lease: the shards each open lease names, and those of the last few leases that
        // ended (a request may cross a lease's cancellation). Nothing else is sent, validation shards never.
        let mut named: HashMap<LeaseId, Vec<ShardHash>> = HashMap::new();
        let mut ended: VecDeque<Vec<ShardHash>> = VecDeque::new();
        let mut beat = tokio::time::interval(self.interval);
        let mut silent_until = Instant::now() + 3 * self.interval;
        loop {
            tokio::select! {
                biased;
                message = rx.recv() => match message {
                    Some(ToProvider::Lease(lease)) => {
                        open.insert(lease.lease_id, 0);
                        let shards = match &lease.samples {
                            SampleSelection::Shards(parts) => parts.iter().map(|p| p.shard).collect(),
                            SampleSelection::Indices(_) => Vec::new(),
                        };
                        named.insert(lease.lease_id, shards);
                        self.send(&Frame::Lease(lease)).await?;
                    }
                    Some(ToProvider::Ack(ack)) => {
                        open.remove(&ack.lease_id);
                        end_lease(&mut named, &mut ended, ack.lease_id);
                        self.send(&Frame::Ack(ack)).await?;
                    }
                    Some(ToProvider::Cancel(cancel)) => {
                        open.remove(&cancel.lease_id);
                        end_lease(&mut named, &mut ended, cancel.lease_id);
                        self.send(&Frame::CancelLease(cancel)).await?;
                    }
                    Some(ToProvider::Detach(reason)) => return Ok(End::Detached(reason)),
                    None => return Ok(End::Detached(Detach::Removed("training of the project stopped".into()))),
                },
                changed = params.changed() => {
                    if changed.is_err() {
                        // The coordinator is gone; its Detach (if any) is still in the queue.
                        continue;
                    }
                    let latest = params.borrow_and_update().clone();
                    self.send_params(&latest).await?;
                }
                _ = beat.tick() => {
                    let leases = open.iter().map(|(&lease_id, &steps_done)| LeaseProgress { lease_id, steps_done }).collect();
                    self.send(&Frame::Heartbeat(Heartbeat { leases })).await?;
                }
                message = tokio::time::timeout_at(silent_until, self.socket.next()) => {
                    let bytes = match incoming(message) {
                        Ok(bytes) => bytes,
                        Err(Stop(None)) => return Ok(End::Closed),
                        Err(stop) => return Err(stop),
                    };
                    self.count_frame()?;
                    let Some(bytes) = bytes else { continue };
                    silent_until = Instant::now() + 3 * self.interval;
                    let frame = Frame::decode(&bytes).map_err(|e| Stop::protocol(format!("undecodable frame: {e}")))?;
                    match frame {
                        Frame::Heartbeat(beat) => {
                            for progress in &beat.leases {
                                if let Some(steps) = open.get_mut(&progress.lease_id) {
                                    *steps = progress.steps_done;
                                }
                            }
                            let now = Instant::now();
                            if now >= next_beat_forwarded {
                                next_beat_forwarded = now + self.interval / 4;
                                let event = Event::Heartbeat { provider: self.id, leases: beat.leases };
                                let _ = handle.events.send(event).await;
                            }
                        }
                        Frame::ShardRequest(request) => {
                            let leased = named.values().chain(ended.iter()).any(|s| s.contains(&request.shard));
                            let object = shards.get(&request.shard).cloned().filter(|_| leased);
                            let Some(object) = object else {
                                return Err(Stop::protocol(format!(
                                    "shard {} is named by none of this provider's leases: training data is sent \
                                     only for a lease",
                                    request.shard
                                )));
                            };
                            self.send_shard(request.shard, &object).await?;
                        }
                        Frame::TransferStart(start) => {
                            let TransferKind::Contribution(info) = &start.kind else {
                                return Err(Stop::protocol(format!(
                                    "a provider sends only contributions, not {:?}",
                                    start.kind
                                )));
                            };
                            if let Some(skip) = &skipped {
                                return Err(Stop::protocol(format!(
                                    "transfer {} started while transfer {} is still open",
                                    start.transfer_id, skip.transfer_id
                                )));
                            }
                            if !open.contains_key(&info.lease_id) && start.total_bytes <= param_bytes {
                                // Not for an open lease: nothing is stored, and the provider hears why at the end.
                                metrics::counter!("daig_contributions_skipped_total").increment(1);
                                if start.total_bytes == 0 {
                                    self.refuse_closed_lease(info.lease_id).await?;
                                } else {
                                    skipped = Some(Skipped {
                                        transfer_id: start.transfer_id,
                                        lease_id: info.lease_id,
                                        next_index: 0,
                                        left_bytes: start.total_bytes,
                                    });
                                }
                                continue;
                            }
                            if start.total_bytes <= param_bytes && reassembler.open_transfer().is_none() {
                                reserved = Some(self.reserve(start.total_bytes).await?);
                            }
                            reassembler.start(&start).map_err(|e| Stop::protocol(e.to_string()))?;
                        }
                        Frame::Chunk(chunk) => {
                            if let Some(skip) = skipped.as_mut().filter(|s| s.transfer_id == chunk.transfer_id) {
                                let len = chunk.bytes.len() as u64;
                                if chunk.index != skip.next_index || len == 0 || len > skip.left_bytes {
                                    return Err(Stop::protocol(format!(
                                        "chunk {} of transfer {} ({len} bytes) is out of sequence or past its end",
                                        chunk.index, chunk.transfer_id
                                    )));
                                }
                                skip.next_index += 1;
                                skip.left_bytes -= len;
                                if skip.left_bytes == 0 {
                                    let lease_id = skip.lease_id;
                                    skipped = None;
                                    self.refuse_closed_lease(lease_id).await?;
                                }
                                continue;
                            }
                            let done = reassembler.push(&chunk).map_err(|e| Stop::protocol(e.to_string()))?;
                            let Some(transfer) = done else { continue };
                            let TransferKind::Contribution(info) = transfer.kind.clone() else {
                                return Err(Stop::protocol("a provider sends only contributions"));
                            };
                            let delta = transfer.f32s().map_err(|e| Stop::protocol(e.to_string()))?;
                            drop(transfer);
                            open.remove(&info.lease_id);
                            end_lease(&mut named, &mut ended, info.lease_id);
                            let event = Event::Contribution { provider: self.id, info, delta };
                            let sent = handle.events.send(event).await;
                            // Handed over: the coordinator's bounded queue holds it from here.
                            drop(reserved.take());
                            if sent.is_err() {
                                return Ok(End::Detached(Detach::Removed("training of the project stopped".into())));
                            }
                        }
                        Frame::Goodbye(goodbye) => {
                            tracing::debug!(provider = %self.id, "provider said goodbye: {}", goodbye.detail);
                            return Ok(End::Closed);
                        }
                        other => return Err(Stop::protocol(format!("a provider does not send {}", other.name()))),
                    }
                }
            }
        }
    }

    async fn send_params(&mut self, snapshot: &ParamsSnapshot) -> Result<(), Stop> {
        let id = self.transfer_id();
        for frame in transfer_frames(id, TransferKind::Params { version: snapshot.version }, &snapshot.bytes) {
            self.send(&frame).await?;
        }
        Ok(())
    }

    /// Streams a shard from the object store, one chunk in memory at a time.
    async fn send_shard(&mut self, hash: ShardHash, object: &ShardObject) -> Result<(), Stop> {
        let failed = |e: &dyn std::fmt::Display| {
            tracing::error!(shard = %hash, "cannot read a shard for a provider: {e}");
            Stop(Some((GoodbyeReason::InternalError, "the server cannot read the shard".into())))
        };
        let mut stream = self.state.store().get_stream(&object.key).await.map_err(|e| failed(&e))?;
        if stream.size_bytes != object.size_bytes {
            let e = format!("it has {} bytes, not the {} recorded", stream.size_bytes, object.size_bytes);
            return Err(failed(&e));
        }
        let transfer_id = self.transfer_id();
        let kind = TransferKind::Shard { shard: hash };
        self.send(&Frame::TransferStart(TransferStart { transfer_id, kind, total_bytes: object.size_bytes })).await?;
        let mut left = object.size_bytes;
        let mut buffer = vec![0u8; usize::try_from(left).unwrap_or(usize::MAX).min(MAX_CHUNK_BYTES)];
        let mut index = 0;
        while left > 0 {
            let len = usize::try_from(left).unwrap_or(usize::MAX).min(MAX_CHUNK_BYTES);
            stream.reader.read_exact(&mut buffer[..len]).await.map_err(|e| failed(&e))?;
            self.send(&Frame::Chunk(Chunk { transfer_id, index, bytes: Cow::Borrowed(&buffer[..len]) })).await?;
            index += 1;
            left -= len as u64;
        }
        Ok(())
    }

    /// Memory for a contribution of `bytes` from the server's reassembly budget, waited for at most the write
    /// timeout (the provider's chunks wait in its socket meanwhile).
    async fn reserve(&mut self, bytes: u64) -> Result<OwnedSemaphorePermit, Stop> {
        let budget = self.state.training().reassembly_budget();
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let wait = self.write_timeout;
        match tokio::time::timeout(wait, budget.acquire_many_owned(permits)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                metrics::counter!("daig_provider_connections_dropped_total", "why" => "reassembly_budget").increment(1);
                Err(Stop(Some((
                    GoodbyeReason::Overloaded,
                    "the server is receiving too many contributions at once: connect again later".into(),
                ))))
            }
        }
    }

    /// Tells the provider that its contribution for `lease_id` was not taken: the lease is not open here.
    async fn refuse_closed_lease(&mut self, lease_id: LeaseId) -> Result<(), Stop> {
        let detail = format!(
            "lease {lease_id} is not open on this connection (answered, cancelled or expired): its contribution \
             was not read"
        );
        let outcome = AckOutcome::Refused { reason: RefusalReason::UnknownLease, detail };
        self.send(&Frame::Ack(Ack { lease_id, outcome })).await
    }

    fn transfer_id(&mut self) -> TransferId {
        self.next_transfer = self.next_transfer.wrapping_add(1);
        TransferId(self.next_transfer)
    }
}

async fn send_frame(socket: &mut impl Socket, frame: &Frame<'_>) -> Result<(), axum::Error> {
    socket.send(Message::Binary(frame.encode().into())).await
}

/// A received message: `Ok(Some(bytes))` for a binary frame, `Ok(None)` for control frames, `Err` when the
/// peer is gone, silent too long, or sent text.
fn incoming(
    message: Result<Option<Result<Message, axum::Error>>, tokio::time::error::Elapsed>,
) -> Result<Option<bytes::Bytes>, Stop> {
    match message {
        Err(_) => Err(Stop(Some((GoodbyeReason::Timeout, "no frame for three heartbeat intervals".into())))),
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => Err(Stop(None)),
        Ok(Some(Ok(Message::Binary(bytes)))) => Ok(Some(bytes)),
        Ok(Some(Ok(Message::Text(_)))) => Err(Stop::protocol("frames are binary postcard, not text")),
        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => Ok(None),
    }
}

/// Admits the provider of `hello` from `address` (see [`address_key`]): refuses a banned address or a shut-out
/// key, finds (or creates) the identity of its persistent key, and registers the connection. The `Hello`, the
/// connection's provider id and its identity's standing (checks passed).
async fn admit(state: &AppState, hello: Hello, address: &str) -> Result<(Hello, i64, u64), Stop> {
    let failed = |e: sqlx::Error| {
        tracing::error!("cannot admit a provider: {e}");
        Stop(Some((GoodbyeReason::InternalError, "the server failed".into())))
    };
    let now = now_unix();
    if let Some((until, reason)) = db::trust::active_ban(state.db(), address, now).await.map_err(failed)? {
        let minutes = (until - now + 59) / 60;
        metrics::counter!("daig_provider_connections_refused_total", "why" => "banned_address").increment(1);
        return Err(Stop(Some((
            GoodbyeReason::ShutOut,
            format!("this address is refused for {minutes} more minutes: a provider from it failed a check ({reason})"),
        ))));
    }
    let identity = match &hello.provider_key {
        Some(key) => {
            let hash: String = Sha256::digest(key.0).iter().map(|b| format!("{b:02x}")).collect();
            let identity = db::trust::identity(state.db(), &hash, now).await.map_err(failed)?;
            if let Some(reason) = identity.shut_out {
                metrics::counter!("daig_provider_connections_refused_total", "why" => "shut_out_key").increment(1);
                return Err(Stop(Some((
                    GoodbyeReason::ShutOut,
                    format!("this provider key was shut out: a check of its work failed ({reason})"),
                ))));
            }
            Some(identity)
        }
        None => None,
    };
    let backend = format!("{:?}", hello.backend);
    let provider = db::training::NewProvider {
        backend: &backend,
        adapter: &hello.adapter,
        site_key: hello.site_key.as_deref(),
        identity: identity.as_ref().map(|i| i.id),
        address,
    };
    let id = db::training::register_provider(state.db(), &provider, now).await.map_err(failed)?;
    Ok((hello, id, identity.map_or(0, |i| i.verified)))
}

async fn read_hello(socket: &mut impl Socket) -> Result<Hello, Stop> {
    let message = tokio::time::timeout(HELLO_TIMEOUT, socket.next()).await;
    let bytes = match incoming(message) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(Stop::protocol("the first message must be a binary Hello")),
        Err(Stop(Some((GoodbyeReason::Timeout, _)))) => {
            return Err(Stop(Some((GoodbyeReason::Timeout, "no Hello within 10 seconds".into()))));
        }
        Err(stop) => return Err(stop),
    };
    let mut hello = match Frame::decode(&bytes) {
        Ok(Frame::Hello(hello)) => hello,
        Ok(other) => return Err(Stop::protocol(format!("the first frame must be Hello, not {}", other.name()))),
        Err(wire::DecodeError::UnsupportedVersion { .. }) => {
            return Err(Stop(Some((
                GoodbyeReason::UnsupportedVersion { supported: wire::PROTOCOL_VERSION },
                format!("this server speaks protocol version {}", wire::PROTOCOL_VERSION),
            ))));
        }
        Err(e) => return Err(Stop::protocol(format!("undecodable Hello: {e}"))),
    };
    if hello.adapter.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !hello.adapter.is_char_boundary(end) {
            end -= 1;
        }
        hello.adapter.truncate(end);
    }
    if hello.site_key.as_ref().is_some_and(|k| k.len() > MAX_TEXT) {
        return Err(Stop(Some((GoodbyeReason::Unauthorized, "the site key is too long".into()))));
    }
    Ok(hello)
}

#[cfg(test)]
mod tests;
