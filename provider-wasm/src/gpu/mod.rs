//! The GPU engine: WGSL compute kernels dispatched through wgpu, natively (Vulkan, Metal, DX12) and in the
//! browser (WebGPU). Each kernel's WGSL lives in `shaders/` beside the Rust that dispatches it.

pub mod context;
pub mod kernels;
pub mod matmul;
pub mod trainer;

pub use context::{AdapterSummary, Gpu, GpuError, KernelKey};
