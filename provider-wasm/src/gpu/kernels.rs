//! The engine's WGSL kernels (in `shaders/`, each made of its file after the preludes it uses) and the
//! bindings each declares.

use super::context::{Access, Kernel};

/// Preludes prepended to the kernels that use them (WGSL has no includes).
const ACTIVATION: &str = include_str!("shaders/activation.wgsl");
const MATMUL_COMMON: &str = include_str!("shaders/matmul_common.wgsl");

pub const MATMUL: Kernel = Kernel {
    name: "matmul",
    source: &[ACTIVATION, MATMUL_COMMON, include_str!("shaders/matmul.wgsl")],
    bindings: &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
};

pub const MATMUL_LARGE: Kernel = Kernel {
    name: "matmul_large",
    source: &[ACTIVATION, MATMUL_COMMON, include_str!("shaders/matmul_large.wgsl")],
    bindings: &[Access::Uniform, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
};

pub const SPLIT_K: Kernel = Kernel {
    name: "splitk",
    source: &[ACTIVATION, include_str!("shaders/splitk.wgsl")],
    bindings: &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite],
};

pub const ELEMENTWISE: Kernel = Kernel {
    name: "elementwise",
    source: &[include_str!("shaders/elementwise.wgsl")],
    bindings: &[Access::Uniform, Access::Uniform, Access::Read, Access::Read, Access::ReadWrite],
};

pub const SOFTMAX: Kernel = Kernel {
    name: "softmax",
    source: &[include_str!("shaders/softmax.wgsl")],
    bindings: &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite],
};

pub const LOSS: Kernel = Kernel {
    name: "loss",
    source: &[include_str!("shaders/loss.wgsl")],
    bindings: &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
};

pub const REDUCE: Kernel = Kernel {
    name: "reduce",
    source: &[include_str!("shaders/reduce.wgsl")],
    bindings: &[Access::Uniform, Access::Read, Access::ReadWrite],
};

pub const WINDOW: Kernel = Kernel {
    name: "window",
    source: &[include_str!("shaders/window.wgsl")],
    bindings: &[Access::Uniform, Access::Read, Access::ReadWrite, Access::ReadWrite],
};

pub const GATHER: Kernel = Kernel {
    name: "gather",
    source: &[include_str!("shaders/gather.wgsl")],
    bindings: &[Access::Uniform, Access::Read, Access::Read, Access::ReadWrite],
};

/// Every kernel, for validation.
pub const ALL: &[&Kernel] =
    &[&MATMUL, &MATMUL_LARGE, &SPLIT_K, &ELEMENTWISE, &SOFTMAX, &LOSS, &REDUCE, &WINDOW, &GATHER];

/// `OP` values of `elementwise.wgsl`.
pub mod op {
    pub const ACTIVATE: u32 = 0;
    pub const ACTIVATE_BACKWARD: u32 = 1;
    pub const DROPOUT: u32 = 2;
    pub const SGD: u32 = 3;
    pub const DIFFERENCE: u32 = 4;
}

/// `OP` values of `window.wgsl`.
pub mod window_op {
    pub const IM2COL: u32 = 0;
    pub const COL2IM: u32 = 1;
    pub const MAX_POOL: u32 = 2;
    pub const AVG_POOL: u32 = 3;
    pub const MAX_POOL_BACKWARD: u32 = 4;
    pub const AVG_POOL_BACKWARD: u32 = 5;
}
