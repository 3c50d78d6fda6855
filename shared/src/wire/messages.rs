//! The frames of the provider protocol and the small structs they hold.
//!
//! The order of variants and fields is the wire format: postcard writes no names, only a variant index
//! and the fields in declaration order. Reordering anything here is a protocol change and must bump
//! [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION); the snapshot tests in `shared/tests/wire.rs` catch it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::transfer::{Chunk, TransferStart};

/// One message between the server and a provider: one WebSocket binary message.
///
/// The lifetime is that of a [`Chunk`]'s bytes, which [`Frame::decode`] borrows from its input and which a
/// sender may borrow from its parameter buffer; [`Frame::into_owned`] gives a `Frame<'static>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame<'a> {
    /// Provider to server, always the first frame. Must stay the first variant (see [`Hello`]).
    Hello(Hello),
    /// Server to provider: the answer to an accepted [`Hello`].
    Welcome(Welcome),
    /// Server to provider: work to do on a parameter version.
    Lease(Lease),
    /// Either way: liveness and the leases the sender believes are open.
    Heartbeat(Heartbeat),
    /// Provider to server: send me this shard.
    ShardRequest(ShardRequest),
    /// Server to provider: stop working on a lease and send nothing for it.
    CancelLease(CancelLease),
    /// Server to provider: what became of a contribution.
    Ack(Ack),
    /// Either way: a payload of `total_bytes` follows in [`Chunk`]s.
    TransferStart(TransferStart),
    /// Either way: the next piece of the open transfer.
    Chunk(#[serde(borrow)] Chunk<'a>),
    /// Either way: the sender is closing the connection, normally or because of an error.
    Goodbye(Goodbye),
}

impl Frame<'_> {
    /// Copies any borrowed chunk bytes so that the frame outlives its input.
    #[must_use]
    pub fn into_owned(self) -> Frame<'static> {
        match self {
            Frame::Hello(m) => Frame::Hello(m),
            Frame::Welcome(m) => Frame::Welcome(m),
            Frame::Lease(m) => Frame::Lease(m),
            Frame::Heartbeat(m) => Frame::Heartbeat(m),
            Frame::ShardRequest(m) => Frame::ShardRequest(m),
            Frame::CancelLease(m) => Frame::CancelLease(m),
            Frame::Ack(m) => Frame::Ack(m),
            Frame::TransferStart(m) => Frame::TransferStart(m),
            Frame::Chunk(m) => Frame::Chunk(m.into_owned()),
            Frame::Goodbye(m) => Frame::Goodbye(m),
        }
    }

    /// The variant's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Welcome(_) => "Welcome",
            Frame::Lease(_) => "Lease",
            Frame::Heartbeat(_) => "Heartbeat",
            Frame::ShardRequest(_) => "ShardRequest",
            Frame::CancelLease(_) => "CancelLease",
            Frame::Ack(_) => "Ack",
            Frame::TransferStart(_) => "TransferStart",
            Frame::Chunk(_) => "Chunk",
            Frame::Goodbye(_) => "Goodbye",
        }
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A provider's id, given by the server in [`Welcome`] and valid for one connection.
    ProviderId(u64)
);
id_newtype!(
    /// A training project's id on the server.
    ProjectId(u64)
);
id_newtype!(
    /// A lease's id, unique on the server.
    LeaseId(u64)
);

/// The content hash of a dataset shard (32 bytes, e.g. SHA-256 or BLAKE3 of the shard file, as the data
/// module defines it). It names a shard on the wire; this module does not compute or check it.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardHash(pub [u8; 32]);

impl fmt::Display for ShardHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ShardHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardHash({self})")
    }
}

/// Why a string is not a [`ShardHash`] (see its [`FromStr`](std::str::FromStr)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseShardHashError {
    /// Not 64 characters (bytes) long.
    #[error("a shard hash is 64 hex digits, not {0} characters")]
    WrongLength(usize),
    /// A character other than `0-9` and `a-f`.
    #[error("a shard hash is lowercase hex (0-9, a-f)")]
    NotHex,
}

/// The lowercase hex form that [`Display`](fmt::Display) writes (64 digits), and nothing else: uppercase is
/// refused, so that each hash has one spelling (caches name their files by it).
impl std::str::FromStr for ShardHash {
    type Err = ParseShardHashError;

    fn from_str(hex: &str) -> Result<Self, Self::Err> {
        fn digit(c: u8) -> Result<u8, ParseShardHashError> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(ParseShardHashError::NotHex),
            }
        }
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(ParseShardHashError::WrongLength(bytes.len()));
        }
        let mut hash = [0u8; 32];
        for (byte, pair) in hash.iter_mut().zip(bytes.chunks_exact(2)) {
            *byte = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Ok(ShardHash(hash))
    }
}

/// The compute backend a provider trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// WebGPU in a browser.
    WebGpu,
    /// Native Vulkan.
    Vulkan,
    /// Native Metal.
    Metal,
    /// Native Direct3D 12.
    Dx12,
    /// OpenGL or WebGL.
    Gl,
    /// No GPU: the CPU reference trainer or a wasm fallback.
    Cpu,
}

/// Provider to server, the first frame of every connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION) of the provider. It must stay the first field of the
    /// first variant so that a server can read it whatever else a future version changes.
    pub protocol_version: u16,
    /// Where the provider computes; the server may size leases by it.
    pub backend: Backend,
    /// The adapter's description (e.g. "NVIDIA H100 80GB HBM3", "SwiftShader"), for operators.
    pub adapter: String,
    /// The provider's own measured speed in samples per second, 0 if unknown; for operators only: the server
    /// sizes leases by the speed it measures, never by this claim.
    pub samples_per_sec: f32,
    /// Shards the provider holds already, so the server need not send them again.
    pub cached_shards: Vec<ShardHash>,
    /// The key of the site that embeds the provider, when the server requires one.
    pub site_key: Option<String>,
    /// The project the provider wants to join; `None` lets the server choose.
    pub project_id: Option<ProjectId>,
    /// The provider's persistent key, a secret it keeps (the browser in local storage, the native provider in
    /// its config directory) so that its standing and credit survive reconnects; `None` starts it as new. The
    /// server keeps only a hash of it.
    pub provider_key: Option<ProviderKey>,
    /// What the provider's device can hold; the server lets it join only projects whose training fits.
    pub device: DeviceCapacity,
}

impl Hello {
    /// The `Hello` of this protocol version from a provider on `backend` (described as `adapter`) asking for
    /// `project` (or any): no measured speed, cached shard, site key or persistent key, and no device capacity
    /// stated. Set the other fields with struct update syntax.
    pub fn new(backend: Backend, adapter: impl Into<String>, project: Option<ProjectId>) -> Hello {
        Hello {
            protocol_version: super::PROTOCOL_VERSION,
            backend,
            adapter: adapter.into(),
            samples_per_sec: 0.0,
            cached_shards: Vec::new(),
            site_key: None,
            project_id: project,
            provider_key: None,
            device: DeviceCapacity::default(),
        }
    }
}

/// What a provider's device says it can hold for one project's training, in bytes; 0 leaves a figure
/// unstated (no limit is applied for it).
///
/// The server compares it with the project's [`DeviceNeed`](crate::model::DeviceNeed) before a provider
/// joins: a browser states its WebGPU adapter's buffer limit and a share of the memory it reports, a native
/// provider its adapter's buffer limit and whatever memory its user allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCapacity {
    /// The largest buffer the device can allocate and bind for storage.
    pub max_buffer_bytes: u64,
    /// The memory it gives one project's training, all buffers together.
    pub memory_bytes: u64,
}

impl DeviceCapacity {
    /// Why `need` does not fit this device, in words for the provider's user; `None` when it fits.
    pub fn refuses(&self, need: &crate::model::DeviceNeed) -> Option<String> {
        if self.max_buffer_bytes > 0 && need.largest_buffer_bytes > self.max_buffer_bytes {
            Some(format!(
                "training this project needs a buffer of {} bytes; this device allows at most {}",
                need.largest_buffer_bytes, self.max_buffer_bytes
            ))
        } else if self.memory_bytes > 0 && need.total_bytes > self.memory_bytes {
            Some(format!(
                "training this project needs {} bytes of device memory; this device gives it at most {}",
                need.total_bytes, self.memory_bytes
            ))
        } else {
            None
        }
    }
}

/// A provider's persistent key: 32 random bytes it generated once and keeps to itself.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderKey(pub [u8; 32]);

impl ProviderKey {
    /// The key as 64 lowercase hex digits, how providers store it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<ProviderKey> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| char::from(c).to_digit(16);
            *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(ProviderKey(key))
    }
}

/// Never printed: the key is a secret.
impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderKey(..)")
    }
}

/// Server to provider: the provider is accepted and this is what it trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The provider's id for this connection, for logs on both sides.
    pub provider_id: ProviderId,
    /// The project the provider joined.
    pub project_id: ProjectId,
    /// The model spec as JSON (the format of the `model` module), parsed by the provider.
    pub model_json: String,
    /// How to train it.
    pub training: TrainingInfo,
}

/// The project-wide training settings a provider needs besides the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// The number of `f32` parameters, so that the provider can check a parameter transfer's size
    /// (`param_count * 4` bytes) and the server a contribution's.
    pub param_count: u64,
    /// Samples per local step.
    pub batch_size: u32,
    /// How often each side sends a [`Heartbeat`]; a peer silent for a few intervals is gone.
    pub heartbeat_interval_ms: u32,
    /// How to normalise a shard's features before training.
    pub normalisation: Normalisation,
}

/// How a provider maps raw features to model inputs: `x' = (x - offset) * scale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Normalisation {
    /// Shards are already normalised.
    None,
    /// One offset and scale for every feature (e.g. pixels: offset 0, scale 1/255).
    Global {
        /// Subtracted from every feature.
        offset: f32,
        /// Multiplies every feature after the offset.
        scale: f32,
    },
    /// One offset and scale per feature, in feature order; both have the model's input width.
    PerFeature {
        /// Subtracted from each feature (typically the mean).
        offset: Vec<f32>,
        /// Multiplies each feature after the offset (typically 1 / standard deviation).
        scale: Vec<f32>,
    },
}

/// Server to provider: train `local_steps` steps from parameter version `params_version` on these samples
/// and send a contribution before the deadline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Names the lease in heartbeats, contributions and acks.
    pub lease_id: LeaseId,
    /// The project the lease belongs to.
    pub project_id: ProjectId,
    /// The parameter version to start from; the provider has it or is receiving it.
    pub params_version: u64,
    /// The samples to train on.
    pub samples: SampleSelection,
    /// Optimiser steps to take before sending the delta.
    pub local_steps: u32,
    /// The learning rate of the local optimiser.
    pub learning_rate: f32,
    /// Time from receiving the lease to the contribution's arrival, after which the server may refuse it.
    /// Relative, because the clocks of the two sides are not comparable.
    pub deadline_ms: u64,
}

/// Which samples a lease covers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SampleSelection {
    /// Indices into the project's whole dataset, as the provider has it (small datasets sent whole).
    Indices(Vec<u32>),
    /// Indices within shards, each shard named by its content hash.
    Shards(Vec<ShardSamples>),
}

/// Samples of one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardSamples {
    /// The shard; the provider asks for it with a [`ShardRequest`] if it lacks it.
    pub shard: ShardHash,
    /// Sample indices within the shard.
    pub indices: Vec<u32>,
}

/// Either way: the sender is alive, and these are the leases it believes are open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Open leases with the steps done so far (the server sends its own view, steps as last reported).
    pub leases: Vec<LeaseProgress>,
}

/// How far a lease has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseProgress {
    /// The lease.
    pub lease_id: LeaseId,
    /// Local steps finished, out of the lease's `local_steps`.
    pub steps_done: u32,
}

/// Provider to server: send this shard, which a lease names and the provider lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRequest {
    /// The shard's content hash.
    pub shard: ShardHash,
}

/// Server to provider: stop a lease; a contribution for it would be refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelLease {
    /// The lease.
    pub lease_id: LeaseId,
    /// Why, for the provider's log.
    pub reason: String,
}

/// Server to provider: what became of the contribution for a lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The lease the contribution was for.
    pub lease_id: LeaseId,
    /// Applied, stale or refused.
    pub outcome: AckOutcome,
}

/// What the server did with a contribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Applied; the parameters are now at `new_version`.
    Applied {
        /// The parameter version after applying the delta.
        new_version: u64,
    },
    /// Not applied: its base version is too far behind `current_version`. Not the provider's fault.
    Stale {
        /// The server's parameter version.
        current_version: u64,
    },
    /// Not applied, for a reason the provider should log and, for some reasons, fix.
    Refused {
        /// The kind of problem.
        reason: RefusalReason,
        /// A human-readable explanation.
        detail: String,
    },
}

/// Why a contribution was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefusalReason {
    /// No such lease, or it was cancelled.
    UnknownLease,
    /// It arrived after the lease's deadline.
    Expired,
    /// Its delta does not have `param_count` values.
    WrongShape,
    /// Its delta or loss holds NaN or infinity.
    NonFinite,
    /// It failed a plausibility check (e.g. a delta norm far above the others).
    Rejected,
    /// Another reason, given in the detail.
    Other,
}

/// Either way: the sender closes the connection after this frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goodbye {
    /// The kind of reason; all but `Normal` and `ShuttingDown` are errors.
    pub reason: GoodbyeReason,
    /// A human-readable explanation.
    pub detail: String,
}

/// Why a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// The sender is done (e.g. the user stopped the provider, or the project finished).
    Normal,
    /// The sender is shutting down.
    ShuttingDown,
    /// The peer's protocol version is not supported; `supported` is the sender's.
    UnsupportedVersion {
        /// The sender's [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        supported: u16,
    },
    /// A missing or wrong site key.
    Unauthorized,
    /// The requested project does not exist or takes no providers.
    UnknownProject,
    /// The server has too many providers.
    Overloaded,
    /// A peer was silent past its heartbeat interval.
    Timeout,
    /// The peer sent bytes that do not decode, a frame out of sequence, or a broken transfer.
    ProtocolError,
    /// Something failed on the sender's side.
    InternalError,
    /// Server to provider: a contribution failed its check by recomputation (it was not the computation its
    /// lease asked for), so the provider is shut out; the detail says how it differed. Not worth retrying.
    ShutOut,
    /// Server to provider: the project's training does not fit what the provider's device says it can hold
    /// ([`DeviceCapacity`]); the detail says which figure. Not worth retrying for that project.
    DeviceTooSmall,
}
