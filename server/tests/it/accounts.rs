//! Sign-up, its rules and conflicts, and log-in failures.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, json_request, request, with_token};

#[tokio::test]
async fn sign_up_then_me_with_a_token() {
    let app = TestApp::new().await;
    let user = app.sign_up("ada").await;
    assert_eq!(user["username"], "ada");
    assert_eq!(user["email"], "ada@example.org");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none(), "{user}");

    let session = app.log_in("ada").await;
    let token = app.create_token(&session, "cli").await["token"].as_str().unwrap().to_owned();
    let me = app.send(with_token(request(Method::GET, "/api/me"), &token)).await;
    assert_eq!(me.status, StatusCode::OK);
    let me = me.json();
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["username"], "ada");
    assert_eq!(me["auth"]["kind"], "token");
}

#[tokio::test]
async fn duplicate_username_or_email_is_409_ignoring_case() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let same_name = json!({"username": "ADA", "email": "other@example.org", "password": "correct horse"});
    let reply = app.send(json_request(Method::POST, "/api/users", &same_name)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.error_code(), "conflict");
    assert_eq!(reply.json()["error"]["details"]["field"], "username");

    let same_email = json!({"username": "grace", "email": "Ada@Example.ORG", "password": "correct horse"});
    let reply = app.send(json_request(Method::POST, "/api/users", &same_email)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.json()["error"]["details"]["field"], "email");
}

#[tokio::test]
async fn invalid_fields_are_422_with_every_field_listed() {
    let app = TestApp::new().await;
    let body = json!({"username": "a", "email": "not-an-address", "password": "short"});
    let reply = app.send(json_request(Method::POST, "/api/users", &body)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_code(), "validation_failed");
    let fields: Vec<_> = reply.json()["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["username", "email", "password"]);

    let long = json!({"username": "ada", "email": "ada@example.org", "password": "p".repeat(129)});
    let reply = app.send(json_request(Method::POST, "/api/users", &long)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn log_in_by_email_ignoring_case() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let body = json!({"login": "ADA@example.org", "password": "correct horse"});
    let reply = app.send(json_request(Method::POST, "/api/session", &body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["user"]["username"], "ada");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_generic_401() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let wrong =
        app.send(json_request(Method::POST, "/api/session", &json!({"login": "ada", "password": "wrong horse"}))).await;
    let unknown = app
        .send(json_request(Method::POST, "/api/session", &json!({"login": "nobody", "password": "correct horse"})))
        .await;
    for reply in [&wrong, &unknown] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error_code(), "invalid_credentials");
        assert!(reply.set_cookies().is_empty());
    }
    assert_eq!(wrong.body, unknown.body, "the two failures must not be told apart");
    assert_eq!(wrong.json()["error"]["message"], "wrong login or password");
}
