//! The DAIG provider: a GPU training engine in WGSL through wgpu, and the loop that speaks the provider
//! protocol. Built for wasm32 (WebGPU in the browser) and natively.
//!
//! Nothing here yet: the GPU-engine issue fills this crate.

pub use daig_shared as shared;
