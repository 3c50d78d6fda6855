//! The dashboard session cookie and its CSRF protection.

use axum::http::{Method, StatusCode, header};
use serde_json::json;

use crate::support::{Session, TestApp, json_request, request, with_session};

#[tokio::test]
async fn log_in_sets_an_httponly_session_cookie_and_a_readable_csrf_cookie() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let reply = app
        .send(json_request(Method::POST, "/api/session", &json!({"login": "ada", "password": "correct horse"})))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let cookies = reply.set_cookies();
    let session = cookies.iter().find(|c| c.starts_with("daig_session=")).unwrap();
    let csrf = cookies.iter().find(|c| c.starts_with("daig_csrf=")).unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax") && session.contains("Path=/"),
        "{session}"
    );
    assert!(!csrf.contains("HttpOnly") && csrf.contains("SameSite=Lax"), "{csrf}");
    assert!(!session.contains("Secure"), "Secure is off by default: {session}");
    let csrf_value = csrf.split(';').next().unwrap().trim_start_matches("daig_csrf=");
    assert_eq!(reply.json()["csrf_token"], csrf_value);

    let secure = TestApp::with(|s| s.secure_cookies = true).await;
    secure.sign_up("ada").await;
    let reply = secure
        .send(json_request(Method::POST, "/api/session", &json!({"login": "ada", "password": "correct horse"})))
        .await;
    assert!(reply.set_cookies().iter().all(|c| c.contains("; Secure")), "{:?}", reply.set_cookies());
}

#[tokio::test]
async fn cookie_reads_need_no_csrf_token() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let session = app.log_in("ada").await;
    let reply = app.send(with_session(request(Method::GET, "/api/me"), &session, false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["auth"]["kind"], "session");
}

#[tokio::test]
async fn cookie_writes_without_a_matching_csrf_token_are_403() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let session = app.log_in("ada").await;
    let create = || json_request(Method::POST, "/api/tokens", &json!({"name": "x"}));

    let missing = app.send(with_session(create(), &session, false)).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert_eq!(missing.error_code(), "csrf_failed");

    let mut wrong = with_session(create(), &session, false);
    wrong.headers_mut().insert("x-csrf-token", "forged".parse().unwrap());
    assert_eq!(app.send(wrong).await.status, StatusCode::FORBIDDEN);

    // Header and cookie agree but are not the token issued with this session (a planted cookie).
    let planted = Session {
        cookie: format!("{}; daig_csrf=planted", session.cookie.split("; ").next().unwrap()),
        csrf: "planted".into(),
    };
    assert_eq!(app.send(with_session(create(), &planted, true)).await.status, StatusCode::FORBIDDEN);

    assert_eq!(app.send(with_session(create(), &session, true)).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn log_out_ends_the_session() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let session = app.log_in("ada").await;
    let reply = app.send(with_session(request(Method::DELETE, "/api/session"), &session, true)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(reply.set_cookies().iter().all(|c| c.contains("Max-Age=0")), "{:?}", reply.set_cookies());
    let after = app.send(with_session(request(Method::GET, "/api/me"), &session, false)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.error_code(), "unauthenticated");
    assert_eq!(after.headers[header::WWW_AUTHENTICATE], "Bearer");
}

#[tokio::test]
async fn an_expired_session_is_401() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let session = app.log_in("ada").await;
    sqlx::query("UPDATE sessions SET expires_at = 0").execute(app.state.db()).await.unwrap();
    let reply = app.send(with_session(request(Method::GET, "/api/me"), &session, false)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_are_stored_hashed() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let session = app.log_in("ada").await;
    let value = session.cookie.split("; ").next().unwrap().trim_start_matches("daig_session=").to_owned();
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM sessions").fetch_one(app.state.db()).await.unwrap();
    assert_eq!(stored.len(), 32);
    assert_ne!(stored, value.as_bytes());
}
