//! The native protocol client: one TCP connection, many requests in flight, matched by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use etch_protocol::etcdserverpb::watch_request::RequestUnion;
use etch_protocol::etcdserverpb::*;
use etch_protocol::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, StatusRequest, StatusResponse, TxnRequest,
    TxnResponse,
};
use etch_protocol::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use etch_protocol::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use etch_protocol::etchpb::{Frame, Hello, HelloResponse, frame::Body};
use etch_protocol::{Code, PROTOCOL_VERSION, frame};

/// Largest response frame the client accepts: 64 MiB (large ranges).
pub const MAX_RESPONSE_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// A failed call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting or talking to the server failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error: a gRPC code and etcd's message.
    #[error("{message}")]
    Status {
        /// The gRPC status code.
        code: Code,
        /// etcd's message, e.g. `etcdserver: mvcc: required revision has been compacted`.
        message: String,
    },
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// No answer within the timeout.
    #[error("context deadline exceeded")]
    Timeout,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;
type Streams = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<WatchResponse>>>>;

/// A connection to one etch member. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Bytes>,
    pending: Pending,
    streams: Streams,
    /// Set by the reader task when the connection is gone (before it fails the waiters).
    closed: Arc<std::sync::atomic::AtomicBool>,
    next_id: Arc<AtomicU64>,
    hello: HelloResponse,
    endpoint: String,
}

/// How to connect: TLS, the user to authenticate as, the dial timeout.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TLS files; TLS is used when any is set or the endpoint's scheme is `https://` or
    /// `tls://`.
    pub tls: crate::TlsFiles,
    /// `(name, password)`: authenticate right after the handshake; every request on the
    /// connection is then made as this user.
    pub user: Option<(String, String)>,
    /// Dial (and handshake) timeout.
    pub dial_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            tls: crate::TlsFiles::default(),
            user: None,
            dial_timeout: Duration::from_secs(5),
        }
    }
}

/// `host:port`, `tcp://host:port` or `http://host:port` -> `host:port`.
pub fn endpoint_addr(endpoint: &str) -> &str {
    let e = endpoint.trim();
    let e = e.split_once("://").map_or(e, |(_, rest)| rest);
    e.trim_end_matches('/')
}

impl Client {
    /// Connects to `endpoint` and performs the Hello handshake.
    ///
    /// # Errors
    /// Connection errors, or the server refusing the protocol version.
    pub async fn connect(endpoint: &str) -> Result<Client, ClientError> {
        Self::connect_timeout(endpoint, Duration::from_secs(5)).await
    }

    /// [`Client::connect`] with a dial timeout.
    ///
    /// # Errors
    /// As [`Client::connect`]; [`ClientError::Timeout`] when the dial takes longer.
    pub async fn connect_timeout(endpoint: &str, timeout: Duration) -> Result<Client, ClientError> {
        Self::connect_with(
            endpoint,
            &ConnectOptions {
                dial_timeout: timeout,
                ..Default::default()
            },
        )
        .await
    }

    /// Connects with `opts`: TLS (ALPN `etch`, the server name is the endpoint's host),
    /// then the Hello handshake, then Authenticate when a user is given.
    ///
    /// # Errors
    /// As [`Client::connect`]; TLS failures as [`ClientError::Io`]; the server's
    /// `authentication failed` status.
    pub async fn connect_with(
        endpoint: &str,
        opts: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let timeout = opts.dial_timeout;
        let addr = endpoint_addr(endpoint).to_owned();
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        stream.set_nodelay(true)?;
        let tls =
            opts.tls.is_set() || endpoint.starts_with("https://") || endpoint.starts_with("tls://");
        type Rd = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
        type Wr = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
        let (rd, wr): (Rd, Wr) = if tls {
            let cfg = opts.tls.rustls()?;
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| ClientError::Io(std::io::Error::other(format!("{host}: {e}"))))?;
            let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
            let s = tokio::time::timeout(timeout, conn.connect(name, stream))
                .await
                .map_err(|_| ClientError::Timeout)??;
            let (r, w) = tokio::io::split(s);
            (Box::new(r), Box::new(w))
        } else {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        };
        let mut reader = FramedRead::new(rd, frame::codec(MAX_RESPONSE_FRAME_BYTES));
        let mut writer = FramedWrite::new(wr, frame::codec(usize::MAX));
        let hello = Frame {
            id: 0,
            body: Some(Body::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client: format!("etch-tools/{}", env!("CARGO_PKG_VERSION")),
            })),
        };
        writer.send(frame::encode_payload(&hello)).await?;
        let first = tokio::time::timeout(timeout, reader.next())
            .await
            .map_err(|_| ClientError::Timeout)?;
        let resp = match first {
            None => return Err(ClientError::Closed),
            Some(r) => frame::decode(&r?).map_err(|e| ClientError::Protocol(e.to_string()))?,
        };
        let hello = match resp.body {
            Some(Body::HelloResponse(h)) => h,
            Some(Body::Error(e)) => {
                return Err(ClientError::Status {
                    code: Code::from_u32(e.code),
                    message: e.message,
                });
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected HelloResponse, got {other:?}"
                )));
            }
        };

        let pending: Pending = Arc::default();
        let streams: Streams = Arc::default();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if writer.feed(b).await.is_err() {
                    return;
                }
                while let Ok(b) = rx.try_recv() {
                    if writer.feed(b).await.is_err() {
                        return;
                    }
                }
                if SinkExt::<Bytes>::flush(&mut writer).await.is_err() {
                    return;
                }
            }
        });
        let (p, c, s) = (pending.clone(), closed.clone(), streams.clone());
        tokio::spawn(async move {
            while let Some(Ok(b)) = reader.next().await {
                let Ok(f) = frame::decode(&b) else { break };
                if f.id == 0 {
                    // A connection-level error: the server closes next.
                    continue;
                }
                if let Some(Body::WatchResponse(r)) = f.body {
                    let stream = s
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&f.id)
                        .cloned();
                    if let Some(stream) = stream {
                        let _ = stream.send(r);
                    }
                    continue;
                }
                let waiter = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&f.id);
                if let Some(w) = waiter {
                    let _ = w.send(f);
                }
            }
            // Closing: mark closed first, then fail every waiter (dropping the senders), so a
            // call registering after the clear sees the flag.
            c.store(true, Ordering::SeqCst);
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
            s.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        let c = Client {
            tx,
            pending,
            streams,
            closed,
            next_id: Arc::new(AtomicU64::new(1)),
            hello,
            endpoint: endpoint.to_owned(),
        };
        if let Some((name, password)) = &opts.user {
            c.authenticate(AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            })
            .await?;
        }
        Ok(c)
    }

    /// The endpoint this client connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's member ID (from the handshake).
    pub fn member_id(&self) -> u64 {
        self.hello.member_id
    }

    /// The server's cluster ID (from the handshake).
    pub fn cluster_id(&self) -> u64 {
        self.hello.cluster_id
    }

    /// Sends a raw frame body and returns the response body. Used by the typed calls below and
    /// by tests that send unusual frames.
    ///
    /// # Errors
    /// [`ClientError::Status`] when the server answers with an error frame;
    /// [`ClientError::Closed`] when the connection drops first.
    pub async fn call(&self, body: Body) -> Result<Body, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if self.closed.load(Ordering::SeqCst) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(ClientError::Closed);
        }
        let f = Frame {
            id,
            body: Some(body),
        };
        if self.tx.send(frame::encode_payload(&f)).await.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(ClientError::Closed);
        }
        let resp = rx.await.map_err(|_| ClientError::Closed)?;
        match resp.body {
            Some(Body::Error(e)) => Err(ClientError::Status {
                code: Code::from_u32(e.code),
                message: e.message,
            }),
            Some(b) => Ok(b),
            None => Err(ClientError::Protocol("empty response".into())),
        }
    }

    /// Authenticate: on success the connection speaks as this user from now on.
    ///
    /// # Errors
    /// `authentication failed, invalid user ID or password`, `authentication is not enabled`.
    pub async fn authenticate(
        &self,
        r: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, ClientError> {
        match self.call(Body::Authenticate(r)).await? {
            Body::AuthenticateResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// Range (Get).
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse, ClientError> {
        match self.call(Body::Range(r)).await? {
            Body::RangeResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// Put.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn put(&self, r: PutRequest) -> Result<PutResponse, ClientError> {
        match self.call(Body::Put(r)).await? {
            Body::PutResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// DeleteRange.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn delete_range(
        &self,
        r: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ClientError> {
        match self.call(Body::DeleteRange(r)).await? {
            Body::DeleteRangeResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// Txn.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn txn(&self, r: TxnRequest) -> Result<TxnResponse, ClientError> {
        match self.call(Body::Txn(r)).await? {
            Body::TxnResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// Compaction.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn compact(&self, r: CompactionRequest) -> Result<CompactionResponse, ClientError> {
        match self.call(Body::Compact(r)).await? {
            Body::CompactResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// LeaseGrant (ID 0: the server chooses).
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn lease_grant(
        &self,
        r: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, ClientError> {
        match self.call(Body::LeaseGrant(r)).await? {
            Body::LeaseGrantResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// LeaseRevoke.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn lease_revoke(
        &self,
        r: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, ClientError> {
        match self.call(Body::LeaseRevoke(r)).await? {
            Body::LeaseRevokeResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// One keep-alive (TTL 0 in the response: the lease is gone).
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn lease_keep_alive(
        &self,
        r: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, ClientError> {
        match self.call(Body::LeaseKeepAlive(r)).await? {
            Body::LeaseKeepAliveResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// LeaseTimeToLive.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn lease_time_to_live(
        &self,
        r: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ClientError> {
        match self.call(Body::LeaseTimeToLive(r)).await? {
            Body::LeaseTimeToLiveResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// LeaseLeases.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, ClientError> {
        match self.call(Body::LeaseLeases(LeaseLeasesRequest {})).await? {
            Body::LeaseLeasesResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }

    /// Status of the connected member.
    ///
    /// # Errors
    /// See [`Client::call`].
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        match self.call(Body::Status(StatusRequest {})).await? {
            Body::StatusResponse(x) => Ok(x),
            o => Err(unexpected(o)),
        }
    }
}

impl Client {
    /// Opens a watch stream on this connection (etcd's Watch RPC stream): create, cancel and
    /// progress requests go out on it, and its responses come back in order.
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the connection is gone.
    pub fn watch_stream(&self) -> Result<WatchStream, ClientError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ClientError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        Ok(WatchStream {
            id,
            client: self.clone(),
            rx,
        })
    }
}

/// One watch stream: many watches, responses in order. Dropping it leaves its watches on the
/// server until the connection closes; cancel them first if the connection lives on.
pub struct WatchStream {
    id: u64,
    client: Client,
    rx: mpsc::UnboundedReceiver<WatchResponse>,
}

impl WatchStream {
    async fn send(&self, r: RequestUnion) -> Result<(), ClientError> {
        let f = Frame {
            id: self.id,
            body: Some(Body::Watch(WatchRequest {
                request_union: Some(r),
            })),
        };
        self.client
            .tx
            .send(frame::encode_payload(&f))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Creates a watch (etcd `WatchCreateRequest`); its `created` response arrives on
    /// [`WatchStream::next`].
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn create(&self, req: WatchCreateRequest) -> Result<(), ClientError> {
        self.send(RequestUnion::CreateRequest(req)).await
    }

    /// Cancels watch `watch_id`.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn cancel(&self, watch_id: i64) -> Result<(), ClientError> {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await
    }

    /// Asks for a progress notification (answered with watch id -1).
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn request_progress(&self) -> Result<(), ClientError> {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await
    }

    /// The next response; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<WatchResponse> {
        self.rx.recv().await
    }
}

fn unexpected(b: Body) -> ClientError {
    ClientError::Protocol(format!("unexpected response {b:?}"))
}

pub use etch_protocol::prefix_end;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addr_takes_urls_and_host_ports() {
        assert_eq!(endpoint_addr("http://127.0.0.1:2379/"), "127.0.0.1:2379");
        assert_eq!(endpoint_addr("127.0.0.1:2378"), "127.0.0.1:2378");
    }
}

/// Typed calls of the Auth service (etcd `etcdserverpb.Auth`): each sends its request frame
/// and expects the matching response frame.
macro_rules! auth_calls {
    ($($(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty = $body:ident => $rbody:ident;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                ///
                /// # Errors
                /// See [`Client::call`]; etcd's auth errors (e.g. `etcdserver: permission denied`).
                pub async fn $name(&self, r: $req) -> Result<$resp, ClientError> {
                    match self.call(Body::$body(r)).await? {
                        Body::$rbody(x) => Ok(x),
                        o => Err(unexpected(o)),
                    }
                }
            )*
        }
    };
}

auth_calls! {
    /// AuthEnable (needs a `root` user with the `root` role).
    auth_enable(AuthEnableRequest) -> AuthEnableResponse = AuthEnable => AuthEnableResponse;
    /// AuthDisable (root).
    auth_disable(AuthDisableRequest) -> AuthDisableResponse = AuthDisable => AuthDisableResponse;
    /// AuthStatus.
    auth_status(AuthStatusRequest) -> AuthStatusResponse = AuthStatus => AuthStatusResponse;
    /// UserAdd.
    user_add(AuthUserAddRequest) -> AuthUserAddResponse = UserAdd => UserAddResponse;
    /// UserGet.
    user_get(AuthUserGetRequest) -> AuthUserGetResponse = UserGet => UserGetResponse;
    /// UserList.
    user_list(AuthUserListRequest) -> AuthUserListResponse = UserList => UserListResponse;
    /// UserDelete.
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse = UserDelete => UserDeleteResponse;
    /// UserChangePassword.
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse = UserChangePassword => UserChangePasswordResponse;
    /// UserGrantRole.
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse = UserGrantRole => UserGrantRoleResponse;
    /// UserRevokeRole.
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse = UserRevokeRole => UserRevokeRoleResponse;
    /// RoleAdd.
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse = RoleAdd => RoleAddResponse;
    /// RoleGet.
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse = RoleGet => RoleGetResponse;
    /// RoleList.
    role_list(AuthRoleListRequest) -> AuthRoleListResponse = RoleList => RoleListResponse;
    /// RoleDelete.
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse = RoleDelete => RoleDeleteResponse;
    /// RoleGrantPermission.
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse = RoleGrantPermission => RoleGrantPermissionResponse;
    /// RoleRevokePermission.
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse = RoleRevokePermission => RoleRevokePermissionResponse;
}
