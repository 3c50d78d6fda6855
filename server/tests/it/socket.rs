//! The server on a real socket: `run` on port 0, a plain HTTP client, and graceful shutdown.

use std::time::Duration;

use daig_server::AppState;

#[tokio::test]
async fn run_serves_health_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::new(crate::support::settings(dir.path())).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daig_server::run(listener, state, async {
        stopped.await.ok();
    }));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let reply = client.get(format!("http://{addr}/api/health")).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "ok");
    drop(client);

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), server).await.expect("the server did not stop");
    result.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}
