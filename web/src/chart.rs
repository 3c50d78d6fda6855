//! Line charts as SVG markup generated from the data: axes with round ticks, one polyline per series, a legend,
//! and a title and description for screen readers. Pure string building, tested natively.

use std::fmt::Write as _;

use crate::dom::escape;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// A CSS class that gives the line its colour (`s1`, `s2`), styled for light and dark themes.
    pub class: &'static str,
    /// `(x, y)` points in x order; non-finite values are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Drawing area inside the SVG view box.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;

/// Round tick values covering `lo..=hi`, about `count` of them.
pub fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || count == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / count as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(magnitude * 10.0);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = first;
    while v <= hi + step * 1e-9 && out.len() < 50 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_owned()
    }
}

/// The chart as an `<svg>` element's markup. `y_range` fixes the y axis (accuracy: 0 to 1); otherwise it fits
/// the data. With no points the chart says so.
pub fn line_chart(title: &str, x_label: &str, series: &[Series], y_range: Option<(f64, f64)>) -> String {
    let points: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let mut svg = String::new();
    let summary = summary(series);
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{id}-t {id}-d" class="chart" preserveAspectRatio="xMidYMid meet"><title id="{id}-t">{t}</title><desc id="{id}-d">{d}</desc>"#,
        id = escape(&slug(title)),
        t = escape(title),
        d = escape(&summary),
    );
    if points.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" class="empty">No data yet</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let (mut x0, mut x1) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = match y_range {
        Some(r) => r,
        None => points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1))),
    };
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.1 };
        y0 -= pad;
        y1 += pad;
    }
    if y_range.is_none() {
        // A little room above and below the data; losses start at zero.
        let pad = (y1 - y0) * 0.05;
        y0 = if y0 >= 0.0 { (y0 - pad).max(0.0) } else { y0 - pad };
        y1 += pad;
    }
    if x0 > 0.0 && x0 < (x1 - x0) * 0.2 {
        x0 = 0.0;
    }
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
    let sy = |y: f64| HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);
    svg.push_str(r#"<g class="grid" aria-hidden="true">"#);
    for t in ticks(y0, y1, 4) {
        let y = sy(t);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{l}</text>"#,
            x2 = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            l = label(t)
        );
    }
    for t in ticks(x0, x1, 5) {
        let x = sx(t);
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{ty}" text-anchor="middle">{l}</text>"#,
            ty = HEIGHT - BOTTOM + 16.0,
            l = label(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{x}" y="{y}" text-anchor="middle" class="axis-label">{l}</text></g>"#,
        x = LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        y = HEIGHT - 4.0,
        l = escape(x_label)
    );
    for s in series {
        let mut d = String::new();
        for (x, y) in s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
            let _ = write!(d, "{}{:.1},{:.1}", if d.is_empty() { "M" } else { " L" }, sx(*x), sy(*y));
        }
        if !d.is_empty() {
            let _ =
                write!(svg, r#"<path class="line {c}" d="{d}" data-points="{n}"/>"#, c = s.class, n = s.points.len());
        }
        // The latest point as a dot, so that a series of one point shows too.
        if let Some((x, y)) = s.points.iter().rev().find(|(x, y)| x.is_finite() && y.is_finite()) {
            let _ =
                write!(svg, r#"<circle class="dot {c}" cx="{:.1}" cy="{:.1}" r="4"/>"#, sx(*x), sy(*y), c = s.class);
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The latest value of each series, for the chart's description and legend.
pub fn summary(series: &[Series]) -> String {
    let parts: Vec<String> = series
        .iter()
        .filter_map(|s| s.points.iter().rev().find(|p| p.1.is_finite()).map(|p| format!("{} {}", s.name, label4(p.1))))
        .collect();
    if parts.is_empty() { "No data yet".into() } else { format!("Latest: {}", parts.join(", ")) }
}

/// A value with four significant decimals.
pub fn label4(v: f64) -> String {
    format!("{v:.4}")
}

fn slug(title: &str) -> String {
    title.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0, 4), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(ticks(0.0, 95.0, 5), vec![0.0, 20.0, 40.0, 60.0, 80.0]);
        assert_eq!(ticks(3.0, 3.0, 4), vec![3.0]);
    }

    #[test]
    fn a_chart_draws_one_path_per_series_with_every_point() {
        let series = [
            Series { name: "train".into(), class: "s1", points: vec![(0.0, 2.3), (10.0, 1.0), (20.0, 0.5)] },
            Series { name: "validation".into(), class: "s2", points: vec![(10.0, 1.1), (20.0, f64::NAN)] },
        ];
        let svg = line_chart("Loss", "version", &series, None);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains(r#"class="line s1" d="M52.0,"#), "{svg}");
        assert_eq!(svg.matches(" L").count(), 2, "three points in the first series, one in the second: {svg}");
        assert!(svg.contains("Latest: train 0.5000, validation 1.1000"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 2, "a dot at each series' latest point: {svg}");
    }

    #[test]
    fn an_empty_chart_says_so_and_titles_are_escaped() {
        let svg = line_chart("<Loss>", "x", &[], None);
        assert!(svg.contains("No data yet") && svg.contains("&lt;Loss&gt;") && !svg.contains("<Loss>"));
    }
}
