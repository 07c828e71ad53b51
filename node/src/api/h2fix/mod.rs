//! A connection wrapper that repairs the HTTP/2 `:authority` etcd's Go clients send, before
//! tonic's HTTP/2 server (hyper over the `h2` crate) reads it.
//!
//! # Why
//! etcdctl 3.4 and every Go `clientv3` 3.4 program, given an endpoint with its scheme
//! (`--endpoints=http://127.0.0.1:2379`), open a connection of their own for Maintenance calls
//! (endpoint status, hashkv, defrag, move-leader, snapshot) and send the whole URL,
//! `http://127.0.0.1:2379`, as its `:authority` pseudo-header. etcd's Go server ignores it;
//! `h2` parses it as an `http::uri::Authority`, fails, and resets the stream with
//! `PROTOCOL_ERROR` (hyperium/h2 issue 525, tonic issue 243), so etcdctl reports "stream
//! terminated by RST_STREAM with error code: PROTOCOL_ERROR". `h2` has no option to accept it.
//!
//! # What it rewrites
//! Only the client-to-server bytes of a connection that opens with the HTTP/2 client preface
//! (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, RFC 9113 section 3.4). Anything else (HTTP/1.1 for the
//! JSON gateway on the same port) and the whole server-to-client direction pass through
//! untouched. After the preface the bytes are frames (RFC 9113 section 4.1):
//!
//! ```text
//! +-----------------------------------------------+
//! |                 Length (24)                   |
//! +---------------+---------------+---------------+
//! |   Type (8)    |   Flags (8)   |
//! +-+-------------+---------------+-------------------------------+
//! |R|                 Stream Identifier (31)                      |
//! +=+=============================================================+
//! |                   Frame Payload (Length bytes)              ...
//! +---------------------------------------------------------------+
//! ```
//!
//! Every frame but HEADERS (type 0x1) and its CONTINUATIONs (type 0x9) passes through byte for
//! byte, its payload copied as it arrives (or read straight into the reader's buffer). A
//! HEADERS frame is held until its header block is complete (END_HEADERS, 0x4, on it or on its
//! last CONTINUATION); the block is decoded with the connection's HPACK decoder (RFC 7541,
//! `loona-hpack`; its dynamic table is bounded by h2's SETTINGS_HEADER_TABLE_SIZE, and the
//! client's dynamic table size updates apply to it), an `:authority` of the form
//! `scheme://host[:port][/...]` becomes `host[:port]`, and the block is re-encoded and written
//! as a HEADERS frame (+ CONTINUATIONs past 16384 bytes, the smallest SETTINGS_MAX_FRAME_SIZE
//! any peer accepts) with the same stream, END_STREAM and PRIORITY fields; padding is dropped.
//!
//! The first header block of the connection decides. If it needs no repair (every client but
//! etcd 3.4's Maintenance connections: they all send one `:authority` per connection), it is
//! handed on as it came and so is the rest of the connection, which then costs nothing more:
//! `h2` has seen every byte of the client's HPACK encoding, so its decoder state is the
//! client's. Once a block has been repaired, every later block of the connection is re-encoded
//! too, whether or not it changed, so `h2`'s HPACK decoder never sees the client's encoding and
//! its state cannot drift from ours: the re-encoding uses only "literal header field without
//! indexing, new name" (RFC 7541 section 6.2.2), which leaves `h2`'s dynamic table empty. It
//! costs a few bytes per header on an in-process hop and keeps no state.
//!
//! Worked example (pinned by the test `worked_example_of_the_module_doc`): a GET on stream 1,
//! flags END_STREAM | END_HEADERS, whose 15-byte block is `82` (`:method: GET`, static index
//! 2), `86` (`:scheme: http`), `84` (`:path: /`), `41 0a "http://a:1"` (`:authority`, literal
//! with incremental indexing, name index 1, 10-byte value):
//!
//! ```text
//! 00 00 0f 01 05 00 00 00 01  82 86 84 41 0a 68 74 74 70 3a 2f 2f 61 3a 31
//! ```
//!
//! leaves as one frame with a 52-byte block of four literals without indexing (`00`, name
//! length, name, value length, value):
//!
//! ```text
//! 00 00 34 01 05 00 00 00 01  00 07 ":method" 03 "GET"  00 07 ":scheme" 04 "http"
//!                             00 05 ":path" 01 "/"  00 0a ":authority" 03 "a:1"
//! ```
//!
//! # Malformed input
//! Network input could be an attacker's: nothing here panics on it. A frame sequence this
//! wrapper cannot follow (a header block HPACK cannot decode, a CONTINUATION out of place, a
//! PUSH_PROMISE from a client, bad padding, a header block over [`MAX_HEADER_BLOCK_BYTES`], a
//! connection that ends mid-frame) ends the rewriting: the frames held and everything after
//! pass through unchanged, and `h2` reports the error (after a repaired block, as a
//! COMPRESSION_ERROR of the connection at the latest, since its HPACK state is no longer the
//! client's).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::uri::Authority;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length (3), type, flags, stream identifier (4).
const FRAME_HEADER_BYTES: usize = 9;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Stream dependency (4) and weight (1) of a HEADERS frame with the PRIORITY flag.
const PRIORITY_BYTES: usize = 5;

/// Largest frame payload written: SETTINGS_MAX_FRAME_SIZE's initial value, which every peer
/// accepts whatever it advertises (RFC 9113 section 6.5.2).
const OUT_FRAME_BYTES: usize = 16_384;

/// Largest header block (HEADERS and CONTINUATION frames together, as received) held for
/// rewriting; a larger one passes through unchanged. hyper caps a decoded header list at
/// 16 KiB and `h2` a frame at 16 KiB unless told otherwise, so `h2` refuses such a block anyway.
pub const MAX_HEADER_BLOCK_BYTES: usize = 1024 * 1024;

/// The HPACK dynamic table bound of the client's encoder: `h2`'s SETTINGS_HEADER_TABLE_SIZE,
/// the protocol default, which tonic does not change (RFC 9113 section 6.5.2).
const HEADER_TABLE_BYTES: usize = 4096;

/// Bytes read from the connection at a time while frames are parsed.
mod block;
use block::*;

const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Where the client-to-server byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the first 24 bytes: HTTP/2 preface or not.
    Sniff,
    /// HTTP/2 frames, followed; rewritten once a header block needed a repair.
    Frames,
    /// Not HTTP/2, or frames this wrapper cannot follow: everything as it comes.
    Passthrough,
}

/// A client connection whose HTTP/2 `:authority` is repaired on the way in (see the module
/// doc). Generic over plain TCP and [`crate::tls::client::TlsConn`]; tonic sees the inner
/// connection's [`Connected::connect_info`](tonic::transport::server::Connected).
#[derive(Debug)]
pub struct H2Fix<IO> {
    io: IO,
    mode: Mode,
    /// Bytes read from `io` and not yet handed on.
    rx: BytesMut,
    /// Bytes at the front of `rx` to hand on unchanged.
    pass: usize,
    /// Payload bytes of the current (pass-through) frame not yet in `rx`.
    copy_left: usize,
    /// Rewritten frames (or held ones, as they came), handed on before anything in `rx`.
    out: BytesMut,
    /// HPACK state, from the preface on.
    hpack: Option<Box<Rewriter>>,
    /// `io` reached its end.
    eof: bool,
}

impl<IO> H2Fix<IO> {
    /// Wraps an accepted connection; nothing is read until the server reads.
    pub fn new(io: IO) -> H2Fix<IO> {
        H2Fix {
            io,
            mode: Mode::Sniff,
            rx: BytesMut::new(),
            pass: 0,
            copy_left: 0,
            out: BytesMut::new(),
            hpack: None,
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Stops rewriting: frames held so far, then everything after them, pass unchanged.
    fn stop_rewriting(&mut self) {
        if let Some(rw) = self.hpack.take()
            && let Some(p) = rw.pending
        {
            self.out.extend_from_slice(&p.raw);
        }
        self.mode = Mode::Passthrough;
    }

    /// Makes progress on `rx` (nothing pending to hand on, no pass-through payload left):
    /// `false` when it needs more bytes.
    fn step(&mut self) -> bool {
        match self.mode {
            Mode::Sniff => {
                let n = self.rx.len().min(PREFACE.len());
                if self.rx[..n] != PREFACE[..n] {
                    self.mode = Mode::Passthrough;
                } else if n < PREFACE.len() {
                    return false;
                } else {
                    self.pass = PREFACE.len();
                    self.mode = Mode::Frames;
                    self.hpack = Some(Box::new(Rewriter::new()));
                }
                true
            }
            Mode::Frames => self.frame(),
            Mode::Passthrough => {
                self.pass = self.rx.len();
                true
            }
        }
    }

    /// One frame at the front of `rx`: `false` when it needs more bytes.
    fn frame(&mut self) -> bool {
        let Some(h) = FrameHeader::parse(&self.rx) else {
            return false;
        };
        let Some(rw) = self.hpack.as_deref_mut() else {
            self.stop_rewriting();
            return true;
        };
        let in_block = rw.pending.is_some();
        match h.kind {
            HEADERS | CONTINUATION => {}
            // A client never sends PUSH_PROMISE (RFC 9113 section 8.4); its header block would
            // still change the client's HPACK state. h2 fails the connection for it.
            PUSH_PROMISE => {
                self.stop_rewriting();
                return true;
            }
            // Nothing may come between a HEADERS frame and its CONTINUATIONs (RFC 9113
            // section 6.10): h2 reports the PROTOCOL_ERROR.
            _ if in_block => {
                self.stop_rewriting();
                return true;
            }
            _ => {
                self.pass = FRAME_HEADER_BYTES;
                self.copy_left = h.len;
                return true;
            }
        }
        let continues = rw.pending.as_ref().map(|p| p.stream);
        let held = if in_block { rw.block.len() } else { 0 };
        let fits = held + h.len <= MAX_HEADER_BLOCK_BYTES;
        let in_order = match (h.kind, continues) {
            (HEADERS, None) => true,
            (CONTINUATION, Some(stream)) => stream == h.stream,
            _ => false,
        };
        if !in_order || !fits {
            self.stop_rewriting();
            return true;
        }
        let total = FRAME_HEADER_BYTES + h.len;
        if self.rx.len() < total {
            return false;
        }
        let Self { rx, out, .. } = self;
        let payload = &rx[FRAME_HEADER_BYTES..total];
        let ok = if h.kind == HEADERS {
            let Some((priority, fragment)) = headers_fragment(h.flags, payload) else {
                self.stop_rewriting();
                return true;
            };
            if h.flags & END_HEADERS != 0 {
                // The usual case: the whole block in one frame, decoded where it lies.
                let ok = rw.rewrite(h.stream, h.flags, priority, fragment, out);
                if ok {
                    rx.advance(total);
                }
                ok
            } else {
                rw.block.clear();
                rw.block.extend_from_slice(fragment);
                rw.pending = Some(Pending {
                    stream: h.stream,
                    flags: h.flags,
                    priority,
                    raw: rx[..total].to_vec(),
                });
                rx.advance(total);
                true
            }
        } else {
            rw.block.extend_from_slice(payload);
            if let Some(p) = rw.pending.as_mut() {
                p.raw.extend_from_slice(&rx[..total]);
            }
            rx.advance(total);
            if h.flags & END_HEADERS != 0 {
                rw.finish(out)
            } else {
                true
            }
        };
        if !ok {
            // Undecodable, or nothing to repair on this connection: rx still starts with the
            // frame (single-frame block) or the held frames include it.
            self.stop_rewriting();
        }
        true
    }

    /// Reads more of `io` into `rx`.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        IO: AsyncRead + Unpin,
    {
        let start = self.rx.len();
        self.rx.resize(start + READ_CHUNK_BYTES, 0);
        let (r, n) = {
            let mut rb = ReadBuf::new(&mut self.rx[start..]);
            let r = Pin::new(&mut self.io).poll_read(cx, &mut rb);
            (r, rb.filled().len())
        };
        self.rx.truncate(start + n);
        ready!(r)?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for H2Fix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.pass > 0 {
                let n = this.pass.min(buf.remaining());
                buf.put_slice(&this.rx[..n]);
                this.rx.advance(n);
                this.pass -= n;
                return Poll::Ready(Ok(()));
            }
            if !this.rx.is_empty() && this.copy_left > 0 {
                let n = this.copy_left.min(this.rx.len());
                this.pass = n;
                this.copy_left -= n;
                continue;
            }
            if this.rx.is_empty() {
                match this.mode {
                    Mode::Passthrough => {
                        if this.rx.capacity() != 0 || this.out.capacity() != 0 {
                            // Nothing more to parse on this connection: its buffers go.
                            (this.rx, this.out) = (BytesMut::new(), BytesMut::new());
                        }
                        return Pin::new(&mut this.io).poll_read(cx, buf);
                    }
                    Mode::Frames if this.copy_left > 0 => {
                        // A pass-through payload (DATA above all): straight into the reader's
                        // buffer, no copy of ours.
                        let want = this.copy_left.min(buf.remaining());
                        let n = {
                            let mut rb = ReadBuf::new(buf.initialize_unfilled_to(want));
                            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                            rb.filled().len()
                        };
                        buf.advance(n);
                        this.copy_left -= n;
                        return Poll::Ready(Ok(()));
                    }
                    _ => {}
                }
            }
            if this.step() {
                continue;
            }
            if this.eof {
                // The connection ended mid-frame: hand on what is held, as it came.
                this.stop_rewriting();
                if this.out.is_empty() && this.rx.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            ready!(this.fill(cx))?;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for H2Fix<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for H2Fix<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> IO::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A raw frame.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// The headers of a grpc-go Maintenance call, with its URL as authority.
    fn request_headers(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(enc: &mut loona_hpack::Encoder<'_>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// Everything the wrapper hands on for `input`, written in `chunk`-byte pieces.
    async fn through(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(chunk.max(1)) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut fixed = H2Fix::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        out
    }

    /// The frames of `bytes` after the preface: (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut b = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while let Some(h) = FrameHeader::parse(b) {
            let end = FRAME_HEADER_BYTES + h.len;
            out.push((
                h.kind,
                h.flags,
                h.stream,
                b[FRAME_HEADER_BYTES..end].to_vec(),
            ));
            b = &b[end..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    fn decode(dec: &mut loona_hpack::Decoder<'_>, block: &[u8]) -> Vec<(String, String)> {
        dec.decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn strings(h: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
        h.iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn authority_with_a_scheme_becomes_host_and_port_and_the_rest_is_kept() {
        let mut enc = loona_hpack::Encoder::new();
        let bad = request_headers("http://127.0.0.1:2379");
        let block1 = encode(&mut enc, &bad);
        let block2 = encode(&mut enc, &bad);
        // The second block refers to the client's dynamic table: alone, it does not decode.
        assert!(loona_hpack::Decoder::new().decode(&block2).is_err());
        let data = b"\x00\x00\x00\x00\x02\x08\x01".to_vec();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, b"\x00\x01\x00\x00\x10\x00"));
        input.extend(frame(HEADERS, END_HEADERS, 1, &block1));
        input.extend(frame(0x0, END_STREAM, 1, &data));
        // Stream 3: padded, with priority fields.
        let mut payload = vec![3u8];
        payload.extend([0, 0, 0, 1, 15]);
        payload.extend(&block2);
        payload.extend([0, 0, 0]);
        input.extend(frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 3, &payload));
        input.extend(frame(0x0, END_STREAM, 3, &data));
        input.extend(frame(0x8, 0, 0, &[0, 0, 0x10, 0]));

        for chunk in [1, 7, 4096] {
            let out = through(input.clone(), chunk).await;
            let f = frames(&out);
            assert_eq!(f.len(), 6, "chunk {chunk}");
            let mut dec = loona_hpack::Decoder::new();
            let mut want = strings(&bad);
            want[3].1 = "127.0.0.1:2379".into();

            assert_eq!(f[0], (0x4, 0, 0, b"\x00\x01\x00\x00\x10\x00".to_vec()));
            let (kind, flags, stream, block) = &f[1];
            assert_eq!((*kind, *flags, *stream), (HEADERS, END_HEADERS, 1));
            assert_eq!(decode(&mut dec, block), want);
            assert_eq!(f[2], (0x0, END_STREAM, 1, data.clone()));
            let (kind, flags, stream, payload) = &f[3];
            assert_eq!(
                (*kind, *flags, *stream),
                (HEADERS, END_HEADERS | PRIORITY, 3)
            );
            assert_eq!(&payload[..5], &[0, 0, 0, 1, 15]);
            assert_eq!(decode(&mut dec, &payload[5..]), want);
            assert_eq!(f[4], (0x0, END_STREAM, 3, data.clone()));
            assert_eq!(f[5], (0x8, 0, 0, vec![0, 0, 0x10, 0]));
        }
    }

    #[tokio::test]
    async fn blocks_split_either_way_are_joined_and_split() {
        let mut enc = loona_hpack::Encoder::new();
        let mut headers = request_headers("https://127.0.0.1:2379");
        // A size update first: the decoder must follow the client's table size.
        let mut block = vec![0x20 | 0x1f, 0xe1, 0x0f]; // dynamic table size update to 2048
        enc.set_max_table_size(2048);
        block.extend(encode(&mut enc, &headers));
        // Received as HEADERS + 2 CONTINUATIONs.
        let (a, rest) = block.split_at(5);
        let (b, c) = rest.split_at(4);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_STREAM, 5, a));
        input.extend(frame(CONTINUATION, 0, 5, b));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, c));
        // A block larger than a frame on the way out, with nothing to repair: once a
        // connection is rewritten, every block is re-encoded.
        headers[3].1 = b"127.0.0.1:2379".to_vec();
        headers.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let big = encode(&mut enc, &headers);
        for piece in big.chunks(16_000).enumerate() {
            let (i, p) = piece;
            let (kind, flags) = match i {
                0 => (HEADERS, 0),
                _ if (i + 1) * 16_000 >= big.len() => (CONTINUATION, END_HEADERS),
                _ => (CONTINUATION, 0),
            };
            input.extend(frame(kind, flags, 7, p));
        }
        let out = through(input, 1000).await;
        let f = frames(&out);
        let mut dec = loona_hpack::Decoder::new();
        assert_eq!(
            (f[0].0, f[0].1, f[0].2),
            (HEADERS, END_STREAM | END_HEADERS, 5)
        );
        assert_eq!(
            decode(&mut dec, &f[0].3),
            strings(&request_headers("127.0.0.1:2379"))
        );

        let kinds: Vec<_> = f[1..].iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            kinds,
            vec![
                (HEADERS, 0, 7),
                (CONTINUATION, 0, 7),
                (CONTINUATION, END_HEADERS, 7)
            ]
        );
        assert!(f[1..].iter().all(|f| f.3.len() <= OUT_FRAME_BYTES));
        let joined: Vec<u8> = f[1..].iter().flat_map(|f| f.3.clone()).collect();
        assert_eq!(decode(&mut dec, &joined), strings(&headers));
    }

    #[tokio::test]
    async fn worked_example_of_the_module_doc() {
        let mut input = PREFACE.to_vec();
        input.extend([0, 0, 0x0f, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 0x0a]);
        input.extend(b"http://a:1");
        let mut want = PREFACE.to_vec();
        want.extend([0, 0, 0x34, 1, 5, 0, 0, 0, 1]);
        for (n, v) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "a:1"),
        ] {
            want.extend([0, n.len() as u8]);
            want.extend(n.as_bytes());
            want.push(v.len() as u8);
            want.extend(v.as_bytes());
        }
        assert_eq!(through(input, 4).await, want);
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_valid_passes_through_byte_identical() {
        let mut enc = loona_hpack::Encoder::new();
        let good = request_headers("127.0.0.1:2379");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        // The first block, padded, in a HEADERS frame and a CONTINUATION.
        let block = encode(&mut enc, &good);
        let head = [&[2][..], &block[..4], &[0, 0]].concat();
        input.extend(frame(HEADERS, PADDED, 1, &head));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[4..]));
        input.extend(frame(0x0, END_STREAM, 1, b"\x00\x00\x00\x00\x00"));
        // Later blocks, even a bad authority, are not looked at: grpc-go sends one per
        // connection.
        let block = encode(&mut enc, &request_headers("http://127.0.0.1:2379"));
        input.extend(frame(HEADERS, 0, 3, &block[..2]));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, &block[2..]));
        for chunk in [1, 9, 4096] {
            assert_eq!(through(input.clone(), chunk).await, input);
        }
    }

    #[tokio::test]
    async fn http1_passes_through_byte_identical() {
        let req = b"POST /v3/kv/range HTTP/1.1\r\nHost: http://127.0.0.1:2379\r\n\
                    Content-Length: 11\r\n\r\n{\"key\":\"a\"}"
            .to_vec();
        for chunk in [1, 3, 1000] {
            assert_eq!(through(req.clone(), chunk).await, req);
        }
        // Shorter than the preface, and a near miss of it.
        assert_eq!(through(b"PRI".to_vec(), 1).await, b"PRI");
        let near = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r!xxxx".to_vec();
        assert_eq!(through(near.clone(), 5).await, near);
    }

    #[tokio::test]
    async fn undecodable_or_out_of_place_frames_pass_through_unchanged() {
        let mut enc = loona_hpack::Encoder::new();
        let good = encode(&mut enc, &request_headers("http://127.0.0.1:2379"));
        let cases: Vec<Vec<u8>> = vec![
            // An index past both tables.
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0x7f]),
            // Padding longer than the payload.
            frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x82]),
            // Priority fields cut short.
            frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0]),
            // A CONTINUATION with no HEADERS before it.
            frame(CONTINUATION, END_HEADERS, 1, &good),
            // A DATA frame between HEADERS and its CONTINUATION.
            [
                frame(HEADERS, 0, 1, &good[..3]),
                frame(0x0, 0, 1, b"x"),
                frame(CONTINUATION, END_HEADERS, 1, &good[3..]),
            ]
            .concat(),
            // A CONTINUATION of another stream.
            [
                frame(HEADERS, 0, 1, &good[..3]),
                frame(CONTINUATION, END_HEADERS, 3, &good[3..]),
            ]
            .concat(),
            // A table size update past h2's SETTINGS_HEADER_TABLE_SIZE.
            frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x7f, 0x82]),
            // A PUSH_PROMISE from the client.
            frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]),
            // Cut off in the middle of a frame.
            frame(HEADERS, END_HEADERS, 1, &good)[..10].to_vec(),
            frame(HEADERS, 0, 1, &good),
        ];
        for case in cases {
            let input = [PREFACE.to_vec(), case].concat();
            assert_eq!(through(input.clone(), 2).await, input);
        }
    }

    #[tokio::test]
    async fn random_frames_never_panic() {
        // xorshift64*: a fixed seed replays the same inputs.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..300 {
            let mut input = PREFACE.to_vec();
            for _ in 0..(next() % 6) {
                let kind = [HEADERS, CONTINUATION, 0x0, PUSH_PROMISE, 0x4][(next() % 5) as usize];
                let flags = (next() & 0x2d) as u8;
                let len = (next() % 40) as usize;
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                input.extend(frame(kind, flags, (next() % 4) as u32, &payload));
            }
            if next() % 3 == 0 {
                let cut = (next() as usize) % input.len();
                input.truncate(cut);
            }
            let out = through(input.clone(), (next() % 50) as usize + 1).await;
            // Whatever was made of them, the preface came through first.
            assert_eq!(&out[..out.len().min(24)], &input[..input.len().min(24)]);
        }
    }

    #[test]
    fn repaired_authority_takes_host_and_port_of_a_url_only() {
        let r = |s: &str| {
            repaired_authority(s.as_bytes()).map(|b| String::from_utf8_lossy(b).into_owned())
        };
        assert_eq!(
            r("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(
            r("https://etcd.example:2379/").as_deref(),
            Some("etcd.example:2379")
        );
        assert_eq!(r("http://[::1]:2379/x?y#z").as_deref(), Some("[::1]:2379"));
        assert_eq!(
            r("unix://localhost:2379").as_deref(),
            Some("localhost:2379")
        );
        for kept in [
            "127.0.0.1:2379",
            "localhost",
            "http://",
            "://a:1",
            "1ttp://a:1",
            "http://a b:1",
        ] {
            assert_eq!(r(kept), None, "{kept}");
        }
        // What h2 rejects, and what it accepts after the repair.
        assert!(Authority::try_from(&b"http://127.0.0.1:2379"[..]).is_err());
        assert!(Authority::try_from(&b"127.0.0.1:2379"[..]).is_ok());
    }

    #[test]
    fn string_lengths_use_the_prefix_integer_encoding() {
        for (len, head) in [
            (10, vec![10]),
            (126, vec![126]),
            (127, vec![127, 0]),
            (1337, vec![127, 0xba, 0x09]),
        ] {
            let mut out = Vec::new();
            encode_string(&mut out, &vec![b'a'; len]);
            assert_eq!(&out[..head.len()], &head[..], "{len}");
            let mut block = vec![0x00];
            encode_string(&mut block, b"n");
            encode_string(&mut block, &vec![b'a'; len]);
            let h = loona_hpack::Decoder::new().decode(&block).unwrap();
            assert_eq!(h[0].1.len(), len);
        }
    }

    /// The request etcdctl 3.4 sends for `endpoint status`, through the wrapper into a real
    /// h2 server: accepted, with the repaired authority.
    #[tokio::test]
    async fn h2_server_accepts_a_url_authority_through_the_wrapper() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut conn = h2::server::handshake(H2Fix::new(server)).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let authority = req.uri().authority().map(|a| a.to_string());
            let path = req.uri().path().to_owned();
            let resp = axum::http::Response::builder()
                .status(200)
                .body(())
                .unwrap();
            respond.send_response(resp, true).unwrap();
            // Drive the connection until the client goes away.
            while let Some(r) = conn.accept().await {
                if r.is_err() {
                    break;
                }
            }
            (authority, path)
        });

        let mut enc = loona_hpack::Encoder::new();
        let block = encode(&mut enc, &request_headers("http://127.0.0.1:2379"));
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        hello.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        client.write_all(&hello).await.unwrap();

        // Read the server's frames until it answers stream 1, one way or the other.
        let mut got = Vec::new();
        let mut dec = loona_hpack::Decoder::new();
        let answer = loop {
            let mut chunk = [0u8; 4096];
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut chunk))
                    .await
                    .expect("server answers within 10 s")
                    .unwrap();
            assert!(n > 0, "server closed without answering");
            got.extend_from_slice(&chunk[..n]);
            let mut b = &got[..];
            let mut found = None;
            while let Some(h) = FrameHeader::parse(b) {
                let end = FRAME_HEADER_BYTES + h.len;
                if b.len() < end {
                    break;
                }
                let payload = &b[FRAME_HEADER_BYTES..end];
                match h.kind {
                    HEADERS if h.stream == 1 => found = Some(Ok(decode(&mut dec, payload))),
                    0x3 if h.stream == 1 => found = Some(Err(payload.to_vec())),
                    0x7 => found = Some(Err(payload.to_vec())),
                    0x4 if h.flags & 0x1 == 0 => {
                        client.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
                    }
                    _ => {}
                }
                b = &b[end..];
            }
            let used = got.len() - b.len();
            got.drain(..used);
            if let Some(a) = found {
                break a;
            }
        };
        let headers = answer.expect("stream 1 reset: the authority was not repaired");
        assert!(
            headers.contains(&(":status".into(), "200".into())),
            "{headers:?}"
        );
        drop(client);
        let (authority, path) = srv.await.unwrap();
        assert_eq!(authority.as_deref(), Some("127.0.0.1:2379"));
        assert_eq!(path, "/etcdserverpb.Maintenance/Status");
    }

    #[tokio::test]
    async fn connect_info_is_the_inner_connections() {
        use tonic::transport::server::Connected;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let fixed = H2Fix::new(accepted);
        assert_eq!(
            fixed.connect_info().remote_addr(),
            Some(client.local_addr().unwrap())
        );
    }
}
