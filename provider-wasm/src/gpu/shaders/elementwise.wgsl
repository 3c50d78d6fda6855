// Element-wise kernels over n values, chosen by the override OP:
//   0 activation:          out = act(x)
//   1 activation backward: out = x * act'(y), where x is dL/dy and y = act(input)
//   2 dropout:             out = keep(i) ? x * scale : 0 (the same mask forward and backward)
//   3 sgd:                 out -= lr * x (out: a parameter tensor, x: its gradient)
//   4 difference:          out = x - y
// Activations (ACT): 0 linear, 1 relu, 2 sigmoid, 3 tanh.
// Dropout reproduces daig_shared::train::dropout_keep bit for bit: element i of the batch's activation
// tensor [batch, elements] at step `step` of layer `layer` is kept when its hash's top 24 bits / 2^24 >= rate.

struct Params {
    n: u32,
    act: u32,
    layer: u32,
    rate: f32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Per-step values, rewritten before each step of a training call.
struct Step {
    step_lo: u32,
    step_hi: u32,
    seed_lo: u32,
    seed_hi: u32,
    lr: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn mix32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn dropout_keep(element: u32) -> bool {
    var h = mix32(step.seed_lo ^ 0x9e3779b9u);
    h = mix32(h ^ step.seed_hi);
    h = mix32(h ^ step.step_lo);
    h = mix32(h ^ step.step_hi);
    h = mix32(h ^ params.layer);
    h = mix32(h ^ element);
    let u = f32(h >> 8u) * (1.0 / 16777216.0);
    return u >= params.rate;
}

fn activate(v: f32) -> f32 {
    switch params.act {
        case 1u: { return max(v, 0.0); }
        case 2u: { return 1.0 / (1.0 + exp(-v)); }
        case 3u: { return tanh(v); }
        default: { return v; }
    }
}

// The derivative of the activation, from its output.
fn derivative(out_value: f32) -> f32 {
    switch params.act {
        case 1u: { return select(0.0, 1.0, out_value > 0.0); }
        case 2u: { return out_value * (1.0 - out_value); }
        case 3u: { return 1.0 - out_value * out_value; }
        default: { return 1.0; }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid.x;
    if i >= params.n {
        return;
    }
    switch OP {
        case 0u: { out[i] = activate(x[i]); }
        case 1u: { out[i] = x[i] * derivative(y[i]); }
        case 2u: { out[i] = select(0.0, x[i] * params.scale, dropout_keep(i)); }
        case 3u: { out[i] = out[i] - step.lr * x[i]; }
        default: { out[i] = x[i] - y[i]; }
    }
}
