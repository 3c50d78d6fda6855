//! End to end, the abuse suite of issue 14: the `daig-server` process and four `daig-provider` processes train the
//! MNIST MLP to completion while thousands of abusive clients hit the same server over loopback (the scenario and
//! its counts are in `daig_tests::abuse`). The server's defaults are tested, but for the provider write timeout
//! (3 s instead of 20 s, so that the non-readers' leases come back within the run).

use std::time::Duration;

use daig_tests::abuse::{self, AbuseOutcome};
use daig_tests::{assert_exactly_once, e2e, mnist_dir};

/// The most resident memory the server may reach under the abuse, in MiB. Measured on the 2-core test machine
/// (this test's build), without the model at the limits: 67 MiB before the abuse (the MNIST project, after the 41
/// sign-ups and log-ins) and 440 MiB at the peak, with about 2,500 connections open at once (most of the growth is
/// likely the 200 non-readers' shard chunks, 2 MiB each until their write timeout). The bound is about 1.5 times
/// that peak. What it is there to catch: the model at the limits started (its parameters and optimiser state: 2.3
/// GiB at the peak, measured), password hashes in parallel without bound (1.5 GiB before any abuse, measured), the
/// allocator keeping each hash's 19 MiB (about 250 MiB more, measured), or a shard buffered whole for each
/// non-reader (3 MB each). It would not catch a single 100 MB record held in memory.
const RSS_BOUND_MIB: f64 = 640.0;

/// The p99 of `GET /api/health` allowed throughout, from issue 14.
const HEALTH_P99_BOUND: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_honest_project_trains_to_completion_while_thousands_of_clients_abuse_the_server() {
    let Some(mnist) = mnist_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = abuse::run(&e2e!(), &mnist, dir.path(), abuse::Scenario::Abused).await.unwrap();
    let figures = &run.figures;
    let log = run.server.log_text();
    for line in log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(30) {
        eprintln!("server: {line}");
    }
    let outcome = run.abuse.as_ref().expect("the abuse ran");
    let (p50, p99) = (figures.health.quantile(0.5), figures.health.quantile(0.99));
    eprintln!(
        "abuse: training {:.1} s; /api/health p50 {p50:?} p99 {p99:?} max {:?} over {} requests ({} failed); RSS \
         {:.0} MiB at rest, {:.0} MiB at the peak\n{outcome:#?}",
        figures.training.as_secs_f64(),
        figures.health.quantile(1.0),
        figures.health.samples.len(),
        figures.health.failures,
        figures.rss_start_mib,
        figures.rss_peak_mib,
    );

    // The honest project: finished, every batch of every epoch applied exactly once, every provider told to stop.
    for (exit, log) in &run.provider_exits {
        assert!(exit.is_some_and(|e| e.success()), "an honest provider: {exit:?}\n{log}");
    }
    assert_exactly_once(&run.server.db().await.unwrap(), run.project, abuse::EPOCHS, abuse::BATCH_SIZE).await;
    let credits = run.owner.get(&format!("/api/projects/{}/credits", run.project)).await.unwrap();
    assert!(credits["shut_out"].as_array().unwrap().is_empty(), "no honest provider was shut out: {credits}");
    assert!(!run.owner.get_bytes(&format!("/api/projects/{}/model", run.project)).await.unwrap().is_empty());

    // A model at the limits of the model format is over this server's model budget: refused when created (422,
    // naming the budget's parameter limit, `max_project_params`) or when it would start (409 `model_budget`);
    // started, it alone would take GiBs of the server's memory.
    let (status, code, message) = &outcome.big_model;
    let budget = daig_server::Settings::default().max_project_params;
    let named = message.contains("model budget") || message.contains(&format!("more than the limit of {budget}"));
    assert!((400..500).contains(status) && named, "the model at the limits: {status} {code} {message}");

    // The server stayed responsive and bounded.
    assert_eq!(figures.health.failures, 0, "every health request was answered 200");
    let expected = figures.training.as_secs_f64() / abuse::HEALTH_PERIOD.as_secs_f64();
    assert!(figures.health.samples.len() as f64 >= expected / 2.0, "the probe ran throughout");
    assert!(p99 < HEALTH_P99_BOUND, "/api/health p99 {p99:?}");
    assert!(figures.rss_peak_mib < RSS_BOUND_MIB, "RSS peak {:.0} MiB", figures.rss_peak_mib);

    assert_every_abusive_client_was_answered_or_dropped(outcome, figures.training);
}

fn assert_every_abusive_client_was_answered_or_dropped(outcome: &AbuseOutcome, training: Duration) {
    // Idle sockets: every one let in (250 addresses within the cap of 8 each), each closed with Goodbye(Timeout)
    // after the Hello timeout, again and again while training lasted.
    assert!(outcome.idle_unexpected.is_empty(), "{:?}", outcome.idle_unexpected);
    assert_eq!(outcome.idle_first_connected, abuse::IDLE_SOCKETS);
    if training > abuse::HELLO_TIMEOUT + Duration::from_secs(2) {
        assert!(outcome.idle_timed_out >= abuse::IDLE_SOCKETS, "{outcome:?}");
    }
    assert!(outcome.idle_longest_wait < abuse::HELLO_TIMEOUT + Duration::from_secs(5), "{outcome:?}");
    // Over the per-address cap: eight of ten let in, two refused 429.
    assert!(outcome.over_cap_unexpected.is_empty(), "{:?}", outcome.over_cap_unexpected);
    assert_eq!(outcome.over_cap, (abuse::OVER_CAP_ADDRESSES * 8, abuse::OVER_CAP_ADDRESSES * 2));
    // Non-readers: each that got a lease and asked for its shard was dropped once the server had waited its write
    // timeout (plus the 2 s it gives the closing frames); the others were told the project finished.
    assert!(outcome.non_readers_unexpected.is_empty(), "{:?}", outcome.non_readers_unexpected);
    assert_eq!(outcome.non_readers_dropped + outcome.non_readers_without_lease, abuse::NON_READERS);
    assert!(outcome.non_readers_dropped > 0, "{outcome:?}");
    assert!(outcome.write_timeout_drops >= outcome.non_readers_dropped as f64, "{outcome:?}");
    assert!(outcome.non_readers_longest < abuse::PROVIDER_WRITE_TIMEOUT + Duration::from_secs(10), "{outcome:?}");
    // Silent uploads: the server took max_uploads (64) of them, the first, four from each of 16 accounts, and
    // answered those 408 after the idle timeout; every later one at once, 429 when its account already sent four
    // (14 from each of those 16 accounts), else 503 for the server's budget.
    assert!(outcome.uploads_unexpected.is_empty(), "{:?}", outcome.uploads_unexpected);
    let count = |status: u16, code: &str| outcome.uploads.get(&(status, code.to_owned())).copied().unwrap_or(0);
    let (stalled, per_account, overloaded) =
        (count(408, "upload_stalled"), count(429, "too_many_uploads"), count(503, "overloaded"));
    assert_eq!(stalled, abuse::MAX_UPLOADS, "{:?}", outcome.uploads);
    assert_eq!(stalled + per_account + overloaded, abuse::SILENT_UPLOADS, "{:?}", outcome.uploads);
    let full_accounts = abuse::MAX_UPLOADS / abuse::MAX_UPLOADS_PER_ACCOUNT;
    let later = abuse::SILENT_UPLOADS - abuse::MAX_UPLOADS;
    let from_full = (later / abuse::ACCOUNTS) * full_accounts + (later % abuse::ACCOUNTS).min(full_accounts);
    assert_eq!((per_account, overloaded), (from_full, later - from_full), "{:?}", outcome.uploads);
    let timeout = abuse::UPLOAD_IDLE_TIMEOUT;
    assert!(outcome.uploads_shortest_408 >= timeout - Duration::from_millis(500), "{outcome:?}");
    assert!(outcome.uploads_longest_408 < timeout + Duration::from_secs(10), "{outcome:?}");
    // Event streams: all 300 opened (and reopened as the server ended them); the owner's ninth refused.
    assert!(outcome.streams_unexpected.is_empty(), "{:?}", outcome.streams_unexpected);
    assert_eq!(outcome.streams_first_opened, abuse::EVENT_STREAMS);
    assert_eq!(outcome.stream_over_cap, Some((429, "too_many_streams".to_owned())));
    // Hostile data: refused, naming what is wrong (and within the memory bound above: neither is held whole).
    let (status, code, message) = &outcome.bomb;
    assert_eq!((*status, code.as_str()), (422, "invalid_dataset"), "{message}");
    assert!(message.contains("the array 'x'") && message.contains("unexpected bytes"), "{message}");
    let (status, code, message) = &outcome.long_record;
    assert_eq!((*status, code.as_str()), (422, "invalid_dataset"), "{message}");
    assert!(message.contains("CSV line 4 is longer than"), "{message}");
}
