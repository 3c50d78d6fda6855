//! The DAIG provider: a GPU training engine in WGSL through wgpu ([`gpu`]), built for wasm32 (WebGPU in the
//! browser) and natively (Vulkan, Metal, DX12), the [`engine`] a provider trains with (the GPU when it
//! passes a self-check, the CPU reference trainer otherwise), the provider's side of the wire protocol as a
//! sans-IO state machine ([`session`]), the reconnection [`backoff`] both drivers use, in the browser the Web Worker that drives it (`web`), and natively the `daig-provider` binary's connection loop
//! (`native`).

pub mod backoff;
pub mod engine;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod session;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use daig_shared as shared;
