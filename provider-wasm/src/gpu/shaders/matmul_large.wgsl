// C[M, N] = act(op(A)[M, K] * op(B)[K, N] + bias[N]), for large GPUs.
//
// The same contract as matmul.wgsl (transposes, split-K, bias and activation, any sizes) with a fixed
// shape: 16 x 16 threads compute a 128 x 128 tile, each thread an 8 x 8 block held in sixteen vec4
// registers (rows lid.y*4 + 0..3 and 64 + lid.y*4 + 0..3, the same for columns), stepping through K in
// slices of 8 staged in workgroup memory. The accumulators are plain variables, not an array, so that no
// compiler has to prove they fit in registers. activation.wgsl and matmul_common.wgsl are prepended.

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;

// k-major: As[k * BM + m], Bs[k * BN + n].
var<workgroup> As: array<f32, 1024>;
var<workgroup> Bs: array<f32, 1024>;

fn store4(row: u32, col: u32, v: vec4<f32>, split: bool, z: u32) {
    if row >= dims.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let cj = col + j;
        if cj < dims.n {
            if split {
                c[(z * dims.m + row) * dims.n + cj] = v[j];
            } else {
                var x = v[j];
                if HAS_BIAS {
                    x += bias[cj];
                }
                c[row * dims.n + cj] = activate(x);
            }
        }
    }
}

fn as4(i: u32) -> vec4<f32> {
    return vec4<f32>(As[i], As[i + 1u], As[i + 2u], As[i + 3u]);
}

fn bs4(i: u32) -> vec4<f32> {
    return vec4<f32>(Bs[i], Bs[i + 1u], Bs[i + 2u], Bs[i + 3u]);
}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let k_begin = wg.z * dims.k_split;
    let k_end = min(k_begin + dims.k_split, dims.k);
    let split = dims.k_split < dims.k;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    var c8 = vec4<f32>(0.0);
    var c9 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c14 = vec4<f32>(0.0);
    var c15 = vec4<f32>(0.0);

    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var q = 0u; q < 4u; q++) {
            stage_a(tid + q * 256u, m0, k0, k_end);
            stage_b(tid + q * 256u, n0, k0, k_end);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = as4(kk * BM + lid.y * 4u);
            let a1 = as4(kk * BM + 64u + lid.y * 4u);
            let b0 = bs4(kk * BN + lid.x * 4u);
            let b1 = bs4(kk * BN + 64u + lid.x * 4u);
            c0 = fma(vec4<f32>(a0.x), b0, c0);
            c1 = fma(vec4<f32>(a0.y), b0, c1);
            c2 = fma(vec4<f32>(a0.z), b0, c2);
            c3 = fma(vec4<f32>(a0.w), b0, c3);
            c4 = fma(vec4<f32>(a0.x), b1, c4);
            c5 = fma(vec4<f32>(a0.y), b1, c5);
            c6 = fma(vec4<f32>(a0.z), b1, c6);
            c7 = fma(vec4<f32>(a0.w), b1, c7);
            c8 = fma(vec4<f32>(a1.x), b0, c8);
            c9 = fma(vec4<f32>(a1.y), b0, c9);
            c10 = fma(vec4<f32>(a1.z), b0, c10);
            c11 = fma(vec4<f32>(a1.w), b0, c11);
            c12 = fma(vec4<f32>(a1.x), b1, c12);
            c13 = fma(vec4<f32>(a1.y), b1, c13);
            c14 = fma(vec4<f32>(a1.z), b1, c14);
            c15 = fma(vec4<f32>(a1.w), b1, c15);
        }
        workgroupBarrier();
    }

    store4(m0 + 0u + lid.y * 4u + 0u, n0 + 0u + lid.x * 4u, c0, split, wg.z);
    store4(m0 + 0u + lid.y * 4u + 1u, n0 + 0u + lid.x * 4u, c1, split, wg.z);
    store4(m0 + 0u + lid.y * 4u + 2u, n0 + 0u + lid.x * 4u, c2, split, wg.z);
    store4(m0 + 0u + lid.y * 4u + 3u, n0 + 0u + lid.x * 4u, c3, split, wg.z);
    store4(m0 + 0u + lid.y * 4u + 0u, n0 + 64u + lid.x * 4u, c4, split, wg.z);
    store4(m0 + 0u + lid.y * 4u + 1u, n0 + 64u + lid.x * 4u, c5, split, wg.z);
    store4(m0 + 0u + lid.y * 4u + 2u, n0 + 64u + lid.x * 4u, c6, split, wg.z);
    store4(m0 + 0u + lid.y * 4u + 3u, n0 + 64u + lid.x * 4u, c7, split, wg.z);
    store4(m0 + 64u + lid.y * 4u + 0u, n0 + 0u + lid.x * 4u, c8, split, wg.z);
    store4(m0 + 64u + lid.y * 4u + 1u, n0 + 0u + lid.x * 4u, c9, split, wg.z);
    store4(m0 + 64u + lid.y * 4u + 2u, n0 + 0u + lid.x * 4u, c10, split, wg.z);
    store4(m0 + 64u + lid.y * 4u + 3u, n0 + 0u + lid.x * 4u, c11, split, wg.z);
    store4(m0 + 64u + lid.y * 4u + 0u, n0 + 64u + lid.x * 4u, c12, split, wg.z);
    store4(m0 + 64u + lid.y * 4u + 1u, n0 + 64u + lid.x * 4u, c13, split, wg.z);
    store4(m0 + 64u + lid.y * 4u + 2u, n0 + 64u + lid.x * 4u, c14, split, wg.z);
    store4(m0 + 64u + lid.y * 4u + 3u, n0 + 64u + lid.x * 4u, c15, split, wg.z);
}
