// C[M, N] = act(op(A)[M, K] * op(B)[K, N] + bias[N])
//
// A tiled, register-blocked matmul: a workgroup of WG_X x WG_Y threads computes a BM x BN tile of C
// (BM = WG_Y * TM, BN = WG_X * TN), stepping through K in slices of BK that it stages in workgroup memory;
// each thread accumulates a TM x TN block in registers. op(A) is A, or A transposed when TRANS_A (A stored
// as [K, M]); likewise for B (stored as [N, K] when TRANS_B). Sizes need not be multiples of the tile:
// loads outside the matrices read zero and stores outside are skipped.
//
// Split-K: workgroup z computes the partial product over k in [z * k_split, (z + 1) * k_split) into
// slice z of c ([splits, M, N]); the `splitk` kernel then sums the slices and applies bias and activation.
// Without a split (k_split >= k, one slice) the bias and activation are applied here.
//
// activation.wgsl and matmul_common.wgsl are prepended.
//
// Placeholders, replaced before compilation (the pipeline cache is keyed by them): {{WG_X}}, {{WG_Y}},
// {{TM}}, {{TN}}, {{BK}}. Overrides: TRANS_A, TRANS_B, HAS_BIAS, ACT (0 linear, 1 relu, 2 sigmoid, 3 tanh).

const WG_X: u32 = {{WG_X}}u;
const WG_Y: u32 = {{WG_Y}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const BK: u32 = {{BK}}u;
const BM: u32 = WG_Y * TM;
const BN: u32 = WG_X * TN;
const THREADS: u32 = WG_X * WG_Y;

// As is stored k-major (As[k][m]) and Bs as Bs[k][n], so that the inner loop reads rows.
var<workgroup> As: array<f32, BK * BM>;
var<workgroup> Bs: array<f32, BK * BN>;

@compute @workgroup_size(WG_X, WG_Y, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    var acc: array<f32, TM * TN>;
    var a_reg: array<f32, TM>;
    var b_reg: array<f32, TN>;

    let k_begin = wg.z * dims.k_split;
    let k_end = min(k_begin + dims.k_split, dims.k);
    let split = dims.k_split < dims.k;
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        // Stage the A tile (BM x BK) and the B tile (BK x BN).
        for (var e = tid; e < BM * BK; e += THREADS) {
            stage_a(e, m0, k0, k_end);
        }
        for (var e = tid; e < BK * BN; e += THREADS) {
            stage_b(e, n0, k0, k_end);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            // Thread rows and columns are interleaved (stride WG_Y, WG_X) so that neighbours read
            // neighbouring workgroup memory and write neighbouring outputs.
            for (var i = 0u; i < TM; i++) {
                a_reg[i] = As[kk * BM + lid.y + i * WG_Y];
            }
            for (var j = 0u; j < TN; j++) {
                b_reg[j] = Bs[kk * BN + lid.x + j * WG_X];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(a_reg[i], b_reg[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let row = m0 + lid.y + i * WG_Y;
        if row >= dims.m {
            continue;
        }
        for (var j = 0u; j < TN; j++) {
            let col = n0 + lid.x + j * WG_X;
            if col >= dims.n {
                continue;
            }
            var v = acc[i * TN + j];
            if split {
                c[(wg.z * dims.m + row) * dims.n + col] = v;
            } else {
                if HAS_BIAS {
                    v += bias[col];
                }
                c[row * dims.n + col] = activate(v);
            }
        }
    }
}
