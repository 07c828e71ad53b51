//! The KV service's unary calls at the HTTP/2 level, on the direct path that answers them
//! without tonic's router (node/src/api/grpc_unary.rs): read-only calls and malformed bodies
//! are sent once on the direct path and once with a `content-type` the direct path leaves to
//! tonic's router, and both must answer alike (tonic's own statuses for malformed bodies);
//! writes, a message split over DATA frames and a compressed call are checked on their own;
//! the member serves on throughout. With auth on, the token is read from the headers or the
//! request trailers alike on both paths, and after a Put the client cancels partway through
//! its message, the connection serves the next one.

use bytes::{BufMut, Bytes, BytesMut};
use etch_tests::{Node, rt};
use etch_tools::pb::{
    AuthenticateRequest, AuthenticateResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    compare, request_op,
};
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
/// top of gRPC's (`content-type: application/grpc` unless `headers` has another).
async fn call(addr: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    call_with_trailers(addr, path, headers, body, None).await
}

/// [`call`], ending the request with `trailers` (if any) instead of with its body.
async fn call_with_trailers(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    trailers: Option<http::HeaderMap>,
) -> Answer {
    call_in_frames(addr, path, headers, &[body], trailers).await
}

/// [`call_with_trailers`], the body sent as one DATA frame per element of `frames`.
async fn call_in_frames(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    frames: &[Bytes],
    trailers: Option<http::HeaderMap>,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("te", "trailers");
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        req = req.header("content-type", "application/grpc");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut send) = client
        .send_request(req.body(()).expect("request"), false)
        .expect("send");
    for (i, f) in frames.iter().enumerate() {
        let last = i + 1 == frames.len() && trailers.is_none();
        send.send_data(f.clone(), last).expect("body");
    }
    if let Some(t) = trailers {
        send.send_trailers(t).expect("trailers");
    }
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

/// `req` to `path` on both paths ([`same_on_both_paths`]), answered successfully: the answer's
/// message.
async fn ok_on_both_paths<M: Message + Default>(
    addr: &str,
    what: &str,
    path: &str,
    req: &impl Message,
) -> M {
    message(&same_on_both_paths(addr, what, path, framed(0, &req.encode_to_vec())).await)
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

/// `content-type` of a call the direct path leaves to tonic's router (which serves it all the
/// same: tonic does not check the parameter), to compare the two paths.
const ROUTED: &str = "application/grpc; charset=utf-8";

/// `body` to `path` once on the direct path and once through tonic's router; both must answer
/// the same (`what` names the case); returns the direct path's answer.
async fn same_on_both_paths(addr: &str, what: &str, path: &str, body: Bytes) -> Answer {
    alike(addr, what, path, &[], body, None).await
}

/// [`same_on_both_paths`] with `headers` on top of gRPC's, the request ended by `trailers` (if
/// any).
async fn alike(
    addr: &str,
    what: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    trailers: Option<http::HeaderMap>,
) -> Answer {
    let direct = call_with_trailers(addr, path, headers, body.clone(), trailers.clone()).await;
    let mut routed_headers = vec![("content-type", ROUTED)];
    routed_headers.extend_from_slice(headers);
    let routed = call_with_trailers(addr, path, &routed_headers, body, trailers).await;
    assert_eq!(
        (direct.http, direct.code, &direct.message, &direct.data),
        (routed.http, routed.code, &routed.message, &routed.data),
        "{what}: the direct path and tonic's router answer alike"
    );
    assert_eq!(direct.content_type, routed.content_type, "{what}");
    direct
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

        // Reads and writes that change nothing answer byte for byte alike on both paths.
        let range = RangeRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        let got: RangeResponse =
            ok_on_both_paths(&addr, "range", "/etcdserverpb.KV/Range", &range).await;
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(got.kvs[0].value.as_ref(), b"v");
        assert_eq!(got.kvs[0].mod_revision, rev);
        let missing = DeleteRangeRequest {
            key: Bytes::from_static(b"absent"),
            ..Default::default()
        };
        let deleted: DeleteRangeResponse = ok_on_both_paths(
            &addr,
            "delete of a missing key",
            "/etcdserverpb.KV/DeleteRange",
            &missing,
        )
        .await;
        assert_eq!(deleted.deleted, 0);
        let failing = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"k"),
                target: compare::CompareTarget::Value as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::Value(Bytes::from_static(b"other"))),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put.clone())),
            }],
            ..Default::default()
        };
        let txn: TxnResponse =
            ok_on_both_paths(&addr, "txn whose compare fails", "/etcdserverpb.KV/Txn", &failing)
                .await;
        assert!(!txn.succeeded);
        // `application/grpc+proto`, and `grpc-encoding: identity` (no compression), are served.
        for h in [("content-type", "application/grpc+proto"), ("grpc-encoding", "identity")] {
            let a = call(&addr, "/etcdserverpb.KV/Range", &[h], framed(0, &range.encode_to_vec())).await;
            let got: RangeResponse = message(&a);
            assert_eq!(got.kvs[0].mod_revision, rev, "{h:?}");
        }

        // A message split over three DATA frames reads as one message.
        let whole = framed(0, &range.encode_to_vec());
        let parts = [whole.slice(..3), whole.slice(3..7), whole.slice(7..)];
        let a = call_in_frames(&addr, "/etcdserverpb.KV/Range", &[], &parts, None).await;
        let got: RangeResponse = message(&a);
        assert_eq!(got.kvs.len(), 1);

        // Malformed bodies: tonic's status and message for each, on both paths.
        let header_only = |flag: u8, len: u32| {
            let mut b = BytesMut::new();
            b.put_u8(flag);
            b.put_u32(len);
            b
        };
        let then = |a: Bytes, b: &[u8]| {
            let mut v = BytesMut::from(&a[..]);
            v.extend_from_slice(b);
            v.freeze()
        };
        let good = framed(0, &range.encode_to_vec());
        let cases: Vec<(&str, Bytes, u32, &str)> = vec![
            (
                "a compressed message without grpc-encoding",
                framed(1, &range.encode_to_vec()),
                13,
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ),
            (
                "an unknown compressed flag",
                framed(7, &range.encode_to_vec()),
                13,
                "protocol error: received message with invalid compression flag: 7 (valid flags are 0 and 1), while sending request",
            ),
            (
                "a message over the receive limit",
                header_only(0, 600_000).freeze(),
                11,
                "Error, decoded message length too large: found 600000 bytes, the limit is: 525312 bytes",
            ),
            ("no message", Bytes::new(), 13, "Missing request message."),
            (
                "a message cut short",
                then(header_only(0, 10).freeze(), b"abc"),
                13,
                "Unexpected EOF decoding stream.",
            ),
            (
                "a header cut short",
                Bytes::from_static(&[0, 0, 0]),
                13,
                "Unexpected EOF decoding stream.",
            ),
            ("bytes that are no RangeRequest", framed(0, &[0xff, 0xff, 0xff]), 13, ""),
            (
                "a message, then one cut short",
                then(good.clone(), &[0, 0, 0]),
                13,
                "Unexpected EOF decoding stream.",
            ),
            (
                "a message, then one with an unknown flag",
                then(good.clone(), &framed(9, b"")),
                13,
                "protocol error: received message with invalid compression flag: 9 (valid flags are 0 and 1), while sending request",
            ),
            (
                "a message, then bytes that are no RangeRequest",
                then(good.clone(), &framed(0, &[0xff, 0xff, 0xff])),
                13,
                "",
            ),
            ("two messages", then(good.clone(), &good), 0, ""),
        ];
        for (what, body, code, msg) in cases {
            let a = same_on_both_paths(&addr, what, "/etcdserverpb.KV/Range", body).await;
            assert_eq!((a.http, a.code), (200, code), "{what}: {}", a.message);
            if code == 0 {
                let got: RangeResponse = message(&a);
                assert_eq!(got.kvs[0].mod_revision, rev, "{what}");
            } else if msg.is_empty() {
                assert!(
                    a.message.starts_with("failed to decode Protobuf message"),
                    "{what}: {}",
                    a.message
                );
            } else {
                assert_eq!(a.message, msg, "{what}");
            }
        }
        // Request trailers end the body: what follows the message is dropped on both paths.
        let mut t = http::HeaderMap::new();
        t.insert("x-trailer", http::HeaderValue::from_static("1"));
        let body = then(good.clone(), &[0, 0]);
        let what = "a message, then part of one, then trailers";
        let direct = alike(&addr, what, "/etcdserverpb.KV/Range", &[], body, Some(t)).await;
        let got: RangeResponse = message(&direct);
        assert_eq!(got.kvs[0].mod_revision, rev);
        // A Put that fails to read is not applied.
        let a = call(&addr, "/etcdserverpb.KV/Put", &[], then(framed(0, &put.encode_to_vec()), &[0])).await;
        assert_eq!(a.code, 13, "{}", a.message);

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

#[test]
fn with_auth_on_the_direct_path_reads_the_token_as_tonic_does_and_serves_on_after_a_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let addr = node.grpc.clone();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["put", "k", "v"],
        &["auth", "enable"],
    ] {
        let o = etch_tests::etcdctl(&addr, args, "");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    rt().block_on(async {
        let auth = AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        };
        let a = call(
            &addr,
            "/etcdserverpb.Auth/Authenticate",
            &[],
            framed(0, &auth.encode_to_vec()),
        )
        .await;
        let token = message::<AuthenticateResponse>(&a).token;
        assert!(!token.is_empty());
        let range = framed(
            0,
            &RangeRequest {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let path = "/etcdserverpb.KV/Range";

        // The token in the headers, as clients send it.
        let a = alike(
            &addr,
            "token in the headers",
            path,
            &[("token", &token)],
            range.clone(),
            None,
        )
        .await;
        let got: RangeResponse = message(&a);
        assert_eq!(got.kvs[0].value.as_ref(), b"v");
        // In the request's trailers: tonic merges them into the call's metadata, and so does
        // the direct path.
        let mut t = http::HeaderMap::new();
        t.insert("token", http::HeaderValue::from_str(&token).unwrap());
        let a = alike(
            &addr,
            "token in the trailers",
            path,
            &[],
            range.clone(),
            Some(t),
        )
        .await;
        let got: RangeResponse = message(&a);
        assert_eq!(got.kvs[0].value.as_ref(), b"v");
        // A trailer replaces a header of the same name, on both paths.
        let mut t = http::HeaderMap::new();
        t.insert("token", http::HeaderValue::from_static("not-a-token"));
        let a = alike(
            &addr,
            "a bad token in the trailers",
            path,
            &[("token", &token)],
            range.clone(),
            Some(t),
        )
        .await;
        assert_eq!(
            (a.code, a.message.as_str()),
            (16, "etcdserver: invalid auth token")
        );
        // No token, or a bad one: etcd's errors, alike.
        let a = alike(&addr, "no token", path, &[], range.clone(), None).await;
        assert_eq!(
            (a.code, a.message.as_str()),
            (3, "etcdserver: user name is empty")
        );
        let a = alike(
            &addr,
            "a bad token",
            path,
            &[("token", "not-a-token")],
            range.clone(),
            None,
        )
        .await;
        assert_eq!(
            (a.code, a.message.as_str()),
            (16, "etcdserver: invalid auth token")
        );

        // A Put the client cancels (RST_STREAM) partway through its message writes nothing,
        // and the next Put on the same connection is answered and applied. (A whole message
        // followed by a cancel is left out: tonic reads it as a complete request, and whether
        // it is applied depends on whether the call proposed it before hyper saw the cancel.)
        let cancelled = PutRequest {
            key: Bytes::from_static(b"cancelled"),
            value: Bytes::from(vec![b'x'; 100]),
            ..Default::default()
        };
        let after = PutRequest {
            key: Bytes::from_static(b"after"),
            value: Bytes::from_static(b"1"),
            ..Default::default()
        };
        for content_type in ["application/grpc", ROUTED] {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            let request = || {
                http::Request::builder()
                    .method("POST")
                    .uri(format!("http://{addr}/etcdserverpb.KV/Put"))
                    .header("te", "trailers")
                    .header("content-type", content_type)
                    .header("token", &token)
                    .body(())
                    .expect("request")
            };
            let mut client = client.ready().await.expect("ready");
            let (resp, mut send) = client.send_request(request(), false).expect("send");
            let whole = framed(0, &cancelled.encode_to_vec());
            send.send_data(whole.slice(..whole.len() / 2), false)
                .expect("half");
            send.send_reset(h2::Reason::CANCEL);
            assert!(
                resp.await.is_err(),
                "{content_type}: a cancelled call has no answer"
            );
            let mut client = client.ready().await.expect("ready");
            let (resp, mut send) = client.send_request(request(), false).expect("send");
            send.send_data(framed(0, &after.encode_to_vec()), true)
                .expect("body");
            let resp = resp.await.expect("response");
            assert_eq!(resp.status(), 200, "{content_type}");
            let mut body = resp.into_body();
            while let Some(chunk) = body.data().await {
                chunk.expect("data");
            }
            let t = body.trailers().await.expect("trailers").expect("trailers");
            assert_eq!(status_of(&t).map(|(c, _)| c), Some(0), "{content_type}");
            driver.abort();
        }
        let a = call(
            &addr,
            path,
            &[("token", &token)],
            framed(
                0,
                &RangeRequest {
                    key: Bytes::from_static(b"a"),
                    range_end: Bytes::from_static(b"d"),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        )
        .await;
        let got: RangeResponse = message(&a);
        let keys: Vec<&[u8]> = got.kvs.iter().map(|kv| kv.key.as_ref()).collect();
        assert_eq!(
            keys,
            vec![&b"after"[..]],
            "the cancelled Puts wrote nothing"
        );
        assert_eq!(
            got.kvs[0].version, 2,
            "both Puts after a cancelled one were applied"
        );
    });
}
