//! Numbers, times and estimates as the dashboard shows them. Pure functions, tested natively.

use daig_shared::api::training::MetricPoint;

/// `3725` seconds -> `1 h 2 min`; under a minute `45 s`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "unknown".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The metrics history as CSV, one row per point, oldest first; an absent figure is an empty field.
pub fn metrics_csv(metrics: &[MetricPoint]) -> String {
    let mut out = String::from("version,epoch,samples,train_loss,val_loss,val_accuracy,at_unix\n");
    let field = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    for m in metrics {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            m.version,
            m.epoch,
            m.samples,
            field(m.train_loss),
            field(m.val_loss),
            field(m.val_accuracy),
            m.at_unix
        ));
    }
    out
}

/// What a finished project achieved, from its metrics: the last validation accuracy and loss, the samples
/// trained and how long it took from the first point to the last. `None` without a point.
pub fn finished_summary(metrics: &[MetricPoint]) -> Option<String> {
    let (first, last) = (metrics.first()?, metrics.last()?);
    let mut parts = Vec::new();
    if let Some(accuracy) = metrics.iter().rev().find_map(|m| m.val_accuracy) {
        parts.push(format!("validation accuracy {:.2}%", accuracy * 100.0));
    }
    if let Some(loss) = metrics.iter().rev().find_map(|m| m.val_loss) {
        parts.push(format!("validation loss {loss:.4}"));
    }
    let samples = u64::try_from(last.samples).unwrap_or(0);
    let took = duration((last.at_unix - first.at_unix) as f64);
    let figures = if parts.is_empty() { String::new() } else { format!("{}, ", parts.join(", ")) };
    Some(format!("Finished: {figures}after {} samples in {took}.", count(samples)))
}

/// Seconds left to train, from the metrics history: the sample rate over the last minute of points, and the
/// samples still to apply (`train_samples * epochs`, less those applied). `None` without enough history.
pub fn eta_secs(metrics: &[MetricPoint], train_samples: f64, epochs: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = metrics.iter().map(|m| (m.at_unix as f64, m.samples as f64)).collect();
    let &(t_last, s_last) = points.last()?;
    let &(t_first, s_first) = points.iter().find(|(t, _)| t_last - t <= 60.0)?;
    let (t_first, s_first) = if t_last - t_first < 2.0 {
        *points.iter().rev().find(|(t, _)| t_last - t >= 2.0)?
    } else {
        (t_first, s_first)
    };
    let rate = (s_last - s_first) / (t_last - t_first);
    if rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    let left = (train_samples * epochs - s_last).max(0.0);
    Some(left / rate)
}

/// `1234567` -> `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A Unix time as `YYYY-MM-DD HH:MM` UTC.
pub fn date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, (secs % 3600) / 60)
}

/// A byte count as `12.3 MB`.
pub fn bytes(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_export_as_csv_and_sum_up_when_finished() {
        let point = |version: i64, val_accuracy: Option<f64>, at_unix: i64| MetricPoint {
            version,
            epoch: version / 10,
            samples: version * 32,
            train_loss: Some(0.5),
            val_loss: val_accuracy.map(|a| 1.0 - a),
            val_accuracy,
            at_unix,
        };
        let metrics = [point(0, Some(0.1), 1000), point(10, None, 1030), point(20, Some(0.975), 1125)];
        let csv = metrics_csv(&metrics);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "version,epoch,samples,train_loss,val_loss,val_accuracy,at_unix");
        assert_eq!(lines[2], "10,1,320,0.5,,,1030");
        assert_eq!(lines[3], "20,2,640,0.5,0.025000000000000022,0.975,1125");
        assert_eq!(
            finished_summary(&metrics).unwrap(),
            "Finished: validation accuracy 97.50%, validation loss 0.0250, after 640 samples in 2 min 5 s."
        );
        assert_eq!(finished_summary(&[]), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(45.2), "45 s");
        assert_eq!(duration(125.0), "2 min 5 s");
        assert_eq!(duration(3725.0), "1 h 2 min");
        assert_eq!(duration(f64::NAN), "unknown");
    }

    #[test]
    fn the_estimate_follows_the_recent_sample_rate() {
        // 100 samples/s over the last points; 10,000 samples of 20,000 left to do.
        let metrics: Vec<MetricPoint> = (0..=10)
            .map(|i| MetricPoint {
                version: i,
                epoch: 0,
                samples: i * 1000,
                train_loss: None,
                val_loss: None,
                val_accuracy: None,
                at_unix: 1000 + i * 10,
            })
            .collect();
        let eta = eta_secs(&metrics, 10_000.0, 2.0).unwrap();
        assert!((eta - 100.0).abs() < 1e-9, "{eta}");
        assert_eq!(eta_secs(&metrics[..1], 10_000.0, 2.0), None, "one point gives no rate");
        assert_eq!(eta_secs(&[], 1.0, 1.0), None);
    }

    #[test]
    fn counts_dates_and_sizes() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_795_000_000), "2026-11-18 11:06 UTC");
        assert_eq!(bytes(6_272_128.0), "6.3 MB");
    }
}
