//! The DAIG provider: a GPU training engine in WGSL through wgpu ([`gpu`]), built for wasm32 (WebGPU in the
//! browser) and natively (Vulkan, Metal, DX12), and the [`engine`] a provider trains with: the GPU when it
//! passes a self-check, the CPU reference trainer otherwise.

pub mod engine;
pub mod gpu;

pub use daig_shared as shared;
