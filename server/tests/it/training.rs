//! Training over real WebSockets: K-batch sync SGD with several providers, exactly-once batches, returned and
//! expired leases, and hostile providers.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use daig_shared::wire::{ContributionInfo, Frame, GoodbyeReason, Hello, LeaseId, PROTOCOL_VERSION, SampleSelection};
use serde_json::{Value, json};

use crate::support::{TestApp, manifest_dir, request, with_token};
use crate::wire_provider::{Honest, Incoming, Outcome, WireClient, hello, run_honest, run_honest_on, train_lease};

/// The app of `app` also served on a real socket.
pub(crate) async fn serve(app: &TestApp) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(daig_server::run(listener, app.state.clone(), std::future::pending()));
    addr
}

pub(crate) async fn project(app: &TestApp, token: &str, id: i64) -> Value {
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

async fn post(app: &TestApp, token: &str, uri: &str) -> Value {
    let reply = app.send(with_token(request(Method::POST, uri), token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text());
    reply.json()
}

/// Waits until project `id` is in `state`, for at most `limit`.
async fn wait_for_state(app: &TestApp, token: &str, id: i64, state: &str, limit: Duration) -> Value {
    let start = std::time::Instant::now();
    loop {
        let view = project(app, token, id).await;
        if view["state"] == state {
            return view;
        }
        assert!(start.elapsed() < limit, "project {id} is still {} after {limit:?}: {view}", view["state"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scalar(app: &TestApp, sql: &'static str, id: i64) -> i64 {
    sqlx::query_scalar(sql).bind(id).fetch_one(app.state.db()).await.unwrap()
}

/// Every batch of every epoch applied exactly once: per epoch, as many distinct applied batches as the plan
/// has, and the samples credited equal to the train set times the epochs.
async fn assert_exactly_once(app: &TestApp, id: i64, epochs: i64, batch_size: i64) {
    let shard_sizes: Vec<i64> =
        sqlx::query_scalar("SELECT sample_count FROM shards WHERE project_id = ? AND role = 'train'")
            .bind(id)
            .fetch_all(app.state.db())
            .await
            .unwrap();
    let per_epoch: i64 = shard_sizes.iter().map(|n| (n + batch_size - 1) / batch_size).sum();
    let train: i64 = shard_sizes.iter().sum();
    let counts: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT epoch, COUNT(*) FROM applied_batches WHERE project_id = ? GROUP BY epoch ORDER BY epoch",
    )
    .bind(id)
    .fetch_all(app.state.db())
    .await
    .unwrap();
    let expected: Vec<(i64, i64)> = (0..epochs).map(|e| (e, per_epoch)).collect();
    assert_eq!(counts, expected, "applied batches per epoch");
    let samples = scalar(app, "SELECT COALESCE(SUM(samples), 0) FROM contributions WHERE project_id = ?", id).await;
    assert_eq!(samples, train * epochs, "every sample credited once per epoch");
}

/// A project with the small model of the support module and 40 samples in shards of 10.
pub(crate) async fn small_running(app: &TestApp, token: &str, settings: Value) -> i64 {
    let id = app.small_project(token, settings).await;
    let (features, labels) = crate::support::small_dataset(40, 3);
    assert_eq!(app.upload(token, id, "features", features).await.status, StatusCode::OK);
    let reply = app.upload(token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    post(app, token, &format!("/api/projects/{id}/start")).await;
    id
}

/// The MNIST sample, or `None` (after a note) outside CI when it is missing.
fn mnist_dir() -> Option<std::path::PathBuf> {
    let dir = crate::datasets::mnist_dir();
    if dir.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have shared/data/mnist-8k beside the clone");
        eprintln!("skipped: no shared/data/mnist-8k above {}", manifest_dir().display());
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_providers_train_the_mnist_mlp_with_k_batch_sgd() {
    let Some(dir) = mnist_dir() else { return };
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let model = json!({"input_shape": [784], "layers": [{"type": "dense", "units": 64, "activation": "relu"},
                                                          {"type": "dense", "units": 10}], "loss": "cross_entropy"});
    // Ends at the first epoch end at or above 90% (three or four epochs at max staleness 2, depending on timing).
    let settings = json!({"batch_size": 32, "k": 4, "epochs": 10, "target_accuracy": 0.9, "samples_per_shard": 1000, "seed": 3,
                          "optimizer": {"method": {"type": "adam"}, "learning_rate": 0.003},
                          "checkpoint_every": 25, "max_staleness": 2});
    let id = app.create_project(&token, &json!({"name": "mnist", "model": model, "settings": settings})).await["id"]
        .as_i64()
        .unwrap();
    app.upload(&token, id, "features", std::fs::read(dir.join("images.npy")).unwrap()).await;
    let reply = app.upload(&token, id, "labels", std::fs::read(dir.join("labels.npy")).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    post(&app, &token, &format!("/api/projects/{id}/start")).await;

    let providers: Vec<_> = (0..4).map(|_| tokio::spawn(run_honest(addr, hello(Some(id)), None))).collect();
    let view = wait_for_state(&app, &token, id, "finished", Duration::from_secs(600)).await;
    let outcomes: Vec<Outcome> =
        futures_util::future::join_all(providers).await.into_iter().map(Result::unwrap).collect();
    for outcome in &outcomes {
        let goodbye = outcome.goodbye.as_ref().expect("told goodbye");
        assert_eq!(goodbye.reason, GoodbyeReason::Normal, "{goodbye:?}");
        assert!(outcome.applied > 0, "every provider contributed: {outcome:?}");
        // Only races: a contribution crossing the cancellation of its lease (a speculative copy that lost, or the
        // end of an epoch). Never a problem with the contribution itself.
        assert!(
            outcome.refused.iter().all(|r| r.starts_with("Other") || r.starts_with("UnknownLease")),
            "{:?}",
            outcome.refused
        );
    }
    let last = view["metrics"].as_array().unwrap().last().unwrap().clone();
    let accuracy = last["val_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "validation accuracy {accuracy}: {last}");
    let epochs = view["epoch"].as_i64().unwrap();
    assert!((1..10).contains(&epochs), "ended early at the target: {epochs}");
    assert_eq!(view["progress"], 1.0);
    assert_exactly_once(&app, id, epochs, 32).await;
    let applied: u32 = outcomes.iter().map(|o| o.applied).sum();
    let contributions = scalar(&app, "SELECT COUNT(*) FROM contributions WHERE project_id = ?", id).await;
    assert_eq!(i64::from(applied), contributions, "each Applied ack is one ledger row");
    // The K-batch rule: updates hold K contributions, except each epoch's last.
    let version = view["version"].as_i64().unwrap();
    assert!(
        version >= contributions / 4 && version <= contributions / 4 + 3,
        "{version} updates, {contributions} contributions"
    );

    // The final model is downloadable and is the model's parameters.
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}/model")), &token)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let spec = project(&app, &token, id).await;
    assert_eq!(spec["model"]["params"], 784 * 64 + 64 + 64 * 10 + 10);
    let tensors = safetensors::SafeTensors::deserialize(&reply.body).unwrap();
    assert_eq!(tensors.len(), 4);
    // Checkpoints and credits.
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}/checkpoints")), &token)).await;
    let checkpoints = reply.json()["checkpoints"].as_array().unwrap().clone();
    assert!(!checkpoints.is_empty() && checkpoints.len() <= 3, "{checkpoints:?}");
    assert_eq!(checkpoints[0]["version"], version);
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}/credits")), &token)).await;
    let credits = reply.json();
    assert_eq!(credits["samples"], 7200 * epochs, "{credits}");
    assert_eq!(credits["providers"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_of_a_vanished_provider_are_leased_again() {
    let app = TestApp::with(|s| s.heartbeat_interval_ms = 200).await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 4, "k": 2,
                          "epochs": 2, "local_steps": 1});
    let id = small_running(&app, &token, settings).await;
    // One provider takes leases and drops its socket without a word; another stays silent with its socket open.
    let mut gone = WireClient::connect(addr).await;
    gone.send(&Frame::Hello(hello(Some(id)))).await;
    let mut silent = WireClient::connect(addr).await;
    silent.send(&Frame::Hello(hello(Some(id)))).await;
    for client in [&mut gone, &mut silent] {
        let mut leases = 0;
        while leases < 2 {
            if let Incoming::Frame(Frame::Lease(_)) = client.recv().await {
                leases += 1;
            }
        }
    }
    drop(gone);
    // The silent one is dropped after three heartbeat intervals.
    let mut timed_out = false;
    loop {
        match silent.recv().await {
            Incoming::Frame(Frame::Goodbye(g)) => timed_out |= g.reason == GoodbyeReason::Timeout,
            Incoming::Closed => break,
            _ => {}
        }
    }
    assert!(timed_out, "the silent provider was told it timed out");
    // The honest provider finishes the project: the four leases came back.
    let outcome =
        tokio::time::timeout(Duration::from_secs(120), run_honest(addr, hello(Some(id)), None)).await.unwrap();
    assert_eq!(outcome.goodbye.unwrap().reason, GoodbyeReason::Normal);
    wait_for_state(&app, &token, id, "finished", Duration::from_secs(10)).await;
    assert_exactly_once(&app, id, 2, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_data_is_sent_only_for_a_lease_and_validation_data_never() {
    use daig_shared::wire::{ShardHash, ShardRequest};
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 4, "epochs": 50});
    let id = small_running(&app, &token, settings).await;
    let hashes = |role: &'static str| {
        let app = &app;
        async move {
            let rows: Vec<String> = sqlx::query_scalar("SELECT sha256 FROM shards WHERE project_id = ? AND role = ?")
                .bind(id)
                .bind(role)
                .fetch_all(app.state.db())
                .await
                .unwrap();
            rows.iter().map(|h| h.parse::<ShardHash>().unwrap()).collect::<Vec<_>>()
        }
    };
    let (train, validation) = (hashes("train").await, hashes("validation").await);
    assert!(train.len() >= 3 && !validation.is_empty());

    // A shard its lease names is sent.
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(hello(Some(id)))).await;
    let (mut honest, mut outcome) = (Honest::default(), Outcome::default());
    let lease = next_lease(&mut client, &mut honest, &mut outcome).await;
    let SampleSelection::Shards(parts) = &lease.samples else { panic!("shard selections") };
    let leased = parts[0].shard;
    client.send(&Frame::ShardRequest(ShardRequest { shard: leased })).await;
    loop {
        match client.recv().await {
            Incoming::Shard { hash, .. } => {
                assert_eq!(hash, leased);
                break;
            }
            Incoming::Closed => panic!("closed"),
            _ => {}
        }
    }
    // Any other shard of the project (one no lease of this provider names, or a validation shard) ends the
    // connection with a goodbye that says why, and nothing is sent.
    let held: Vec<ShardHash> = honest
        .leases
        .iter()
        .chain([&lease])
        .flat_map(|l| match &l.samples {
            SampleSelection::Shards(parts) => parts.iter().map(|p| p.shard).collect::<Vec<_>>(),
            SampleSelection::Indices(_) => Vec::new(),
        })
        .collect();
    let unleased = train.iter().copied().find(|h| !held.contains(h)).expect("a shard no lease of it names");
    for shard in [unleased, validation[0]] {
        let mut client = WireClient::connect(addr).await;
        client.send(&Frame::Hello(hello(Some(id)))).await;
        let (mut honest, mut outcome) = (Honest::default(), Outcome::default());
        let lease = next_lease(&mut client, &mut honest, &mut outcome).await;
        let SampleSelection::Shards(parts) = &lease.samples else { panic!("shard selections") };
        if parts.iter().any(|p| p.shard == shard) {
            continue;
        }
        client.send(&Frame::ShardRequest(ShardRequest { shard })).await;
        loop {
            match client.recv().await {
                Incoming::Shard { hash, .. } => panic!("shard {hash} was sent without a lease"),
                Incoming::Frame(Frame::Goodbye(goodbye)) => {
                    assert_eq!(goodbye.reason, GoodbyeReason::ProtocolError);
                    assert!(goodbye.detail.contains("named by none of this provider's leases"), "{}", goodbye.detail);
                    break;
                }
                Incoming::Closed => panic!("closed without a goodbye"),
                _ => {}
            }
        }
    }
}

/// The next lease: one seen earlier by [`ack_of`], or the next to arrive (params and shards go to `honest`).
pub(crate) async fn next_lease(
    client: &mut WireClient,
    honest: &mut Honest,
    outcome: &mut Outcome,
) -> daig_shared::wire::Lease {
    if let Some(lease) = honest.leases.pop_front() {
        return lease;
    }
    loop {
        let incoming = client.recv().await;
        if let Incoming::Frame(Frame::Lease(lease)) = &incoming {
            return lease.clone();
        }
        assert!(honest.take(incoming, outcome), "closed: {outcome:?}");
    }
}

/// Reads frames until the ack of `lease`, keeping the leases that arrive meanwhile in `honest`.
async fn ack_of(client: &mut WireClient, honest: &mut Honest, lease: LeaseId) -> daig_shared::wire::AckOutcome {
    loop {
        match client.recv().await {
            Incoming::Frame(Frame::Ack(ack)) if ack.lease_id == lease => return ack.outcome,
            Incoming::Closed => panic!("closed before the ack of {lease}"),
            // Leases, parameters and shards that arrive meanwhile are kept for later.
            other => {
                let _ = honest.take(other, &mut Outcome::default());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_contributions_are_refused_and_change_nothing() {
    use daig_shared::wire::{AckOutcome, RefusalReason};
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 4, "k": 1,
                          "epochs": 50, "max_staleness": 0});
    let a = small_running(&app, &token, settings.clone()).await;
    let b = small_running(&app, &token, settings).await;
    // A lease of project B, held by another provider.
    let mut other = WireClient::connect(addr).await;
    other.send(&Frame::Hello(hello(Some(b)))).await;
    let (mut h, mut o) = (Honest::default(), Outcome::default());
    let foreign = next_lease(&mut other, &mut h, &mut o).await;

    // A lease of project A held by another provider.
    let mut peer = WireClient::connect(addr).await;
    peer.send(&Frame::Hello(hello(Some(a)))).await;
    let (mut h, mut o) = (Honest::default(), Outcome::default());
    let peers = next_lease(&mut peer, &mut h, &mut o).await;

    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(hello(Some(a)))).await;
    let mut honest = Honest::default();
    let mut outcome = Outcome::default();
    let lease = next_lease(&mut client, &mut honest, &mut outcome).await;
    let n = outcome.welcome.as_ref().unwrap().training.param_count as usize;
    let samples = match &lease.samples {
        SampleSelection::Shards(parts) => parts.iter().map(|p| p.indices.len() as u32).sum(),
        SampleSelection::Indices(i) => i.len() as u32,
    };
    let info =
        |lease_id, samples| ContributionInfo { lease_id, base_version: 0, sample_count: samples, mean_loss: 1.0 };
    let cases: Vec<(ContributionInfo, Vec<f32>, RefusalReason)> = vec![
        (info(foreign.lease_id, samples), vec![0.0; n], RefusalReason::UnknownLease),
        (info(LeaseId(12345), samples), vec![0.0; n], RefusalReason::UnknownLease),
        (info(peers.lease_id, samples), vec![0.0; n], RefusalReason::UnknownLease),
        (info(lease.lease_id, samples), vec![0.0; n - 1], RefusalReason::WrongShape),
    ];
    for (info, delta, reason) in cases {
        let id = info.lease_id;
        client.contribute(info, &delta).await;
        match ack_of(&mut client, &mut honest, id).await {
            AckOutcome::Refused { reason: got, detail } => assert_eq!(got, reason, "{detail}"),
            other => panic!("{other:?}"),
        }
    }
    // Each refusal ended the lease; fresh leases for the rest.
    for (make, reason) in [
        (Box::new(|n: usize| vec![f32::NAN; n]) as Box<dyn Fn(usize) -> Vec<f32>>, RefusalReason::NonFinite),
        (Box::new(|n: usize| vec![0.0; n]), RefusalReason::Rejected),
    ] {
        let lease = next_lease(&mut client, &mut honest, &mut outcome).await;
        let count = if reason == RefusalReason::Rejected { samples + 1 } else { samples };
        client.contribute(info(lease.lease_id, count), &make(n)).await;
        match ack_of(&mut client, &mut honest, lease.lease_id).await {
            AckOutcome::Refused { reason: got, detail } => assert_eq!(got, reason, "{detail}"),
            other => panic!("{other:?}"),
        }
    }
    let view = project(&app, &token, a).await;
    assert_eq!(view["version"], 0, "nothing was applied");
    assert_eq!(scalar(&app, "SELECT COUNT(*) FROM contributions WHERE project_id = ?", a).await, 0, "no credit");
    assert_eq!(project(&app, &token, b).await["version"], 0);

    // An honest contribution is applied once its recomputation matches; one made on the old version is then
    // stale (max_staleness 0).
    let lease = next_lease(&mut client, &mut honest, &mut outcome).await;
    let stale_lease = next_lease(&mut client, &mut honest, &mut outcome).await;
    let (first, first_delta) = train_lease(&mut client, &mut honest, &mut outcome, lease).await;
    let (second, second_delta) = train_lease(&mut client, &mut honest, &mut outcome, stale_lease).await;
    assert_eq!((first.base_version, second.base_version), (0, 0));
    client.contribute(first.clone(), &first_delta).await;
    assert!(matches!(ack_of(&mut client, &mut honest, first.lease_id).await, AckOutcome::Applied { new_version: 1 }));
    client.contribute(second.clone(), &second_delta).await;
    assert!(matches!(
        ack_of(&mut client, &mut honest, second.lease_id).await,
        AckOutcome::Stale { current_version: 1 }
    ));
    assert_eq!(scalar(&app, "SELECT COUNT(*) FROM contributions WHERE project_id = ?", a).await, 1);

    // A well-formed contribution that is not the leased computation (here: zeros) fails its check: refused, the
    // provider is shut out, and nothing of it counts.
    let lease = next_lease(&mut client, &mut honest, &mut outcome).await;
    let (info, delta) = train_lease(&mut client, &mut honest, &mut outcome, lease).await;
    client.contribute(info.clone(), &vec![0.0; delta.len()]).await;
    match ack_of(&mut client, &mut honest, info.lease_id).await {
        AckOutcome::Refused { reason, detail } => {
            assert_eq!(reason, RefusalReason::Rejected);
            assert!(detail.contains("not the computation its lease asked for"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    loop {
        let incoming = client.recv().await;
        if !honest.take(incoming, &mut outcome) {
            break;
        }
    }
    let goodbye = outcome.goodbye.clone().expect("a goodbye");
    assert_eq!(goodbye.reason, GoodbyeReason::ShutOut, "{goodbye:?}");
    assert_eq!(scalar(&app, "SELECT COUNT(*) FROM contributions WHERE project_id = ?", a).await, 1, "no credit");
    let _ = outcome;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_handshakes_get_a_goodbye_saying_why() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let cases: Vec<(Vec<u8>, GoodbyeReason)> = vec![
        (vec![0xff, 0xff, 0xff], GoodbyeReason::ProtocolError),
        (
            Frame::Hello(Hello { protocol_version: PROTOCOL_VERSION + 1, ..hello(None) }).encode(),
            GoodbyeReason::UnsupportedVersion { supported: PROTOCOL_VERSION },
        ),
        (Frame::Heartbeat(Default::default()).encode(), GoodbyeReason::ProtocolError),
        (Frame::Hello(hello(Some(9999))).encode(), GoodbyeReason::UnknownProject),
    ];
    for (bytes, reason) in cases {
        let mut client = WireClient::connect(addr).await;
        client.send_raw(bytes).await;
        match client.recv().await {
            Incoming::Frame(Frame::Goodbye(goodbye)) => assert_eq!(goodbye.reason, reason, "{}", goodbye.detail),
            _ => panic!("expected a goodbye for {reason:?}"),
        }
        assert!(matches!(client.recv().await, Incoming::Closed));
    }
    // A site-key project refuses a provider without its key.
    let id = small_running(
        &app,
        &token,
        json!({"samples_per_shard": 10, "validation_fraction": 0.25, "access": "site_key"}),
    )
    .await;
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(hello(Some(id)))).await;
    match client.recv().await {
        Incoming::Frame(Frame::Goodbye(goodbye)) => assert_eq!(goodbye.reason, GoodbyeReason::Unauthorized),
        _ => panic!("expected a goodbye"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_checkpoints_and_resume_continues_where_it_stopped() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 2, "k": 1,
                          "epochs": 30, "checkpoint_every": 1000});
    let id = small_running(&app, &token, settings).await;
    // The provider named the project: on pause it waits for the resume instead of leaving.
    let provider = tokio::spawn(run_honest(addr, hello(Some(id)), None));
    let start = std::time::Instant::now();
    while project(&app, &token, id).await["version"].as_i64().unwrap() < 20 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let paused = post(&app, &token, &format!("/api/projects/{id}/pause")).await;
    assert_eq!(paused["state"], "paused");
    let version = paused["version"].as_i64().unwrap();
    let checkpoint = scalar(&app, "SELECT checkpoint_version FROM projects WHERE id = ?", id).await;
    assert_eq!(checkpoint, version, "pausing checkpoints the version it shows");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(project(&app, &token, id).await["version"], version, "nothing is applied while paused");
    post(&app, &token, &format!("/api/projects/{id}/resume")).await;
    let view = wait_for_state(&app, &token, id, "finished", Duration::from_secs(120)).await;
    assert!(view["version"].as_i64().unwrap() > version);
    let outcome = tokio::time::timeout(Duration::from_secs(30), provider).await.unwrap().unwrap();
    assert_eq!(outcome.goodbye.unwrap().reason, GoodbyeReason::Normal);
    assert_exactly_once(&app, id, 30, 2).await;
}

/// The Hello of a provider with persistent key `key` (one byte repeated).
pub(crate) fn keyed(project: i64, key: u8) -> Hello {
    Hello { provider_key: Some(daig_shared::wire::ProviderKey([key; 32])), ..hello(Some(project)) }
}

/// Loopback address 127.0.0.`n`: another client.
pub(crate) fn client(n: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, n)
}

/// The goodbye that ends a connection that sent `hello`, with the frames before it.
async fn goodbye_to(addr: SocketAddr, from: u8, hello: Hello) -> daig_shared::wire::Goodbye {
    let mut client = WireClient::connect_as(addr, client(from)).await.expect("upgraded");
    client.send(&Frame::Hello(hello)).await;
    let (mut honest, mut outcome) = (Honest::default(), Outcome::default());
    while honest.take(client.recv().await, &mut outcome) {}
    outcome.goodbye.expect("a goodbye")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standing_follows_a_provider_key_and_a_shut_out_loses_its_key_its_address_and_its_credit() {
    use daig_shared::wire::{AckOutcome, RefusalReason};
    let app = TestApp::with(|s| s.max_provider_connections_per_address = 3).await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 4, "k": 1,
                          "epochs": 200, "max_staleness": 2});
    let id = small_running(&app, &token, settings).await;
    let identity_verified = |key: u8| {
        use sha2::Digest as _;
        let hash: String = sha2::Sha256::digest([key; 32]).iter().map(|b| format!("{b:02x}")).collect();
        let db = app.state.db().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT verified FROM provider_identities WHERE key_hash = ?")
                .bind(hash)
                .fetch_optional(&db)
                .await
                .unwrap()
        }
    };

    // An honest provider's passed checks are its key's standing, across connections.
    let first = run_honest_on(WireClient::connect_as(addr, client(2)).await.unwrap(), keyed(id, 7), Some(2)).await;
    assert!(first.applied >= 2, "{first:?}");
    let after_first = identity_verified(7).await.expect("the key's identity");
    // Every contribution of a new provider is checked before it is applied (one still in flight when it left
    // may have passed too).
    assert!(after_first >= i64::from(first.applied), "{after_first} checks passed, {} applied", first.applied);
    let second = run_honest_on(WireClient::connect_as(addr, client(2)).await.unwrap(), keyed(id, 7), Some(1)).await;
    assert!(second.applied >= 1);
    assert!(identity_verified(7).await.unwrap() > after_first, "the standing grew on the second connection");
    // Enough standing makes a provider trusted when it joins: the project page says so.
    sqlx::query("UPDATE provider_identities SET verified = 100 WHERE verified > 0")
        .execute(app.state.db())
        .await
        .unwrap();
    let mut trusted = WireClient::connect_as(addr, client(2)).await.unwrap();
    trusted.send(&Frame::Hello(keyed(id, 7))).await;
    let (mut h, mut o) = (Honest::default(), Outcome::default());
    let _ = next_lease(&mut trusted, &mut h, &mut o).await;
    let start = std::time::Instant::now();
    loop {
        let providers = project(&app, &token, id).await["providers"].clone();
        if providers.as_array().unwrap().iter().any(|p| p["standing"] == "trusted") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no trusted provider: {providers}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    trusted.goodbye().await;

    // A provider with another key earns credit honestly, then cheats.
    let mut cheat = WireClient::connect_as(addr, client(3)).await.unwrap();
    cheat.send(&Frame::Hello(keyed(id, 9))).await;
    let (mut honest, mut outcome) = (Honest::default(), Outcome::default());
    let lease = next_lease(&mut cheat, &mut honest, &mut outcome).await;
    let (info, delta) = train_lease(&mut cheat, &mut honest, &mut outcome, lease).await;
    cheat.contribute(info.clone(), &delta).await;
    assert!(matches!(ack_of(&mut cheat, &mut honest, info.lease_id).await, AckOutcome::Applied { .. }));
    let cheat_id = outcome.welcome.as_ref().unwrap().provider_id.0 as i64;
    let credited = "SELECT COUNT(*) FROM contributions WHERE provider_id = ? AND withdrawn_at IS NULL";
    assert_eq!(scalar(&app, credited, cheat_id).await, 1);
    let lease = next_lease(&mut cheat, &mut honest, &mut outcome).await;
    let (info, delta) = train_lease(&mut cheat, &mut honest, &mut outcome, lease).await;
    let scaled: Vec<f32> = delta.iter().map(|v| v * 1.5).collect();
    cheat.contribute(info.clone(), &scaled).await;
    match ack_of(&mut cheat, &mut honest, info.lease_id).await {
        AckOutcome::Refused { reason, .. } => assert_eq!(reason, RefusalReason::Rejected),
        other => panic!("{other:?}"),
    }
    while honest.take(cheat.recv().await, &mut outcome) {}
    assert_eq!(outcome.goodbye.as_ref().map(|g| g.reason), Some(GoodbyeReason::ShutOut));
    // Its credit is withdrawn, and the requestor sees who was shut out and why.
    assert_eq!(scalar(&app, credited, cheat_id).await, 0, "its credit is withdrawn");
    let credits = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}/credits")), &token)).await;
    let credits = credits.json();
    assert!(credits["providers"].as_array().unwrap().iter().all(|p| p["provider_id"] != cheat_id), "{credits}");
    let shut_out = &credits["shut_out"][0];
    assert_eq!(shut_out["provider_id"], cheat_id, "{credits}");
    assert_eq!(shut_out["address"], "127.0.0.3");
    assert!(shut_out["reason"].as_str().unwrap().contains("not the computation its lease asked for"), "{credits}");
    // The honest provider keeps its credit, with its checks counted.
    let honest_line = credits["providers"].as_array().unwrap().iter().find(|p| p["verified"].as_i64() > Some(0));
    assert!(honest_line.is_some(), "{credits}");

    // Its key is refused from any address, and its address for a while with any key or none.
    let goodbye = goodbye_to(addr, 4, keyed(id, 9)).await;
    assert_eq!(goodbye.reason, GoodbyeReason::ShutOut);
    assert!(goodbye.detail.contains("provider key was shut out"), "{goodbye:?}");
    for hello in [hello(Some(id)), keyed(id, 10)] {
        let goodbye = goodbye_to(addr, 3, hello).await;
        assert_eq!(goodbye.reason, GoodbyeReason::ShutOut);
        assert!(goodbye.detail.contains("this address is refused"), "{goodbye:?}");
    }
    // Another client is not affected.
    let other = run_honest_on(WireClient::connect_as(addr, client(5)).await.unwrap(), hello(Some(id)), Some(1)).await;
    assert_eq!(other.applied, 1, "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_holds_only_so_many_provider_connections() {
    let app = TestApp::with(|s| s.max_provider_connections_per_address = 3).await;
    let addr = serve(&app).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(WireClient::connect_as(addr, client(6)).await.expect("within the limit"));
    }
    match WireClient::connect_as(addr, client(6)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("too_many_connections"), "{body}");
        }
        Ok(_) => panic!("a fourth connection from one address was upgraded"),
        Err(e) => panic!("{e}"),
    }
    // Other addresses are counted on their own.
    let _other = WireClient::connect_as(addr, client(7)).await.expect("another address");
    // A closed connection frees its place.
    held.pop().unwrap().goodbye().await;
    let start = std::time::Instant::now();
    while WireClient::connect_as(addr, client(6)).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the closed connection's place was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_follows_a_provider_key_across_its_connections() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 4, "k": 1,
                          "epochs": 100, "max_staleness": 2});
    let id = small_running(&app, &token, settings).await;
    let mut connections = Vec::new();
    for hello in [keyed(id, 21), keyed(id, 21), hello(Some(id))] {
        let outcome = run_honest(addr, hello, Some(1)).await;
        assert!(outcome.applied >= 1, "{outcome:?}");
        connections.push(outcome.welcome.unwrap().provider_id.0 as i64);
    }
    // A contribution still being checked when its provider left is applied after: wait until the ledger settles.
    let uri = format!("/api/projects/{id}/credits");
    let mut credits = app.send(with_token(request(Method::GET, &uri), &token)).await.json();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = app.send(with_token(request(Method::GET, &uri), &token)).await.json();
        if again == credits {
            break;
        }
        credits = again;
    }
    let lines = credits["providers"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "the key's two connections are one provider: {credits}");
    let keyed_line = lines.iter().find(|l| l["provider_id"] == connections[1]).expect("named by its latest connection");
    assert!(keyed_line["contributions"].as_i64().unwrap() >= 2, "{credits}");
    // Its ledger, asked by either connection, holds the work of both; the keyless one only its own.
    for asked in &connections[..2] {
        let mine = app.send(request(Method::GET, &format!("/api/providers/{asked}/credits"))).await.json();
        assert_eq!(mine["contributions"], keyed_line["contributions"], "{mine}");
    }
    let keyless = lines.iter().find(|l| l["provider_id"] == connections[2]).expect("the keyless connection's line");
    let other = app.send(request(Method::GET, &format!("/api/providers/{}/credits", connections[2]))).await.json();
    assert_eq!(other["contributions"], keyless["contributions"], "{other}");
}
