//! The log-in and sign-up rate limit, and the global concurrency limit.

use axum::http::{Method, StatusCode, header};
use serde_json::json;

use crate::support::{TestApp, json_request};

#[tokio::test]
async fn log_in_is_rate_limited_per_ip_with_retry_after() {
    let app = TestApp::with(|s| {
        s.auth_rate_burst = 2;
        s.auth_rate_per_minute = 1;
    })
    .await;
    let attempt = || json_request(Method::POST, "/api/session", &json!({"login": "nobody", "password": "whatever1"}));
    assert_eq!(app.send(attempt()).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.send(attempt()).await.status, StatusCode::UNAUTHORIZED);
    let limited = app.send(attempt()).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error_code(), "rate_limited");
    let retry_after: u64 = limited.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // Sign-up shares the bucket; another address has its own.
    let sign_up = json_request(
        Method::POST,
        "/api/users",
        &json!({"username": "ada", "email": "a@b.co", "password": "12345678"}),
    );
    assert_eq!(app.send(sign_up).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.send_from(attempt(), "198.51.100.7:1").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forwarded_for_is_used_only_when_trusted() {
    let app = TestApp::with(|s| {
        s.auth_rate_burst = 1;
        s.auth_rate_per_minute = 1;
        s.trust_forwarded_for = true;
    })
    .await;
    let attempt = |ip: &str| {
        let mut r = json_request(Method::POST, "/api/session", &json!({"login": "nobody", "password": "whatever1"}));
        r.headers_mut().insert("x-forwarded-for", format!("203.0.113.9, {ip}").parse().unwrap());
        r
    };
    assert_eq!(app.send(attempt("10.0.0.1")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.send(attempt("10.0.0.1")).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.send(attempt("10.0.0.2")).await.status, StatusCode::UNAUTHORIZED);

    let untrusting = TestApp::with(|s| {
        s.auth_rate_burst = 1;
        s.auth_rate_per_minute = 1;
    })
    .await;
    assert_eq!(untrusting.send(attempt("10.0.0.1")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(untrusting.send(attempt("10.0.0.2")).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed_with_503() {
    let app = TestApp::with(|s| s.concurrency_limit = 1).await;
    // Hold the only permit, as a request in flight would.
    let permit = app.state.concurrency().acquire_owned().await.unwrap();
    let reply = app.send(crate::support::request(Method::GET, "/api/health")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "overloaded");
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    drop(permit);
    assert_eq!(app.send(crate::support::request(Method::GET, "/api/health")).await.status, StatusCode::OK);
}
