//! The provider socket's resource bounds, over real WebSockets: a provider that stops reading is dropped and its
//! leases return, a contribution is read only for a lease the connection holds open and within the server's
//! reassembly budget, and a provider that sends frames too fast is dropped.

use std::time::Duration;

use axum::http::StatusCode;
use daig_shared::wire::{
    AckOutcome, ContributionInfo, Frame, GoodbyeReason, Heartbeat, LeaseId, RefusalReason, SampleSelection,
    ShardRequest,
};
use serde_json::json;

use crate::support::{TestApp, npy};
use crate::training::{client, keyed, next_lease, project, serve, small_running};

use crate::wire_provider::{Honest, Incoming, Outcome, WireClient, hello, train_lease};

/// Reads until the goodbye (or the close), skipping everything else.
async fn goodbye_of(client: &mut WireClient) -> Option<daig_shared::wire::Goodbye> {
    loop {
        match client.recv().await {
            Incoming::Frame(Frame::Goodbye(goodbye)) => return Some(goodbye),
            Incoming::Closed => return None,
            _ => {}
        }
    }
}

/// A provider joined to project `id` with its first lease trained, not yet sent: the connection, the lease, and
/// the contribution.
async fn trained_contribution(
    addr: std::net::SocketAddr,
    id: i64,
) -> (WireClient, LeaseId, ContributionInfo, Vec<f32>) {
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(hello(Some(id)))).await;
    let (mut honest, mut outcome) = (Honest::default(), Outcome::default());
    let lease = next_lease(&mut client, &mut honest, &mut outcome).await;
    let lease_id = lease.lease_id;
    let (info, delta) = train_lease(&mut client, &mut honest, &mut outcome, lease).await;
    (client, lease_id, info, delta)
}

/// Reads until the ack of `lease`.
async fn ack_for(client: &mut WireClient, lease: LeaseId) -> AckOutcome {
    loop {
        match client.recv().await {
            Incoming::Frame(Frame::Ack(ack)) if ack.lease_id == lease => return ack.outcome,
            Incoming::Frame(Frame::Goodbye(goodbye)) => panic!("dropped instead of an ack: {goodbye:?}"),
            Incoming::Closed => panic!("closed instead of an ack"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_stops_reading_is_dropped_within_the_write_timeout_and_its_leases_return() {
    let app = TestApp::with(|s| {
        s.provider_write_timeout_ms = 500;
        s.heartbeat_interval_ms = 60_000;
    })
    .await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    // Shards of 6 MB, so that a few requests fill every socket buffer between the server and a client.
    let (n, width) = (2000, 784);
    let model = json!({"input_shape": [width], "layers": [{"type": "dense", "units": 3}], "loss": "cross_entropy"});
    let settings = json!({"samples_per_shard": n, "validation_fraction": 0.0, "batch_size": 50, "epochs": 50});
    let body = json!({"name": "wide", "model": model, "settings": settings});
    let id = app.create_project(&token, &body).await["id"].as_i64().unwrap();
    let features: Vec<u8> = (0..n * width).flat_map(|i| ((i % 251) as f32).to_le_bytes()).collect();
    let labels: Vec<u8> = (0..n as i64).flat_map(|i| (i % 3).to_le_bytes()).collect();
    assert_eq!(app.upload(&token, id, "features", npy("<f4", &[n, width], &features)).await.status, StatusCode::OK);
    assert_eq!(app.upload(&token, id, "labels", npy("<i8", &[n], &labels)).await.status, StatusCode::OK);
    assert_eq!(app.act(&token, id, "start").await.status, StatusCode::OK);

    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(hello(Some(id)))).await;
    let (mut honest, mut outcome) = (Honest::default(), Outcome::default());
    let lease = next_lease(&mut client, &mut honest, &mut outcome).await;
    let SampleSelection::Shards(parts) = &lease.samples else { panic!("shard selections") };
    wait_live(&app, &token, id, 1, Duration::from_secs(10)).await;
    // It asks for its shard again and again and reads nothing more.
    for _ in 0..8 {
        client.send(&Frame::ShardRequest(ShardRequest { shard: parts[0].shard })).await;
    }
    // Dropped within the write timeout (500 ms) of its socket filling up, not after three heartbeat intervals
    // (three minutes here).
    wait_live(&app, &token, id, 0, Duration::from_secs(20)).await;
    // Its leases went back to the queue: a new provider gets the same batches' lease.
    let mut other = WireClient::connect(addr).await;
    other.send(&Frame::Hello(hello(Some(id)))).await;
    let again = next_lease(&mut other, &mut Honest::default(), &mut Outcome::default()).await;
    let SampleSelection::Shards(again_parts) = &again.samples else { panic!("shard selections") };
    assert_eq!(again_parts[0].shard, parts[0].shard, "the dropped provider's batches are leased again first");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contribution_is_read_only_for_a_lease_the_connection_holds_open() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 4, "k": 1,
                          "epochs": 50});
    let id = small_running(&app, &token, settings).await;
    let (mut client, lease_id, info, delta) = trained_contribution(addr, id).await;
    // Every contribution for a lease that is not open here is refused without being read, and the provider
    // stays connected (an honest one may cross a cancellation): a lease never issued, one of another
    // connection, and one already answered.
    let mut peer = WireClient::connect(addr).await;
    peer.send(&Frame::Hello(hello(Some(id)))).await;
    let peers = next_lease(&mut peer, &mut Honest::default(), &mut Outcome::default()).await;
    client.contribute(info.clone(), &delta).await;
    assert!(!matches!(ack_for(&mut client, lease_id).await, AckOutcome::Refused { .. }));
    for stranger in [LeaseId(u64::MAX - 7), peers.lease_id, lease_id] {
        client.contribute(ContributionInfo { lease_id: stranger, ..info.clone() }, &delta).await;
        match ack_for(&mut client, stranger).await {
            AckOutcome::Refused { reason: RefusalReason::UnknownLease, detail } => {
                assert!(detail.contains("not open on this connection") && detail.contains("not read"), "{detail}");
            }
            other => panic!("a contribution for lease {stranger} (not open here) was taken: {other:?}"),
        }
    }
    // Both providers are still connected: crossing a lease's end is no protocol error.
    wait_live(&app, &token, id, 2, Duration::from_secs(10)).await;
    // A transfer larger than the model, for an open lease or not, ends the connection: nothing that size is
    // ever read.
    let too_big = vec![0.0f32; delta.len() + 1];
    let _ = client.try_contribute(ContributionInfo { lease_id: LeaseId(u64::MAX - 8), ..info }, &too_big).await;
    let goodbye = goodbye_of(&mut client).await.expect("a goodbye");
    assert_eq!(goodbye.reason, GoodbyeReason::ProtocolError, "{goodbye:?}");
}

/// Waits until project `id` shows `n` live providers (its view is refreshed a few times a second).
async fn wait_live(app: &TestApp, token: &str, id: i64, n: usize, limit: Duration) {
    let started = std::time::Instant::now();
    loop {
        let view = project(app, token, id).await;
        if view["providers"].as_array().map_or(0, Vec::len) == n {
            return;
        }
        assert!(started.elapsed() < limit, "project {id} does not show {n} live providers: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contribution_waits_for_the_reassembly_budget_and_is_refused_when_it_stays_spent() {
    let app = TestApp::with(|s| {
        s.max_reassembly_bytes = 1 << 20;
        s.provider_write_timeout_ms = 1000;
    })
    .await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 4, "k": 1,
                          "epochs": 50});
    let id = small_running(&app, &token, settings).await;
    let budget = app.state.training().reassembly_budget();
    for release_after in [Some(Duration::from_millis(300)), None] {
        let (mut client, lease_id, info, delta) = trained_contribution(addr, id).await;
        // Other connections hold the whole budget.
        let spent = budget.clone().acquire_many_owned(1 << 20).await.unwrap();
        client.contribute(info, &delta).await;
        match release_after {
            Some(after) => {
                tokio::time::sleep(after).await;
                drop(spent);
                assert!(!matches!(ack_for(&mut client, lease_id).await, AckOutcome::Refused { .. }));
            }
            None => {
                let goodbye = goodbye_of(&mut client).await.expect("a goodbye");
                assert_eq!(goodbye.reason, GoodbyeReason::Overloaded, "{goodbye:?}");
                assert!(goodbye.detail.contains("too many contributions"), "{goodbye:?}");
                drop(spent);
            }
        }
    }
    assert_eq!(budget.available_permits(), 1 << 20, "every reservation was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_sends_frames_faster_than_its_budget_is_dropped_whatever_it_sends() {
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::with(|s| s.max_provider_frames_per_sec = 20).await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let running = small_running(&app, &token, json!({"samples_per_shard": 10, "epochs": 50})).await;
    let draft = app.small_project(&token, json!({})).await;
    let heartbeat = Frame::Heartbeat(Heartbeat::default()).encode();
    // Joined to a project or waiting for one; heartbeats, pings or anything else: the budget counts them all.
    for project in [running, draft] {
        for flood in ["heartbeats", "pings", "pongs"] {
            let mut client = WireClient::connect(addr).await;
            client.send(&Frame::Hello(hello(Some(project)))).await;
            for _ in 0..200 {
                let message = match flood {
                    "heartbeats" => Message::Binary(heartbeat.clone().into()),
                    "pings" => Message::Ping(vec![1, 2, 3].into()),
                    _ => Message::Pong(vec![1].into()),
                };
                if client.send_message(message).await.is_err() {
                    break;
                }
            }
            let goodbye = goodbye_of(&mut client).await.expect("a goodbye");
            assert_eq!(goodbye.reason, GoodbyeReason::ProtocolError, "{flood} to project {project}: {goodbye:?}");
            assert!(goodbye.detail.contains("20 frames a second"), "{goodbye:?}");
        }
    }
    // A provider within its budget is served as before.
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(hello(Some(running)))).await;
    for _ in 0..10 {
        client.send(&Frame::Heartbeat(Heartbeat::default())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    next_lease(&mut client, &mut Honest::default(), &mut Outcome::default()).await;
    wait_live(&app, &token, running, 1, Duration::from_secs(10)).await;
}

/// Connects from 127.0.0.`from`, says `hello`, waits for the welcome and leaves.
async fn visit(addr: std::net::SocketAddr, from: u8, hello: daig_shared::wire::Hello) -> i64 {
    let mut client = WireClient::connect_as(addr, client(from)).await.expect("upgraded");
    client.send(&Frame::Hello(hello)).await;
    let provider = loop {
        match client.recv().await {
            Incoming::Frame(Frame::Welcome(welcome)) => break welcome.provider_id.0 as i64,
            Incoming::Frame(Frame::Goodbye(goodbye)) => panic!("refused: {goodbye:?}"),
            Incoming::Closed => panic!("closed"),
            _ => {}
        }
    };
    client.goodbye().await;
    provider
}

async fn provider_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM providers").fetch_one(app.state.db()).await.unwrap()
}

/// Waits until every provider row says its connection ended.
async fn all_disconnected(app: &TestApp) {
    let started = std::time::Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM providers WHERE disconnected_at IS NULL")
            .fetch_one(app.state.db())
            .await
            .unwrap();
        if open == 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{open} connections still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_reconnects_keeps_its_row_and_only_concurrent_connections_add_rows() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let id = small_running(&app, &token, json!({"samples_per_shard": 10, "epochs": 50})).await;
    // (the hello, the address it comes from): a key from two addresses is one provider; without a key, one
    // address with one adapter is one provider.
    let keyless = |adapter: &str| daig_shared::wire::Hello { adapter: adapter.into(), ..hello(Some(id)) };
    let visitors = [(keyed(id, 1), 2), (keyed(id, 1), 3), (keyed(id, 2), 2), (keyless("a"), 4), (keyless("b"), 4)];
    let mut first_ids = Vec::new();
    for round in 0..4 {
        for (hello, from) in &visitors {
            let provider = visit(addr, *from, hello.clone()).await;
            all_disconnected(&app).await;
            if round == 0 {
                first_ids.push(provider);
            }
        }
    }
    assert_eq!(provider_rows(&app).await, 4, "reconnections added rows");
    // Two connections of one key at once are two providers.
    let mut one = WireClient::connect_as(addr, client(2)).await.unwrap();
    one.send(&Frame::Hello(keyed(id, 1))).await;
    next_lease(&mut one, &mut Honest::default(), &mut Outcome::default()).await;
    visit(addr, 2, keyed(id, 1)).await;
    assert_eq!(provider_rows(&app).await, 5);
    // A row that was shut out is never taken over.
    sqlx::query("UPDATE providers SET shut_out_at = 1, shut_out_reason = 'test' WHERE adapter = 'a'")
        .execute(app.state.db())
        .await
        .unwrap();
    let again = visit(addr, 4, keyless("a")).await;
    assert!(!first_ids.contains(&again), "a shut-out row was reused");
    assert_eq!(provider_rows(&app).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_address_that_opens_provider_connections_too_fast_is_answered_429() {
    let app = TestApp::with(|s| s.provider_connects_per_minute = 5).await;
    let addr = serve(&app).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(WireClient::connect_as(addr, client(9)).await.expect("within the rate"));
    }
    drop(held);
    // Closed connections do not give the rate back: a reconnecting loop is as bounded as a parallel one.
    match WireClient::connect_as(addr, client(9)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => panic!("a sixth connection within a minute was upgraded"),
    }
    WireClient::connect_as(addr, client(10)).await.expect("another address has its own rate");
}

/// The next frame that is not a heartbeat, or `None` when `wait` passes without one (the provider answers
/// nothing meanwhile, which a heartbeat interval of a second allows for two).
async fn next_besides_heartbeats(client: &mut WireClient, wait: Duration) -> Option<Incoming> {
    tokio::time::timeout(wait, async {
        loop {
            match client.recv().await {
                Incoming::Frame(Frame::Heartbeat(_)) => {}
                other => return other,
            }
        }
    })
    .await
    .ok()
}

/// Waits until project `id`'s published status (what the server chooses projects by) lists `n` providers.
async fn providers_reach(app: &TestApp, id: i64, n: usize) {
    let handle = app.state.training().get(id).expect("a running project");
    let reached = tokio::time::timeout(Duration::from_secs(30), async {
        while handle.status.borrow().providers.len() < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(reached.await.is_ok(), "project {id} never listed {n} providers");
}

/// A provider joins only projects that its device says it can hold, whichever of the two figures falls short
/// and however it asks: by project, by site key, or letting the server choose (then it is sent to a project that
/// fits, or waits for one, never to one that does not). A figure exactly at the need fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_never_joins_a_project_its_device_cannot_hold() {
    use daig_shared::model::{Limits, Model};
    use daig_shared::wire::DeviceCapacity;

    use crate::web::running;

    let app = TestApp::with(|s| s.heartbeat_interval_ms = 1000).await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    // The same model at two sizes of minibatch and shard (30 training samples each).
    let settings = |batch: u32, per_shard: u32| json!({"batch_size": batch, "samples_per_shard": per_shard, "validation_fraction": 0.25});
    let (small, _) = running(&app, &token, settings(2, 10)).await;
    let (large, _) = running(&app, &token, settings(16, 30)).await;
    let mut site_settings = settings(16, 30);
    site_settings["access"] = json!("site_key");
    let (site, key) = running(&app, &token, site_settings).await;
    let model = Model::from_json(&crate::support::small_model().to_string(), &Limits::default()).unwrap();
    let (small_need, large_need) = (model.device_need(2, 10), model.device_need(16, 30));
    assert!(
        small_need.largest_buffer_bytes < large_need.largest_buffer_bytes
            && small_need.total_bytes < large_need.total_bytes
    );

    let short_buffer = DeviceCapacity { max_buffer_bytes: small_need.largest_buffer_bytes, memory_bytes: 0 };
    let short_memory = DeviceCapacity { max_buffer_bytes: 0, memory_bytes: small_need.total_bytes };
    let mut joined_small = Vec::new();
    for device in [short_buffer, short_memory] {
        let with = |project: Option<i64>, site_key: Option<String>| {
            let mut h = hello(project);
            h.device = device;
            h.site_key = site_key;
            h
        };
        // Named projects and the site's own: refused with the figure that falls short.
        for (project, site_key) in [(Some(large), None), (None, key.clone()), (Some(site), key.clone())] {
            let mut client = WireClient::connect(addr).await;
            client.send(&Frame::Hello(with(project, site_key.clone()))).await;
            match client.recv().await {
                Incoming::Frame(Frame::Goodbye(g)) => {
                    assert_eq!(g.reason, GoodbyeReason::DeviceTooSmall, "{device:?}: {g:?}");
                    let figure = if device.max_buffer_bytes > 0 { "a buffer of" } else { "bytes of device memory" };
                    assert!(g.detail.contains(figure), "{device:?}: {}", g.detail);
                }
                _ => panic!("{device:?}: a device too small for {project:?} / {site_key:?} was not refused"),
            }
        }
        // The small project fits exactly; the client stays, so that the small project has more providers.
        let mut client = WireClient::connect(addr).await;
        client.send(&Frame::Hello(with(Some(small), None))).await;
        match next_besides_heartbeats(&mut client, Duration::from_secs(30)).await {
            Some(Incoming::Frame(Frame::Welcome(w))) => assert_eq!(w.project_id.0, small as u64),
            _ => panic!("{device:?}: a device that holds the small project was not welcomed to it"),
        }
        joined_small.push(client);
        providers_reach(&app, small, joined_small.len()).await;
        // Left to choose, the server sends it to the small project although the large one needs providers more.
        let mut client = WireClient::connect(addr).await;
        client.send(&Frame::Hello(with(None, None))).await;
        match next_besides_heartbeats(&mut client, Duration::from_secs(30)).await {
            Some(Incoming::Frame(Frame::Welcome(w))) => assert_eq!(w.project_id.0, small as u64, "{device:?}"),
            _ => panic!("{device:?}: no welcome to the project that fits"),
        }
        joined_small.push(client);
        providers_reach(&app, small, joined_small.len()).await;
    }
    // A device that states nothing goes where providers are needed most: the filter above made the difference.
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(hello(None))).await;
    match next_besides_heartbeats(&mut client, Duration::from_secs(30)).await {
        Some(Incoming::Frame(Frame::Welcome(w))) => assert_eq!(w.project_id.0, large as u64),
        _ => panic!("no welcome for a provider that states no capacity"),
    }
    // While no project fits, a provider waits rather than being sent to one that does not.
    assert_eq!(app.act(&token, small, "pause").await.status, StatusCode::OK);
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(daig_shared::wire::Hello { device: short_memory, ..hello(None) })).await;
    if let Some(other) = next_besides_heartbeats(&mut client, Duration::from_secs(2)).await {
        match other {
            Incoming::Frame(Frame::Welcome(w)) => panic!("sent to project {} that it cannot hold", w.project_id.0),
            _ => panic!("a waiting provider was sent something else"),
        }
    }
    client.send(&Frame::Heartbeat(Heartbeat::default())).await;
    assert_eq!(app.act(&token, small, "resume").await.status, StatusCode::OK);
    match next_besides_heartbeats(&mut client, Duration::from_secs(30)).await {
        Some(Incoming::Frame(Frame::Welcome(w))) => assert_eq!(w.project_id.0, small as u64),
        _ => panic!("the waiting provider was not welcomed once a project that fits resumed"),
    }
}
