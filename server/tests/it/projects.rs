//! Projects: creation from DAIG JSON and Keras, every error at once, the lifecycle, ownership, deletion and the
//! model downloads.

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::support::{TestApp, json_request, manifest_dir, request, small_model, with_token};

fn keras_fixture() -> String {
    let path = manifest_dir().join("../shared/tests/fixtures/keras/mnist_convnet_keras3.json");
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn a_project_is_created_from_daig_json_with_default_settings() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let project = app.create_project(&token, &json!({"name": "iris", "model": small_model()})).await;
    assert_eq!(project["state"], "draft");
    assert_eq!(project["epoch"], 0);
    assert_eq!(project["version"], 0);
    assert_eq!(project["progress"], 0.0);
    // 4*8+8 + 8*3+3 parameters.
    assert_eq!(project["model"]["params"], 67);
    assert!(project["model"]["flops_per_sample"].as_u64().unwrap() > 0);
    assert_eq!(project["settings"]["batch_size"], 32);
    assert_eq!(project["settings"]["aggregation"], "mean");
    assert_eq!(project["settings"]["access"], "public");
    assert_eq!(project["settings"]["optimizer"]["method"]["type"], "adam");
    assert_eq!(project["site_key"], Value::Null);
    assert_eq!(project["metrics"], json!([]));
    assert_eq!(project["providers"], json!([]));
    assert_eq!(project["dataset"], Value::Null);

    let id = project["id"].as_i64().unwrap();
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), &token)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["name"], "iris");
    let reply = app.send(with_token(request(Method::GET, "/api/projects"), &token)).await;
    let list = reply.json();
    assert_eq!(list["projects"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["projects"][0]["state"], "draft");
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}/model/spec")), &token)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["input_shape"], json!([4]));
}

#[tokio::test]
async fn a_project_is_created_from_keras_json_with_a_site_key() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let body = json!({
        "name": "mnist",
        "keras_model": keras_fixture(),
        "loss": "sparse_categorical_crossentropy",
        "settings": {"access": "site_key", "batch_size": 64, "optimizer": {"method": {"type": "sgd", "momentum": 0.9},
                     "learning_rate": 0.05}}
    });
    let project = app.create_project(&token, &body).await;
    assert_eq!(project["model"]["input_shape"], json!([28, 28, 1]));
    assert_eq!(project["model"]["loss"], "cross_entropy");
    assert_eq!(project["settings"]["batch_size"], 64);
    assert!(project["site_key"].as_str().unwrap().starts_with("site_"), "{project}");
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let body = json!({
        "name": "",
        "model": {
            "input_shape": [4],
            "layers": [{"type": "dense", "units": 0}, {"type": "conv2d", "filters": 2, "kernel_size": 3}],
            "loss": "cross_entropy"
        },
        "settings": {"batch_size": 0, "k": 5000, "validation_fraction": 0.9,
                     "optimizer": {"method": {"type": "sgd"}, "learning_rate": -1.0}}
    });
    let reply = app.send(with_token(json_request(Method::POST, "/api/projects", &body), &token)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    assert_eq!(reply.error_code(), "validation_failed");
    let details = &reply.json()["error"]["details"];
    let fields: Vec<&str> =
        details["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(
        fields,
        ["name", "settings.batch_size", "settings.k", "settings.validation_fraction", "settings.optimizer"],
        "{details}"
    );
    let model = details["model"].as_array().unwrap();
    assert!(model.iter().any(|e| e["layer"] == 0), "{details}");
    assert!(model.iter().any(|e| e["layer"] == 1), "{details}");

    // A Keras model without its loss, and an unknown loss.
    let body = json!({"name": "k", "keras_model": keras_fixture()});
    let reply = app.send(with_token(json_request(Method::POST, "/api/projects", &body), &token)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.json()["error"]["details"]["fields"][0]["field"], "loss");
    let body = json!({"name": "k", "keras_model": keras_fixture(), "loss": "hinge", "settings": {"epochs": 0}});
    let reply = app.send(with_token(json_request(Method::POST, "/api/projects", &body), &token)).await;
    let fields = reply.json()["error"]["details"]["fields"].clone();
    assert_eq!(fields.as_array().unwrap().len(), 2, "{fields}");
    // No model at all.
    let reply = app.send(with_token(json_request(Method::POST, "/api/projects", &json!({"name": "x"})), &token)).await;
    assert_eq!(reply.json()["error"]["details"]["fields"][0]["field"], "model");
    // Nothing was created.
    let reply = app.send(with_token(request(Method::GET, "/api/projects"), &token)).await;
    assert_eq!(reply.json()["projects"], json!([]));
}

#[tokio::test]
async fn the_lifecycle_allows_only_legal_moves() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let draft = app.small_project(&token, json!({})).await;
    for action in ["pause", "resume", "cancel"] {
        let reply = app.act(&token, draft, action).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{action}");
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains("draft"), "{}", reply.text());
    }
    let reply = app.act(&token, draft, "start").await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.text().contains("no dataset"), "{}", reply.text());

    let id = app.project_with_dataset(&token).await;
    let steps = [
        ("start", StatusCode::OK, "running"),
        ("start", StatusCode::CONFLICT, "running"),
        ("resume", StatusCode::CONFLICT, "running"),
        ("pause", StatusCode::OK, "paused"),
        ("pause", StatusCode::CONFLICT, "paused"),
        ("resume", StatusCode::OK, "running"),
        ("cancel", StatusCode::OK, "cancelled"),
        ("resume", StatusCode::CONFLICT, "cancelled"),
        ("start", StatusCode::CONFLICT, "cancelled"),
        ("cancel", StatusCode::CONFLICT, "cancelled"),
    ];
    for (action, status, state) in steps {
        let reply = app.act(&token, id, action).await;
        assert_eq!(reply.status, status, "{action}: {}", reply.text());
        if status == StatusCode::CONFLICT {
            assert_eq!(reply.error_code(), "conflict");
        }
        let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), &token)).await;
        assert_eq!(reply.json()["state"], state, "after {action}");
    }
}

#[tokio::test]
async fn another_users_project_is_not_found_on_every_route() {
    let app = TestApp::new().await;
    let (_, ada) = app.user_with_token("ada").await;
    let (_, bob) = app.user_with_token("bob").await;
    let id = app.small_project(&ada, json!({})).await;
    let routes = [
        (Method::GET, format!("/api/projects/{id}")),
        (Method::DELETE, format!("/api/projects/{id}")),
        (Method::POST, format!("/api/projects/{id}/start")),
        (Method::POST, format!("/api/projects/{id}/pause")),
        (Method::POST, format!("/api/projects/{id}/resume")),
        (Method::POST, format!("/api/projects/{id}/cancel")),
        (Method::GET, format!("/api/projects/{id}/model")),
        (Method::GET, format!("/api/projects/{id}/model/spec")),
        (Method::PUT, format!("/api/projects/{id}/dataset/features")),
        (Method::POST, format!("/api/projects/{id}/dataset/commit")),
    ];
    for (method, uri) in routes {
        let reply = app.send(with_token(request(method.clone(), &uri), &bob)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {uri}: {}", reply.text());
        assert_eq!(reply.json()["error"]["message"], "no such project");
    }
    let reply = app.send(with_token(request(Method::GET, "/api/projects"), &bob)).await;
    assert_eq!(reply.json()["projects"], json!([]));
    // Ada's project is untouched.
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), &ada)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn the_trained_model_is_streamed_once_it_is_stored() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    let uri = format!("/api/projects/{id}/model");
    let reply = app.send(with_token(request(Method::GET, &uri), &token)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("no trained model yet"), "{}", reply.text());

    let bytes = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let key = format!("projects/{id}/model/model.safetensors");
    app.state.store().put(&key, bytes.clone()).await.unwrap();
    let reply = app.send(with_token(request(Method::GET, &uri), &token)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/octet-stream");
    assert_eq!(reply.headers["content-length"], "100000");
    assert_eq!(reply.body, bytes);
}

#[tokio::test]
async fn deleting_a_project_removes_its_objects_and_only_its_objects() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.project_with_dataset(&token).await;
    let other = app.project_with_dataset(&token).await;
    let store = app.state.store();
    store.put(&format!("projects/{id}/model/model.safetensors"), Bytes::from_static(b"x")).await.unwrap();
    assert!(!store.list(&format!("projects/{id}")).await.unwrap().is_empty());

    let reply = app.send(with_token(request(Method::DELETE, &format!("/api/projects/{id}")), &token)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert_eq!(store.list(&format!("projects/{id}")).await.unwrap(), []);
    assert_eq!(store.list(&format!("projects/{other}/shards")).await.unwrap().len(), 4);
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), &token)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let shards: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shards WHERE project_id = ?")
        .bind(id)
        .fetch_one(app.state.db())
        .await
        .unwrap();
    assert_eq!(shards, 0);
}
