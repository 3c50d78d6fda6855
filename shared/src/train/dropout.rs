//! Dropout's keep-mask as a pure function of integers, so that every engine (this reference trainer, the
//! WGSL engine, a replay on the server) draws exactly the same mask.
//!
//! The mask of one element is decided by [`dropout_keep`] from the run's seed, the training step, the
//! layer's index and the element's index within the batch's activation tensor `[batch, elements per
//! sample]` (`element = sample_in_batch * elements_per_sample + i`). The hash uses only wrapping `u32`
//! multiplications, shifts and xors, so WGSL can reproduce it bit for bit:
//!
//! ```text
//! mix(x)  = x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
//! h = mix(lo32(seed) ^ 0x9e3779b9)
//! h = mix(h ^ hi32(seed)); h = mix(h ^ lo32(step)); h = mix(h ^ hi32(step))
//! h = mix(h ^ layer);      h = mix(h ^ element)
//! u = f32(h >> 8) * 2^-24          // exact in f32: a uniform value in [0, 1) on a 2^-24 grid
//! keep = u >= rate
//! ```
//!
//! `mix` is Chris Wellons's "lowbias32" integer finaliser. A kept element is scaled by `1 / (1 - rate)`,
//! computed in f32 (inverted dropout), so that evaluation is the identity.

/// One round of the "lowbias32" integer hash: a bijection on `u32` with good avalanche.
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The 32 hash bits that decide one element's dropout (see the module docs for the exact recipe).
pub fn dropout_bits(seed: u64, step: u64, layer: u32, element: u32) -> u32 {
    let mut h = mix32(seed as u32 ^ 0x9e37_79b9);
    h = mix32(h ^ (seed >> 32) as u32);
    h = mix32(h ^ step as u32);
    h = mix32(h ^ (step >> 32) as u32);
    h = mix32(h ^ layer);
    mix32(h ^ element)
}

/// The uniform value in `[0, 1)` that decides one element's dropout: the top 24 hash bits times `2^-24`,
/// exact in `f32`.
pub fn dropout_uniform(seed: u64, step: u64, layer: u32, element: u32) -> f32 {
    (dropout_bits(seed, step, layer, element) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Whether dropout keeps `element` of the activation of model layer `layer` at training step `step`: a
/// pure function, the same on every engine. A rate of 0 keeps everything.
pub fn dropout_keep(seed: u64, step: u64, layer: u32, element: u32, rate: f32) -> bool {
    dropout_uniform(seed, step, layer, element) >= rate
}

/// The factor a kept element is multiplied by: `1 / (1 - rate)`, in f32.
pub fn dropout_scale(rate: f32) -> f32 {
    1.0 / (1.0 - rate)
}

/// What makes one training step's dropout masks: the run's seed and the global step number. Every
/// minibatch of a run should have its own `step`, so that masks differ between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DropoutKey {
    pub seed: u64,
    pub step: u64,
}
