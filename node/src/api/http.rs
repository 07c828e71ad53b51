//! HTTP/1.1 on the gRPC port (etcd serves both on its client URLs): etcd's JSON gateway,
//! `/metrics`, `/health`, `/livez`, `/readyz` and `/version`.
//!
//! # JSON gateway
//! `POST /v3/<service>/<method>` with a JSON request body answers the JSON response, for
//! every gRPC method etch serves, at etcd's paths (`/v3/kv/range`, `/v3/lease/grant`,
//! `/v3/maintenance/hash` (HashKV), ...; see [`router`]) and their `/v3beta` and `/v3alpha`
//! aliases. Each request is served by the same call as its gRPC method
//! ([`crate::api::calls`]), so semantics and errors are the gRPC API's. The JSON mapping is etcd's grpc-gateway (v1, `JSONPb` with
//! `OrigName`): proto field names, bytes as base64, 64-bit integers as strings, enums by name,
//! default values left out. A failure answers the HTTP status grpc-gateway maps the gRPC code
//! to, with `{"error": message, "message": message, "code": grpc code}`.
//!
//! Streaming methods (`/v3/watch`, `/v3/lease/keepalive`, `/v3/election/observe`) read any
//! number of JSON requests from the body as they arrive and answer one
//! `{"result": response}` per line (newline-delimited JSON, chunked), or a final
//! `{"error": {...}}` line. A watch goes on after the request body ends, until the client
//! disconnects; a keep-alive stream ends with the body, as in etcd.
//!
//! The conversion goes through protobuf reflection (`prost-reflect`) over the protocol crate's
//! descriptor set, so no message has a second, hand-written JSON form.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::LazyLock;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use tonic::{Code, Status};

use etch_protocol::etcdserverpb::{RangeRequest, WatchRequest};

use std::sync::Arc;

use crate::api::calls::{self, Caller};
use crate::api::{WatchStream, serve_keep_alive, until_error};
use crate::config::ETCD_API_VERSION;
use crate::error::ApiError;
use crate::service::Service;
use crate::tls::client::PeerIdentity;

/// etcd's cluster version reported by `/version` (`etcdcluster`).
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// The path prefixes the gateway answers on (etcd 3.5 serves `/v3`, and `/v3beta` and
/// `/v3alpha` for older clients).
pub const GATEWAY_PREFIXES: [&str; 3] = ["/v3", "/v3beta", "/v3alpha"];

/// The descriptors of etch's protocol files (gateway JSON mapping, gRPC metric registration).
pub(crate) static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(etch_protocol::FILE_DESCRIPTOR_SET).ok());

/// The JSON form etcd's gateway writes.
const JSON_OUT: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(true)
    .skip_default_fields(true);

type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// The HTTP routes of the client port: the JSON gateway over `svc`, and
/// [`metrics_router`]'s.
pub fn router(svc: Arc<Service>) -> Router {
    let mut r = metrics_router(svc.clone());
    for p in GATEWAY_PREFIXES {
        r = gateway_routes(r, p, &svc);
    }
    r.fallback(not_found)
}

/// The routes of `--listen-metrics-urls` (also on the client port): `/metrics`, `/health`,
/// `/livez`, `/readyz`, `/version`.
pub fn metrics_router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/health", get(health).with_state(svc.clone()))
        .route("/readyz", get(readyz).with_state(svc.clone()))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics).with_state(svc))
}

/// `GET /metrics`: Prometheus text exposition ([`crate::metrics`]).
async fn metrics(axum::extract::State(svc): axum::extract::State<Arc<Service>>) -> Response {
    let body = crate::metrics::render(&svc.metrics_snapshot());
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// `GET /livez`: the process serves requests (`ok`).
async fn livez() -> Response {
    text(StatusCode::OK, "ok\n")
}

/// `GET /readyz`: `ok` when `/health` would say true, else 503 with the reason.
async fn readyz(state: axum::extract::State<Arc<Service>>, uri: axum::http::Uri) -> Response {
    match health_reason(&state.0, &uri).await {
        None => text(StatusCode::OK, "ok\n"),
        Some(r) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ok: {r}\n")),
    }
}

fn text(code: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// No route: gRPC calls get status `UNIMPLEMENTED` (as tonic answers unknown methods), HTTP
/// requests grpc-gateway's `404 Not Found`.
async fn not_found(req: axum::extract::Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Status::unimplemented(format!("unknown method {}", req.uri().path()))
            .into_http()
            .map(|()| Body::empty());
    }
    let mut r = Response::new(Body::from("Not Found\n"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The TLS client's identity, when the connection has one.
type Peer = Option<Extension<PeerIdentity>>;

/// Who sends a gateway request: the token of the `Authorization` header (grpc-gateway maps
/// it to `authorization` metadata, which etcd accepts as the token) and the TLS client's
/// identity.
fn caller(headers: &HeaderMap, peer: Peer) -> Caller {
    Caller {
        token: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        common_name: peer.and_then(|Extension(p)| p.common_name),
    }
}

/// Adds one unary method: `path` answers `call(svc, caller, request)`; `$req` and `$resp`
/// are the messages' full names.
macro_rules! unary_route {
    ($r:ident, $svc:ident, $path:expr, $req:expr => $resp:expr, $call:expr) => {{
        let s = $svc.clone();
        $r = $r.route(
            &$path,
            post(move |headers: HeaderMap, peer: Peer, body: Bytes| {
                let s = s.clone();
                async move {
                    match decode_json($req, &body) {
                        Err(e) => error_response(e),
                        Ok(req) => match $call(s, caller(&headers, peer), req).await {
                            Ok(resp) => json_response($resp, &resp),
                            Err(e) => api_error(e),
                        },
                    }
                }
            }),
        );
    }};
}

fn gateway_routes(mut r: Router, p: &str, svc: &Arc<Service>) -> Router {
    macro_rules! unary {
        ($r2:ident, $s:ident, $path:expr, $req:literal => $resp:literal, $call:expr) => {
            unary_route!($r2, $s, $path, concat!("etcdserverpb.", $req) => concat!("etcdserverpb.", $resp), $call)
        };
    }
    // KV.
    unary!(r, svc, format!("{p}/kv/range"), "RangeRequest" => "RangeResponse", calls::range);
    unary!(r, svc, format!("{p}/kv/put"), "PutRequest" => "PutResponse", calls::put);
    unary!(r, svc, format!("{p}/kv/deleterange"), "DeleteRangeRequest" => "DeleteRangeResponse", calls::delete_range);
    unary!(r, svc, format!("{p}/kv/txn"), "TxnRequest" => "TxnResponse", calls::txn);
    unary!(r, svc, format!("{p}/kv/compaction"), "CompactionRequest" => "CompactionResponse", calls::compact);
    // Lease (with etcd's additional `/kv/lease/...` bindings).
    unary!(r, svc, format!("{p}/lease/grant"), "LeaseGrantRequest" => "LeaseGrantResponse", calls::lease_grant);
    for path in [format!("{p}/lease/revoke"), format!("{p}/kv/lease/revoke")] {
        unary!(r, svc, path, "LeaseRevokeRequest" => "LeaseRevokeResponse", calls::lease_revoke);
    }
    for path in [
        format!("{p}/lease/timetolive"),
        format!("{p}/kv/lease/timetolive"),
    ] {
        unary!(r, svc, path, "LeaseTimeToLiveRequest" => "LeaseTimeToLiveResponse", calls::lease_time_to_live);
    }
    for path in [format!("{p}/lease/leases"), format!("{p}/kv/lease/leases")] {
        unary!(r, svc, path, "LeaseLeasesRequest" => "LeaseLeasesResponse", calls::lease_leases);
    }
    // Cluster.
    unary!(r, svc, format!("{p}/cluster/member/list"), "MemberListRequest" => "MemberListResponse", calls::member_list);
    unary!(r, svc, format!("{p}/cluster/member/add"), "MemberAddRequest" => "MemberAddResponse", calls::member_add);
    unary!(r, svc, format!("{p}/cluster/member/remove"), "MemberRemoveRequest" => "MemberRemoveResponse", calls::member_remove);
    unary!(r, svc, format!("{p}/cluster/member/update"), "MemberUpdateRequest" => "MemberUpdateResponse", calls::member_update);
    unary!(r, svc, format!("{p}/cluster/member/promote"), "MemberPromoteRequest" => "MemberPromoteResponse", calls::member_promote);
    // Maintenance (`/maintenance/hash` is HashKV: etcd's gateway binds Hash and HashKV to the
    // same path and the later binding wins).
    unary!(r, svc, format!("{p}/maintenance/alarm"), "AlarmRequest" => "AlarmResponse", calls::alarm);
    unary!(r, svc, format!("{p}/maintenance/status"), "StatusRequest" => "StatusResponse", calls::status);
    unary!(r, svc, format!("{p}/maintenance/defragment"), "DefragmentRequest" => "DefragmentResponse", calls::defragment);
    unary!(r, svc, format!("{p}/maintenance/hash"), "HashKVRequest" => "HashKVResponse", calls::hash_kv);
    unary!(r, svc, format!("{p}/maintenance/transfer-leadership"), "MoveLeaderRequest" => "MoveLeaderResponse", calls::move_leader);
    // Auth.
    unary!(r, svc, format!("{p}/auth/enable"), "AuthEnableRequest" => "AuthEnableResponse", calls::auth_enable);
    unary!(r, svc, format!("{p}/auth/disable"), "AuthDisableRequest" => "AuthDisableResponse", calls::auth_disable);
    unary!(r, svc, format!("{p}/auth/status"), "AuthStatusRequest" => "AuthStatusResponse", calls::auth_status);
    unary!(r, svc, format!("{p}/auth/authenticate"), "AuthenticateRequest" => "AuthenticateResponse", calls::authenticate);
    unary!(r, svc, format!("{p}/auth/user/add"), "AuthUserAddRequest" => "AuthUserAddResponse", calls::user_add);
    unary!(r, svc, format!("{p}/auth/user/get"), "AuthUserGetRequest" => "AuthUserGetResponse", calls::user_get);
    unary!(r, svc, format!("{p}/auth/user/list"), "AuthUserListRequest" => "AuthUserListResponse", calls::user_list);
    unary!(r, svc, format!("{p}/auth/user/delete"), "AuthUserDeleteRequest" => "AuthUserDeleteResponse", calls::user_delete);
    unary!(r, svc, format!("{p}/auth/user/changepw"), "AuthUserChangePasswordRequest" => "AuthUserChangePasswordResponse", calls::user_change_password);
    unary!(r, svc, format!("{p}/auth/user/grant"), "AuthUserGrantRoleRequest" => "AuthUserGrantRoleResponse", calls::user_grant_role);
    unary!(r, svc, format!("{p}/auth/user/revoke"), "AuthUserRevokeRoleRequest" => "AuthUserRevokeRoleResponse", calls::user_revoke_role);
    unary!(r, svc, format!("{p}/auth/role/add"), "AuthRoleAddRequest" => "AuthRoleAddResponse", calls::role_add);
    unary!(r, svc, format!("{p}/auth/role/get"), "AuthRoleGetRequest" => "AuthRoleGetResponse", calls::role_get);
    unary!(r, svc, format!("{p}/auth/role/list"), "AuthRoleListRequest" => "AuthRoleListResponse", calls::role_list);
    unary!(r, svc, format!("{p}/auth/role/delete"), "AuthRoleDeleteRequest" => "AuthRoleDeleteResponse", calls::role_delete);
    unary!(r, svc, format!("{p}/auth/role/grant"), "AuthRoleGrantPermissionRequest" => "AuthRoleGrantPermissionResponse", calls::role_grant_permission);
    unary!(r, svc, format!("{p}/auth/role/revoke"), "AuthRoleRevokePermissionRequest" => "AuthRoleRevokePermissionResponse", calls::role_revoke_permission);
    // Lock and Election: their messages live in their own packages.
    unary_route!(r, svc, format!("{p}/lock/lock"), "v3lockpb.LockRequest" => "v3lockpb.LockResponse", calls::lock);
    unary_route!(r, svc, format!("{p}/lock/unlock"), "v3lockpb.UnlockRequest" => "v3lockpb.UnlockResponse", calls::unlock);
    unary_route!(r, svc, format!("{p}/election/campaign"), "v3electionpb.CampaignRequest" => "v3electionpb.CampaignResponse", calls::campaign);
    unary_route!(r, svc, format!("{p}/election/proclaim"), "v3electionpb.ProclaimRequest" => "v3electionpb.ProclaimResponse", calls::proclaim);
    unary_route!(r, svc, format!("{p}/election/leader"), "v3electionpb.LeaderRequest" => "v3electionpb.LeaderResponse", calls::leader);
    unary_route!(r, svc, format!("{p}/election/resign"), "v3electionpb.ResignRequest" => "v3electionpb.ResignResponse", calls::resign);
    // Streams.
    let s = svc.clone();
    r = r.route(
        &format!("{p}/watch"),
        post(move |headers: HeaderMap, peer: Peer, body: Body| {
            let (svc, who) = (s.clone(), caller(&headers, peer).who(&s));
            async move {
                let who = match who {
                    Ok(w) => w,
                    Err(e) => return api_error(e),
                };
                let inbound = json_requests::<WatchRequest>("etcdserverpb.WatchRequest", body);
                let out = WatchStream::serve(svc, who, until_error(inbound));
                stream_response("etcdserverpb.WatchResponse", out.map(Ok))
            }
        }),
    );
    let s = svc.clone();
    r = r.route(
        &format!("{p}/lease/keepalive"),
        post(move |headers: HeaderMap, peer: Peer, body: Body| {
            let (svc, who) = (s.clone(), caller(&headers, peer).who(&s));
            async move {
                if let Err(e) = who {
                    return api_error(e);
                }
                let inbound = json_requests("etcdserverpb.LeaseKeepAliveRequest", body);
                let out = serve_keep_alive(svc, until_error(inbound));
                stream_response("etcdserverpb.LeaseKeepAliveResponse", out)
            }
        }),
    );
    let s = svc.clone();
    r.route(
        &format!("{p}/election/observe"),
        post(move |headers: HeaderMap, peer: Peer, body: Bytes| {
            let (svc, who) = (s.clone(), caller(&headers, peer).who(&s));
            async move {
                let who = match who {
                    Ok(w) => w,
                    Err(e) => return api_error(e),
                };
                let req = match decode_json("v3electionpb.LeaderRequest", &body) {
                    Ok(req) => req,
                    Err(e) => return error_response(e),
                };
                let out = crate::service::election::observe_stream(svc, who, req);
                stream_response(
                    "v3electionpb.LeaderResponse",
                    out.map(|r| r.map_err(crate::api::errors::to_status)),
                )
            }
        }),
    )
}

/// `GET /version`: etcd's `{"etcdserver": ..., "etcdcluster": ...}`.
async fn version() -> Response {
    let body = serde_json::json!({
        "etcdserver": ETCD_API_VERSION,
        "etcdcluster": ETCD_CLUSTER_VERSION,
    });
    raw_json(StatusCode::OK, body.to_string())
}

/// `GET /health` (etcd 3.5's `checkHealth`): `{"health":"true","reason":""}` with 200 when
/// this member has a leader and a read through it succeeds (linearizable, or local with
/// `?serializable=true`); `"false"` with a reason and 503 otherwise.
async fn health(
    axum::extract::State(svc): axum::extract::State<Arc<Service>>,
    uri: axum::http::Uri,
) -> Response {
    let (code, body) = match health_reason(&svc, &uri).await {
        None => (
            StatusCode::OK,
            serde_json::json!({"health": "true", "reason": ""}),
        ),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": r}),
        ),
    };
    raw_json(code, body.to_string())
}

/// Why this member is not healthy (etcd's reasons), or `None` when it is.
async fn health_reason(svc: &Service, uri: &axum::http::Uri) -> Option<String> {
    let serializable = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "serializable=true"));
    // etcd v3.5 looks at alarms first; `?exclude=NOSPACE` ignores that alarm.
    let excluded: Vec<&str> = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix("exclude="))
        .collect();
    if let Some(reason) = svc.alarm_health(&excluded) {
        return Some(reason);
    }
    if svc.state().leader().0 == 0 {
        return Some("RAFT NO LEADER".to_owned());
    }
    let probe = RangeRequest {
        key: Bytes::from_static(b"health"),
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    // With auth enabled the anonymous probe is refused: that still proves the member serves
    // (etcd v3.5 counts "user name is empty" and "permission denied" as healthy too).
    let refused = |e: &crate::error::ApiError| {
        use etch_storage::mvcc::RequestError as R;
        matches!(
            e,
            crate::error::ApiError::Request(R::UserEmpty | R::PermissionDenied)
        )
    };
    svc.range(&crate::service::AuthInfo::default(), probe)
        .await
        .err()
        .filter(|e| !refused(e))
        .map(|e| format!("RANGE ERROR:{}", crate::api::errors::status_of(&e).1))
}

fn descriptor(name: &str) -> Result<prost_reflect::MessageDescriptor, Status> {
    POOL.as_ref()
        .and_then(|p| p.get_message_by_name(name))
        .ok_or_else(|| Status::internal(format!("no descriptor for {name}")))
}

/// A request message from its JSON (an empty body is the default message, as in
/// grpc-gateway).
fn decode_json<M: prost::Message + Default>(name: &str, body: &[u8]) -> Result<M, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(M::default());
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("bad JSON: {e}")))?;
    from_value(name, v)
}

fn from_value<M: prost::Message + Default>(name: &str, v: serde_json::Value) -> Result<M, Status> {
    // Unknown fields are ignored, as etcd's gateway does.
    let dm = DynamicMessage::deserialize_with_options(
        descriptor(name)?,
        v,
        &DeserializeOptions::new().deny_unknown_fields(false),
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    M::decode(dm.encode_to_vec().as_slice()).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A message in etcd's gateway JSON.
fn to_json<M: prost::Message>(name: &str, m: &M) -> Result<Vec<u8>, Status> {
    let dm = DynamicMessage::decode(descriptor(name)?, m.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut out = Vec::new();
    dm.serialize_with_options(&mut serde_json::Serializer::new(&mut out), &JSON_OUT)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(out)
}

fn json_response<M: prost::Message>(name: &str, m: &M) -> Response {
    match to_json(name, m) {
        Ok(body) => raw_json(StatusCode::OK, body),
        Err(e) => error_response(e),
    }
}

fn raw_json(code: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// grpc-gateway v1's `HTTPStatusFromCode`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        // grpc-gateway v1 (etcd 3.4 and 3.5); v2 changed it to 400.
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed call: grpc-gateway v1's error body.
/// An [`ApiError`] as the gateway answers it (its gRPC status).
fn api_error(e: ApiError) -> Response {
    error_response(crate::api::errors::to_status(e))
}

fn error_response(e: Status) -> Response {
    let body = serde_json::json!({
        "error": e.message(),
        "message": e.message(),
        "code": e.code() as i32,
    });
    raw_json(http_status(e.code()), body.to_string())
}

/// One line of a streamed answer: `{"result": ...}` or grpc-gateway v1's stream error.
fn stream_line<M: prost::Message>(name: &str, item: Result<M, Status>) -> (Vec<u8>, bool) {
    let item = item.and_then(|m| to_json(name, &m));
    match item {
        Ok(json) => {
            let mut line = b"{\"result\":".to_vec();
            line.extend_from_slice(&json);
            line.extend_from_slice(b"}\n");
            (line, false)
        }
        Err(e) => {
            let status = http_status(e.code());
            let body = serde_json::json!({"error": {
                "grpc_code": e.code() as i32,
                "http_code": status.as_u16(),
                "message": e.message(),
                "http_status": status.canonical_reason().unwrap_or(""),
            }});
            (format!("{body}\n").into_bytes(), true)
        }
    }
}

/// A chunked newline-delimited JSON answer from a stream of messages; it ends after the
/// first error.
fn stream_response<M, S>(name: &'static str, s: S) -> Response
where
    M: prost::Message + 'static,
    S: Stream<Item = Result<M, Status>> + Send + 'static,
{
    let lines = s
        .map(move |item| stream_line(name, item))
        .scan(false, |ended, (line, last)| {
            let out = (!*ended).then_some(line);
            *ended |= last;
            futures::future::ready(out)
        })
        .map(|line| Ok::<_, Infallible>(Bytes::from(line)));
    raw_json(StatusCode::OK, Body::from_stream(lines))
}

/// The JSON values of a request body as they arrive (a client may keep the body open and
/// send more requests), decoded as message `name`; a value that is not valid ends the stream
/// with its error.
fn json_requests<M>(name: &'static str, body: Body) -> BoxStream<Result<M, Status>>
where
    M: prost::Message + Default + 'static,
{
    let data = body.into_data_stream();
    let state = (data, Vec::<u8>::new(), false);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut data, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                let mut it =
                    serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        buf.drain(..used);
                        return Some((from_value(name, v), (data, buf, false)));
                    }
                    Some(Err(e)) if !e.is_eof() => {
                        let err = Status::invalid_argument(format!("bad JSON: {e}"));
                        return Some((Err(err), (data, buf, true)));
                    }
                    // Incomplete (or only whitespace so far): read more.
                    _ => match data.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        _ => return None,
                    },
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_message_has_a_descriptor() {
        let pool = POOL.as_ref().expect("descriptor set decodes");
        for name in [
            "etcdserverpb.RangeRequest",
            "etcdserverpb.WatchResponse",
            "etcdserverpb.HashKVResponse",
            "v3lockpb.LockResponse",
            "v3electionpb.LeaderResponse",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn json_is_etcds_gateway_mapping() {
        use etch_protocol::etcdserverpb::{RangeResponse, ResponseHeader};
        use etch_protocol::mvccpb::KeyValue;
        let r = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            }),
            kvs: vec![KeyValue {
                key: Bytes::from_static(b"foo"),
                value: Bytes::from_static(b"bar"),
                create_revision: 3,
                mod_revision: 3,
                version: 1,
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json = String::from_utf8(to_json("etcdserverpb.RangeResponse", &r).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"4"},"kvs":[{"key":"Zm9v","create_revision":"3","mod_revision":"3","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        let req: RangeRequest = decode_json(
            "etcdserverpb.RangeRequest",
            br#"{"key":"Zm9v","range_end":"Zm9w","limit":"2","sort_order":"DESCEND"}"#,
        )
        .unwrap();
        assert_eq!(
            (req.key.as_ref(), req.limit, req.sort_order),
            (&b"foo"[..], 2, 2)
        );
        let bad = decode_json::<RangeRequest>("etcdserverpb.RangeRequest", br#"{"key":1}"#);
        assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
        let unknown = decode_json::<RangeRequest>("etcdserverpb.RangeRequest", br#"{"x":1}"#);
        assert_eq!(unknown.unwrap(), RangeRequest::default());
    }
}
