// Shared by matmul.wgsl and matmul_large.wgsl (prepended to each, after activation.wgsl): the sizes, the
// options and the bindings, and the loads that read zero outside the matrices so that sizes need not be
// multiples of a tile.

struct Dims {
    m: u32,
    n: u32,
    k: u32,
    k_split: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn load_a(row: u32, col: u32, k_end: u32) -> f32 {
    if row >= dims.m || col >= k_end {
        return 0.0;
    }
    if TRANS_A {
        return a[col * dims.m + row];
    }
    return a[row * dims.k + col];
}

fn load_b(row: u32, col: u32, k_end: u32) -> f32 {
    if row >= k_end || col >= dims.n {
        return 0.0;
    }
    if TRANS_B {
        return b[col * dims.k + row];
    }
    return b[row * dims.n + col];
}
