//! `/metrics`, `/api/health` and `/api/openapi.json`.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode, header};

use crate::support::{TestApp, request};

#[tokio::test]
async fn health_is_ok() {
    let app = TestApp::new().await;
    let reply = app.send(request(Method::GET, "/api/health")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::new().await;
    app.send(request(Method::GET, "/api/health")).await;
    app.send(request(Method::GET, "/api/me")).await;
    let reply = app.send(request(Method::GET, "/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    let text = reply.text();
    let has = |metric: &str, route: &str, status: &str| {
        text.lines().any(|l| {
            l.starts_with(metric)
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{status}\""))
        })
    };
    assert!(has("http_requests_total{", "/api/health", "200"), "{text}");
    assert!(has("http_requests_total{", "/api/me", "401"), "{text}");
    assert!(has("http_request_duration_seconds_bucket{", "/api/health", "200"), "{text}");
}

#[tokio::test]
async fn openapi_lists_every_route_and_the_error_shape() {
    let app = TestApp::new().await;
    let reply = app.send(request(Method::GET, "/api/openapi.json")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let operations: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| format!("{} {path}", m.to_uppercase())))
        .collect();
    let expected: BTreeSet<String> = crate::routes::OPERATIONS.iter().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(operations, expected);
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["properties"]["error"]["$ref"], "#/components/schemas/ErrorDetail", "{error}");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["securitySchemes"]["session"].is_object());
    let not_found = &doc["paths"]["/api/tokens/{id}"]["delete"]["responses"]["404"];
    assert_eq!(not_found["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");
}
