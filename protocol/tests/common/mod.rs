//! Shared by the protocol fuzz tests: the case-count rule, a schema-driven generator of valid
//! protobuf encodings of any message in [`etch_protocol::FILE_DESCRIPTOR_SET`], mutations of
//! encodings, and the re-encoding check every decoder must pass.
//!
//! The generator walks the message's descriptor and writes the wire format directly (every
//! scalar type, strings as UTF-8, nested messages to a bounded depth, repeated fields packed
//! or not, one member of each oneof), so one generator covers every message a peer or a client
//! can send, and any field added to the `.proto` files is covered without touching the tests.
//! It records where it wrote length prefixes so a mutation can change one on purpose.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

/// The proptest config: `default_cases` unless `PROPTEST_CASES` is set (an explicit `cases`
/// would otherwise hide the variable).
pub(crate) fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        // Deep shrinking of a 2 KiB input is slow and rarely smaller than a few hundred steps.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// A tiny deterministic generator (SplitMix64), seeded by proptest: the seed is what proptest
/// shrinks and reports.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// An integer biased to the edges (0, 1, small, extremes) as fuzzers do.
    pub(crate) fn edgy(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => 1 + self.below(3),
            2 => self.below(300),
            3 => u64::MAX - self.below(3),
            4 => (i64::MAX as u64).wrapping_add(self.below(3)),
            _ => self.next(),
        }
    }
    pub(crate) fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max as u64 + 1) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every message of the descriptor set, by full name (`.etchpb.Frame`).
pub(crate) struct Schema {
    messages: HashMap<String, DescriptorProto>,
}

/// One generated encoding and the offsets of the length prefixes in it.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) length_prefixes: Vec<usize>,
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: i32, wire: u64) {
    put_varint(out, ((field as u64) << 3) | wire);
}

impl Schema {
    pub(crate) fn load() -> Schema {
        let fds = FileDescriptorSet::decode(etch_protocol::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set built into etch-protocol decodes");
        let mut messages = HashMap::new();
        fn add(prefix: &str, m: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
            let name = format!("{prefix}.{}", m.name());
            for n in &m.nested_type {
                add(&name, n, out);
            }
            out.insert(name, m.clone());
        }
        for f in &fds.file {
            let prefix = if f.package().is_empty() {
                String::new()
            } else {
                format!(".{}", f.package())
            };
            for m in &f.message_type {
                add(&prefix, m, &mut messages);
            }
        }
        Schema { messages }
    }

    /// A valid encoding of message `name` (full name), nested messages at most `depth` deep.
    pub(crate) fn generate(&self, name: &str, rng: &mut Rng, depth: u32) -> Encoded {
        let mut e = Encoded {
            bytes: Vec::new(),
            length_prefixes: Vec::new(),
        };
        self.message(name, rng, depth, &mut e);
        e
    }

    fn message(&self, name: &str, rng: &mut Rng, depth: u32, e: &mut Encoded) {
        let Some(m) = self.messages.get(name) else {
            panic!("message {name} is not in the descriptor set");
        };
        // One member per oneof (sometimes two: the last one wins, as protobuf specifies).
        let mut oneof_pick: HashMap<i32, Vec<i32>> = HashMap::new();
        for f in &m.field {
            if let Some(o) = f.oneof_index {
                oneof_pick.entry(o).or_default().push(f.number());
            }
        }
        let mut chosen: Vec<i32> = Vec::new();
        for members in oneof_pick.values() {
            if rng.chance(80) {
                chosen.push(members[rng.below(members.len() as u64) as usize]);
            }
            if rng.chance(5) {
                chosen.push(members[rng.below(members.len() as u64) as usize]);
            }
        }
        let mut fields: Vec<_> = m.field.iter().collect();
        // Field order on the wire is free: shuffle sometimes.
        if rng.chance(30) {
            for i in (1..fields.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                fields.swap(i, j);
            }
        }
        for f in fields {
            let in_oneof = f.oneof_index.is_some();
            if in_oneof && !chosen.contains(&f.number()) {
                continue;
            }
            if !in_oneof && !rng.chance(65) {
                continue;
            }
            let is_message = f.r#type() == Type::Message;
            if is_message && depth == 0 {
                continue;
            }
            let repeated = f.label() == Label::Repeated;
            let count = if repeated { rng.below(5) } else { 1 };
            let packable = !matches!(f.r#type(), Type::String | Type::Bytes | Type::Message);
            if repeated && packable && rng.chance(60) {
                let mut body = Vec::new();
                for _ in 0..count {
                    scalar(f.r#type(), rng, &mut body);
                }
                put_tag(&mut e.bytes, f.number(), 2);
                e.length_prefixes.push(e.bytes.len());
                put_varint(&mut e.bytes, body.len() as u64);
                e.bytes.extend_from_slice(&body);
                continue;
            }
            for _ in 0..count {
                match f.r#type() {
                    Type::Message => {
                        let mut inner = Encoded {
                            bytes: Vec::new(),
                            length_prefixes: Vec::new(),
                        };
                        self.message(f.type_name(), rng, depth - 1, &mut inner);
                        put_tag(&mut e.bytes, f.number(), 2);
                        e.length_prefixes.push(e.bytes.len());
                        put_varint(&mut e.bytes, inner.bytes.len() as u64);
                        let base = e.bytes.len();
                        e.length_prefixes
                            .extend(inner.length_prefixes.iter().map(|o| o + base));
                        e.bytes.extend_from_slice(&inner.bytes);
                    }
                    Type::String | Type::Bytes => {
                        let v = if f.r#type() == Type::String {
                            let s: String = (0..rng.below(12))
                                .map(|_| char::from_u32(rng.below(0x800) as u32).unwrap_or('x'))
                                .collect();
                            s.into_bytes()
                        } else {
                            rng.bytes(24)
                        };
                        put_tag(&mut e.bytes, f.number(), 2);
                        e.length_prefixes.push(e.bytes.len());
                        put_varint(&mut e.bytes, v.len() as u64);
                        e.bytes.extend_from_slice(&v);
                    }
                    Type::Group => {}
                    t => {
                        put_tag(&mut e.bytes, f.number(), wire_type(t));
                        scalar(t, rng, &mut e.bytes);
                    }
                }
            }
        }
        // Unknown fields must be skipped: add one sometimes (field 1999, any wire type).
        if rng.chance(10) {
            match rng.below(3) {
                0 => {
                    put_tag(&mut e.bytes, 1999, 0);
                    put_varint(&mut e.bytes, rng.next());
                }
                1 => {
                    put_tag(&mut e.bytes, 1999, 1);
                    e.bytes.extend_from_slice(&rng.next().to_le_bytes());
                }
                _ => {
                    let v = rng.bytes(8);
                    put_tag(&mut e.bytes, 1999, 2);
                    e.length_prefixes.push(e.bytes.len());
                    put_varint(&mut e.bytes, v.len() as u64);
                    e.bytes.extend_from_slice(&v);
                }
            }
        }
    }
}

fn wire_type(t: Type) -> u64 {
    match t {
        Type::Double | Type::Fixed64 | Type::Sfixed64 => 1,
        Type::Float | Type::Fixed32 | Type::Sfixed32 => 5,
        Type::String | Type::Bytes | Type::Message => 2,
        Type::Group => 3,
        _ => 0,
    }
}

fn scalar(t: Type, rng: &mut Rng, out: &mut Vec<u8>) {
    match wire_type(t) {
        1 => out.extend_from_slice(&rng.edgy().to_le_bytes()),
        5 => out.extend_from_slice(&(rng.edgy() as u32).to_le_bytes()),
        _ => {
            let v = match t {
                Type::Bool => rng.below(2),
                // int32 and enums: negative values are sign-extended to 10 bytes on the wire.
                Type::Int32 | Type::Enum => (rng.edgy() as i32) as i64 as u64,
                Type::Uint32 => rng.edgy() as u32 as u64,
                Type::Sint32 => {
                    let v = rng.edgy() as i32;
                    ((v << 1) ^ (v >> 31)) as u32 as u64
                }
                Type::Sint64 => {
                    let v = rng.edgy() as i64;
                    ((v << 1) ^ (v >> 63)) as u64
                }
                _ => rng.edgy(),
            };
            put_varint(out, v);
        }
    }
}

/// One change to an encoding.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    /// XOR the byte at an index with a non-zero mask.
    Flip(Index, u8),
    /// Keep only the first `n` bytes (`n` chosen by the index).
    Truncate(Index),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Insert bytes at an index.
    Insert(Index, Vec<u8>),
    /// Remove up to `n` bytes from an index.
    Remove(Index, usize),
    /// Overwrite bytes at an index with a varint (often lands on a tag or length).
    Varint(Index, u64),
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), any::<u64>()).prop_map(|(i, v)| Mutation::Varint(i, v)),
    ]
}

/// A change to one recorded length prefix: a small delta or an extreme value.
#[derive(Debug, Clone)]
pub(crate) enum Relength {
    Delta(Index, i8),
    Huge(Index, u64),
}

pub(crate) fn relength() -> impl Strategy<Value = Option<Relength>> {
    prop_oneof![
        1 => Just(None),
        1 => (any::<Index>(), any::<i8>()).prop_map(|(i, d)| Some(Relength::Delta(i, d))),
        1 => (any::<Index>(), prop_oneof![Just(u32::MAX as u64), Just(u64::MAX), 1u64 << 21..1u64 << 40])
            .prop_map(|(i, v)| Some(Relength::Huge(i, v))),
    ]
}

fn read_varint(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.get(at..)?.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Applies `relen` (first, while the recorded offsets are valid) then `muts` to `e`.
pub(crate) fn mutate(e: &Encoded, relen: &Option<Relength>, muts: &[Mutation]) -> Vec<u8> {
    let mut b = e.bytes.clone();
    if let Some(r) = relen
        && !e.length_prefixes.is_empty()
    {
        let (idx, new) = match r {
            Relength::Delta(i, d) => {
                let at = e.length_prefixes[i.index(e.length_prefixes.len())];
                let old = read_varint(&b, at).map_or(0, |(v, _)| v);
                (i, old.wrapping_add(*d as i64 as u64))
            }
            Relength::Huge(i, v) => (i, *v),
        };
        let at = e.length_prefixes[idx.index(e.length_prefixes.len())];
        if let Some((_, n)) = read_varint(&b, at) {
            let mut v = Vec::new();
            put_varint(&mut v, new);
            b.splice(at..at + n, v);
        }
    }
    for m in muts {
        match m {
            Mutation::Flip(i, mask) if !b.is_empty() => {
                let at = i.index(b.len());
                b[at] ^= mask;
            }
            Mutation::Truncate(i) => {
                let n = i.index(b.len() + 1);
                b.truncate(n);
            }
            Mutation::Extend(x) => b.extend_from_slice(x),
            Mutation::Insert(i, x) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, x.iter().copied());
            }
            Mutation::Remove(i, n) if !b.is_empty() => {
                let at = i.index(b.len());
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            Mutation::Varint(i, v) if !b.is_empty() => {
                let at = i.index(b.len());
                let mut x = Vec::new();
                put_varint(&mut x, *v);
                let end = (at + x.len()).min(b.len());
                b.splice(at..end, x);
            }
            _ => {}
        }
    }
    b
}

/// The decoder contract: decoding either fails cleanly or gives a message whose encoding
/// decodes to the same message and is a fixpoint (unknown fields and non-canonical varints
/// are dropped by the first decode, never by the second).
pub(crate) fn check_decode<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let e = m.encode_to_vec();
    assert_eq!(e.len(), m.encoded_len(), "encoded_len agrees with encode");
    let again = M::decode(e.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again, m, "decode(encode(m)) == m");
    assert_eq!(again.encode_to_vec(), e, "re-encoding is a fixpoint");
    Some(m)
}
