//! End to end: the `daig-server` process and `daig-provider` processes (CPU) train the MNIST MLP, with
//! providers killed and the server killed and restarted in the middle.

use std::time::Duration;

use daig_tests::{Api, Provider, Server, assert_exactly_once, e2e, mnist_dir};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(600);

/// The MNIST MLP settings; with `target` the project ends at the first epoch end at or above 90%, which at
/// max staleness 2 takes three or four epochs depending on timing.
fn settings(epochs: u32, target: bool) -> serde_json::Value {
    let target = if target { json!(0.9) } else { json!(null) };
    json!({"batch_size": 32, "k": 4, "epochs": epochs, "target_accuracy": target, "samples_per_shard": 1000, "seed": 11, "max_staleness": 2,
           "optimizer": {"method": {"type": "adam"}, "learning_rate": 0.003}, "checkpoint_every": 10})
}

fn final_accuracy(view: &serde_json::Value) -> f64 {
    let metrics = view["metrics"].as_array().expect("metrics");
    metrics.last().and_then(|m| m["val_accuracy"].as_f64()).unwrap_or_else(|| panic!("no accuracy in {view}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_native_providers_train_mnist_to_90_percent_and_apply_every_batch_once() {
    let Some(mnist) = mnist_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&e2e!(), dir.path(), &[]).await.unwrap();
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let id = api.mnist_project(&mnist, settings(10, true)).await.unwrap();
    let mut providers: Vec<Provider> =
        (0..4).map(|i| Provider::start(&e2e!(), &server, id, dir.path(), &format!("provider{i}")).unwrap()).collect();
    let view = api.wait_until(id, LIMIT, "finish", |v| v["state"] == "finished").await.unwrap();
    let accuracy = final_accuracy(&view);
    assert!(accuracy >= 0.9, "validation accuracy {accuracy}");
    // Told the project is done, each provider (started for this project) exits 0.
    for provider in &mut providers {
        let status = provider.expect_exit(Duration::from_secs(30));
        assert!(status.success(), "{status}: {}", std::fs::read_to_string(&provider.log).unwrap());
    }
    assert_exactly_once(&server.db().await.unwrap(), id, view["epoch"].as_i64().unwrap(), 32).await;
    let credits = api.get(&format!("/api/projects/{id}/credits")).await.unwrap();
    assert_eq!(credits["providers"].as_array().unwrap().len(), 4, "every provider earned credit: {credits}");
    // Each presented the persistent key it created in its key file, and none was shut out.
    let db = server.db().await.unwrap();
    let identities: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM provider_identities WHERE verified > 0 AND shut_out_at IS NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(identities, 4, "one identity per key file, each with passed checks");
    assert!(credits["shut_out"].as_array().unwrap().is_empty(), "{credits}");
    for i in 0..4 {
        let key = std::fs::read_to_string(dir.path().join(format!("provider{i}.key"))).unwrap();
        assert_eq!(key.trim().len(), 64, "{key:?}");
    }
    let model = api.get_bytes(&format!("/api/projects/{id}/model")).await.unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&model).unwrap();
    assert_eq!(tensors.names().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_in_the_middle_of_a_lease_loses_nothing() {
    let Some(mnist) = mnist_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&e2e!(), dir.path(), &[]).await.unwrap();
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let id = api.mnist_project(&mnist, settings(2, false)).await.unwrap();
    let mut doomed = Provider::start(&e2e!(), &server, id, dir.path(), "doomed").unwrap();
    let mut survivor = Provider::start(&e2e!(), &server, id, dir.path(), "survivor").unwrap();
    // Both at work (the doomed one holds leases), then SIGKILL.
    api.wait_until(id, LIMIT, "two providers at work", |v| {
        v["version"].as_i64().unwrap_or(0) >= 5 && v["providers"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await
    .unwrap();
    doomed.kill();
    let view = api.wait_until(id, LIMIT, "finish", |v| v["state"] == "finished").await.unwrap();
    assert!(final_accuracy(&view) >= 0.85, "{view}");
    assert!(survivor.expect_exit(Duration::from_secs(30)).success());
    assert_exactly_once(&server.db().await.unwrap(), id, 2, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_and_restarted_resumes_from_its_checkpoint() {
    let Some(mnist) = mnist_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&e2e!(), dir.path(), &[]).await.unwrap();
    let api = Api::sign_up(&server, "ada").await.unwrap();
    let id = api.mnist_project(&mnist, settings(4, false)).await.unwrap();
    let mut providers: Vec<Provider> =
        (0..2).map(|i| Provider::start(&e2e!(), &server, id, dir.path(), &format!("provider{i}")).unwrap()).collect();
    // Past a checkpoint or two, in the middle of the first epochs.
    api.wait_until(id, LIMIT, "progress", |v| v["version"].as_i64().unwrap_or(0) >= 25).await.unwrap();
    server.kill();
    let checkpoint: i64 = sqlx::query_scalar("SELECT checkpoint_version FROM projects WHERE id = ?")
        .bind(id)
        .fetch_one(&server.db().await.unwrap())
        .await
        .unwrap();
    assert!(checkpoint >= 10, "a checkpoint was written before the kill: {checkpoint}");
    server.restart().await.unwrap();
    // The providers reconnect by themselves; the project resumes from the checkpoint and completes.
    let view = api.wait_until(id, LIMIT, "finish after the restart", |v| v["state"] == "finished").await.unwrap();
    let accuracy = final_accuracy(&view);
    assert!(accuracy >= 0.9, "validation accuracy {accuracy}: {}", server.log_text());
    for provider in &mut providers {
        assert!(provider.expect_exit(Duration::from_secs(30)).success());
    }
    assert_exactly_once(&server.db().await.unwrap(), id, 4, 32).await;
    assert!(server.log_text().contains("resumed training"), "the restart resumed the project");
}
