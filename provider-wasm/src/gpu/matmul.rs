//! The matmul kernel (`shaders/matmul.wgsl`): `C = act(op(A) * op(B) + bias)`, used by dense layers
//! forward (A = X, B = W), backward for the input (dX = dY * W^T) and for the kernel (dW = X^T * dY), and
//! by conv2d after im2col.

use super::context::{Access, Dispatch, Gpu, Kernel};

const KERNEL: Kernel = Kernel {
    name: "matmul",
    source: include_str!("shaders/matmul.wgsl"),
    bindings: &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
};

/// The tile shape of the matmul kernel: `wg_x * wg_y` threads, each computing `tm x tn` outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulTiles {
    pub wg_x: u32,
    pub wg_y: u32,
    pub tm: u32,
    pub tn: u32,
    pub bk: u32,
}

impl MatmulTiles {
    /// Tiles that fit the device: large register blocks on real GPUs, small ones on software adapters and
    /// where the device allows fewer invocations or less workgroup memory.
    pub fn for_gpu(gpu: &Gpu) -> MatmulTiles {
        let big = MatmulTiles { wg_x: 16, wg_y: 16, tm: 8, tn: 8, bk: 8 };
        let small = MatmulTiles { wg_x: 8, wg_y: 8, tm: 4, tn: 4, bk: 8 };
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
/// when `trans_b`), `c` is `[m, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matmul {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub trans_a: bool,
    pub trans_b: bool,
    pub activation: FusedActivation,
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
        }
    }

    /// Prepares the launch. `bias`, when given, has `n` values; `dims` is a uniform made by
    /// [`Matmul::dims`] (rewritable when the batch size changes).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare(
        &self,
        gpu: &Gpu,
        tiles: MatmulTiles,
        dims: &wgpu::Buffer,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        c: &wgpu::Buffer,
    ) -> Dispatch {
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
        let groups = [self.n.div_ceil(tiles.block_n()), self.m.div_ceil(tiles.block_m()), 1];
        gpu.dispatch(&KERNEL, &placeholders, &overrides, &[dims, a, b, bias, c], groups)
    }

    /// The uniform holding this matmul's sizes.
    pub fn dims(&self, gpu: &Gpu) -> wgpu::Buffer {
        gpu.uniform(&[self.m, self.n, self.k, 0])
    }
}
