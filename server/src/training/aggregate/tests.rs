//! Each rule against its definition: hand-computed small cases, outliers, the norm bound, finiteness, and
//! property tests against plain reference implementations (sorting, f64) and the honest range.

use proptest::prelude::*;

use super::*;

const ROBUST: [Aggregation; 3] = [Aggregation::TrimmedMean, Aggregation::Median, Aggregation::CenteredClip];
const ALL: [Aggregation; 4] =
    [Aggregation::Mean, Aggregation::TrimmedMean, Aggregation::Median, Aggregation::CenteredClip];

/// The aggregate (minus the pseudo-gradient) of `deltas`, all of weight 1 and one step, with no norm bound.
fn aggregate(rule: Aggregation, deltas: &[Vec<f32>]) -> Vec<f32> {
    let mut aggregator = Aggregator::new(rule, deltas[0].len(), None);
    for d in deltas {
        assert_eq!(aggregator.push(d, 1.0, 1), 1.0);
    }
    assert_eq!(aggregator.len(), deltas.len());
    let out = aggregator.finish().iter().map(|g| -g).collect();
    assert!(aggregator.is_empty());
    out
}

/// One-parameter deltas.
fn scalars(values: &[f32]) -> Vec<Vec<f32>> {
    values.iter().map(|&v| vec![v]).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn the_weight_counts_samples_and_halves_with_each_version_behind() {
    assert_eq!(weight(30, 0), 30.0);
    assert_eq!(weight(30, 1), 15.0);
    assert_eq!(weight(30, 2), 10.0);
}

#[test]
fn the_mean_is_weighted_and_the_gradient_is_its_opposite() {
    let mut aggregator = Aggregator::new(Aggregation::Mean, 2, None);
    aggregator.push(&[1.0, -2.0], weight(30, 0), 1);
    aggregator.push(&[3.0, 4.0], weight(20, 1), 1);
    // Weights 30 and 10.
    let gradient = aggregator.finish().to_vec();
    let expected = [-(30.0 + 30.0) / 40.0, -(-60.0 + 40.0) / 40.0];
    for (g, e) in gradient.iter().zip(expected) {
        assert!(close(f64::from(*g), e), "{gradient:?}");
    }
    // The next update starts afresh.
    aggregator.push(&[5.0, 6.0], 1.0, 1);
    assert_eq!(aggregator.finish(), [-5.0, -6.0]);
    // No contribution: no step.
    assert_eq!(aggregator.finish(), [0.0, 0.0]);
}

#[test]
fn the_trimmed_count_is_a_fifth_on_each_side_and_at_least_one_from_three() {
    let counts: Vec<usize> = (1..=16).map(trimmed_count).collect();
    assert_eq!(counts, [0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]);
}

#[test]
fn the_trimmed_mean_drops_the_extremes_of_each_coordinate() {
    // Five contributions: one dropped on each side.
    let deltas = vec![
        vec![1.0, 10.0, -1.0],
        vec![2.0, 20.0, -1.0],
        vec![3.0, 30.0, -1.0],
        vec![4.0, -40.0, -1.0],
        vec![100.0, 50.0, 7.0],
    ];
    assert_eq!(aggregate(Aggregation::TrimmedMean, &deltas), [3.0, 20.0, -1.0]);
    // Ten: two on each side.
    let values: Vec<f32> = vec![9.0, -5.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1e9, -1e9];
    assert_eq!(aggregate(Aggregation::TrimmedMean, &scalars(&values)), [(1.0 + 2.0 + 3.0 + 4.0 + 5.0 + 6.0) / 6.0]);
    // Two: nothing dropped.
    assert_eq!(aggregate(Aggregation::TrimmedMean, &scalars(&[1.0, 4.0])), [2.5]);
}

#[test]
fn the_median_takes_the_middle_or_the_mean_of_the_two_middles() {
    assert_eq!(aggregate(Aggregation::Median, &scalars(&[7.0])), [7.0]);
    assert_eq!(aggregate(Aggregation::Median, &scalars(&[3.0, 1.0])), [2.0]);
    assert_eq!(aggregate(Aggregation::Median, &scalars(&[5.0, -1.0, 2.0])), [2.0]);
    assert_eq!(aggregate(Aggregation::Median, &scalars(&[4.0, 1.0, 3.0, 2.0])), [2.5]);
    let deltas = vec![vec![1.0, -3.0], vec![9.0, 0.0], vec![2.0, 8.0], vec![-4.0, 1.0], vec![5.0, 2.0]];
    assert_eq!(aggregate(Aggregation::Median, &deltas), [2.0, 1.0]);
}

#[test]
fn centered_clipping_follows_its_definition_by_hand() {
    // Start at the median 2; the distances 2, 1, 0, 2, 98 give tau = 2. Each iteration clips the pulls to 2:
    // 2 + (-2 - 1 + 0 + 2 + 2) / 5 = 2.2; then 2.2 + (-2 - 1.2 - 0.2 + 1.8 + 2) / 5 = 2.28; then
    // 2.28 + (-2 - 1.28 - 0.28 + 1.72 + 2) / 5 = 2.312.
    let out = aggregate(Aggregation::CenteredClip, &scalars(&[0.0, 1.0, 2.0, 4.0, 100.0]));
    assert!(close(f64::from(out[0]), 2.312), "{out:?}");
    // In two dimensions: start at the median (0.5, 0); the distances 0.5, 0.5 and 3 give tau = 0.5, and only the
    // third pull (0, 3) is clipped, to (0, 0.5): (0.5, 0) + ((-0.5, 0) + (0.5, 0) + (0, 0.5)) / 3 = (0.5, 1/6);
    // then the distances are 0.527, 0.527 and 2.83, all clipped to 0.5, and so on: a reference implementation
    // checks the rest (below).
    let deltas = [vec![0.0, 0.0], vec![1.0, 0.0], vec![0.5, 3.0]];
    let mut aggregator = Aggregator::new(Aggregation::CenteredClip, 2, None);
    for d in &deltas {
        aggregator.push(d, 1.0, 1);
    }
    aggregator.trimmed(3, 1);
    assert_eq!(aggregator.out, [0.5, 0.0]);
    let out = aggregate(Aggregation::CenteredClip, &deltas);
    let expected = reference_centered_clip(&deltas);
    assert!(close(f64::from(out[0]), 0.5) && close(f64::from(out[1]), expected[1]), "{out:?}");
    assert!(out[1] > 1.0 / 6.0 && out[1] < 1.0, "{out:?}");
}

#[test]
fn robust_rules_ignore_one_huge_outlier() {
    for n in [3, 4, 5, 8] {
        let mut deltas: Vec<Vec<f32>> = (0..n - 1).map(|i| vec![1.0 + i as f32 * 0.1, -1.0 - i as f32 * 0.1]).collect();
        deltas.push(vec![1e30, -1e30]);
        let hi = 1.0 + (n - 2) as f32 * 0.1;
        for rule in ROBUST {
            let out = aggregate(rule, &deltas);
            assert!((1.0..=hi).contains(&out[0]) && (-hi..=-1.0).contains(&out[1]), "{rule:?} n={n}: {out:?}");
        }
        // The mean does not.
        assert!(aggregate(Aggregation::Mean, &deltas)[0] > 1e28);
    }
}

#[test]
fn centered_clipping_bounds_an_outliers_influence() {
    // Four honest contributions at distance 1 from their centre 0 (two dimensions), one far away.
    let honest = [vec![1.0, 0.0], vec![-1.0, 0.0], vec![0.0, 1.0], vec![0.0, -1.0]];
    for far in [10.0f32, 1e3, 1e30] {
        let mut deltas = honest.to_vec();
        deltas.push(vec![far, far]);
        let out = aggregate(Aggregation::CenteredClip, &deltas);
        let shift = f64::from(out[0]).hypot(f64::from(out[1]));
        // The median starts within the honest hull, tau is at most about the honest spread, and each
        // iteration moves by at most tau / n towards the outlier.
        assert!(shift <= 1.0 + CLIP_ITERATIONS as f64 * 2.0 / 5.0, "{far}: {out:?}");
    }
}

#[test]
fn the_norm_bound_scales_a_huge_contribution_down_to_it_and_leaves_normal_ones() {
    for rule in ALL {
        let mut aggregator = Aggregator::new(rule, 4, Some(3.0));
        // Norms 1.8 to 2.2 (median 2): no bound before MIN_NORMS of them.
        for i in 0..MIN_NORMS {
            let x = 0.9 + 0.2 * (i as f32 / (MIN_NORMS - 1) as f32);
            assert_eq!(aggregator.push(&[x, x, x, x], 1.0, 1), 1.0, "{rule:?}");
        }
        aggregator.finish();
        let bound = 3.0 * 2.0;
        assert!(close(aggregator.bound.bound(1).unwrap(), bound), "{rule:?}");
        // A normal one passes untouched, a 1e6 times larger one comes down to the bound.
        assert_eq!(aggregator.push(&[1.0, -1.0, 1.0, -1.0], 1.0, 1), 1.0);
        aggregator.finish();
        let scale = aggregator.push(&[2e6, 2e6, -2e6, 2e6], 1.0, 1);
        assert!(close(f64::from(scale), bound / 4e6), "{rule:?}: {scale}");
        let gradient = aggregator.finish();
        assert!(close(norm(gradient), bound), "{rule:?}: {gradient:?}");
        // Per local step: a delta of three steps may be three times larger.
        assert_eq!(aggregator.push(&[8.0, 8.0, 8.0, 8.0], 1.0, 3), 1.0);
        assert!(aggregator.push(&[8.0, 8.0, 8.0, 8.0], 1.0, 1) < 1.0);
        assert_eq!(aggregator.bounded(), 2);
    }
}

#[test]
fn without_a_factor_there_is_no_bound() {
    let mut aggregator = Aggregator::new(Aggregation::Mean, 1, None);
    for _ in 0..2 * NORM_WINDOW {
        aggregator.push(&[1.0], 1.0, 1);
    }
    assert_eq!(aggregator.push(&[1e30], 1.0, 1), 1.0);
    let expected = -1e30 / (2 * NORM_WINDOW + 1) as f64;
    assert!(close(f64::from(aggregator.finish()[0]), expected));
    assert_eq!(aggregator.bounded(), 0);
}

#[test]
fn the_norm_window_forgets_old_norms() {
    let mut bound = NormBound::new(Some(3.0));
    for _ in 0..NORM_WINDOW {
        bound.scale(1.0, 1);
    }
    assert!(close(bound.bound(1).unwrap(), 3.0));
    // Honest norms that grow are followed: after half a window of norms 10, the median is 10.
    for _ in 0..=NORM_WINDOW / 2 {
        bound.scale(10.0, 1);
    }
    assert!(close(bound.bound(1).unwrap(), 30.0));
}

#[test]
fn extreme_finite_deltas_give_finite_gradients() {
    let m = f32::MAX;
    let cases = [
        vec![vec![m, -m], vec![m, -m], vec![m, -m]],
        vec![vec![m, m], vec![-m, -m], vec![m, -m], vec![-m, m]],
        vec![vec![m, 0.0], vec![-m, 1e-45], vec![0.0, -m]],
    ];
    for deltas in &cases {
        for rule in ALL {
            for weights in [[1.0, 1.0, 1.0, 1.0], [1.0, 3.0, 7.0, 2.0]] {
                let mut aggregator = Aggregator::new(rule, 2, Some(3.0));
                for (d, w) in deltas.iter().zip(weights) {
                    aggregator.push(d, w, 1);
                }
                let gradient = aggregator.finish();
                assert!(gradient.iter().all(|g| g.is_finite()), "{rule:?} {deltas:?}: {gradient:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Properties, against plain implementations of the definitions.

/// Per coordinate, the sorted values of the contributions, in f64.
fn sorted_column(deltas: &[Vec<f32>], i: usize) -> Vec<f64> {
    let mut column: Vec<f64> = deltas.iter().map(|d| f64::from(d[i])).collect();
    column.sort_by(f64::total_cmp);
    column
}

fn reference_trimmed(deltas: &[Vec<f32>], t: usize) -> Vec<f64> {
    let n = deltas.len();
    (0..deltas[0].len())
        .map(|i| {
            let column = sorted_column(deltas, i);
            column[t..n - t].iter().sum::<f64>() / (n - 2 * t) as f64
        })
        .collect()
}

fn reference_median(deltas: &[Vec<f32>]) -> Vec<f64> {
    let n = deltas.len();
    (0..deltas[0].len())
        .map(|i| {
            let column = sorted_column(deltas, i);
            if n % 2 == 1 { column[n / 2] } else { (column[n / 2 - 1] + column[n / 2]) / 2.0 }
        })
        .collect()
}

fn reference_centered_clip(deltas: &[Vec<f32>]) -> Vec<f64> {
    let n = deltas.len() as f64;
    let dist = |x: &[f32], v: &[f64]| x.iter().zip(v).map(|(&a, b)| (f64::from(a) - b).powi(2)).sum::<f64>().sqrt();
    let mut v = reference_median(deltas);
    let mut distances: Vec<f64> = deltas.iter().map(|x| dist(x, &v)).collect();
    distances.sort_by(f64::total_cmp);
    let k = distances.len();
    let tau = if k % 2 == 1 { distances[k / 2] } else { (distances[k / 2 - 1] + distances[k / 2]) / 2.0 };
    for _ in 0..CLIP_ITERATIONS {
        let mut step = vec![0.0; v.len()];
        for x in deltas {
            let d = dist(x, &v);
            let c = if d <= tau { 1.0 } else { tau / d };
            for (s, (&a, b)) in step.iter_mut().zip(x.iter().zip(&v)) {
                *s += c * (f64::from(a) - b) / n;
            }
        }
        for (vi, s) in v.iter_mut().zip(step) {
            *vi = f64::from((*vi + s) as f32);
        }
    }
    v
}

fn deltas_strategy() -> impl Strategy<Value = Vec<Vec<f32>>> {
    (1usize..=12, 1usize..=9)
        .prop_flat_map(|(n, p)| prop::collection::vec(prop::collection::vec(-100.0f32..100.0, p), n))
}

proptest! {
    #[test]
    fn each_rule_matches_its_definition(deltas in deltas_strategy()) {
        let n = deltas.len();
        let cases = [
            (Aggregation::TrimmedMean, reference_trimmed(&deltas, trimmed_count(n))),
            (Aggregation::Median, reference_median(&deltas)),
            (Aggregation::CenteredClip, reference_centered_clip(&deltas)),
            (Aggregation::Mean, reference_trimmed(&deltas, 0)),
        ];
        for (rule, expected) in cases {
            let out = aggregate(rule, &deltas);
            for (o, e) in out.iter().zip(&expected) {
                prop_assert!((f64::from(*o) - e).abs() <= 1e-3, "{:?}: {:?} against {:?}", rule, out, expected);
            }
        }
    }

    /// With at most `trimmed_count(n)` arbitrary contributions among `n >= 3` (at most `(n - 1) / 2` for the
    /// median), each coordinate of the trimmed mean and the median lies within the honest values' range.
    #[test]
    fn the_median_and_trimmed_mean_stay_within_the_honest_range(
        honest in (2usize..=12, 1usize..=6).prop_flat_map(|(n, p)| {
            prop::collection::vec(prop::collection::vec(-10.0f32..10.0, p), n)
        }),
        hostile_values in prop::collection::vec(prop_oneof![
            Just(f32::MAX), Just(-f32::MAX), Just(0.0f32), -1e30f32..1e30, -20.0f32..20.0
        ], 60),
        hostile_count in 1usize..=6,
    ) {
        let p = honest[0].len();
        for rule in [Aggregation::TrimmedMean, Aggregation::Median] {
            // The most hostile contributions this rule tolerates among honest.len() + b.
            let mut b = hostile_count;
            let tolerated = |b: usize| {
                let n = honest.len() + b;
                if rule == Aggregation::Median { (n - 1) / 2 } else { trimmed_count(n) }
            };
            while b > tolerated(b) {
                b -= 1;
            }
            if b == 0 {
                continue;
            }
            let mut deltas = honest.clone();
            for j in 0..b {
                deltas.push((0..p).map(|i| hostile_values[(j * p + i) % hostile_values.len()]).collect());
            }
            let out = aggregate(rule, &deltas);
            for (i, o) in out.iter().enumerate() {
                let (lo, hi) = honest.iter().fold((f32::MAX, f32::MIN), |(lo, hi), d| (lo.min(d[i]), hi.max(d[i])));
                prop_assert!(lo <= *o && *o <= hi, "{:?}, {} hostile: {} not in [{}, {}]", rule, b, o, lo, hi);
            }
        }
    }

    #[test]
    fn no_rule_produces_a_non_finite_value(
        deltas in (1usize..=10, 1usize..=5).prop_flat_map(|(n, p)| prop::collection::vec(
            prop::collection::vec(prop_oneof![Just(f32::MAX), Just(-f32::MAX), prop::num::f32::NORMAL], p), n)),
        weights in prop::collection::vec(0.5f64..5000.0, 10),
    ) {
        for rule in ALL {
            let mut aggregator = Aggregator::new(rule, deltas[0].len(), Some(DEFAULT_NORM_BOUND_FACTOR));
            for (d, w) in deltas.iter().zip(&weights) {
                aggregator.push(d, *w, 1);
            }
            let gradient = aggregator.finish();
            prop_assert!(gradient.iter().all(|g| g.is_finite()), "{:?}: {:?}", rule, gradient);
        }
    }
}

#[test]
fn the_sorting_networks_sort() {
    // Every 0/1 input up to 16 values (the 0-1 principle: then every input), random ones beyond.
    for n in 1..=MAX_NETWORK {
        let network = sorting_network(n);
        assert!(network.iter().all(|&(a, b)| a < b && b < n), "{n}");
        let apply = |values: &mut [u32]| {
            for &(a, b) in &network {
                if values[b] < values[a] {
                    values.swap(a, b);
                }
            }
        };
        if n <= 16 {
            for bits in 0u32..1 << n {
                let mut values: Vec<u32> = (0..n).map(|i| (bits >> i) & 1).collect();
                apply(&mut values);
                assert!(values.is_sorted(), "{n}: {bits:b}");
            }
        } else {
            let mut state = 12345u32;
            for _ in 0..2000 {
                let mut values: Vec<u32> = (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        state >> 20
                    })
                    .collect();
                apply(&mut values);
                assert!(values.is_sorted(), "{n}");
            }
        }
    }
}

#[test]
fn many_contributions_are_selected_per_coordinate_as_the_definitions_say() {
    // Beyond MAX_NETWORK contributions, and with more coordinates than a block.
    let n = MAX_NETWORK + 5;
    let p = 2 * NETWORK_BLOCK + 3;
    let deltas: Vec<Vec<f32>> =
        (0..n).map(|j| (0..p).map(|i| (((i * 31 + j * 17) % 23) as f32 - 11.0) * 0.5).collect()).collect();
    for (rule, expected) in [
        (Aggregation::TrimmedMean, reference_trimmed(&deltas, trimmed_count(n))),
        (Aggregation::Median, reference_median(&deltas)),
        (Aggregation::CenteredClip, reference_centered_clip(&deltas)),
    ] {
        let out = aggregate(rule, &deltas);
        assert!(out.iter().zip(&expected).all(|(o, e)| (f64::from(*o) - e).abs() < 1e-3), "{rule:?}");
    }
    // And by the networks, with blocks.
    let deltas = &deltas[..MAX_NETWORK];
    let out = aggregate(Aggregation::Median, deltas);
    let expected = reference_median(deltas);
    assert!(out.iter().zip(&expected).all(|(o, e)| (f64::from(*o) - e).abs() < 1e-6));
}

#[test]
fn norms_are_exact_enough_and_never_overflow() {
    let x: Vec<f32> = (0..10_000).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let exact = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    assert!((norm(&x) - exact).abs() < 1e-6 * exact);
    let huge = vec![f32::MAX; 3000];
    assert!(close(norm(&huge), f64::from(f32::MAX) * 3000f64.sqrt()));
    let minus: Vec<f32> = huge.iter().map(|v| -v).collect();
    assert!(close(distance(&huge, &minus), 2.0 * f64::from(f32::MAX) * 3000f64.sqrt()));
}

#[test]
fn zero_deltas_set_no_bound() {
    let mut aggregator = Aggregator::new(Aggregation::Mean, 2, Some(3.0));
    for _ in 0..MIN_NORMS {
        aggregator.push(&[0.0, 0.0], 1.0, 1);
    }
    assert_eq!(aggregator.push(&[1.0, 1.0], 1.0, 1), 1.0);
}
