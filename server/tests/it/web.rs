//! The web pages and what visitors' browsers reach: static files with the dashboard's route fallback and the
//! provider's CORS headers, the public project API with per-project CORS, and the provider socket's Origin check
//! for `site_key` projects.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode, header};
use daig_shared::wire::{Frame, GoodbyeReason};
use serde_json::{Value, json};

use crate::support::{TestApp, request, with_token};
use crate::wire_provider::{Incoming, WireClient, hello, run_honest_on};

fn write(dir: &std::path::Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn pages_are_served_with_the_dashboard_fallback_and_cors_on_the_provider() {
    let pages = tempfile::tempdir().unwrap();
    write(pages.path(), "index.html", "dashboard");
    write(pages.path(), "contribute.html", "contribute");
    write(pages.path(), "sites.html", "site owners");
    write(pages.path(), "embed.js", "embed");
    write(pages.path(), "provider/worker.js", "worker");
    let dir = pages.path().to_owned();
    let app = TestApp::with(move |s| s.web_dir = dir).await;
    for (path, body) in [("/", "dashboard"), ("/projects/7", "dashboard"), ("/login", "dashboard")] {
        let reply = app.send(request(Method::GET, path)).await;
        assert_eq!((reply.status, reply.text().as_str()), (StatusCode::OK, body), "{path}");
        assert!(reply.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(), "{path} is not for other sites");
    }
    let contribute = app.send(request(Method::GET, "/contribute?project=3")).await;
    assert_eq!(contribute.text(), "contribute");
    let csp = contribute.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval'") && csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(app.send(request(Method::GET, "/sites")).await.text(), "site owners");
    for path in ["/embed.js", "/provider/worker.js"] {
        let reply = app.send(request(Method::GET, path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "{path} is fetched by other sites");
        assert!(reply.headers[header::CONTENT_TYPE].to_str().unwrap().contains("javascript"));
    }
    // Files that are not there, API paths and writes are not the dashboard.
    assert_eq!(app.send(request(Method::GET, "/provider/missing.wasm")).await.status, StatusCode::NOT_FOUND);
    let api = app.send(request(Method::GET, "/api/nothing")).await;
    assert_eq!((api.status, api.error_code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let post = app.send(request(Method::POST, "/contribute")).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(app.send(request(Method::GET, "/../Cargo.toml")).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_that_were_not_built_say_how_to_build_them() {
    let app = TestApp::with(|s| s.web_dir = std::path::PathBuf::from("/nonexistent/daig-web")).await;
    let reply = app.send(request(Method::GET, "/contribute")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("cargo xtask web"), "{}", reply.text());
    assert_eq!(app.send(request(Method::GET, "/api/health")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn sites_are_validated_and_kept_canonical() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let body = json!({"name": "p", "model": crate::support::small_model(),
                      "settings": {"access": "site_key", "sites": ["ftp://x", "https://a.example/path", "http://b"]}});
    let reply = app.send(with_token(crate::support::json_request(Method::POST, "/api/projects", &body), &token)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let text = reply.text();
    assert!(
        text.contains("ftp://x") && text.contains("a.example/path") && !text.contains("\\\"http://b\\\""),
        "{text}"
    );
    let id = app
        .small_project(
            &token,
            json!({"access": "site_key", "sites": ["HTTPS://Blog.Example.org:443/", "http://127.0.0.1:9000"]}),
        )
        .await;
    let view = with_token(request(Method::GET, &format!("/api/projects/{id}")), &token);
    assert_eq!(
        app.send(view).await.json()["settings"]["sites"],
        json!(["https://blog.example.org", "http://127.0.0.1:9000"])
    );
}

async fn serve(app: &TestApp) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(daig_server::run(listener, app.state.clone(), std::future::pending()));
    addr
}

/// A running project with the small model and dataset.
pub(crate) async fn running(app: &TestApp, token: &str, settings: Value) -> (i64, Option<String>) {
    let id = app.small_project(token, settings).await;
    let (features, labels) = crate::support::small_dataset(40, 3);
    assert_eq!(app.upload(token, id, "features", features).await.status, StatusCode::OK);
    assert_eq!(app.upload(token, id, "labels", labels).await.status, StatusCode::OK);
    let started = app.act(token, id, "start").await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text());
    (id, started.json()["site_key"].as_str().map(str::to_owned))
}

fn from_origin(uri: &str, origin: &str) -> axum::http::Request<axum::body::Body> {
    let mut request = request(Method::GET, uri);
    request.headers_mut().insert(header::ORIGIN, origin.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_api_answers_cross_origin_only_for_listed_sites() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let (public, _) = running(&app, &token, json!({"samples_per_shard": 10, "validation_fraction": 0.25})).await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "access": "site_key",
                          "sites": ["http://127.0.0.1:9000"]});
    let (private, key) = running(&app, &token, settings).await;
    let key = key.expect("a site-key project has a key");

    let list = app.send(from_origin("/api/public/projects", "http://anywhere.example")).await;
    assert_eq!(list.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let ids: Vec<i64> = list.json()["projects"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![public], "only public projects are listed");

    let draft = app.small_project(&token, json!({})).await;
    let hidden = app.send(from_origin(&format!("/api/public/projects/{draft}"), "http://anywhere.example")).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND, "a public draft is not shown to anyone but its owner");
    let one = app.send(from_origin(&format!("/api/public/projects/{public}"), "http://anywhere.example")).await;
    assert_eq!((one.status, one.json()["needs_providers"].clone()), (StatusCode::OK, json!(true)));
    assert_eq!(one.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");

    let uri = format!("/api/public/projects/{private}?site_key={key}");
    let listed = app.send(from_origin(&uri, "http://127.0.0.1:9000")).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    assert_eq!(listed.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://127.0.0.1:9000");
    let other = app.send(from_origin(&uri, "http://127.0.0.1:9001")).await;
    assert_eq!((other.status, other.error_code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(other.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    let keyless = app.send(from_origin(&format!("/api/public/projects/{private}"), "http://127.0.0.1:9000")).await;
    assert_eq!(keyless.status, StatusCode::NOT_FOUND, "without its key a site-key project is not shown");
    assert_eq!(app.send(request(Method::GET, &uri)).await.status, StatusCode::OK, "no Origin: not a browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_provider_socket_admits_only_listed_sites_to_site_key_projects() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "access": "site_key",
                          "sites": ["http://127.0.0.1:9000"]});
    let (id, key) = running(&app, &token, settings).await;
    let with_key = || {
        let mut h = hello(Some(id));
        h.site_key = key.clone();
        h
    };
    let welcome = |mut client: WireClient| async move {
        match client.recv().await {
            Incoming::Frame(Frame::Welcome(w)) => w.project_id.0,
            Incoming::Frame(other) => panic!("expected a welcome, got {other:?}"),
            _ => panic!("expected a welcome"),
        }
    };
    // A listed site, this server's own page and a provider outside a browser are let in.
    for origin in [Some("http://127.0.0.1:9000".to_owned()), Some(format!("http://{addr}")), None] {
        let mut client = match &origin {
            Some(o) => WireClient::connect_from(addr, o).await,
            None => WireClient::connect(addr).await,
        };
        client.send(&Frame::Hello(with_key())).await;
        assert_eq!(welcome(client).await, id as u64, "{origin:?}");
    }
    // Another site is refused, with the project named or found by its site key.
    for project in [Some(id), None] {
        let mut client = WireClient::connect_from(addr, "http://127.0.0.1:9001").await;
        let mut h = with_key();
        h.project_id = project.map(|p| daig_shared::wire::ProjectId(p as u64));
        client.send(&Frame::Hello(h)).await;
        match client.recv().await {
            Incoming::Frame(Frame::Goodbye(goodbye)) => {
                assert_eq!(goodbye.reason, GoodbyeReason::Unauthorized);
                assert!(goodbye.detail.contains("http://127.0.0.1:9001"), "{}", goodbye.detail);
            }
            _ => panic!("expected a goodbye"),
        }
    }
    // The owner changes the list: it applies to the running project at once.
    let put = |sites: Value| {
        let request =
            crate::support::json_request(Method::PUT, &format!("/api/projects/{id}/sites"), &json!({"sites": sites}));
        with_token(request, &token)
    };
    let bad = app.send(put(json!(["not an origin"]))).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text());
    let changed = app.send(put(json!(["HTTP://127.0.0.1:9001/"]))).await;
    assert_eq!(changed.json()["settings"]["sites"], json!(["http://127.0.0.1:9001"]));
    let mut client = WireClient::connect_from(addr, "http://127.0.0.1:9001").await;
    client.send(&Frame::Hello(with_key())).await;
    assert_eq!(welcome(client).await, id as u64, "a newly listed site is let in");
    let mut client = WireClient::connect_from(addr, "http://127.0.0.1:9000").await;
    client.send(&Frame::Hello(with_key())).await;
    assert!(
        matches!(client.recv().await, Incoming::Frame(Frame::Goodbye(g)) if g.reason == GoodbyeReason::Unauthorized)
    );
    // A public project takes every site.
    let (public, _) = running(&app, &token, json!({"samples_per_shard": 10, "validation_fraction": 0.25})).await;
    let mut client = WireClient::connect_from(addr, "http://127.0.0.1:9001").await;
    client.send(&Frame::Hello(hello(Some(public)))).await;
    assert_eq!(welcome(client).await, public as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn site_credit_goes_only_to_listed_origins_and_the_projects_own_site_key() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "k": 1, "epochs": 100,
                          "max_staleness": 4, "sites": ["http://127.0.0.1:9000"]});
    let (id, _) = running(&app, &token, settings).await;
    // Each case on its own adapter: a provider that reconnects alike would take over its last row.
    let forged = |case: &str| {
        let mut h = hello(Some(id));
        h.site_key = Some("site_anyone_can_claim".into());
        h.adapter = format!("test provider, {case}");
        h
    };
    // (how it connects, the site its work is credited to)
    let cases: [(Option<&str>, Option<&str>); 3] = [
        (None, None),
        (Some("http://127.0.0.1:9000"), Some("http://127.0.0.1:9000")),
        (Some("http://127.0.0.1:9001"), None),
    ];
    for (origin, credited) in cases {
        let client = match origin {
            Some(o) => WireClient::connect_from(addr, o).await,
            None => WireClient::connect(addr).await,
        };
        let outcome = run_honest_on(client, forged(origin.unwrap_or("no origin")), Some(1)).await;
        assert!(outcome.applied >= 1, "{origin:?}: {outcome:?}");
        let provider = outcome.welcome.as_ref().unwrap().provider_id.0 as i64;
        let sites: Vec<Option<String>> =
            sqlx::query_scalar("SELECT DISTINCT site_key FROM contributions WHERE provider_id = ?")
                .bind(provider)
                .fetch_all(app.state.db())
                .await
                .unwrap();
        assert_eq!(sites, vec![credited.map(str::to_owned)], "{origin:?}");
    }
}

#[tokio::test]
async fn every_page_path_forbids_framing_and_the_dashboard_allows_only_its_own_inline_loader() {
    let pages = tempfile::tempdir().unwrap();
    let loader = "import init from '/app.js'; await init();";
    write(pages.path(), "index.html", &format!(r#"<html><script type="module">{loader}</script></html>"#));
    write(pages.path(), "contribute.html", "contribute");
    write(pages.path(), "sites.html", "site owners");
    let dir = pages.path().to_owned();
    let app = TestApp::with(move |s| s.web_dir = dir).await;
    let hash = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(loader.as_bytes()))
    };
    for path in ["/", "/projects/7", "/index.html", "/contribute", "/contribute.html", "/sites", "/sites.html"] {
        let reply = app.send(request(Method::GET, path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        let csp = reply.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(reply.headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
        assert_eq!(reply.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(reply.headers[header::REFERRER_POLICY], "no-referrer", "{path}");
        let dashboard = ["/", "/projects/7", "/index.html"].contains(&path);
        assert_eq!(csp.contains(&format!("'sha256-{hash}'")), dashboard, "{path}: {csp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_with_a_site_key_works_only_for_that_sites_project() {
    // Heartbeats every second: the visitor below stays silent for two.
    let app = TestApp::with(|s| s.heartbeat_interval_ms = 1000).await;
    let addr = serve(&app).await;
    let (_, token) = app.user_with_token("ada").await;
    let (public, _) = running(&app, &token, json!({"samples_per_shard": 10, "validation_fraction": 0.25})).await;
    let settings = json!({"samples_per_shard": 10, "validation_fraction": 0.25, "access": "site_key"});
    let (own, key) = running(&app, &token, settings).await;
    let keyed = |key: Option<String>| {
        let mut h = hello(None);
        h.site_key = key;
        h
    };
    // While the site's project is paused, its visitors wait: they are not lent to the public project.
    assert_eq!(app.act(&token, own, "pause").await.status, StatusCode::OK);
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(keyed(key.clone()))).await;
    let waited = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match client.recv().await {
                Incoming::Frame(Frame::Heartbeat(_)) => {}
                other => return other,
            }
        }
    })
    .await;
    match waited {
        Err(_) => {}
        Ok(Incoming::Frame(Frame::Welcome(w))) => panic!("a site's visitor was sent to project {}", w.project_id.0),
        Ok(Incoming::Frame(other)) => panic!("the waiting visitor was sent {other:?}"),
        Ok(_) => panic!("the waiting visitor was let go"),
    }
    // Once it resumes, they join it.
    client.send(&Frame::Heartbeat(Default::default())).await;
    assert_eq!(app.act(&token, own, "resume").await.status, StatusCode::OK);
    loop {
        match client.recv().await {
            Incoming::Frame(Frame::Heartbeat(_)) => {}
            Incoming::Frame(Frame::Welcome(w)) => {
                assert_eq!(w.project_id.0, own as u64);
                break;
            }
            _ => panic!("expected a welcome to the site's project"),
        }
    }
    // A key no project has is refused; without a key a provider goes to the public project.
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(keyed(Some("site_nobody_has".into())))).await;
    match client.recv().await {
        Incoming::Frame(Frame::Goodbye(g)) => assert_eq!(g.reason, GoodbyeReason::Unauthorized, "{g:?}"),
        _ => panic!("expected a goodbye"),
    }
    let mut client = WireClient::connect(addr).await;
    client.send(&Frame::Hello(keyed(None))).await;
    match client.recv().await {
        Incoming::Frame(Frame::Welcome(w)) => assert_eq!(w.project_id.0, public as u64),
        _ => panic!("expected a welcome to the public project"),
    }
}
