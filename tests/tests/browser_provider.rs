//! The browser provider end to end: the real server, headless Chromium (driven by `tests/browser/provider.mjs`
//! with playwright-core) running the provider's wasm in a Web Worker from the built pages (`cargo xtask web`),
//! and the server's records as the judge.
//!
//! Needs `web/dist` (built by `cargo xtask web`), Chromium, node and playwright-core in `$DAIG_NODE_MODULES`
//! (default `~/.cache/daig/npm/node_modules`), all of which `.ci/run` installs. Outside CI a missing piece skips
//! with a note; in CI it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use daig_tests::{Api, Server, e2e, mnist_dir};

/// What the browser tests need, or `None` (with a note) outside CI.
struct Browser {
    node_modules: PathBuf,
    web_dir: PathBuf,
    artifacts: PathBuf,
}

fn browser() -> Option<Browser> {
    let root = daig_tests::workspace_root();
    let home = std::env::var("HOME").unwrap_or_default();
    let node_modules = std::env::var_os("DAIG_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".cache/daig/npm/node_modules"));
    let web_dir = std::env::var_os("DAIG_WEB_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("web/dist"));
    let missing = [
        (node_modules.join("playwright-core").is_dir(), "playwright-core (npm) in DAIG_NODE_MODULES"),
        (web_dir.join("provider/daig_provider_bg.wasm").is_file(), "the built pages: run `cargo xtask web`"),
        (Path::new("/usr/lib/chromium/chromium").exists() || std::env::var_os("DAIG_CHROMIUM").is_some(), "Chromium"),
    ];
    if let Some((_, what)) = missing.iter().find(|(present, _)| !present) {
        assert!(std::env::var_os("CI").is_none(), "CI must provide {what}");
        eprintln!("skipped: missing {what}");
        return None;
    }
    let artifacts = std::env::var_os("DAIG_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|| root.join("artifacts"));
    let artifacts = artifacts.join("browser-provider");
    std::fs::create_dir_all(&artifacts).unwrap();
    Some(Browser { node_modules, web_dir, artifacts })
}

impl Browser {
    async fn server(&self, dir: &Path) -> Server {
        Server::start(&e2e!(), dir, &["--web-dir".to_owned(), self.web_dir.display().to_string()]).await.unwrap()
    }

    /// Runs one scenario of `provider.mjs` and returns what it printed.
    fn run(&self, mut args: Value) -> Value {
        args["artifacts"] = json!(self.artifacts);
        let script = daig_tests::workspace_root().join("tests/browser/provider.mjs");
        let tmp = tempfile::tempdir().unwrap();
        let output = Command::new("node")
            .arg(script)
            .arg(args.to_string())
            .env("DAIG_NODE_MODULES", &self.node_modules)
            // Chromium leaves folders in the temp directory when it is killed.
            .env("TMPDIR", tmp.path())
            .output()
            .expect("run node");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
        let result: Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("no result from {args}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
        assert_eq!(result["ok"], true, "{args}: {result:#}");
        result
    }
}

/// Contributions applied per backend (as the providers said in their `Hello`) and per site key.
async fn applied_by(server: &Server, id: i64) -> (Vec<(String, i64)>, Vec<(Option<String>, i64)>) {
    let db = server.db().await.unwrap();
    let backends = sqlx::query_as(
        "SELECT p.backend, COUNT(*) FROM contributions c JOIN providers p ON p.id = c.provider_id
         WHERE c.project_id = ? GROUP BY p.backend ORDER BY p.backend",
    )
    .bind(id)
    .fetch_all(&db)
    .await
    .unwrap();
    let sites = sqlx::query_as(
        "SELECT site_key, COUNT(*) FROM contributions WHERE project_id = ? GROUP BY site_key ORDER BY site_key",
    )
    .bind(id)
    .fetch_all(&db)
    .await
    .unwrap();
    (backends, sites)
}

fn settings(extra: Value) -> Value {
    let mut settings = json!({"batch_size": 32, "k": 1, "epochs": 50, "samples_per_shard": 512,
                              "optimizer": {"method": {"type": "adam"}, "learning_rate": 0.003}});
    settings.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contribute_page_trains_with_webgpu_and_with_the_cpu_fallback() {
    let (Some(browser), Some(mnist)) = (browser(), mnist_dir()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = browser.server(dir.path()).await;
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let id = api.mnist_project(&mnist, settings(json!({}))).await.unwrap();
    for webgpu in [true, false] {
        let result =
            browser.run(json!({"scenario": "contribute", "server": server.url(""), "project": id, "webgpu": webgpu}));
        let figures = &result["figures"];
        eprintln!("WebGPU {webgpu}: first contribution applied {} ms after the click", result["firstContributionMs"]);
        assert_eq!(result["before"], 0, "nothing runs before the click");
        let backend = figures["backend"].as_str().unwrap();
        assert_eq!(backend.starts_with("WebGPU"), webgpu, "{backend}");
        assert!(
            figures["applied"].as_u64().unwrap() >= 3 && figures["credit"].as_u64().unwrap() >= 3 * 32,
            "{figures}"
        );
        assert!(result["cachedShards"].as_u64().unwrap() >= 1, "shards cached in the browser: {result}");
        assert_eq!(
            result["hiddenState"], "paused",
            "a hidden tab pauses (and the scenario saw it resume when visible)"
        );
        assert!(figures["remembered"].as_str().unwrap().contains(&format!("\"project\":{id}")), "the choice is kept");
    }
    let (backends, _) = applied_by(&server, id).await;
    let count = |name: &str| backends.iter().find(|(b, _)| b == name).map_or(0, |(_, n)| *n);
    assert!(count("WebGpu") >= 4 && count("Cpu") >= 4, "applied contributions per backend: {backends:?}");
    // No false positives: the browser's work (WebGPU on SwiftShader, and the CPU fallback) passes the server's
    // checks by recomputation; new providers have every contribution checked.
    let failed = daig_tests::report_check_spread(&server.metrics().await.unwrap());
    assert_eq!(failed, 0.0, "an honest browser failed a check:\n{}", server.log_text());
    let verified = daig_tests::verified_contributions(&server, id, "WebGpu").await;
    assert!(verified >= 3, "WebGPU contributions checked and applied: {verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_site_is_credited_and_a_site_the_project_does_not_list_is_refused() {
    let (Some(browser), Some(mnist)) = (browser(), mnist_dir()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = browser.server(dir.path()).await;
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let allowed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let other_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = json!({"access": "site_key", "sites": [format!("http://localhost:{allowed_port}")]});
    let id = api.mnist_project(&mnist, settings(extra)).await.unwrap();
    let key = api.get(&format!("/api/projects/{id}")).await.unwrap()["site_key"].as_str().unwrap().to_owned();

    let base = json!({"scenario": "embed", "server": server.url(""), "project": id, "siteKey": key});
    let mut args = base.clone();
    args["sitePort"] = json!(allowed_port);
    args["allowed"] = json!(true);
    let result = browser.run(args);
    assert_eq!(result["globals"], json!(["DAIG"]), "one global name");
    assert_eq!(result["beforeClick"], json!(["idle"]), "nothing runs before the consent click");
    assert!(result["figures"]["applied"].as_u64().unwrap() >= 2, "{result}");
    let (_, sites) = applied_by(&server, id).await;
    assert!(
        sites.iter().any(|(site, n)| site.as_deref() == Some(key.as_str()) && *n >= 2),
        "contributions credited to the site key: {sites:?}"
    );
    let credits = api.get(&format!("/api/projects/{id}/credits")).await.unwrap();
    assert_eq!(credits["sites"][0]["site_key"], key.as_str(), "{credits}");
    // The page kept a provider key in its local storage and the worker presented it.
    let keyed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM providers WHERE identity_id IS NOT NULL")
        .fetch_one(&server.db().await.unwrap())
        .await
        .unwrap();
    assert!(keyed >= 1, "no browser connection presented a provider key");

    let mut args = base;
    args["sitePort"] = json!(other_port);
    args["allowed"] = json!(false);
    let result = browser.run(args);
    assert!(result["text"].as_str().unwrap().contains("does not accept contributions from this site"), "{result}");
    let refusal = &result["refusal"];
    assert_eq!(refusal["state"], "error", "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains("does not list"), "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_tab_mid_lease_returns_its_batches() {
    let (Some(browser), Some(mnist)) = (browser(), mnist_dir()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = browser.server(dir.path()).await;
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let id = api.mnist_project(&mnist, settings(json!({}))).await.unwrap();
    let result = browser.run(json!({"scenario": "close-tab", "server": server.url(""), "project": id}));
    let provider = result["provider"].as_u64().unwrap();
    // The server notices the closed socket at once (no heartbeat timeout) and takes the leases back.
    let start = std::time::Instant::now();
    loop {
        let log = strip_ansi(&server.log_text());
        let left = log.lines().find(|l| l.contains("provider left") && l.contains(&format!("provider={provider} ")));
        if let Some(line) = left {
            let returned: u64 =
                line.split("returned=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
            assert!(returned >= 1, "the closed tab held leases: {line}");
            let said_goodbye =
                log.lines().any(|l| l.contains("provider said goodbye") && l.contains(&format!("provider={provider}")));
            assert!(!said_goodbye, "the tab was closed, not paused: the socket dropped without a goodbye");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(2), "the server did not notice the closed tab:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text without terminal colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
