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

// ---- Hostile datasets and the account quotas ----

/// Serves `app` on a real socket; its address.
async fn serve(app: &TestApp) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(daig_server::run(listener, app.state.clone(), std::future::pending()));
    addr
}

/// Sends `PUT /api/projects/{project}/dataset/{part_and_query}` over a real socket, its body written as it is
/// generated: `chunks` of it, announced by `Content-Length` when `length` is given, else chunked. Writing stops at
/// the first failed write (a server that answers early closes the socket); the status line and body come back.
async fn stream_upload(
    addr: std::net::SocketAddr,
    token: &str,
    project: i64,
    part_and_query: &str,
    length: Option<u64>,
    chunks: impl Iterator<Item = Vec<u8>>,
) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    let head = format!(
        "PUT /api/projects/{project}/dataset/{part_and_query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer \
         {token}\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        let written = match length {
            Some(_) => stream.write_all(&chunk).await,
            None => {
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                stream.write_all(&framed).await
            }
        };
        if written.is_err() {
            break;
        }
    }
    if length.is_none() {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    response(stream).await
}

/// Bytes of the files under `dir`, the database's excepted (it grows with any request).
fn stored_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                stored_bytes(&path)
            } else if e.file_name().to_string_lossy().starts_with("daig.sqlite") {
                0
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// The files under `dir` and its subdirectories, the database's excepted.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else if e.file_name().to_string_lossy().starts_with("daig.sqlite") {
                Vec::new()
            } else {
                vec![path]
            }
        })
        .collect()
}

/// Watches the bytes under `dir` from another thread, every millisecond, until dropped: the most it saw.
struct PeakWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl PeakWatch {
    fn start(dir: std::path::PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(stored_bytes(&dir));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            peak.max(stored_bytes(&dir))
        });
        PeakWatch { stop, thread: Some(thread) }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A zip of deflated entries; for each, `declared` replaces the entry's uncompressed size in both the local and
/// the central directory header when given (a lying directory).
fn deflated_npz(entries: &[(&str, Vec<u8>, Option<u32>)]) -> Vec<u8> {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes, _) in entries {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    let mut out = zip.finish().unwrap().into_inner();
    for (name, bytes, declared) in entries {
        let Some(declared) = declared else { continue };
        let real = u32::try_from(bytes.len()).unwrap().to_le_bytes();
        let file_name = format!("{name}.npy");
        // The uncompressed size sits 22 bytes into a local header and 24 into a central directory header, whose
        // file names start 30 and 46 bytes in.
        for (signature, size_at, name_at) in [(b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)] {
            let start = (0..out.len() - name_at)
                .find(|&i| &out[i..i + 4] == signature && out[i + name_at..].starts_with(file_name.as_bytes()))
                .unwrap();
            assert_eq!(out[start + size_at..start + size_at + 4], real);
            out[start + size_at..start + size_at + 4].copy_from_slice(&declared.to_le_bytes());
        }
    }
    out
}

/// A `.npy` of `shape` and dtype `descr` whose data is `data_bytes` zero bytes (not necessarily what the shape
/// needs).
fn zeros_npy(descr: &str, shape: &[usize], data_bytes: usize) -> Vec<u8> {
    let mut npy = crate::support::npy(descr, shape, &[]);
    npy.resize(npy.len() + data_bytes, 0);
    npy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npz_bombs_are_refused_before_they_are_inflated_and_leave_nothing() {
    let app = TestApp::with(|s| s.max_upload_bytes = 4 << 20).await;
    let (_, ada) = app.user_with_token("ada").await;
    let big = 64 << 20;
    let labels = crate::support::npy("<i8", &[4], &[0u8; 32]);
    let labels_npz = |labels: Vec<u8>| deflated_npz(&[("y", labels, None)]);
    // Each bomb compresses 64 MiB of zeros (or declares them) into a few dozen KiB: the features and labels
    // uploaded, in turn, and what the answer must name.
    let bombs: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "a header declaring 64 MiB of features, the data there to match",
            deflated_npz(&[("x", zeros_npy("<f4", &[big / 16, 4], big), None)]),
            labels_npz(labels.clone()),
            "is too large",
        ),
        (
            "a header whose samples do not fit the model",
            deflated_npz(&[("x", zeros_npy("<f4", &[1 << 16, 5], 5 << 18), None)]),
            labels_npz(labels.clone()),
            "sample shape 5",
        ),
        (
            "a header declaring 4 samples whose entry inflates to 64 MiB",
            deflated_npz(&[("x", zeros_npy("<f4", &[4, 4], big), None)]),
            labels_npz(labels.clone()),
            "is too large",
        ),
        (
            "a header declaring 4 samples whose entry inflates to 3 MiB, within the limit",
            deflated_npz(&[("x", zeros_npy("<f4", &[4, 4], 3 << 20), None)]),
            labels_npz(labels.clone()),
            "unexpected bytes",
        ),
        (
            "a directory and a header declaring 4 samples, the entry inflating to 64 MiB",
            {
                let npy = zeros_npy("<f4", &[4, 4], big);
                let declared = u32::try_from(npy.len() - big + 64).unwrap();
                deflated_npz(&[("x", npy, Some(declared))])
            },
            labels_npz(labels.clone()),
            "not a valid .npz file: the entry 'x.npy'",
        ),
        (
            "labels declaring 64 MiB",
            deflated_npz(&[("x", crate::support::npy("<f4", &[4, 4], &[0u8; 64]), None)]),
            labels_npz(zeros_npy("<i8", &[big / 8], big)),
            "is too large",
        ),
        (
            "labels declaring 4 samples, their entry inflating to 64 MiB past a lying directory",
            deflated_npz(&[("x", crate::support::npy("<f4", &[4, 4], &[0u8; 64]), None)]),
            {
                let npy = zeros_npy("<i8", &[4], big);
                let declared = u32::try_from(npy.len() - big + 32).unwrap();
                deflated_npz(&[("y", npy, Some(declared))])
            },
            "not a valid .npz file: the entry 'y.npy'",
        ),
    ];
    for (what, features, labels, names) in bombs {
        assert!(features.len() + labels.len() < 1 << 20, "{what}: {} bytes", features.len() + labels.len());
        let id = app.small_project(&ada, json!({})).await;
        let watch = PeakWatch::start(app.data_dir());
        let start = std::time::Instant::now();
        let uri = |part: &str| format!("/api/projects/{id}/dataset/{part}?format=npz");
        let send = |part: &str, bytes: Vec<u8>| {
            crate::support::with_token(
                crate::support::raw_request(Method::PUT, &uri(part), "application/octet-stream", bytes),
                &ada,
            )
        };
        let mut reply = app.send(send("features", features.clone())).await;
        if reply.status == StatusCode::OK {
            reply = app.send(send("labels", labels.clone())).await;
        }
        let elapsed = start.elapsed();
        let peak = watch.peak();
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_dataset"),
            "{what}: {}",
            reply.text()
        );
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(names), "{what}: {message}");
        // Nothing was inflated to disk: the server held no more than the two uploads (and their manifests).
        let uploaded = (features.len() + labels.len()) as u64;
        assert!(peak <= uploaded + 4096, "{what}: {peak} bytes on disk at most, for {uploaded} uploaded");
        assert!(elapsed < std::time::Duration::from_secs(5), "{what}: took {elapsed:?}");
        // No spool, no shard, no file of the refused part; features refused at the labels' upload stay pending,
        // as any valid part does, until the dataset is deleted.
        let left: Vec<_> = files_under(&app.data_dir())
            .into_iter()
            .filter(|f| {
                !(reply.text().contains("the labels were refused") && f.to_string_lossy().contains("/features"))
            })
            .collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
        let delete = crate::support::request(Method::DELETE, &format!("/api/projects/{id}/dataset"));
        assert_eq!(app.send(crate::support::with_token(delete, &ada)).await.status, StatusCode::NO_CONTENT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_record_longer_than_the_model_allows_is_refused_naming_its_line() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, ada) = app.user_with_token("ada").await;
    let id = app.small_project(&ada, json!({})).await;
    // A header, two good rows, then a line 4 announced as 20 MiB with no line end, of which only 1 MiB is sent
    // before the client pauses: the server refuses it from what arrived, without waiting for (or storing) the rest.
    let head = b"a,b,c,d,label\n1,2,3,4,0\n5,6,7,8,1\n".to_vec();
    let long = 20u64 << 20;
    let chunk = vec![b'7'; 64 << 10];
    let chunks = std::iter::once(head.clone()).chain(std::iter::repeat_n(chunk, 16));
    let text = stream_upload(addr, &ada, id, "features?format=csv", Some(head.len() as u64 + long), chunks).await;
    assert!(text.starts_with("HTTP/1.1 422"), "{text}");
    assert!(text.contains("invalid_dataset"), "{text}");
    // The model has 4 features: a record of the label and them takes at most 5 fields of 256 bytes and a line end.
    assert!(
        text.contains("CSV line 4 is longer than 1282 bytes, the most a row of the model's columns may take"),
        "{text}"
    );
    let left = files_under(&app.data_dir());
    assert!(left.is_empty(), "left {left:?}");
}

#[tokio::test]
async fn projects_per_account_are_bounded_by_the_project_quota() {
    let app = TestApp::with(|s| s.max_projects_per_account = 2).await;
    let (_, ada) = app.user_with_token("ada").await;
    let first = app.small_project(&ada, json!({})).await;
    app.small_project(&ada, json!({})).await;
    let body = json!({"name": "third", "model": crate::support::small_model()});
    let create = || crate::support::with_token(json_request(Method::POST, "/api/projects", &body), &ada);
    let refused = app.send(create()).await;
    assert_eq!((refused.status, refused.error_code().as_str()), (StatusCode::CONFLICT, "project_quota"));
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("2 projects") && message.contains("project quota"), "{message}");
    assert_eq!(refused.json()["error"]["details"]["limit"], 2);
    // Another account has its own quota; a deleted project frees a place.
    let (_, bob) = app.user_with_token("bob").await;
    app.small_project(&bob, json!({})).await;
    let delete =
        crate::support::with_token(crate::support::request(Method::DELETE, &format!("/api/projects/{first}")), &ada);
    assert_eq!(app.send(delete).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.send(create()).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn running_projects_per_account_are_bounded_by_the_running_quota() {
    let app = TestApp::with(|s| s.max_running_projects_per_account = 1).await;
    let (_, ada) = app.user_with_token("ada").await;
    let first = app.project_with_dataset(&ada).await;
    let second = app.project_with_dataset(&ada).await;
    assert_eq!(app.act(&ada, first, "start").await.status, StatusCode::OK);
    let refused = app.act(&ada, second, "start").await;
    assert_eq!((refused.status, refused.error_code().as_str()), (StatusCode::CONFLICT, "running_quota"));
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("runs 1 projects") && message.contains("running quota"), "{message}");
    assert_eq!(refused.json()["error"]["details"]["limit"], 1);
    // The refused project is still a draft; a paused project does not count, and resuming it counts again.
    let project = app
        .send(crate::support::with_token(
            crate::support::request(Method::GET, &format!("/api/projects/{second}")),
            &ada,
        ))
        .await;
    assert_eq!(project.json()["state"], "draft");
    assert_eq!(app.act(&ada, first, "pause").await.status, StatusCode::OK);
    assert_eq!(app.act(&ada, second, "start").await.status, StatusCode::OK);
    let resumed = app.act(&ada, first, "resume").await;
    assert_eq!((resumed.status, resumed.error_code().as_str()), (StatusCode::CONFLICT, "running_quota"));
    // Another account has its own.
    let (_, bob) = app.user_with_token("bob").await;
    let bobs = app.project_with_dataset(&bob).await;
    assert_eq!(app.act(&bob, bobs, "start").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_dataset_bytes_per_account_are_bounded_by_the_storage_quota() {
    let quota = 64u64 << 10;
    let app = TestApp::with(|s| s.max_dataset_bytes_per_account = quota).await;
    let addr = serve(&app).await;
    let (_, ada) = app.user_with_token("ada").await;
    let first = app.project_with_dataset(&ada).await;
    let used = stored_bytes(&app.data_dir().join("objects"));
    assert!(used > 0 && used < quota / 4, "{used}");
    let room = quota - used;
    let id = app.small_project(&ada, json!({})).await;
    let check_refusal = |text: &str| {
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("\"storage_quota\""), "{text}");
        assert!(
            text.contains(&format!("past {quota} bytes (storage quota; its other projects' datasets take {used})")),
            "{text}"
        );
    };
    let uploads = app.data_dir().join("uploads");

    // Said by Content-Length: refused before a byte is read.
    let text = stream_upload(addr, &ada, id, "features", Some(room + 1), std::iter::empty()).await;
    check_refusal(&text);
    // Not said: stopped once the body passes the room left, its file removed.
    let chunks = std::iter::repeat_n(vec![0u8; 4096], (room / 4096 + 4) as usize);
    let watch = PeakWatch::start(app.data_dir().join("uploads"));
    let text = stream_upload(addr, &ada, id, "features", None, chunks).await;
    check_refusal(&text);
    assert!(watch.peak() <= room + (1 << 20), "more than the room and one write buffer was written");
    assert!(files_under(&uploads).is_empty(), "{:?}", files_under(&uploads));

    // Uploads that fit, whose shards would not: refused at the commit, on the features' header, and nothing kept.
    let n = usize::try_from(room / 16 + 64).unwrap();
    let features = deflated_npz(&[("x", zeros_npy("<f4", &[n, 4], n * 16), None)]);
    let labels = crate::support::npy("<i8", &[n], &vec![0u8; n * 8]);
    assert!(features.len() < 8192);
    let send = |part: &str, format: &str, bytes: Vec<u8>| {
        let uri = format!("/api/projects/{id}/dataset/{part}?format={format}");
        crate::support::with_token(
            crate::support::raw_request(Method::PUT, &uri, "application/octet-stream", bytes),
            &ada,
        )
    };
    assert_eq!(app.send(send("features", "npz", features)).await.status, StatusCode::OK);
    let refused = app.send(send("labels", "npy", labels)).await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "storage_quota"),
        "{}",
        refused.text()
    );
    assert_eq!(refused.json()["error"]["details"], json!({"limit": quota, "used": used}));
    assert!(files_under(&uploads).is_empty(), "{:?}", files_under(&uploads));
    assert_eq!(stored_bytes(&app.data_dir().join("objects")), used, "shards of the refused commit were kept");

    // The project's own dataset does not count against its replacement, and another account has its own quota.
    let (features, labels) = crate::support::small_dataset(40, 3);
    assert_eq!(app.upload(&ada, first, "features", features.clone()).await.status, StatusCode::OK);
    assert_eq!(app.upload(&ada, first, "labels", labels.clone()).await.status, StatusCode::OK);
    let (_, bob) = app.user_with_token("bob").await;
    let bobs = app.small_project(&bob, json!({})).await;
    let text =
        stream_upload(addr, &bob, bobs, "features", Some(room + 1), std::iter::once(vec![0u8; (room + 1) as usize]))
            .await;
    assert!(!text.contains("storage_quota"), "{text}");
}

#[tokio::test]
async fn a_model_over_the_servers_budget_is_refused_with_the_budget_named() {
    // Parameters and operations per sample: refused when the project is created, with the limit named.
    type Budget = fn(&mut daig_server::Settings);
    let cases: [(Budget, &str); 2] = [
        (|s| s.max_project_params = 50, "67 parameters, more than the limit of 50"),
        (|s| s.max_project_flops_per_sample = 40, "more than the limit of 40"),
    ];
    for (budget, named) in cases {
        let app = TestApp::with(budget).await;
        let (_, token) = app.user_with_token("ada").await;
        let body = json!({"name": "small", "model": crate::support::small_model()});
        let reply =
            app.send(crate::support::with_token(json_request(Method::POST, "/api/projects", &body), &token)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
        assert!(reply.text().contains(named), "{named}: {}", reply.text());
    }
    // Server memory, which depends on the dataset too: refused when the project starts, which stays a draft.
    let app = TestApp::with(|s| s.max_project_memory_bytes = 1 << 20).await;
    let (_, token) = app.user_with_token("ada").await;
    let (n, width) = (800, 784);
    let model = json!({"input_shape": [width], "layers": [{"type": "dense", "units": 3}], "loss": "cross_entropy"});
    let body = json!({"name": "wide", "model": model, "settings": {"validation_fraction": 0.5}});
    let id = app.create_project(&token, &body).await["id"].as_i64().unwrap();
    let features: Vec<u8> = (0..n * width).flat_map(|i| ((i % 7) as f32).to_le_bytes()).collect();
    let labels: Vec<u8> = (0..n as i64).flat_map(|i| (i % 3).to_le_bytes()).collect();
    let npy = crate::support::npy;
    assert_eq!(app.upload(&token, id, "features", npy("<f4", &[n, width], &features)).await.status, StatusCode::OK);
    assert_eq!(app.upload(&token, id, "labels", npy("<i8", &[n], &labels)).await.status, StatusCode::OK);
    let started = app.act(&token, id, "start").await;
    assert_eq!((started.status, started.error_code().as_str()), (StatusCode::CONFLICT, "model_budget"));
    let message = started.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("max_project_memory_bytes") && message.contains("1048576"), "{message}");
    let view = app
        .send(crate::support::with_token(crate::support::request(Method::GET, &format!("/api/projects/{id}")), &token))
        .await;
    assert_eq!(view.json()["state"], "draft");
    // A first lease (one batch) that would ask more of a visitor's device than the server allows; a smaller
    // batch of the same model starts.
    let app = TestApp::with(|s| s.max_first_lease_flops = 1_000_000).await;
    let (_, token) = app.user_with_token("ada").await;
    for (batch_size, allowed) in [(4096, false), (4, true)] {
        let id = app.small_project(&token, json!({"batch_size": batch_size, "samples_per_shard": 10})).await;
        let (features, labels) = crate::support::small_dataset(40, 3);
        assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
        assert_eq!(app.upload(&token, id, "labels", labels).await.status, StatusCode::OK);
        let started = app.act(&token, id, "start").await;
        if allowed {
            assert_eq!(started.status, StatusCode::OK, "{}", started.text());
        } else {
            assert_eq!((started.status, started.error_code().as_str()), (StatusCode::CONFLICT, "model_budget"));
            assert!(started.text().contains("max_first_lease_flops"), "{}", started.text());
        }
    }
}
