//! The server and native providers as processes, and a small HTTP client of the API.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `shared/data/mnist-8k`, searched upward from this crate; `None` (with a note) outside CI when missing.
pub fn mnist_dir() -> Option<PathBuf> {
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir =
        start.ancestors().map(|dir| dir.join("shared/data/mnist-8k")).find(|dir| dir.join("images.npy").is_file());
    if dir.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have shared/data/mnist-8k beside the clone");
        eprintln!("skipped: no shared/data/mnist-8k above {}", env!("CARGO_MANIFEST_DIR"));
    }
    dir
}

/// A free loopback port (bound and released).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A `daig-server` process over a data directory.
pub struct Server {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[]).await
    }

    /// Like [`Server::start`], with more command-line arguments.
    pub async fn start_with(dir: &Path, args: &[String]) -> Server {
        // reqwest is built without a default TLS provider (see the workspace's Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut server = Server {
            addr: free_port(),
            data_dir: dir.join("data"),
            child: None,
            log: dir.join("server.log"),
            args: args.to_vec(),
        };
        server.restart().await;
        server
    }

    /// (Re)starts the process on the same port and data directory.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_e2e-daig-server"))
            .args(["--listen", &self.addr.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            // Short enough that a silent provider is noticed within a test, long enough for a busy machine.
            .args(["--heartbeat-interval-ms", "1000"])
            .args(&self.args)
            .env("DAIG_LOG", "info,daig_server=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the server");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(reply) = client.get(self.url("/api/health")).send().await
                && reply.status().is_success()
            {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the server did not start: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no final checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's SQLite database, opened beside it (WAL lets both read).
    pub async fn db(&self) -> sqlx::SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir.join("daig.sqlite"));
        sqlx::SqlitePool::connect_with(options).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `daig-provider` process on the CPU.
pub struct Provider {
    child: Child,
    pub log: PathBuf,
}

impl Provider {
    pub fn start(server: &Server, project: i64, dir: &Path, name: &str) -> Provider {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_e2e-daig-provider"))
            .args(["--server", &server.url(""), "--project", &project.to_string(), "--backend", "cpu", "--quiet"])
            .arg("--cache-dir")
            .arg(dir.join(format!("{name}-cache")))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start a provider");
        Provider { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "the provider did not exit: {}",
                std::fs::read_to_string(&self.log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An API client with a bearer token.
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    /// Signs `name` up, logs in and creates a token.
    pub async fn sign_up(server: &Server, name: &str) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let base = server.url("");
        let password = "correct horse battery";
        let reply = client
            .post(format!("{base}/api/users"))
            .json(&json!({"username": name, "email": format!("{name}@example.org"), "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201, "{}", reply.text().await.unwrap());
        let reply = client
            .post(format!("{base}/api/session"))
            .json(&json!({"login": name, "password": password}))
            .send()
            .await
            .unwrap();
        let cookies: Vec<String> = reply
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect();
        let csrf = reply.json::<Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_owned();
        let reply = client
            .post(format!("{base}/api/tokens"))
            .header("cookie", cookies.join("; "))
            .header("x-csrf-token", csrf)
            .json(&json!({"name": "e2e"}))
            .send()
            .await
            .unwrap();
        let token = reply.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
        Api { client, base, token }
    }

    pub async fn get(&self, path: &str) -> Value {
        let reply = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(reply.status().is_success(), "GET {path}: {}", reply.status());
        reply.json().await.unwrap()
    }

    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let reply = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(reply.status().is_success(), "GET {path}: {}", reply.status());
        reply.bytes().await.unwrap().to_vec()
    }

    pub async fn post(&self, path: &str, body: &Value) -> Value {
        let reply =
            self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body).send().await.unwrap();
        let status = reply.status();
        let body: Value = reply.json().await.unwrap();
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    pub async fn upload(&self, id: i64, part: &str, file: &Path) -> Value {
        let bytes = std::fs::read(file).unwrap();
        let reply = self
            .client
            .put(format!("{}/api/projects/{id}/dataset/{part}", self.base))
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = reply.status();
        let body: Value = reply.json().await.unwrap();
        assert!(status.is_success(), "upload {part}: {status} {body}");
        body
    }

    /// A project with the MNIST MLP and the MNIST data, started.
    pub async fn mnist_project(&self, mnist: &Path, settings: Value) -> i64 {
        let model = json!({"input_shape": [784], "layers": [{"type": "dense", "units": 64, "activation": "relu"},
                                                              {"type": "dense", "units": 10}], "loss": "cross_entropy"});
        let id =
            self.post("/api/projects", &json!({"name": "mnist", "model": model, "settings": settings})).await["id"]
                .as_i64()
                .unwrap();
        self.upload(id, "features", &mnist.join("images.npy")).await;
        self.upload(id, "labels", &mnist.join("labels.npy")).await;
        self.post(&format!("/api/projects/{id}/start"), &json!({})).await;
        id
    }

    /// Polls project `id` until `done` holds, at most `limit`.
    pub async fn wait_until(&self, id: i64, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let view = self.get(&format!("/api/projects/{id}")).await;
            if done(&view) {
                return view;
            }
            assert!(start.elapsed() < limit, "project {id}: no {what} after {limit:?}: {view}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every batch of every epoch applied exactly once, from the server's records.
pub async fn assert_exactly_once(db: &sqlx::SqlitePool, id: i64, epochs: i64, batch_size: i64) {
    let shard_sizes: Vec<i64> =
        sqlx::query_scalar("SELECT sample_count FROM shards WHERE project_id = ? AND role = 'train'")
            .bind(id)
            .fetch_all(db)
            .await
            .unwrap();
    let per_epoch: i64 = shard_sizes.iter().map(|n| (n + batch_size - 1) / batch_size).sum();
    let counts: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT epoch, COUNT(*), COUNT(DISTINCT shard * 1000000 + batch) FROM applied_batches WHERE project_id = ?
         GROUP BY epoch ORDER BY epoch",
    )
    .bind(id)
    .fetch_all(db)
    .await
    .unwrap();
    let expected: Vec<(i64, i64, i64)> = (0..epochs).map(|e| (e, per_epoch, per_epoch)).collect();
    assert_eq!(counts, expected, "(epoch, applied batches, distinct batches)");
    let samples: i64 = sqlx::query_scalar("SELECT SUM(samples) FROM contributions WHERE project_id = ?")
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(samples, shard_sizes.iter().sum::<i64>() * epochs, "samples credited");
}

/// An `s3s-fs` server on a free local port, killed when dropped; `None` (after a note) without `s3s-fs` outside CI.
pub struct S3Server {
    child: Child,
    pub port: u16,
    _data: tempfile::TempDir,
}

pub const S3_ACCESS_KEY: &str = "daig-test-key";
pub const S3_SECRET_KEY: &str = "daig-test-secret";

impl S3Server {
    pub fn start() -> Option<S3Server> {
        let available = Command::new("s3s-fs").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if available.is_err() {
            let note = "s3s-fs is not on PATH; install it with \
                        `cargo install s3s-fs --version 0.14.1 --features binary --locked`";
            assert!(std::env::var_os("CI").is_none(), "{note} (CI must run the S3 tests)");
            eprintln!("note: skipping: {note}");
            return None;
        }
        let data = tempfile::tempdir().unwrap();
        let port = free_port().port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not accept connections on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(S3Server { child, port, _data: data })
    }

    /// A server configuration file that keeps objects in `bucket` of this server.
    pub fn config_file(&self, dir: &Path, bucket: &str) -> PathBuf {
        let path = dir.join("daig.toml");
        let toml = format!(
            "[store]\nkind = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"http://127.0.0.1:{}\"\npath_style = true\n\
             create_bucket = true\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\n",
            self.port
        );
        std::fs::write(&path, toml).unwrap();
        path
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
