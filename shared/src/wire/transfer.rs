//! Large payloads (parameters, shards, contributions) as a [`TransferStart`] and numbered [`Chunk`]s,
//! and the [`Reassembler`] that puts them together under a size limit.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::MAX_CHUNK_BYTES;
use super::messages::{Frame, LeaseId, ShardHash};
use super::payload::{PayloadError, f32s_from_le_bytes};

/// Names a transfer within one connection and direction; the sender picks it (e.g. a counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransferId(pub u32);

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Announces a payload of `total_bytes` that follows in [`Chunk`]s of the same `transfer_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferStart {
    /// The id every chunk of this transfer carries.
    pub transfer_id: TransferId,
    /// What the payload is.
    pub kind: TransferKind,
    /// The payload's exact length; the receiver checks it against its limit before allocating.
    pub total_bytes: u64,
}

/// What a transfer carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TransferKind {
    /// Server to provider: the model's parameters at `version`, little-endian `f32`.
    Params {
        /// The parameter version, which leases name.
        version: u64,
    },
    /// Server to provider: a dataset shard's file, answering a [`ShardRequest`](super::ShardRequest).
    Shard {
        /// The shard's content hash; the receiver should check the bytes against it.
        shard: ShardHash,
    },
    /// Provider to server: the result of a lease, a little-endian `f32` delta of the parameters.
    Contribution(ContributionInfo),
}

impl TransferKind {
    /// Whether the payload is `f32` values, whose length must be a multiple of 4.
    pub fn is_f32(&self) -> bool {
        matches!(self, TransferKind::Params { .. } | TransferKind::Contribution(_))
    }
}

/// What a contribution's delta is the result of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContributionInfo {
    /// The lease it answers.
    pub lease_id: LeaseId,
    /// The parameter version the provider started from; the server uses it to judge staleness.
    pub base_version: u64,
    /// Samples actually trained on, which may be fewer than leased if the provider stopped early.
    pub sample_count: u32,
    /// The mean training loss over those samples.
    pub mean_loss: f32,
}

/// One piece of a transfer: 1 to [`MAX_CHUNK_BYTES`] bytes.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk<'a> {
    /// The transfer this piece belongs to.
    pub transfer_id: TransferId,
    /// The piece's position, from 0, without gaps.
    pub index: u32,
    /// The bytes, borrowed from the frame being decoded or from the sender's buffer.
    #[serde(borrow, with = "serde_bytes")]
    pub bytes: Cow<'a, [u8]>,
}

impl Chunk<'_> {
    /// Copies borrowed bytes so that the chunk outlives its source.
    #[must_use]
    pub fn into_owned(self) -> Chunk<'static> {
        Chunk { transfer_id: self.transfer_id, index: self.index, bytes: Cow::Owned(self.bytes.into_owned()) }
    }
}

impl fmt::Debug for Chunk<'_> {
    // The bytes themselves would swamp any log: show their length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("transfer_id", &self.transfer_id)
            .field("index", &self.index)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The frames that send `payload`: a [`TransferStart`] and then chunks of [`MAX_CHUNK_BYTES`] (the last
/// one shorter), which borrow from `payload`. A payload of 0 bytes gives the start frame alone.
///
/// # Panics
///
/// If `payload` needs more than `u32::MAX` chunks (4 PiB), which no caller can hold in memory.
pub fn transfer_frames(transfer_id: TransferId, kind: TransferKind, payload: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    let start = Frame::TransferStart(TransferStart { transfer_id, kind, total_bytes: payload.len() as u64 });
    let chunks = payload.chunks(MAX_CHUNK_BYTES).enumerate().map(move |(index, bytes)| {
        Frame::Chunk(Chunk {
            transfer_id,
            index: u32::try_from(index).expect("a payload has at most u32::MAX chunks"),
            bytes: Cow::Borrowed(bytes),
        })
    });
    std::iter::once(start).chain(chunks)
}

/// A complete payload, as the [`Reassembler`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    /// The id the sender gave it.
    pub transfer_id: TransferId,
    /// What it is.
    pub kind: TransferKind,
    /// All `total_bytes` of it.
    pub bytes: Vec<u8>,
}

impl Transfer {
    /// The payload read as little-endian `f32` values (for parameters and contributions).
    ///
    /// # Errors
    ///
    /// [`PayloadError::NotF32`] when the length is not a multiple of 4; the [`Reassembler`] already refuses
    /// that for [`TransferKind::is_f32`] kinds.
    pub fn f32s(&self) -> Result<Vec<f32>, PayloadError> {
        f32s_from_le_bytes(&self.bytes)
    }
}

/// A transfer that breaks the rules; the [`Reassembler`] has discarded any open transfer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// The declared size is over the receiver's limit; nothing was allocated.
    #[error("transfer {transfer_id} declares {declared_bytes} bytes, over this side's limit of {limit_bytes} bytes")]
    TooLarge {
        /// The transfer.
        transfer_id: TransferId,
        /// Its `total_bytes`.
        declared_bytes: u64,
        /// The receiver's limit.
        limit_bytes: u64,
    },
    /// An `f32` payload's declared size is not a multiple of 4.
    #[error("transfer {transfer_id} carries f32 values but declares {declared_bytes} bytes, not a multiple of 4")]
    NotF32 {
        /// The transfer.
        transfer_id: TransferId,
        /// Its `total_bytes`.
        declared_bytes: u64,
    },
    /// The receiver could not allocate the declared size, though it is within the limit.
    #[error("cannot allocate {declared_bytes} bytes for transfer {transfer_id}; lower the transfer limit")]
    OutOfMemory {
        /// The transfer.
        transfer_id: TransferId,
        /// Its `total_bytes`.
        declared_bytes: u64,
    },
    /// A transfer started while another was still open; the sender must finish one before the next.
    #[error("transfer {new} started while transfer {open} was still open; send one transfer at a time")]
    AlreadyOpen {
        /// The open transfer, now discarded.
        open: TransferId,
        /// The one that started.
        new: TransferId,
    },
    /// A chunk arrived when no transfer was open.
    #[error("chunk {index} of transfer {transfer_id} arrived with no transfer open; send TransferStart first")]
    NoOpenTransfer {
        /// The chunk's transfer id.
        transfer_id: TransferId,
        /// The chunk's index.
        index: u32,
    },
    /// A chunk names another transfer than the open one.
    #[error("chunk names transfer {got} but transfer {expected} is open")]
    WrongTransfer {
        /// The open transfer.
        expected: TransferId,
        /// The chunk's transfer id.
        got: TransferId,
    },
    /// A chunk is empty or longer than [`MAX_CHUNK_BYTES`].
    #[error("chunk {index} of transfer {transfer_id} is {len} bytes; chunks must be 1 to {MAX_CHUNK_BYTES} bytes")]
    BadChunkLength {
        /// The transfer.
        transfer_id: TransferId,
        /// The chunk's index.
        index: u32,
        /// The chunk's length.
        len: usize,
    },
    /// A chunk's index was already received.
    #[error("chunk {index} of transfer {transfer_id} is a duplicate; chunk {expected} was expected next")]
    Duplicate {
        /// The transfer.
        transfer_id: TransferId,
        /// The chunk's index.
        index: u32,
        /// The index expected next.
        expected: u32,
    },
    /// A chunk came before one it follows.
    #[error("chunk {index} of transfer {transfer_id} arrived out of order; chunk {expected} was expected next")]
    OutOfOrder {
        /// The transfer.
        transfer_id: TransferId,
        /// The chunk's index.
        index: u32,
        /// The index expected next.
        expected: u32,
    },
    /// A chunk would take the transfer past its declared size.
    #[error(
        "chunk {index} of transfer {transfer_id} brings it to {would_be_bytes} bytes, past the declared {declared_bytes}"
    )]
    Overflow {
        /// The transfer.
        transfer_id: TransferId,
        /// The chunk's index.
        index: u32,
        /// The size the transfer would reach with this chunk.
        would_be_bytes: u64,
        /// Its `total_bytes`.
        declared_bytes: u64,
    },
}

/// A transfer being received.
#[derive(Debug)]
struct OpenTransfer {
    transfer_id: TransferId,
    kind: TransferKind,
    total_bytes: usize,
    next_index: u32,
    /// Reserved at `total_bytes` when the transfer starts, so chunks never reallocate it.
    bytes: Vec<u8>,
}

/// Puts one direction of one connection's transfers back together, one transfer at a time.
///
/// Feed it every [`TransferStart`] and [`Chunk`] in the order they arrive; it returns the [`Transfer`] when
/// the last byte has arrived, and never before. It checks, before allocating, that a declared size is within
/// its limit (the most memory a peer can make it hold), then that chunks come in order, without gaps,
/// duplicates or overflow. Any error discards the open transfer.
#[derive(Debug)]
pub struct Reassembler {
    max_transfer_bytes: u64,
    open: Option<OpenTransfer>,
}

impl Reassembler {
    /// A reassembler that refuses transfers over `max_transfer_bytes`
    /// (see [`DEFAULT_MAX_TRANSFER_BYTES`](super::DEFAULT_MAX_TRANSFER_BYTES)).
    pub fn new(max_transfer_bytes: u64) -> Self {
        Reassembler { max_transfer_bytes, open: None }
    }

    /// The largest transfer it accepts.
    pub fn max_transfer_bytes(&self) -> u64 {
        self.max_transfer_bytes
    }

    /// Changes the limit for transfers that start from now on (e.g. to `param_count * 4` once known).
    pub fn set_max_transfer_bytes(&mut self, max_transfer_bytes: u64) {
        self.max_transfer_bytes = max_transfer_bytes;
    }

    /// The open transfer, if any: its id, kind, bytes received and bytes declared.
    pub fn open_transfer(&self) -> Option<(TransferId, &TransferKind, usize, usize)> {
        self.open.as_ref().map(|open| (open.transfer_id, &open.kind, open.bytes.len(), open.total_bytes))
    }

    /// Discards the open transfer (e.g. when its lease is cancelled) and returns its id.
    pub fn abort(&mut self) -> Option<TransferId> {
        self.open.take().map(|open| open.transfer_id)
    }

    /// Passes a [`Frame::TransferStart`] to [`start`](Self::start) and a [`Frame::Chunk`] to
    /// [`push`](Self::push); any other frame is none of its business and gives `Ok(None)`.
    ///
    /// # Errors
    ///
    /// Those of [`start`](Self::start) and [`push`](Self::push).
    pub fn feed(&mut self, frame: &Frame<'_>) -> Result<Option<Transfer>, ReassemblyError> {
        match frame {
            Frame::TransferStart(start) => self.start(start),
            Frame::Chunk(chunk) => self.push(chunk),
            _ => Ok(None),
        }
    }

    /// Opens a transfer after checking its declared size; a transfer of 0 bytes is complete at once.
    ///
    /// # Errors
    ///
    /// [`ReassemblyError::AlreadyOpen`] when a transfer is open (which is discarded),
    /// [`ReassemblyError::TooLarge`] over the limit, [`ReassemblyError::NotF32`] for an `f32` kind whose size
    /// is not a multiple of 4, and [`ReassemblyError::OutOfMemory`] when the allocation fails.
    pub fn start(&mut self, start: &TransferStart) -> Result<Option<Transfer>, ReassemblyError> {
        let transfer_id = start.transfer_id;
        let declared_bytes = start.total_bytes;
        if let Some(open) = self.open.take() {
            return Err(ReassemblyError::AlreadyOpen { open: open.transfer_id, new: transfer_id });
        }
        let total_bytes = usize::try_from(declared_bytes)
            .ok()
            .filter(|_| declared_bytes <= self.max_transfer_bytes)
            .ok_or(ReassemblyError::TooLarge { transfer_id, declared_bytes, limit_bytes: self.max_transfer_bytes })?;
        if start.kind.is_f32() && !total_bytes.is_multiple_of(4) {
            return Err(ReassemblyError::NotF32 { transfer_id, declared_bytes });
        }
        if total_bytes == 0 {
            return Ok(Some(Transfer { transfer_id, kind: start.kind.clone(), bytes: Vec::new() }));
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(total_bytes)
            .map_err(|_| ReassemblyError::OutOfMemory { transfer_id, declared_bytes })?;
        self.open = Some(OpenTransfer { transfer_id, kind: start.kind.clone(), total_bytes, next_index: 0, bytes });
        Ok(None)
    }

    /// Appends a chunk to the open transfer and returns the transfer once it is complete.
    ///
    /// # Errors
    ///
    /// [`ReassemblyError::NoOpenTransfer`], [`ReassemblyError::WrongTransfer`],
    /// [`ReassemblyError::BadChunkLength`], [`ReassemblyError::Duplicate`], [`ReassemblyError::OutOfOrder`]
    /// and [`ReassemblyError::Overflow`]; each discards the open transfer.
    pub fn push(&mut self, chunk: &Chunk<'_>) -> Result<Option<Transfer>, ReassemblyError> {
        let transfer_id = chunk.transfer_id;
        let index = chunk.index;
        let len = chunk.bytes.len();
        let Some(mut open) = self.open.take() else {
            return Err(ReassemblyError::NoOpenTransfer { transfer_id, index });
        };
        if transfer_id != open.transfer_id {
            return Err(ReassemblyError::WrongTransfer { expected: open.transfer_id, got: transfer_id });
        }
        if len == 0 || len > MAX_CHUNK_BYTES {
            return Err(ReassemblyError::BadChunkLength { transfer_id, index, len });
        }
        let expected = open.next_index;
        if index < expected {
            return Err(ReassemblyError::Duplicate { transfer_id, index, expected });
        }
        if index > expected {
            return Err(ReassemblyError::OutOfOrder { transfer_id, index, expected });
        }
        let would_be_bytes = open.bytes.len() + len;
        if would_be_bytes > open.total_bytes {
            return Err(ReassemblyError::Overflow {
                transfer_id,
                index,
                would_be_bytes: would_be_bytes as u64,
                declared_bytes: open.total_bytes as u64,
            });
        }
        open.bytes.extend_from_slice(&chunk.bytes);
        if open.bytes.len() == open.total_bytes {
            return Ok(Some(Transfer { transfer_id, kind: open.kind, bytes: open.bytes }));
        }
        // Indices are u32: a transfer that needs more chunks (over 4 GiB in 1-byte chunks) ends in
        // `Duplicate` rather than wrapping around.
        open.next_index = expected.saturating_add(1);
        self.open = Some(open);
        Ok(None)
    }
}
