//! The log-in and sign-up rate limit, the global concurrency limit, and the budgets of dataset uploads.

use axum::http::{Method, StatusCode, header};
use serde_json::json;

use crate::support::{TestApp, json_request};

#[tokio::test]
async fn log_in_is_rate_limited_per_ip_with_retry_after() {
    let app = TestApp::with(|s| {
        s.auth_rate_burst = 2;
        s.auth_rate_per_minute = 1;
    })
    .await;
    let attempt = || json_request(Method::POST, "/api/session", &json!({"login": "nobody", "password": "whatever1"}));
    assert_eq!(app.send(attempt()).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.send(attempt()).await.status, StatusCode::UNAUTHORIZED);
    let limited = app.send(attempt()).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error_code(), "rate_limited");
    let retry_after: u64 = limited.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // Sign-up shares the bucket; another address has its own.
    let sign_up = json_request(
        Method::POST,
        "/api/users",
        &json!({"username": "ada", "email": "a@b.co", "password": "12345678"}),
    );
    assert_eq!(app.send(sign_up).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.send_from(attempt(), "198.51.100.7:1").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forwarded_for_is_used_only_when_trusted() {
    let app = TestApp::with(|s| {
        s.auth_rate_burst = 1;
        s.auth_rate_per_minute = 1;
        s.trust_forwarded_for = true;
    })
    .await;
    let attempt = |ip: &str| {
        let mut r = json_request(Method::POST, "/api/session", &json!({"login": "nobody", "password": "whatever1"}));
        r.headers_mut().insert("x-forwarded-for", format!("203.0.113.9, {ip}").parse().unwrap());
        r
    };
    assert_eq!(app.send(attempt("10.0.0.1")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.send(attempt("10.0.0.1")).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.send(attempt("10.0.0.2")).await.status, StatusCode::UNAUTHORIZED);

    let untrusting = TestApp::with(|s| {
        s.auth_rate_burst = 1;
        s.auth_rate_per_minute = 1;
    })
    .await;
    assert_eq!(untrusting.send(attempt("10.0.0.1")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(untrusting.send(attempt("10.0.0.2")).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed_with_503() {
    let app = TestApp::with(|s| s.concurrency_limit = 1).await;
    // Hold the only permit, as a request in flight would.
    let permit = app.state.concurrency().acquire_owned().await.unwrap();
    let reply = app.send(crate::support::request(Method::GET, "/api/health")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "overloaded");
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    drop(permit);
    assert_eq!(app.send(crate::support::request(Method::GET, "/api/health")).await.status, StatusCode::OK);
}

/// A dataset upload over a real socket that sends its headers (announcing `length` bytes) and then nothing.
async fn silent_upload(addr: std::net::SocketAddr, token: &str, project: i64) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /api/projects/{project}/dataset/features HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The status line and body of the response on `stream`.
async fn response(mut stream: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                text.extend_from_slice(&buf[..n]);
                if text.windows(4).any(|w| w == b"\r\n\r\n") && text.ends_with(b"}") {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_uploads_take_no_request_permit_are_bounded_per_account_and_time_out_leaving_nothing() {
    let app = TestApp::with(|s| {
        s.concurrency_limit = 2;
        s.max_uploads_per_account = 2;
        s.upload_idle_timeout_ms = 800;
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(daig_server::run(listener, app.state.clone(), std::future::pending()));
    let (_, ada) = app.user_with_token("ada").await;
    let id = app.small_project(&ada, json!({})).await;
    // As many silent uploads as the global limit has permits: before, they took them all.
    let silent = [silent_upload(addr, &ada, id).await, silent_upload(addr, &ada, id).await];
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let health = app.send(crate::support::request(Method::GET, "/api/health")).await;
    assert_eq!(health.status, StatusCode::OK, "other requests are served meanwhile");
    // A third upload of the same account is refused at once, naming the budget; another account's goes on.
    let (features, _) = crate::support::small_dataset(40, 3);
    let third = app.upload(&ada, id, "features", features.clone()).await;
    assert_eq!((third.status, third.error_code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "too_many_uploads"));
    assert!(third.json()["error"]["message"].as_str().unwrap().contains("2 uploads"), "{}", third.text());
    let (_, bob) = app.user_with_token("bob").await;
    let bobs = app.small_project(&bob, json!({})).await;
    assert_eq!(app.upload(&bob, bobs, "features", features.clone()).await.status, StatusCode::OK);
    // The silent ones are answered 408 once they have sent nothing for the idle timeout, and leave no file.
    for stream in silent {
        let text = response(stream).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("upload_stalled"), "{text}");
    }
    let dir = app.data_dir().join("uploads").join(id.to_string());
    let left: Vec<_> =
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "files left by the stalled uploads: {left:?}");
    // Their places are free again.
    assert_eq!(app.upload(&ada, id, "features", features).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_client_goes_away_leaves_no_file() {
    let app = TestApp::with(|s| s.upload_idle_timeout_ms = 60_000).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(daig_server::run(listener, app.state.clone(), std::future::pending()));
    let (_, ada) = app.user_with_token("ada").await;
    let id = app.small_project(&ada, json!({})).await;
    let dir = app.data_dir().join("uploads").join(id.to_string());
    let files = || std::fs::read_dir(&dir).map(|d| d.flatten().count()).unwrap_or(0);
    let mut stream = silent_upload(addr, &ada, id).await;
    {
        use tokio::io::AsyncWriteExt as _;
        stream.write_all(&[0u8; 1000]).await.unwrap();
    }
    let start = std::time::Instant::now();
    while files() == 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "the upload never started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(stream);
    while files() > 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "the upload's file was left behind");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_finish_a_request_head_is_disconnected_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = TestApp::with(|s| s.header_read_timeout_ms = 500).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(daig_server::run(listener, app.state.clone(), std::future::pending()));
    // Every way of stalling before the head is complete: nothing sent, half a request line, a request line
    // and some headers trickled, a head missing only its final blank line.
    let stalls: [&[u8]; 4] = [
        b"",
        b"GET /api/hea",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n",
    ];
    let mut clients = Vec::new();
    for stall in stalls {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(stall).await.unwrap();
        clients.push((stall, stream));
    }
    // A trickler: one more header byte every 100 ms never completes the head either.
    let trickler = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /api/health HTTP/1.1\r\n").await.unwrap();
        let started = std::time::Instant::now();
        for byte in b"X-Slow: ".iter().cycle() {
            if stream.write_all(&[*byte]).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if started.elapsed() > std::time::Duration::from_secs(10) {
                break;
            }
        }
        started.elapsed()
    });
    let started = std::time::Instant::now();
    for (stall, mut stream) in clients {
        let mut buf = [0u8; 1024];
        // Closed by the server: end of stream (possibly after an error response) or a reset.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a client stalled after {:?} still holds its connection",
            String::from_utf8_lossy(stall)
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "closed after {:?}", started.elapsed());
    let trickled = trickler.await.unwrap();
    assert!(trickled < std::time::Duration::from_secs(5), "a trickling head held its connection for {trickled:?}");
    // A client that sends its head in time is served over the same listener.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
