//! Benchmarks of the management server over loopback, recorded in BENCHMARKS.md:
//!
//! - `upload`: a large MNIST-shaped dataset (u8 features `[n, 28, 28, 1]` as `.npy`, `int64` labels) uploaded
//!   with HTTP PUT and committed (validated and sharded into the local store) end to end, in MB/s, beside
//!   writing the same bytes to a file in the same file system, with and without fsync, in the same run.
//! - `status`: requests per second and latency percentiles of `GET /api/projects/{id}` with a bearer API token,
//!   from a load generator of keep-alive HTTP/1 connections, beside `GET /api/health` in the same run.
//!
//! The server is the library's `run` (the same `app(state)` the binary serves) on a loopback `TcpListener`,
//! with its SQLite file and local object store in a temporary directory, on its own tokio runtime; the load
//! generator has another runtime, so the two share the machine's cores as the flags say.
//!
//! `cargo run --release -p daig-tests --example server_bench -- [all|upload|status] [--upload-mb 300] ...`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use daig_server::{AppState, Settings};
use daig_shared::data::npy;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Which benchmarks: all, upload or status.
    #[arg(default_value = "all")]
    which: String,
    /// Megabytes (10^6 bytes) of features to upload.
    #[arg(long, default_value_t = 300)]
    upload_mb: u64,
    /// Upload runs; the median is reported beside each.
    #[arg(long, default_value_t = 3)]
    upload_runs: usize,
    /// Seconds each status endpoint is loaded, after one second of warm-up.
    #[arg(long, default_value_t = 10)]
    status_secs: u64,
    /// Concurrent keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Worker threads of the server's runtime (default: one per core, as the binary has).
    #[arg(long)]
    server_threads: Option<usize>,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Where the temporary directory goes (the data directory and the baseline files): choose the file system.
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !["all", "upload", "status"].contains(&args.which.as_str()) {
        bail!("unknown benchmark {:?}: use all, upload or status", args.which);
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let server_threads = args.server_threads.unwrap_or(cores);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| text.lines().find(|l| l.starts_with("model name")).map(|l| l.to_owned()))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let tmp = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    println!(
        "machine: {cores} cores ({cpu}); server runtime {server_threads} worker threads, load generator {} \
         (release build: {}); data in {}",
        args.client_threads,
        !cfg!(debug_assertions),
        tmp.path().display()
    );

    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(server_threads).enable_all().build()?;
    let settings = Settings {
        // The benchmark signs up and logs in once; no limit should get in the way of the load.
        auth_rate_burst: 1000,
        auth_rate_per_minute: 1000,
        concurrency_limit: 4096,
        max_upload_bytes: 8 << 30,
        request_timeout_ms: 600_000,
        ..Settings::with_data_dir(tmp.path().join("data"))
    };
    settings.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (addr, stop) = server_rt.block_on(async {
        let state = AppState::new(settings).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(daig_server::run(listener, state, async move {
            let _ = stopped.await;
        }));
        anyhow::Ok((addr, stop))
    })?;

    let client_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads).enable_all().build()?;
    client_rt.block_on(async {
        let token = sign_up(addr).await?;
        if args.which != "status" {
            upload_bench(addr, &token, &args, tmp.path()).await?;
        }
        if args.which != "upload" {
            status_bench(addr, &token, &args).await?;
        }
        anyhow::Ok(())
    })?;
    let _ = stop.send(());
    drop(client_rt);
    drop(server_rt);
    Ok(())
}

/// One keep-alive HTTP/1 connection to the server.
struct Client {
    sender: SendRequest<Full<Bytes>>,
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("{}: not JSON", self.status))
    }

    fn expect(self, status: StatusCode) -> anyhow::Result<Self> {
        if self.status != status {
            bail!("expected {status}, got {}: {}", self.status, String::from_utf8_lossy(&self.body));
        }
        Ok(self)
    }
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the connection closes; its errors show up in the requests.
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut request = Request::builder().method(method).uri(path).header("host", "127.0.0.1");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    async fn json(&mut self, method: Method, path: &str, auth: &[(&str, &str)], body: &Value) -> anyhow::Result<Reply> {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(auth);
        self.send(method, path, &headers, Bytes::from(body.to_string())).await
    }
}

/// Signs up a user, logs in and creates an API token: the token.
async fn sign_up(addr: SocketAddr) -> anyhow::Result<String> {
    let mut client = Client::connect(addr).await?;
    let user = json!({"username": "bench", "email": "bench@example.org", "password": "correct horse"});
    client.json(Method::POST, "/api/users", &[], &user).await?.expect(StatusCode::CREATED)?;
    let login = json!({"login": "bench", "password": "correct horse"});
    let reply = client.json(Method::POST, "/api/session", &[], &login).await?.expect(StatusCode::OK)?;
    let cookies: Vec<String> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect();
    let cookie = cookies.join("; ");
    let csrf = reply.json()?["csrf_token"].as_str().context("no csrf_token")?.to_owned();
    let auth = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let reply = client.json(Method::POST, "/api/tokens", &auth, &json!({"name": "bench"})).await?;
    let token = reply.expect(StatusCode::CREATED)?.json()?["token"].as_str().context("no token")?.to_owned();
    Ok(token)
}

/// Creates a project for 28x28x1 inputs and 10 classes: its id.
async fn create_project(client: &mut Client, bearer: &str) -> anyhow::Result<i64> {
    let body = json!({
        "name": "bench",
        "model": {
            "input_shape": [28, 28, 1],
            "layers": [{"type": "flatten"}, {"type": "dense", "units": 10}],
            "loss": "cross_entropy"
        }
    });
    let reply = client.json(Method::POST, "/api/projects", &[("authorization", bearer)], &body).await?;
    reply.expect(StatusCode::CREATED)?.json()?["id"].as_i64().context("no project id")
}

/// Seconds to write `bytes` to a new file in `dir` in 1 MiB writes, with or without fsync at the end; the file
/// is synced (untimed) and removed afterwards, so that its dirty pages do not slow what comes next.
fn write_file(dir: &Path, parts: &[&[u8]], fsync: bool) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let path = dir.join("baseline.bin");
    let start = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    for part in parts {
        for chunk in part.chunks(1 << 20) {
            file.write_all(chunk)?;
        }
    }
    if fsync {
        file.sync_all()?;
    }
    let secs = start.elapsed().as_secs_f64();
    file.sync_all()?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(secs)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn upload_bench(addr: SocketAddr, token: &str, args: &Args, dir: &Path) -> anyhow::Result<()> {
    let sample_bytes = 28 * 28;
    let n = usize::try_from(args.upload_mb * 1_000_000)? / sample_bytes;
    // Deterministic, not constant: a pattern that changes from sample to sample.
    let data: Vec<u8> =
        (0..n * sample_bytes).map(|i| ((i / sample_bytes) * 7 + (i % sample_bytes) * 13) as u8).collect();
    let features = Bytes::from(npy::to_vec(&[n, 28, 28, 1], &data)?);
    drop(data);
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let labels = Bytes::from(npy::to_vec(&[n], &labels)?);
    let total_mb = (features.len() + labels.len()) as f64 / 1e6;
    println!(
        "\nupload: {n} samples of 28x28x1 u8 ({:.1} MB of features .npy, {:.1} MB of labels), {} runs",
        features.len() as f64 / 1e6,
        labels.len() as f64 / 1e6,
        args.upload_runs
    );
    let bearer = format!("Bearer {token}");
    let auth = ("authorization", bearer.as_str());
    let octets = ("content-type", "application/octet-stream");
    let mut client = Client::connect(addr).await?;
    let (mut e2e, mut put, mut commit, mut synced, mut unsynced) = (vec![], vec![], vec![], vec![], vec![]);
    for run in 1..=args.upload_runs {
        let synced_secs = write_file(dir, &[&features, &labels], true)?;
        let id = create_project(&mut client, &bearer).await?;
        let start = Instant::now();
        let path = format!("/api/projects/{id}/dataset/features");
        client.send(Method::PUT, &path, &[auth, octets], features.clone()).await?.expect(StatusCode::OK)?;
        let uploaded = Instant::now();
        let path = format!("/api/projects/{id}/dataset/labels");
        let reply = client.send(Method::PUT, &path, &[auth, octets], labels.clone()).await?.expect(StatusCode::OK)?;
        let end = Instant::now();
        let dataset = &reply.json()?["dataset"];
        let unsynced_secs = write_file(dir, &[&features, &labels], false)?;
        let e2e_secs = (end - start).as_secs_f64();
        let put_secs = (uploaded - start).as_secs_f64();
        let commit_secs = (end - uploaded).as_secs_f64();
        println!(
            "  run {run}: end to end {:.1} MB/s ({e2e_secs:.2} s: features PUT {put_secs:.2} s, labels PUT + commit \
             {commit_secs:.2} s, {} + {} shards); file write {:.1} MB/s with fsync, {:.1} MB/s without",
            total_mb / e2e_secs,
            dataset["train_shards"],
            dataset["validation_shards"],
            total_mb / synced_secs,
            total_mb / unsynced_secs,
        );
        e2e.push(total_mb / e2e_secs);
        put.push(features.len() as f64 / 1e6 / put_secs);
        commit.push(total_mb / commit_secs);
        synced.push(total_mb / synced_secs);
        unsynced.push(total_mb / unsynced_secs);
        client.send(Method::DELETE, &format!("/api/projects/{id}"), &[auth], Bytes::new()).await?;
    }
    let (e2e, put, commit) = (median(&mut e2e), median(&mut put), median(&mut commit));
    let (synced, unsynced) = (median(&mut synced), median(&mut unsynced));
    println!(
        "  median: end to end {e2e:.1} MB/s; features PUT alone {put:.1} MB/s; commit (validate + shard + store) {commit:.1} MB/s"
    );
    println!("  median: file write with fsync {synced:.1} MB/s, without {unsynced:.1} MB/s");
    println!("  ratio end to end / file write: {:.2} (with fsync), {:.2} (without)", e2e / synced, e2e / unsynced);
    Ok(())
}

/// What one endpoint under load gave.
struct Load {
    requests: u64,
    secs: f64,
    latencies_us: Histogram<u64>,
}

/// Loads `path` with `connections` keep-alive connections for `secs` seconds (after one second of warm-up, not
/// recorded), recording every request's latency.
async fn load(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    connections: usize,
    secs: u64,
) -> anyhow::Result<Load> {
    let warm_up = Instant::now() + Duration::from_secs(1);
    let end = warm_up + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let path = path.to_owned();
        let bearer = bearer.map(str::to_owned);
        let mut client = Client::connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let auth: Vec<(&str, &str)> = bearer.as_deref().map(|b| ("authorization", b)).into_iter().collect();
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let reply = client.send(Method::GET, &path, &auth, Bytes::new()).await?;
                if reply.status != StatusCode::OK {
                    bail!("{path}: {} {}", reply.status, String::from_utf8_lossy(&reply.body));
                }
                if start >= warm_up {
                    latencies_us.saturating_record(start.elapsed().as_micros() as u64);
                }
            }
            anyhow::Ok(latencies_us)
        }));
    }
    let mut latencies_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        latencies_us.add(task.await??)?;
    }
    Ok(Load { requests: latencies_us.len(), secs: secs as f64, latencies_us })
}

async fn status_bench(addr: SocketAddr, token: &str, args: &Args) -> anyhow::Result<()> {
    let bearer = format!("Bearer {token}");
    let mut client = Client::connect(addr).await?;
    let id = create_project(&mut client, &bearer).await?;
    println!(
        "\nstatus: {} keep-alive connections, {} s per endpoint after 1 s of warm-up",
        args.connections, args.status_secs
    );
    let health = load(addr, "/api/health", None, args.connections, args.status_secs).await?;
    let project_path = format!("/api/projects/{id}");
    let project = load(addr, &project_path, Some(&bearer), args.connections, args.status_secs).await?;
    for (name, load) in [("GET /api/health", &health), ("GET /api/projects/{id} (bearer)", &project)] {
        let q = |p: f64| load.latencies_us.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "  {name}: {:.0} requests/s; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            load.requests as f64 / load.secs,
            q(0.5),
            q(0.99),
            q(0.999),
            load.latencies_us.max() as f64 / 1000.0
        );
    }
    println!(
        "  ratio project / health: {:.2} of the requests/s",
        (project.requests as f64 / project.secs) / (health.requests as f64 / health.secs)
    );
    Ok(())
}
