//! Reconnection delays, the same in the browser and natively: exponential with jitter, capped, reset after a
//! connection that worked. Pure arithmetic (no clock, no sleeping), so that the drivers sleep as their
//! platform does and the tests need no time.

use std::time::Duration;

/// Reconnection delays: [`Backoff::FIRST`] doubling up to [`Backoff::MAX`], each scaled by a random factor in
/// [0.75, 1.25) so that providers dropped together do not return together.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    /// xorshift64 state (never 0); the jitter needs no better randomness.
    rng: u64,
}

impl Backoff {
    /// The first delay (before jitter), and the one after [`Backoff::reset`].
    pub const FIRST: Duration = Duration::from_millis(500);
    /// The longest delay (before jitter).
    pub const MAX: Duration = Duration::from_secs(30);

    /// A backoff whose jitter comes from `seed` (any value; the same seed gives the same delays). Natively the
    /// clock and the process id make one, in the browser `Math.random`.
    pub fn new(seed: u64) -> Backoff {
        Backoff { next: Backoff::FIRST, rng: seed | 1 }
    }

    /// After a connection that worked: the next delay is the first again.
    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    /// The delay before the next attempt; each call doubles the following one, up to [`Backoff::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.next.mul_f64(0.75 + 0.5 * unit);
        self.next = (self.next * 2).min(Backoff::MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(backoff: &mut Backoff, n: usize) -> Vec<f64> {
        (0..n).map(|_| backoff.next_delay().as_secs_f64()).collect()
    }

    #[test]
    fn delays_double_to_thirty_seconds_with_jitter() {
        for seed in [0, 1, 42, u64::MAX, 0x9e37_79b9_7f4a_7c15] {
            let delays = secs(&mut Backoff::new(seed), 12);
            for (i, d) in delays.iter().enumerate() {
                let base = (0.5 * 2f64.powi(i as i32)).min(30.0);
                assert!((0.75 * base..1.25 * base).contains(d), "seed {seed}: delay {i} is {d} s, base {base} s");
            }
        }
    }

    #[test]
    fn reset_starts_again_from_the_first_delay() {
        let mut backoff = Backoff::new(7);
        secs(&mut backoff, 20);
        backoff.reset();
        let again = secs(&mut backoff, 2);
        assert!((0.375..0.625).contains(&again[0]), "{again:?}");
        assert!((0.75..1.25).contains(&again[1]), "{again:?}");
    }

    #[test]
    fn the_jitter_follows_the_seed_and_varies() {
        assert_eq!(secs(&mut Backoff::new(3), 8), secs(&mut Backoff::new(3), 8));
        assert_ne!(secs(&mut Backoff::new(3), 8), secs(&mut Backoff::new(4), 8));
        // At the cap the factor still varies from one delay to the next.
        let capped = &secs(&mut Backoff::new(5), 30)[10..];
        assert!(capped.windows(2).any(|w| w[0] != w[1]), "{capped:?}");
    }
}
