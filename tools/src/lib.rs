//! etch tools: the native protocol client library used by `etchctl`, `etch-bench` and users'
//! programs, and an etcd gRPC client ([`GrpcClient`]) so `etch-bench` can drive etcd too.
//!
//! ```no_run
//! # async fn demo() -> Result<(), etch_tools::ClientError> {
//! let c = etch_tools::Client::connect("127.0.0.1:2378").await?;
//! c.put(etch_tools::pb::PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }).await?;
//! # Ok(()) }
//! ```

pub mod authcmd;
pub mod client;
pub mod grpc;
pub mod output;
pub mod snapshot;
pub mod tls;

pub use client::{Client, ClientError, ConnectOptions, WatchStream};
pub use grpc::GrpcClient;
pub use tls::TlsFiles;

/// The request and response messages (etcd's `etcdserverpb` and `mvccpb`).
pub mod pb {
    pub use etch_protocol::etcdserverpb::*;
    pub use etch_protocol::mvccpb::{Event, KeyValue};
}
