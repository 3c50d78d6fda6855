//! Helpers shared by the native GPU tests.
#![allow(dead_code)]

use daig_provider::gpu::Gpu;

/// The adapter present (lavapipe in CI).
pub fn gpu() -> Gpu {
    pollster::block_on(Gpu::new()).expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)")
}

/// A deterministic xorshift generator of `n` values in [-1, 1).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
