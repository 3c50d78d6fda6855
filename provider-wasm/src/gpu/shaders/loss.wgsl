// Per-sample loss, correctness and the gradient of the batch's mean loss with respect to the model's
// output z, for a batch of `batch` samples with `outputs` values each. LOSS (override):
//   0 cross-entropy on class labels, softmax fused: loss = logsumexp(z) - z[label], dz = (softmax(z) - onehot) / batch
//   1 mean squared error: loss = mean_j (z - t)^2, dz = 2 (z - t) / (batch * outputs)
//   2 binary cross-entropy, sigmoid fused: loss = mean_j max(z,0) - z t + log(1 + exp(-|z|)),
//     dz = (sigmoid(z) - t) / (batch * outputs)
// stats[2 r] = loss of sample r; stats[2 r + 1] = its right predictions: 1 or 0 for cross-entropy (argmax,
// the first maximum on ties), the number of outputs whose z > 0 agrees with t >= 0.5 for binary
// cross-entropy, 0 for mean squared error.
// Labels are f32: the class index for cross-entropy, the targets otherwise.

struct Params {
    batch: u32,
    outputs: u32,
    _pad0: u32,
    _pad1: u32,
}

override LOSS: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> dz: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = (wg.y * nwg.x + wg.x) * 256u + lid.x;
    if r >= params.batch {
        return;
    }
    let n = params.outputs;
    let base = r * n;
    let inv_batch = 1.0 / f32(params.batch);
    var loss = 0.0;
    var correct = 0.0;
    switch LOSS {
        case 0u: {
            let label = u32(labels[r]);
            var m = z[base];
            var best = 0u;
            for (var j = 1u; j < n; j++) {
                if z[base + j] > m {
                    m = z[base + j];
                    best = j;
                }
            }
            var s = 0.0;
            for (var j = 0u; j < n; j++) {
                s += exp(z[base + j] - m);
            }
            loss = log(s) + m - z[base + label];
            for (var j = 0u; j < n; j++) {
                let p = exp(z[base + j] - m) / s;
                dz[base + j] = (p - select(0.0, 1.0, j == label)) * inv_batch;
            }
            correct = select(0.0, 1.0, best == label);
        }
        case 1u: {
            let scale = 2.0 * inv_batch / f32(n);
            for (var j = 0u; j < n; j++) {
                let d = z[base + j] - labels[base + j];
                loss += d * d;
                dz[base + j] = scale * d;
            }
            loss /= f32(n);
        }
        default: {
            let scale = inv_batch / f32(n);
            for (var j = 0u; j < n; j++) {
                let v = z[base + j];
                let t = labels[base + j];
                loss += max(v, 0.0) - v * t + log(1.0 + exp(-abs(v)));
                dz[base + j] = scale * (1.0 / (1.0 + exp(-v)) - t);
                correct += select(0.0, 1.0, (v > 0.0) == (t >= 0.5));
            }
            loss /= f32(n);
        }
    }
    stats[2u * r] = loss;
    stats[2u * r + 1u] = correct;
}
