//! Frames to bytes and back, with the size and version checks that come before decoding.

use super::messages::Frame;
use super::{MAX_CHUNK_BYTES, MAX_FRAME_BYTES, PROTOCOL_VERSION};

/// The variant index postcard writes for [`Frame::Hello`], as a varint (normally the byte 0, but postcard
/// also reads longer encodings of 0 such as `80 00`).
const HELLO_TAG: u32 = 0;

/// Why bytes are not a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the frame does: a truncated message, or a length prefix that claims more bytes
    /// than there are.
    #[error("frame is truncated: the bytes end before the frame does")]
    Incomplete,
    /// The bytes are not any frame of this protocol version.
    #[error("frame is malformed: {reason}")]
    Malformed {
        /// What was wrong, as far as postcard tells.
        reason: String,
    },
    /// The message is longer than the limit; it was not decoded.
    #[error(
        "frame is {len} bytes, over the limit of {max} bytes; send payloads in chunks of at most {MAX_CHUNK_BYTES} bytes"
    )]
    TooLarge {
        /// The message's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A [`Frame::Hello`] with another protocol version; the rest of it was not decoded.
    #[error(
        "peer speaks protocol version {got} but this side supports only version {supported}; update the older side"
    )]
    UnsupportedVersion {
        /// The peer's version.
        got: u16,
        /// [`PROTOCOL_VERSION`].
        supported: u16,
    },
    /// A whole frame decoded but bytes follow it.
    #[error("frame is followed by {count} unexpected bytes; send one frame per message")]
    TrailingBytes {
        /// How many bytes follow the frame.
        count: usize,
    },
}

impl From<postcard::Error> for DecodeError {
    fn from(error: postcard::Error) -> Self {
        use postcard::Error as E;
        let reason = match error {
            E::DeserializeUnexpectedEnd => return DecodeError::Incomplete,
            E::DeserializeBadVarint => "a varint does not end or overflows its type",
            E::DeserializeBadBool => "a bool is neither 0 nor 1",
            E::DeserializeBadChar => "a char is not a unicode scalar value",
            E::DeserializeBadUtf8 => "a string is not valid UTF-8",
            E::DeserializeBadOption => "an Option tag is neither 0 nor 1",
            E::DeserializeBadEnum => "an enum tag is over u32::MAX",
            // serde's derived visitors report unknown variant indices this way; postcard drops the message.
            E::SerdeDeCustom => "a value is out of range, e.g. an unknown frame or enum variant",
            _ => {
                return DecodeError::Malformed { reason: error.to_string() };
            }
        };
        DecodeError::Malformed { reason: reason.to_owned() }
    }
}

/// The protocol version of a [`Frame::Hello`] without decoding the rest of it, which may have another
/// layout in another version; `Ok(None)` when `bytes` are not a Hello.
///
/// # Errors
///
/// [`DecodeError::Incomplete`] when the bytes end inside the version, [`DecodeError::Malformed`] when the
/// version is not a valid `u16` varint.
pub fn peek_hello_version(bytes: &[u8]) -> Result<Option<u16>, DecodeError> {
    let (tag, rest) = postcard::take_from_bytes::<u32>(bytes)?;
    if tag != HELLO_TAG {
        return Ok(None);
    }
    let (version, _) = postcard::take_from_bytes::<u16>(rest)?;
    Ok(Some(version))
}

impl<'a> Frame<'a> {
    /// Decodes one whole message of at most [`MAX_FRAME_BYTES`]; chunk bytes borrow from `bytes`.
    ///
    /// # Errors
    ///
    /// See [`decode_with_limit`](Self::decode_with_limit).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with_limit(bytes, MAX_FRAME_BYTES)
    }

    /// Decodes one whole message of at most `max_frame_bytes`; chunk bytes borrow from `bytes`.
    ///
    /// Decoding allocates no more than the input holds, whatever its length prefixes claim.
    ///
    /// # Errors
    ///
    /// In the order they are checked: [`DecodeError::TooLarge`] before anything is read,
    /// [`DecodeError::UnsupportedVersion`] for a Hello of another version before the rest is read,
    /// [`DecodeError::Incomplete`], [`DecodeError::Malformed`] and [`DecodeError::TrailingBytes`].
    pub fn decode_with_limit(bytes: &'a [u8], max_frame_bytes: usize) -> Result<Self, DecodeError> {
        if bytes.len() > max_frame_bytes {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: max_frame_bytes });
        }
        // A truncated or broken version is left for the full decode to report.
        if let Ok(Some(got)) = peek_hello_version(bytes)
            && got != PROTOCOL_VERSION
        {
            return Err(DecodeError::UnsupportedVersion { got, supported: PROTOCOL_VERSION });
        }
        let (frame, rest) = postcard::take_from_bytes::<Frame<'a>>(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        // The peek above sees the same version; this only guards against the two ever disagreeing.
        if let Frame::Hello(hello) = &frame
            && hello.protocol_version != PROTOCOL_VERSION
        {
            return Err(DecodeError::UnsupportedVersion { got: hello.protocol_version, supported: PROTOCOL_VERSION });
        }
        Ok(frame)
    }

    /// The frame's encoded length in bytes, computed without encoding it.
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).expect("postcard can size any Frame")
    }

    /// Encodes the frame into a new buffer of exactly its length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded frame to `out`, reserving its length first, so that a buffer reused across
    /// frames stops allocating once it is large enough.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        postcard::serialize_with_flavor(self, AppendVec(out)).expect("postcard can encode any Frame into a Vec");
    }
}

/// A postcard output that appends to a borrowed `Vec`, copying byte strings with one `extend_from_slice`.
struct AppendVec<'v>(&'v mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendVec<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}
