//! The native frame format.
//!
//! A frame is a 4-byte big-endian unsigned length `N` followed by `N` bytes of payload; the
//! payload is one protobuf-encoded [`Frame`]. `N` counts the payload only (not the 4 length
//! bytes). A reader checks `N` against its maximum ([`DEFAULT_MAX_FRAME_BYTES`] unless
//! configured) before allocating anything, and treats a larger `N` as a fatal connection
//! error.
//!
//! Worked example: a `Frame { id: 1, body: Hello { protocol_version: 1 } }` encodes as the
//! payload `08 01 12 02 08 01` (field 1 varint 1; field 2, length 2, containing field 1 varint
//! 1), so the bytes on the wire are `00 00 00 06 08 01 12 02 08 01`.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::etchpb::Frame;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Default maximum payload of one frame: 2 MiB, room for etcd's default 1.5 MiB request limit
/// (`--max-request-bytes`) plus envelope overhead.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// A payload that is not a valid frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The payload is not a valid protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Encodes `frame` as length prefix + payload.
///
/// # Panics
/// Never for frames built in memory: a `Frame` longer than `u32::MAX` bytes cannot be built
/// from requests that passed the size limits; such a frame is truncated by the peer's limit.
pub fn encode(frame: &Frame) -> Bytes {
    let len = frame.encoded_len();
    let mut buf = BytesMut::with_capacity(LENGTH_PREFIX_BYTES + len);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer with enough capacity cannot fail.
    frame.encode_raw(&mut buf);
    buf.freeze()
}

/// Encodes `frame`'s payload only (no length prefix), for use with [`codec`].
pub fn encode_payload(frame: &Frame) -> Bytes {
    encode_payload_of(frame)
}

/// Encodes any protobuf message as a payload (no length prefix), for use with [`codec`]
/// (peer frames use this with `etchpb.PeerFrame`).
pub fn encode_payload_of<M: Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// Decodes one payload (without its length prefix).
///
/// # Errors
/// [`FrameError::Malformed`] when the bytes are not a protobuf `Frame`. A frame whose `body` is
/// unknown to this version decodes with `body: None`; the caller answers it with an error.
pub fn decode(payload: &[u8]) -> Result<Frame, FrameError> {
    Ok(Frame::decode(payload)?)
}

/// The tokio-util codec for native frames: a `LengthDelimitedCodec` with every option set
/// explicitly (4-byte big-endian length at offset 0, counting the payload only, stripped on
/// read), rejecting lengths above `max_frame_bytes` before allocating.
#[cfg(feature = "codec")]
pub fn codec(max_frame_bytes: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_offset(0)
        .length_field_type::<u32>()
        .big_endian()
        .length_adjustment(0)
        .num_skip(LENGTH_PREFIX_BYTES)
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etchpb::{Hello, frame::Body};

    #[test]
    fn worked_example_matches_module_doc() {
        let f = Frame {
            id: 1,
            body: Some(Body::Hello(Hello {
                protocol_version: 1,
                client: String::new(),
            })),
        };
        assert_eq!(
            &encode(&f)[..],
            &[0, 0, 0, 6, 0x08, 0x01, 0x12, 0x02, 0x08, 0x01]
        );
        assert_eq!(decode(&encode(&f)[4..]).unwrap(), f);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // An unknown field number decodes to an empty body.
        let unknown = [0x08, 0x07, 0xfa, 0x3f, 0x00];
        let f = decode(&unknown).unwrap();
        assert_eq!(f.id, 7);
        assert!(f.body.is_none());
    }

    #[cfg(feature = "codec")]
    #[test]
    fn codec_rejects_oversized_length_before_allocating() {
        use tokio_util::codec::Decoder;
        let mut c = codec(16);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(c.decode(&mut buf).is_err());
        let mut c = codec(16);
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 1, 2][..]);
        assert_eq!(&c.decode(&mut buf).unwrap().unwrap()[..], &[1, 2]);
    }
}
