//! `daig-shared`: the vocabulary every part of DAIG speaks.
//!
//! - [`model`]: the model a requestor describes (DAIG JSON or Keras JSON), validated into a [`model::Model`]
//!   with every layer's shape, the parameter layout, the parameter count and the FLOPs per sample.
//! - [`params`]: the flat f32 parameter buffer, its seeded initialisation and safetensors export/import.
//! - [`train`]: the CPU reference trainer (ndarray) every other engine is checked against.
//! - [`data`]: dataset readers (npy, npz, CSV, IDX), checks against the model, normalisation and shards.
//! - [`wire`]: the postcard frames between the server and providers, with chunking and size limits.
//!
//! This crate does no I/O of its own beyond `std::io::{Read, Write, Seek}` passed in by callers: it has no
//! async runtime, socket or browser dependency, and it builds for `wasm32-unknown-unknown`.

pub mod api;
pub mod data;
pub mod model;
pub mod params;
pub mod train;
pub mod wire;
