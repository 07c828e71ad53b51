//! The native protocol at the byte level: handshake, malformed frames, unknown bodies. Nothing
//! a client sends may panic the node or disturb other connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use etch_protocol::etchpb::{Frame, Hello, frame::Body};
use etch_protocol::{Code, PROTOCOL_VERSION, frame};
use etch_tests::{Node, rt};
use etch_tools::Client;
use etch_tools::pb::{PutRequest, RangeRequest};

fn raw(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn hello(s: &mut TcpStream) {
    let f = Frame {
        id: 0,
        body: Some(Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: "test".into(),
        })),
    };
    s.write_all(&frame::encode(&f)).unwrap();
    let r = read_frame(s).expect("hello response");
    assert!(matches!(r.body, Some(Body::HelloResponse(_))), "{r:?}");
}

/// Reads one frame; `None` when the server closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(frame::decode(&buf).expect("server frames decode"))
}

fn error_of(f: &Frame) -> (u64, Code, String) {
    match &f.body {
        Some(Body::Error(e)) => (f.id, Code::from_u32(e.code), e.message.clone()),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// Reads until the server closes, returning the frames it sent first.
fn drain(s: &mut TcpStream) -> Vec<Frame> {
    let mut v = Vec::new();
    while let Some(f) = read_frame(s) {
        v.push(f);
    }
    v
}

fn still_serves(addr: &str) {
    rt().block_on(async {
        let c = Client::connect(addr).await.unwrap();
        c.put(PutRequest {
            key: "alive".into(),
            value: "yes".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let r = c
            .range(RangeRequest {
                key: "alive".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(&r.kvs[0].value[..], b"yes");
    });
}

#[test]
fn malformed_frames_get_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    // A long-lived healthy connection shared across the abuse below.
    let healthy = rt();
    let client = healthy.block_on(Client::connect(&n.native)).unwrap();

    // 1. No Hello first.
    let mut s = raw(&n.native);
    s.write_all(&frame::encode(&Frame {
        id: 5,
        body: Some(Body::Status(Default::default())),
    }))
    .unwrap();
    let frames = drain(&mut s);
    let (_, code, msg) = error_of(&frames[0]);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("Hello"), "{msg}");

    // 2. Wrong protocol version.
    let mut s = raw(&n.native);
    let f = Frame {
        id: 0,
        body: Some(Body::Hello(Hello {
            protocol_version: 999,
            client: String::new(),
        })),
    };
    s.write_all(&frame::encode(&f)).unwrap();
    let (_, code, msg) = error_of(&drain(&mut s)[0]);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("999"), "{msg}");

    // 3. Oversized length prefix: refused before the server allocates anything.
    let mut s = raw(&n.native);
    hello(&mut s);
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    let (_, code, msg) = error_of(&drain(&mut s)[0]);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("frame"), "{msg}");

    // 4. Garbage protobuf.
    let mut s = raw(&n.native);
    hello(&mut s);
    s.write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let (_, code, _) = error_of(&drain(&mut s)[0]);
    assert_eq!(code, Code::InvalidArgument);

    // 5. Unknown body: an error for that id, and the connection keeps working.
    let mut s = raw(&n.native);
    hello(&mut s);
    // Field 1 (id) = 7, then field 1000 (unknown), length 0.
    s.write_all(&[0, 0, 0, 5, 0x08, 0x07, 0xc2, 0x3e, 0x00])
        .unwrap();
    let (id, code, _) = error_of(&read_frame(&mut s).unwrap());
    assert_eq!((id, code), (7, Code::Unimplemented));
    s.write_all(&frame::encode(&Frame {
        id: 8,
        body: Some(Body::Status(Default::default())),
    }))
    .unwrap();
    let r = read_frame(&mut s).unwrap();
    assert_eq!(r.id, 8);
    assert!(matches!(r.body, Some(Body::StatusResponse(_))));

    // 6. Truncated frame, then the client goes away.
    let mut s = raw(&n.native);
    hello(&mut s);
    s.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    drop(s);

    // 7. Random bytes straight away.
    let mut s = raw(&n.native);
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&noise);
    let _ = drain(&mut s);

    // The node is alive, the old connection works, new ones work.
    healthy.block_on(async {
        assert!(client.status().await.is_ok());
    });
    still_serves(&n.native);
    assert!(!n.log().contains("panicked"), "{}", n.log());
}

#[test]
fn many_requests_in_flight_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    rt().block_on(async {
        let c = Client::connect(&n.native).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..500 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.put(PutRequest {
                    key: format!("m{i:03}").into(),
                    value: "v".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .header
                .unwrap()
                .revision
            }));
        }
        let mut revs = Vec::new();
        for t in tasks {
            revs.push(t.await.unwrap());
        }
        revs.sort_unstable();
        revs.dedup();
        // Each put got its own revision: 2..=501.
        assert_eq!(revs.len(), 500);
        assert_eq!((revs[0], revs[499]), (2, 501));
    });
}
