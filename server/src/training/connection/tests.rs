//! The connection loop driven through channels instead of a socket: what a provider that breaks the protocol
//! is told, in milliseconds and without a listener.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use daig_shared::wire::{
    Ack, AckOutcome, Backend, CancelLease, Frame, Goodbye, GoodbyeReason, Heartbeat, Hello, Lease, LeaseId,
    Normalisation, PROTOCOL_VERSION, ProjectId, ProviderId, SampleSelection, ShardHash, ShardRequest, TrainingInfo,
    Welcome,
};
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;

use super::{Connection, Peer, SocketOrigin};
use crate::{AppState, Settings};

/// Heartbeat interval of the test server: a silent provider is dropped after three.
const INTERVAL: Duration = Duration::from_millis(50);
/// Longest wait for any one message from the server.
const PATIENCE: Duration = Duration::from_secs(10);

/// The server's end of a socket: what the test sends comes out of the stream, what the server sends goes to
/// the test.
struct ChannelSocket {
    incoming: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for ChannelSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

impl Sink<Message> for ChannelSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), axum::Error> {
        self.outgoing.send(item).map_err(axum::Error::new)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// What the provider side sees.
#[derive(Debug)]
enum Out {
    Frame(Frame<'static>),
    Close,
    /// The connection task ended and dropped its end.
    Ended,
}

/// The provider's end, with the server's connection task running against the other.
struct Provider {
    to_server: mpsc::UnboundedSender<Result<Message, axum::Error>>,
    from_server: mpsc::UnboundedReceiver<Message>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Provider {
    async fn connect() -> Provider {
        let dir = tempfile::tempdir().expect("temporary directory");
        let settings = Settings {
            heartbeat_interval_ms: u64::try_from(INTERVAL.as_millis()).expect("small"),
            ..Settings::with_data_dir(dir.path().join("data"))
        };
        let state = AppState::new(settings).await.expect("state");
        let (to_server, incoming) = mpsc::unbounded_channel();
        let (outgoing, from_server) = mpsc::unbounded_channel();
        let socket = ChannelSocket { incoming, outgoing };
        let task = tokio::spawn(Connection::run(
            state,
            socket,
            Peer { origin: SocketOrigin::None, address: "192.0.2.1".into() },
        ));
        Provider { to_server, from_server, task, _dir: dir }
    }

    fn send(&self, message: Message) {
        // The server may have ended the connection already; what it said is read from `from_server`.
        let _ = self.to_server.send(Ok(message));
    }

    fn send_frame(&self, frame: &Frame<'_>) {
        self.send(Message::Binary(frame.encode().into()));
    }

    async fn recv(&mut self) -> Out {
        match tokio::time::timeout(PATIENCE, self.from_server.recv()).await.expect("the server answers in time") {
            None => Out::Ended,
            Some(Message::Binary(bytes)) => {
                Out::Frame(Frame::decode(&bytes).expect("server frames decode").into_owned())
            }
            Some(Message::Close(_)) => Out::Close,
            Some(other) => panic!("unexpected message {other:?}"),
        }
    }

    /// Reads past heartbeats to the goodbye, then expects the close and the end of the task.
    async fn goodbye(mut self) -> Goodbye {
        let goodbye = loop {
            match self.recv().await {
                Out::Frame(Frame::Heartbeat(_)) => {}
                Out::Frame(Frame::Goodbye(goodbye)) => break goodbye,
                other => panic!("expected a goodbye, got {other:?}"),
            }
        };
        assert!(matches!(self.recv().await, Out::Close), "a goodbye is followed by a close");
        self.ended().await;
        goodbye
    }

    /// Expects the connection task to end (after an optional close) without another frame.
    async fn ended(mut self) {
        loop {
            match self.recv().await {
                Out::Close | Out::Frame(Frame::Heartbeat(_)) => {}
                Out::Ended => break,
                other => panic!("expected the end, got {other:?}"),
            }
        }
        tokio::time::timeout(PATIENCE, &mut self.task).await.expect("the task ends").expect("the task did not panic");
    }
}

fn hello(project: Option<u64>) -> Hello {
    Hello::new(Backend::Cpu, "test", project.map(ProjectId))
}

/// Frames only a server sends, and a second `Hello`: a provider sending any of them breaks the protocol.
fn server_frames() -> Vec<Frame<'static>> {
    vec![
        Frame::Hello(hello(None)),
        Frame::Welcome(Welcome {
            provider_id: ProviderId(1),
            project_id: ProjectId(1),
            model_json: "{}".into(),
            training: TrainingInfo {
                param_count: 1,
                batch_size: 1,
                heartbeat_interval_ms: 1,
                normalisation: Normalisation::Global { offset: 0.0, scale: 1.0 },
            },
        }),
        Frame::Lease(Lease {
            lease_id: LeaseId(1),
            project_id: ProjectId(1),
            params_version: 0,
            samples: SampleSelection::Indices(vec![0]),
            local_steps: 1,
            learning_rate: 0.1,
            deadline_ms: 1000,
        }),
        Frame::CancelLease(CancelLease { lease_id: LeaseId(1), reason: String::new() }),
        Frame::Ack(Ack { lease_id: LeaseId(1), outcome: AckOutcome::Stale { current_version: 0 } }),
    ]
}

/// Deterministic junk: bytes that are not a frame of this protocol.
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn anything_but_a_hello_first_is_answered_with_a_goodbye_that_says_why() {
    let mut openings: Vec<(String, Message, GoodbyeReason)> = vec![
        ("text".into(), Message::Text("hello".into()), GoodbyeReason::ProtocolError),
        ("empty".into(), Message::Binary(Vec::new().into()), GoodbyeReason::ProtocolError),
        ("ping".into(), Message::Ping(Vec::new().into()), GoodbyeReason::ProtocolError),
    ];
    let newer = Hello { protocol_version: PROTOCOL_VERSION + 1, ..hello(None) };
    openings.push((
        "newer hello".into(),
        Message::Binary(Frame::Hello(newer).encode().into()),
        GoodbyeReason::UnsupportedVersion { supported: PROTOCOL_VERSION },
    ));
    for frame in server_frames().into_iter().skip(1).chain([
        Frame::Heartbeat(Heartbeat::default()),
        Frame::ShardRequest(ShardRequest { shard: ShardHash([0; 32]) }),
        Frame::Goodbye(Goodbye { reason: GoodbyeReason::Normal, detail: String::new() }),
    ]) {
        openings.push((frame.name().to_owned(), Message::Binary(frame.encode().into()), GoodbyeReason::ProtocolError));
    }
    for seed in 0..16 {
        let bytes = junk(seed, 1 + (seed as usize * 7) % 64);
        if matches!(Frame::decode(&bytes), Ok(Frame::Hello(_))) {
            continue;
        }
        openings.push((format!("junk {seed}"), Message::Binary(bytes.into()), GoodbyeReason::ProtocolError));
    }
    for (name, message, reason) in openings {
        let provider = Provider::connect().await;
        provider.send(message);
        let goodbye = provider.goodbye().await;
        assert_eq!(goodbye.reason, reason, "{name}: {}", goodbye.detail);
        assert!(!goodbye.detail.is_empty(), "{name}: the goodbye says why");
    }
}

#[tokio::test]
async fn a_hello_naming_a_project_that_does_not_exist_is_told_so() {
    let provider = Provider::connect().await;
    provider.send_frame(&Frame::Hello(hello(Some(4242))));
    let goodbye = provider.goodbye().await;
    assert_eq!(goodbye.reason, GoodbyeReason::UnknownProject);
    assert!(goodbye.detail.contains("4242"), "{}", goodbye.detail);
}

#[tokio::test]
async fn a_waiting_provider_gets_heartbeats_and_is_dropped_when_it_falls_silent() {
    let mut provider = Provider::connect().await;
    provider.send_frame(&Frame::Hello(hello(None)));
    // No project needs it: the server keeps it waiting with heartbeats...
    assert!(matches!(provider.recv().await, Out::Frame(Frame::Heartbeat(_))));
    // ...and while the provider answers, it stays.
    let started = tokio::time::Instant::now();
    while started.elapsed() < 5 * INTERVAL {
        provider.send_frame(&Frame::Heartbeat(Heartbeat::default()));
        assert!(matches!(provider.recv().await, Out::Frame(Frame::Heartbeat(_))));
    }
    let goodbye = provider.goodbye().await;
    assert_eq!(goodbye.reason, GoodbyeReason::Timeout, "{}", goodbye.detail);
}

#[tokio::test]
async fn a_waiting_provider_that_sends_what_only_a_server_sends_is_refused() {
    for frame in server_frames() {
        let provider = Provider::connect().await;
        provider.send_frame(&Frame::Hello(hello(None)));
        // Frames a provider may send while it waits change nothing...
        provider.send_frame(&Frame::Heartbeat(Heartbeat::default()));
        provider.send_frame(&Frame::ShardRequest(ShardRequest { shard: ShardHash([1; 32]) }));
        provider.send(Message::Ping(Vec::new().into()));
        // ...a server's frame ends the connection.
        provider.send_frame(&frame);
        let goodbye = provider.goodbye().await;
        assert_eq!(goodbye.reason, GoodbyeReason::ProtocolError, "{}: {}", frame.name(), goodbye.detail);
        assert!(goodbye.detail.contains(frame.name()), "{}: {}", frame.name(), goodbye.detail);
    }
}

#[tokio::test]
async fn a_provider_that_says_goodbye_or_drops_the_socket_is_let_go_quietly() {
    let provider = Provider::connect().await;
    provider.send_frame(&Frame::Hello(hello(None)));
    provider.send_frame(&Frame::Goodbye(Goodbye { reason: GoodbyeReason::Normal, detail: "bye".into() }));
    provider.ended().await;

    let provider = Provider::connect().await;
    provider.send_frame(&Frame::Hello(hello(None)));
    provider.send(Message::Close(None));
    provider.ended().await;
}
