//! The matmul kernel (`shaders/matmul.wgsl`): `C = act(op(A) * op(B) + bias)`, used by dense layers
//! forward (A = X, B = W), backward for the input (dX = dY * W^T) and for the kernel (dW = X^T * dY), and
//! by conv2d after im2col.

use super::context::{Dispatch, Gpu, GpuError, Kernel, linear_workgroups};
use super::kernels::{MATMUL as KERNEL, MATMUL_LARGE as KERNEL_LARGE, SPLIT_K};

/// Workgroups that keep a large GPU busy; split-K aims for this many when a product has fewer tiles.
const TARGET_WORKGROUPS: u32 = 264;

/// The most k-steps (slices of `bk` along k) one workgroup runs: longer products are always cut into slices
/// (split-K), whatever `splits` asks. lavapipe (llvmpipe) counts every loop iteration of an invocation, all
/// loops together, and silently ends every loop once the count passes 65535 (gallivm's
/// `LP_MAX_TGSI_LOOP_ITERATIONS`); the small tiles spend 32 iterations per k-step (the k loop, the two staging
/// loops and the k-slice loop), so a single slice of more than 2047 k-steps (k > 16376) came back as a partial
/// sum, and its last rows unwritten. 512 k-steps keep a slice at a quarter of that budget.
pub const MAX_K_STEPS: u32 = 512;

/// The tile shape of the matmul kernel: `wg_x * wg_y` threads, each computing `tm x tn` outputs. `large`
/// selects `matmul_large.wgsl`, whose shape is fixed (16 x 16 threads, 8 x 8 each, k-slices of 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulTiles {
    pub wg_x: u32,
    pub wg_y: u32,
    pub tm: u32,
    pub tn: u32,
    pub bk: u32,
    pub large: bool,
}

impl MatmulTiles {
    /// The fixed shape of `matmul_large.wgsl`.
    pub const LARGE: MatmulTiles = MatmulTiles { wg_x: 16, wg_y: 16, tm: 8, tn: 8, bk: 8, large: true };
    /// Small tiles for software adapters and small devices: 4 x 8 threads of 8 x 4 outputs (64 x 16 blocks). On
    /// SwiftShader this trained the MNIST MLP fastest of the shapes tried (8x8 threads of 4x4, 8x8 of 2x2, 16x16 of
    /// 2x2, 4x4 of 8x8, 8x4 of 4x8; `cargo xtask bench browser`).
    pub const SMALL: MatmulTiles = MatmulTiles { wg_x: 4, wg_y: 8, tm: 8, tn: 4, bk: 8, large: false };
}

impl MatmulTiles {
    /// Tiles that fit the device: large register blocks on real GPUs, small ones on software adapters and
    /// where the device allows fewer invocations or less workgroup memory.
    pub fn for_gpu(gpu: &Gpu) -> MatmulTiles {
        let (big, small) = (MatmulTiles::LARGE, MatmulTiles::SMALL);
        let fits = |t: &MatmulTiles| {
            let l = &gpu.limits;
            t.wg_x * t.wg_y <= l.max_compute_invocations_per_workgroup
                && t.wg_x <= l.max_compute_workgroup_size_x
                && t.wg_y <= l.max_compute_workgroup_size_y
                && 4 * t.bk * (t.wg_y * t.tm + t.wg_x * t.tn) <= l.max_compute_workgroup_storage_size
        };
        if !gpu.adapter.software && fits(&big) { big } else { small }
    }

    pub fn block_m(&self) -> u32 {
        self.wg_y * self.tm
    }
    pub fn block_n(&self) -> u32 {
        self.wg_x * self.tn
    }
}

/// The activation fused into a matmul's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FusedActivation {
    Linear = 0,
    Relu = 1,
    Sigmoid = 2,
    Tanh = 3,
}

/// One matmul's shape and options. `a` is `[m, k]` (`[k, m]` when `trans_a`), `b` is `[k, n]` (`[n, k]`
/// when `trans_b`), `c` is `[m, n]`. With `splits > 1` the k dimension is cut into that many slices
/// computed by separate workgroups into a scratch buffer, then summed (split-K): for products with few
/// output tiles and a long k, such as weight gradients (k = batch x positions) and small batches. A k longer
/// than [`MAX_K_STEPS`] k-steps is split however many `splits` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matmul {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub trans_a: bool,
    pub trans_b: bool,
    pub activation: FusedActivation,
    pub splits: u32,
}

impl Matmul {
    pub fn new(m: usize, n: usize, k: usize) -> Matmul {
        Matmul {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            trans_a: false,
            trans_b: false,
            activation: FusedActivation::Linear,
            splits: 1,
        }
    }

    /// Chooses `splits` so that about [`TARGET_WORKGROUPS`] workgroups run, keeping at least four k-steps
    /// per slice. Software adapters, with a few CPU threads, gain nothing and keep one slice.
    pub fn auto_split(self, gpu: &Gpu, tiles: MatmulTiles) -> Matmul {
        if gpu.adapter.software {
            return self;
        }
        let output_tiles = self.m.div_ceil(tiles.block_m()) * self.n.div_ceil(tiles.block_n());
        let most = (self.k / (4 * tiles.bk)).clamp(1, 64);
        Matmul { splits: (TARGET_WORKGROUPS / output_tiles.max(1)).clamp(1, most), ..self }
    }

    /// Prepares the launches (one, or two with split-K). `bias`, when given, has `n` values.
    ///
    /// # Errors
    /// When the split-K scratch buffer is larger than the device allows.
    pub fn prepare(
        &self,
        gpu: &Gpu,
        tiles: MatmulTiles,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        c: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let placeholders =
            [("WG_X", tiles.wg_x), ("WG_Y", tiles.wg_y), ("TM", tiles.tm), ("TN", tiles.tn), ("BK", tiles.bk)];
        let overrides = [
            ("TRANS_A", u32::from(self.trans_a)),
            ("TRANS_B", u32::from(self.trans_b)),
            ("HAS_BIAS", u32::from(bias.is_some())),
            ("ACT", self.activation as u32),
        ];
        // The layout always has a bias binding; without a bias any buffer will do (it is not read).
        let bias = bias.unwrap_or(a);
        let k_split =
            self.k.div_ceil(self.splits.max(1)).next_multiple_of(tiles.bk).clamp(tiles.bk, MAX_K_STEPS * tiles.bk);
        let splits = self.k.div_ceil(k_split).max(1);
        let groups = [self.n.div_ceil(tiles.block_n()), self.m.div_ceil(tiles.block_m()), splits];
        let most = gpu.limits.max_compute_workgroups_per_dimension;
        if groups[0] > most || groups[1] > most || groups[2] > most {
            return Err(GpuError::Validation(format!(
                "a {}x{}x{} matrix product needs {groups:?} workgroups, more than the device's {most} per dimension",
                self.m, self.n, self.k
            )));
        }
        let (kernel, placeholders): (&Kernel, &[(&str, u32)]) =
            if tiles.large { (&KERNEL_LARGE, &[]) } else { (&KERNEL, &placeholders) };
        let dims = gpu.uniform(&[self.m, self.n, self.k, if splits > 1 { k_split } else { self.k.max(1) }]);
        if splits == 1 {
            return Ok(vec![gpu.dispatch(kernel, placeholders, &overrides, &[&dims, a, b, bias, c], groups)]);
        }
        let partial = gpu.buffer("split-k partial", splits as usize * self.m as usize * self.n as usize)?;
        let epilogue_dims = gpu.uniform(&[self.m, self.n, splits, 0]);
        Ok(vec![
            gpu.dispatch(kernel, placeholders, &overrides, &[&dims, a, b, bias, &partial], groups),
            gpu.dispatch(
                &SPLIT_K,
                &[],
                &[("HAS_BIAS", overrides[2].1), ("ACT", self.activation as u32)],
                &[&epilogue_dims, &partial, bias, c],
                linear_workgroups(self.m as usize * self.n as usize),
            ),
        ])
    }
}
