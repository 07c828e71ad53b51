//! Allocation bounds of the protocol decoders, measured with a counting global allocator
//! (`cap`): decoding `n` untrusted bytes must never allocate more than a small multiple of `n`
//! (prost checks every length prefix against the bytes left before allocating), and the frame
//! codec never reserves more than its maximum frame size whatever the length prefix claims.
//! (The limits stated in `etch_protocol::frame`: [`DEFAULT_MAX_FRAME_BYTES`].)
//!
//! Allocation counters are process-wide, so this file holds ONE test that runs the cases in
//! sequence, each decode under an allocator limit of its bound above the baseline. An
//! allocation past it cannot be caught: the process aborts with "memory allocation of N bytes
//! failed". The cases come from a fixed seed ([`SEED`], or `PROPTEST_RNG_SEED`), so rerunning
//! the same command reproduces the abort; bisect the case with `PROPTEST_CASES`.
//!
//! Long run:
//!
//! ```text
//! PROPTEST_CASES=50000 cargo test --release -p etch-protocol --test decoder_alloc
//! ```

mod common;

use std::alloc::System;

use bytes::{BufMut, BytesMut};
use cap::Cap;
use etch_protocol::etchpb::{Frame, InternalRequest, PeerFrame};
use etch_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestRunner};
use prost::Message;

use common::{Rng, Schema, config, mutate, mutation, relength};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// The seed of the cases unless `PROPTEST_RNG_SEED` is set.
const SEED: u64 = 0x00e7_c4a1_10c5;

/// Bytes of decoded message per input byte a decode may hold at its peak: every 2 input bytes
/// (an empty nested message) can become one struct of up to ~200 bytes in a `Vec` that grows
/// by doubling.
const MESSAGE_BYTES_PER_INPUT_BYTE: usize = 256;

/// Fixed allowance for small buffers (error strings, first `Vec` capacities).
const SLACK_BYTES: usize = 64 << 10;

fn runner(cases: u32) -> TestRunner {
    let mut c = config(cases);
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    TestRunner::new(c)
}

/// Runs `f` with at most `bound` bytes allocatable above what is allocated now.
fn within<T>(bound: usize, f: impl FnOnce() -> T) -> T {
    let base = ALLOC.allocated();
    ALLOC
        .set_limit(base + bound)
        .expect("the limit is above what is allocated");
    let out = f();
    ALLOC.set_limit(usize::MAX).expect("lifting the limit");
    out
}

fn decode_bounded(bytes: &[u8]) -> Result<(), TestCaseError> {
    let bound = MESSAGE_BYTES_PER_INPUT_BYTE * bytes.len() + SLACK_BYTES;
    within(bound, || {
        let _ = Frame::decode(bytes);
        let _ = PeerFrame::decode(bytes);
        let _ = InternalRequest::decode(bytes);
    });
    Ok(())
}

#[cfg(feature = "codec")]
fn codec_bounded(max: usize, input: &[u8]) -> Result<(), TestCaseError> {
    use tokio_util::codec::Decoder;
    // The buffer a connection reads into, already holding the input.
    let mut buf = BytesMut::with_capacity(input.len());
    buf.extend_from_slice(input);
    let claimed = input
        .get(..4)
        .map_or(0, |p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize);
    let allowed = if claimed <= max { claimed } else { 0 };
    // The codec may reserve the claimed length only when it is within the maximum.
    let bound = 2 * (allowed + LENGTH_PREFIX_BYTES) + SLACK_BYTES;
    within(bound, || {
        let mut c = frame::codec(max);
        while let Ok(Some(_)) = c.decode(&mut buf) {}
    });
    Ok(())
}

#[test]
fn decoders_allocate_within_their_bounds() {
    let schema = Schema::load();
    let names = [
        ".etchpb.Frame",
        ".etchpb.PeerFrame",
        ".etchpb.InternalRequest",
    ];

    let mut r = runner(512);
    r.run(&vec(any::<u8>(), 0..512), |b| decode_bounded(&b))
        .expect("arbitrary bytes");

    let mut r = runner(512);
    r.run(
        &(
            0..names.len(),
            any::<u64>(),
            2u32..8,
            relength(),
            vec(mutation(), 0..4),
        ),
        |(which, seed, depth, relen, muts)| {
            let e = schema.generate(names[which], &mut Rng::new(seed), depth);
            decode_bounded(&mutate(&e, &relen, &muts))
        },
    )
    .expect("mutated encodings");

    #[cfg(feature = "codec")]
    {
        let mut r = runner(256);
        r.run(
            &(
                prop_oneof![Just(DEFAULT_MAX_FRAME_BYTES), 1usize..4096,],
                prop_oneof![any::<u32>(), Just(u32::MAX), 0u32..8192],
                vec(any::<u8>(), 0..256),
            ),
            |(max, len, rest)| {
                let mut input = Vec::with_capacity(4 + rest.len());
                input.put_u32(len);
                input.extend_from_slice(&rest);
                codec_bounded(max, &input)
            },
        )
        .expect("codec");
    }
}
