//! Every route with no credentials, a revoked token and a valid token, and the status each gets. The list is
//! checked against the OpenAPI document (in `observability`), so a new route cannot be left out.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::support::{TestApp, json_request, request, with_token};

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
];

#[derive(Debug, Clone, Copy)]
enum Credential {
    None,
    Revoked,
    Valid,
}

#[tokio::test]
async fn every_route_with_no_revoked_and_valid_credentials() {
    use Credential::{None, Revoked, Valid};
    use StatusCode as S;
    let app = TestApp::new().await;
    let (session, valid) = app.user_with_token("ada").await;
    let revoked = app.create_token(&session, "to revoke").await;
    let reply = app.send(with_token(request(Method::DELETE, &format!("/api/tokens/{}", revoked["id"])), &valid)).await;
    assert_eq!(reply.status, S::NO_CONTENT);
    let revoked = revoked["token"].as_str().unwrap().to_owned();

    // Expected statuses for (none, revoked, valid).
    let table: &[(&str, &str, [S; 3])] = &[
        ("GET", "/api/health", [S::OK, S::OK, S::OK]),
        ("GET", "/metrics", [S::OK, S::OK, S::OK]),
        ("GET", "/api/openapi.json", [S::OK, S::OK, S::OK]),
        ("POST", "/api/users", [S::CREATED, S::CREATED, S::CREATED]),
        ("GET", "/api/me", [S::UNAUTHORIZED, S::UNAUTHORIZED, S::OK]),
        ("POST", "/api/session", [S::OK, S::OK, S::OK]),
        ("DELETE", "/api/session", [S::UNAUTHORIZED, S::UNAUTHORIZED, S::NO_CONTENT]),
        ("POST", "/api/tokens", [S::UNAUTHORIZED, S::UNAUTHORIZED, S::CREATED]),
        ("GET", "/api/tokens", [S::UNAUTHORIZED, S::UNAUTHORIZED, S::OK]),
        ("DELETE", "/api/tokens/{id}", [S::UNAUTHORIZED, S::UNAUTHORIZED, S::NO_CONTENT]),
    ];
    assert_eq!(table.iter().map(|(m, p, _)| (*m, *p)).collect::<Vec<_>>(), OPERATIONS);

    let mut n = 0;
    for (method, path, expected) in table {
        for (credential, expected) in [None, Revoked, Valid].into_iter().zip(expected) {
            n += 1;
            let request = build(&app, &session, method, path, n).await;
            let request = match credential {
                None => request,
                Revoked => with_token(request, &revoked),
                Valid => with_token(request, &valid),
            };
            let reply = app.send(request).await;
            assert_eq!(reply.status, *expected, "{method} {path} with {credential:?}: {}", reply.text());
            if !reply.status.is_success() {
                assert_eq!(reply.error_code(), "unauthenticated", "{method} {path}");
            }
        }
    }
}

/// A well-formed request for the route; `n` makes names and ids fresh.
async fn build(app: &TestApp, session: &crate::support::Session, method: &str, path: &str, n: usize) -> Request<Body> {
    let method: Method = method.parse().unwrap();
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
        "/api/tokens/{id}" => {
            let id = app.create_token(session, "to delete").await["id"].as_i64().unwrap();
            request(method, &format!("/api/tokens/{id}"))
        }
        _ => request(method, path),
    }
}
