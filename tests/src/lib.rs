//! End-to-end tests that cross crates: the `daig-server` and `daig-provider` programs as processes
//! (`tests/training.rs`, `tests/cli_s3.rs`, the browser tests), started from this crate's copies of the binaries
//! (`src/bin/`), which call the same main functions. The tests of each crate live in that crate.
//!
//! This library is their harness, shared with the benchmarks in `examples/` (`training_bench`, `server_bench`):
//! the processes ([`Programs`], [`Server`], [`Provider`], [`S3Server`]), a small client of the HTTP API
//! ([`Api`]), and what the two read from a running server (its database, `/proc`, `/metrics`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

pub mod abuse;

/// The programs a [`Server`] and its [`Provider`]s run, and how the server is started.
#[derive(Clone, Debug)]
pub struct Programs {
    /// The `daig-server` binary.
    pub server: PathBuf,
    /// The `daig-provider` binary.
    pub provider: PathBuf,
    /// The server's `DAIG_LOG` filter.
    pub server_log: String,
    /// Arguments every server gets, before those of [`Server::start`].
    pub server_args: Vec<String>,
}

/// The [`Programs`] of the end-to-end tests: this crate's `e2e-*` binaries, built by the same `cargo test`
/// (`CARGO_BIN_EXE_*` is set for integration tests, so this is a macro expanded in the test).
#[macro_export]
macro_rules! e2e {
    () => {
        $crate::Programs::e2e(env!("CARGO_BIN_EXE_e2e-daig-server"), env!("CARGO_BIN_EXE_e2e-daig-provider"))
    };
}

impl Programs {
    /// The end-to-end tests' programs (see [`e2e!`]): a verbose server log, and a heartbeat short enough that a
    /// silent provider is noticed within a test, long enough for a busy machine.
    pub fn e2e(server: impl Into<PathBuf>, provider: impl Into<PathBuf>) -> Programs {
        Programs {
            server: server.into(),
            provider: provider.into(),
            server_log: "info,daig_server=debug".into(),
            server_args: vec!["--heartbeat-interval-ms".into(), "1000".into()],
        }
    }

    /// The release binaries `daig-server` and `daig-provider` in `bin_dir`, by default the directory above the
    /// running example's (`target/release/examples/x` -> `target/release`); the server logs warnings only.
    ///
    /// # Errors
    /// When a binary is missing (with the command that builds them).
    pub fn release(bin_dir: Option<&Path>) -> anyhow::Result<Programs> {
        let dir = match bin_dir {
            Some(dir) => dir.to_owned(),
            None => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .context("the example's directory has no parent")?
                .to_owned(),
        };
        let programs = Programs {
            server: dir.join("daig-server"),
            provider: dir.join("daig-provider"),
            server_log: "warn".into(),
            server_args: Vec::new(),
        };
        for bin in [&programs.server, &programs.provider] {
            if !bin.is_file() {
                bail!(
                    "{} is missing: run `cargo build --release -p daig-server -p daig-provider` first \
                     (or `cargo xtask bench training`), or pass --bin-dir",
                    bin.display()
                );
            }
        }
        Ok(programs)
    }
}

/// The checkout the tests run in: the nearest folder at or above the current directory whose `Cargo.toml` is
/// a workspace's (cargo runs tests in their package's folder). Found at run time, never from a path compiled
/// in: with a shared `CARGO_TARGET_DIR`, a test binary built in one clone may run in another.
///
/// # Panics
/// Outside a workspace.
pub fn workspace_root() -> PathBuf {
    let here = std::env::current_dir().expect("the current directory");
    here.ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or_else(|| panic!("no cargo workspace at or above {}", here.display()))
        .to_owned()
}

/// `shared/data/mnist-8k`, searched upward from the workspace; `None` (with a note) outside CI when missing.
pub fn mnist_dir() -> Option<PathBuf> {
    let dir = find_mnist();
    if dir.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have shared/data/mnist-8k beside the clone");
        eprintln!("skipped: no shared/data/mnist-8k above {}", workspace_root().display());
    }
    dir
}

/// `shared/data/mnist-8k` (holding `images.npy`), searched upward from the workspace.
pub fn find_mnist() -> Option<PathBuf> {
    workspace_root()
        .ancestors()
        .map(|dir| dir.join("shared/data/mnist-8k"))
        .find(|dir| dir.join("images.npy").is_file())
}

/// A free loopback port (bound and released).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Installs rustls' ring provider: reqwest is built without a default TLS provider (see the workspace's
/// Cargo.toml). Harmless when done twice.
pub fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `daig-server` process over a data directory, killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    program: PathBuf,
    log_filter: String,
    args: Vec<String>,
}

impl Server {
    /// Starts `programs.server` on a free port with `dir/data` as its data directory and `dir/server.log` as its
    /// log, with `programs.server_args` then `args`, and waits until it answers.
    ///
    /// # Errors
    /// When it does not start or does not answer within 60 s.
    pub async fn start(programs: &Programs, dir: &Path, args: &[String]) -> anyhow::Result<Server> {
        install_tls();
        let mut server = Server {
            addr: free_port()?,
            data_dir: dir.join("data"),
            child: None,
            log: dir.join("server.log"),
            program: programs.server.clone(),
            log_filter: programs.server_log.clone(),
            args: programs.server_args.iter().chain(args).cloned().collect(),
        };
        server.restart().await?;
        Ok(server)
    }

    /// (Re)starts the process on the same port and data directory (appending to the same log), and waits until
    /// it answers.
    ///
    /// # Errors
    /// As [`Server::start`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            .args(["--listen", &self.addr.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.args)
            .env("DAIG_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(reply) = client.get(self.url("/api/health")).send().await
                && reply.status().is_success()
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the server did not start within 60 s ({}):\n{}", self.log.display(), self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no final checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's SQLite database, opened beside it (WAL lets both read).
    ///
    /// # Errors
    /// When it cannot be opened.
    pub async fn db(&self) -> anyhow::Result<sqlx::SqlitePool> {
        open_db(&self.data_dir).await
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's resident memory in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        rss_mib(&format!("/proc/{}/status", self.pid()?))
    }

    /// The CPU seconds the server has used.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(&format!("/proc/{}/stat", self.pid()?))
    }

    /// The Prometheus exposition of `/metrics`.
    ///
    /// # Errors
    /// When the request fails.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(self.url("/metrics")).await?.error_for_status()?.text().await?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The SQLite database of a server's data directory.
///
/// # Errors
/// When it cannot be opened.
pub async fn open_db(data_dir: &Path) -> anyhow::Result<sqlx::SqlitePool> {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("daig.sqlite"));
    Ok(sqlx::SqlitePool::connect_with(options).await?)
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat` (in clock ticks of 1/100 s, the
/// usual `USER_HZ`).
pub fn cpu_secs(stat_file: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_file).ok()?;
    // Fields after the command (which may hold spaces) in parentheses: state is the 3rd, utime the 14th.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory in MiB, from `/proc/<pid>/status`.
pub fn rss_mib(status_file: &str) -> Option<f64> {
    let text = std::fs::read_to_string(status_file).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The value of the sample named `series` (name and labels exactly as exposed) in a Prometheus text exposition;
/// 0 when absent (a counter never incremented is not exposed).
pub fn prometheus(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The contributions to `project` from providers of `backend` (as their `Hello` named it: `Vulkan`, `WebGpu`,
/// `Cpu`) that passed a check by recomputation before they were applied.
///
/// # Panics
/// When the database cannot be read.
pub async fn verified_contributions(server: &Server, project: i64, backend: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM contributions c JOIN providers p ON p.id = c.provider_id
         WHERE c.project_id = ? AND p.backend = ? AND c.verified = 1",
    )
    .bind(project)
    .bind(backend)
    .fetch_one(&server.db().await.expect("the database"))
    .await
    .expect("a count")
}

/// Prints the spread between engines that the server's checks measured (`daig_check_relative_distance`, by
/// backend), for BENCHMARKS.md; and the checks that failed, by `/metrics` text.
pub fn report_check_spread(metrics: &str) -> f64 {
    for line in metrics.lines().filter(|l| l.starts_with("daig_check_relative_distance")) {
        eprintln!("{line}");
    }
    prometheus(metrics, "daig_checks_total{outcome=\"failed\"}")
}

/// A `daig-provider` process on the CPU, killed when dropped.
pub struct Provider {
    child: Child,
    pub log: PathBuf,
}

impl Provider {
    /// Starts `programs.provider` for `project` of `server`, its log `dir/<name>.log` and its cache
    /// `dir/<name>-cache`.
    ///
    /// # Errors
    /// When it does not start.
    pub fn start(
        programs: &Programs,
        server: &Server,
        project: i64,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Provider> {
        let key = dir.join(format!("{name}.key")).display().to_string();
        Provider::start_with(programs, server, project, dir, name, &["--backend", "cpu", "--key-file", &key])
    }

    /// A provider as [`Provider::start`] but with `args` for its backend and key (`--backend gpu --no-key`).
    ///
    /// # Errors
    /// When it does not start.
    pub fn start_with(
        programs: &Programs,
        server: &Server,
        project: i64,
        dir: &Path,
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<Provider> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&programs.provider)
            .args(["--server", &server.url(""), "--project", &project.to_string(), "--quiet"])
            .arg("--cache-dir")
            .arg(dir.join(format!("{name}-cache")))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", programs.provider.display()))?;
        Ok(Provider { child, log })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `limit` for the process to exit by itself (e.g. told that its project finished).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Provider::wait`] for a test: the exit status.
    ///
    /// # Panics
    /// With the provider's log when it does not exit within `limit`.
    pub fn expect_exit(&mut self, limit: Duration) -> ExitStatus {
        self.wait(limit).unwrap_or_else(|| panic!("the provider did not exit: {}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
    /// Signs `name` up, logs in and creates an API token.
    ///
    /// # Errors
    /// When a request fails or is refused.
    pub async fn sign_up(server: &Server, name: &str) -> anyhow::Result<Api> {
        Api::sign_up_at(&server.url(""), name, None).await
    }

    /// Signs `name` up at the server at `base`, logs in and creates an API token, every request of this client
    /// sent from `local` when given (a loopback address other than 127.0.0.1 looks like another client, with its
    /// own log-in rate limit).
    ///
    /// # Errors
    /// When a request fails or is refused.
    pub async fn sign_up_at(base: &str, name: &str, local: Option<std::net::IpAddr>) -> anyhow::Result<Api> {
        install_tls();
        let client = reqwest::Client::builder().local_address(local).build()?;
        let base = base.to_owned();
        let password = "correct horse battery";
        let user = json!({"username": name, "email": format!("{name}@example.org"), "password": password});
        let reply = client.post(format!("{base}/api/users")).json(&user).send().await?;
        if reply.status() != 201 {
            bail!("sign-up: {} {}", reply.status(), reply.text().await?);
        }
        let login = json!({"login": name, "password": password});
        let reply = client.post(format!("{base}/api/session")).json(&login).send().await?.error_for_status()?;
        let cookies: Vec<String> = reply
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
            .collect();
        let csrf = reply.json::<Value>().await?["csrf_token"].as_str().context("no csrf_token")?.to_owned();
        let reply = client
            .post(format!("{base}/api/tokens"))
            .header("cookie", cookies.join("; "))
            .header("x-csrf-token", csrf)
            .json(&json!({"name": name}))
            .send()
            .await?
            .error_for_status()?;
        let token = reply.json::<Value>().await?["token"].as_str().context("no token")?.to_owned();
        Ok(Api { client, base, token })
    }

    /// `GET path` as JSON.
    ///
    /// # Errors
    /// When the request fails or the status is not a success.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let reply = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?;
        let status = reply.status();
        if !status.is_success() {
            bail!("GET {path}: {status} {}", reply.text().await?);
        }
        Ok(reply.json().await?)
    }

    /// `GET path` as bytes.
    ///
    /// # Errors
    /// When the request fails or the status is not a success.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let reply = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?;
        let status = reply.status();
        if !status.is_success() {
            bail!("GET {path}: {status} {}", reply.text().await?);
        }
        Ok(reply.bytes().await?.to_vec())
    }

    /// `POST path` with a JSON body; the JSON answer.
    ///
    /// # Errors
    /// When the request fails or the status is not a success.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let reply = self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body).send().await?;
        let status = reply.status();
        let text = reply.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Uploads the `part` (`features` or `labels`) of project `id`'s dataset; the JSON answer.
    ///
    /// # Errors
    /// When the request fails or the status is not a success.
    pub async fn upload(&self, id: i64, part: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
        let reply = self
            .client
            .put(format!("{}/api/projects/{id}/dataset/{part}", self.base))
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await?;
        let status = reply.status();
        let text = reply.text().await?;
        if !status.is_success() {
            bail!("upload of {part}: {status} {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Creates a project of `model` and `settings` with the dataset `(features, labels)` (both `.npy`), not
    /// started: its id.
    ///
    /// # Errors
    /// When a request fails or is refused.
    pub async fn project(
        &self,
        model: &Value,
        settings: &Value,
        features: Vec<u8>,
        labels: Vec<u8>,
    ) -> anyhow::Result<i64> {
        let body = json!({"name": "bench", "model": model, "settings": settings});
        let id = self.post("/api/projects", &body).await?["id"].as_i64().context("no project id")?;
        self.upload(id, "features", features).await?;
        self.upload(id, "labels", labels).await?;
        Ok(id)
    }

    /// A project named `mnist` with the MNIST MLP and the MNIST data in `mnist`, started: its id.
    ///
    /// # Errors
    /// When a file cannot be read, or a request fails or is refused.
    pub async fn mnist_project(&self, mnist: &Path, settings: Value) -> anyhow::Result<i64> {
        let body = json!({"name": "mnist", "model": mnist_model(), "settings": settings});
        let id = self.post("/api/projects", &body).await?["id"].as_i64().context("no project id")?;
        self.upload(id, "features", std::fs::read(mnist.join("images.npy"))?).await?;
        self.upload(id, "labels", std::fs::read(mnist.join("labels.npy"))?).await?;
        self.post(&format!("/api/projects/{id}/start"), &json!({})).await?;
        Ok(id)
    }

    /// Polls project `id` until `done` holds, at most `limit`: its last view.
    ///
    /// # Errors
    /// When a request fails, or after `limit`.
    pub async fn wait_until(
        &self,
        id: i64,
        limit: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let view = self.get(&format!("/api/projects/{id}")).await?;
            if done(&view) {
                return Ok(view);
            }
            if start.elapsed() >= limit {
                bail!("project {id}: no {what} after {limit:?}: {view}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The MNIST MLP: 784 inputs, 64 hidden units (ReLU), 10 classes.
pub fn mnist_model() -> Value {
    json!({"input_shape": [784], "layers": [{"type": "dense", "units": 64, "activation": "relu"},
                                              {"type": "dense", "units": 10}], "loss": "cross_entropy"})
}

/// Asserts that every batch of every epoch was applied exactly once, from the server's records.
///
/// # Panics
/// When one was not, or the database cannot be read.
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

/// An `s3s-fs` server on a free local port, killed when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    _data: tempfile::TempDir,
}

pub const S3_ACCESS_KEY: &str = "daig-test-key";
pub const S3_SECRET_KEY: &str = "daig-test-secret";

impl S3Server {
    /// Starts one; `None` (after a note) without `s3s-fs` on `PATH` outside CI.
    ///
    /// # Panics
    /// Without `s3s-fs` in CI, or when it does not start.
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
        let port = free_port().unwrap().port();
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
    ///
    /// # Panics
    /// When the file cannot be written.
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
