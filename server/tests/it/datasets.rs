//! Dataset uploads: shards in the store with their hashes, refusals with the reason, and nothing half-registered
//! after a failure.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use daig_server::shared::data::ShardView;
use daig_server::shared::wire::ShardHash;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::support::{TestApp, manifest_dir, npy, request, small_dataset, with_token};

/// Counts the rows of `table` for project `id`.
async fn rows(app: &TestApp, table: &str, id: i64) -> i64 {
    let sql = match table {
        "datasets" => "SELECT COUNT(*) FROM datasets WHERE project_id = ?",
        "shards" => "SELECT COUNT(*) FROM shards WHERE project_id = ?",
        other => panic!("no table {other}"),
    };
    sqlx::query_scalar(sql).bind(id).fetch_one(app.state.db()).await.unwrap()
}

/// Asserts that project `id` has no dataset, no shard rows, no shard objects and no uploads left.
async fn assert_nothing_registered(app: &TestApp, id: i64) {
    assert_eq!(rows(app, "datasets", id).await, 0);
    assert_eq!(rows(app, "shards", id).await, 0);
    assert_eq!(app.state.store().list(&format!("projects/{id}")).await.unwrap(), []);
    let uploads = app.data_dir().join("uploads").join(id.to_string());
    let left: Vec<_> = std::fs::read_dir(&uploads).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert_eq!(left, Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn an_npy_pair_is_validated_and_sharded_into_the_store() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({"samples_per_shard": 10, "validation_fraction": 0.25})).await;
    let (features, labels) = small_dataset(40, 3);
    let reply = app.upload(&token, id, "features", features).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json(), json!({"uploaded": ["features"], "dataset": null}));
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let dataset = &reply.json()["dataset"];
    assert_eq!(dataset["train_samples"], 30, "{dataset}");
    assert_eq!(dataset["validation_samples"], 10);
    assert_eq!(dataset["train_shards"], 3);
    assert_eq!(dataset["validation_shards"], 1);
    assert_eq!(dataset["sample_shape"], json!([4]));

    let objects = app.state.store().list(&format!("projects/{id}/shards")).await.unwrap();
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let prefix = format!("projects/{id}/shards/gen-1");
    assert_eq!(
        keys,
        [
            format!("{prefix}/train-00000.bin"),
            format!("{prefix}/train-00001.bin"),
            format!("{prefix}/train-00002.bin"),
            format!("{prefix}/validation-00000.bin"),
        ]
    );
    let recorded: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT object_key, sha256, sample_count FROM shards WHERE project_id = ? ORDER BY object_key")
            .bind(id)
            .fetch_all(app.state.db())
            .await
            .unwrap();
    assert_eq!(recorded.len(), 4);
    for (key, sha256, count) in recorded {
        let bytes = app.state.store().get(&key, 1 << 20).await.unwrap();
        let hex = ShardHash(Sha256::digest(&bytes).into()).to_string();
        assert_eq!(hex, sha256, "{key}");
        let view = ShardView::decode(&bytes).unwrap();
        assert_eq!(view.len() as i64, count);
        assert_eq!(count, 10);
    }
    // The uploads are gone, the project shows the dataset, and another upload waits beside it for a replacement.
    assert!(!app.data_dir().join("uploads").join(id.to_string()).exists());
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), &token)).await;
    assert_eq!(reply.json()["dataset"]["train_shards"], 3);
    let reply = app.upload(&token, id, "features", small_dataset(40, 3).0).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["uploaded"], json!(["features"]));
    assert_eq!(reply.json()["dataset"]["train_shards"], 3);
}

#[tokio::test]
async fn a_pickled_npy_is_refused_with_the_reason_and_a_retry_works() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    let (features, labels) = small_dataset(20, 3);
    let pickled = npy("|O", &[20], &[0x80, 0x04, 0x95]);
    assert_eq!(app.upload(&token, id, "features", features.clone()).await.status, StatusCode::OK);
    let reply = app.upload(&token, id, "labels", pickled).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    assert_eq!(reply.error_code(), "invalid_dataset");
    let details = &reply.json()["error"]["details"];
    assert_eq!(details["part"], "labels");
    assert!(details["reason"].as_str().unwrap().contains("pickle"), "{details}");
    assert_nothing_registered(&app, id).await;

    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(rows(&app, "datasets", id).await, 1);
}

#[tokio::test]
async fn a_label_out_of_range_is_refused_and_nothing_is_left() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    // Labels 0..5 for a model with 3 classes.
    let (features, labels) = small_dataset(20, 5);
    app.upload(&token, id, "features", features).await;
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    let details = &reply.json()["error"]["details"];
    assert_eq!(details["part"], "labels");
    assert!(details["reason"].as_str().unwrap().contains("sample 3"), "{details}");
    assert_nothing_registered(&app, id).await;
}

#[tokio::test]
async fn features_of_the_wrong_shape_are_refused() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    let features = npy("<f4", &[10, 5], &[0; 200]);
    let labels = small_dataset(10, 3).1;
    app.upload(&token, id, "features", features).await;
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    assert_eq!(reply.json()["error"]["details"]["part"], "dataset");
    assert_nothing_registered(&app, id).await;
}

#[tokio::test]
async fn an_interrupted_upload_leaves_nothing_behind() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        vec![Ok(Bytes::from_static(b"\x93NUMPY")), Err(std::io::Error::other("connection reset"))];
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("/api/projects/{id}/dataset/features"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let reply = app.send(with_token(request, &token)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("interrupted"), "{}", reply.text());
    assert_nothing_registered(&app, id).await;
    let reply = app.send(with_token(request_commit(id), &token)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.text().contains("upload the features and labels first"), "{}", reply.text());
}

fn request_commit(id: i64) -> Request<Body> {
    request(Method::POST, &format!("/api/projects/{id}/dataset/commit"))
}

#[tokio::test]
async fn an_upload_over_the_limit_is_refused_on_this_route_only() {
    let app = TestApp::with(|s| s.max_upload_bytes = 4096).await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    // Larger than the global 1 MiB body limit is not the point: above the upload limit is.
    let reply = app.upload(&token, id, "features", vec![0; 5000]).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.text());
    assert_nothing_registered(&app, id).await;

    // The upload route takes more than the global body limit when max_upload_bytes allows it.
    let app = TestApp::with(|s| s.body_limit_bytes = 1024).await;
    let (_, token) = app.user_with_token("bob").await;
    let id = app.small_project(&token, json!({})).await;
    let (features, labels) = small_dataset(200, 3);
    assert!(features.len() > 1024);
    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn unknown_parts_are_bad_requests() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    let uri = format!("/api/projects/{id}/dataset/weights");
    let reply = app.send(with_token(request(Method::PUT, &uri), &token)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}: {}", reply.text());
    assert!(reply.text().contains("use features or labels"), "{}", reply.text());
}

/// The directory `shared/data/mnist-8k`, searched for upward from this crate.
pub fn mnist_dir() -> Option<std::path::PathBuf> {
    let start = manifest_dir();
    start.ancestors().map(|dir| dir.join("shared/data/mnist-8k")).find(|dir| dir.join("images.npy").is_file())
}

#[tokio::test]
async fn the_mnist_files_are_sharded_shuffled_into_the_local_store() {
    let Some(dir) = mnist_dir() else {
        // Tests and CI read `../shared/data`; a checkout without it can still run the rest.
        assert!(std::env::var_os("CI").is_none(), "CI must have shared/data/mnist-8k beside the clone");
        eprintln!("skipped: no shared/data/mnist-8k above {}", manifest_dir().display());
        return;
    };
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let keras =
        std::fs::read_to_string(manifest_dir().join("../shared/tests/fixtures/keras/mnist_convnet_keras3.json"))
            .unwrap();
    let body = json!({"name": "mnist", "keras_model": keras, "loss": "cross_entropy",
                      "settings": {"samples_per_shard": 1000, "validation_fraction": 0.1, "seed": 7}});
    let id = app.create_project(&token, &body).await["id"].as_i64().unwrap();
    let images = std::fs::read(dir.join("images.npy")).unwrap();
    let labels = std::fs::read(dir.join("labels.npy")).unwrap();
    assert_eq!(app.upload(&token, id, "features", images).await.status, StatusCode::OK);
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let dataset = &reply.json()["dataset"];
    assert_eq!(dataset["train_samples"], 7200, "{dataset}");
    assert_eq!(dataset["validation_samples"], 800);
    assert_eq!(dataset["train_shards"], 8);
    assert_eq!(dataset["validation_shards"], 1);
    // The default store is a directory in the data directory.
    let first = app.data_dir().join(format!("objects/projects/{id}/shards/gen-1/train-00000.bin"));
    let bytes = std::fs::read(&first).unwrap();
    let view = ShardView::decode(&bytes).unwrap();
    assert_eq!(view.len(), 1000);
    // The files are ordered by class; a shuffled shard holds every digit.
    let classes: std::collections::BTreeSet<u32> =
        (0..view.len()).map(|i| view.label(i).unwrap().class().unwrap()).collect();
    assert_eq!(classes.len(), 10, "{classes:?}");
}

/// A body that yields `chunks` with a pause before each.
fn slow_body(chunks: Vec<Vec<u8>>, pause: std::time::Duration) -> Body {
    use futures_util::StreamExt as _;
    let stream = futures_util::stream::iter(chunks).then(move |chunk| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(Bytes::from(chunk))
    });
    Body::from_stream(stream)
}

#[tokio::test]
async fn the_request_timeout_spares_uploads_only() {
    // Long enough for sign-up and log-in (argon2), shorter than three pauses.
    let app = TestApp::with(|s| s.request_timeout_ms = 1000).await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    let pause = std::time::Duration::from_millis(400);
    let (features, _) = small_dataset(10, 3);
    let chunks: Vec<Vec<u8>> = features.chunks(features.len() / 3 + 1).map(<[u8]>::to_vec).collect();
    assert_eq!(chunks.len(), 3);
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("/api/projects/{id}/dataset/features"))
        .body(slow_body(chunks, pause))
        .unwrap();
    let reply = app.send(with_token(request, &token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let body = serde_json::to_vec(&json!({"name": "slow", "model": crate::support::small_model()})).unwrap();
    let chunks: Vec<Vec<u8>> = body.chunks(body.len() / 3 + 1).map(<[u8]>::to_vec).collect();
    assert_eq!(chunks.len(), 3);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/projects")
        .header(header::CONTENT_TYPE, "application/json")
        .body(slow_body(chunks, pause))
        .unwrap();
    let reply = app.send(with_token(request, &token)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert_eq!(reply.error_code(), "timeout");
}

/// A `.npz` archive of `.npy` files, stored or deflated.
fn npz(arrays: &[(&str, Vec<u8>)], deflated: bool) -> Vec<u8> {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflated { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test]
async fn one_npz_with_both_arrays_is_uploaded_as_both_parts() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    for deflated in [false, true] {
        let id = app.small_project(&token, json!({"samples_per_shard": 10, "validation_fraction": 0.0})).await;
        let (features, labels) = small_dataset(20, 3);
        let archive = npz(&[("x", features), ("y", labels)], deflated);
        for part in ["features", "labels"] {
            let uri = format!("/api/projects/{id}/dataset/{part}?format=npz");
            let request = crate::support::raw_request(Method::PUT, &uri, "application/octet-stream", archive.clone());
            let reply = app.send(with_token(request, &token)).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
        assert_eq!(rows(&app, "shards", id).await, 2, "deflated: {deflated}");
        let key = format!("projects/{id}/shards/gen-1/train-00000.bin");
        let bytes = app.state.store().get(&key, 1 << 20).await.unwrap();
        assert_eq!(ShardView::decode(&bytes).unwrap().len(), 10);
    }
}

#[tokio::test]
async fn a_csv_file_is_both_parts_and_a_bad_cell_is_named() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({"samples_per_shard": 8, "validation_fraction": 0.0})).await;
    let mut csv = "a,b,c,d,label\n".to_owned();
    for i in 0..16 {
        csv.push_str(&format!("{i},0.5,1,2,{}\n", i % 3));
    }
    let upload = |csv: String, part: &'static str| {
        let uri = format!("/api/projects/{id}/dataset/{part}?format=csv");
        with_token(crate::support::raw_request(Method::PUT, &uri, "text/csv", csv), &token)
    };
    let reply = app.send(upload(csv.clone(), "labels")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());

    let reply = app.send(upload(csv.replace("7,0.5", "7,abc"), "features")).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    let reason = reply.json()["error"]["details"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("row 9, column 2 ('b')"), "{reason}");
    assert_nothing_registered(&app, id).await;

    let reply = app.send(upload(csv, "features")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let dataset = &reply.json()["dataset"];
    assert_eq!(dataset["format"], "csv");
    assert_eq!(dataset["train_samples"], 16);
    assert_eq!(dataset["train_shards"], 2);
}

/// The object key, SHA-256 and sample count of project `id`'s shard rows, by key.
async fn shard_rows(app: &TestApp, id: i64) -> Vec<(String, String, i64)> {
    sqlx::query_as("SELECT object_key, sha256, sample_count FROM shards WHERE project_id = ? ORDER BY object_key")
        .bind(id)
        .fetch_all(app.state.db())
        .await
        .unwrap()
}

/// Asserts that every shard row of project `id` names a stored object with its recorded hash, and that the store
/// holds no other shard of the project.
async fn assert_shards_match_rows(app: &TestApp, id: i64) {
    let rows = shard_rows(app, id).await;
    assert!(!rows.is_empty());
    for (key, sha256, _) in &rows {
        let bytes = app.state.store().get(key, 1 << 24).await.unwrap_or_else(|e| panic!("{key}: {e}"));
        let hex = ShardHash(Sha256::digest(&bytes).into()).to_string();
        assert_eq!(&hex, sha256, "{key}");
    }
    let stored: Vec<String> =
        app.state.store().list(&format!("projects/{id}/shards")).await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(stored, rows.iter().map(|(k, ..)| k.clone()).collect::<Vec<_>>());
}

/// Every sample of project `id`'s committed shards: its features (`f32`) and its class.
async fn samples(app: &TestApp, id: i64) -> Vec<(Vec<f32>, u32)> {
    let mut out = Vec::new();
    for (key, ..) in shard_rows(app, id).await {
        let bytes = app.state.store().get(&key, 1 << 24).await.unwrap();
        let view = ShardView::decode(&bytes).unwrap();
        for i in 0..view.len() {
            let features =
                view.features_raw(i).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            out.push((features.collect(), view.label(i).unwrap().class().unwrap()));
        }
    }
    out
}

fn upload_request(id: i64, part: &str, query: &str, body: impl Into<Body>) -> Request<Body> {
    let uri = format!("/api/projects/{id}/dataset/{part}?{query}");
    crate::support::raw_request(Method::PUT, &uri, "application/octet-stream", body)
}

#[tokio::test]
async fn a_new_commit_replaces_the_dataset_under_a_new_generation_and_the_old_shards_go() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.project_with_dataset(&token).await;
    let old = shard_rows(&app, id).await;
    assert!(old.iter().all(|(key, ..)| key.starts_with(&format!("projects/{id}/shards/gen-1/"))), "{old:?}");

    let (features, labels) = small_dataset(60, 3);
    let reply = app.upload(&token, id, "features", features).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // Until the new dataset is committed, the old one is in force.
    assert_eq!(reply.json()["dataset"]["train_samples"], 30, "{}", reply.text());
    assert_eq!(shard_rows(&app, id).await, old);
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["dataset"]["train_samples"], 45, "{}", reply.text());
    assert_eq!(reply.json()["dataset"]["validation_samples"], 15);

    let new = shard_rows(&app, id).await;
    assert_eq!(new.iter().map(|(.., n)| n).sum::<i64>(), 60);
    assert!(new.iter().all(|(key, ..)| key.starts_with(&format!("projects/{id}/shards/gen-2/"))), "{new:?}");
    // Only the new generation is stored, each shard with its recorded hash.
    assert_shards_match_rows(&app, id).await;
    assert_eq!(rows(&app, "datasets", id).await, 1);
    assert!(!app.data_dir().join("uploads").join(id.to_string()).exists());
    assert_eq!(app.act(&token, id, "start").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_failing_replacement_leaves_the_old_dataset_in_force() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.project_with_dataset(&token).await;
    let old = shard_rows(&app, id).await;

    // Refused data: labels out of range for the model's 3 classes.
    let (features, labels) = small_dataset(60, 5);
    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    assert_eq!(shard_rows(&app, id).await, old);
    assert_shards_match_rows(&app, id).await;
    assert!(!app.data_dir().join("uploads").join(id.to_string()).exists());

    // The store fails part-way: a directory stands where the new generation's second shard would go, so the
    // first is stored and the second is not.
    let blocker = app.data_dir().join(format!("objects/projects/{id}/shards/gen-2/train-00001.bin"));
    std::fs::create_dir_all(&blocker).unwrap();
    let (features, labels) = small_dataset(60, 3);
    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    let reply = app.upload(&token, id, "labels", labels).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", reply.text());
    assert_eq!(shard_rows(&app, id).await, old);
    // The new generation's stored shard is gone again; the old dataset is whole and can be trained on.
    assert_shards_match_rows(&app, id).await;
    let reply = app.send(with_token(request(Method::GET, &format!("/api/projects/{id}")), &token)).await;
    assert_eq!(reply.json()["dataset"]["train_samples"], 30);

    // The uploads are kept after a server error, so a retry of the commit works once the store does.
    // (Deleting the failed generation's prefix may have taken the blocking directory with it.)
    let _ = std::fs::remove_dir_all(&blocker);
    let reply = app.send(with_token(request_commit(id), &token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["dataset"]["train_samples"], 45);
    assert_shards_match_rows(&app, id).await;
    assert_eq!(app.act(&token, id, "start").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_dataset_cannot_change_once_the_project_is_started() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.project_with_dataset(&token).await;
    let old = shard_rows(&app, id).await;
    for (action, state) in [("start", "running"), ("cancel", "cancelled")] {
        assert_eq!(app.act(&token, id, action).await.status, StatusCode::OK);
        let (features, labels) = small_dataset(60, 3);
        let attempts = [
            app.upload(&token, id, "features", features).await,
            app.upload(&token, id, "labels", labels).await,
            app.send(with_token(request_commit(id), &token)).await,
            app.send(with_token(request(Method::DELETE, &format!("/api/projects/{id}/dataset")), &token)).await,
        ];
        for reply in attempts {
            assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
            let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
            assert!(message.contains(&format!("only be changed while the project is a draft; this one is {state}")));
        }
        assert_eq!(shard_rows(&app, id).await, old);
        assert_shards_match_rows(&app, id).await;
        assert!(!app.data_dir().join("uploads").join(id.to_string()).exists());
    }
}

#[tokio::test]
async fn deleting_the_dataset_removes_its_rows_shards_and_uploads() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.project_with_dataset(&token).await;
    assert_eq!(app.upload(&token, id, "features", small_dataset(20, 3).0).await.status, StatusCode::OK);
    let delete = || with_token(request(Method::DELETE, &format!("/api/projects/{id}/dataset")), &token);
    let reply = app.send(delete()).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert_nothing_registered(&app, id).await;
    assert!(!app.data_dir().join("uploads").join(id.to_string()).exists());
    let reply = app.act(&token, id, "start").await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    // Nothing left to delete is not an error, and a new dataset can be uploaded.
    assert_eq!(app.send(delete()).await.status, StatusCode::NO_CONTENT);
    let (features, labels) = small_dataset(20, 3);
    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    assert_eq!(app.upload(&token, id, "labels", labels).await.status, StatusCode::OK);
    assert_shards_match_rows(&app, id).await;
}

#[tokio::test]
async fn deleting_the_project_removes_every_generation_and_pending_upload() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.project_with_dataset(&token).await;
    let (features, labels) = small_dataset(30, 3);
    assert_eq!(app.upload(&token, id, "features", features.clone()).await.status, StatusCode::OK);
    assert_eq!(app.upload(&token, id, "labels", labels).await.status, StatusCode::OK);
    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    // A stray object of a commit that died half-way, as a crash would leave it.
    let stray = format!("projects/{id}/shards/gen-9/train-00000.bin");
    app.state.store().put(&stray, Bytes::from_static(b"stray")).await.unwrap();
    let reply = app.send(with_token(request(Method::DELETE, &format!("/api/projects/{id}")), &token)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert_nothing_registered(&app, id).await;
    assert!(!app.data_dir().join("uploads").join(id.to_string()).exists());
}

#[tokio::test]
async fn a_commit_sweeps_shards_left_by_a_commit_that_died_and_skips_their_generation() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({"samples_per_shard": 10})).await;
    let stray = format!("projects/{id}/shards/gen-4/train-00000.bin");
    app.state.store().put(&stray, Bytes::from_static(b"stray")).await.unwrap();
    let (features, labels) = small_dataset(20, 3);
    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    assert_eq!(app.upload(&token, id, "labels", labels).await.status, StatusCode::OK);
    let rows = shard_rows(&app, id).await;
    assert!(rows.iter().all(|(key, ..)| key.starts_with(&format!("projects/{id}/shards/gen-5/"))), "{rows:?}");
    assert_shards_match_rows(&app, id).await;
}

/// A CSV of 12 samples with 4 features `i, i + 0.25, i + 0.5, i + 0.75` and the label `i % 3` in column
/// `label_at`, fields separated by `delimiter`, with a header row naming the label column `target` if `header`.
fn csv(label_at: usize, delimiter: char, header: bool) -> String {
    let mut text = String::new();
    let mut names: Vec<String> = (0..4).map(|c| format!("f{c}")).collect();
    names.insert(label_at, "target".into());
    if header {
        text.push_str(&names.join(&delimiter.to_string()));
        text.push('\n');
    }
    for i in 0..12 {
        let mut cells: Vec<String> = (0..4).map(|c| format!("{}", i as f32 + c as f32 * 0.25)).collect();
        cells.insert(label_at, format!("{}", i % 3));
        text.push_str(&cells.join(&delimiter.to_string()));
        text.push('\n');
    }
    text
}

/// Asserts that project `id`'s shards hold the 12 samples of [`csv`], each with its own label.
async fn assert_csv_samples(app: &TestApp, id: i64) {
    let mut found = samples(app, id).await;
    found.sort_by(|a, b| a.0[0].total_cmp(&b.0[0]));
    assert_eq!(found.len(), 12);
    for (i, (features, label)) in found.into_iter().enumerate() {
        let i = i as f32;
        assert_eq!(features, [i, i + 0.25, i + 0.5, i + 0.75]);
        assert_eq!(label, i as u32 % 3);
    }
}

#[tokio::test]
async fn csv_options_choose_the_label_column_the_delimiter_and_the_header_row() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let cases = [
        ("label_column=target", csv(1, ',', true)),
        ("label_index=2", csv(2, ',', true)),
        ("delimiter=%3B&label_column=target", csv(0, ';', true)),
        ("delimiter=tab", csv(4, '\t', true)),
        ("delimiter=%7C&header=false&label_index=0", csv(0, '|', false)),
        ("header=false", csv(4, ',', false)),
    ];
    for (options, body) in cases {
        let id = app.small_project(&token, json!({"samples_per_shard": 5, "validation_fraction": 0.0})).await;
        let reply =
            app.send(with_token(upload_request(id, "features", &format!("format=csv&{options}"), body), &token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{options}: {}", reply.text());
        assert_eq!(reply.json()["dataset"]["train_samples"], 12, "{options}");
        assert_csv_samples(&app, id).await;
    }
}

#[tokio::test]
async fn a_csv_label_column_that_is_not_there_is_named() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    for (options, expected) in [
        ("label_column=species", "no column named 'species'; its columns are 'f0', 'target'"),
        ("label_index=9", "the label column index 9 (from 0) is past the CSV's 5 columns"),
    ] {
        let query = format!("format=csv&{options}");
        let reply = app.send(with_token(upload_request(id, "features", &query, csv(1, ',', true)), &token)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
        let reason = reply.json()["error"]["details"]["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains(expected), "{reason}");
        assert_nothing_registered(&app, id).await;
    }
}

#[tokio::test]
async fn the_npz_array_option_picks_the_array_of_each_part() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({"samples_per_shard": 10, "validation_fraction": 0.0})).await;
    let (features, labels) = small_dataset(20, 3);
    // `x`, the default for features, has the wrong shape for the model: only the option makes this work.
    let wrong = npy("<f4", &[20, 5], &[0; 400]);
    let archive = npz(&[("x", wrong), ("good", features), ("answers", labels)], true);
    let send = |part: &str, query: &str| with_token(upload_request(id, part, query, archive.clone()), &token);

    // Without the option, the labels have no array of a usual name: the reply lists what the archive has.
    let reply = app.send(send("labels", "format=npz")).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    assert_eq!(reply.error_code(), "invalid_dataset");
    assert!(reply.text().contains("it has 'answers', 'good', 'x'"), "{}", reply.text());
    // A name the archive lacks is refused at upload, naming the option and the arrays.
    let reply = app.send(send("labels", "format=npz&array=y")).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.text());
    assert_eq!(reply.error_code(), "invalid_query");
    let field = &reply.json()["error"]["details"]["fields"][0];
    assert_eq!(field["field"], "array");
    assert!(field["message"].as_str().unwrap().contains(r#"no array "y"; it has "answers", "good", "x""#), "{field}");
    assert_nothing_registered(&app, id).await;

    // An array whose header does not fit the model is refused at upload, before its body is read.
    let reply = app.send(send("features", "format=npz&array=x")).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_dataset"));
    assert!(reply.text().contains("sample shape 5"), "{}", reply.text());
    assert_eq!(app.send(send("features", "format=npz&array=good")).await.status, StatusCode::OK);
    let reply = app.send(send("labels", "format=npz&array=answers")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mut found = samples(&app, id).await;
    found.sort_by(|a, b| a.0[0].total_cmp(&b.0[0]));
    assert_eq!(found.len(), 20);
    for (i, (features, label)) in found.into_iter().enumerate() {
        assert_eq!(features[0], (i * 4) as f32 / 10.0);
        assert_eq!(label, i as u32 % 3);
    }
}

#[tokio::test]
async fn unknown_and_bad_query_options_are_each_named() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({})).await;
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "colour=red",
            &[(
                "query",
                "unknown option \"colour\"; the accepted ones are format, array (npz), label_column, label_index, delimiter, header (csv)",
            )],
        ),
        ("format=pkl", &[("format", "\"pkl\" is not npy, npz, idx or csv")]),
        ("format=npy&delimiter=%3B", &[("delimiter", "applies to format=csv only, not npy")]),
        ("format=csv&array=x", &[("array", "applies to format=npz only, not csv")]),
        (
            "format=csv&delimiter=x&header=maybe&label_index=first",
            &[
                ("delimiter", "\"x\" is not a delimiter"),
                ("header", "\"maybe\" is not true or false"),
                ("label_index", "\"first\" is not a column index"),
            ],
        ),
        ("format=csv&label_column=a&label_index=1", &[("label_index", "give label_column or label_index, not both")]),
        ("format=csv&header=false&label_column=a", &[("label_column", "header=false says there is none")]),
        ("format=npy&format=idx", &[("format", "is given more than once")]),
    ];
    for (query, expected) in cases {
        let reply = app.send(with_token(upload_request(id, "features", query, small_dataset(10, 3).0), &token)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {}", reply.text());
        assert_eq!(reply.error_code(), "invalid_query");
        let body = reply.json();
        let fields = body["error"]["details"]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), expected.len(), "{query}: {body}");
        for (field, (name, message)) in fields.iter().zip(expected.iter()) {
            assert_eq!(field["field"], *name, "{query}: {body}");
            assert!(field["message"].as_str().unwrap().contains(message), "{query}: {body}");
            // The top-level message names the option too.
            assert!(body["error"]["message"].as_str().unwrap().contains(&format!("{name}: ")), "{body}");
        }
    }
    assert_nothing_registered(&app, id).await;
}

#[tokio::test]
async fn the_upload_options_are_documented_in_the_openapi_document() {
    let app = TestApp::new().await;
    let reply = app.send(request(Method::GET, "/api/openapi.json")).await;
    let doc = reply.json();
    let parameters = doc["paths"]["/api/projects/{id}/dataset/{part}"]["put"]["parameters"].as_array().unwrap();
    let query: Vec<&str> =
        parameters.iter().filter(|p| p["in"] == "query").map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(query, ["format", "array", "label_column", "label_index", "delimiter", "header"]);
    assert!(doc["paths"]["/api/projects/{id}/dataset"]["delete"].is_object());
}

/// What a server killed mid-upload or mid-commit leaves in the uploads directory (files no manifest names,
/// of any name, and whole directories of deleted projects) is removed at the next start; a pending part and its
/// manifest are kept, and commit as before.
#[tokio::test]
async fn leftovers_of_an_earlier_run_are_swept_and_pending_parts_kept() {
    let app = TestApp::new().await;
    let (_, token) = app.user_with_token("ada").await;
    let id = app.small_project(&token, json!({"samples_per_shard": 10, "validation_fraction": 0.25})).await;
    let (features, labels) = small_dataset(40, 3);
    assert_eq!(app.upload(&token, id, "features", features).await.status, StatusCode::OK);
    let uploads = app.data_dir().join("uploads");
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let pending = names(&uploads.join(id.to_string()));
    assert_eq!(pending.len(), 2, "the features and their manifest: {pending:?}");
    let strays = [".shard-a1b2c3", "labels-x1y2.npy", "features-x1y2.raw", ".labels.json.tmp", "anything"];
    for stray in strays {
        std::fs::write(uploads.join(id.to_string()).join(stray), b"left over").unwrap();
    }
    std::fs::create_dir_all(uploads.join("9999")).unwrap();
    std::fs::write(uploads.join("9999").join("features.json"), b"{}").unwrap();
    std::fs::create_dir_all(uploads.join("not-a-project")).unwrap();
    std::fs::write(uploads.join("not-a-project").join("x"), b"?").unwrap();

    let removed = daig_server::api::datasets::sweep_uploads(&app.state).await;
    assert_eq!(removed, strays.len() + 2);
    assert_eq!(names(&uploads), vec![id.to_string()]);
    assert_eq!(names(&uploads.join(id.to_string())), pending);
    let committed = app.upload(&token, id, "labels", labels).await;
    assert_eq!(committed.status, StatusCode::OK, "{}", committed.text());
    assert_eq!(committed.json()["dataset"]["train_samples"], 30, "{}", committed.text());
}
