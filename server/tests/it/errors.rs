//! Body rejections and unknown routes answer in the error shape with the right status.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, raw_request, request};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::new().await;
    let reply = app.send(raw_request(Method::POST, "/api/users", "application/json", "{\"username\": ")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "malformed_json");
    assert!(reply.json()["error"]["details"]["reason"].as_str().unwrap().contains("line 1"), "{}", reply.text());
}

#[tokio::test]
async fn unknown_fields_wrong_types_and_missing_fields_are_422() {
    let app = TestApp::new().await;
    let cases = [
        (json!({"username": "ada", "email": "a@b.c", "password": "12345678", "admin": true}), "unknown field `admin`"),
        (json!({"username": 7, "email": "a@b.c", "password": "12345678"}), "invalid type"),
        (json!({"username": "ada", "email": "a@b.c"}), "missing field `password`"),
    ];
    for (body, reason) in cases {
        let reply = app.send(raw_request(Method::POST, "/api/users", "application/json", body.to_string())).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(reply.error_code(), "invalid_body");
        let details = reply.json()["error"]["details"]["reason"].as_str().unwrap().to_owned();
        assert!(details.contains(reason), "{details}");
    }
}

#[tokio::test]
async fn a_body_without_json_content_type_is_415() {
    let app = TestApp::new().await;
    let reply = app.send(raw_request(Method::POST, "/api/users", "text/plain", "{}")).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.error_code(), "unsupported_media_type");
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = TestApp::with(|s| s.body_limit_bytes = 1024).await;
    let body = json!({"username": "ada", "email": "a@b.c", "password": "x".repeat(2000)}).to_string();
    let reply = app.send(raw_request(Method::POST, "/api/users", "application/json", body)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_the_error_shape() {
    let app = TestApp::new().await;
    let reply = app.send(request(Method::GET, "/api/nothing-here")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "not_found");
    let reply = app.send(request(Method::PUT, "/api/me")).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.error_code(), "method_not_allowed");
}
