//! The `daig` CLI, run as a process against the server on a real loopback socket, with its configuration in a
//! temporary directory: the whole walk from sign-up to download, and the errors a requestor meets.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daig_server::AppState;
use daig_server::Settings;
use daig_shared::data::npy;
use serde_json::{Value, json};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_daig");
const PASSWORD: &str = "correct horse";

/// The MNIST MLP in DAIG JSON.
const MLP: &str = r#"{
  "input_shape": [784],
  "layers": [
    {"type": "dense", "units": 128, "activation": "relu"},
    {"type": "dense", "units": 10}
  ],
  "loss": "cross_entropy"
}"#;

/// The server on `127.0.0.1:<free port>`, in a runtime of its own, stopped when dropped.
struct Server {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let state = runtime.block_on(AppState::new(settings(dir.path()))).unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(daig_server::run(listener, state.clone(), async {
            stopped.await.ok();
        }));
        Self { runtime, state, url, stop: Some(stop), _dir: dir }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One user of the CLI: a configuration directory of their own.
struct Daig {
    config: TempDir,
    server: String,
}

/// A finished run.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    /// Asserts the exit code and returns stderr.
    #[track_caller]
    fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        assert!(self.stderr.starts_with("error: "), "{self:#?}");
        &self.stderr
    }

    /// Stdout as JSON.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

impl Daig {
    fn new(server: &Server) -> Self {
        Self { config: tempfile::tempdir().unwrap(), server: server.url.clone() }
    }

    /// A user who signed up (and so logged in) as `name`.
    fn signed_up(server: &Server, name: &str) -> Self {
        let daig = Self::new(server);
        let email = format!("{name}@example.org");
        let out = daig.run_with(
            &["--server", &daig.server, "signup", "--username", name, "--email", &email, "--password-stdin"],
            Some(PASSWORD),
            &[],
        );
        assert!(out.ok().contains(&format!("Signed up as {name}")), "{out:#?}");
        daig
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(self.config.path())
            .env("DAIG_CONFIG_DIR", self.config.path())
            .env_remove("DAIG_SERVER")
            .env_remove("DAIG_TOKEN")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None, &[])
    }

    /// Runs `daig args` with `stdin` as standard input and `env` set.
    fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut command = self.command(args);
        command.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().unwrap();
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(format!("{text}\n").as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    fn credentials_path(&self) -> PathBuf {
        self.config.path().join("credentials.toml")
    }

    /// The saved token.
    fn token(&self) -> String {
        let text = std::fs::read_to_string(self.credentials_path()).unwrap();
        let credentials: toml::Table = toml::from_str(&text).unwrap();
        credentials["token"].as_str().unwrap().to_owned()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.config.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Creates a project from the MNIST MLP and returns its id.
    fn create_mlp(&self, extra: &[&str]) -> i64 {
        let model = self.write("mlp.json", MLP.as_bytes());
        let mut args = vec!["--json", "project", "create", "--name", "mnist", "--model", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(&args).json()["id"].as_i64().unwrap()
    }
}

/// The MNIST files, or (outside CI, where they must be present) 100 made-up samples of the same shape.
fn mnist_files(daig: &Daig) -> (PathBuf, PathBuf, &'static str) {
    if let Some(dir) = mnist_dir() {
        return (dir.join("images.npy"), dir.join("labels.npy"), "7,200 training + 800 validation samples");
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have shared/data/mnist-8k beside the clone");
    eprintln!("no shared/data/mnist-8k above {}: uploading 100 made-up samples", manifest_dir().display());
    let pixels: Vec<u8> = (0..100 * 784).map(|i| (i % 251) as u8).collect();
    let labels: Vec<u8> = (0..100).map(|i| (i % 10) as u8).collect();
    let features = daig.write("images.npy", &npy::to_vec::<u8>(&[100, 28, 28], &pixels).unwrap());
    let labels = daig.write("labels.npy", &npy::to_vec::<u8>(&[100], &labels).unwrap());
    (features, labels, "90 training + 10 validation samples")
}

/// Waits for `child` to exit, for at most `limit`.
fn wait_for(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn cli_walks_a_project_from_sign_up_to_download() {
    let server = Server::start();
    let daig = Daig::signed_up(&server, "ada");

    // Logging in again saves a new token, readable by the user only.
    let out = daig.run_with(&["login", "--username", "ada", "--password-stdin"], Some(PASSWORD), &[]);
    assert!(out.ok().contains(&format!("Logged in to {} as ada", server.url)), "{out:#?}");
    let credentials = daig.credentials_path();
    assert!(credentials.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&credentials).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    assert!(daig.token().starts_with("daig_"));
    assert!(daig.run(&["whoami"]).ok().contains("ada <ada@example.org>"));
    assert_eq!(daig.run(&["--json", "whoami"]).json()["username"], "ada");

    // Create, with settings from flags.
    let id = daig.create_mlp(&["--epochs", "3", "--batch-size", "64", "--learning-rate", "0.01"]);
    let shown = daig.run(&["--json", "project", "show", &id.to_string()]).json();
    assert_eq!(shown["settings"]["epochs"], 3);
    assert_eq!(shown["settings"]["batch_size"], 64);
    assert_eq!(shown["settings"]["optimizer"]["method"]["type"], "adam");
    assert!((shown["settings"]["optimizer"]["learning_rate"].as_f64().unwrap() - 0.01).abs() < 1e-6);
    assert_eq!(shown["model"]["params"], 784 * 128 + 128 + 128 * 10 + 10);
    let id_arg = id.to_string();
    let id_arg = id_arg.as_str();

    // Upload, then the status shows the dataset.
    let (features, labels, summary) = mnist_files(&daig);
    let out =
        daig.run(&["upload", id_arg, "--features", features.to_str().unwrap(), "--labels", labels.to_str().unwrap()]);
    assert!(out.ok().contains(summary), "{out:#?}");
    let out = daig.run(&["status", id_arg]);
    assert!(out.ok().contains(": draft") && out.stdout.contains(summary), "{out:#?}");

    // The lifecycle.
    assert!(daig.run(&["start", id_arg]).ok().contains("is now running"));
    assert!(daig.run(&["pause", id_arg]).ok().contains("is now paused"));
    assert!(daig.run(&["resume", id_arg]).ok().contains("is now running"));

    // `status --watch` follows the running project and returns once it is cancelled.
    let mut watch = daig.command(&["status", id_arg, "--watch", "--interval", "0.2"]);
    let mut watch = watch.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(!wait_for(&mut watch, Duration::from_secs(1)), "the watch ended while the project was running");
    assert!(daig.run(&["cancel", id_arg]).ok().contains("is now cancelled"));
    assert!(wait_for(&mut watch, Duration::from_secs(30)), "the watch did not end on cancellation");
    let out = watch.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("running | epoch 1/3"), "{stdout}");
    assert!(stdout.contains(": cancelled"), "{stdout}");

    // A project that is no longer a draft takes no dataset: said before anything is sent.
    let (features, labels) = (features.to_str().unwrap(), labels.to_str().unwrap());
    let run = daig.run(&["upload", id_arg, "--features", features, "--labels", labels]);
    let stderr = run.fails(2);
    let said = format!("project {id} is cancelled: its dataset can change only while it is a draft");
    assert!(stderr.contains(&said), "{stderr}");

    let out = daig.run(&["project", "list"]);
    assert!(out.ok().contains("mnist") && out.stdout.contains("cancelled"), "{out:#?}");
    assert_eq!(daig.run(&["--json", "project", "list"]).json()["projects"].as_array().unwrap().len(), 1);

    // No model yet: the server's message, and nothing written.
    let out_dir = daig.config.path().join("download");
    let out_arg = out_dir.to_str().unwrap();
    let run = daig.run(&["download", id_arg, "--out", out_arg]);
    assert!(run.fails(4).contains("no trained model yet"), "{run:#?}");
    assert!(!out_dir.exists());
    // No provider trains here: the model is put where training stores it.
    let model: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let key = daig_server::project::keys::model_key(id);
    server.runtime.block_on(server.state.store().put(&key, bytes::Bytes::from(model.clone()))).unwrap();
    let out = daig.run(&["download", id_arg, "--out", out_arg]);
    assert!(out.ok().contains("model.safetensors"), "{out:#?}");
    assert_eq!(std::fs::read(out_dir.join("model.safetensors")).unwrap(), model);
    let spec =
        server.runtime.block_on(daig_server::db::projects::get(server.state.db(), id)).unwrap().unwrap().model_json;
    assert_eq!(std::fs::read_to_string(out_dir.join("model.json")).unwrap(), spec);
    let metrics: Value = serde_json::from_slice(&std::fs::read(out_dir.join("metrics.json")).unwrap()).unwrap();
    // The history as the server has it (the evaluation of the starting parameters at least).
    let history = server.runtime.block_on(daig_server::training::metrics_history(&server.state, id)).unwrap();
    assert!(!history.is_empty());
    assert_eq!(metrics, serde_json::to_value(history).unwrap());
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 3, "no temporary file is left: {left:?}");

    // Delete.
    assert!(daig.run(&["project", "delete", id_arg]).fails(2).contains("--yes"));
    assert!(daig.run(&["project", "delete", id_arg, "--yes"]).ok().contains("Deleted project"));
    assert!(daig.run(&["project", "show", id_arg]).fails(4).contains("no such project"));

    // Log out: the token is revoked on the server and forgotten here.
    let token = daig.token();
    assert!(daig.run(&["logout"]).ok().contains("Revoked the token"));
    assert!(!credentials.exists());
    assert!(daig.run(&["whoami"]).fails(3).contains("not logged in"));
    let run = daig.run_with(&["--server", &server.url, "whoami"], None, &[("DAIG_TOKEN", &token)]);
    assert!(run.fails(3).contains("daig login"), "{run:#?}");
}

#[test]
fn cli_create_prints_every_problem_the_server_lists() {
    let server = Server::start();
    let daig = Daig::signed_up(&server, "ada");
    let model = json!({"input_shape": [4], "layers": [{"type": "dense", "units": 0},
                       {"type": "conv2d", "filters": 3, "kernel_size": 3}], "loss": "cross_entropy"});
    let model = daig.write("bad.json", model.to_string().as_bytes());
    let args = ["project", "create", "--name", "", "--model", model.to_str().unwrap(), "--batch-size", "0"];
    let out = daig.run(&[&args[..], &["--epochs", "0", "--validation-fraction", "0.9"]].concat());
    let stderr = out.fails(1);
    for line in [
        "error: the project is invalid: 6 problem(s), listed in details",
        "  - model layer 0 (dense), units: ",
        "  - model layer 1 (conv2d): ",
        "  - name: must be 1 to 100 characters",
        "  - settings.batch_size: must be between 1 and 4096, not 0",
        "  - settings.epochs: must be between 1 and 10000, not 0",
        "  - settings.validation_fraction: must be a number from 0 to 0.5, not 0.9",
    ] {
        assert!(stderr.contains(line), "{line:?} missing from:\n{stderr}");
    }
    assert!(daig.run(&["--json", "project", "list"]).json()["projects"].as_array().unwrap().is_empty());

    // A file that is not JSON is refused before anything is sent.
    let broken = daig.write("broken.json", b"{");
    let run = daig.run(&["project", "create", "--name", "x", "--model", broken.to_str().unwrap()]);
    assert!(run.fails(2).contains("is not valid JSON"), "{run:#?}");
}

#[test]
fn cli_sets_the_sites_of_a_site_key_project() {
    let server = Server::start();
    let daig = Daig::signed_up(&server, "ada");
    let model = json!({"input_shape": [4], "layers": [{"type": "dense", "units": 3}], "loss": "cross_entropy"});
    let model = daig.write("model.json", model.to_string().as_bytes());
    let args = ["--json", "project", "create", "--name", "embedded", "--model", model.to_str().unwrap()];
    let extra = ["--access", "site-key", "--site", "https://Blog.Example.org", "--site", "http://127.0.0.1:9000"];
    let created = daig.run(&[&args[..], &extra[..]].concat()).json();
    assert_eq!(created["settings"]["sites"], json!(["https://blog.example.org", "http://127.0.0.1:9000"]));
    let id = created["id"].to_string();
    let out = daig.run(&["project", "sites", &id, "https://shop.example.org:8443"]);
    assert!(out.ok().contains("takes browsers from: https://shop.example.org:8443"), "{out:#?}");
    let out = daig.run(&["project", "sites", &id, "ftp://nope"]);
    assert!(out.fails(1).contains("settings.sites"), "{out:#?}");
    assert!(daig.run(&["project", "sites", &id]).ok().contains("lists no sites"));
    assert_eq!(daig.run(&["--json", "project", "show", &id]).json()["settings"]["sites"], json!([]));
}

#[test]
fn cli_refuses_forged_and_revoked_tokens_with_a_hint() {
    let server = Server::start();
    let daig = Daig::new(&server);
    let run = daig.run_with(&["--server", &server.url, "whoami"], None, &[]);
    assert!(run.fails(3).contains("not logged in"), "{run:#?}");

    let daig = Daig::signed_up(&server, "ada");
    let run = daig.run_with(&["whoami"], None, &[("DAIG_TOKEN", "daig_forged")]);
    let stderr = run.fails(3);
    assert!(stderr.contains("invalid, revoked or expired"), "{stderr}");
    assert!(stderr.contains("run `daig login`"), "{stderr}");

    // Logging in again revokes the token it replaces.
    let first = daig.token();
    daig.run_with(&["login", "--username", "ada@example.org", "--password-stdin"], Some(PASSWORD), &[]).ok();
    assert_ne!(daig.token(), first);
    let run = daig.run_with(&["project", "list"], None, &[("DAIG_TOKEN", &first)]);
    assert!(run.fails(3).contains("invalid, revoked or expired"), "{run:#?}");
    daig.run(&["project", "list"]).ok();

    // A wrong password.
    let run = daig.run_with(&["login", "--username", "ada", "--password-stdin"], Some("wrong password"), &[]);
    assert!(run.fails(3).contains("wrong login or password"), "{run:#?}");
}

#[test]
fn cli_treats_another_users_project_as_missing() {
    let server = Server::start();
    let ada = Daig::signed_up(&server, "ada");
    let bob = Daig::signed_up(&server, "bob");
    let id = ada.create_mlp(&[]).to_string();
    // Large enough that the server answers before the body could all be sent.
    let features = bob.write("x.npy", &npy::to_vec(&[4096, 784], &vec![0f32; 4096 * 784]).unwrap());
    let features = features.to_str().unwrap();
    for args in [
        vec!["project", "show", &id],
        vec!["status", &id],
        vec!["start", &id],
        vec!["cancel", &id],
        vec!["download", &id],
        vec!["project", "delete", &id, "--yes"],
        vec!["upload", &id, "--features", features, "--labels", features],
    ] {
        let run = bob.run(&args);
        assert!(run.fails(4).contains("no such project"), "{args:?}: {run:#?}");
    }
    assert!(ada.run(&["status", &id]).ok().contains("draft"));
}

#[test]
fn cli_names_a_server_it_cannot_reach() {
    let server = Server::start();
    let daig = Daig::new(&server);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = daig.run_with(&["--server", &url, "whoami"], None, &[("DAIG_TOKEN", "daig_x")]);
    let stderr = run.fails(5);
    assert!(stderr.contains(&format!("cannot reach the DAIG server at {url}")), "{stderr}");
    assert!(stderr.contains("--server"), "{stderr}");

    // HTTPS works as a client (rustls with ring): against this plain-HTTP server it fails the handshake, cleanly.
    let https = server.url.replace("http://", "https://");
    let run = daig.run_with(&["--server", &https, "whoami"], None, &[("DAIG_TOKEN", "daig_x")]);
    let stderr = run.fails(5);
    assert!(stderr.contains(&https) && stderr.contains("TLS handshake failed"), "{stderr}");

    // A URL that is not one is a usage error.
    let run = daig.run_with(&["--server", "ftp://x", "whoami"], None, &[("DAIG_TOKEN", "daig_x")]);
    assert!(run.fails(2).contains("not an http:// or https:// URL"), "{run:#?}");
}

#[test]
fn cli_help_lists_the_commands_and_exit_codes() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for word in
        ["signup", "login", "logout", "whoami", "project", "upload", "start", "status", "download", "Exit codes"]
    {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}

/// Settings for tests: rate limits high enough not to get in the way.
fn settings(dir: &std::path::Path) -> Settings {
    Settings { auth_rate_burst: 10_000, auth_rate_per_minute: 10_000, ..Settings::with_data_dir(dir.join("data")) }
}

/// `shared/data/mnist-8k` above this crate, if the checkout has it.
fn mnist_dir() -> Option<PathBuf> {
    let start = manifest_dir();
    start.ancestors().map(|dir| dir.join("shared/data/mnist-8k")).find(|dir| dir.join("images.npy").is_file())
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
