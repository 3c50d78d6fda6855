// The epilogue of a split-K matmul: c[i] = act(sum over s of partial[s, i] + bias[i % n]) for the
// m x n outputs. One thread per output. HAS_BIAS as in matmul.wgsl; activation.wgsl is prepended.

struct Dims {
    m: u32,
    n: u32,
    splits: u32,
    _pad: u32,
}

override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid.x;
    let mn = dims.m * dims.n;
    if i >= mn {
        return;
    }
    var v = 0.0;
    for (var s = 0u; s < dims.splits; s++) {
        v += partial[s * mn + i];
    }
    if HAS_BIAS {
        v += bias[i % dims.n];
    }
    c[i] = activate(v);
}
