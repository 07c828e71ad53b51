//! The KV service's unary calls at the HTTP/2 level, on the direct path that answers them
//! without tonic's router (node/src/api/grpc_unary.rs): well-formed calls are answered as
//! gRPC answers them, and every malformed body gets tonic's own status for it, with the
//! member serving on.

use bytes::{BufMut, Bytes, BytesMut};
use etch_tests::{Node, rt};
use etch_tools::pb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use prost::Message;
use tonic::codegen::http;

/// What a call answered: the HTTP status, the response's data, the gRPC code and message
/// (from the trailers, or the headers of a trailers-only answer).
struct Answer {
    http: u16,
    content_type: Option<String>,
    data: Bytes,
    code: u32,
    message: String,
}

/// One POST of `body` to `path` on a fresh HTTP/2 connection to `addr`, with `headers` on
/// top of gRPC's.
async fn call(addr: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut send) = client
        .send_request(req.body(()).expect("request"), false)
        .expect("send");
    send.send_data(body, true).expect("body");
    let resp = resp.await.expect("response");
    let http = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let mut grpc = status_of(resp.headers());
    let mut body = resp.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("capacity");
        data.extend_from_slice(&chunk);
    }
    if let Some(t) = body.trailers().await.expect("trailers") {
        grpc = status_of(&t).or(grpc);
    }
    driver.abort();
    let (code, message) = grpc.expect("a grpc-status in the headers or trailers");
    Answer {
        http,
        content_type,
        data: data.freeze(),
        code,
        message,
    }
}

/// `grpc-status` and the percent-decoded `grpc-message` of `h`, if it has a status.
fn status_of(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let raw = h
        .get("grpc-message")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Some((code, String::from_utf8(out).expect("utf-8")))
}

/// `msg` framed as one gRPC message with compressed flag `flag`.
fn framed(flag: u8, msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(flag);
    b.put_u32(msg.len() as u32);
    b.extend_from_slice(msg);
    b.freeze()
}

/// The message of a successful answer's data.
fn message<M: Message + Default>(a: &Answer) -> M {
    assert_eq!((a.http, a.code), (200, 0), "{}", a.message);
    assert_eq!(a.content_type.as_deref(), Some("application/grpc"));
    assert_eq!(a.data[0], 0, "uncompressed");
    let len = u32::from_be_bytes(a.data[1..5].try_into().unwrap()) as usize;
    assert_eq!(a.data.len(), 5 + len, "one message");
    M::decode(&a.data[5..]).expect("decodes")
}

#[test]
fn kv_unary_calls_answer_as_grpc_and_refuse_malformed_bodies_as_tonic_does() {
    let dir = tempfile::tempdir().unwrap();
    // Receive limit: 1024 + 512 KiB of headroom (GRPC_OVERHEAD_BYTES) = 525,312 bytes.
    let node = Node::start(dir.path(), &["--max-request-bytes", "1024"]);
    let addr = node.grpc.clone();
    rt().block_on(async {
        let put = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        let a = call(&addr, "/etcdserverpb.KV/Put", &[], framed(0, &put.encode_to_vec())).await;
        let written: PutResponse = message(&a);
        let rev = written.header.expect("header").revision;
        assert!(rev > 1);

        // `grpc-encoding: identity` is no compression: still served.
        let range = RangeRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        let a = call(
            &addr,
            "/etcdserverpb.KV/Range",
            &[("grpc-encoding", "identity")],
            framed(0, &range.encode_to_vec()),
        )
        .await;
        let got: RangeResponse = message(&a);
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(got.kvs[0].value.as_ref(), b"v");
        assert_eq!(got.kvs[0].mod_revision, rev);

        // The message in pieces: a header split from its body still reads as one message.
        let whole = framed(0, &range.encode_to_vec());
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/etcdserverpb.KV/Range"))
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        send.send_data(whole.slice(..3), false).unwrap();
        send.send_data(whole.slice(3..7), false).unwrap();
        send.send_data(whole.slice(7..), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut data = BytesMut::new();
        while let Some(c) = body.data().await {
            data.extend_from_slice(&c.unwrap());
        }
        let t = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(status_of(&t).map(|s| s.0), Some(0));
        let got = RangeResponse::decode(&data[5..]).unwrap();
        assert_eq!(got.kvs.len(), 1);
        driver.abort();

        // Malformed bodies: tonic's statuses and messages for each.
        let cases: Vec<(&str, Bytes, u32, String)> = vec![
            (
                "a compressed message without grpc-encoding",
                framed(1, &put.encode_to_vec()),
                13,
                "protocol error: received message with compressed-flag but no grpc-encoding was specified".into(),
            ),
            (
                "an unknown compressed flag",
                framed(7, &put.encode_to_vec()),
                13,
                "protocol error: received message with invalid compression flag: 7 (valid flags are 0 and 1), while sending request".into(),
            ),
            (
                "a message over the receive limit",
                {
                    let mut b = BytesMut::new();
                    b.put_u8(0);
                    b.put_u32(600_000);
                    b.freeze()
                },
                11,
                "Error, decoded message length too large: found 600000 bytes, the limit is: 525312 bytes".into(),
            ),
            ("no message", Bytes::new(), 13, "Missing request message.".into()),
            (
                "a message cut short",
                {
                    let mut b = BytesMut::new();
                    b.put_u8(0);
                    b.put_u32(10);
                    b.extend_from_slice(b"abc");
                    b.freeze()
                },
                13,
                "Unexpected EOF decoding stream.".into(),
            ),
            (
                "a header cut short",
                Bytes::from_static(&[0, 0, 0]),
                13,
                "Unexpected EOF decoding stream.".into(),
            ),
            (
                "bytes that are no PutRequest",
                framed(0, &[0xff, 0xff, 0xff]),
                13,
                String::new(),
            ),
        ];
        for (what, body, code, msg) in cases {
            let a = call(&addr, "/etcdserverpb.KV/Put", &[], body).await;
            assert_eq!((a.http, a.code), (200, code), "{what}: {}", a.message);
            if msg.is_empty() {
                assert!(
                    a.message.starts_with("failed to decode Protobuf message"),
                    "{what}: {}",
                    a.message
                );
            } else {
                assert_eq!(a.message, msg, "{what}");
            }
        }

        // Over --max-request-bytes, under the receive limit: etcd's own error.
        let big = PutRequest {
            key: Bytes::from_static(b"big"),
            value: Bytes::from(vec![b'x'; 2000]),
            ..Default::default()
        };
        let a = call(&addr, "/etcdserverpb.KV/Put", &[], framed(0, &big.encode_to_vec())).await;
        assert_eq!(
            (a.code, a.message.as_str()),
            (3, "etcdserver: request is too large")
        );

        // A compressed call is left to tonic's router, which has no gzip: UNIMPLEMENTED.
        let a = call(
            &addr,
            "/etcdserverpb.KV/Put",
            &[("grpc-encoding", "gzip")],
            framed(1, b"whatever"),
        )
        .await;
        assert_eq!(a.code, 12, "{}", a.message);

        // Nothing malformed was written, and the member serves on.
        let a = call(&addr, "/etcdserverpb.KV/Range", &[], framed(0, &range.encode_to_vec())).await;
        let got: RangeResponse = message(&a);
        assert_eq!(got.kvs[0].mod_revision, rev);
        assert_eq!(got.header.expect("header").revision, rev);
    });
}
