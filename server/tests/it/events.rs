//! `GET /api/projects/{id}/events`: the dashboard's live updates as server-sent events, on a real socket while a
//! provider trains: every change of the project (version, metrics, state) arrives without polling, no faster than
//! twice a second, a pause through the API shows at once, and the stream ends with the finished project.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::support::{TestApp, request, with_token};
use crate::wire_provider::{hello, run_honest};

async fn serve(app: &TestApp) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(daig_server::run(listener, app.state.clone(), std::future::pending()));
    addr
}

/// One stream of server-sent events, read as `EventSource` reads it.
struct EventStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl EventStream {
    async fn open(addr: SocketAddr, token: &str, id: i64) -> EventStream {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let reply = reqwest::Client::new()
            .get(format!("http://{addr}/api/projects/{id}/events"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        let content_type = reply.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(content_type, "text/event-stream");
        EventStream { body: Box::pin(reply.bytes_stream()), buffer: String::new() }
    }

    /// The next `project` event's data, or `None` when the server ends the stream.
    async fn next(&mut self) -> Option<Value> {
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
                if name.as_deref() == Some("project") {
                    return Some(serde_json::from_str(&data).unwrap());
                }
                // Keep-alive comments and the retry field alone carry no project.
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("an event or the end of the stream within 30 s")?;
            self.buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
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
    assert_eq!(first["state"], "draft");
    assert_eq!(first["id"], id);

    assert_eq!(app.act(&token, id, "start").await.status, StatusCode::OK);
    let provider = tokio::spawn(run_honest(addr, hello(Some(id)), None));

    // Events while it trains: the version rises, metrics accumulate, never more than two events a second.
    let mut seen: Vec<(Instant, Value)> = Vec::new();
    let mut paused_at = None;
    loop {
        let Some(view) = events.next().await else {
            // Like EventSource: a stream that ends before the project does is opened again.
            assert!(seen.last().is_none_or(|(_, v)| v["state"] != "finished"), "no event after the last");
            events = EventStream::open(addr, &token, id).await;
            continue;
        };
        let now = Instant::now();
        let version = view["version"].as_i64().unwrap();
        if let Some((at, previous)) = seen.last() {
            assert!(version >= previous["version"].as_i64().unwrap(), "versions never go back");
            assert!(now.duration_since(*at) >= Duration::from_millis(400), "at most two events a second");
        }
        let state = view["state"].as_str().unwrap().to_owned();
        seen.push((now, view));
        if state == "running" && version >= 20 && paused_at.is_none() {
            let paused = app.act(&token, id, "pause").await;
            assert_eq!(paused.status, StatusCode::OK, "{}", paused.text());
            paused_at = Some(Instant::now());
        }
        if state == "paused" {
            let waited = paused_at.expect("paused by the test").elapsed();
            assert!(waited < Duration::from_secs(4), "the pause showed after {waited:?}");
            assert_eq!(app.act(&token, id, "resume").await.status, StatusCode::OK);
        }
        if state == "finished" {
            break;
        }
    }
    assert!(events.next().await.is_none(), "the stream ends with the finished project");
    let versions: std::collections::BTreeSet<i64> =
        seen.iter().filter(|(_, v)| v["state"] == "running").map(|(_, v)| v["version"].as_i64().unwrap()).collect();
    assert!(versions.len() >= 3, "the running project moved in several events: {versions:?}");
    assert!(seen.iter().any(|(_, v)| v["state"] == "paused"), "the pause was streamed");
    let last = &seen.last().unwrap().1;
    assert!(!last["metrics"].as_array().unwrap().is_empty(), "metrics come with the view: {last}");
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), &token)).await;
    assert_eq!(reply.json()["version"], last["version"], "the last event is the project as GET shows it");
    tokio::time::timeout(Duration::from_secs(30), provider).await.unwrap().unwrap();
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
    assert!(text.contains("retry: 1000"), "the reconnection delay is sent: {text}");
    assert!(
        elapsed >= daig_server::api::events::IDLE_END && elapsed < daig_server::api::events::IDLE_END * 3,
        "the idle stream ended after {elapsed:?}"
    );
}
