//! Helpers: a [`TestApp`] over a temporary data directory, request builders and response readers.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use daig_server::{AppState, Settings, app};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt as _;

/// The app over its own temporary data directory.
pub struct TestApp {
    pub state: AppState,
    router: Router,
    _dir: TempDir,
}

/// A response, read completely.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the error shape and returns `error.code`.
    pub fn error_code(&self) -> String {
        let body = self.json();
        let error = body["error"].as_object().unwrap_or_else(|| panic!("not the error shape: {body}"));
        assert!(error["message"].is_string(), "{body}");
        assert!(error.keys().all(|k| ["code", "message", "details"].contains(&k.as_str())), "{body}");
        error["code"].as_str().unwrap().to_owned()
    }

    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }
}

/// A logged-in dashboard session: the cookie header to send and the CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// Settings for tests: rate limits high enough not to get in the way.
pub fn settings(dir: &std::path::Path) -> Settings {
    Settings { auth_rate_burst: 10_000, auth_rate_per_minute: 10_000, ..Settings::with_data_dir(dir.join("data")) }
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// An app with settings changed by `change`.
    pub async fn with(change: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path());
        change(&mut settings);
        settings.validate().unwrap();
        let state = AppState::new(settings).await.unwrap();
        Self { router: app(state.clone()), state, _dir: dir }
    }

    /// Sends a request through the router, as if from 192.0.2.1.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        self.send_from(request, "192.0.2.1:5000").await
    }

    /// Sends a request as if from `peer`.
    pub async fn send_from(&self, mut request: Request<Body>, peer: &str) -> Reply {
        request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply { status, headers, body }
    }

    /// Signs up `name` with e-mail `<name>@example.org` and password `correct horse`.
    pub async fn sign_up(&self, name: &str) -> Value {
        let body = json!({"username": name, "email": format!("{name}@example.org"), "password": "correct horse"});
        let reply = self.send(json_request(Method::POST, "/api/users", &body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }

    /// Logs `name` in with the password `sign_up` gave it.
    pub async fn log_in(&self, name: &str) -> Session {
        let reply = self
            .send(json_request(Method::POST, "/api/session", &json!({"login": name, "password": "correct horse"})))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let mut cookies = Vec::new();
        for set in reply.set_cookies() {
            cookies.push(set.split(';').next().unwrap().to_owned());
        }
        Session { cookie: cookies.join("; "), csrf: reply.json()["csrf_token"].as_str().unwrap().to_owned() }
    }

    /// Creates an API token for the session's user and returns the created token's JSON.
    pub async fn create_token(&self, session: &Session, name: &str) -> Value {
        let request = with_session(json_request(Method::POST, "/api/tokens", &json!({"name": name})), session, true);
        let reply = self.send(request).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }

    /// Signs up and logs in `name`, and creates a token: the session and the token string.
    pub async fn user_with_token(&self, name: &str) -> (Session, String) {
        self.sign_up(name).await;
        let session = self.log_in(name).await;
        let token = self.create_token(&session, "test").await["token"].as_str().unwrap().to_owned();
        (session, token)
    }
}

/// A request without a body.
pub fn request(method: Method, uri: &str) -> Request<Body> {
    Request::builder().method(method).uri(uri).body(Body::empty()).unwrap()
}

/// A request with a JSON body.
pub fn json_request(method: Method, uri: &str, body: &Value) -> Request<Body> {
    raw_request(method, uri, "application/json", body.to_string())
}

/// A request with any body and content type.
pub fn raw_request(method: Method, uri: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder().method(method).uri(uri).header(header::CONTENT_TYPE, content_type).body(body.into()).unwrap()
}

/// Adds `Authorization: Bearer <token>`.
pub fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
    request.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    request
}

/// Adds the session's cookies, and its CSRF header when `csrf` is set.
pub fn with_session(mut request: Request<Body>, session: &Session, csrf: bool) -> Request<Body> {
    request.headers_mut().insert(header::COOKIE, session.cookie.parse().unwrap());
    if csrf {
        request.headers_mut().insert("x-csrf-token", session.csrf.parse().unwrap());
    }
    request
}

/// A small valid DAIG JSON model: 4 input features, 3 classes.
pub fn small_model() -> Value {
    json!({
        "input_shape": [4],
        "layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 3}],
        "loss": "cross_entropy"
    })
}

/// A `.npy` file of `shape` with dtype `descr` (`<f4`, `<i8`, ...) and the given raw little-endian bytes.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// `n` samples of 4 `f32` features, and their `i64` labels `i % classes`.
pub fn small_dataset(n: usize, classes: i64) -> (Vec<u8>, Vec<u8>) {
    let features: Vec<u8> = (0..n * 4).flat_map(|i| (i as f32 / 10.0).to_le_bytes()).collect();
    let labels: Vec<u8> = (0..n as i64).flat_map(|i| (i % classes).to_le_bytes()).collect();
    (npy("<f4", &[n, 4], &features), npy("<i8", &[n], &labels))
}

impl TestApp {
    /// Creates a project with `body` as `token`'s user, expecting 201.
    pub async fn create_project(&self, token: &str, body: &Value) -> Value {
        let reply = self.send(with_token(json_request(Method::POST, "/api/projects", body), token)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }

    /// Creates a project with [`small_model`] and `settings`, and returns its id.
    pub async fn small_project(&self, token: &str, settings: Value) -> i64 {
        let body = json!({"name": "small", "model": small_model(), "settings": settings});
        self.create_project(token, &body).await["id"].as_i64().unwrap()
    }

    /// Uploads one dataset part.
    pub async fn upload(&self, token: &str, id: i64, part: &str, bytes: Vec<u8>) -> Reply {
        let uri = format!("/api/projects/{id}/dataset/{part}");
        self.send(with_token(raw_request(Method::PUT, &uri, "application/octet-stream", bytes), token)).await
    }

    /// A project with [`small_model`] and a committed dataset of 40 samples, 10 per shard.
    pub async fn project_with_dataset(&self, token: &str) -> i64 {
        let id = self.small_project(token, json!({"samples_per_shard": 10, "validation_fraction": 0.25})).await;
        let (features, labels) = small_dataset(40, 3);
        assert_eq!(self.upload(token, id, "features", features).await.status, StatusCode::OK);
        let reply = self.upload(token, id, "labels", labels).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        id
    }

    /// Sends `POST /api/projects/{id}/{action}`.
    pub async fn act(&self, token: &str, id: i64, action: &str) -> Reply {
        self.send(with_token(request(Method::POST, &format!("/api/projects/{id}/{action}")), token)).await
    }

    /// The data directory of this app.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.state.settings().data_dir.clone()
    }
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
pub fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
