//! The native protocol server (TCP, default port 2378), specified in `protocol/README.md`.
//!
//! A connection is turned into frames and nothing more here (mini-redis `connection.rs`):
//! the first frame must be a `Hello`; after it, every request frame is served concurrently and
//! answered with the same `id`, so many requests are in flight per connection. A frame that
//! is too long or does not decode ends the connection after an error frame; a frame with an
//! unknown body gets an error frame and the connection goes on. Nothing a client sends panics
//! the node.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::task::TaskTracker;

use etch_protocol::etchpb::{Error as ErrorFrame, Frame, HelloResponse, frame::Body};
use etch_protocol::{Code, PROTOCOL_VERSION, frame};

use std::collections::HashMap;

use etch_protocol::etcdserverpb::watch_request::RequestUnion;
use etch_protocol::etcdserverpb::{WatchRequest, WatchResponse};

use crate::actors::watch::{CloseConnection, StreamSink};
use crate::api::errors::status_of;
use crate::error::ApiError;
use crate::service::{AuthInfo, Service};

/// Who a connection speaks for: the token of its last successful Authenticate, else the
/// Common Name of its verified TLS client certificate (etcd's order).
#[derive(Debug, Default)]
pub(crate) struct ConnIdentity {
    token: std::sync::Mutex<Option<String>>,
    cert_cn: Option<String>,
}

impl ConnIdentity {
    /// An identity from the TLS client certificate's Common Name, if any.
    pub(crate) fn new(cert_cn: Option<String>) -> ConnIdentity {
        ConnIdentity {
            token: std::sync::Mutex::default(),
            cert_cn,
        }
    }

    fn who(&self, svc: &Service) -> Result<AuthInfo, ApiError> {
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        svc.identify(token.as_deref(), self.cert_cn.as_deref())
    }

    fn set_token(&self, t: String) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }
}

/// Requests served at once per connection; more wait (backpressure on the client).
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// Frames queued for writing per connection.
const WRITE_QUEUE_FRAMES: usize = 1024;

/// Accepts connections on `listener` until `shutdown` turns true; each connection and each
/// request runs on `tracker`, so shutdown can wait for in-flight work. With `tls`, every
/// connection is TLS first (the client URLs' configuration, ALPN `etch`); a verified client
/// certificate's Common Name is the connection's user until it authenticates.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    max_frame_bytes: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    let mut stop = shutdown.clone();
    if let Some(cfg) = tls {
        let mut incoming =
            crate::tls::client::accept(crate::listener::Listener::Tcp(listener), cfg);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                c = incoming.recv() => match c {
                    Some(Ok(conn)) => {
                        let id = ConnIdentity::new(conn.identity().common_name.clone());
                        let t = tracker.clone();
                        tracker.spawn(connection(conn, id, service.clone(), max_frame_bytes, shutdown.clone(), t));
                    }
                    Some(Err(_)) => {}
                    None => return,
                }
            }
        }
    }
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%peer, "native connection");
                    let t = tracker.clone();
                    tracker.spawn(connection(stream, ConnIdentity::default(), service.clone(), max_frame_bytes, shutdown.clone(), t));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Resolves once shutdown is signalled (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn error_frame(id: u64, code: Code, message: impl Into<String>) -> Frame {
    Frame {
        id,
        body: Some(Body::Error(ErrorFrame {
            code: code as u32,
            message: message.into(),
        })),
    }
}

async fn connection<S>(
    stream: S,
    identity: ConnIdentity,
    service: Arc<Service>,
    max_frame_bytes: usize,
    mut shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    /// Counts the connection in `etch_native_connections` while it lives.
    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            metrics::gauge!(crate::metrics::NATIVE_CONNECTIONS).decrement(1.0);
        }
    }
    metrics::gauge!(crate::metrics::NATIVE_CONNECTIONS).increment(1.0);
    let _open = Open;
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = FramedRead::new(rd, frame::codec(max_frame_bytes));
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_FRAMES);
    let writer = tokio::spawn(async move {
        let mut w = FramedWrite::new(wr, frame::codec(usize::MAX));
        while let Some(b) = rx.recv().await {
            if w.feed(b).await.is_err() {
                return;
            }
            // Batch whatever else is ready into the same flush.
            while let Ok(b) = rx.try_recv() {
                if w.feed(b).await.is_err() {
                    return;
                }
            }
            if SinkExt::<Bytes>::flush(&mut w).await.is_err() {
                return;
            }
        }
    });
    let send = |tx: &mpsc::Sender<Bytes>, f: Frame| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(frame::encode_payload(&f)).await;
        }
    };

    // Handshake.
    let hello = match reader.next().await {
        Some(Ok(b)) => frame::decode(&b).ok(),
        _ => None,
    };
    match hello.and_then(|f| f.body) {
        Some(Body::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => {
            let st = service.state();
            send(
                &tx,
                Frame {
                    id: 0,
                    body: Some(Body::HelloResponse(HelloResponse {
                        protocol_version: PROTOCOL_VERSION,
                        cluster_id: st.cluster_id.0,
                        member_id: st.member_id.0,
                        server_version: env!("CARGO_PKG_VERSION").to_owned(),
                    })),
                },
            )
            .await;
        }
        Some(Body::Hello(h)) => {
            let msg = format!(
                "etch: unsupported protocol version {} (server speaks {PROTOCOL_VERSION})",
                h.protocol_version
            );
            send(&tx, error_frame(0, Code::FailedPrecondition, msg)).await;
            drop(tx);
            let _ = writer.await;
            return;
        }
        _ => {
            send(
                &tx,
                error_frame(
                    0,
                    Code::FailedPrecondition,
                    "etch: expected a Hello frame first",
                ),
            )
            .await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    }

    let identity = Arc::new(identity);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let conn_id = crate::api::next_connection_id();
    let mut watch_streams: HashMap<u64, StreamSink> = HashMap::new();
    loop {
        let next = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            n = reader.next() => n,
        };
        let payload = match next {
            None => break,
            Some(Err(e)) => {
                send(
                    &tx,
                    error_frame(0, Code::InvalidArgument, format!("etch: bad frame: {e}")),
                )
                .await;
                break;
            }
            Some(Ok(b)) => b,
        };
        let f = match frame::decode(&payload) {
            Ok(f) => f,
            Err(e) => {
                send(
                    &tx,
                    error_frame(0, Code::InvalidArgument, format!("etch: {e}")),
                )
                .await;
                break;
            }
        };
        if let Some(Body::Watch(req)) = f.body {
            // Watch requests are handled in order, here: a cancel must not overtake its create.
            let who = identity.who(&service);
            watch_request(&service, who, conn_id, f.id, req, &mut watch_streams, &tx).await;
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (svc, tx, identity) = (service.clone(), tx.clone(), identity.clone());
        tracker.spawn(async move {
            let resp = handle(&svc, &identity, f).await;
            let _ = tx.send(frame::encode_payload(&resp)).await;
            drop(permit);
        });
    }
    if !watch_streams.is_empty() {
        service.watch().do_send(CloseConnection(conn_id));
    }
    drop(watch_streams);
    drop(tx);
    // The writer ends once every in-flight request and watch stream has sent its last frame.
    let _ = writer.await;
}

/// Routes one WatchRequest of stream `id` to the watch actor, opening the stream on first use:
/// its responses go through a bounded channel (the stream's buffer) to this connection.
async fn watch_request(
    service: &Arc<Service>,
    who: Result<AuthInfo, ApiError>,
    conn_id: u64,
    id: u64,
    req: WatchRequest,
    streams: &mut HashMap<u64, StreamSink>,
    tx: &mpsc::Sender<Bytes>,
) {
    let is_create = matches!(req.request_union, Some(RequestUnion::CreateRequest(_)));
    if !is_create && !streams.contains_key(&id) {
        // Cancel or progress on a stream that never had a watch: nothing to do.
        return;
    }
    let sink = streams
        .entry(id)
        .or_insert_with(|| {
            let (stx, mut srx) =
                mpsc::channel::<WatchResponse>(service.watch_limits().stream_buffer_responses);
            let out = tx.clone();
            tokio::spawn(async move {
                while let Some(r) = srx.recv().await {
                    let f = Frame {
                        id,
                        body: Some(Body::WatchResponse(r)),
                    };
                    if out.send(frame::encode_payload(&f)).await.is_err() {
                        return;
                    }
                }
            });
            StreamSink::new(stx, service.state_arc())
        })
        .clone();
    let who = match who {
        Ok(w) => w,
        Err(e) => {
            let (code, msg) = status_of(&e);
            let _ = tx
                .send(frame::encode_payload(&error_frame(id, code, msg)))
                .await;
            return;
        }
    };
    if crate::service::watch::route_watch_request(service, &who, (conn_id, id), &sink, req)
        .await
        .is_err()
    {
        let (code, msg) = status_of(&ApiError::Stopped);
        let _ = tx
            .send(frame::encode_payload(&error_frame(id, code, msg)))
            .await;
    }
}

/// Serves one request frame for the connection's `identity`.
async fn handle(svc: &Service, identity: &ConnIdentity, f: Frame) -> Frame {
    let id = f.id;
    let result = match identity.who(svc) {
        Ok(who) => serve_request(svc, identity, &who, f.body).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(body) => Frame {
            id,
            body: Some(body),
        },
        Err(e) => {
            let (code, msg) = status_of(&e);
            error_frame(id, code, msg)
        }
    }
}

async fn serve_request(
    svc: &Service,
    identity: &ConnIdentity,
    who: &AuthInfo,
    body: Option<Body>,
) -> Result<Body, ApiError> {
    Ok(match body {
        // Identified again after the read barrier (`Service::range_as`).
        Some(Body::Range(r)) => Body::RangeResponse(svc.range_as(|| identity.who(svc), r).await?),
        Some(Body::Put(r)) => Body::PutResponse(svc.put(who, r).await?),
        Some(Body::DeleteRange(r)) => Body::DeleteRangeResponse(svc.delete_range(who, r).await?),
        Some(Body::Txn(r)) => Body::TxnResponse(svc.txn_as(|| identity.who(svc), r).await?),
        Some(Body::Compact(r)) => Body::CompactResponse(svc.compact(who, r).await?),
        Some(Body::Status(_)) => Body::StatusResponse(svc.status()),
        Some(Body::LeaseGrant(r)) => Body::LeaseGrantResponse(svc.lease_grant(who, r).await?),
        Some(Body::LeaseRevoke(r)) => {
            Body::LeaseRevokeResponse(svc.lease_revoke(Some(who), r).await?)
        }
        Some(Body::LeaseKeepAlive(r)) => {
            Body::LeaseKeepAliveResponse(svc.lease_keep_alive(r).await?)
        }
        Some(Body::LeaseTimeToLive(r)) => {
            svc.check_lease_keys_readable(who, r.id)?;
            Body::LeaseTimeToLiveResponse(svc.lease_time_to_live(r).await?)
        }
        Some(Body::LeaseLeases(_)) => Body::LeaseLeasesResponse(svc.lease_leases().await?),
        Some(Body::AuthEnable(_)) => Body::AuthEnableResponse(svc.auth_enable(who).await?),
        Some(Body::AuthDisable(_)) => Body::AuthDisableResponse(svc.auth_disable(who).await?),
        Some(Body::AuthStatus(_)) => Body::AuthStatusResponse(svc.auth_status(who).await?),
        Some(Body::Authenticate(r)) => {
            let resp = svc.authenticate(r).await?;
            identity.set_token(resp.token.clone());
            Body::AuthenticateResponse(resp)
        }
        Some(Body::UserAdd(r)) => Body::UserAddResponse(svc.user_add(who, r).await?),
        Some(Body::UserGet(r)) => Body::UserGetResponse(svc.user_get(who, r).await?),
        Some(Body::UserList(_)) => Body::UserListResponse(svc.user_list(who).await?),
        Some(Body::UserDelete(r)) => Body::UserDeleteResponse(svc.user_delete(who, r).await?),
        Some(Body::UserChangePassword(r)) => {
            Body::UserChangePasswordResponse(svc.user_change_password(who, r).await?)
        }
        Some(Body::UserGrantRole(r)) => {
            Body::UserGrantRoleResponse(svc.user_grant_role(who, r).await?)
        }
        Some(Body::UserRevokeRole(r)) => {
            Body::UserRevokeRoleResponse(svc.user_revoke_role(who, r).await?)
        }
        Some(Body::RoleAdd(r)) => Body::RoleAddResponse(svc.role_add(who, r).await?),
        Some(Body::RoleGet(r)) => Body::RoleGetResponse(svc.role_get(who, r).await?),
        Some(Body::RoleList(_)) => Body::RoleListResponse(svc.role_list(who).await?),
        Some(Body::RoleDelete(r)) => Body::RoleDeleteResponse(svc.role_delete(who, r).await?),
        Some(Body::RoleGrantPermission(r)) => {
            Body::RoleGrantPermissionResponse(svc.role_grant_permission(who, r).await?)
        }
        Some(Body::RoleRevokePermission(r)) => {
            Body::RoleRevokePermissionResponse(svc.role_revoke_permission(who, r).await?)
        }
        Some(Body::Hello(_)) => return Err(ApiError::HelloRepeated),
        _ => return Err(ApiError::Unimplemented),
    })
}
