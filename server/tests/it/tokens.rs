//! API tokens: create, list, revoke, and what a revoked, forged, expired or foreign token gets.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, json_request, request, with_session, with_token};

#[tokio::test]
async fn create_list_revoke() {
    let app = TestApp::new().await;
    let (session, token) = app.user_with_token("ada").await;
    assert!(token.starts_with("daig_") && token.len() == 5 + 43, "{token}");

    let second = app
        .send(with_token(
            json_request(Method::POST, "/api/tokens", &json!({"name": "ci", "expires_in_secs": 3600})),
            &token,
        ))
        .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text());
    let second = second.json();
    assert_eq!(second["expires_at_unix"].as_i64().unwrap() - second["created_at_unix"].as_i64().unwrap(), 3600);

    let list = app.send(with_session(request(Method::GET, "/api/tokens"), &session, false)).await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.iter().map(|t| t["name"].as_str().unwrap()).collect::<Vec<_>>(), ["test", "ci"]);
    assert!(tokens.iter().all(|t| t.get("token").is_none()), "a listed token never shows its secret: {list}");
    assert_eq!(tokens[0]["prefix"].as_str().unwrap(), &token[..13]);
    assert!(tokens[0]["last_used_at_unix"].is_i64(), "the first token was used: {list}");

    let id = second["id"].as_i64().unwrap();
    let revoked = app.send(with_token(request(Method::DELETE, &format!("/api/tokens/{id}")), &token)).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let again = app.send(with_token(request(Method::DELETE, &format!("/api/tokens/{id}")), &token)).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let revoked_token = second["token"].as_str().unwrap();
    let reply = app.send(with_token(request(Method::GET, "/api/me"), revoked_token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code(), "unauthenticated");
    let list = app.send(with_token(request(Method::GET, "/api/tokens"), &token)).await.json();
    assert_eq!(list["tokens"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_401() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [forged.as_str(), "daig_", "not-a-token", ""] {
        let reply = app.send(with_token(request(Method::GET, "/api/me"), bad)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(reply.error_code(), "unauthenticated");
    }
    let mut basic = request(Method::GET, "/api/me");
    basic.headers_mut().insert("authorization", "Basic YWRhOnB3".parse().unwrap());
    assert_eq!(app.send(basic).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_bad_bearer_token_is_refused_even_with_a_good_cookie() {
    let app = TestApp::new().await;
    app.sign_up("ada").await;
    let session = app.log_in("ada").await;
    let request = with_token(with_session(request(Method::GET, "/api/me"), &session, false), "daig_forged");
    assert_eq!(app.send(request).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    sqlx::query("UPDATE api_tokens SET expires_at = 0").execute(app.state.db()).await.unwrap();
    assert_eq!(app.send(with_token(request(Method::GET, "/api/me"), &token)).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let rows: Vec<(Vec<u8>, String)> =
        sqlx::query_as("SELECT token_hash, prefix FROM api_tokens").fetch_all(app.state.db()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).to_vec());
    assert_eq!(rows[0].1, token[..13], "only a short prefix is kept in the clear");
}

#[tokio::test]
async fn another_users_token_is_404_and_stays_live() {
    let app = TestApp::new().await;
    let (_, ada) = app.user_with_token("ada").await;
    let (_, grace) = app.user_with_token("grace").await;
    let grace_id = app.send(with_token(request(Method::GET, "/api/tokens"), &grace)).await.json()["tokens"][0]["id"]
        .as_i64()
        .unwrap();
    let reply = app.send(with_token(request(Method::DELETE, &format!("/api/tokens/{grace_id}")), &ada)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "not_found");
    let missing = app.send(with_token(request(Method::DELETE, "/api/tokens/999999"), &ada)).await;
    assert_eq!(missing.body, reply.body, "someone else's token and no token look the same");
    assert_eq!(app.send(with_token(request(Method::GET, "/api/me"), &grace)).await.status, StatusCode::OK);
    let ada_list = app.send(with_token(request(Method::GET, "/api/tokens"), &ada)).await.json();
    assert_eq!(ada_list["tokens"].as_array().unwrap().len(), 1, "ada sees only her own tokens");
}

#[tokio::test]
async fn token_fields_are_validated() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let body = json!({"name": "", "expires_in_secs": 1});
    let reply = app.send(with_token(json_request(Method::POST, "/api/tokens", &body), &token)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.json()["error"]["details"]["fields"].as_array().unwrap().len(), 2);
    let reply = app.send(with_token(request(Method::DELETE, "/api/tokens/abc"), &token)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "bad_request");
}
