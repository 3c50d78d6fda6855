//! End to end on S3: a requestor drives everything with the `daig` CLI against a `daig-server` whose object store
//! is an S3 server (`s3s-fs`), and two native providers train the project.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use daig_tests::{Provider, S3Server, Server, e2e, mnist_dir};

/// Runs the CLI with its own config directory; asserts success and returns stdout.
fn daig(server: &Server, config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-daig"))
        .args(args)
        .env("DAIG_CONFIG_DIR", config)
        .env("DAIG_SERVER", server.url(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    assert!(status.success(), "daig {args:?}: {status}\n{stdout}\n{stderr}\n{}", server.log_text());
    stdout.into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requestor_trains_and_downloads_a_model_with_the_cli_on_s3() {
    let Some(mnist) = mnist_dir() else { return };
    let Some(s3) = S3Server::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = s3.config_file(dir.path(), "daig-e2e");
    let server =
        Server::start(&e2e!(), dir.path(), &["--config".to_owned(), config.display().to_string()]).await.unwrap();
    let home = dir.path().join("cli");
    let features = mnist.join("images.npy");
    let labels = mnist.join("labels.npy");
    let model = dir.path().join("mlp.json");
    std::fs::write(
        &model,
        r#"{"input_shape": [784], "layers": [{"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
    )
    .unwrap();

    daig(
        &server,
        &home,
        &["signup", "--username", "ada", "--email", "ada@example.org", "--password-stdin"],
        Some("correct horse battery\n"),
    );
    let created = daig(
        &server,
        &home,
        &[
            "--json",
            "project",
            "create",
            "--name",
            "mnist",
            "--model",
            model.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--k",
            "4",
            "--learning-rate",
            "0.003",
            "--samples-per-shard",
            "1000",
        ],
        None,
    );
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"].as_i64().unwrap();
    let id_arg = id.to_string();
    let uploaded = daig(
        &server,
        &home,
        &["upload", &id_arg, "--features", features.to_str().unwrap(), "--labels", labels.to_str().unwrap()],
        None,
    );
    assert!(uploaded.contains("7200") || uploaded.contains("7,200"), "{uploaded}");
    daig(&server, &home, &["start", &id_arg], None);
    let _providers: Vec<Provider> =
        (0..2).map(|i| Provider::start(&e2e!(), &server, id, dir.path(), &format!("provider{i}")).unwrap()).collect();
    // `status --watch` returns once the project is finished.
    let watched = tokio::task::spawn_blocking({
        let (url, home) = (server.url(""), home.clone());
        move || {
            let output = Command::new(env!("CARGO_BIN_EXE_e2e-daig"))
                .args(["status", &id.to_string(), "--watch", "--interval", "1"])
                .env("DAIG_CONFIG_DIR", &home)
                .env("DAIG_SERVER", url)
                .output()
                .unwrap();
            (output.status, String::from_utf8_lossy(&output.stdout).into_owned())
        }
    });
    let (status, out) = tokio::time::timeout(Duration::from_secs(600), watched).await.unwrap().unwrap();
    assert!(status.success(), "{status}: {out}");
    assert!(out.contains("finished"), "{out}");

    let out_dir = dir.path().join("model");
    daig(&server, &home, &["download", &id_arg, "--out", out_dir.to_str().unwrap()], None);
    let file = std::fs::read(out_dir.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    assert_eq!(tensors.names().len(), 4);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("metrics.json")).unwrap()).unwrap();
    let last = metrics.as_array().unwrap().last().unwrap();
    assert!(last["val_accuracy"].as_f64().unwrap() >= 0.85, "{last}");
    // The latest checkpoint is the final version's parameters.
    daig(&server, &home, &["download", &id_arg, "--checkpoint", "latest", "--out", out_dir.to_str().unwrap()], None);
    let checkpoint = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("checkpoint-v"))
        .expect("a checkpoint file");
    let checkpoint = std::fs::read(checkpoint).unwrap();
    let checkpoint = safetensors::SafeTensors::deserialize(&checkpoint).unwrap();
    for name in tensors.names() {
        assert_eq!(checkpoint.tensor(name).unwrap().data(), tensors.tensor(name).unwrap().data(), "{name}");
    }
    // Everything went to the S3 bucket, nothing to a local objects directory.
    assert!(!server.data_dir.join("objects").exists());
}
