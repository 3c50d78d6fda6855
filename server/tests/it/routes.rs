//! Every route with no credentials, a revoked token, another user's token and a valid token, and the status each
//! gets. The list is checked against the OpenAPI document (in `observability`), so a new route cannot be left out.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::support::{TestApp, json_request, raw_request, request, small_dataset, small_model, with_token};

/// Every operation the server serves: method and OpenAPI path.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/api/health"),
    ("GET", "/metrics"),
    ("GET", "/api/openapi.json"),
    ("POST", "/api/users"),
    ("GET", "/api/me"),
    ("POST", "/api/session"),
    ("DELETE", "/api/session"),
    ("POST", "/api/tokens"),
    ("GET", "/api/tokens"),
    ("DELETE", "/api/tokens/{id}"),
    ("POST", "/api/projects"),
    ("GET", "/api/projects"),
    ("GET", "/api/projects/{id}"),
    ("DELETE", "/api/projects/{id}"),
    ("PUT", "/api/projects/{id}/sites"),
    ("POST", "/api/projects/{id}/start"),
    ("POST", "/api/projects/{id}/pause"),
    ("POST", "/api/projects/{id}/resume"),
    ("POST", "/api/projects/{id}/cancel"),
    ("GET", "/api/projects/{id}/model"),
    ("GET", "/api/projects/{id}/model/spec"),
    ("GET", "/api/projects/{id}/events"),
    ("PUT", "/api/projects/{id}/dataset/{part}"),
    ("POST", "/api/projects/{id}/dataset/commit"),
    ("DELETE", "/api/projects/{id}/dataset"),
    ("GET", "/api/projects/{id}/metrics"),
    ("GET", "/api/projects/{id}/checkpoints"),
    ("GET", "/api/projects/{id}/checkpoints/{version}"),
    ("GET", "/api/projects/{id}/credits"),
    ("GET", "/api/providers/{id}/credits"),
    ("GET", "/api/public/projects"),
    ("GET", "/api/public/projects/{id}"),
];

#[derive(Debug, Clone, Copy)]
enum Credential {
    None,
    Revoked,
    /// A valid token of another user, who owns none of the resources the requests name.
    Other,
    Valid,
}

#[tokio::test]
async fn every_route_with_no_revoked_other_and_valid_credentials() {
    use Credential::{None, Other, Revoked, Valid};
    use StatusCode as S;
    // Every lifecycle route starts a project of the one account: more than the running quota's default.
    let app = TestApp::with(|s| s.max_running_projects_per_account = 1000).await;
    let (session, valid) = app.user_with_token("ada").await;
    let revoked = app.create_token(&session, "to revoke").await;
    let reply = app.send(with_token(request(Method::DELETE, &format!("/api/tokens/{}", revoked["id"])), &valid)).await;
    assert_eq!(reply.status, S::NO_CONTENT);
    let revoked = revoked["token"].as_str().unwrap().to_owned();
    let (_, other) = app.user_with_token("bob").await;

    // Expected statuses for (none, revoked, another user's token, valid).
    const U: S = S::UNAUTHORIZED;
    const N: S = S::NOT_FOUND;
    let table: &[(&str, &str, [S; 4])] = &[
        ("GET", "/api/health", [S::OK, S::OK, S::OK, S::OK]),
        ("GET", "/metrics", [S::OK, S::OK, S::OK, S::OK]),
        ("GET", "/api/openapi.json", [S::OK, S::OK, S::OK, S::OK]),
        ("POST", "/api/users", [S::CREATED, S::CREATED, S::CREATED, S::CREATED]),
        ("GET", "/api/me", [U, U, S::OK, S::OK]),
        ("POST", "/api/session", [S::OK, S::OK, S::OK, S::OK]),
        ("DELETE", "/api/session", [U, U, S::NO_CONTENT, S::NO_CONTENT]),
        ("POST", "/api/tokens", [U, U, S::CREATED, S::CREATED]),
        ("GET", "/api/tokens", [U, U, S::OK, S::OK]),
        ("DELETE", "/api/tokens/{id}", [U, U, N, S::NO_CONTENT]),
        ("POST", "/api/projects", [U, U, S::CREATED, S::CREATED]),
        ("GET", "/api/projects", [U, U, S::OK, S::OK]),
        ("GET", "/api/projects/{id}", [U, U, N, S::OK]),
        ("DELETE", "/api/projects/{id}", [U, U, N, S::NO_CONTENT]),
        ("PUT", "/api/projects/{id}/sites", [U, U, N, S::OK]),
        ("POST", "/api/projects/{id}/start", [U, U, N, S::OK]),
        ("POST", "/api/projects/{id}/pause", [U, U, N, S::OK]),
        ("POST", "/api/projects/{id}/resume", [U, U, N, S::OK]),
        ("POST", "/api/projects/{id}/cancel", [U, U, N, S::OK]),
        ("GET", "/api/projects/{id}/model", [U, U, N, S::OK]),
        ("GET", "/api/projects/{id}/model/spec", [U, U, N, S::OK]),
        ("GET", "/api/projects/{id}/events", [U, U, N, S::OK]),
        ("PUT", "/api/projects/{id}/dataset/{part}", [U, U, N, S::OK]),
        ("POST", "/api/projects/{id}/dataset/commit", [U, U, N, S::OK]),
        ("DELETE", "/api/projects/{id}/dataset", [U, U, N, S::NO_CONTENT]),
        ("GET", "/api/projects/{id}/metrics", [U, U, N, S::OK]),
        ("GET", "/api/projects/{id}/checkpoints", [U, U, N, S::OK]),
        ("GET", "/api/projects/{id}/checkpoints/{version}", [U, U, N, S::OK]),
        ("GET", "/api/projects/{id}/credits", [U, U, N, S::OK]),
        // Public: providers have no account.
        ("GET", "/api/providers/{id}/credits", [S::OK, S::OK, S::OK, S::OK]),
        // Public: visitors have no account (public projects, or site-key projects with their key).
        ("GET", "/api/public/projects", [S::OK, S::OK, S::OK, S::OK]),
        ("GET", "/api/public/projects/{id}", [S::OK, S::OK, S::OK, S::OK]),
    ];
    assert_eq!(table.iter().map(|(m, p, _)| (*m, *p)).collect::<Vec<_>>(), OPERATIONS);

    let mut n = 0;
    for (method, path, expected) in table {
        for (credential, expected) in [None, Revoked, Other, Valid].into_iter().zip(expected) {
            n += 1;
            let request = build(&app, &session, &valid, method, path, n).await;
            let request = match credential {
                None => request,
                Revoked => with_token(request, &revoked),
                Other => with_token(request, &other),
                Valid => with_token(request, &valid),
            };
            let reply = app.send(request).await;
            assert_eq!(reply.status, *expected, "{method} {path} with {credential:?}: {}", reply.text());
            if !reply.status.is_success() {
                let code = if *expected == N { "not_found" } else { "unauthenticated" };
                assert_eq!(reply.error_code(), code, "{method} {path}");
            }
        }
    }
}

/// A well-formed request for the route, naming resources that `token`'s user owns in a state where the request
/// succeeds; `n` makes names and ids fresh.
async fn build(
    app: &TestApp,
    session: &crate::support::Session,
    token: &str,
    method: &str,
    path: &str,
    n: usize,
) -> Request<Body> {
    let method: Method = method.parse().unwrap();
    if let Some(rest) = path.strip_prefix("/api/projects/{id}") {
        let id = match rest {
            "/start" | "/pause" | "/resume" | "/cancel" | "/events" => {
                let id = app.project_with_dataset(token).await;
                let before: &[&str] = match rest {
                    "/pause" | "/cancel" => &["start"],
                    // A cancelled project's stream sends the project once and ends, so that the body is complete.
                    "/events" => &["start", "cancel"],
                    "/resume" => &["start", "pause"],
                    _ => &[],
                };
                for action in before {
                    assert_eq!(app.act(token, id, action).await.status, StatusCode::OK);
                }
                id
            }
            _ => app.small_project(token, json!({})).await,
        };
        let uri = format!("/api/projects/{id}{rest}");
        return match rest {
            "/model" => {
                let key = format!("projects/{id}/model/model.safetensors");
                app.state.store().put(&key, bytes::Bytes::from_static(b"weights")).await.unwrap();
                request(method, &uri)
            }
            "/sites" => json_request(method, &uri, &json!({"sites": ["https://blog.example.org"]})),
            "/dataset/{part}" => {
                let uri = format!("/api/projects/{id}/dataset/features");
                raw_request(method, &uri, "application/octet-stream", small_dataset(10, 3).0)
            }
            "/checkpoints/{version}" => {
                let key = format!("projects/{id}/checkpoints/000000000007/params.safetensors");
                app.state.store().put(&key, bytes::Bytes::from_static(b"weights")).await.unwrap();
                sqlx::query(
                    "INSERT INTO checkpoints (project_id, version, epoch, params_key, state_key, size_bytes, created_at)
                     VALUES (?, 7, 0, ?, 'unused', 7, 0)",
                )
                .bind(id)
                .bind(&key)
                .execute(app.state.db())
                .await
                .unwrap();
                request(method, &format!("/api/projects/{id}/checkpoints/7"))
            }
            "/dataset/commit" => {
                let (features, labels) = small_dataset(10, 3);
                assert_eq!(app.upload(token, id, "features", features).await.status, StatusCode::OK);
                // The labels are placed as an upload would leave them (the file and the manifest naming it), so
                // that the commit is what stores them.
                let dir = app.data_dir().join(format!("uploads/{id}"));
                std::fs::write(dir.join("labels-placed.npy"), labels).unwrap();
                let manifest = json!({"file": "labels-placed.npy", "format": {"format": "npy"}});
                std::fs::write(dir.join("labels.json"), manifest.to_string()).unwrap();
                request(method, &uri)
            }
            "/dataset" => {
                let id = app.project_with_dataset(token).await;
                request(method, &format!("/api/projects/{id}/dataset"))
            }
            _ => request(method, &uri),
        };
    }
    match path {
        "/api/users" => json_request(
            method,
            path,
            &json!({"username": format!("user{n}"), "email": format!("user{n}@example.org"), "password": "correct horse"}),
        ),
        "/api/session" if method == Method::POST => {
            json_request(method, path, &json!({"login": "ada", "password": "correct horse"}))
        }
        "/api/tokens" if method == Method::POST => json_request(method, path, &json!({"name": format!("t{n}")})),
        "/api/projects" if method == Method::POST => {
            json_request(method, path, &json!({"name": format!("p{n}"), "model": small_model()}))
        }
        "/api/providers/{id}/credits" => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO providers (backend, adapter, connected_at) VALUES ('Cpu', 'test', 0) RETURNING id",
            )
            .fetch_one(app.state.db())
            .await
            .unwrap();
            request(method, &format!("/api/providers/{id}/credits"))
        }
        "/api/public/projects/{id}" => {
            // A started project: a public draft is nobody else's business (404).
            let id = app.project_with_dataset(token).await;
            assert_eq!(app.act(token, id, "start").await.status, StatusCode::OK);
            request(method, &format!("/api/public/projects/{id}"))
        }
        "/api/tokens/{id}" => {
            let id = app.create_token(session, "to delete").await["id"].as_i64().unwrap();
            request(method, &format!("/api/tokens/{id}"))
        }
        _ => request(method, path),
    }
}
