// Softmax over each row of a [rows, cols] tensor (OP 0), and its backward (OP 1):
// dx = y * (dy - sum(dy * y)), where x is dL/dy and y the softmax output. One thread per row.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = (wg.y * nwg.x + wg.x) * 256u + lid.x;
    if r >= params.rows {
        return;
    }
    let base = r * params.cols;
    if OP == 0u {
        var m = x[base];
        for (var j = 1u; j < params.cols; j++) {
            m = max(m, x[base + j]);
        }
        var s = 0.0;
        for (var j = 0u; j < params.cols; j++) {
            let e = exp(x[base + j] - m);
            out[base + j] = e;
            s += e;
        }
        for (var j = 0u; j < params.cols; j++) {
            out[base + j] = out[base + j] / s;
        }
    } else {
        var d = 0.0;
        for (var j = 0u; j < params.cols; j++) {
            d += x[base + j] * y[base + j];
        }
        for (var j = 0u; j < params.cols; j++) {
            out[base + j] = y[base + j] * (x[base + j] - d);
        }
    }
}
