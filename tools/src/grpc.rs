//! An etcd v3 gRPC client (tonic) with the calls etch-bench needs, so the same load generator
//! drives etch (either protocol) and etcd. Errors are [`ClientError::Status`] with the server's
//! code and message, as from the native [`crate::Client`].

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use etch_protocol::Code;
use etch_protocol::etcdserverpb::*;

use crate::ClientError;

/// Generated tonic clients.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

use generated::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};

fn status(s: tonic::Status) -> ClientError {
    ClientError::Status {
        code: Code::from_u32(s.code() as u32),
        message: s.message().to_owned(),
    }
}

pub use crate::tls::TlsFiles;

/// One HTTP/2 connection to an etcd-API endpoint (`host:port` or `http://host:port`). Cheap
/// to clone; clones share the connection.
#[derive(Clone)]
pub struct GrpcClient {
    kv: KvClient<Ch>,
    lease: LeaseClient<Ch>,
    watch: WatchClient<Ch>,
    maintenance: MaintenanceClient<Ch>,
}

/// A channel whose calls carry the auth token (metadata `token`, as etcd's clients send it).
type Ch = tonic::service::interceptor::InterceptedService<Channel, Token>;

/// Adds the token, when there is one, to every call.
#[derive(Clone)]
struct Token(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut().insert("token", t.clone());
        }
        Ok(r)
    }
}

impl GrpcClient {
    /// Connects (within 5 s).
    ///
    /// # Errors
    /// [`ClientError::Io`] when the endpoint is invalid or unreachable.
    pub async fn connect(endpoint: &str) -> Result<GrpcClient, ClientError> {
        GrpcClient::connect_tls(endpoint, &TlsFiles::default()).await
    }

    /// Connects over TLS when `tls` has files (`https://`), in the clear otherwise.
    ///
    /// # Errors
    /// [`ClientError::Io`] when the endpoint is invalid or unreachable, a TLS file is
    /// unreadable, or the handshake fails (e.g. a server certificate from an untrusted CA).
    pub async fn connect_tls(endpoint: &str, tls: &TlsFiles) -> Result<GrpcClient, ClientError> {
        GrpcClient::connect_as(endpoint, tls, None).await
    }

    /// [`GrpcClient::connect_tls`], then Auth.Authenticate as `user` (name, password) when
    /// given: every call then carries the token.
    ///
    /// # Errors
    /// As [`GrpcClient::connect_tls`]; the server's authentication errors.
    pub async fn connect_as(
        endpoint: &str,
        tls: &TlsFiles,
        user: Option<(&str, &str)>,
    ) -> Result<GrpcClient, ClientError> {
        let hostport = endpoint
            .split("://")
            .last()
            .unwrap_or(endpoint)
            .trim_end_matches('/');
        let scheme = if tls.is_set() { "https" } else { "http" };
        let url = format!("{scheme}://{hostport}");
        let io = |e: &dyn std::fmt::Display| ClientError::Io(std::io::Error::other(e.to_string()));
        let mut ep = Channel::from_shared(url)
            .map_err(|e| io(&e))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if tls.is_set() {
            let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
            ep = ep.tls_config(tls.tonic(host)?).map_err(|e| io(&e))?;
        }
        let ch = ep.connect().await.map_err(|e| {
            // tonic's Display hides the cause (e.g. the TLS error): show the chain.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            io(&msg)
        })?;
        let mut token = Token(None);
        if let Some((name, password)) = user {
            let r = AuthClient::new(ch.clone())
                .authenticate(AuthenticateRequest {
                    name: name.to_owned(),
                    password: password.to_owned(),
                })
                .await
                .map_err(status)?
                .into_inner();
            token.0 = Some(r.token.parse().map_err(|e| io(&e))?);
        }
        Ok(GrpcClient {
            kv: KvClient::with_interceptor(ch.clone(), token.clone()),
            lease: LeaseClient::with_interceptor(ch.clone(), token.clone()),
            watch: WatchClient::with_interceptor(ch.clone(), token.clone()),
            maintenance: MaintenanceClient::with_interceptor(ch, token),
        })
    }

    /// KV.Put.
    ///
    /// # Errors
    /// The server's status.
    pub async fn put(&self, r: PutRequest) -> Result<PutResponse, ClientError> {
        Ok(self.kv.clone().put(r).await.map_err(status)?.into_inner())
    }

    /// KV.Range.
    ///
    /// # Errors
    /// The server's status.
    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse, ClientError> {
        Ok(self.kv.clone().range(r).await.map_err(status)?.into_inner())
    }

    /// KV.Txn.
    ///
    /// # Errors
    /// The server's status.
    pub async fn txn(&self, r: TxnRequest) -> Result<TxnResponse, ClientError> {
        Ok(self.kv.clone().txn(r).await.map_err(status)?.into_inner())
    }

    /// KV.Compact.
    ///
    /// # Errors
    /// The server's status.
    pub async fn compact(&self, r: CompactionRequest) -> Result<CompactionResponse, ClientError> {
        Ok(self
            .kv
            .clone()
            .compact(r)
            .await
            .map_err(status)?
            .into_inner())
    }

    /// Lease.LeaseGrant.
    ///
    /// # Errors
    /// The server's status.
    pub async fn lease_grant(
        &self,
        r: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, ClientError> {
        Ok(self
            .lease
            .clone()
            .lease_grant(r)
            .await
            .map_err(status)?
            .into_inner())
    }

    /// Maintenance.HashKV: the hash of the MVCC keyspace up to `revision` (0: current).
    ///
    /// # Errors
    /// The server's status (e.g. a compacted or future revision).
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse, ClientError> {
        Ok(self
            .maintenance
            .clone()
            .hash_kv(HashKvRequest { revision })
            .await
            .map_err(status)?
            .into_inner())
    }

    /// Maintenance.Status.
    ///
    /// # Errors
    /// The server's status.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        Ok(self
            .maintenance
            .clone()
            .status(StatusRequest {})
            .await
            .map_err(status)?
            .into_inner())
    }

    /// Opens a LeaseKeepAlive stream. The call runs in a task of its own and its responses are
    /// awaited with the first renewal: etcd (grpc-go) sends its response headers only after
    /// the first message, so waiting for them before sending would deadlock.
    ///
    /// # Errors
    /// None yet; the call's errors come with the first renewal.
    pub async fn keep_alive_stream(&self) -> Result<KeepAliveStream, ClientError> {
        let (tx, rx) = mpsc::channel(16);
        let mut lease = self.lease.clone();
        let call = tokio::spawn(async move {
            lease
                .lease_keep_alive(ReceiverStream::new(rx))
                .await
                .map(tonic::Response::into_inner)
        });
        Ok(KeepAliveStream {
            tx,
            rx: Lazy::Pending(call),
        })
    }

    /// Opens a Watch stream (started by the first request, as [`GrpcClient::keep_alive_stream`]).
    ///
    /// # Errors
    /// None yet; the call's errors come with the first response.
    pub async fn watch_stream(&self) -> Result<GrpcWatchStream, ClientError> {
        let (tx, rx) = mpsc::channel(64);
        let mut watch = self.watch.clone();
        let call = tokio::spawn(async move {
            watch
                .watch(ReceiverStream::new(rx))
                .await
                .map(tonic::Response::into_inner)
        });
        Ok(GrpcWatchStream {
            tx,
            rx: Lazy::Pending(call),
        })
    }
}

type Call<T> = tokio::task::JoinHandle<Result<tonic::Streaming<T>, tonic::Status>>;

/// A streaming call's responses, once the call has started.
enum Lazy<T> {
    Pending(Call<T>),
    Open(Box<tonic::Streaming<T>>),
    Failed,
}

impl<T> Lazy<T> {
    async fn stream(&mut self) -> Result<&mut tonic::Streaming<T>, ClientError> {
        if let Lazy::Pending(call) = self {
            *self = match call.await {
                Ok(Ok(s)) => Lazy::Open(Box::new(s)),
                Ok(Err(e)) => {
                    *self = Lazy::Failed;
                    return Err(status(e));
                }
                Err(_) => {
                    *self = Lazy::Failed;
                    return Err(ClientError::Closed);
                }
            };
        }
        match self {
            Lazy::Open(s) => Ok(s),
            _ => Err(ClientError::Closed),
        }
    }
}

/// A LeaseKeepAlive stream: one renewal at a time.
pub struct KeepAliveStream {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: Lazy<LeaseKeepAliveResponse>,
}

impl KeepAliveStream {
    /// Renews lease `id` and waits for the answer.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the stream ended; the server's status.
    pub async fn keep_alive(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, ClientError> {
        self.tx
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| ClientError::Closed)?;
        self.rx
            .stream()
            .await?
            .message()
            .await
            .map_err(status)?
            .ok_or(ClientError::Closed)
    }
}

/// A Watch stream.
pub struct GrpcWatchStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Lazy<WatchResponse>,
}

impl GrpcWatchStream {
    /// Creates a watch; its `created` response arrives on [`GrpcWatchStream::next`].
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn create(&self, req: WatchCreateRequest) -> Result<(), ClientError> {
        self.tx
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(req)),
            })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// The next response; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<WatchResponse> {
        self.rx.stream().await.ok()?.message().await.ok().flatten()
    }
}
