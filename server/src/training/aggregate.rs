//! The arithmetic of K-batch aggregation, kept apart so that it is benchmarked as it runs
//! (`cargo xtask bench training`): each contribution is added into one running sum as it arrives (no
//! contribution is kept), and the sum becomes the pseudo-gradient once the update is due.

/// The weight of a contribution of `samples` made `staleness` versions behind: `samples / (1 + staleness)`.
pub fn weight(samples: u32, staleness: u64) -> f64 {
    f64::from(samples) / (1.0 + staleness as f64)
}

/// Adds `weight * delta` into `sum`. The lengths are equal (checked by the caller).
pub fn accumulate(sum: &mut [f32], delta: &[f32], weight: f64) {
    let w = weight as f32;
    for (s, d) in sum.iter_mut().zip(delta) {
        *s += w * d;
    }
}

/// Turns the weighted sum of deltas into the pseudo-gradient `-sum / total_weight`, in place.
pub fn into_gradient(sum: &mut [f32], total_weight: f64) {
    let scale = (-1.0 / total_weight) as f32;
    for g in sum {
        *g *= scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gradient_is_minus_the_weighted_mean_of_the_deltas() {
        let mut sum = vec![0.0; 2];
        accumulate(&mut sum, &[1.0, -2.0], weight(30, 0));
        accumulate(&mut sum, &[3.0, 4.0], weight(20, 1));
        into_gradient(&mut sum, weight(30, 0) + weight(20, 1));
        // Weights 30 and 10.
        assert_eq!(sum, vec![-(30.0 + 30.0) / 40.0, -(-60.0 + 40.0) / 40.0]);
    }
}
