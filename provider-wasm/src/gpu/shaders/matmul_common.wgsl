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

// Stages element e of the A tile (BM x BK, stored k-major in As) for the tile rows from m0 and the
// k-slice from k0. Consecutive e take consecutive elements along the dimension that is contiguous in
// memory, so that neighbouring threads read neighbouring addresses. BM, BK and As are the kernel's.
fn stage_a(e: u32, m0: u32, k0: u32, k_end: u32) {
    var r: u32;
    var kk: u32;
    if TRANS_A {
        r = e % BM;
        kk = e / BM;
    } else {
        kk = e % BK;
        r = e / BK;
    }
    As[kk * BM + r] = load_a(m0 + r, k0 + kk, k_end);
}

// Stages element e of the B tile (BK x BN in Bs) for the tile columns from n0, as stage_a does for A.
fn stage_b(e: u32, n0: u32, k0: u32, k_end: u32) {
    var col: u32;
    var kk: u32;
    if TRANS_B {
        kk = e % BK;
        col = e / BK;
    } else {
        col = e % BN;
        kk = e / BN;
    }
    Bs[kk * BN + col] = load_b(k0 + kk, n0 + col, k_end);
}
