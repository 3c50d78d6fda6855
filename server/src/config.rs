//! Configuration in two layers: the raw layers (flags and `DAIG_*` variables through clap, then an optional TOML
//! file) are merged and validated into [`Settings`]; [`crate::AppState::new`] then turns `Settings` into the runtime
//! objects (database pool, rate limiter, metrics handle).
//!
//! Precedence, highest first: a flag, its `DAIG_*` environment variable, the TOML file, the built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::{S3Config, StoreConfig};

/// Command-line flags; each also reads the `DAIG_*` environment variable named beside it.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "daig-server", version, about = "The DAIG management server")]
pub struct Args {
    /// A TOML file with any of the settings below (snake_case keys); flags and variables override it.
    #[arg(long, env = "DAIG_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "DAIG_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for the database and stored objects, created if missing [default: ./daig-data].
    #[arg(long, env = "DAIG_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "DAIG_BODY_LIMIT_BYTES", value_name = "BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Time a request may take before it is answered 503, in milliseconds [default: 30000].
    #[arg(long, env = "DAIG_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Requests handled at once; more are answered 503 [default: 512].
    #[arg(long, env = "DAIG_CONCURRENCY_LIMIT", value_name = "N")]
    pub concurrency_limit: Option<usize>,
    /// Log-in and sign-up attempts allowed per client IP and minute, sustained [default: 10].
    #[arg(long, env = "DAIG_AUTH_RATE_PER_MINUTE", value_name = "N")]
    pub auth_rate_per_minute: Option<u32>,
    /// Log-in and sign-up attempts a client IP may make in a burst [default: 5].
    #[arg(long, env = "DAIG_AUTH_RATE_BURST", value_name = "N")]
    pub auth_rate_burst: Option<u32>,
    /// Lifetime of a dashboard session, in seconds [default: 604800, a week].
    #[arg(long, env = "DAIG_SESSION_TTL_SECS", value_name = "SECS")]
    pub session_ttl_secs: Option<u64>,
    /// Longest lifetime of an API token, and the lifetime of one created without `expires_in_secs`, in seconds
    /// [default: 31536000, a year].
    #[arg(long, env = "DAIG_TOKEN_TTL_SECS", value_name = "SECS")]
    pub token_ttl_secs: Option<u64>,
    /// Largest dataset upload accepted by `PUT /api/projects/{id}/dataset/{part}`, in bytes; only that route
    /// takes more than `body_limit_bytes` [default: 2147483648, 2 GiB].
    #[arg(long, env = "DAIG_MAX_UPLOAD_BYTES", value_name = "BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Dataset uploads one account sends at once; more are answered 429 `too_many_uploads` [default: 4].
    #[arg(long, env = "DAIG_MAX_UPLOADS_PER_ACCOUNT", value_name = "N")]
    pub max_uploads_per_account: Option<usize>,
    /// Projects one account may have, in any state; creating another is answered 409 `project_quota`
    /// [default: 100].
    #[arg(long, env = "DAIG_MAX_PROJECTS_PER_ACCOUNT", value_name = "N")]
    pub max_projects_per_account: Option<usize>,
    /// Projects one account may run at once; starting or resuming another is answered 409 `running_quota`
    /// [default: 4].
    #[arg(long, env = "DAIG_MAX_RUNNING_PROJECTS_PER_ACCOUNT", value_name = "N")]
    pub max_running_projects_per_account: Option<usize>,
    /// Bytes of dataset shards one account may store, all its projects together; an upload or commit that would
    /// pass it is answered 413 `storage_quota` and leaves nothing [default: 10737418240, 10 GiB].
    #[arg(long, env = "DAIG_MAX_DATASET_BYTES_PER_ACCOUNT", value_name = "BYTES")]
    pub max_dataset_bytes_per_account: Option<u64>,
    /// Dataset uploads the server receives at once, all accounts together; uploads do not take the permits of
    /// `concurrency_limit`, so that they cannot starve other requests [default: 64].
    #[arg(long, env = "DAIG_MAX_UPLOADS", value_name = "N")]
    pub max_uploads: Option<usize>,
    /// How long an upload's body may send nothing before it is answered 408 `upload_stalled` and its file
    /// removed, in milliseconds [default: 30000].
    #[arg(long, env = "DAIG_UPLOAD_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub upload_idle_timeout_ms: Option<u64>,
    /// Live-update streams (`GET /api/projects/{id}/events`) one account holds open at once, one per open project
    /// page; more are answered 429 `too_many_streams` [default: 8].
    #[arg(long, env = "DAIG_MAX_EVENT_STREAMS_PER_ACCOUNT", value_name = "N")]
    pub max_event_streams_per_account: Option<usize>,
    /// Live-update streams the server holds open at once, all accounts together; streams take no permit of
    /// `concurrency_limit` once they have started, so they are bounded here instead [default: 1024].
    #[arg(long, env = "DAIG_MAX_EVENT_STREAMS", value_name = "N")]
    pub max_event_streams: Option<usize>,
    /// How often providers and the server exchange heartbeats, in milliseconds; a provider silent for three
    /// intervals is dropped and its leases return to the queue [default: 5000].
    #[arg(long, env = "DAIG_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Provider WebSocket connections held at once; more are refused [default: 20000].
    #[arg(long, env = "DAIG_MAX_PROVIDER_CONNECTIONS", value_name = "N")]
    pub max_provider_connections: Option<usize>,
    /// CPU threads that recompute providers' contributions to check them, for all projects together
    /// [default: 1].
    #[arg(long, env = "DAIG_CHECK_THREADS", value_name = "N")]
    pub check_threads: Option<usize>,
    /// Check providers' contributions by recomputing them [default: true]. Turn it off only where every provider is
    /// trusted (a private grid, a benchmark of what checks cost): unchecked contributions are applied as sent.
    #[arg(long, env = "DAIG_CHECK_CONTRIBUTIONS", value_name = "BOOL")]
    pub check_contributions: Option<bool>,
    /// Provider connections one client address holds at once (an IPv6 address counts by its /64), so that
    /// opening sockets cannot multiply a client's share [default: 8].
    #[arg(long, env = "DAIG_MAX_PROVIDER_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub max_provider_connections_per_address: Option<usize>,
    /// How long the address of a provider shut out for failing a check is refused, in seconds; 0 bans no
    /// address (its key is refused for good either way) [default: 3600].
    #[arg(long, env = "DAIG_SHUT_OUT_BAN_SECS", value_name = "SECS")]
    pub shut_out_ban_secs: Option<u64>,
    /// Operations a visitor's device may be asked for by its first lease of a project, before its speed is
    /// known: one batch (batch_size samples x the model's training operations per sample). A project whose batch
    /// costs more cannot start here (model budget) [default: 500000000000].
    #[arg(long, env = "DAIG_MAX_FIRST_LEASE_FLOPS", value_name = "N")]
    pub max_first_lease_flops: Option<u64>,
    /// Server memory a running project may take, as estimated at its start: 20 bytes per parameter
    /// (parameters, optimiser state, update buffer, versions kept for checks) and its validation split as f32
    /// (model budget) [default: 2147483648].
    #[arg(long, env = "DAIG_MAX_PROJECT_MEMORY_BYTES", value_name = "BYTES")]
    pub max_project_memory_bytes: Option<u64>,
    /// Forward-pass floating-point operations per sample of a project's model, for a project to be created or
    /// started here (model budget) [default: 2000000000].
    #[arg(long, env = "DAIG_MAX_PROJECT_FLOPS_PER_SAMPLE", value_name = "N")]
    pub max_project_flops_per_sample: Option<u64>,
    /// Parameters of a project's model, for a project to be created or started here (model budget)
    /// [default: 16777216].
    #[arg(long, env = "DAIG_MAX_PROJECT_PARAMS", value_name = "N")]
    pub max_project_params: Option<usize>,
    /// CPU threads that evaluate validation splits, for all projects together: evaluations beyond them
    /// wait their turn [default: 1].
    #[arg(long, env = "DAIG_EVAL_THREADS", value_name = "N")]
    pub eval_threads: Option<usize>,
    /// The percentage of its wall-clock time a running project may spend evaluating its validation split
    /// between epoch ends: after an evaluation that took t, the next waits at least t x (100/percent - 1), and
    /// at least 500 ms [default: 10].
    #[arg(long, env = "DAIG_EVAL_CPU_PERCENT", value_name = "PERCENT")]
    pub eval_cpu_percent: Option<u32>,
    /// How long one lease should take a provider at its measured speed: leases of several batches are cut to
    /// it (a provider whose speed is not measured yet gets one batch), and its deadline is a few times it
    /// [default: 5].
    #[arg(long, env = "DAIG_LEASE_SECONDS", value_name = "SECONDS")]
    pub lease_seconds: Option<u32>,
    /// Provider connections one client address (an IPv6 /64) may open per minute, in bursts of as many;
    /// more are answered 429 with Retry-After, so that reconnecting cannot churn identities and rows [default: 60].
    #[arg(long, env = "DAIG_PROVIDER_CONNECTS_PER_MINUTE", value_name = "N")]
    pub provider_connects_per_minute: Option<u32>,
    /// Frames one provider connection may send per second on average (bursts of twice as many pass); a
    /// provider that sends more is dropped [default: 500].
    #[arg(long, env = "DAIG_MAX_PROVIDER_FRAMES_PER_SEC", value_name = "N")]
    pub max_provider_frames_per_sec: Option<u32>,
    /// Memory for contributions being received from providers, all connections together, in bytes; a
    /// contribution waits for its share (or its provider is dropped after provider_write_timeout_ms) [default: 1073741824].
    #[arg(long, env = "DAIG_MAX_REASSEMBLY_BYTES", value_name = "BYTES")]
    pub max_reassembly_bytes: Option<u64>,
    /// How long one frame to a provider may take to send, in milliseconds: a provider that stops reading
    /// for this long is dropped and its leases return to the queue [default: 20000].
    #[arg(long, env = "DAIG_PROVIDER_WRITE_TIMEOUT_MS", value_name = "MS")]
    pub provider_write_timeout_ms: Option<u64>,
    /// How long a client has to send the head of an HTTP request (its request line and headers), in
    /// milliseconds; a connection that takes longer is closed [default: 10000].
    #[arg(long, env = "DAIG_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Keep objects in this local directory [default: <data_dir>/objects, or the file's `[store]` table].
    #[arg(long, env = "DAIG_STORE_ROOT", value_name = "DIR", conflicts_with = "store_s3_bucket")]
    pub store_root: Option<PathBuf>,
    /// Keep objects in this S3 bucket (credentials from the usual AWS variables); overrides the file's `[store]`.
    #[arg(long, env = "DAIG_STORE_S3_BUCKET", value_name = "BUCKET")]
    pub store_s3_bucket: Option<String>,
    /// The S3-compatible service's URL, addressed path-style (omit for AWS).
    #[arg(long, env = "DAIG_STORE_S3_ENDPOINT", value_name = "URL")]
    pub store_s3_endpoint: Option<String>,
    /// The S3 region [default: us-east-1].
    #[arg(long, env = "DAIG_STORE_S3_REGION", value_name = "REGION")]
    pub store_s3_region: Option<String>,
    /// Mark cookies `Secure` (set this when the server is reached over HTTPS) [default: false].
    #[arg(long, env = "DAIG_SECURE_COOKIES", value_name = "BOOL")]
    pub secure_cookies: Option<bool>,
    /// Take the client IP for rate limits from the last `X-Forwarded-For` entry (only behind a proxy that sets
    /// it) [default: false].
    #[arg(long, env = "DAIG_TRUST_FORWARDED_FOR", value_name = "BOOL")]
    pub trust_forwarded_for: Option<bool>,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax [default: info]; `RUST_LOG` is not read.
    #[arg(long, env = "DAIG_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// The built web pages (dashboard, contribute page, embed script, the provider's wasm), as `cargo xtask web`
    /// writes them [default: `web/dist` in the current directory].
    #[arg(long, env = "DAIG_WEB_DIR", value_name = "DIR")]
    pub web_dir: Option<PathBuf>,
}

/// The TOML file's contents: the same settings as [`Args`], all optional.
///
/// Unknown keys are refused so that a misspelt setting is not silently ignored. The `[store]` table is a
/// [`StoreConfig`] (see `store::config`); without it objects are kept in `<data_dir>/objects`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub body_limit_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub concurrency_limit: Option<usize>,
    pub auth_rate_per_minute: Option<u32>,
    pub auth_rate_burst: Option<u32>,
    pub session_ttl_secs: Option<u64>,
    pub token_ttl_secs: Option<u64>,
    pub max_upload_bytes: Option<u64>,
    pub max_uploads_per_account: Option<usize>,
    pub max_projects_per_account: Option<usize>,
    pub max_running_projects_per_account: Option<usize>,
    pub max_dataset_bytes_per_account: Option<u64>,
    pub max_uploads: Option<usize>,
    pub upload_idle_timeout_ms: Option<u64>,
    pub max_event_streams_per_account: Option<usize>,
    pub max_event_streams: Option<usize>,
    pub heartbeat_interval_ms: Option<u64>,
    pub max_provider_connections: Option<usize>,
    pub check_threads: Option<usize>,
    pub check_contributions: Option<bool>,
    pub max_provider_connections_per_address: Option<usize>,
    pub shut_out_ban_secs: Option<u64>,
    pub max_first_lease_flops: Option<u64>,
    pub max_project_memory_bytes: Option<u64>,
    pub max_project_flops_per_sample: Option<u64>,
    pub max_project_params: Option<usize>,
    pub eval_threads: Option<usize>,
    pub eval_cpu_percent: Option<u32>,
    pub lease_seconds: Option<u32>,
    pub provider_connects_per_minute: Option<u32>,
    pub max_provider_frames_per_sec: Option<u32>,
    pub max_reassembly_bytes: Option<u64>,
    pub provider_write_timeout_ms: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub secure_cookies: Option<bool>,
    pub trust_forwarded_for: Option<bool>,
    pub log: Option<String>,
    pub web_dir: Option<PathBuf>,
    pub store: Option<StoreConfig>,
}

/// Validated settings: every value checked, every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Address the server listens on.
    pub listen: SocketAddr,
    /// Directory holding the SQLite database (`daig.sqlite`), uploads in progress (`uploads/`) and, with the
    /// default store, stored objects (`objects/`).
    pub data_dir: PathBuf,
    /// Largest request body an extractor reads; larger ones are answered 413.
    pub body_limit_bytes: usize,
    /// Time a request may take before it is answered 503 `timeout`.
    pub request_timeout_ms: u64,
    /// Requests handled at once across all routes; more are answered 503 `overloaded` at once.
    pub concurrency_limit: usize,
    /// Sustained log-in and sign-up attempts per client IP and minute.
    pub auth_rate_per_minute: u32,
    /// Attempts a client IP may make at once before the sustained rate applies.
    pub auth_rate_burst: u32,
    /// Lifetime of a dashboard session.
    pub session_ttl_secs: u64,
    /// Longest lifetime of an API token.
    pub token_ttl_secs: u64,
    /// Largest dataset upload, for the upload route only; every other route keeps `body_limit_bytes`.
    pub max_upload_bytes: u64,
    /// Dataset uploads one account sends at once.
    pub max_uploads_per_account: usize,
    /// Projects one account may have, in any state.
    pub max_projects_per_account: usize,
    /// Projects one account may have running at once.
    pub max_running_projects_per_account: usize,
    /// Bytes of committed dataset shards one account may store, all its projects together.
    pub max_dataset_bytes_per_account: u64,
    /// Dataset uploads received at once, all accounts together.
    pub max_uploads: usize,
    /// How long an upload's body may send nothing.
    pub upload_idle_timeout_ms: u64,
    /// Live-update streams one account holds open at once.
    pub max_event_streams_per_account: usize,
    /// Live-update streams held open at once, all accounts together.
    pub max_event_streams: usize,
    /// How often providers and the server exchange heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Provider connections held at once.
    pub max_provider_connections: usize,
    /// Threads that recompute contributions to check them (the CPU budget of checks).
    pub check_threads: usize,
    /// Whether contributions are checked by recomputation (off only where every provider is trusted).
    pub check_contributions: bool,
    /// Provider connections one client address (an IPv6 /64) holds at once.
    pub max_provider_connections_per_address: usize,
    /// How long a shut-out provider's address is refused; 0 bans none.
    pub shut_out_ban_secs: u64,
    /// Operations a first lease (one batch) may ask of a visitor's device.
    pub max_first_lease_flops: u64,
    /// Server memory a running project may take, as estimated at its start.
    pub max_project_memory_bytes: u64,
    /// Forward-pass FLOPs per sample of a model a project may train here.
    pub max_project_flops_per_sample: u64,
    /// Parameters of a model a project may train here.
    pub max_project_params: usize,
    /// CPU threads that evaluate validation splits, all projects together.
    pub eval_threads: usize,
    /// The percentage of wall-clock time a project may spend on evaluations between epoch ends.
    pub eval_cpu_percent: u32,
    /// How long one lease should take a provider at its measured speed.
    pub lease_seconds: u32,
    /// Provider connections one client address may open per minute.
    pub provider_connects_per_minute: u32,
    /// Frames one provider connection may send per second on average.
    pub max_provider_frames_per_sec: u32,
    /// Memory for contributions being received, all connections together.
    pub max_reassembly_bytes: u64,
    /// How long a frame to a provider may take to send before the provider is dropped.
    pub provider_write_timeout_ms: u64,
    /// How long a client has to send a request's head before its connection is closed.
    pub header_read_timeout_ms: u64,
    /// Where objects (dataset shards, checkpoints, trained models) are kept.
    pub store: StoreConfig,
    /// Whether cookies carry `Secure` (the server is reached over HTTPS).
    pub secure_cookies: bool,
    /// Whether the client IP is read from `X-Forwarded-For` (behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// Log filter for `tracing_subscriber::EnvFilter`.
    pub log: String,
    /// Where the built web pages are; a missing directory leaves the API working and the pages answering 404.
    pub web_dir: PathBuf,
}

/// What can go wrong while reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The `--config` file is not valid TOML for [`FileConfig`].
    #[error("the configuration file {path} is invalid: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    /// Values out of range, all of them listed.
    #[error("invalid settings: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

const MIB: usize = 1 << 20;

/// `web/dist` in the current directory, made absolute: where `cargo xtask web` puts the pages when the server is
/// started in the checkout (`cargo run -p daig-server` there), as `./daig-data` is. Not a path compiled in: with
/// a shared `CARGO_TARGET_DIR` one binary serves several clones, and it must serve the pages of the one it runs in.
fn default_web_dir() -> PathBuf {
    std::path::absolute("web/dist").unwrap_or_else(|_| PathBuf::from("web/dist"))
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./daig-data"),
            body_limit_bytes: MIB,
            request_timeout_ms: 30_000,
            concurrency_limit: 512,
            auth_rate_per_minute: 10,
            auth_rate_burst: 5,
            session_ttl_secs: 7 * 24 * 3600,
            token_ttl_secs: 365 * 24 * 3600,
            max_upload_bytes: 2 << 30,
            max_uploads_per_account: 4,
            max_projects_per_account: 100,
            max_running_projects_per_account: 4,
            max_dataset_bytes_per_account: 10 << 30,
            max_uploads: 64,
            upload_idle_timeout_ms: 30_000,
            max_event_streams_per_account: 8,
            max_event_streams: 1024,
            heartbeat_interval_ms: 5000,
            max_provider_connections: 20_000,
            check_threads: 1,
            check_contributions: true,
            max_provider_connections_per_address: 8,
            shut_out_ban_secs: 3600,
            max_first_lease_flops: 500_000_000_000,
            max_project_memory_bytes: 2 << 30,
            max_project_flops_per_sample: 2_000_000_000,
            max_project_params: 16 << 20,
            eval_threads: 1,
            eval_cpu_percent: 10,
            lease_seconds: 5,
            provider_connects_per_minute: 60,
            max_provider_frames_per_sec: 500,
            max_reassembly_bytes: 1 << 30,
            provider_write_timeout_ms: 20_000,
            header_read_timeout_ms: 10_000,
            store: StoreConfig::Local { root: PathBuf::from("./daig-data/objects") },
            secure_cookies: false,
            trust_forwarded_for: false,
            log: "info".to_owned(),
            web_dir: default_web_dir(),
        }
    }
}

impl Settings {
    /// Defaults with the given data directory: what tests and embedders start from.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self { store: default_store(&data_dir), data_dir, ..Self::default() }
    }

    /// Reads the file named by `args.config`, if any, and merges it under `args`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`] for a bad file, [`ConfigError::Invalid`] listing every
    /// value out of range.
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::from_layers(args, file)
    }

    /// Merges flags over the file over the defaults, then validates.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every value out of range.
    pub fn from_layers(args: Args, file: FileConfig) -> Result<Self, ConfigError> {
        let d = Self::default();
        let data_dir = args.data_dir.clone().or(file.data_dir).unwrap_or(d.data_dir);
        let store = merge_store(&args, file.store, &data_dir);
        let s3_flags_unused = (args.store_s3_endpoint.is_some() || args.store_s3_region.is_some())
            && matches!(store, StoreConfig::Local { .. });
        let settings = Self {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            store,
            data_dir,
            body_limit_bytes: args.body_limit_bytes.or(file.body_limit_bytes).unwrap_or(d.body_limit_bytes),
            request_timeout_ms: args.request_timeout_ms.or(file.request_timeout_ms).unwrap_or(d.request_timeout_ms),
            concurrency_limit: args.concurrency_limit.or(file.concurrency_limit).unwrap_or(d.concurrency_limit),
            auth_rate_per_minute: args
                .auth_rate_per_minute
                .or(file.auth_rate_per_minute)
                .unwrap_or(d.auth_rate_per_minute),
            auth_rate_burst: args.auth_rate_burst.or(file.auth_rate_burst).unwrap_or(d.auth_rate_burst),
            session_ttl_secs: args.session_ttl_secs.or(file.session_ttl_secs).unwrap_or(d.session_ttl_secs),
            token_ttl_secs: args.token_ttl_secs.or(file.token_ttl_secs).unwrap_or(d.token_ttl_secs),
            max_upload_bytes: args.max_upload_bytes.or(file.max_upload_bytes).unwrap_or(d.max_upload_bytes),
            max_uploads_per_account: args
                .max_uploads_per_account
                .or(file.max_uploads_per_account)
                .unwrap_or(d.max_uploads_per_account),
            max_projects_per_account: args
                .max_projects_per_account
                .or(file.max_projects_per_account)
                .unwrap_or(d.max_projects_per_account),
            max_running_projects_per_account: args
                .max_running_projects_per_account
                .or(file.max_running_projects_per_account)
                .unwrap_or(d.max_running_projects_per_account),
            max_dataset_bytes_per_account: args
                .max_dataset_bytes_per_account
                .or(file.max_dataset_bytes_per_account)
                .unwrap_or(d.max_dataset_bytes_per_account),
            max_uploads: args.max_uploads.or(file.max_uploads).unwrap_or(d.max_uploads),
            upload_idle_timeout_ms: args
                .upload_idle_timeout_ms
                .or(file.upload_idle_timeout_ms)
                .unwrap_or(d.upload_idle_timeout_ms),
            max_event_streams_per_account: args
                .max_event_streams_per_account
                .or(file.max_event_streams_per_account)
                .unwrap_or(d.max_event_streams_per_account),
            max_event_streams: args.max_event_streams.or(file.max_event_streams).unwrap_or(d.max_event_streams),
            heartbeat_interval_ms: args
                .heartbeat_interval_ms
                .or(file.heartbeat_interval_ms)
                .unwrap_or(d.heartbeat_interval_ms),
            max_provider_connections: args
                .max_provider_connections
                .or(file.max_provider_connections)
                .unwrap_or(d.max_provider_connections),
            check_threads: args.check_threads.or(file.check_threads).unwrap_or(d.check_threads),
            check_contributions: args.check_contributions.or(file.check_contributions).unwrap_or(d.check_contributions),
            max_provider_connections_per_address: args
                .max_provider_connections_per_address
                .or(file.max_provider_connections_per_address)
                .unwrap_or(d.max_provider_connections_per_address),
            shut_out_ban_secs: args.shut_out_ban_secs.or(file.shut_out_ban_secs).unwrap_or(d.shut_out_ban_secs),
            max_first_lease_flops: args
                .max_first_lease_flops
                .or(file.max_first_lease_flops)
                .unwrap_or(d.max_first_lease_flops),
            max_project_memory_bytes: args
                .max_project_memory_bytes
                .or(file.max_project_memory_bytes)
                .unwrap_or(d.max_project_memory_bytes),
            max_project_flops_per_sample: args
                .max_project_flops_per_sample
                .or(file.max_project_flops_per_sample)
                .unwrap_or(d.max_project_flops_per_sample),
            max_project_params: args.max_project_params.or(file.max_project_params).unwrap_or(d.max_project_params),
            eval_threads: args.eval_threads.or(file.eval_threads).unwrap_or(d.eval_threads),
            eval_cpu_percent: args.eval_cpu_percent.or(file.eval_cpu_percent).unwrap_or(d.eval_cpu_percent),
            lease_seconds: args.lease_seconds.or(file.lease_seconds).unwrap_or(d.lease_seconds),
            provider_connects_per_minute: args
                .provider_connects_per_minute
                .or(file.provider_connects_per_minute)
                .unwrap_or(d.provider_connects_per_minute),
            max_provider_frames_per_sec: args
                .max_provider_frames_per_sec
                .or(file.max_provider_frames_per_sec)
                .unwrap_or(d.max_provider_frames_per_sec),
            max_reassembly_bytes: args
                .max_reassembly_bytes
                .or(file.max_reassembly_bytes)
                .unwrap_or(d.max_reassembly_bytes),
            provider_write_timeout_ms: args
                .provider_write_timeout_ms
                .or(file.provider_write_timeout_ms)
                .unwrap_or(d.provider_write_timeout_ms),
            header_read_timeout_ms: args
                .header_read_timeout_ms
                .or(file.header_read_timeout_ms)
                .unwrap_or(d.header_read_timeout_ms),
            secure_cookies: args.secure_cookies.or(file.secure_cookies).unwrap_or(d.secure_cookies),
            trust_forwarded_for: args.trust_forwarded_for.or(file.trust_forwarded_for).unwrap_or(d.trust_forwarded_for),
            log: args.log.or(file.log).unwrap_or(d.log),
            web_dir: args.web_dir.or(file.web_dir).unwrap_or(d.web_dir),
        };
        let mut problems = match settings.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems,
            Err(e) => return Err(e),
        };
        if s3_flags_unused {
            problems.push("store_s3_endpoint and store_s3_region need an S3 store (store_s3_bucket)".to_owned());
        }
        if problems.is_empty() { Ok(settings) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// Checks every value, reporting all problems at once.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every value out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, message: &str| {
            if !ok {
                problems.push(message.to_owned());
            }
        };
        check((1024..=1024 * MIB).contains(&self.body_limit_bytes), "body_limit_bytes must be in 1024..=1073741824");
        check((1..=3_600_000).contains(&self.request_timeout_ms), "request_timeout_ms must be in 1..=3600000");
        check((1..=1_000_000).contains(&self.concurrency_limit), "concurrency_limit must be in 1..=1000000");
        check(self.auth_rate_per_minute >= 1, "auth_rate_per_minute must be at least 1");
        check(self.auth_rate_burst >= 1, "auth_rate_burst must be at least 1");
        check(
            (60..=10 * 365 * 24 * 3600).contains(&self.session_ttl_secs),
            "session_ttl_secs must be in 60..=315360000",
        );
        check((60..=10 * 365 * 24 * 3600).contains(&self.token_ttl_secs), "token_ttl_secs must be in 60..=315360000");
        check(!self.data_dir.as_os_str().is_empty(), "data_dir must not be empty");
        check((50..=600_000).contains(&self.heartbeat_interval_ms), "heartbeat_interval_ms must be in 50..=600000");
        check((1..=1024).contains(&self.max_uploads_per_account), "max_uploads_per_account must be in 1..=1024");
        check((1..=100_000).contains(&self.max_uploads), "max_uploads must be in 1..=100000");
        check(
            (1..=1_000_000).contains(&self.max_projects_per_account),
            "max_projects_per_account must be in 1..=1000000",
        );
        check(
            (1..=10_000).contains(&self.max_running_projects_per_account),
            "max_running_projects_per_account must be in 1..=10000",
        );
        check(
            (1024..=1 << 50).contains(&self.max_dataset_bytes_per_account),
            "max_dataset_bytes_per_account must be in 1024..=1125899906842624",
        );
        check(
            (100..=3_600_000).contains(&self.upload_idle_timeout_ms),
            "upload_idle_timeout_ms must be in 100..=3600000",
        );
        check(
            (1..=1024).contains(&self.max_event_streams_per_account),
            "max_event_streams_per_account must be in 1..=1024",
        );
        check((1..=1_000_000).contains(&self.max_event_streams), "max_event_streams must be in 1..=1000000");
        check(
            (1..=1_000_000).contains(&self.max_provider_connections),
            "max_provider_connections must be in 1..=1000000",
        );
        check((1..=1024).contains(&self.check_threads), "check_threads must be in 1..=1024");
        check(
            (1..=1_000_000).contains(&self.max_provider_connections_per_address),
            "max_provider_connections_per_address must be in 1..=1000000",
        );
        check(self.shut_out_ban_secs <= 365 * 24 * 3600, "shut_out_ban_secs must be in 0..=31536000");
        check(
            (1_000_000..=1 << 60).contains(&self.max_first_lease_flops),
            "max_first_lease_flops must be in 1000000..=1152921504606846976",
        );
        check(
            (MIB as u64..=1 << 40).contains(&self.max_project_memory_bytes),
            "max_project_memory_bytes must be in 1048576..=1099511627776",
        );
        check(
            (1..=50_000_000_000).contains(&self.max_project_flops_per_sample),
            "max_project_flops_per_sample must be in 1..=50000000000",
        );
        check((1..=64 << 20).contains(&self.max_project_params), "max_project_params must be in 1..=67108864");
        check((1..=1024).contains(&self.eval_threads), "eval_threads must be in 1..=1024");
        check((1..=100).contains(&self.eval_cpu_percent), "eval_cpu_percent must be in 1..=100");
        check((1..=600).contains(&self.lease_seconds), "lease_seconds must be in 1..=600");
        check(
            (1..=1_000_000).contains(&self.provider_connects_per_minute),
            "provider_connects_per_minute must be in 1..=1000000",
        );
        check(
            (1..=1_000_000).contains(&self.max_provider_frames_per_sec),
            "max_provider_frames_per_sec must be in 1..=1000000",
        );
        check(
            (MIB as u64..=1 << 40).contains(&self.max_reassembly_bytes),
            "max_reassembly_bytes must be in 1048576..=1099511627776",
        );
        check(
            (100..=600_000).contains(&self.provider_write_timeout_ms),
            "provider_write_timeout_ms must be in 100..=600000",
        );
        check((100..=600_000).contains(&self.header_read_timeout_ms), "header_read_timeout_ms must be in 100..=600000");
        check(
            (1024..=1024 * 1024 * MIB as u64).contains(&self.max_upload_bytes),
            "max_upload_bytes must be in 1024..=1099511627776",
        );
        if let Err(e) = self.store.validate() {
            problems.push(e.to_string());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            problems.push(format!("log is not a valid filter: {e}"));
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The model limits of projects created here: the defaults of [`daig_shared::model::Limits`], with the model
    /// budget (`max_project_params`, `max_project_flops_per_sample`) where it is lower.
    pub fn model_limits(&self) -> daig_shared::model::Limits {
        let limits = daig_shared::model::Limits::default();
        daig_shared::model::Limits {
            max_params: limits.max_params.min(self.max_project_params),
            max_flops_per_sample: limits.max_flops_per_sample.min(self.max_project_flops_per_sample),
            ..limits
        }
    }

    /// The SQLite database file inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("daig.sqlite")
    }

    /// The directory for uploads in progress, inside the data directory.
    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }
}

/// The store from the flags over the file's `[store]` table: `--store-root` picks a local directory,
/// `--store-s3-bucket` an S3 bucket; the endpoint and region flags also adjust an S3 store from the file.
fn merge_store(args: &Args, file: Option<StoreConfig>, data_dir: &Path) -> StoreConfig {
    let mut store = if let Some(root) = &args.store_root {
        StoreConfig::Local { root: root.clone() }
    } else if let Some(bucket) = &args.store_s3_bucket {
        StoreConfig::S3(S3Config::new(bucket.clone()))
    } else {
        file.unwrap_or_else(|| default_store(data_dir))
    };
    if let StoreConfig::S3(s3) = &mut store {
        if let Some(endpoint) = &args.store_s3_endpoint {
            s3.endpoint = Some(endpoint.clone());
            // Most S3-compatible servers need path-style addressing.
            s3.path_style = true;
        }
        if let Some(region) = &args.store_s3_region {
            s3.region = region.clone();
        }
    }
    store
}

/// The store used when the configuration names none: a local directory `objects` in the data directory.
fn default_store(data_dir: &Path) -> StoreConfig {
    StoreConfig::Local { root: data_dir.join("objects") }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file: FileConfig =
            toml::from_str("listen = \"0.0.0.0:9000\"\nconcurrency_limit = 7\nlog = \"debug\"").unwrap();
        let args = Args { concurrency_limit: Some(3), ..Args::default() };
        let s = Settings::from_layers(args, file).unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(s.concurrency_limit, 3);
        assert_eq!(s.log, "debug");
        assert_eq!(s.data_dir, PathBuf::from("./daig-data"));
        assert_eq!(s.store, StoreConfig::Local { root: PathBuf::from("./daig-data/objects") });
    }

    #[test]
    fn the_store_table_is_read_and_defaults_to_the_data_dir() {
        let file: FileConfig = toml::from_str("data_dir = \"/srv/daig\"").unwrap();
        let s = Settings::from_layers(Args::default(), file).unwrap();
        assert_eq!(s.store, StoreConfig::Local { root: PathBuf::from("/srv/daig/objects") });
        let file: FileConfig =
            toml::from_str("[store]\nkind = \"s3\"\nbucket = \"daig\"\nendpoint = \"http://127.0.0.1:9000\"").unwrap();
        let s = Settings::from_layers(Args::default(), file).unwrap();
        let StoreConfig::S3(s3) = &s.store else { panic!("expected S3: {:?}", s.store) };
        assert_eq!(s3.bucket, "daig");
        let file: FileConfig = toml::from_str("[store]\nkind = \"s3\"\nbucket = \"No\"").unwrap();
        let Err(ConfigError::Invalid(problems)) = Settings::from_layers(Args::default(), file) else {
            panic!("expected an invalid bucket name to be refused");
        };
        assert!(problems[0].contains("store.bucket"), "{problems:?}");
    }

    #[test]
    fn store_flags_override_the_file() {
        let file: FileConfig = toml::from_str("[store]\nkind = \"local\"\nroot = \"/a\"").unwrap();
        let args = Args {
            store_s3_bucket: Some("daig".into()),
            store_s3_endpoint: Some("http://127.0.0.1:9000".into()),
            ..Args::default()
        };
        let s = Settings::from_layers(args, file.clone()).unwrap();
        let StoreConfig::S3(s3) = &s.store else { panic!("expected S3: {:?}", s.store) };
        assert_eq!(
            (s3.bucket.as_str(), s3.endpoint.as_deref(), s3.path_style),
            ("daig", Some("http://127.0.0.1:9000"), true)
        );
        let args = Args { store_root: Some("/b".into()), ..Args::default() };
        assert_eq!(Settings::from_layers(args, file.clone()).unwrap().store, StoreConfig::Local { root: "/b".into() });
        let args = Args { store_s3_region: Some("eu-west-1".into()), ..Args::default() };
        let Err(ConfigError::Invalid(problems)) = Settings::from_layers(args, file) else {
            panic!("expected an S3 flag without an S3 store to be refused");
        };
        assert!(problems[0].contains("store_s3_bucket"), "{problems:?}");
    }

    #[test]
    fn every_invalid_value_is_reported() {
        let args = Args { concurrency_limit: Some(0), auth_rate_burst: Some(0), ..Args::default() };
        let Err(ConfigError::Invalid(problems)) = Settings::from_layers(args, FileConfig::default()) else {
            panic!("expected invalid settings");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn every_resource_limit_refuses_zero_naming_itself() {
        let limits = [
            "body_limit_bytes",
            "request_timeout_ms",
            "concurrency_limit",
            "session_ttl_secs",
            "token_ttl_secs",
            "heartbeat_interval_ms",
            "max_uploads_per_account",
            "max_uploads",
            "max_projects_per_account",
            "max_running_projects_per_account",
            "max_dataset_bytes_per_account",
            "upload_idle_timeout_ms",
            "max_event_streams_per_account",
            "max_event_streams",
            "max_provider_connections",
            "check_threads",
            "max_provider_connections_per_address",
            "max_first_lease_flops",
            "max_project_memory_bytes",
            "max_project_flops_per_sample",
            "max_project_params",
            "eval_threads",
            "eval_cpu_percent",
            "lease_seconds",
            "provider_connects_per_minute",
            "max_provider_frames_per_sec",
            "max_reassembly_bytes",
            "provider_write_timeout_ms",
            "header_read_timeout_ms",
            "max_upload_bytes",
        ];
        for name in limits {
            let file: FileConfig = toml::from_str(&format!("{name} = 0")).unwrap();
            let Err(ConfigError::Invalid(problems)) = Settings::from_layers(Args::default(), file) else {
                panic!("{name} = 0 was accepted");
            };
            assert_eq!(problems.len(), 1, "{name}: {problems:?}");
            assert!(problems[0].starts_with(&format!("{name} must be in ")), "{name}: {problems:?}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<FileConfig>("listne = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn the_file_is_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daig.toml");
        std::fs::write(&path, "data_dir = \"/tmp/x\"\nsecure_cookies = true\n").unwrap();
        let s = Settings::load(Args { config: Some(path), ..Args::default() }).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert!(s.secure_cookies);
    }
}
