//! Whether a contribution is the computation its lease asked for: the provider's delta and mean loss against
//! the server's recomputation ([`super::lease::recompute`]), compared within float rounding.
//!
//! Two engines that run the same lease (the WGSL GPU engine on any adapter, the browser's WebGPU, the CPU
//! reference) differ only by the order of their float sums and by fused multiply-adds, so their deltas agree
//! to a small relative distance that [`Tolerance::DEFAULT`] bounds with a margin (the measured spread is in
//! BENCHMARKS.md). Anything else (another batch, other labels, a scaled, shifted, noisy, zero or replayed
//! delta, a wrong loss) moves the delta by far more than rounding, whatever its size, sign or shape.

/// How far a contribution may be from the recomputation and still pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// The most `|claimed - reference| / |reference|` (L2 norms) may be.
    pub max_relative_distance: f64,
    /// The least the cosine similarity of the two deltas may be.
    pub min_cosine: f64,
    /// The most `|claimed loss - reference loss| / max(|reference loss|, 1e-3)` may be.
    pub max_loss_difference: f64,
}

impl Tolerance {
    /// The tolerance the server checks with: about 400 times the usual spread measured between engines on real
    /// leases, 43 times the largest (BENCHMARKS.md, "Checks by recomputation: the spread between the GPU engine
    /// and the server's recomputation").
    pub const DEFAULT: Tolerance =
        Tolerance { max_relative_distance: 2e-3, min_cosine: 0.999_99, max_loss_difference: 1e-3 };
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance::DEFAULT
    }
}

/// How a contribution compares with its recomputation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// `|claimed - reference| / |reference|`; with a zero reference, `|claimed|` over the smallest normal
    /// `f32` (a zero reference is matched only by a zero delta).
    pub relative_distance: f64,
    /// The cosine similarity; 1 when both deltas are zero, 0 when only one is.
    pub cosine: f64,
    /// `|claimed loss - reference loss| / max(|reference loss|, 1e-3)`.
    pub loss_difference: f64,
}

impl Comparison {
    /// Compares a claimed delta and loss with the reference's. The lengths must be equal (the server checks a
    /// contribution's shape before it recomputes); values must be finite (likewise).
    pub fn new(claimed: &[f32], claimed_loss: f64, reference: &[f32], reference_loss: f64) -> Comparison {
        debug_assert_eq!(claimed.len(), reference.len());
        let (mut dot, mut cc, mut rr, mut diff) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (&c, &r) in claimed.iter().zip(reference) {
            let (c, r) = (f64::from(c), f64::from(r));
            dot += c * r;
            cc += c * c;
            rr += r * r;
            diff += (c - r) * (c - r);
        }
        let relative_distance = diff.sqrt() / rr.sqrt().max(f64::from(f32::MIN_POSITIVE));
        let cosine = match (cc > 0.0, rr > 0.0) {
            (false, false) => 1.0,
            (true, true) => dot / (cc.sqrt() * rr.sqrt()),
            _ => 0.0,
        };
        let loss_difference = (claimed_loss - reference_loss).abs() / reference_loss.abs().max(1e-3);
        Comparison {
            relative_distance: nan_as_infinite(relative_distance),
            cosine: if cosine.is_nan() { -1.0 } else { cosine },
            loss_difference: nan_as_infinite(loss_difference),
        }
    }

    /// `Ok` when every measure is within `tolerance`, else what is not, for the operator.
    ///
    /// # Errors
    /// The first measure outside the tolerance, with both figures.
    pub fn check(&self, tolerance: &Tolerance) -> Result<(), String> {
        if self.relative_distance > tolerance.max_relative_distance {
            return Err(format!(
                "its delta is {:.3e} away from the recomputed one (relative L2 distance; rounding allows {:.0e})",
                self.relative_distance, tolerance.max_relative_distance
            ));
        }
        if self.cosine < tolerance.min_cosine {
            return Err(format!(
                "its delta points elsewhere than the recomputed one (cosine {:.6}; rounding allows {})",
                self.cosine, tolerance.min_cosine
            ));
        }
        if self.loss_difference > tolerance.max_loss_difference {
            return Err(format!(
                "its loss differs from the recomputed one by {:.3e} (relative; rounding allows {:.0e})",
                self.loss_difference, tolerance.max_loss_difference
            ));
        }
        Ok(())
    }
}

fn nan_as_infinite(v: f64) -> f64 {
    if v.is_nan() { f64::INFINITY } else { v }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn delta(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn rounding_passes() {
        let reference = delta(1000, 1);
        // One ulp or so on every value, as another summation order gives.
        let claimed: Vec<f32> = reference.iter().map(|v| v * (1.0 + 3e-7)).collect();
        let c = Comparison::new(&claimed, 1.234_567, &reference, 1.234_567_5);
        assert!(c.check(&Tolerance::DEFAULT).is_ok(), "{c:?}");
        assert!(c.relative_distance < 1e-6 && c.cosine > 0.999_999);
    }

    #[test]
    fn zero_against_zero_passes_and_anything_against_zero_fails() {
        let zero = vec![0.0; 10];
        assert!(Comparison::new(&zero, 1.0, &zero, 1.0).check(&Tolerance::DEFAULT).is_ok());
        let mut tiny = zero.clone();
        tiny[3] = 1e-30;
        assert!(Comparison::new(&tiny, 1.0, &zero, 1.0).check(&Tolerance::DEFAULT).is_err());
    }

    #[test]
    fn a_wrong_loss_alone_fails() {
        let reference = delta(100, 2);
        let c = Comparison::new(&reference, 1.0, &reference, 2.0);
        let e = c.check(&Tolerance::DEFAULT).unwrap_err();
        assert!(e.contains("loss"), "{e}");
    }

    proptest! {
        /// Any change of the delta beyond rounding fails, whatever its form: a scale (of either sign, other
        /// than 1), an added vector of any direction and a relative size above the tolerance, another delta.
        #[test]
        fn deviations_beyond_rounding_fail(
            seed in 0u64..1000,
            other in 1000u64..2000,
            scale in prop_oneof![-1e6f32..0.995, 1.005f32..1e6],
            size in 0.01f64..1e6,
        ) {
            let reference = delta(257, seed);
            let scaled: Vec<f32> = reference.iter().map(|v| v * scale).collect();
            prop_assert!(Comparison::new(&scaled, 1.0, &reference, 1.0).check(&Tolerance::DEFAULT).is_err());

            let norm = reference.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            let noise = delta(257, other);
            let noise_norm = noise.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            let k = (size * norm / noise_norm) as f32;
            let shifted: Vec<f32> = reference.iter().zip(&noise).map(|(r, n)| r + k * n).collect();
            prop_assert!(Comparison::new(&shifted, 1.0, &reference, 1.0).check(&Tolerance::DEFAULT).is_err());

            prop_assert!(Comparison::new(&noise, 1.0, &reference, 1.0).check(&Tolerance::DEFAULT).is_err());
        }
    }
}
