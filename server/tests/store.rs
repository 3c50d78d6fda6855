//! The object stores' conformance suite, run against the local store and against S3 served by `s3s-fs`.
//!
//! The S3 test starts `s3s-fs` (`cargo install s3s-fs --version 0.14.1 --features binary --locked`; CI does).
//! Without it on `PATH` the S3 test fails when `CI` is set and is skipped with a note otherwise.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daig_server::store::{
    LocalStore, ObjectMeta, ObjectStore, S3_PART_BYTES, S3Config, StoreConfig, StoreError, normalize_prefix, open,
    validate_key,
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Deterministic bytes that differ at every offset of a part, so that a misplaced part is caught.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 13)) as u8 ^ seed).collect()
}

/// Yields `data` in reads of at most `chunk` bytes, then fails with an error if `fail` is set.
struct ChunkedReader {
    data: Vec<u8>,
    offset: usize,
    chunk: usize,
    fail: bool,
}

impl ChunkedReader {
    fn new(data: Vec<u8>, chunk: usize) -> Self {
        Self { data, offset: 0, chunk, fail: false }
    }

    fn failing(data: Vec<u8>, chunk: usize) -> Self {
        Self { data, offset: 0, chunk, fail: true }
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let remaining = self.data.len() - self.offset;
        if remaining == 0 {
            return Poll::Ready(if self.fail {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "the client went away"))
            } else {
                Ok(())
            });
        }
        let n = remaining.min(self.chunk).min(buf.remaining());
        let start = self.offset;
        buf.put_slice(&self.data[start..start + n]);
        self.offset += n;
        Poll::Ready(Ok(()))
    }
}

fn keys(objects: &[ObjectMeta]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

/// What every `ObjectStore` must do. `store` must be empty.
async fn conformance(store: Arc<dyn ObjectStore>) {
    // Round trip, replacement, head and exists.
    let key = "projects/1/model.safetensors";
    let meta = store.put(key, Bytes::from_static(b"first version")).await.unwrap();
    assert_eq!(meta, ObjectMeta { key: key.into(), size_bytes: 13 });
    store.put(key, Bytes::from_static(b"second")).await.unwrap();
    assert_eq!(&store.get(key, 1 << 20).await.unwrap()[..], b"second");
    assert_eq!(store.head(key).await.unwrap(), ObjectMeta { key: key.into(), size_bytes: 6 });
    assert!(store.exists(key).await.unwrap());
    assert!(!store.exists("projects/1/other").await.unwrap());
    let empty = "projects/1/empty";
    store.put(empty, Bytes::new()).await.unwrap();
    assert_eq!(store.get(empty, 0).await.unwrap().len(), 0);

    // The size limit is checked against the object's size before reading.
    let small = "projects/1/checkpoint-0001.bin";
    store.put(small, Bytes::from(pattern(1000, 1))).await.unwrap();
    assert_eq!(store.get(small, 1000).await.unwrap(), pattern(1000, 1));
    match store.get(small, 999).await {
        Err(StoreError::TooLarge { key, size_bytes: 1000, max_bytes: 999 }) => assert_eq!(key, small),
        other => panic!("expected TooLarge, got {other:?}"),
    }

    // A large streamed put crossing the S3 multipart threshold (two full parts and a short one), read back as
    // a stream.
    let large = "projects/2/shards/train-0000.bin";
    let data = pattern(2 * S3_PART_BYTES + 4 * 1024 * 1024 + 7, 2);
    let meta = store.put_stream(large, &mut ChunkedReader::new(data.clone(), 64 * 1024 + 1)).await.unwrap();
    assert_eq!(meta.size_bytes, data.len() as u64);
    assert_eq!(store.head(large).await.unwrap().size_bytes, data.len() as u64);
    let mut stream = store.get_stream(large).await.unwrap();
    assert_eq!(stream.size_bytes, data.len() as u64);
    let mut read_back = Vec::new();
    stream.reader.read_to_end(&mut read_back).await.unwrap();
    assert!(read_back == data, "the streamed object differs from what was put");
    assert!(matches!(store.get(large, 1 << 20).await, Err(StoreError::TooLarge { .. })));

    // An object of exactly one part, and one from a file.
    let exact = "projects/2/shards/train-0001.bin";
    store.put_stream(exact, &mut ChunkedReader::new(pattern(S3_PART_BYTES, 3), 1 << 20)).await.unwrap();
    assert_eq!(store.get(exact, u64::MAX).await.unwrap(), pattern(S3_PART_BYTES, 3));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pattern(300_000, 4)).unwrap();
    let from_file = "projects/2/upload.csv";
    assert_eq!(store.put_file(from_file, file.path()).await.unwrap().size_bytes, 300_000);
    assert_eq!(store.get(from_file, u64::MAX).await.unwrap(), pattern(300_000, 4));
    assert!(matches!(
        store.put_file("projects/2/missing", Path::new("/nonexistent/daig-file")).await,
        Err(StoreError::Io { .. })
    ));
    assert!(!store.exists("projects/2/missing").await.unwrap());

    // A source that fails midway leaves nothing under the key, below and above the part size; over an
    // existing object, the object stays as it was.
    for (failing, len) in [("projects/3/failed-small", 100_000), ("projects/3/failed-large", S3_PART_BYTES + 12345)] {
        match store.put_stream(failing, &mut ChunkedReader::failing(pattern(len, 5), 1 << 20)).await {
            Err(StoreError::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected the reader's error, got {other:?}"),
        }
        assert!(matches!(store.head(failing).await, Err(StoreError::NotFound(k)) if k == failing));
    }
    assert!(store.put_stream(small, &mut ChunkedReader::failing(pattern(10, 6), 3)).await.is_err());
    assert_eq!(store.get(small, 1000).await.unwrap(), pattern(1000, 1));
    assert!(store.list("projects/3").await.unwrap().is_empty());

    // Listing: sorted, whole segments, and nothing from other prefixes.
    for name in ["b", "a-2", "a/x", "c/d/e", "a.txt"] {
        store.put(&format!("projects/4/{name}"), Bytes::from(name.as_bytes().to_vec())).await.unwrap();
    }
    store.put("projects/42/not-mine", Bytes::from_static(b"x")).await.unwrap();
    store.put("projects/4-other", Bytes::from_static(b"x")).await.unwrap();
    let under_4 = store.list("projects/4").await.unwrap();
    // Byte order of the keys ('-' < '.' < '/'), not the order of a directory walk.
    assert_eq!(
        keys(&under_4),
        ["projects/4/a-2", "projects/4/a.txt", "projects/4/a/x", "projects/4/b", "projects/4/c/d/e"]
    );
    assert_eq!(under_4[0].size_bytes, 3);
    assert_eq!(store.list("projects/4/").await.unwrap(), under_4);
    assert_eq!(keys(&store.list("projects/42").await.unwrap()), ["projects/42/not-mine"]);
    assert!(store.list("projects/nothing").await.unwrap().is_empty());
    let everything = store.list("").await.unwrap();
    assert!(keys(&everything).contains(&large) && keys(&everything).contains(&"projects/4-other"));
    assert!(everything.windows(2).all(|w| w[0].key < w[1].key));

    // Deleting one object, then a prefix; deleting what is missing is not an error.
    store.delete("projects/4/b").await.unwrap();
    assert!(matches!(store.head("projects/4/b").await, Err(StoreError::NotFound(_))));
    store.delete("projects/4/b").await.unwrap();
    assert_eq!(store.delete_prefix("projects/4").await.unwrap(), 4);
    assert!(store.list("projects/4").await.unwrap().is_empty());
    assert!(store.exists("projects/42/not-mine").await.unwrap(), "a prefix covers whole segments");
    assert!(store.exists("projects/4-other").await.unwrap());
    assert_eq!(store.delete_prefix("projects/4").await.unwrap(), 0);
    assert!(matches!(store.delete_prefix("").await, Err(StoreError::InvalidKey { .. })));

    // NotFound from every reading operation.
    let missing = "projects/404/nothing";
    assert!(matches!(store.get(missing, 10).await, Err(StoreError::NotFound(k)) if k == missing));
    assert!(matches!(store.get_stream(missing).await, Err(StoreError::NotFound(k)) if k == missing));
    assert!(matches!(store.head(missing).await, Err(StoreError::NotFound(k)) if k == missing));

    // Invalid keys are refused by every operation, before touching storage.
    let invalid = |r: Result<(), StoreError>| matches!(r, Err(StoreError::InvalidKey { .. }));
    for bad in ["", "/abs", "a/../b", "..", "a//b", "a/", "a\\b", "a/.hidden", "sp ace", "é"] {
        assert!(invalid(store.put(bad, Bytes::new()).await.map(drop)), "put {bad:?}");
        let mut reader: &[u8] = b"x";
        assert!(invalid(store.put_stream(bad, &mut reader).await.map(drop)), "put_stream {bad:?}");
        assert!(invalid(store.get(bad, 10).await.map(drop)), "get {bad:?}");
        assert!(invalid(store.get_stream(bad).await.map(drop)), "get_stream {bad:?}");
        assert!(invalid(store.head(bad).await.map(drop)), "head {bad:?}");
        assert!(invalid(store.delete(bad).await), "delete {bad:?}");
    }
    for bad in ["/", "../x", "a//", "a/../b/"] {
        assert!(invalid(store.list(bad).await.map(drop)), "list {bad:?}");
        assert!(invalid(store.delete_prefix(bad).await.map(drop)), "delete_prefix {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let store = open(&StoreConfig::Local { root: root.clone() }).await.unwrap();
    conformance(store).await;
    // No temporary file is left behind by the failed uploads.
    let mut pending = vec![root];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            assert!(!entry.file_name().to_string_lossy().starts_with('.'), "left behind: {:?}", entry.path());
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
        }
    }
}

#[tokio::test]
async fn local_store_stays_under_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = LocalStore::open(&root).await.unwrap();
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    for key in ["../secret", "a/../../secret", "/etc/passwd", "..\\secret", "./secret"] {
        assert!(matches!(store.get(key, 100).await, Err(StoreError::InvalidKey { .. })), "{key}");
        assert!(matches!(store.put(key, Bytes::from_static(b"x")).await, Err(StoreError::InvalidKey { .. })));
        assert!(matches!(store.delete(key).await, Err(StoreError::InvalidKey { .. })));
    }
    assert!(matches!(store.delete_prefix("..").await, Err(StoreError::InvalidKey { .. })));
    // A directory is a prefix, not an object. (Checked here only: s3s-fs, itself backed by directories,
    // answers a HEAD of a prefix with its directory, where S3 answers 404.)
    store.put("p/q/r", Bytes::from_static(b"x")).await.unwrap();
    assert!(matches!(store.head("p/q").await, Err(StoreError::NotFound(k)) if k == "p/q"));
    assert!(matches!(store.get("p/q", 10).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.get_stream("p").await, Err(StoreError::NotFound(_))));
    store.delete("p/q").await.unwrap();
    assert_eq!(store.delete_prefix("p").await.unwrap(), 1);
    assert_eq!(std::fs::read(dir.path().join("secret")).unwrap(), b"outside");
    store.put("a/b", Bytes::from_static(b"inside")).await.unwrap();
    assert_eq!(std::fs::read(root.join("a").join("b")).unwrap(), b"inside");
    // Files that are not valid keys (put there by hand, or a crashed upload's temporary file) are not listed.
    std::fs::write(root.join("a").join(".tmp-1-1"), b"partial").unwrap();
    std::fs::write(root.join("a").join("with space"), b"foreign").unwrap();
    assert_eq!(keys(&store.list("").await.unwrap()), ["a/b"]);
    // Deleting the last object under a directory removes the emptied directories, not the root.
    std::fs::remove_file(root.join("a").join(".tmp-1-1")).unwrap();
    std::fs::remove_file(root.join("a").join("with space")).unwrap();
    store.delete("a/b").await.unwrap();
    assert!(!root.join("a").exists());
    assert!(root.is_dir());
}

/// An `s3s-fs` server on a free local port, killed when dropped.
struct S3Server {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

const ACCESS_KEY: &str = "daig-test-key";
const SECRET_KEY: &str = "daig-test-secret";

impl S3Server {
    /// Starts the server, or returns `None` (after a note) when `s3s-fs` is missing outside CI.
    fn start() -> Option<Self> {
        let available = Command::new("s3s-fs").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if available.is_err() {
            let note = "s3s-fs is not on PATH; install it with \
                        `cargo install s3s-fs --version 0.14.1 --features binary --locked`";
            assert!(std::env::var_os("CI").is_none(), "{note} (CI must run the S3 tests)");
            eprintln!("note: skipping the S3 store tests: {note}");
            return None;
        }
        let data = tempfile::tempdir().unwrap();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("s3s-fs starts");
        let mut server = Self { child, port, _data: data };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("s3s-fs exited before accepting connections: {status}");
            }
            assert!(Instant::now() < deadline, "s3s-fs did not accept connections on port {port} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            path_style: true,
            create_bucket: true,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            ..S3Config::new(bucket)
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms() {
    let Some(server) = S3Server::start() else { return };
    let store = open(&StoreConfig::S3(S3Config { prefix: Some("deployment-a".into()), ..server.config("daig") }))
        .await
        .unwrap();
    conformance(store.clone()).await;

    // The prefix keeps the store's objects apart from the rest of the bucket.
    let whole_bucket = open(&StoreConfig::S3(server.config("daig"))).await.unwrap();
    store.put("x/y", Bytes::from_static(b"1")).await.unwrap();
    assert!(whole_bucket.exists("deployment-a/x/y").await.unwrap());
    assert!(!whole_bucket.exists("x/y").await.unwrap());
    whole_bucket.put("x/y", Bytes::from_static(b"22")).await.unwrap();
    assert_eq!(&store.get("x/y", 10).await.unwrap()[..], b"1");
    assert_eq!(keys(&store.list("x").await.unwrap()), ["x/y"]);

    // A missing bucket is refused unless the store may create it; wrong credentials are reported.
    let missing = open(&StoreConfig::S3(S3Config { create_bucket: false, ..server.config("missing-bucket") })).await;
    match missing {
        Err(StoreError::Config(message)) => assert!(message.contains("create_bucket"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let wrong_secret =
        open(&StoreConfig::S3(S3Config { secret_access_key: Some("wrong".into()), ..server.config("daig") })).await;
    assert!(matches!(wrong_secret, Err(StoreError::Backend(_))), "{wrong_secret:?}");
}

#[test]
fn keys_and_prefixes_are_validated() {
    for good in ["a", "projects/42/shards/train-0003.bin", "A_b-c.d/e", &"x".repeat(255)] {
        validate_key(good).unwrap();
    }
    let reason = |key: &str| match validate_key(key) {
        Err(StoreError::InvalidKey { reason, .. }) => reason,
        other => panic!("{key:?} should be refused, got {other:?}"),
    };
    assert_eq!(reason(""), "the key is empty");
    assert_eq!(reason("/a"), "it starts with '/'; keys are relative");
    assert_eq!(reason("a/../b"), "it has a \"..\" segment");
    assert_eq!(reason("a//b"), "it has an empty segment ('//' or a trailing '/')");
    assert!(reason("a\\b").contains("a backslash"));
    assert!(reason("a\nb").contains("control character"));
    assert!(reason(&"x".repeat(256)).contains("longer than 255"));
    assert!(reason(&"ab/".repeat(200)).contains("longer than 512"));
    assert_eq!(normalize_prefix("").unwrap(), "");
    assert_eq!(normalize_prefix("projects/4").unwrap(), "projects/4/");
    assert_eq!(normalize_prefix("projects/4/").unwrap(), "projects/4/");
    assert!(normalize_prefix("projects//").is_err());
    let message = StoreError::TooLarge { key: "k".into(), size_bytes: 10, max_bytes: 5 }.to_string();
    assert_eq!(message, "object \"k\" is 10 bytes, more than the limit of 5 bytes");
}

#[test]
fn config_reads_from_toml_and_is_validated() {
    #[derive(serde::Deserialize)]
    struct ServerConfig {
        store: StoreConfig,
    }
    let parse = |text: &str| toml::from_str::<ServerConfig>(text).map(|c| c.store);
    assert_eq!(parse("[store]\nkind = \"local\"").unwrap(), StoreConfig::default());
    let s3 = parse(
        "[store]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\nbucket = \"daig\"\npath_style = true\n\
         create_bucket = true\nprefix = \"prod\"",
    )
    .unwrap();
    let StoreConfig::S3(s3_config) = &s3 else { panic!("{s3:?}") };
    assert_eq!(s3_config.region, "us-east-1");
    assert_eq!(s3_config.prefix.as_deref(), Some("prod"));
    s3.validate().unwrap();
    assert!(parse("[store]\nkind = \"s3\"\nbucket = \"daig\"\nbukcet = \"x\"").is_err(), "unknown fields");
    assert!(parse("[store]\nkind = \"ftp\"").is_err());

    let invalid = |config: S3Config| match StoreConfig::S3(config).validate() {
        Err(StoreError::Config(message)) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    assert!(invalid(S3Config::new("Bad_Bucket")).contains("not a valid bucket name"));
    assert!(invalid(S3Config { endpoint: Some("localhost:9000".into()), ..S3Config::new("daig") }).contains("http://"));
    assert!(invalid(S3Config { prefix: Some("../x".into()), ..S3Config::new("daig") }).contains("store.prefix"));
    assert!(invalid(S3Config { access_key_id: Some("id".into()), ..S3Config::new("daig") }).contains("together"));
    let secret = S3Config {
        access_key_id: Some("id".into()),
        secret_access_key: Some("hunter2".into()),
        ..S3Config::new("daig")
    };
    assert!(!format!("{secret:?}").contains("hunter2"));
}
