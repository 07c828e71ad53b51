//! Every metric etch exports, declared here: names, help text, histogram buckets, and the
//! gauges filled at scrape time. Served in Prometheus text format at `/metrics` on the client
//! port and on `--listen-metrics-urls` ([`crate::api::http`]).
//!
//! Names and labels are etcd 3.5's exactly where etcd has the metric (so etcd's Grafana
//! dashboard, alert rules and runbooks work unchanged), including etcd's choice of gauge or
//! counter (e.g. `etcd_server_proposals_committed_total` is a gauge in etcd). etch's own
//! metrics are named `etch_*`. Process metrics (`process_*`) come from `metrics-process`.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `etcd_server_has_leader`: 1 if a leader exists, 0 if not.
pub const HAS_LEADER: &str = "etcd_server_has_leader";
/// `etcd_server_is_leader`: 1 if this member is the leader.
pub const IS_LEADER: &str = "etcd_server_is_leader";
/// `etcd_server_leader_changes_seen_total`: leader changes this member has seen.
pub const LEADER_CHANGES: &str = "etcd_server_leader_changes_seen_total";
/// `etcd_server_proposals_committed_total` (gauge): the raft commit index.
pub const PROPOSALS_COMMITTED: &str = "etcd_server_proposals_committed_total";
/// `etcd_server_proposals_applied_total` (gauge): the applied index.
pub const PROPOSALS_APPLIED: &str = "etcd_server_proposals_applied_total";
/// `etcd_server_proposals_pending` (gauge): proposals waiting to be applied.
pub const PROPOSALS_PENDING: &str = "etcd_server_proposals_pending";
/// `etcd_server_proposals_failed_total` (counter): proposals that failed (timeout, no leader...).
pub const PROPOSALS_FAILED: &str = "etcd_server_proposals_failed_total";
/// `etcd_server_quota_backend_bytes`: the backend quota, bytes.
pub const QUOTA_BACKEND_BYTES: &str = "etcd_server_quota_backend_bytes";
/// `etcd_server_id{server_id}`: 1, labelled with this member's ID (hex).
pub const SERVER_ID: &str = "etcd_server_id";
/// `etcd_server_version{server_version}`: 1, labelled with the etcd version etch reports.
pub const SERVER_VERSION: &str = "etcd_server_version";
/// `etcd_disk_wal_fsync_duration_seconds`: WAL append + fsync latency.
pub const WAL_FSYNC: &str = "etcd_disk_wal_fsync_duration_seconds";
/// `etcd_disk_backend_commit_duration_seconds`: one MVCC write batch commit (fjall).
pub const BACKEND_COMMIT: &str = "etcd_disk_backend_commit_duration_seconds";
/// `etcd_mvcc_db_total_size_in_bytes`: the store's size on disk.
pub const DB_SIZE: &str = "etcd_mvcc_db_total_size_in_bytes";
/// `etcd_mvcc_db_total_size_in_use_in_bytes`: the store's size in use.
pub const DB_SIZE_IN_USE: &str = "etcd_mvcc_db_total_size_in_use_in_bytes";
/// `etcd_mvcc_put_total`: puts applied (requests and Txn ops).
pub const PUT_TOTAL: &str = "etcd_mvcc_put_total";
/// `etcd_mvcc_delete_total`: delete-ranges applied.
pub const DELETE_TOTAL: &str = "etcd_mvcc_delete_total";
/// `etcd_mvcc_range_total`: ranges served.
pub const RANGE_TOTAL: &str = "etcd_mvcc_range_total";
/// `etcd_mvcc_txn_total`: txns applied or served.
pub const TXN_TOTAL: &str = "etcd_mvcc_txn_total";
/// `etcd_debugging_mvcc_keys_total`: live keys.
pub const KEYS_TOTAL: &str = "etcd_debugging_mvcc_keys_total";
/// `etcd_debugging_mvcc_watcher_total`: watchers.
pub const WATCHER_TOTAL: &str = "etcd_debugging_mvcc_watcher_total";
/// `etcd_debugging_mvcc_watch_stream_total`: watch streams.
pub const WATCH_STREAM_TOTAL: &str = "etcd_debugging_mvcc_watch_stream_total";
/// `etcd_network_peer_round_trip_time_seconds{To}`: QUIC's RTT estimate to each peer.
pub const PEER_RTT: &str = "etcd_network_peer_round_trip_time_seconds";
/// `etcd_network_peer_sent_bytes_total{To}`.
pub const PEER_SENT_BYTES: &str = "etcd_network_peer_sent_bytes_total";
/// `etcd_network_peer_received_bytes_total{From}`.
pub const PEER_RECEIVED_BYTES: &str = "etcd_network_peer_received_bytes_total";
/// `etcd_network_peer_sent_failures_total{To}`.
pub const PEER_SENT_FAILURES: &str = "etcd_network_peer_sent_failures_total";
/// `etcd_network_client_grpc_sent_bytes_total`.
pub const GRPC_SENT_BYTES: &str = "etcd_network_client_grpc_sent_bytes_total";
/// `etcd_network_client_grpc_received_bytes_total`.
pub const GRPC_RECEIVED_BYTES: &str = "etcd_network_client_grpc_received_bytes_total";
/// `grpc_server_started_total{grpc_type,grpc_service,grpc_method}`.
pub const GRPC_STARTED: &str = "grpc_server_started_total";
/// `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`.
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
/// `grpc_server_msg_received_total{grpc_type,grpc_service,grpc_method}`.
pub const GRPC_MSG_RECEIVED: &str = "grpc_server_msg_received_total";
/// `grpc_server_msg_sent_total{grpc_type,grpc_service,grpc_method}`.
pub const GRPC_MSG_SENT: &str = "grpc_server_msg_sent_total";
/// `grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}`: unary call latency.
pub const GRPC_HANDLING: &str = "grpc_server_handling_seconds";
/// `etch_apply_lag_entries`: commit index minus applied index.
pub const APPLY_LAG: &str = "etch_apply_lag_entries";
/// `etch_watch_unsynced_watchers`: watchers catching up from history.
pub const WATCH_UNSYNCED: &str = "etch_watch_unsynced_watchers";
/// `etch_actor_pending_messages{actor}`: messages sent to an actor and not yet handled.
pub const ACTOR_PENDING: &str = "etch_actor_pending_messages";
/// `etch_quic_lost_packets_total{To}`: QUIC packets lost towards a peer.
pub const QUIC_LOST_PACKETS: &str = "etch_quic_lost_packets_total";
/// `etch_quic_congestion_window_bytes{To}`: QUIC congestion window towards a peer.
pub const QUIC_CWND: &str = "etch_quic_congestion_window_bytes";
/// `etch_native_connections`: open native-protocol connections.
pub const NATIVE_CONNECTIONS: &str = "etch_native_connections";
/// `etch_proposal_lingers_total`: flushes of client proposals a leader held back to gather
/// more under load (its last flush took 8 or more proposals; 300 us to 2 ms, 40 us per
/// proposal of the last flush). A lone writer never lingers.
pub const PROPOSAL_LINGERS: &str = "etch_proposal_lingers_total";

/// etcd's exponential latency buckets for disk operations: 1 ms .. 8 s (`prometheus.
/// ExponentialBuckets(0.001, 2, 14)`, etcd `wal/metrics.go`, `mvcc/backend/metrics.go`).
pub const DISK_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// etcd's peer RTT buckets: 0.1 ms .. 0.8 s (`ExponentialBuckets(0.0001, 2, 14)`).
pub const RTT_BUCKETS: [f64; 14] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192,
];

/// go-grpc-prometheus's default handling-time buckets, seconds.
pub const GRPC_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are drained into their buckets without a scrape
/// (metrics-exporter-prometheus's own default upkeep interval).
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The installed recorder.
pub struct Metrics {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same one). `None` if
/// another recorder was installed first (metrics then go nowhere).
pub fn install() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| {
            let mut b = PrometheusBuilder::new();
            for (name, buckets) in [
                (WAL_FSYNC, &DISK_BUCKETS[..]),
                (BACKEND_COMMIT, &DISK_BUCKETS[..]),
                (PEER_RTT, &RTT_BUCKETS[..]),
                (GRPC_HANDLING, &GRPC_BUCKETS[..]),
            ] {
                b = b
                    .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                    .ok()?;
            }
            let handle = b.install_recorder().ok()?;
            // The recorder keeps every histogram sample until an upkeep drains it into the
            // buckets; only a scrape ran one, so a member nobody scraped grew by each request's
            // samples for ever (and touched fresh memory for them). The exporter's own
            // `install` runs upkeep on a task every 5 s: etch does the same on a thread.
            let upkeep = handle.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("etch-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                })
            {
                tracing::error!(error = %e, "cannot start the metrics upkeep thread; histogram samples are drained only at scrapes");
            }
            // From here on, handles resolve to this recorder.
            describe();
            // Unlabelled counters exist (at 0) from the start, so rate() over them has data
            // before the first event, as with etcd's Prometheus client.
            for c in [
                LEADER_CHANGES,
                PROPOSALS_FAILED,
                PUT_TOTAL,
                DELETE_TOTAL,
                RANGE_TOTAL,
                TXN_TOTAL,
                GRPC_SENT_BYTES,
                GRPC_RECEIVED_BYTES,
            ] {
                metrics::counter!(c).absolute(0);
            }
            metrics::gauge!(PROPOSALS_PENDING).set(0.0);
            metrics::gauge!(NATIVE_CONNECTIONS).set(0.0);
            for actor in ["consensus", "wal", "apply"] {
                metrics::gauge!(ACTOR_PENDING, "actor" => actor).set(0.0);
            }
            let process = metrics_process::Collector::default();
            process.describe();
            Some(Metrics { handle, process })
        })
        .as_ref()
}

fn describe() {
    describe_gauge!(
        HAS_LEADER,
        "Whether or not a leader exists. 1 is existence, 0 is not."
    );
    describe_gauge!(
        IS_LEADER,
        "Whether or not this member is a leader. 1 if is, 0 otherwise."
    );
    describe_counter!(LEADER_CHANGES, "The number of leader changes seen.");
    describe_gauge!(
        PROPOSALS_COMMITTED,
        "The total number of consensus proposals committed."
    );
    describe_gauge!(
        PROPOSALS_APPLIED,
        "The total number of consensus proposals applied."
    );
    describe_gauge!(
        PROPOSALS_PENDING,
        "The current number of pending proposals to commit."
    );
    describe_counter!(
        PROPOSALS_FAILED,
        "The total number of failed proposals seen."
    );
    describe_gauge!(
        QUOTA_BACKEND_BYTES,
        Unit::Bytes,
        "Current backend storage quota size in bytes."
    );
    describe_gauge!(
        SERVER_ID,
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID."
    );
    describe_gauge!(
        SERVER_VERSION,
        "Which version is running. 1 for 'server_version' label with current version."
    );
    describe_histogram!(
        WAL_FSYNC,
        Unit::Seconds,
        "The latency distributions of fsync called by WAL."
    );
    describe_histogram!(
        BACKEND_COMMIT,
        Unit::Seconds,
        "The latency distributions of commit called by backend."
    );
    describe_gauge!(
        DB_SIZE,
        Unit::Bytes,
        "Total size of the underlying database physically allocated in bytes."
    );
    describe_gauge!(
        DB_SIZE_IN_USE,
        Unit::Bytes,
        "Total size of the underlying database logically in use in bytes."
    );
    describe_counter!(PUT_TOTAL, "Total number of puts seen by this member.");
    describe_counter!(DELETE_TOTAL, "Total number of deletes seen by this member.");
    describe_counter!(RANGE_TOTAL, "Total number of ranges seen by this member.");
    describe_counter!(TXN_TOTAL, "Total number of txns seen by this member.");
    describe_gauge!(KEYS_TOTAL, "Total number of keys.");
    describe_gauge!(WATCHER_TOTAL, "Total number of watchers.");
    describe_gauge!(WATCH_STREAM_TOTAL, "Total number of watch streams.");
    describe_histogram!(
        PEER_RTT,
        Unit::Seconds,
        "Round-Trip-Time histogram between peers (QUIC's estimate)."
    );
    describe_counter!(
        PEER_SENT_BYTES,
        Unit::Bytes,
        "The total number of bytes sent to peers."
    );
    describe_counter!(
        PEER_RECEIVED_BYTES,
        Unit::Bytes,
        "The total number of bytes received from peers."
    );
    describe_counter!(
        PEER_SENT_FAILURES,
        "The total number of send failures from peers."
    );
    describe_counter!(
        GRPC_SENT_BYTES,
        Unit::Bytes,
        "The total number of bytes sent to grpc clients."
    );
    describe_counter!(
        GRPC_RECEIVED_BYTES,
        Unit::Bytes,
        "The total number of bytes received from grpc clients."
    );
    describe_counter!(GRPC_STARTED, "Total number of RPCs started on the server.");
    describe_counter!(
        GRPC_HANDLED,
        "Total number of RPCs completed on the server, regardless of success or failure."
    );
    describe_counter!(
        GRPC_MSG_RECEIVED,
        "Total number of RPC stream messages received on the server."
    );
    describe_counter!(
        GRPC_MSG_SENT,
        "Total number of gRPC stream messages sent by the server."
    );
    describe_histogram!(
        GRPC_HANDLING,
        Unit::Seconds,
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
    );
    describe_gauge!(
        APPLY_LAG,
        "Raft entries committed but not applied yet on this member."
    );
    describe_gauge!(
        WATCH_UNSYNCED,
        "Watchers catching up from the store's history."
    );
    describe_gauge!(
        ACTOR_PENDING,
        "Messages sent to an actor and not handled yet."
    );
    describe_counter!(QUIC_LOST_PACKETS, "QUIC packets lost towards a peer.");
    describe_gauge!(
        QUIC_CWND,
        Unit::Bytes,
        "QUIC congestion window towards a peer."
    );
    describe_gauge!(
        NATIVE_CONNECTIONS,
        "Open native-protocol client connections."
    );
    describe_counter!(
        PROPOSAL_LINGERS,
        "Flushes of client proposals the leader held back under load to gather more into one round."
    );
}

/// What the scrape-time gauges show, taken from the node when `/metrics` is scraped.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// This member's ID.
    pub member_id: u64,
    /// The leader's ID (0 = none).
    pub leader: u64,
    /// Raft commit index.
    pub commit_index: u64,
    /// Raft index the store has applied.
    pub applied_index: u64,
    /// `--quota-backend-bytes`, bytes.
    pub quota_backend_bytes: u64,
    /// All store files, bytes.
    pub db_size_bytes: u64,
    /// Store size counted against the quota, bytes.
    pub db_size_in_use_bytes: u64,
    /// Live keys.
    pub keys: i64,
}

impl Metrics {
    /// The Prometheus text exposition, after filling the scrape-time gauges from `s`.
    pub fn render(&self, s: &Snapshot) -> String {
        gauge!(HAS_LEADER).set(f64::from(u8::from(s.leader != 0)));
        gauge!(IS_LEADER).set(f64::from(u8::from(s.leader == s.member_id)));
        let (commit, applied) = (s.commit_index, s.applied_index);
        gauge!(PROPOSALS_COMMITTED).set(commit as f64);
        gauge!(PROPOSALS_APPLIED).set(applied as f64);
        gauge!(APPLY_LAG).set(commit.saturating_sub(applied) as f64);
        gauge!(QUOTA_BACKEND_BYTES).set(s.quota_backend_bytes as f64);
        gauge!(SERVER_ID, "server_id" => etch_protocol::ids::MemberId(s.member_id).to_string())
            .set(1.0);
        gauge!(SERVER_VERSION, "server_version" => crate::config::ETCD_API_VERSION).set(1.0);
        gauge!(DB_SIZE).set(s.db_size_bytes as f64);
        gauge!(DB_SIZE_IN_USE).set(s.db_size_in_use_bytes as f64);
        gauge!(KEYS_TOTAL).set(s.keys as f64);
        self.process.collect();
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Handles of the metrics touched on every request, resolved once (after [`install`]; a
/// registry lookup per use would cost more than the bookkeeping itself).
pub struct Hot {
    /// [`PUT_TOTAL`].
    pub put_total: metrics::Counter,
    /// [`DELETE_TOTAL`].
    pub delete_total: metrics::Counter,
    /// [`RANGE_TOTAL`].
    pub range_total: metrics::Counter,
    /// [`TXN_TOTAL`].
    pub txn_total: metrics::Counter,
    /// [`PROPOSALS_PENDING`].
    pub proposals_pending: metrics::Gauge,
    /// [`PROPOSALS_FAILED`].
    pub proposals_failed: metrics::Counter,
    /// [`BACKEND_COMMIT`].
    pub backend_commit: metrics::Histogram,
    /// [`WAL_FSYNC`].
    pub wal_fsync: metrics::Histogram,
    /// [`ACTOR_PENDING`] for consensus, wal, apply.
    actors: [metrics::Gauge; 3],
}

static HOT: std::sync::LazyLock<Hot> = std::sync::LazyLock::new(|| Hot {
    put_total: metrics::counter!(PUT_TOTAL),
    delete_total: metrics::counter!(DELETE_TOTAL),
    range_total: metrics::counter!(RANGE_TOTAL),
    txn_total: metrics::counter!(TXN_TOTAL),
    proposals_pending: gauge!(PROPOSALS_PENDING),
    proposals_failed: metrics::counter!(PROPOSALS_FAILED),
    backend_commit: metrics::histogram!(BACKEND_COMMIT),
    wal_fsync: metrics::histogram!(WAL_FSYNC),
    actors: ["consensus", "wal", "apply"].map(|a| gauge!(ACTOR_PENDING, "actor" => a)),
});

/// The per-request metric handles.
pub fn hot() -> &'static Hot {
    &HOT
}

fn actor_gauge(actor: &'static str) -> &'static metrics::Gauge {
    let i = match actor {
        "consensus" => 0,
        "wal" => 1,
        _ => 2,
    };
    &HOT.actors[i]
}

/// A message is on its way to `actor` (`consensus`, `wal`, `apply`): counted in
/// [`ACTOR_PENDING`] until the actor takes it ([`dequeued`]).
pub fn queued(actor: &'static str) {
    actor_gauge(actor).increment(1.0);
}

/// `actor` took a message counted by [`queued`].
pub fn dequeued(actor: &'static str) {
    actor_gauge(actor).decrement(1.0);
}

/// The recorder's exposition with the gauges of `s`, or an empty page when no recorder is
/// installed.
pub fn render(s: &Snapshot) -> String {
    install().map(|m| m.render(s)).unwrap_or_default()
}
