//! The DAIG provider: a GPU training engine in WGSL through wgpu ([`gpu`]), built for wasm32 (WebGPU in the
//! browser) and natively (Vulkan, Metal, DX12).

pub mod gpu;

pub use daig_shared as shared;
