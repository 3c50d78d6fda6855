//! A provider written against the wire protocol for these tests: it trains leases with the shared reference
//! trainer exactly as the protocol says (an honest provider), and exposes the raw socket so that tests can
//! misbehave on purpose.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use daig_shared::model::{Limits, Model};
use daig_shared::train::Trainer;
use daig_shared::train::lease::{self, LeaseWork};
use daig_shared::wire::{
    AckOutcome, Backend, ContributionInfo, Frame, Goodbye, GoodbyeReason, Heartbeat, Hello, Lease, ProjectId,
    Reassembler, SampleSelection, ShardHash, ShardRequest, TransferId, TransferKind, Welcome, transfer_frames,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A raw provider connection.
pub struct WireClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    reassembler: Reassembler,
    next_transfer: u32,
}

/// A Hello as an honest CPU provider sends it.
pub fn hello(project: Option<i64>) -> Hello {
    Hello::new(Backend::Cpu, "test provider", project.map(|p| ProjectId(p as u64)))
}

/// What a session produced.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub sent: u32,
    pub applied: u32,
    pub stale: u32,
    pub refused: Vec<String>,
    pub goodbye: Option<Goodbye>,
    pub welcome: Option<Welcome>,
}

/// Received transfers and frames, as the test provider sees them.
pub enum Incoming {
    Frame(Frame<'static>),
    Params { version: u64, values: Vec<f32> },
    Shard { hash: ShardHash, bytes: Vec<u8> },
    Closed,
}

impl WireClient {
    pub async fn connect(addr: SocketAddr) -> WireClient {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/provider")).await.expect("connect");
        WireClient { ws, reassembler: Reassembler::new(1 << 30), next_transfer: 0 }
    }

    /// Connects from loopback address `source` (any of 127.0.0.0/8), as another client would; the server's
    /// refusal (an HTTP error) when it does not upgrade.
    pub async fn connect_as(
        addr: SocketAddr,
        source: std::net::Ipv4Addr,
    ) -> Result<WireClient, tokio_tungstenite::tungstenite::Error> {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind(SocketAddr::from((source, 0))).expect("bind to the source address");
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/ws/provider"), MaybeTlsStream::Plain(stream)).await?;
        Ok(WireClient { ws, reassembler: Reassembler::new(1 << 30), next_transfer: 0 })
    }

    /// Connects as a browser page on `origin` would: with an `Origin` header.
    pub async fn connect_from(addr: SocketAddr, origin: &str) -> WireClient {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = format!("ws://{addr}/ws/provider").into_client_request().unwrap();
        request.headers_mut().insert("origin", origin.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("connect");
        WireClient { ws, reassembler: Reassembler::new(1 << 30), next_transfer: 0 }
    }

    pub async fn send(&mut self, frame: &Frame<'_>) {
        self.ws.send(Message::Binary(frame.encode().into())).await.expect("send");
    }

    /// Sends any WebSocket message; an error once the server has closed the socket.
    pub async fn send_message(&mut self, message: Message) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(message).await
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.expect("send");
    }

    /// The next frame or completed transfer; `Closed` when the socket ends.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            let message = match tokio::time::timeout(Duration::from_secs(60), self.ws.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(_) => return Incoming::Closed,
                Err(_) => panic!("the server sent nothing for 60 s"),
            };
            let bytes = match message {
                Message::Binary(bytes) => bytes,
                Message::Close(_) => return Incoming::Closed,
                _ => continue,
            };
            let frame = Frame::decode(&bytes).expect("the server sends valid frames").into_owned();
            match &frame {
                Frame::TransferStart(_) | Frame::Chunk(_) => {
                    if let Some(transfer) = self.reassembler.feed(&frame).expect("valid transfers") {
                        match transfer.kind {
                            TransferKind::Params { version } => {
                                return Incoming::Params { version, values: transfer.f32s().unwrap() };
                            }
                            TransferKind::Shard { shard } => {
                                return Incoming::Shard { hash: shard, bytes: transfer.bytes };
                            }
                            TransferKind::Contribution(_) => panic!("the server sent a contribution"),
                        }
                    }
                }
                _ => return Incoming::Frame(frame),
            }
        }
    }

    /// Sends a contribution for `info.lease_id`.
    pub async fn contribute(&mut self, info: ContributionInfo, delta: &[f32]) {
        self.try_contribute(info, delta).await.expect("send");
    }

    /// Sends a contribution; an error when the server has closed the socket meanwhile (e.g. the project
    /// finished while it was being trained).
    pub async fn try_contribute(
        &mut self,
        info: ContributionInfo,
        delta: &[f32],
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.next_transfer += 1;
        let bytes = daig_shared::wire::f32s_to_le_bytes(delta);
        let frames: Vec<Vec<u8>> =
            transfer_frames(TransferId(self.next_transfer), TransferKind::Contribution(info), &bytes)
                .map(|f| f.encode())
                .collect();
        for frame in frames {
            self.ws.send(Message::Binary(frame.into())).await?;
        }
        Ok(())
    }

    pub async fn goodbye(&mut self) {
        let frame = Frame::Goodbye(Goodbye { reason: GoodbyeReason::Normal, detail: "test provider stopping".into() });
        self.send(&frame).await;
        let _ = self.ws.close(None).await;
    }
}

/// The honest provider's state between frames.
#[derive(Default)]
pub struct Honest {
    pub model: Option<Model>,
    pub trainer: Option<Trainer>,
    pub welcome: Option<Welcome>,
    pub params: Option<(u64, Vec<f32>)>,
    pub leases: VecDeque<Lease>,
    pub shards: HashMap<ShardHash, Vec<u8>>,
    pub requested: Option<ShardHash>,
}

impl Honest {
    /// Takes in one incoming item; returns false when the connection ended.
    pub fn take(&mut self, incoming: Incoming, outcome: &mut Outcome) -> bool {
        match incoming {
            Incoming::Closed => return false,
            Incoming::Params { version, values } => self.params = Some((version, values)),
            Incoming::Shard { hash, bytes } => {
                self.requested = None;
                self.shards.insert(hash, bytes);
            }
            Incoming::Frame(frame) => match frame {
                Frame::Welcome(welcome) => {
                    let model = Model::from_json(&welcome.model_json, &Limits::default()).expect("a valid model");
                    self.trainer = Some(Trainer::new(&model));
                    self.model = Some(model);
                    self.params = None;
                    self.leases.clear();
                    outcome.welcome = Some(welcome.clone());
                    self.welcome = Some(welcome);
                }
                Frame::Lease(lease) => self.leases.push_back(lease),
                Frame::CancelLease(cancel) => self.leases.retain(|l| l.lease_id != cancel.lease_id),
                Frame::Ack(ack) => match ack.outcome {
                    AckOutcome::Applied { .. } => outcome.applied += 1,
                    AckOutcome::Stale { .. } => outcome.stale += 1,
                    AckOutcome::Refused { reason, detail } => outcome.refused.push(format!("{reason:?}: {detail}")),
                },
                Frame::Goodbye(goodbye) => {
                    outcome.goodbye = Some(goodbye);
                    return false;
                }
                _ => {}
            },
        }
        true
    }

    /// The shard the first lease lacks, if any.
    pub fn missing_shard(&self) -> Option<ShardHash> {
        let lease = self.leases.front()?;
        let SampleSelection::Shards(parts) = &lease.samples else { return None };
        parts.iter().map(|p| p.shard).find(|h| !self.shards.contains_key(h))
    }

    /// Trains the first lease if everything it needs is here: its contribution info and delta.
    pub fn train_next(&mut self) -> Option<(ContributionInfo, Vec<f32>)> {
        let (version, params) = self.params.as_ref()?;
        let lease = self.leases.front()?;
        if *version < lease.params_version || self.missing_shard().is_some() {
            return None;
        }
        let lease = self.leases.pop_front()?;
        let welcome = self.welcome.as_ref()?;
        let model = self.model.as_ref()?;
        let SampleSelection::Shards(parts) = &lease.samples else { panic!("shard selections") };
        let shards = &self.shards;
        let inputs =
            lease::gather(model, &welcome.training.normalisation, parts, |h| shards.get(&h).map(Vec::as_slice))
                .expect("the lease's samples");
        let work = LeaseWork {
            batch_size: welcome.training.batch_size as usize,
            local_steps: lease.local_steps as usize,
            learning_rate: lease.learning_rate,
            seed: lease.lease_id.0,
        };
        let result = lease::recompute(self.trainer.as_mut()?, model, &inputs, params, &work).expect("it trains");
        let info = ContributionInfo {
            lease_id: lease.lease_id,
            base_version: *version,
            sample_count: result.samples as u32,
            mean_loss: result.mean_loss as f32,
        };
        Some((info, result.delta))
    }
}

/// Asks for the shard the first lease lacks (once), then takes in the next incoming item, answering a
/// heartbeat; false when the connection ended.
async fn wait(client: &mut WireClient, honest: &mut Honest, outcome: &mut Outcome) -> bool {
    if let Some(shard) = honest.missing_shard()
        && honest.requested != Some(shard)
    {
        honest.requested = Some(shard);
        client.send(&Frame::ShardRequest(ShardRequest { shard })).await;
    }
    let incoming = client.recv().await;
    if let Incoming::Frame(Frame::Heartbeat(_)) = &incoming {
        client.send(&Frame::Heartbeat(Heartbeat::default())).await;
    }
    honest.take(incoming, outcome)
}

/// Trains `lease` as an honest provider does (asking for its shards, waiting for its parameters) and returns its
/// contribution; leases that arrive meanwhile wait in `honest`.
pub async fn train_lease(
    client: &mut WireClient,
    honest: &mut Honest,
    outcome: &mut Outcome,
    lease: Lease,
) -> (ContributionInfo, Vec<f32>) {
    honest.leases.push_front(lease);
    loop {
        if let Some(contribution) = tokio::task::block_in_place(|| honest.train_next()) {
            return contribution;
        }
        assert!(wait(client, honest, outcome).await, "closed: {outcome:?}");
    }
}

/// Runs an honest provider until the server says goodbye, the socket closes, or `stop_after` contributions are
/// applied (then it says goodbye itself).
pub async fn run_honest(addr: SocketAddr, hello: Hello, stop_after: Option<u32>) -> Outcome {
    run_honest_on(WireClient::connect(addr).await, hello, stop_after).await
}

/// [`run_honest`] on a connected client.
pub async fn run_honest_on(mut client: WireClient, hello: Hello, stop_after: Option<u32>) -> Outcome {
    client.send(&Frame::Hello(hello)).await;
    let mut honest = Honest::default();
    let mut outcome = Outcome::default();
    loop {
        if let Some(limit) = stop_after
            && outcome.applied >= limit
        {
            client.goodbye().await;
            return outcome;
        }
        if let Some((info, delta)) = tokio::task::block_in_place(|| honest.train_next()) {
            if client.try_contribute(info, &delta).await.is_err() {
                // The server closed the socket while the lease trained: its goodbye says why.
                while honest.take(client.recv().await, &mut outcome) {}
                return outcome;
            }
            outcome.sent += 1;
            continue;
        }
        if !wait(&mut client, &mut honest, &mut outcome).await {
            return outcome;
        }
    }
}
