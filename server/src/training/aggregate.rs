//! The arithmetic of K-batch aggregation, kept apart so that it is benchmarked as it runs
//! (`cargo xtask bench training aggregate`): an [`Aggregator`] takes the contributions of one update one at a
//! time ([`Aggregator::push`]) and turns them into the pseudo-gradient ([`Aggregator::finish`]) by the project's
//! [`Aggregation`] rule.
//!
//! - `mean`: the mean weighted by [`weight`], kept as a running mean as contributions arrive (no contribution is
//!   kept). The robust rules keep the update's K deltas (K x params floats) and combine them at the end, each
//!   contribution counting once, whatever its weight: their guarantees count contributions, and a weight is
//!   partly in a provider's hands (a provider that reports itself fast gets longer leases, hence more samples).
//! - `trimmed_mean`: per coordinate, the mean of the values left once the [`trimmed_count`] lowest and as many
//!   highest are dropped: `floor(TRIM_FRACTION * n)`, at least 1 from `n = 3` on.
//! - `median`: per coordinate, the median (the mean of the two middle values when `n` is even): the trimmed mean
//!   with `floor((n - 1) / 2)` dropped on each side.
//! - `centered_clip`: centered clipping (Karimireddy, He and Jaggi 2021, "Learning from History for Byzantine
//!   Robust Optimization"), `v <- v + mean_i clip(x_i - v, tau)` where `clip(y, tau) = y * min(1, tau / |y|)`,
//!   [`CLIP_ITERATIONS`] times. It starts from the coordinate-wise median rather than the previous update's
//!   aggregate: the median is robust from the first update on and after a restart (nothing to persist), and an
//!   update's contributions are made on different batches and versions, so the previous aggregate is a
//!   poorer centre than in the paper, whose workers use momentum. `tau` is the median of the distances
//!   `|x_i - v0|` from that start: scale-free, so no setting, and a hostile contribution moves the result by
//!   at most `tau / n` per iteration however far it lies, while honest ones (about the median distance away)
//!   are barely clipped.
//!
//! Every rule first bounds each contribution's L2 norm ([`NormBound`]): with a factor `f` (3 by default), a
//! contribution whose norm per local step exceeds `f` times the median norm per step of the last
//! [`NORM_WINDOW`] contributions is scaled down to that bound (not dropped); with fewer than [`MIN_NORMS`]
//! norms recorded, or while their median is 0, there is no bound. Norms are per local step because a lease of `s` batches is trained in
//! `s` local steps and its delta is up to `s` times larger. The raw norms are recorded (a bounded one too): the
//! median ignores a minority of outliers, and recording bounded norms instead could freeze the bound (at zero,
//! after a run of zero deltas) or make it lag behind honest growth.
//!
//! From finite deltas no rule produces a non-finite value: the mean is a running convex combination (clamped to
//! the finite range when values near f32::MAX could round past it), the trimmed mean and the median are
//! clamped to the values they keep per coordinate, and centered clipping is a convex combination of its start
//! and the deltas.
//!
//! The robust rules sort each coordinate's values with a sorting network (Batcher's odd-even merge sort) applied
//! to blocks of coordinates, which vectorises; beyond [`MAX_NETWORK`] contributions, each coordinate's values
//! are selected with `select_nth_unstable_by`. Norms are summed in f32 lanes per block, in f64 where f32
//! overflows.

use std::collections::VecDeque;

pub use daig_shared::api::settings::Aggregation;

/// The fraction of contributions the trimmed mean drops on each side, per coordinate.
pub const TRIM_FRACTION: f64 = 0.2;
/// Iterations of centered clipping.
pub const CLIP_ITERATIONS: usize = 3;
/// Contributions whose norms the norm bound remembers.
pub const NORM_WINDOW: usize = 64;
/// Norms recorded before the norm bound applies.
pub const MIN_NORMS: usize = 8;
/// The default norm bound factor (the `norm_bound_factor` setting).
pub const DEFAULT_NORM_BOUND_FACTOR: f64 = 3.0;

/// The weight of a contribution of `samples` made `staleness` versions behind: `samples / (1 + staleness)`.
pub fn weight(samples: u32, staleness: u64) -> f64 {
    f64::from(samples) / (1.0 + staleness as f64)
}

/// How many values the trimmed mean of `n` drops on each side: `floor(TRIM_FRACTION * n)`, at least 1 from
/// `n = 3` on (never more than leaves one value).
pub fn trimmed_count(n: usize) -> usize {
    let t = (TRIM_FRACTION * n as f64).floor() as usize;
    if n >= 3 { t.max(1).min((n - 1) / 2) } else { 0 }
}

/// The bound on contributions' norms: the recent norms per local step and the factor.
#[derive(Debug, Clone)]
pub struct NormBound {
    factor: Option<f64>,
    norms: VecDeque<f64>,
    scratch: Vec<f64>,
}

impl NormBound {
    /// A bound at `factor` times the recent median norm; `None`: no bound.
    pub fn new(factor: Option<f64>) -> NormBound {
        NormBound { factor, norms: VecDeque::with_capacity(NORM_WINDOW), scratch: Vec::with_capacity(NORM_WINDOW) }
    }

    /// The largest norm allowed now for a contribution of `steps` local steps, if any: none without a factor,
    /// with fewer than [`MIN_NORMS`] norms recorded, or while their median is 0 (nothing to be relative to).
    pub fn bound(&mut self, steps: u32) -> Option<f64> {
        let factor = self.factor?;
        if self.norms.len() < MIN_NORMS {
            return None;
        }
        self.scratch.clear();
        self.scratch.extend(self.norms.iter().copied());
        let median = median_f64(&mut self.scratch);
        (median > 0.0).then(|| factor * median * f64::from(steps.max(1)))
    }

    /// The factor a contribution of `norm` over `steps` local steps is scaled by (1, or less when above the
    /// bound), recording its norm.
    pub fn scale(&mut self, norm: f64, steps: u32) -> f64 {
        let bound = self.bound(steps);
        if self.factor.is_some() {
            if self.norms.len() == NORM_WINDOW {
                self.norms.pop_front();
            }
            self.norms.push_back(norm / f64::from(steps.max(1)));
        }
        match bound {
            Some(bound) if norm > bound => bound / norm,
            _ => 1.0,
        }
    }
}

/// Combines one update's contributions by a rule (see the module docs).
#[derive(Debug, Clone)]
pub struct Aggregator {
    rule: Aggregation,
    params: usize,
    /// `mean`: minus the running weighted mean, which is the pseudo-gradient. Robust rules: their result.
    out: Vec<f32>,
    total_weight: f64,
    count: usize,
    /// The largest norm pushed since the last [`Aggregator::finish`], after the bound: no value is larger.
    largest: f64,
    /// Robust rules: the deltas, one after the other (norm-bounded).
    kept: Vec<f32>,
    /// A block of coordinates of every kept delta, sorted per coordinate by `network`.
    scratch: Vec<f32>,
    /// The sorting network for `count` values (up to [`MAX_NETWORK`]), and the count it is for.
    network: Vec<(usize, usize)>,
    network_for: usize,
    /// Centered clipping: one factor, and one distance, per contribution.
    factors: Vec<f32>,
    distances: Vec<f64>,
    bound: NormBound,
    /// Contributions scaled down by the norm bound, ever.
    bounded: u64,
}

/// Contributions up to which the robust rules sort each coordinate's values with a sorting network over
/// blocks of coordinates (vectorised compare-exchanges); beyond, each coordinate is selected on its own.
pub const MAX_NETWORK: usize = 32;
/// Coordinates per block of the sorting network: `MAX_NETWORK` of them fit in 16 KiB.
const NETWORK_BLOCK: usize = 128;

impl Aggregator {
    /// An empty aggregator of deltas of `params` values by `rule`, with the norm bound at `norm_bound_factor`
    /// (`None`: no bound).
    pub fn new(rule: Aggregation, params: usize, norm_bound_factor: Option<f64>) -> Aggregator {
        Aggregator {
            rule,
            params,
            out: vec![0.0; params],
            total_weight: 0.0,
            count: 0,
            largest: 0.0,
            kept: Vec::new(),
            scratch: Vec::new(),
            network: Vec::new(),
            network_for: 0,
            factors: Vec::new(),
            distances: Vec::new(),
            bound: NormBound::new(norm_bound_factor),
            bounded: 0,
        }
    }

    /// The rule.
    pub fn rule(&self) -> Aggregation {
        self.rule
    }

    /// Contributions pushed since the last [`Aggregator::finish`].
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Contributions scaled down by the norm bound so far.
    pub fn bounded(&self) -> u64 {
        self.bounded
    }

    /// Adds a finite `delta` of `params` values (checked by the caller) of weight `weight` (see [`weight`]; used
    /// by `mean` only), made in `steps` local steps. Returns the factor its norm bound scaled it by (1: none).
    pub fn push(&mut self, delta: &[f32], weight: f64, steps: u32) -> f32 {
        assert_eq!(delta.len(), self.params, "a delta of the model's size");
        let norm = norm(delta);
        let scale = self.bound.scale(norm, steps);
        self.largest = self.largest.max(norm * scale);
        if scale < 1.0 {
            self.bounded += 1;
            metrics::counter!("daig_contributions_norm_bounded_total").increment(1);
        }
        let scale = scale as f32;
        match self.rule {
            Aggregation::Mean => {
                self.total_weight += weight;
                // g <- (1 - a) g - a x with a = w / W: minus a convex combination, so never beyond the deltas.
                let a = if self.total_weight > 0.0 { weight / self.total_weight } else { 1.0 };
                if self.count == 0 || a >= 1.0 {
                    let minus = -scale;
                    for (g, d) in self.out.iter_mut().zip(delta) {
                        *g = minus * d;
                    }
                } else {
                    let (keep, sub) = ((1.0 - a) as f32, (a as f32) * scale);
                    if self.largest < f64::from(f32::MAX) / 4.0 {
                        // Every value so far is below f32::MAX / 4, and so is the sum.
                        for (g, d) in self.out.iter_mut().zip(delta) {
                            *g = keep * *g - sub * d;
                        }
                    } else {
                        for (g, d) in self.out.iter_mut().zip(delta) {
                            // Both terms are finite; rounding could take their sum just past f32::MAX.
                            *g = (keep * *g - sub * d).clamp(-f32::MAX, f32::MAX);
                        }
                    }
                }
            }
            Aggregation::TrimmedMean | Aggregation::Median | Aggregation::CenteredClip => {
                if scale == 1.0 {
                    self.kept.extend_from_slice(delta);
                } else {
                    self.kept.extend(delta.iter().map(|d| d * scale));
                }
            }
        }
        self.count += 1;
        scale
    }

    /// Drops the contributions pushed since the last [`Aggregator::finish`] without aggregating them (a
    /// contribution among them turned out hostile); the norm bound's memory stays.
    pub fn discard(&mut self) {
        self.count = 0;
        self.total_weight = 0.0;
        self.largest = 0.0;
        self.kept.clear();
        self.out.fill(0.0);
    }

    /// The pseudo-gradient, minus the aggregate of the contributions pushed since the last call (zeros if none),
    /// and a fresh start for the next update (the norm bound's memory stays).
    pub fn finish(&mut self) -> &[f32] {
        let n = self.count;
        self.count = 0;
        self.total_weight = 0.0;
        self.largest = 0.0;
        if n == 0 {
            self.out.fill(0.0);
            return &self.out;
        }
        let robust = match self.rule {
            Aggregation::Mean => false,
            Aggregation::TrimmedMean => {
                self.trimmed(n, trimmed_count(n));
                true
            }
            Aggregation::Median => {
                self.trimmed(n, (n - 1) / 2);
                true
            }
            Aggregation::CenteredClip => {
                self.trimmed(n, (n - 1) / 2);
                self.centered_clip(n);
                true
            }
        };
        if robust {
            for g in &mut self.out {
                *g = -*g;
            }
            self.kept.clear();
        }
        &self.out
    }

    /// `out` = per coordinate, the mean of the kept values once the `t` lowest and `t` highest are dropped.
    fn trimmed(&mut self, n: usize, t: usize) {
        if n > MAX_NETWORK {
            self.trimmed_by_selection(n, t);
            return;
        }
        if self.network_for != n {
            self.network = sorting_network(n);
            self.network_for = n;
        }
        let p = self.params;
        let kept = &self.kept[..n * p];
        const B: usize = NETWORK_BLOCK;
        self.scratch.resize(n * B, 0.0);
        let scratch = &mut self.scratch;
        let inv_keep = 1.0 / (n - 2 * t) as f32;
        for (block, out) in self.out.chunks_mut(B).enumerate() {
            let (start, len) = (block * B, out.len());
            for (j, row) in scratch.chunks_exact_mut(B).enumerate() {
                row[..len].copy_from_slice(&kept[j * p + start..][..len]);
            }
            for &(a, b) in &self.network {
                // a < b: rows a and b get each coordinate's smaller and larger value.
                let (low, high) = scratch.split_at_mut(b * B);
                let (x, y) = (&mut low[a * B..a * B + len], &mut high[..len]);
                for (x, y) in x.iter_mut().zip(y.iter_mut()) {
                    let (small, large) = if *y < *x { (*y, *x) } else { (*x, *y) };
                    *x = small;
                    *y = large;
                }
            }
            // The rows t..n-t hold the values kept, each coordinate's in order.
            let rows = &scratch[t * B..(n - t) * B];
            if n - 2 * t == 1 {
                out.copy_from_slice(&rows[..len]);
                continue;
            }
            for (o, v) in out.iter_mut().zip(&rows[..len]) {
                *o = v * inv_keep;
            }
            for row in rows.chunks_exact(B).skip(1) {
                for (o, v) in out.iter_mut().zip(&row[..len]) {
                    *o += v * inv_keep;
                }
            }
            // The mean lies between the smallest and the largest value kept: only rounding could take it
            // past them (or past f32::MAX).
            let (lowest, highest) = (&rows[..len], &rows[(n - 2 * t - 1) * B..][..len]);
            for ((o, &lo), &hi) in out.iter_mut().zip(lowest).zip(highest) {
                *o = o.max(lo).min(hi);
            }
        }
    }

    /// [`Self::trimmed`] for many contributions: each coordinate's values selected on their own.
    fn trimmed_by_selection(&mut self, n: usize, t: usize) {
        let p = self.params;
        let kept = &self.kept[..n * p];
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.resize(n, 0.0);
        let keep = n - 2 * t;
        for (i, out) in self.out.iter_mut().enumerate() {
            for (j, s) in scratch.iter_mut().enumerate() {
                *s = kept[j * p + i];
            }
            *out = trimmed_mean(scratch, t, keep);
        }
    }

    /// Refines `out` (the coordinate-wise median) by centered clipping.
    fn centered_clip(&mut self, n: usize) {
        let p = self.params;
        let kept = &self.kept[..n * p];
        let v = &mut self.out;
        self.distances.clear();
        self.distances.extend(kept.chunks_exact(p).map(|x| distance(x, v)));
        let tau = median_f64(&mut self.distances);
        let inv_n = 1.0 / n as f64;
        for _ in 0..CLIP_ITERATIONS {
            // clip(x - v, tau) / n = (x - v) * c with c = min(1, tau / |x - v|) / n.
            self.factors.clear();
            self.factors.extend(kept.chunks_exact(p).map(|x| {
                let d = distance(x, v);
                (if d <= tau { inv_n } else { tau / d * inv_n }) as f32
            }));
            // v + sum c (x - v) = (1 - sum c) v + sum c x: a convex combination (sum c <= 1), so finite; only
            // rounding could take it past f32::MAX.
            let rest = (1.0 - self.factors.iter().sum::<f32>()).max(0.0);
            for vi in v.iter_mut() {
                *vi *= rest;
            }
            for (&c, x) in self.factors.iter().zip(kept.chunks_exact(p)) {
                for (vi, xi) in v.iter_mut().zip(x) {
                    *vi += c * xi;
                }
            }
            for vi in v.iter_mut() {
                *vi = vi.clamp(-f32::MAX, f32::MAX);
            }
        }
    }
}

/// Batcher's odd-even merge sort for `n` values, as compare-exchanges `(a, b)` with `a < b` (the smaller value
/// goes to `a`): the network for the next power of two, less the pairs that reach past `n` (think of those
/// positions as holding +infinity: such a pair never moves anything).
fn sorting_network(n: usize) -> Vec<(usize, usize)> {
    let size = n.next_power_of_two();
    let mut pairs = Vec::new();
    let mut p = 1;
    while p < size {
        let mut k = p;
        while k >= 1 {
            let mut j = k % p;
            while j + k < size {
                for i in 0..k.min(size - j - k) {
                    if (i + j) / (2 * p) == (i + j + k) / (2 * p) && i + j + k < n {
                        pairs.push((i + j, i + j + k));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        p *= 2;
    }
    pairs
}

/// The mean of `values` without their `t` lowest and `t` highest (`keep = len - 2t`); reorders `values`.
fn trimmed_mean(values: &mut [f32], t: usize, keep: usize) -> f32 {
    let middle = if t == 0 {
        &mut values[..]
    } else {
        values.select_nth_unstable_by(t, f32::total_cmp);
        let upper = &mut values[t..];
        upper.select_nth_unstable_by(keep - 1, f32::total_cmp);
        &mut upper[..keep]
    };
    if keep == 1 {
        return middle[0];
    }
    // In f64: no overflow, and the mean of finite values lies between them.
    let sum: f64 = middle.iter().map(|&v| f64::from(v)).sum();
    (sum / keep as f64) as f32
}

/// The median of `values` (the mean of the two middle ones for an even count); reorders them. Not empty.
fn median_f64(values: &mut [f64]) -> f64 {
    let n = values.len();
    let (low, &mut mid, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 { mid } else { 0.5 * (low.iter().copied().fold(f64::NEG_INFINITY, f64::max) + mid) }
}

/// Values per block of a sum of squares: summed in f32 lanes (fast), added up in f64.
const SQUARES_BLOCK: usize = 1024;

/// The L2 norm of `x`: blocks summed in f32 lanes, and in f64 where f32 overflows.
pub fn norm(x: &[f32]) -> f64 {
    let mut total = 0.0;
    for block in x.chunks(SQUARES_BLOCK) {
        let fast = squares(block);
        total += if fast.is_finite() { f64::from(fast) } else { block.iter().map(|&v| f64::from(v).powi(2)).sum() };
    }
    total.sqrt()
}

/// The L2 distance between `x` and `y`, like [`norm`].
fn distance(x: &[f32], y: &[f32]) -> f64 {
    let mut total = 0.0;
    for (xb, yb) in x.chunks(SQUARES_BLOCK).zip(y.chunks(SQUARES_BLOCK)) {
        let fast = squares_of_differences(xb, yb);
        total += if fast.is_finite() {
            f64::from(fast)
        } else {
            xb.iter().zip(yb).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum()
        };
    }
    total.sqrt()
}

/// Lanes of the f32 sums of squares: independent chains, which the compiler vectorises.
const LANES: usize = 32;

/// The sum of the squares of `x`, in [`LANES`] f32 lanes.
#[inline]
fn squares(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The sum of the squares of `x - y`, in [`LANES`] f32 lanes.
#[inline]
fn squares_of_differences(x: &[f32], y: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let rest: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| (a - b) * (a - b)).sum();
    for (xs, ys) in xc.zip(yc) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(xs).zip(ys) {
            *lane += (a - b) * (a - b);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

#[cfg(test)]
mod tests;
