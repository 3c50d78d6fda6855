//! The provider's protocol end to end on one machine: a lease trained through the session and the CPU
//! engine gives exactly the reference trainer's delta, and the `daig-provider` binary goes through a whole
//! session with a scripted WebSocket server written here (no real server), including Ctrl-C.
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daig_provider::engine::Engine;
use daig_provider::session::{Event, Session, SessionConfig, ShardMemory, TrainJob, shard_hash};
use daig_shared::data::{Dtype, LabelRef, ShardHeader, ShardLabels, ShardWriter};
use daig_shared::model::{Limits, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Batch, DropoutKey, Labels, LocalConfig, Trainer};
use daig_shared::wire::{
    Ack, AckOutcome, Backend, ContributionInfo, Frame, Goodbye, GoodbyeReason, Lease, LeaseId, Normalisation,
    PROTOCOL_VERSION, ProjectId, ProviderId, Reassembler, SampleSelection, ShardHash, ShardSamples, TrainingInfo,
    TransferId, TransferKind, Welcome, f32s_to_le_bytes, transfer_frames,
};
use futures_util::{SinkExt as _, StreamExt as _};
use ndarray::ArrayView2;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// 4 inputs, a hidden layer with dropout, 3 classes.
const MODEL: &str = r#"{"input_shape": [4], "layers": [
    {"type": "dense", "units": 5, "activation": "relu"}, {"type": "dropout", "rate": 0.5},
    {"type": "dense", "units": 3}], "loss": "cross_entropy"}"#;
const PROJECT: ProjectId = ProjectId(7);
const BATCH: u32 = 2;
const OFFSET: f32 = 100.0;
const SCALE: f32 = 1.0 / 64.0;

fn model() -> Model {
    Model::from_json(MODEL, &Limits::default()).unwrap()
}

/// `n` samples of 4 raw u8 features, class `i % 3`.
fn shard(n: u8, seed: u8) -> Vec<u8> {
    let header = ShardHeader {
        feature_dtype: Dtype::U8,
        sample_shape: vec![4],
        sample_count: usize::from(n),
        labels: ShardLabels::Classes { count: 3 },
    };
    let mut writer = ShardWriter::new(Vec::new(), header).unwrap();
    for i in 0..n {
        let x = [i.wrapping_mul(37).wrapping_add(seed), i.wrapping_mul(11), 200 - i, seed.wrapping_mul(i)];
        writer.push(&x, LabelRef::Class(u32::from(i % 3))).unwrap();
    }
    writer.finish().unwrap()
}

fn welcome(param_count: usize, heartbeat_interval_ms: u32) -> Frame<'static> {
    Frame::Welcome(Welcome {
        provider_id: ProviderId(1),
        project_id: PROJECT,
        model_json: MODEL.into(),
        training: TrainingInfo {
            param_count: param_count as u64,
            batch_size: BATCH,
            heartbeat_interval_ms,
            normalisation: Normalisation::Global { offset: OFFSET, scale: SCALE },
        },
    })
}

fn lease(id: u64, parts: &[(ShardHash, Vec<u32>)], local_steps: u32) -> Frame<'static> {
    Frame::Lease(Lease {
        lease_id: LeaseId(id),
        project_id: PROJECT,
        params_version: 1,
        samples: SampleSelection::Shards(
            parts.iter().map(|(shard, indices)| ShardSamples { shard: *shard, indices: indices.clone() }).collect(),
        ),
        local_steps,
        learning_rate: 0.3,
        deadline_ms: 60_000,
    })
}

fn params_frames(params: &[f32], version: u64) -> Vec<Frame<'static>> {
    transfer_frames(TransferId(version as u32), TransferKind::Params { version }, &f32s_to_le_bytes(params))
        .map(Frame::into_owned)
        .collect()
}

#[test]
fn a_lease_trains_exactly_like_the_reference_trainer_on_its_samples() {
    let m = model();
    let params = init_params(&m, 11);
    let (a, b) = (shard(9, 3), shard(5, 200));
    let (ha, hb) = (shard_hash(&a), shard_hash(&b));
    let parts = vec![(hb, vec![4, 0]), (ha, vec![8, 1, 5, 2])];

    let mut session = Session::new(
        SessionConfig { stored_shards: vec![ha, hb], ..SessionConfig::new(Backend::Cpu, "CPU") },
        ShardMemory::new(1 << 20),
        0,
    );
    let frames: Vec<Frame<'static>> = std::iter::once(welcome(m.params.total, 1000))
        .chain(params_frames(&params, 1))
        .chain([lease(77, &parts, 3)])
        .collect();
    for frame in frames {
        session.handle_frame(frame, 0);
    }
    session.provide_shard(ha, a.clone()).unwrap();
    session.provide_shard(hb, b.clone()).unwrap();
    let job: TrainJob = std::iter::from_fn(|| session.poll_event())
        .find_map(|e| match e {
            Event::Train(job) => Some(*job),
            _ => None,
        })
        .expect("the lease is ready to train");
    let mut engine = Engine::cpu(m.clone(), "chosen by the test".into());
    let got = pollster::block_on(job.run(&mut engine)).unwrap();

    // The reference: the same samples in lease order, normalised by hand, trained with train_local.
    let mut x = Vec::new();
    let mut classes = Vec::new();
    for (bytes, indices) in [(&b, &parts[0].1), (&a, &parts[1].1)] {
        let view = daig_shared::data::ShardView::decode(bytes).unwrap();
        for &i in indices {
            x.extend(view.features_raw(i as usize).unwrap().iter().map(|&v| (f32::from(v) - OFFSET) * SCALE));
            classes.push(view.label(i as usize).unwrap().class().unwrap());
        }
    }
    let mut reference = Trainer::new(&m);
    reference.load_params(&params).unwrap();
    let batch = Batch { x: ArrayView2::from_shape((6, 4), &x).unwrap(), y: Labels::Classes(&classes) };
    let config = LocalConfig {
        batch_size: BATCH as usize,
        local_steps: 3,
        learning_rate: 0.3,
        dropout: DropoutKey { seed: 77, step: 0 },
    };
    let want = reference.train_local(&batch, &[0, 1, 2, 3, 4, 5], &config).unwrap();
    assert_eq!(got.delta, want.delta);
    assert_eq!(got.samples, want.samples);
    assert!(got.delta.iter().any(|&d| d != 0.0));

    // And the contribution carries exactly that delta.
    session.training_finished(job.job_id, Ok(got));
    let mut reassembler = Reassembler::new(m.params.total as u64 * 4);
    let transfer = std::iter::from_fn(|| session.poll_transmit())
        .find_map(|frame| reassembler.feed(&frame).unwrap())
        .expect("a whole contribution");
    assert_eq!(
        transfer.kind,
        TransferKind::Contribution(ContributionInfo {
            lease_id: LeaseId(77),
            base_version: 1,
            sample_count: 6,
            mean_loss: want.mean_loss as f32,
        })
    );
    assert_eq!(transfer.f32s().unwrap(), want.delta);
}

/// The binary, connected to `addr`, training on the CPU with its cache in `dir`; stderr goes to a file.
fn start_provider(addr: std::net::SocketAddr, dir: &Path, extra: &[&str]) -> Child {
    start_provider_on(addr, dir, "cpu", extra)
}

fn start_provider_on(addr: std::net::SocketAddr, dir: &Path, backend: &str, extra: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join("provider.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_daig-provider"))
        .args(["--server", &format!("http://{addr}"), "--backend", backend, "--cache-dir"])
        .arg(dir.join("cache"))
        .arg("--key-file")
        .arg(dir.join("provider.key"))
        .args(extra)
        .env("RUST_LOG", "daig_provider=debug")
        // As on a headless machine: no Wayland session, and no choice about Vulkan layers.
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn provider_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("provider.log")).unwrap_or_default()
}

/// Waits for the process to exit, killing it after `limit`.
fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

async fn send(ws: &mut Ws, frames: impl IntoIterator<Item = Frame<'static>>) {
    for frame in frames {
        ws.send(Message::Binary(frame.encode().into())).await.unwrap();
    }
}

/// The next frame from the provider other than a heartbeat, or `None` when the socket closes.
async fn next_frame(ws: &mut Ws) -> Option<Frame<'static>> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("the provider is silent");
        match message {
            Some(Ok(Message::Binary(bytes))) => match Frame::decode(&bytes).unwrap().into_owned() {
                Frame::Heartbeat(_) => {}
                frame => return Some(frame),
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Accepts the provider, checks its Hello, and sends the Welcome, parameters and a lease on one shard;
/// answers the shard request unless `serve_shard` is false. Returns the socket, the shard and its hash.
async fn open_session(listener: &TcpListener, params: &[f32], serve_shard: bool) -> (Ws, ShardHash) {
    open_session_on(listener, params, serve_shard, Backend::Cpu).await
}

async fn open_session_on(
    listener: &TcpListener,
    params: &[f32],
    serve_shard: bool,
    backend: Backend,
) -> (Ws, ShardHash) {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await.unwrap().unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let Some(Frame::Hello(hello)) = next_frame(&mut ws).await else { panic!("the first frame is not a Hello") };
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.backend, backend, "adapter {}", hello.adapter);
    assert_eq!(hello.project_id, Some(PROJECT));
    assert!(hello.cached_shards.is_empty(), "a new cache holds nothing");

    let bytes = shard(6, 9);
    let hash = shard_hash(&bytes);
    send(&mut ws, [welcome(params.len(), 200)]).await;
    send(&mut ws, params_frames(params, 1)).await;
    send(&mut ws, [lease(5, &[(hash, vec![5, 4, 3, 2])], 2)]).await;
    match next_frame(&mut ws).await {
        Some(Frame::ShardRequest(request)) => assert_eq!(request.shard, hash),
        other => panic!("expected a ShardRequest, got {other:?}"),
    }
    if serve_shard {
        let frames: Vec<_> = transfer_frames(TransferId(0), TransferKind::Shard { shard: hash }, &bytes)
            .map(Frame::into_owned)
            .collect();
        send(&mut ws, frames).await;
    }
    (ws, hash)
}

/// Receives the provider's contribution for the lease of [`open_session`] and checks it.
async fn receive_contribution(ws: &mut Ws, param_count: usize, dir: &Path) {
    let mut reassembler = Reassembler::new(param_count as u64 * 4);
    let contribution = loop {
        let frame = next_frame(ws).await.unwrap_or_else(|| panic!("closed early:\n{}", provider_log(dir)));
        if let Some(transfer) = reassembler.feed(&frame).unwrap() {
            break transfer;
        }
    };
    let TransferKind::Contribution(info) = &contribution.kind else { panic!("{:?}", contribution.kind) };
    assert_eq!((info.lease_id, info.base_version, info.sample_count), (LeaseId(5), 1, 4));
    assert!(info.mean_loss.is_finite() && info.mean_loss > 0.0);
    let delta = contribution.f32s().unwrap();
    assert_eq!(delta.len(), param_count);
    assert!(delta.iter().all(|d| d.is_finite()) && delta.iter().any(|&d| d != 0.0));
}

/// Waits (off the async threads) for the provider to exit and checks that it succeeded; returns its log.
async fn exits_successfully(mut child: Child, dir: &Path) -> String {
    let status = tokio::task::spawn_blocking(move || wait(&mut child, Duration::from_secs(30))).await.unwrap();
    let log = provider_log(dir);
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}, log:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_trains_a_lease_and_exits_when_its_project_ends() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let child = start_provider(listener.local_addr().unwrap(), dir.path(), &["--project", "7"]);
    let params = init_params(&model(), 3);
    let (mut ws, hash) = open_session(&listener, &params, true).await;
    receive_contribution(&mut ws, params.len(), dir.path()).await;

    send(&mut ws, [Frame::Ack(Ack { lease_id: LeaseId(5), outcome: AckOutcome::Applied { new_version: 2 } })]).await;
    send(&mut ws, [Frame::Goodbye(Goodbye { reason: GoodbyeReason::Normal, detail: "project 7 finished".into() })])
        .await;
    let _ = ws.close(None).await;
    let log = exits_successfully(child, dir.path()).await;
    assert!(log.contains("the project ended: project 7 finished"), "{log}");
    // The shard was kept for the next session.
    assert!(dir.path().join("cache").join(format!("{hash}.shard")).is_file(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_trains_on_the_gpu_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let args = ["--project", "7", "--max-contributions", "1"];
    let child = start_provider_on(listener.local_addr().unwrap(), dir.path(), "gpu", &args);
    let params = init_params(&model(), 3);
    // Native adapters here are Vulkan (lavapipe in CI).
    let (mut ws, _) = open_session_on(&listener, &params, true, Backend::Vulkan).await;
    receive_contribution(&mut ws, params.len(), dir.path()).await;
    send(&mut ws, [Frame::Ack(Ack { lease_id: LeaseId(5), outcome: AckOutcome::Applied { new_version: 2 } })]).await;
    assert!(matches!(next_frame(&mut ws).await, Some(Frame::Goodbye(g)) if g.reason == GoodbyeReason::Normal));
    let log = exits_successfully(child, dir.path()).await;
    assert!(log.contains("engine for the project's model: GPU"), "{log}");
    assert!(!log.contains("XDG_RUNTIME_DIR"), "noise from the graphics stack on a headless machine:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_says_goodbye_after_max_contributions() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let args = ["--project", "7", "--max-contributions", "1"];
    let child = start_provider(listener.local_addr().unwrap(), dir.path(), &args);
    let params = init_params(&model(), 3);
    let (mut ws, _) = open_session(&listener, &params, true).await;
    receive_contribution(&mut ws, params.len(), dir.path()).await;
    send(&mut ws, [Frame::Ack(Ack { lease_id: LeaseId(5), outcome: AckOutcome::Applied { new_version: 2 } })]).await;
    assert_eq!(
        next_frame(&mut ws).await,
        Some(Frame::Goodbye(Goodbye {
            reason: GoodbyeReason::Normal,
            detail: "the provider reached --max-contributions 1".into()
        }))
    );
    assert_eq!(next_frame(&mut ws).await, None);
    let log = exits_successfully(child, dir.path()).await;
    assert!(log.contains("1 contributions applied; done"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reconnects_after_a_protocol_error_and_a_silent_server() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let child = start_provider(listener.local_addr().unwrap(), dir.path(), &[]);
    let param_count = model().params.total;
    for connection in 0..3 {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await.unwrap().unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let Some(Frame::Hello(hello)) = next_frame(&mut ws).await else { panic!("connection {connection}: no Hello") };
        assert_eq!(hello.project_id, None);
        if connection == 0 {
            ws.send(Message::Binary(vec![0xff; 5].into())).await.unwrap();
            let Some(Frame::Goodbye(goodbye)) = next_frame(&mut ws).await else { panic!("no Goodbye") };
            assert_eq!(goodbye.reason, GoodbyeReason::ProtocolError);
            assert!(goodbye.detail.starts_with("a message from the server does not decode"), "{}", goodbye.detail);
            assert_eq!(next_frame(&mut ws).await, None);
        } else if connection == 1 {
            // A Welcome with a 100 ms heartbeat interval, then silence: after 3 intervals the provider
            // gives up on this server.
            let started = Instant::now();
            send(&mut ws, [welcome(param_count, 100)]).await;
            let Some(Frame::Goodbye(goodbye)) = next_frame(&mut ws).await else { panic!("no Goodbye") };
            assert_eq!(goodbye.reason, GoodbyeReason::Timeout, "{}", goodbye.detail);
            assert!(started.elapsed() >= Duration::from_millis(300));
            assert_eq!(next_frame(&mut ws).await, None);
        } else {
            // Without --project, a normal Goodbye is no reason to stop: stop it with Ctrl-C.
            let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
            assert!(status.success());
            assert!(matches!(next_frame(&mut ws).await, Some(Frame::Goodbye(g)) if g.reason == GoodbyeReason::Normal));
        }
    }
    let log = exits_successfully(child, dir.path()).await;
    assert!(log.contains("reconnecting in"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_says_goodbye_before_closing_while_holding_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let child = start_provider(listener.local_addr().unwrap(), dir.path(), &["--project", "7"]);
    let params = init_params(&model(), 3);
    // The shard is never sent: the provider holds the lease, waiting for it.
    let (mut ws, _) = open_session(&listener, &params, false).await;

    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let frame = next_frame(&mut ws).await;
    assert_eq!(
        frame,
        Some(Frame::Goodbye(Goodbye { reason: GoodbyeReason::Normal, detail: "provider stopped by its user".into() })),
        "log:\n{}",
        provider_log(dir.path())
    );
    assert_eq!(next_frame(&mut ws).await, None, "the socket closes after the Goodbye");
    let log = exits_successfully(child, dir.path()).await;
    assert!(log.contains("daig-provider stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_states_its_device_and_stops_when_a_project_does_not_fit_it() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let args = ["--project", "7", "--max-device-memory-mb", "3"];
    let child = start_provider_on(listener.local_addr().unwrap(), dir.path(), "gpu", &args);
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await.unwrap().unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let Some(Frame::Hello(hello)) = next_frame(&mut ws).await else { panic!("the first frame is not a Hello") };
    // The memory its user allows, and the adapter's own buffer limit (lavapipe's in CI).
    assert_eq!(hello.device.memory_bytes, 3 << 20);
    assert!(hello.device.max_buffer_bytes >= 128 << 20, "{:?}", hello.device);
    let detail =
        "project 7: training this project needs 9000000 bytes of device memory; this device gives it at most 3145728";
    send(&mut ws, [Frame::Goodbye(Goodbye { reason: GoodbyeReason::DeviceTooSmall, detail: detail.into() })]).await;
    let _ = ws.close(None).await;
    // It stops with the reason rather than asking again.
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || wait(&mut child, Duration::from_secs(30))).await.unwrap();
    let log = provider_log(dir.path());
    assert!(status.is_some_and(|s| !s.success()), "exit {status:?}, log:\n{log}");
    assert!(log.contains(&format!("this device cannot train the project: {detail}")), "{log}");
}
