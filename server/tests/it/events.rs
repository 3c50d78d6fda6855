//! `GET /api/projects/{id}/events`: the dashboard's live updates as server-sent events, on a real socket while a
//! provider trains: the first event is the whole project, each later one only what changed (the new metric points,
//! never the ones sent before), every change arrives without polling, no faster than twice a second, a pause
//! through the API shows at once, and the stream ends with the finished project. An account holds at most
//! `max_event_streams_per_account` streams, the server `max_event_streams`, and a closed stream gives its place back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use daig_shared::api::project::{ProjectDelta, ProjectState, ProjectView};
use daig_shared::api::training::MetricPoint;
use futures_util::StreamExt as _;
use serde_json::json;

use crate::support::{TestApp, request, with_token};
use crate::wire_provider::{hello, run_honest};

async fn serve(app: &TestApp) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(daig_server::run(listener, app.state.clone(), std::future::pending()));
    addr
}

/// `GET /api/projects/{id}/events` on a socket, answered with whatever status.
async fn get_events(addr: SocketAddr, token: &str, id: i64) -> reqwest::Response {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
        .get(format!("http://{addr}/api/projects/{id}/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// One stream of server-sent events, read as `EventSource` reads it, and the project rebuilt from it as the
/// dashboard does: the `project` event's view, brought up to date by each `delta`.
struct EventStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    view: Option<ProjectView>,
    /// How many times each metric point (by version) was sent in this stream since its last `project` event.
    points_sent: BTreeMap<i64, (usize, MetricPoint)>,
    /// `delta` events that carried metric points.
    deltas_with_points: usize,
}

impl EventStream {
    async fn open(addr: SocketAddr, token: &str, id: i64) -> EventStream {
        let reply = get_events(addr, token, id).await;
        assert_eq!(reply.status(), StatusCode::OK);
        let content_type = reply.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(content_type, "text/event-stream");
        EventStream {
            body: Box::pin(reply.bytes_stream()),
            buffer: String::new(),
            view: None,
            points_sent: BTreeMap::new(),
            deltas_with_points: 0,
        }
    }

    /// The next event's name and data, or `None` when the server ends the stream.
    async fn next_event(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                match name {
                    Some(name) => return Some((name, data)),
                    // Keep-alive comments and the retry field alone carry no event.
                    None => continue,
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("an event or the end of the stream within 30 s")?;
            self.buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    /// The project after the next event, or `None` when the server ends the stream.
    async fn next(&mut self) -> Option<ProjectView> {
        let (name, data) = self.next_event().await?;
        match name.as_str() {
            "project" => {
                let view: ProjectView = serde_json::from_str(&data).unwrap();
                self.points_sent = view.metrics.iter().map(|p| (p.version, (1, p.clone()))).collect();
                self.view = Some(view);
            }
            "delta" => {
                let delta: ProjectDelta = serde_json::from_str(&data).unwrap();
                assert!(!delta.is_empty(), "a delta changes something: {data}");
                if !delta.metrics.is_empty() {
                    self.deltas_with_points += 1;
                }
                // A point comes again only when it changed (the newest one, evaluated again at the same version).
                for point in &delta.metrics {
                    match self.points_sent.get_mut(&point.version) {
                        Some((_, sent)) if sent != point => {
                            *sent = point.clone();
                        }
                        Some((times, _)) => *times += 1,
                        None => {
                            self.points_sent.insert(point.version, (1, point.clone()));
                        }
                    }
                }
                self.view.as_mut().expect("a delta follows the project").apply(delta);
            }
            other => panic!("unexpected event {other}: {data}"),
        }
        let resent: Vec<_> = self.points_sent.iter().filter(|(_, (n, _))| *n > 1).map(|(v, (n, _))| (v, n)).collect();
        assert!(resent.is_empty(), "metric points sent again (version, times): {resent:?}");
        self.view.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_follow_training_and_a_pause_and_end_when_the_project_finishes() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    // 30 training samples in batches of 2, one contribution per update: 15 versions an epoch, 900 in all, which
    // take a few seconds over loopback.
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "batch_size": 2, "k": 1, "epochs": 60});
    let id = app.small_project(&token, settings).await;
    let (features, labels) = crate::support::small_dataset(40, 3);
    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    assert_eq!(app.upload(&token, id, "labels", labels).await.status, StatusCode::OK);

    let mut events = EventStream::open(addr, &token, id).await;
    let first = events.next().await.expect("the project at once");
    assert_eq!(first.state, ProjectState::Draft);
    assert_eq!(first.id, id);

    assert_eq!(app.act(&token, id, "start").await.status, StatusCode::OK);
    let provider = tokio::spawn(run_honest(addr, hello(Some(id)), None));

    // Events while it trains: the version rises, metrics accumulate, never more than two events a second, and
    // no metric point comes twice in one stream (`EventStream::next` checks).
    let mut seen: Vec<(Instant, ProjectView)> = Vec::new();
    let mut deltas_with_points = 0;
    let mut paused_at = None;
    loop {
        let Some(view) = events.next().await else {
            // Like EventSource: a stream that ends before the project does is opened again.
            assert!(seen.last().is_none_or(|(_, v)| v.state != ProjectState::Finished), "no event after the last");
            deltas_with_points += events.deltas_with_points;
            events = EventStream::open(addr, &token, id).await;
            continue;
        };
        let now = Instant::now();
        if let Some((at, previous)) = seen.last() {
            assert!(view.version >= previous.version, "versions never go back");
            assert!(now.duration_since(*at) >= Duration::from_millis(400), "at most two events a second");
        }
        let state = view.state;
        let version = view.version;
        seen.push((now, view));
        if state == ProjectState::Running && version >= 20 && paused_at.is_none() {
            let paused = app.act(&token, id, "pause").await;
            assert_eq!(paused.status, StatusCode::OK, "{}", paused.text());
            paused_at = Some(Instant::now());
        }
        if state == ProjectState::Paused {
            let waited = paused_at.expect("paused by the test").elapsed();
            assert!(waited < Duration::from_secs(4), "the pause showed after {waited:?}");
            assert_eq!(app.act(&token, id, "resume").await.status, StatusCode::OK);
        }
        if state == ProjectState::Finished {
            break;
        }
    }
    assert!(events.next().await.is_none(), "the stream ends with the finished project");
    deltas_with_points += events.deltas_with_points;
    let versions: std::collections::BTreeSet<i64> =
        seen.iter().filter(|(_, v)| v.state == ProjectState::Running).map(|(_, v)| v.version).collect();
    assert!(versions.len() >= 3, "the running project moved in several events: {versions:?}");
    assert!(seen.iter().any(|(_, v)| v.state == ProjectState::Paused), "the pause was streamed");
    assert!(deltas_with_points >= 2, "new metric points came in deltas, {deltas_with_points} times");
    let last = &seen.last().unwrap().1;
    assert!(!last.metrics.is_empty(), "metrics come with the view: {last:?}");
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), &token)).await;
    let shown: ProjectView = serde_json::from_value(reply.json()).unwrap();
    assert_eq!(&shown, last, "the events rebuild the project as GET shows it");
    tokio::time::timeout(Duration::from_secs(30), provider).await.unwrap().unwrap();
}

/// The caller's account id.
async fn user_id(app: &TestApp, token: &str) -> i64 {
    app.send(with_token(request(Method::GET, "/api/me"), token)).await.json()["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_holds_at_most_eight_streams_and_a_closed_one_gives_its_place_back() {
    let app = TestApp::new().await;
    assert_eq!(app.state.settings().max_event_streams_per_account, 8);
    let addr = serve(&app).await;
    let (_, ada) = app.user_with_token("ada").await;
    let ada_id = user_id(&app, &ada).await;
    // A running project without providers: its streams stay open (a draft's would end when idle).
    let id = app.project_with_dataset(&ada).await;
    assert_eq!(app.act(&ada, id, "start").await.status, StatusCode::OK);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut stream = EventStream::open(addr, &ada, id).await;
        stream.next().await.expect("the project at once");
        streams.push(stream);
    }
    assert_eq!(app.state.streams_open(ada_id), 8);
    let ninth = get_events(addr, &ada, id).await;
    assert_eq!(ninth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(ninth.headers()["retry-after"], "30");
    let body: serde_json::Value = ninth.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("8 live-update streams"), "{body}");
    assert_eq!(body["error"]["details"]["max"], 8, "{body}");
    // Another account has places of its own.
    let (_, bob) = app.user_with_token("bob").await;
    let bobs = app.small_project(&bob, json!({})).await;
    let mut bobs_stream = EventStream::open(addr, &bob, bobs).await;
    assert_eq!(bobs_stream.next().await.expect("bob's project").id, bobs);
    // A client that goes away gives its place back at once, not when the stream would have ended.
    drop(streams.pop());
    let closed_at = Instant::now();
    while app.state.streams_open(ada_id) > 7 {
        assert!(closed_at.elapsed() < Duration::from_secs(3), "the closed stream still holds its place");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = EventStream::open(addr, &ada, id).await;
    assert_eq!(again.next().await.expect("the project again").id, id);
    assert_eq!(get_events(addr, &ada, id).await.status(), StatusCode::TOO_MANY_REQUESTS, "8 open again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_holds_at_most_max_event_streams() {
    let app = TestApp::with(|s| s.max_event_streams = 1).await;
    let addr = serve(&app).await;
    let (_, ada) = app.user_with_token("ada").await;
    let (_, bob) = app.user_with_token("bob").await;
    let id = app.project_with_dataset(&ada).await;
    assert_eq!(app.act(&ada, id, "start").await.status, StatusCode::OK);
    let bobs = app.small_project(&bob, json!({})).await;
    let mut stream = EventStream::open(addr, &ada, id).await;
    stream.next().await.expect("the project at once");
    let refused = get_events(addr, &bob, bobs).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
}

#[tokio::test]
async fn events_are_for_the_owner_only() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let (_, other) = app.user_with_token("bob").await;
    let id = app.small_project(&token, json!({})).await;
    let uri = format!("/api/projects/{id}/events");
    let reply = app.send(request(Method::GET, &uri)).await;
    assert_eq!((reply.status, reply.error_code()), (StatusCode::UNAUTHORIZED, "unauthenticated".to_owned()));
    let reply = app.send(with_token(request(Method::GET, &uri), &other)).await;
    assert_eq!((reply.status, reply.error_code()), (StatusCode::NOT_FOUND, "not_found".to_owned()));
    let reply = app.send(with_token(request(Method::GET, "/api/projects/999/events"), &token)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_draft_project_s_stream_sends_it_then_ends_when_idle() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    let start = Instant::now();
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}/events")), &token)).await;
    let elapsed = start.elapsed();
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    assert_eq!(text.matches("event: project").count(), 1, "{text}");
    assert_eq!(text.matches("event: delta").count(), 0, "nothing changed: {text}");
    assert!(text.contains("retry: 1000"), "the reconnection delay is sent: {text}");
    assert!(
        elapsed >= daig_server::api::events::IDLE_END && elapsed < daig_server::api::events::IDLE_END * 3,
        "the idle stream ended after {elapsed:?}"
    );
    let ada = user_id(&app, &token).await;
    assert_eq!(app.state.streams_open(ada), 0, "the ended stream gave its place back");
}
