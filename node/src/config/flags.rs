//! etch's command line: etcd's flag names (clap), each also read from `ETCH_<FLAG>`; `ETCD_*`
//! variables and etcd's YAML file reach it through [`super::sources`].

use clap::Parser;

use super::*;

/// Raw command-line flags, before validation.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "etch",
    disable_version_flag = true,
    // Go's flag package lets a flag repeat, the last value winning (etcd's e2e suite passes
    // `--client-cert-auth` twice).
    args_override_self = true,
    about = "etch: a distributed, strongly consistent key-value store"
)]
pub struct Flags {
    /// Print etcd's version lines (the etcd API level etch implements), then etch's, and exit.
    #[arg(long)]
    pub version: bool,
    /// Human-readable name of this member.
    #[arg(long, env = "ETCH_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory. Default: `<name>.etch`.
    #[arg(long, env = "ETCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to serve etch's native protocol on (`tcp://host:port`). Default:
    /// `tcp://127.0.0.1:2378` when `--listen-client-urls` is left at its default, none
    /// otherwise (so members started with etcd's flags alone never collide on it).
    #[arg(long, env = "ETCH_LISTEN_NATIVE_URLS")]
    pub listen_native_urls: Option<String>,
    /// Comma-separated URLs to serve the etcd gRPC API, the HTTP JSON gateway, `/metrics` and
    /// the health endpoints on (`http://host:port`, `https://` with client TLS, or
    /// `unix://path`).
    #[arg(long, env = "ETCH_LISTEN_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub listen_client_urls: String,
    /// Extra URLs serving `/metrics`, `/health`, `/livez` and `/readyz` over plain HTTP (the
    /// client URLs serve them too), e.g. `http://127.0.0.1:2381`.
    #[arg(long, env = "ETCH_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "ETCH_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCH_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// This member's peer URLs, advertised to the cluster.
    #[arg(
        long,
        env = "ETCH_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: `name=peer-url,...`.
    #[arg(long, env = "ETCH_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` or `existing`.
    #[arg(long, env = "ETCH_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token: member and cluster IDs derive from it and the peer URLs.
    #[arg(
        long,
        env = "ETCH_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Time between heartbeats (humantime; bare number = ms). Default: 100ms.
    #[arg(long, env = "ETCH_HEARTBEAT_INTERVAL", default_value = "100ms")]
    pub heartbeat_interval: String,
    /// Time without a leader before an election (humantime; bare number = ms). Default: 1000ms.
    #[arg(long, env = "ETCH_ELECTION_TIMEOUT", default_value = "1000ms")]
    pub election_timeout: String,
    /// Applied entries between log compactions (raft log release).
    #[arg(long, env = "ETCH_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Backend size quota in bytes: past it, the NOSPACE alarm is raised and writes are refused
    /// until compaction and `alarm disarm` (etcd). 0 = the default: 2 GiB.
    #[arg(long, env = "ETCH_QUOTA_BACKEND_BYTES", default_value_t = DEFAULT_QUOTA_BACKEND_BYTES)]
    pub quota_backend_bytes: u64,
    /// Maximum client request size in bytes. Default: 1.5 MiB (etcd).
    #[arg(long, env = "ETCH_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,
    /// Maximum operations per Txn branch. Default: 128 (etcd).
    #[arg(long, env = "ETCH_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,
    /// Client TLS certificate (PEM) for `https://` client URLs (gRPC, HTTP gateway).
    #[arg(long, env = "ETCH_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client TLS key (PEM).
    #[arg(long, env = "ETCH_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that clients' certificates must be signed by.
    #[arg(long, env = "ETCH_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `--trusted-ca-file` from every client (refused
    /// during the handshake otherwise).
    #[arg(long, env = "ETCH_CLIENT_CERT_AUTH", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub client_cert_auth: bool,
    /// Serve `https://` client URLs with a generated self-signed certificate.
    #[arg(long, env = "ETCH_AUTO_TLS", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub auto_tls: bool,
    /// Peer TLS certificate (PEM). With `--peer-key-file`, used as the server certificate
    /// and as the client certificate towards other members.
    #[arg(long, env = "ETCH_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS key (PEM).
    #[arg(long, env = "ETCH_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that peers' certificates must be signed by.
    #[arg(long, env = "ETCH_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `--peer-trusted-ca-file` from every peer.
    #[arg(long, env = "ETCH_PEER_CLIENT_CERT_AUTH", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub peer_client_cert_auth: bool,
    /// TLS 1.2 cipher suites the client URLs accept, comma-separated Go/IANA names (e.g.
    /// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`); empty = rustls's defaults. TLS 1.3 suites are
    /// not configurable (as in etcd); peers always speak TLS 1.3 (QUIC).
    #[arg(long, env = "ETCH_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    /// Lowest TLS version on the client URLs: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCH_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,
    /// Highest TLS version on the client URLs: TLS1.2 or TLS1.3 (empty: the newest).
    #[arg(long, env = "ETCH_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,
    /// Use generated certificates for peers (the default when no peer certificate is given).
    #[arg(long, env = "ETCH_PEER_AUTO_TLS", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub peer_auto_tls: bool,
    /// Interval of watch progress notifications (humantime). Default: 10m (etcd).
    #[arg(
        long,
        env = "ETCH_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m"
    )]
    pub experimental_watch_progress_notify_interval: String,
    /// Watchers one watch stream may hold.
    #[arg(long, env = "ETCH_MAX_WATCHERS_PER_STREAM", default_value_t = 10_000)]
    pub max_watchers_per_stream: usize,
    /// Watch responses buffered per stream before its watchers catch up from the store instead.
    #[arg(
        long,
        env = "ETCH_WATCH_STREAM_BUFFER_RESPONSES",
        default_value_t = 128
    )]
    pub watch_stream_buffer_responses: usize,
    /// How often the leader checkpoints remaining lease TTLs through consensus (humantime).
    #[arg(
        long,
        env = "ETCH_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m"
    )]
    pub experimental_lease_checkpoint_interval: String,
    /// WAL segment size in bytes (testing knob; minimum 64 KiB). Default: 64 MiB.
    #[arg(long, hide = true, env = "ETCH_EXPERIMENTAL_WAL_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub experimental_wal_segment_bytes: u64,
    /// Disk fault injection for tests (`etch_storage::faults`): before each WAL write, WAL
    /// fsync and store commit the member reads this file for faults to inject. Never use in
    /// production.
    #[arg(long, hide = true, env = "ETCH_DEBUG_DISK_FAULTS")]
    pub debug_disk_faults: Option<PathBuf>,
    /// Auth token type: `simple` (etcd's default), or
    /// `jwt,pub-key=<PEM>,priv-key=<PEM>,sign-method=<ES256|RS256|...>[,ttl=5m]` (etcd's JWT
    /// tokens: signed, self-contained, valid on every member holding the same keys).
    #[arg(long, env = "ETCH_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token lives without use (etcd default 300).
    #[arg(long, env = "ETCH_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of password hashes, 4..=31 (etcd default 10).
    #[arg(long, env = "ETCH_BCRYPT_COST", default_value_t = DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,
    /// Log level: debug, info, warn, error.
    #[arg(long, env = "ETCH_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format on stderr: `text` (human-readable lines) or `json` (one JSON object per line:
    /// `timestamp`, `level`, `target`, `message` and the event's fields, as etcd's zap logger
    /// writes `ts`, `level`, `caller`, `msg` and fields).
    #[arg(long, env = "ETCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// etcd's logger choice; accepted and ignored (etch always logs with tracing).
    #[arg(long, hide = true)]
    pub logger: Option<String>,
    /// etcd's log outputs; accepted and ignored (etch logs to stderr).
    #[arg(long, hide = true)]
    pub log_outputs: Option<String>,
    /// etcd's v2 API switch (`--enable-v2`, `--enable-v2=true`): etch serves no v2 API (etcd
    /// deprecated it in 3.4 and removed it in 3.6); accepted and ignored with a warning.
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_v2: Option<String>,
    /// etcd's YAML configuration file (etcd's keys: `name`, `data-dir`, `listen-client-urls`,
    /// `client-transport-security.cert-file`, ...). When given, other flags and environment
    /// variables are ignored, as in etcd. Read before the other flags (see [`sources`]).
    #[arg(long, env = "ETCH_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Directory of the WAL. Default: `<data-dir>/member/wal`.
    #[arg(long, env = "ETCH_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// etcd's disaster-recovery restart: this member starts as a one-member cluster from its
    /// own data (every other member is removed through raft), keeping its IDs and data.
    #[arg(long, env = "ETCH_FORCE_NEW_CLUSTER", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub force_new_cluster: bool,
    /// Refuse membership changes that would leave fewer started members than a quorum
    /// (etcd's default: true).
    #[arg(long, env = "ETCH_STRICT_RECONFIG_CHECK", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub strict_reconfig_check: bool,
    /// Most learners the cluster may have at once (etcd 3.6's flag; 3.5's fixed 1).
    #[arg(long, env = "ETCH_EXPERIMENTAL_MAX_LEARNERS", default_value_t = 1)]
    pub experimental_max_learners: usize,
    /// Maximum concurrent HTTP/2 streams per client connection on the client URLs. Default:
    /// unlimited (etcd: math.MaxUint32).
    #[arg(long, env = "ETCH_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Certificate revocation list (PEM) checked against client certificates.
    #[arg(long, env = "ETCH_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Certificate revocation list (PEM) checked against peer certificates.
    #[arg(long, env = "ETCH_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Accept peer certificates only with this Common Name (needs `--peer-client-cert-auth`).
    #[arg(long, env = "ETCH_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Accept peer certificates only valid for this host name (a DNS SAN or IP SAN; needs
    /// `--peer-client-cert-auth`).
    #[arg(long, env = "ETCH_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Automatic compaction: `periodic` (keep `--auto-compaction-retention` of history, a
    /// duration; a bare number is hours) or `revision` (keep that many revisions).
    #[arg(long, env = "ETCH_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Retention of automatic compaction; `0` disables it (etcd's default).
    #[arg(long, env = "ETCH_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Compare this member's KV hash with its peers' before serving clients; refuse to start
    /// when they differ (etcd's initial corruption check, `node/src/corrupt.rs`).
    #[arg(long, env = "ETCH_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub experimental_initial_corrupt_check: bool,
    /// Interval of the leader's check of every member's KV hash (raises the CORRUPT alarm on a
    /// mismatch); `0s` disables it (etcd's default).
    #[arg(
        long,
        env = "ETCH_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s"
    )]
    pub experimental_corrupt_check_time: String,
}
