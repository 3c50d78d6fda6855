//! The requestor dashboard end to end: a `daig-server` process serving the built dashboard (`web/dist`, built by
//! `cargo xtask web`), a native `daig-provider` process, and headless Chromium driven by Playwright through
//! `tests/browser/dashboard.mjs`: sign-up, an invalid model's error at its layer, the MNIST MLP created with the
//! MNIST data, started, its chart advancing live, trained, and its model downloaded; tokens; another user's
//! project, a wrong password and a wrong session. The downloaded file must be the model the API returns.
//!
//! Needs: `web/dist` (built), Node.js, playwright-core in `$DAIG_NODE_MODULES` (default
//! `/root/.cache/daig/npm/node_modules`) and Chromium (`$DAIG_CHROMIUM`, default `/usr/lib/chromium/chromium`).
//! Outside CI a missing one skips the test with a note; under CI (`CI` set) it fails saying what is missing.
//! Screenshots, the downloaded model and `results.json` go to `$DAIG_ARTIFACTS/dashboard` (default
//! `<workspace>/artifacts/dashboard`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daig_tests::{Server, e2e, mnist_dir};
use serde_json::{Value, json};

/// The whole browser run, training included, at most.
const LIMIT: Duration = Duration::from_secs(900);

fn workspace() -> PathBuf {
    daig_tests::workspace_root()
}

/// What the browser test needs, or `None` (after a note) outside CI when something is missing.
struct Needs {
    mnist: PathBuf,
    dist: PathBuf,
    node_modules: PathBuf,
    chromium: PathBuf,
}

fn needs() -> Option<Needs> {
    let mnist = mnist_dir()?;
    let dist = std::env::var_os("DAIG_WEB_DIR").map_or_else(|| workspace().join("web/dist"), PathBuf::from);
    let node_modules = std::env::var_os("DAIG_NODE_MODULES")
        .map_or_else(|| PathBuf::from("/root/.cache/daig/npm/node_modules"), PathBuf::from);
    let chromium =
        std::env::var_os("DAIG_CHROMIUM").map_or_else(|| PathBuf::from("/usr/lib/chromium/chromium"), PathBuf::from);
    let node = Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    let missing = [
        (!dist.join("index.html").is_file())
            .then(|| format!("the built dashboard ({}/index.html; run `cargo xtask web`)", dist.display())),
        node.is_err().then(|| "Node.js (`node` on PATH)".to_owned()),
        (!node_modules.join("playwright-core/package.json").is_file()).then(|| {
            format!(
                "playwright-core in {} (set DAIG_NODE_MODULES; `npm install playwright-core`)",
                node_modules.display()
            )
        }),
        (!chromium.is_file()).then(|| format!("Chromium at {} (set DAIG_CHROMIUM)", chromium.display())),
    ];
    let missing: Vec<String> = missing.into_iter().flatten().collect();
    if !missing.is_empty() {
        let note = format!("the dashboard's browser test needs {}", missing.join(", "));
        assert!(std::env::var_os("CI").is_none(), "{note}");
        eprintln!("skipped: {note}");
        return None;
    }
    Some(Needs { mnist, dist, node_modules, chromium })
}

/// A native provider on the CPU that takes whichever public project is running.
struct AnyProvider(Child);

impl AnyProvider {
    fn start(server: &Server, dir: &Path) -> AnyProvider {
        let log = std::fs::File::create(dir.join("provider.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_e2e-daig-provider"))
            .args(["--server", &server.url(""), "--backend", "cpu", "--quiet", "--cache-dir"])
            .arg(dir.join("provider-cache"))
            .arg("--key-file")
            .arg(dir.join("provider.key"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a provider");
        AnyProvider(child)
    }
}

impl Drop for AnyProvider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requestor_trains_mnist_from_the_dashboard_and_downloads_the_model() {
    let Some(needs) = needs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let artifacts = std::env::var_os("DAIG_ARTIFACTS")
        .map_or_else(|| workspace().join("artifacts"), PathBuf::from)
        .join("dashboard");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    // The browser signs up and logs in several times from one address: more than the default log-in burst.
    let args: Vec<String> = ["--web-dir", &needs.dist.display().to_string(), "--auth-rate-burst", "50"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let server = Server::start(&e2e!(), dir.path(), &args).await.unwrap();
    let _provider = AnyProvider::start(&server, dir.path());
    // Chromium killed rather than closed leaves folders in the temp directory: give it one that is removed.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut browser = Command::new("node")
        .arg(workspace().join("tests/browser/dashboard.mjs"))
        .env("DAIG_URL", server.url(""))
        .env("DAIG_MNIST", &needs.mnist)
        .env("DAIG_ARTIFACTS", &artifacts)
        .env("DAIG_NODE_MODULES", &needs.node_modules)
        .env("DAIG_CHROMIUM", &needs.chromium)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .spawn()
        .expect("run node");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = browser.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = browser.kill();
            panic!("the browser test did not finish in {LIMIT:?}; server log:\n{}", server.log_text());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let results: Value = std::fs::read(artifacts.join("results.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    assert!(
        status.success(),
        "the browser test failed ({status}): {}\nscreenshots in {}; server log:\n{}",
        results["error"].as_str().unwrap_or("see its output above"),
        artifacts.display(),
        server.log_text()
    );

    // The file the browser downloaded is the model the API returns.
    let id = results["project_id"].as_i64().expect("results name the project");
    let downloaded = std::fs::read(results["model_path"].as_str().expect("results name the model")).unwrap();
    let client = reqwest::Client::new();
    let login = json!({"login": results["username"], "password": results["password"]});
    let reply = client.post(server.url("/api/session")).json(&login).send().await.unwrap();
    assert!(reply.status().is_success(), "log-in: {}", reply.status());
    let cookie = reply
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("daig_session="))
        .expect("a session cookie");
    let reply =
        client.get(server.url(&format!("/api/projects/{id}/model"))).header("cookie", cookie).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let from_api = reply.bytes().await.unwrap();
    assert!(!downloaded.is_empty() && downloaded == from_api.as_ref(), "the downloaded file is the API's model");
    assert_eq!(results["model_filename"], format!("project-{id}.safetensors"));
    let tensors = safetensors::SafeTensors::deserialize(&downloaded).unwrap();
    assert_eq!(tensors.names().len(), 4, "two dense layers' kernels and biases");

    for page in [
        "landing",
        "login",
        "projects-empty",
        "new-project-invalid-model",
        "new-project",
        "project-draft",
        "project-running",
        "project-finished",
        "tokens",
        "projects",
        "project-finished-phone-dark",
        "other-users-project",
        "login-wrong-password",
        "sites-phone",
        "project-waiting",
    ] {
        let shot = artifacts.join(format!("{page}.png"));
        assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "screenshot {} is missing", shot.display());
    }
}
