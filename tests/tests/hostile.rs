//! End to end, untrusted providers: the `daig-server` process trains the MNIST MLP with three honest
//! `daig-provider` processes and one hostile provider (`e2e-hostile-provider`: the same protocol code, sending
//! something other than the leased computation), for each attack in turn; and with 64 sockets that only answer
//! heartbeats. Each run must finish within one point of the validation accuracy of a clean run with the same seed,
//! the hostile provider must be shut out at its first deviating contribution with no credit left, and no honest
//! provider may ever be shut out.
//!
//! The honest providers present persistent keys (each its own key file); the hostile ones present none, which is
//! how the test tells them apart in the database. Addresses are not banned here (`--shut-out-ban-secs 0`): every
//! process runs on 127.0.0.1, and the honest providers would be refused with the hostile one's address when they
//! reconnect. Bans are tested in `server/tests/it/training.rs`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use daig_tests::{Api, Provider, Server, e2e, mnist_dir};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(600);
const EPOCHS: i64 = 10;

/// The MNIST MLP, trained until it settles: the learning rate decays to a tenth along a cosine over about the
/// run's updates (6,000 training samples in batches of 32, four to an update), so that the final accuracy on the
/// 2,000 validation samples depends little on the order in which the providers' contributions happened to come.
fn settings() -> Value {
    let updates = EPOCHS * 6000 / 32 / 4;
    json!({"batch_size": 32, "k": 4, "epochs": EPOCHS, "samples_per_shard": 1000, "validation_fraction": 0.25,
           "seed": 11, "max_staleness": 2, "checkpoint_every": 1000,
           "optimizer": {"method": {"type": "adam"}, "learning_rate": 0.003,
                         "schedule": {"type": "cosine", "warmup_steps": 0, "total_steps": updates, "min_lr": 0.0003}}})
}

fn final_accuracy(view: &Value) -> f64 {
    let metrics = view["metrics"].as_array().expect("metrics");
    metrics.last().and_then(|m| m["val_accuracy"].as_f64()).unwrap_or_else(|| panic!("no accuracy in {view}"))
}

/// A hostile provider process: `attack` from `connections` connections of one client.
fn hostile(server: &Server, project: i64, attack: &str, connections: usize, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("hostile-{attack}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_e2e-hostile-provider"))
        .args(["--server", &server.url(""), "--project", &project.to_string(), "--attack", attack])
        .args(["--connections", &connections.to_string(), "--dir"])
        .arg(dir.join(format!("hostile-{attack}")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the hostile provider")
}

/// What one run left in the database: (hostile connections shut out, hostile contributions still credited,
/// honest connections shut out, failed checks).
async fn trust_ledger(server: &Server, project: i64) -> (i64, i64, i64, i64) {
    let db = server.db().await.unwrap();
    let count = |sql: &'static str| {
        let db = db.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).bind(project).fetch_one(&db).await.unwrap() }
    };
    let hostile_out = count("SELECT COUNT(*) FROM providers WHERE identity_id IS NULL AND shut_out_project = ?").await;
    let hostile_credit = count(
        "SELECT COUNT(*) FROM contributions c JOIN providers p ON p.id = c.provider_id
         WHERE c.project_id = ? AND p.identity_id IS NULL AND c.withdrawn_at IS NULL",
    )
    .await;
    let honest_out =
        count("SELECT COUNT(*) FROM providers WHERE identity_id IS NOT NULL AND shut_out_project = ?").await;
    let failed_checks =
        daig_tests::prometheus(&server.metrics().await.unwrap(), "daig_checks_total{outcome=\"failed\"}");
    (hostile_out, hostile_credit, honest_out, failed_checks as i64)
}

/// One run: a fresh server, the hostile provider (if any) started first, then three honest providers; the
/// final accuracy.
async fn run(attack: Option<(&str, usize)>) -> (f64, Option<(i64, i64, i64, i64)>) {
    let Some(mnist) = mnist_dir() else { return (0.0, None) };
    let dir = tempfile::tempdir().unwrap();
    let args = ["--shut-out-ban-secs".to_owned(), "0".to_owned()];
    let server = Server::start(&e2e!(), dir.path(), &args).await.unwrap();
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let id = api.mnist_project(&mnist, settings()).await.unwrap();
    let mut bad = attack.map(|(name, connections)| hostile(&server, id, name, connections, dir.path()));
    if bad.is_some() {
        // Alone on the project for a moment: a fast liar would take every batch if the server believed it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut honest: Vec<Provider> =
        (0..3).map(|i| Provider::start(&e2e!(), &server, id, dir.path(), &format!("honest{i}")).unwrap()).collect();
    let view = api.wait_until(id, LIMIT, "finish", |v| v["state"] == "finished").await;
    if let Some(child) = &mut bad {
        let _ = child.kill();
        let _ = child.wait();
    }
    let view = view.unwrap_or_else(|e| panic!("{attack:?}: {e}\n{}", server.log_text()));
    for provider in &mut honest {
        let status = provider.expect_exit(Duration::from_secs(30));
        assert!(status.success(), "{attack:?}: an honest provider failed: {}", provider.log_text());
    }
    let accuracy = final_accuracy(&view);
    (accuracy, Some(trust_ledger(&server, id).await))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_providers_are_shut_out_earn_nothing_and_change_nothing() {
    let (clean, Some(ledger)) = run(None).await else { return };
    assert_eq!(ledger, (0, 0, 0, 0), "a clean run fails no check and shuts no one out");
    eprintln!("clean run: accuracy {clean:.4}");
    let attacks: [(&str, usize); 9] = [
        ("zero", 1),
        ("negate", 1),
        ("huge", 1),
        ("max", 1),
        ("noise", 1),
        ("replay", 1),
        ("fast", 1),
        ("wrong-labels", 1),
        // One client with ten connections: the server takes max_provider_connections_per_address (8) of them.
        ("zero", 10),
    ];
    let mut failures = Vec::new();
    for (attack, connections) in attacks {
        let (accuracy, ledger) = run(Some((attack, connections))).await;
        let (hostile_out, hostile_credit, honest_out, failed_checks) = ledger.expect("a ledger");
        let line = format!(
            "{attack} x{connections}: accuracy {accuracy:.4} (clean {clean:.4}), {hostile_out} hostile shut out, \
             {failed_checks} failed checks, {hostile_credit} hostile contributions credited, {honest_out} honest shut out"
        );
        eprintln!("{line}");
        // Shut out at its first deviating contribution: one failed check per hostile connection, no more.
        let ok = (accuracy - clean).abs() <= 0.01
            && hostile_out >= 1
            && failed_checks == hostile_out
            && hostile_credit == 0
            && honest_out == 0;
        if !ok {
            failures.push(line);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A socket that joins `project` of the server at `url` from loopback address `source`, then only answers
/// heartbeats.
async fn silent_socket(url: &str, project: i64, source: std::net::Ipv4Addr) {
    use daig_shared::wire::{Backend, Frame, Heartbeat, Hello, ProjectId};
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((source, 0))).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/provider"), stream).await.unwrap();
    let hello = Hello::new(Backend::WebGpu, "silent", Some(ProjectId(project as u64)));
    ws.send(Message::Binary(Frame::Hello(hello).encode().into())).await.unwrap();
    while let Some(Ok(message)) = ws.next().await {
        let Message::Binary(bytes) = message else { continue };
        if let Ok(Frame::Heartbeat(_)) = Frame::decode(&bytes) {
            let beat = Frame::Heartbeat(Heartbeat::default()).encode();
            if ws.send(Message::Binary(beat.into())).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_sockets_that_only_answer_heartbeats_cannot_hold_a_project() {
    let (clean, Some(_)) = run(None).await else { return };
    let Some(mnist) = mnist_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let args = ["--shut-out-ban-secs".to_owned(), "0".to_owned()];
    let server = Server::start(&e2e!(), dir.path(), &args).await.unwrap();
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let id = api.mnist_project(&mnist, settings()).await.unwrap();
    // 64 sockets (the project's max_providers), eight from each of eight addresses (the per-address limit).
    let mut silent = Vec::new();
    for i in 0..64u8 {
        let source = std::net::Ipv4Addr::new(127, 0, 1, 10 + i / 8);
        let url = server.url("");
        silent.push(tokio::spawn(async move { silent_socket(&url, id, source).await }));
    }
    let start = std::time::Instant::now();
    let full = |v: &Value| v["providers"].as_array().is_some_and(|p| p.len() == 64);
    api.wait_until(id, Duration::from_secs(30), "64 providers", full).await.unwrap();
    let mut honest: Vec<Provider> =
        (0..3).map(|i| Provider::start(&e2e!(), &server, id, dir.path(), &format!("honest{i}")).unwrap()).collect();
    let view = api.wait_until(id, LIMIT, "finish", |v| v["state"] == "finished").await.unwrap();
    let accuracy = final_accuracy(&view);
    eprintln!("64 silent sockets: finished in {:?}, accuracy {accuracy:.4} (clean {clean:.4})", start.elapsed());
    assert!((accuracy - clean).abs() <= 0.01, "accuracy {accuracy} against {clean} of the clean run");
    for provider in &mut honest {
        assert!(provider.expect_exit(Duration::from_secs(30)).success(), "{}", provider.log_text());
    }
    for task in silent {
        task.abort();
    }
    let (hostile_out, hostile_credit, honest_out, failed_checks) = trust_ledger(&server, id).await;
    assert_eq!((hostile_out, hostile_credit, honest_out, failed_checks), (0, 0, 0, 0), "silence is not a lie");
}

/// A small convnet for MNIST: a convolution's gradients are where engines are most likely to part.
fn mnist_convnet() -> Value {
    json!({"input_shape": [28, 28, 1], "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu"}, {"type": "max_pool2d", "pool_size": 2},
        {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_gpu_and_cpu_providers_never_fail_a_check() {
    let Some(mnist) = mnist_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&e2e!(), dir.path(), &[]).await.unwrap();
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let features = std::fs::read(mnist.join("images.npy")).unwrap();
    let labels = std::fs::read(mnist.join("labels.npy")).unwrap();
    let mut checked = 0.0;
    // Ten runs, the MLP and the convnet in turn, each with a GPU provider (lavapipe here) and two on the CPU.
    // Without keys every provider stays new, so that every contribution is checked.
    for run in 0..10 {
        let model = if run % 2 == 0 { daig_tests::mnist_model() } else { mnist_convnet() };
        let settings = json!({"batch_size": 32, "k": 3, "epochs": 1, "samples_per_shard": 1000, "seed": run,
                              "validation_fraction": 0.5, "max_staleness": 2,
                              "optimizer": {"method": {"type": "adam"}, "learning_rate": 0.003}});
        let id = api.project(&model, &settings, features.clone(), labels.clone()).await.unwrap();
        api.post(&format!("/api/projects/{id}/start"), &json!({})).await.unwrap();
        let start = |name: String, backend: &str| {
            Provider::start_with(&e2e!(), &server, id, dir.path(), &name, &["--backend", backend, "--no-key"]).unwrap()
        };
        // The GPU provider first, until its first contribution is in: the CPU ones are fast enough to finish an
        // epoch while lavapipe starts.
        let mut providers = vec![start(format!("run{run}-gpu"), "gpu")];
        let gpu_applied = |v: &Value| {
            v["providers"].as_array().is_some_and(|p| {
                p.iter().any(|p| p["backend"] == "Vulkan" && p["contributions_applied"].as_u64() > Some(0))
            })
        };
        api.wait_until(id, LIMIT, "a GPU contribution", gpu_applied).await.unwrap();
        providers.extend((0..2).map(|i| start(format!("run{run}-cpu{i}"), "cpu")));
        api.wait_until(id, LIMIT, "finish", |v| v["state"] == "finished").await.unwrap();
        for provider in &mut providers {
            assert!(provider.expect_exit(Duration::from_secs(30)).success(), "{}", provider.log_text());
        }
        let metrics = server.metrics().await.unwrap();
        let failed = daig_tests::prometheus(&metrics, "daig_checks_total{outcome=\"failed\"}");
        assert_eq!(failed, 0.0, "run {run}: an honest provider failed a check:\n{}", server.log_text());
        checked = daig_tests::prometheus(&metrics, "daig_checks_total{outcome=\"passed\"}");
        let gpu = daig_tests::verified_contributions(&server, id, "Vulkan").await;
        assert!(gpu > 0, "run {run}: the GPU provider's work was checked and applied");
    }
    eprintln!("{checked} checks passed, none failed");
    daig_tests::report_check_spread(&server.metrics().await.unwrap());
}
