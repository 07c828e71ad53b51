//! Fuzz tests (proptest, stable Rust) of every decoder of bytes a client or a peer sends:
//! the native frame codec (u32 big-endian length prefix checked against a maximum before
//! allocating), [`frame::decode`] (`etchpb.Frame`), `etchpb.PeerFrame`, and
//! `etchpb.InternalRequest` (the data of every raft log entry).
//!
//! Inputs are arbitrary bytes and mutations (flipped bytes, truncation, extension, insertion,
//! removal, a changed length prefix) of valid encodings that a schema-driven generator builds
//! for any message of the `.proto` files (see `common/mod.rs`). The contract: never panic,
//! never allocate beyond the stated limit (`decoder_alloc.rs` measures that), and either an
//! error or a message that re-encodes consistently.
//!
//! The default case counts keep `cargo test` quick (well under a second); a long run (about
//! a minute on 2 cores, debug or release):
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test --release -p etch-protocol --test fuzz
//! ```
//!
//! A failure is shrunk and its seed saved in `protocol/tests/fuzz.proptest-regressions`;
//! commit that file so the case is replayed first by every later run.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use etch_protocol::etcdserverpb::request_op::Request as Op;
use etch_protocol::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use etch_protocol::etchpb::{Frame, InternalRequest, PeerFrame, frame::Body};
use etch_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES};
use etch_protocol::{Code, prefix_end};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;

use common::{Rng, Schema, check_decode, config, mutate, mutation, relength};

/// The messages decoded from untrusted bytes, by full protobuf name.
const DECODED: [&str; 3] = [
    ".etchpb.Frame",
    ".etchpb.PeerFrame",
    ".etchpb.InternalRequest",
];

fn schema() -> &'static Schema {
    static S: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
    S.get_or_init(Schema::load)
}

/// Decodes `bytes` as each of the untrusted message types through the API the node uses.
fn decode_all(bytes: &[u8]) {
    if let Ok(f) = frame::decode(bytes) {
        // The API decoder is prost's: the same contract, and the framed form round-trips.
        let f2 = check_decode::<Frame>(bytes).expect("frame::decode and Frame::decode agree");
        assert_eq!(f, f2);
        let wire = frame::encode(&f);
        let n = u32::from_be_bytes(wire[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(n, wire.len() - LENGTH_PREFIX_BYTES);
        assert_eq!(
            frame::decode(&wire[4..]).expect("re-encoded frame decodes"),
            f
        );
        assert_eq!(frame::encode_payload(&f), &wire[4..]);
    } else {
        assert!(Frame::decode(bytes).is_err());
    }
    check_decode::<PeerFrame>(bytes);
    check_decode::<InternalRequest>(bytes);
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes, as any of the untrusted message types.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        decode_all(&bytes);
    }

    /// Valid encodings decode and round-trip; mutated ones give an error or a consistent
    /// message, whichever type the bytes were built for.
    #[test]
    fn mutated_valid_encodings(
        which in 0..DECODED.len(),
        seed in any::<u64>(),
        depth in 2u32..8,
        relen in relength(),
        muts in vec(mutation(), 0..4),
    ) {
        let e = schema().generate(DECODED[which], &mut Rng::new(seed), depth);
        // Unmutated, the generator's bytes are valid for their own type.
        match which {
            0 => prop_assert!(check_decode::<Frame>(&e.bytes).is_some()),
            1 => prop_assert!(check_decode::<PeerFrame>(&e.bytes).is_some()),
            _ => prop_assert!(check_decode::<InternalRequest>(&e.bytes).is_some()),
        }
        decode_all(&mutate(&e, &relen, &muts));
    }
}

#[cfg(feature = "codec")]
mod codec {
    use super::*;
    use tokio_util::codec::Decoder;

    /// Feeds `input` to a fresh codec in `chunks` (sizes cycled), collecting frames until
    /// the codec wants more or fails. Checks the allocation bound on the way: the buffer never
    /// holds more than what was fed plus one maximum frame (the codec reserves a frame's
    /// length only after checking it against the maximum).
    fn feed(max: usize, input: &[u8], chunks: &[usize]) -> (Vec<Bytes>, bool) {
        let mut c = frame::codec(max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut fed = 0;
        let mut i = 0;
        while fed < input.len() {
            let n = chunks[i % chunks.len()].clamp(1, input.len() - fed);
            i += 1;
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
            loop {
                let r = c.decode(&mut buf);
                assert!(
                    buf.capacity() <= 2 * (fed + max + LENGTH_PREFIX_BYTES) + 64,
                    "buffer grew to {} after {fed} bytes (max frame {max})",
                    buf.capacity()
                );
                match r {
                    Ok(Some(f)) => {
                        assert!(f.len() <= max, "frame of {} > max {max}", f.len());
                        frames.push(f.freeze());
                    }
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
        }
        (frames, false)
    }

    fn framed(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.put_u32(p.len() as u32);
            out.extend_from_slice(p);
        }
        out
    }

    proptest! {
        #![proptest_config(config(256))]

        /// A stream of valid frames decodes to the same payloads however it is split.
        #[test]
        fn any_split_of_valid_frames(
            payloads in vec(vec(any::<u8>(), 0..300), 0..8),
            chunks in vec(1usize..64, 1..8),
        ) {
            let input = framed(&payloads);
            let (frames, failed) = feed(300, &input, &chunks);
            prop_assert!(!failed);
            let got: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
            prop_assert_eq!(got, payloads);
        }

        /// Arbitrary bytes (with length prefixes around the maximum) never panic, never give a
        /// frame above the maximum, and never make the buffer grow past the bound.
        #[test]
        fn arbitrary_stream(
            max in 1usize..512,
            lens in vec(prop_oneof![0u32..600, Just(u32::MAX), any::<u32>()], 0..6),
            noise in vec(any::<u8>(), 0..512),
            chunks in vec(1usize..97, 1..6),
        ) {
            let mut input = Vec::new();
            for (i, l) in lens.iter().enumerate() {
                input.put_u32(*l);
                let take = (*l as usize).min(noise.len()).min(64 * (i + 1));
                input.extend_from_slice(&noise[..take]);
            }
            input.extend_from_slice(&noise);
            feed(max, &input, &chunks);
        }

        /// A length above the maximum is refused as soon as the 4 prefix bytes arrive, before
        /// the payload is allocated.
        #[test]
        fn oversized_length_refused_before_allocating(over in 1u32..u32::MAX - DEFAULT_MAX_FRAME_BYTES as u32) {
            let mut c = frame::codec(DEFAULT_MAX_FRAME_BYTES);
            let mut buf = BytesMut::new();
            buf.put_u32(DEFAULT_MAX_FRAME_BYTES as u32 + over);
            prop_assert!(c.decode(&mut buf).is_err());
            prop_assert!(buf.capacity() < 1024);
        }

        /// What `frame::encode` writes, the codec reads back, and `frame::decode` parses the
        /// payload to the same frame.
        #[test]
        fn encode_then_codec_then_decode(seed in any::<u64>(), depth in 2u32..7, split in 1usize..40) {
            let e = schema().generate(".etchpb.Frame", &mut Rng::new(seed), depth);
            let f = Frame::decode(e.bytes.as_slice()).expect("valid frame");
            let wire = frame::encode(&f);
            let (frames, failed) = feed(DEFAULT_MAX_FRAME_BYTES, &wire, &[split]);
            prop_assert!(!failed);
            prop_assert_eq!(frames.len(), 1);
            prop_assert_eq!(frame::decode(&frames[0]).expect("decodes"), f);
        }
    }
}

/// A Txn nested as deep as a client can send it: prost's recursion limit (100 nested messages)
/// makes anything deeper an error, and decoding, re-encoding and dropping the deepest accepted
/// one fits in a 2 MiB stack (tokio's worker threads' default) even in a debug build.
#[test]
fn nested_txns_decode_within_the_recursion_limit_and_a_small_stack() {
    fn nest(depth: usize) -> TxnRequest {
        let mut t = TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: Bytes::from_static(b"k"),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        for _ in 1..depth {
            t = TxnRequest {
                success: vec![RequestOp {
                    request: Some(Op::RequestTxn(t)),
                }],
                ..Default::default()
            };
        }
        t
    }
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let mut deepest_ok = 0;
            for depth in 1..=80 {
                let f = Frame {
                    id: 1,
                    body: Some(Body::Txn(nest(depth))),
                };
                let wire = f.encode_to_vec();
                match frame::decode(&wire) {
                    Ok(back) => {
                        assert_eq!(back, f);
                        deepest_ok = depth;
                    }
                    Err(e) => assert!(e.to_string().contains("recursion"), "{e}"),
                }
            }
            deepest_ok
        })
        .expect("spawn");
    let deepest_ok = handle.join().expect("no stack overflow");
    // Frame -> Txn -> (RequestOp -> Txn)*: about 50 levels of txn fit under prost's limit.
    assert!(
        (40..80).contains(&deepest_ok),
        "deepest decodable txn: {deepest_ok}"
    );
}

proptest! {
    #![proptest_config(config(512))]

    /// Status codes from the wire: any u32 maps to a code, 0..=16 round-trip.
    #[test]
    fn codes_from_any_u32(v in any::<u32>()) {
        let c = Code::from_u32(v);
        if v <= 16 {
            prop_assert_eq!(c as u32, v);
        } else {
            prop_assert_eq!(c, Code::Unknown);
        }
        prop_assert!(!c.name().is_empty());
    }

    /// `prefix_end` (etcd's GetPrefixRangeEnd) bounds exactly the keys that start with the
    /// prefix.
    #[test]
    fn prefix_end_bounds_the_prefix(key in vec(prop_oneof![Just(0xffu8), any::<u8>()], 0..6), suffix in vec(any::<u8>(), 0..4), other in vec(any::<u8>(), 0..8)) {
        let end = prefix_end(&key);
        if key.iter().all(|&b| b == 0xff) {
            prop_assert_eq!(end, vec![0u8]);
        } else {
            let mut k = key.clone();
            k.extend_from_slice(&suffix);
            prop_assert!(k >= key && k < end);
            if !other.starts_with(&key) && other >= key {
                prop_assert!(other >= end);
            }
        }
    }
}
