//! How the CLI prints: numbers with thousands separators, byte sizes, UTC times, the project views that `status`,
//! `project show` and the lifecycle commands share, and the progress bars (drawn on stderr, and only on a terminal,
//! so that stdout stays for results).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::wire::{Dataset, Metric, Project, Provider};

/// Writes to stdout (the `say!` macros come here). A closed stdout (`daig project list | head -1`) ends the
/// process quietly, as SIGPIPE ends a C program: Rust ignores SIGPIPE, so `println!` would panic instead.
pub fn emit(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(super::error::exit::FAILURE.into());
    }
}

/// `value` pretty-printed, for `--json`.
pub fn print_json(value: &Value) {
    // Serialising a `Value` cannot fail.
    say!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// `1234567` as `1,234,567`.
pub fn int(value: impl Into<i128>) -> String {
    let value = value.into();
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0 { format!("-{out}") } else { out }
}

/// A byte count in B, KiB, MiB, GiB or TiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// A shape as `[28, 28]`.
pub fn shape(dims: &[u64]) -> String {
    format!("[{}]", dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
}

/// `epoch 2/10` (counted from 1, as the dashboard shows it: `epoch_shown`), or `epoch 2` when the settings do
/// not say how many.
pub fn epoch(project: &Project) -> String {
    let started = project.state != "draft";
    match project.epochs() {
        Some(epochs) => {
            let epochs = u32::try_from(epochs).unwrap_or(u32::MAX);
            format!("epoch {}/{epochs}", daig_shared::api::project::epoch_shown(project.epoch, epochs, started))
        }
        None => format!("epoch {}", daig_shared::api::project::epoch_shown(project.epoch, u32::MAX, started)),
    }
}

/// `n` and its noun, `one` or `many` as English needs: "1 provider", "2 providers", "0 entries".
pub fn count(n: impl Into<i128>, one: &str, many: &str) -> String {
    let n = n.into();
    if n == 1 { format!("1 {one}") } else { format!("{} {many}", int(n)) }
}

/// One line about a dataset.
pub fn dataset(d: &Dataset) -> String {
    format!(
        "{} training + {} validation samples ({} + {}), {} {} of shape {}",
        int(d.train_samples),
        int(d.validation_samples),
        count(d.train_shards, "shard", "shards"),
        count(d.validation_shards, "shard", "shards"),
        d.format,
        d.feature_dtype,
        shape(&d.sample_shape)
    )
}

/// One line about a metrics entry: its place and whatever losses and accuracy it has.
pub fn metric(m: &Metric) -> String {
    let mut parts = Vec::new();
    if let Some(epoch) = m.epoch {
        parts.push(format!("epoch {epoch}"));
    }
    if let Some(version) = m.version {
        parts.push(format!("version {version}"));
    }
    parts.extend(m.train_loss.map(|l| format!("train loss {l:.4}")));
    parts.extend(m.val_loss.map(|l| format!("validation loss {l:.4}")));
    parts.extend(m.val_accuracy.map(|a| format!("validation accuracy {:.2}%", a * 100.0)));
    if parts.is_empty() { "(empty entry)".to_owned() } else { parts.join(", ") }
}

/// One line about a provider.
pub fn provider(p: &Provider) -> String {
    let mut line = match p.id {
        Some(id) => format!("#{id}"),
        None => "#?".to_owned(),
    };
    if let Some(backend) = &p.backend {
        let _ = write!(line, " {backend}");
    }
    if let Some(adapter) = p.adapter.as_deref().filter(|a| !a.is_empty()) {
        let _ = write!(line, " ({adapter})");
    }
    if let Some(rate) = p.samples_per_sec {
        let _ = write!(line, ", {rate:.0} samples/s");
    }
    if let Some(applied) = p.contributions_applied {
        let _ = write!(line, ", {} applied", count(applied, "contribution", "contributions"));
    }
    if let Some(since) = p.connected_at_unix {
        let _ = write!(line, ", since {}", utc(since));
    }
    line
}

/// The status block: state, progress, dataset, latest metrics, providers. With `detailed`, the model and the
/// main settings too.
pub fn project(p: &Project, detailed: bool) -> String {
    let mut out = format!("Project {} \"{}\": {}\n", p.id, p.name, p.state);
    let _ = writeln!(out, "  progress:  {}, version {}, {:.1}%", epoch(p), p.version, p.progress * 100.0);
    if detailed {
        let m = &p.model;
        let _ = writeln!(
            out,
            "  model:     {}, {}, {} FLOPs per sample, input {}, loss {}",
            count(m.layers, "layer", "layers"),
            count(m.params, "parameter", "parameters"),
            int(m.flops_per_sample),
            shape(&m.input_shape),
            m.loss
        );
        let _ = writeln!(out, "  settings:  {}", settings(&p.settings));
        if let Some(key) = &p.site_key {
            let _ = writeln!(out, "  site key:  {key}");
        }
        let _ = writeln!(out, "  created:   {}", utc(p.created_at_unix));
    }
    match &p.dataset {
        Some(d) => _ = writeln!(out, "  dataset:   {}", dataset(d)),
        None => out.push_str("  dataset:   none yet (upload one with `daig upload`)\n"),
    }
    match p.metrics.last() {
        Some(m) => {
            _ = writeln!(out, "  metrics:   {} ({})", metric(m), count(p.metrics.len() as u64, "entry", "entries"))
        }
        None => out.push_str("  metrics:   none yet\n"),
    }
    let _ = writeln!(out, "  providers: {}", p.providers.len());
    for provider in &p.providers {
        let _ = writeln!(out, "    {}", self::provider(provider));
    }
    out
}

/// The main settings in one line.
fn settings(s: &Value) -> String {
    let get = |key: &str| s.get(key).map_or_else(|| "?".to_owned(), |v| v.to_string());
    let optimizer = s.pointer("/optimizer/method/type").and_then(Value::as_str).unwrap_or("?");
    let rate = s.pointer("/optimizer/learning_rate").map_or_else(|| "?".to_owned(), |v| v.to_string());
    format!(
        "{} epochs, batch size {}, K {}, {optimizer} with learning rate {rate}, validation fraction {}, access {}",
        get("epochs"),
        get("batch_size"),
        get("k"),
        get("validation_fraction"),
        s.get("access").and_then(Value::as_str).unwrap_or("?"),
    )
}

/// The message of the `status --watch` bar: epoch, version, the latest validation loss and accuracy, providers.
pub fn watch_message(p: &Project) -> String {
    let latest = p.metrics.last();
    let loss = latest.and_then(|m| m.val_loss).map_or_else(|| "-".to_owned(), |l| format!("{l:.4}"));
    let accuracy = latest.and_then(|m| m.val_accuracy).map_or_else(|| "-".to_owned(), |a| format!("{:.2}%", a * 100.0));
    format!(
        "{} | {} | version {} | val loss {loss} | val acc {accuracy} | {}",
        p.state,
        epoch(p),
        p.version,
        count(p.providers.len() as u64, "provider", "providers")
    )
}

/// A byte progress bar of `len` bytes on stderr, hidden when `quiet` or when stderr is not a terminal.
pub fn byte_bar(len: u64, prefix: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), target(quiet));
    let style =
        ProgressStyle::with_template("{prefix:>9} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} {eta} {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Turns a [`byte_bar`] whose bytes are all sent into a spinner while the server works on them.
pub fn waiting(bar: &ProgressBar, message: &'static str) {
    if let Ok(style) = ProgressStyle::with_template("{prefix:>9} {spinner} {total_bytes} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
}

/// The `status --watch` bar: progress from 0 to 1 in thousandths, the message from [`watch_message`].
pub fn watch_bar(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(1000), target(quiet));
    let style = ProgressStyle::with_template("[{bar:32}] {percent:>3}% {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

fn target(quiet: bool) -> ProgressDrawTarget {
    // `stderr()` draws only on a terminal by itself.
    if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sizes_and_times() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(101_770), "101,770");
        assert_eq!(int(-1_234_567), "-1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(6_272_128), "6.0 MiB");
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400 + 3600 + 120), "2000-02-29 01:02 UTC");
        assert_eq!(utc(1_767_225_599), "2025-12-31 23:59 UTC");
    }

    #[test]
    fn the_watch_message_shows_the_latest_metrics() {
        let project: Project = serde_json::from_value(serde_json::json!({
            "state": "running", "epoch": 2, "version": 40, "settings": {"epochs": 10},
            "metrics": [{"val_loss": 0.9}, {"val_loss": 0.31234, "val_accuracy": 0.9125}],
            "providers": [{}, {}]
        }))
        .unwrap();
        assert_eq!(
            watch_message(&project),
            "running | epoch 3/10 | version 40 | val loss 0.3123 | val acc 91.25% | 2 providers"
        );
    }

    #[test]
    fn counts_are_singular_only_for_one() {
        assert_eq!(count(1, "provider", "providers"), "1 provider");
        assert_eq!(count(0, "provider", "providers"), "0 providers");
        assert_eq!(count(12_000u64, "entry", "entries"), "12,000 entries");
        let one: Project = serde_json::from_value(serde_json::json!({
            "state": "running", "epoch": 0, "version": 1, "settings": {"epochs": 1}, "metrics": [], "providers": [{}]
        }))
        .unwrap();
        assert!(watch_message(&one).ends_with("| 1 provider"), "{}", watch_message(&one));
    }
}
