//! What training a model takes on a provider's device: the buffers the GPU engine (`provider-wasm/src/gpu`)
//! allocates for minibatches of a given size and one shard, as a [`DeviceNeed`].
//!
//! The server compares it with what a provider's device says it can hold
//! ([`DeviceCapacity`](crate::wire::DeviceCapacity), sent in `Hello`) before it lets the provider join a
//! project, so that a visitor's tab is never handed a model it cannot allocate. The engine's own allocations
//! are measured against this bound by `provider-wasm/tests/gpu_train.rs`: a change to the engine's buffers
//! that this module does not follow fails there.

use super::{Layer, Loss, Model};
use crate::model::Activation;

/// What one project's training holds on a provider's device at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNeed {
    /// The largest single buffer, in bytes: a device whose `maxBufferSize` (or storage binding size) is
    /// smaller cannot train the model.
    pub largest_buffer_bytes: u64,
    /// Every buffer together, in bytes.
    pub total_bytes: u64,
}

/// The engine's split-K policy (`Matmul::auto_split` and `prepare` in `provider-wasm/src/gpu/matmul.rs`),
/// as upper bounds: about this many workgroups are aimed at, over output tiles of at least 128 x 128 ...
const TARGET_WORKGROUPS: u64 = 264;
const LARGEST_TILE: u64 = 128;
/// ... with at most 64 slices of at least 32 along k, and any k longer than 4096 always cut.
const MAX_AUTO_SPLITS: u64 = 64;
const MIN_SLICE_K: u64 = 32;
const MAX_SLICE_K: u64 = 4096;
/// Prepared launches kept at once: one for full minibatches and one for a shard's last, shorter one.
const PLANS: u64 = 2;

/// Sums buffer sizes in f32 elements, the way the engine allocates them (at least one element each).
#[derive(Default)]
struct Tally {
    elements: u64,
    largest: u64,
}

impl Tally {
    fn add(&mut self, elements: u64) {
        let elements = elements.max(1);
        self.elements = self.elements.saturating_add(elements);
        self.largest = self.largest.max(elements);
    }
}

impl Model {
    /// What training this model takes on a provider's device, for minibatches of `batch` samples and
    /// shards of up to `shard_samples` samples: parameters, gradients and the lease's starting point;
    /// every layer's activations and their gradients; im2col buffers of convolutions; split-K scratch; the
    /// shard; the read-back of a contribution.
    pub fn device_need(&self, batch: u32, shard_samples: u32) -> DeviceNeed {
        let batch = u64::from(batch.max(1));
        let elements = |shape: &super::Shape| shape.elements().map_or(u64::MAX, |n| n as u64);
        let mut t = Tally::default();
        // Parameters, gradients, start; a contribution is read back through two buffers of every parameter.
        for tensor in &self.params.tensors {
            for _ in 0..3 {
                t.add(tensor.len as u64);
            }
        }
        let params = self.params.total as u64;
        t.add(params);
        t.add(params);
        let input = elements(&self.input_shape());
        let label_width = match self.spec.loss {
            Loss::CrossEntropy => 1,
            _ => elements(self.output_shape()),
        };
        t.add(batch.saturating_mul(input));
        t.add(batch.saturating_mul(label_width));
        let last = self.layers.len().saturating_sub(1);
        for (i, info) in self.layers.iter().enumerate() {
            let n = batch.saturating_mul(elements(&info.output));
            let passthrough = matches!(info.layer, Layer::Flatten)
                || (i == last && self.output_activation_fused && matches!(info.layer, Layer::Activation { .. }));
            if passthrough {
                // At most the input's gradient, when the layer is the first.
                t.add(n);
            } else {
                t.add(n);
                t.add(n);
            }
            let matmul = matches!(info.layer, Layer::Dense { .. } | Layer::Conv2d { .. });
            let act = info.layer.activation();
            if matmul && act == Some(Activation::Softmax) && !(i == last && self.output_activation_fused) {
                t.add(n);
            }
            if matmul && act.is_some_and(|a| a != Activation::Linear) {
                t.add(n);
            }
            if let Some(w) = info.window {
                let positions = (w.out_h * w.out_w) as u64;
                let patch = (w.kernel.h * w.kernel.w * w.in_c) as u64;
                match info.layer {
                    Layer::Conv2d { filters, .. } => {
                        let cols = batch.saturating_mul(positions).saturating_mul(patch);
                        t.add(cols);
                        t.add(cols);
                        let rows = batch.saturating_mul(positions);
                        split_k_scratch(&mut t, rows, patch, filters as u64);
                    }
                    Layer::MaxPool2d { .. } => t.add(n),
                    _ => {}
                }
            } else if let Layer::Dense { units, .. } = info.layer {
                split_k_scratch(&mut t, batch, elements(&info.input), units as u64);
            }
        }
        // Sample indices, loss totals and their read-back, per-sample statistics, a placeholder.
        t.add(batch);
        t.add(2);
        t.add(2);
        t.add(batch.saturating_mul(2));
        t.add(1);
        // The shard on the device.
        let shard = u64::from(shard_samples);
        t.add(shard.saturating_mul(input));
        t.add(shard.saturating_mul(label_width));
        DeviceNeed { largest_buffer_bytes: t.largest.saturating_mul(4), total_bytes: t.elements.saturating_mul(4) }
    }
}

/// The scratch of the three products of a dense or convolution layer over `rows` rows (forward
/// `rows x k . k x units`, weight gradient `k x rows . rows x units`, input gradient `rows x units . units x k`),
/// for each prepared plan.
fn split_k_scratch(t: &mut Tally, rows: u64, k: u64, units: u64) {
    for (m, n, depth) in [(rows, units, k), (k, units, rows), (rows, k, units)] {
        let tiles = m.div_ceil(LARGEST_TILE).saturating_mul(n.div_ceil(LARGEST_TILE)).max(1);
        let auto = (TARGET_WORKGROUPS / tiles).clamp(1, (depth / MIN_SLICE_K).clamp(1, MAX_AUTO_SPLITS));
        let splits = auto.max(depth.div_ceil(MAX_SLICE_K));
        if splits > 1 {
            for _ in 0..PLANS {
                t.add(splits.saturating_mul(m).saturating_mul(n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Limits, Model};

    const MLP: &str = r#"{"input_shape":[784],"layers":[
        {"type":"dense","units":128,"activation":"relu"},
        {"type":"dense","units":10,"activation":"softmax"}],"loss":"cross_entropy"}"#;

    #[test]
    fn the_need_grows_with_the_batch_and_the_shard_and_holds_the_parameters_three_times() {
        let model = Model::from_json(MLP, &Limits::default()).unwrap();
        let small = model.device_need(32, 1000);
        let params = model.param_count() as u64 * 4;
        assert!(small.total_bytes >= 3 * params, "{small:?}");
        assert!(small.total_bytes < 10 * params + 1000 * 785 * 4 + (4 << 20), "{small:?}");
        // The largest buffer here is the shard's features, or the whole parameter read-back.
        assert_eq!(small.largest_buffer_bytes, (1000 * 784 * 4).max(params));
        let bigger_batch = model.device_need(256, 1000);
        let bigger_shard = model.device_need(32, 8000);
        assert!(bigger_batch.total_bytes > small.total_bytes);
        assert_eq!(bigger_shard.total_bytes - small.total_bytes, 7000 * 785 * 4);
        assert_eq!(bigger_shard.largest_buffer_bytes, 8000 * 784 * 4);
    }
}
