//! The wire protocol between the DAIG server and its providers: one postcard-encoded [`Frame`] per
//! WebSocket binary message.
//!
//! This module only turns frames into bytes and back, cuts large payloads into chunks and puts them
//! together again; it owns no socket and keeps no session state beyond one [`Reassembler`]. The types here
//! are the only ones that derive `Serialize`/`Deserialize` for the wire: the server and the provider convert
//! their own types to and from them at the edge.
//!
//! # Sequence
//!
//! ```text
//! provider                                   server
//!    | Hello (protocol_version first) ---------> |  refused: Goodbye(UnsupportedVersion | Unauthorized | ...)
//!    | <------------------------------ Welcome  |  provider id, project id, model JSON, training settings
//!    | <--- TransferStart(Params{version}) ----- |
//!    | <--- Chunk 0, Chunk 1, ... -------------- |  f32 parameters, little-endian
//!    | <------------------------------- Lease    |  samples, local steps, learning rate, deadline
//!    | ShardRequest(hash) ---------------------> |  only for shards not in Hello::cached_shards
//!    | <--- TransferStart(Shard{hash}), Chunks - |
//!    | Heartbeat (lease progress) <-----------> |  both ways, every TrainingInfo::heartbeat_interval_ms
//!    | TransferStart(Contribution{..}), Chunks > |  f32 delta, little-endian
//!    | <--------------------------------- Ack    |  Applied | Stale | Refused(reason, detail)
//!    | <--------------------------- CancelLease  |  at any time after a Lease
//!    | Goodbye(reason, detail) <--------------> |  either side, then the socket closes
//! ```
//!
//! The first frame of a connection is the provider's [`Hello`]; its first field is `protocol_version`, and
//! it is the first variant of [`Frame`], so [`peek_hello_version`] can read the version of any future layout.
//! [`Frame::decode`] reports a different version as [`DecodeError::UnsupportedVersion`] before it looks at
//! the rest. A new version of this protocol must keep `Frame::Hello` first and `protocol_version` first in it.
//!
//! # Payloads and chunking
//!
//! Parameters, shards and contributions travel as a [`TransferStart`] (an id, what the bytes are and their
//! total length) followed by [`Chunk`]s of 1 to [`MAX_CHUNK_BYTES`] bytes, numbered from 0, in order.
//! Other frames may be sent between the chunks of a transfer, but each side sends one transfer at a time:
//! a new `TransferStart` before the previous transfer is complete is an error. A transfer of 0 bytes has no
//! chunks. [`transfer_frames`] cuts a payload into frames; a [`Reassembler`] puts them together and checks
//! the declared size against its limit before it allocates anything. Any error discards the open transfer;
//! there is no retransmission, so the receiver should send a [`Goodbye`] and close.
//!
//! Tensors (parameters, deltas) are raw little-endian `f32` bytes, never serialised element by element:
//! [`f32s_to_le_bytes`] borrows the slice on little-endian hosts and [`f32s_from_le_bytes`] copies the bytes
//! out (a decoded payload is not 4-byte aligned). On big-endian hosts both convert each value.
//!
//! # Limits
//!
//! - [`MAX_FRAME_BYTES`]: the longest encoded frame [`Frame::decode`] accepts, checked before decoding.
//!   It leaves [`MAX_FRAME_HEADER_BYTES`] beside a full chunk; any other frame (a [`Lease`] with its sample
//!   indices, a [`Welcome`] with its model JSON) must fit in it too. [`Frame::encode`] does not check it.
//! - postcard length prefixes cannot make decoding allocate more than the input holds: byte strings borrow
//!   from the input or copy only bytes that are present, and serde caps the memory it reserves for a
//!   sequence by the bytes left. A tampered prefix fails as [`DecodeError::Incomplete`].
//! - [`Reassembler::new`] takes the largest transfer the receiver accepts ([`DEFAULT_MAX_TRANSFER_BYTES`]
//!   unless the caller knows better, e.g. the model's parameter count times 4 for contributions).

mod codec;
mod messages;
mod payload;
mod transfer;

pub use codec::{DecodeError, peek_hello_version};
pub use messages::{
    Ack, AckOutcome, Backend, CancelLease, DeviceCapacity, Frame, Goodbye, GoodbyeReason, Heartbeat, Hello, Lease,
    LeaseId, LeaseProgress, Normalisation, ParseShardHashError, ProjectId, ProviderId, ProviderKey, RefusalReason,
    SampleSelection, ShardHash, ShardRequest, ShardSamples, TrainingInfo, Welcome,
};
pub use payload::{PayloadError, f32s_from_le_bytes, f32s_to_le_bytes};
pub use transfer::{
    Chunk, ContributionInfo, Reassembler, ReassemblyError, Transfer, TransferId, TransferKind, TransferStart,
    transfer_frames,
};

/// The version of this protocol, sent first in [`Hello`]; a server accepts only its own.
pub const PROTOCOL_VERSION: u16 = 3;

/// The largest payload one [`Chunk`] carries: 1 MiB.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// Room for everything in a chunk frame other than its payload (variant tag, ids, length prefix).
pub const MAX_FRAME_HEADER_BYTES: usize = 64;

/// The longest encoded frame [`Frame::decode`] accepts: a full chunk and its header.
pub const MAX_FRAME_BYTES: usize = MAX_CHUNK_BYTES + MAX_FRAME_HEADER_BYTES;

/// A sensible default for [`Reassembler::new`]: 1 GiB, i.e. a model of 256 M `f32` parameters.
pub const DEFAULT_MAX_TRANSFER_BYTES: u64 = 1 << 30;
