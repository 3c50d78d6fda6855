// Column sums of a [rows, cols] tensor: out[c] = sum_r x[r * cols + c] (bias gradients, loss totals).
// With ACCUM, the sums are added to out instead of replacing it. One workgroup per column; its threads stride over the rows, then add their partial sums in a tree.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

override ACCUM: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wg.y * nwg.x + wg.x;
    var s = 0.0;
    if c < params.cols {
        for (var r = lid.x; r < params.rows; r += 256u) {
            s += x[r * params.cols + c];
        }
    }
    partial[lid.x] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if lid.x < stride {
            partial[lid.x] += partial[lid.x + stride];
        }
        workgroupBarrier();
    }
    if lid.x == 0u && c < params.cols {
        if ACCUM {
            out[c] += partial[0];
        } else {
            out[c] = partial[0];
        }
    }
}
