//! Frame headers and header blocks for [`super::H2Fix`]: parsing a HEADERS frame's fragment,
//! the HPACK rewrite of a complete block, and writing it back as HEADERS + CONTINUATION frames.

use super::*;

/// A frame's 9-byte header.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameHeader {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    /// The stream identifier, reserved bit cleared (ignored on receipt, RFC 9113 section 4.1).
    pub(super) stream: u32,
}

impl FrameHeader {
    /// The header at the front of `b`, if all 9 bytes are there.
    pub(super) fn parse(b: &[u8]) -> Option<FrameHeader> {
        let h = b.get(..FRAME_HEADER_BYTES)?;
        Some(FrameHeader {
            len: (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }
}

/// The priority fields and the header block fragment of a HEADERS payload (RFC 9113 section
/// 6.2): `None` if the padding or priority fields do not fit.
pub(super) fn headers_fragment(
    flags: u8,
    payload: &[u8],
) -> Option<(Option<[u8; PRIORITY_BYTES]>, &[u8])> {
    let (pad, mut rest) = if flags & PADDED != 0 {
        let (&n, rest) = payload.split_first()?;
        (usize::from(n), rest)
    } else {
        (0, payload)
    };
    let priority = if flags & PRIORITY != 0 {
        let (p, after) = rest.split_first_chunk::<PRIORITY_BYTES>()?;
        rest = after;
        Some(*p)
    } else {
        None
    };
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// The HPACK side of one connection.
pub(super) struct Rewriter {
    pub(super) decoder: loona_hpack::Decoder<'static>,
    /// The header block being collected: its first frame came without END_HEADERS.
    pub(super) pending: Option<Pending>,
    /// The fragments of the pending block, concatenated (reused across blocks).
    pub(super) block: Vec<u8>,
    /// The re-encoded block (reused across blocks).
    pub(super) encoded: Vec<u8>,
    /// A block has been repaired: from then on every block is re-encoded.
    pub(super) rewriting: bool,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// A HEADERS frame waiting for its CONTINUATIONs.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) stream: u32,
    pub(super) flags: u8,
    pub(super) priority: Option<[u8; PRIORITY_BYTES]>,
    /// The frames as received, handed on unchanged if the block turns out undecodable.
    pub(super) raw: Vec<u8>,
}

impl Rewriter {
    pub(super) fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_BYTES);
        Rewriter {
            decoder,
            pending: None,
            block: Vec::new(),
            encoded: Vec::new(),
            rewriting: false,
        }
    }

    /// Rewrites the pending block, now complete, into `out`: `false` as [`Rewriter::rewrite`].
    pub(super) fn finish(&mut self, out: &mut BytesMut) -> bool {
        let Some(p) = self.pending.take() else {
            return false;
        };
        let block = std::mem::take(&mut self.block);
        let ok = self.rewrite(p.stream, p.flags, p.priority, &block, out);
        self.block = block;
        if !ok {
            // The caller stops rewriting: the held frames go out as they came.
            self.pending = Some(p);
        }
        ok
    }

    /// Decodes `block`, repairs its `:authority` and writes it to `out` as a HEADERS frame
    /// (+ CONTINUATIONs) of `stream`. `false`, with `out` untouched, if it does not decode, or
    /// if no block of the connection has needed a repair yet and this one needs none either:
    /// the caller then hands the original frames on and stops rewriting.
    pub(super) fn rewrite(
        &mut self,
        stream: u32,
        flags: u8,
        priority: Option<[u8; PRIORITY_BYTES]>,
        block: &[u8],
        out: &mut BytesMut,
    ) -> bool {
        let encoded = &mut self.encoded;
        encoded.clear();
        let mut repaired = false;
        let decoded = self.decoder.decode_with_cb(block, |name, value| {
            let value = match (&*name, repaired_authority(&value)) {
                (b":authority", Some(fixed)) => {
                    repaired = true;
                    fixed
                }
                _ => &*value,
            };
            encode_literal(encoded, &name, value);
        });
        if decoded.is_err() || !(self.rewriting || repaired) {
            return false;
        }
        self.rewriting = true;
        write_headers(out, stream, flags, priority, &self.encoded);
        true
    }
}

/// `host[:port]` of an `:authority` of the form `scheme://host[:port][/...]`; `None` for
/// anything else (a valid authority has no `/`, so it is never changed).
pub(super) fn repaired_authority(value: &[u8]) -> Option<&[u8]> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let (scheme, rest) = (&value[..at], &value[at + 3..]);
    // RFC 3986 section 3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c));
    let end = rest
        .iter()
        .position(|c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let host = &rest[..end];
    (scheme_ok && !host.is_empty() && Authority::try_from(host).is_ok()).then_some(host)
}

/// One field as "literal header field without indexing, new name" (RFC 7541 section 6.2.2),
/// strings without Huffman coding: `0x00`, name length (7-bit prefix integer), name, value
/// length, value.
pub(super) fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_string(out, name);
    encode_string(out, value);
}

/// A string literal, H bit clear: its length as a 7-bit prefix integer (RFC 7541 section 5.1),
/// then its octets.
pub(super) fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    const PREFIX_MAX: usize = 0x7f;
    let mut n = s.len();
    if n < PREFIX_MAX {
        out.push(n as u8);
    } else {
        out.push(PREFIX_MAX as u8);
        n -= PREFIX_MAX;
        while n >= 0x80 {
            out.push((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// A frame header: `len` must fit 24 bits (callers write at most [`OUT_FRAME_BYTES`]).
pub(super) fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// `block` as a HEADERS frame of `stream` with the END_STREAM flag and priority fields of the
/// original, then CONTINUATIONs, each payload at most [`OUT_FRAME_BYTES`]; END_HEADERS on the
/// last.
pub(super) fn write_headers(
    out: &mut BytesMut,
    stream: u32,
    flags: u8,
    priority: Option<[u8; PRIORITY_BYTES]>,
    block: &[u8],
) {
    let prio_len = if priority.is_some() {
        PRIORITY_BYTES
    } else {
        0
    };
    let (first, mut rest) = block.split_at(block.len().min(OUT_FRAME_BYTES - prio_len));
    let mut first_flags = flags & END_STREAM;
    if priority.is_some() {
        first_flags |= PRIORITY;
    }
    if rest.is_empty() {
        first_flags |= END_HEADERS;
    }
    out.reserve(block.len() + prio_len + FRAME_HEADER_BYTES * (block.len() / OUT_FRAME_BYTES + 1));
    put_frame_header(out, prio_len + first.len(), HEADERS, first_flags, stream);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(OUT_FRAME_BYTES));
        rest = after;
        let last = if rest.is_empty() { END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), CONTINUATION, last, stream);
        out.extend_from_slice(chunk);
    }
}
