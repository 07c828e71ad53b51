//! Command-line flags (etcd's names) and the validated, immutable [`Config`].
//!
//! Every flag is also read from the environment as `ETCH_<FLAG>` (upper case, `-` -> `_`).
//! Durations are humantime strings (`100ms`, `1s`); a bare number means milliseconds, as in
//! etcd. etcd flags etch does not need (`--logger`, `--log-outputs`, ...) are accepted and
//! ignored with a warning, so scripts written to start etcd start etch unchanged.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sha1::{Digest, Sha1};

/// The version of the etcd API etch implements, reported where etcd reports its version
/// (`Status.version`): clients such as kube-apiserver gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.17";

/// The cluster version etch reports (`Status`, `/version`'s `etcdcluster`): major.minor of
/// [`ETCD_API_VERSION`].
pub const CLUSTER_VERSION: &str = "3.5";

/// etcd's default client URL (`--listen-client-urls`).
pub const DEFAULT_CLIENT_URL: &str = "http://127.0.0.1:2379";

/// The native listener when neither `--listen-native-urls` nor `--listen-client-urls` is
/// given: a bare `etch` serves both protocols; a member started with etcd's flags serves the
/// native protocol only where told to.
pub const DEFAULT_NATIVE_URL: &str = "tcp://127.0.0.1:2378";

/// etcd's default backend quota (`DefaultQuotaBytes`): 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;

pub mod sources;

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
    /// Auth token type: `simple` (etcd's default), or
    /// `jwt,pub-key=<PEM>,priv-key=<PEM>,sign-method=<ES256|RS256|...>[,ttl=5m]` (etcd's JWT
    /// tokens: signed, self-contained, valid on every member holding the same keys).
    #[arg(long, env = "ETCH_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token lives without use (etcd default 300).
    #[arg(long, env = "ETCH_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of password hashes, 4..=31 (etcd default 10).
    #[arg(long, env = "ETCH_BCRYPT_COST", default_value_t = crate::auth::DEFAULT_BCRYPT_COST)]
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
    /// etcd's disaster-recovery restart as a one-member cluster. `false` is accepted; `true` is
    /// refused (exit 2): etch cannot change membership yet.
    #[arg(long, env = "ETCH_FORCE_NEW_CLUSTER", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub force_new_cluster: bool,
    /// Refuse membership changes that would leave fewer started members than a quorum
    /// (etcd's default: true).
    #[arg(long, env = "ETCH_STRICT_RECONFIG_CHECK", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub strict_reconfig_check: bool,
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

/// Validated configuration. Build with [`Config::from_flags`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Member name.
    pub name: String,
    /// Data directory; data lives in `<data_dir>/member/`.
    pub data_dir: PathBuf,
    /// Native protocol listen addresses.
    pub listen_native: Vec<SocketAddr>,
    /// etcd gRPC API listen addresses (`--listen-client-urls`).
    pub listen_client: Vec<SocketAddr>,
    /// Unix socket paths to serve the etcd gRPC API on (`unix://` or, with client TLS,
    /// `unixs://` client URLs; see [`crate::api::listener`]).
    pub listen_client_unix: Vec<std::path::PathBuf>,
    /// Metrics and health listen addresses (`--listen-metrics-urls`).
    pub listen_metrics: Vec<SocketAddr>,
    /// TLS on the client URLs (they are then `https://`).
    pub client_tls: Option<ClientTls>,
    /// The bootstrap membership, for MemberList (ID, name, peer URLs; client URLs for this
    /// member only: the others' come from their peer Hellos, see `NodeState::client_urls`).
    pub members: Vec<etch_protocol::etcdserverpb::Member>,
    /// This member's ID (etcd's derivation from peer URLs and token).
    pub member_id: u64,
    /// The cluster ID (etcd's derivation from the member IDs).
    pub cluster_id: u64,
    /// Voters of the initial cluster (member IDs).
    pub initial_members: Vec<u64>,
    /// The other members.
    pub peers: Vec<Peer>,
    /// Where to listen for peers (QUIC over UDP); used when there are peers.
    pub listen_peer: SocketAddr,
    /// Peer certificates; `None` = auto TLS (generated certificate, peers not verified).
    pub peer_tls: Option<PeerTls>,
    /// Heartbeat interval; one raft tick. Default 100 ms.
    pub heartbeat_interval: Duration,
    /// Election timeout. Default 1000 ms.
    pub election_timeout: Duration,
    /// Applied entries between raft log compactions. Default 10,000.
    pub snapshot_count: u64,
    /// Backend quota, bytes.
    pub quota_backend_bytes: u64,
    /// Maximum request size, bytes.
    pub max_request_bytes: usize,
    /// Maximum ops per Txn branch.
    pub max_txn_ops: usize,
    /// WAL segment size, bytes.
    pub wal_segment_bytes: u64,
    /// Watch limits.
    pub watch: crate::watch::WatchLimits,
    /// Smallest lease TTL, seconds: 1.5 x the election timeout, rounded up (etcd `minTTL`).
    pub min_lease_ttl: i64,
    /// Interval of lease TTL checkpoints. Default 5 min.
    pub lease_checkpoint_interval: Duration,
    /// How long a client request waits for its result before "request timed out"
    /// (etcd: 5 s + 2 x election timeout).
    pub request_timeout: Duration,
    /// Simple-token lifetime without use (`--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// bcrypt cost (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// Token type (`--auth-token`).
    pub auth_token: AuthToken,
    /// WAL directory (`--wal-dir`). Default: `<data_dir>/member/wal`.
    pub wal_dir: PathBuf,
    /// HTTP/2 streams per client connection (`--max-concurrent-streams`).
    pub max_concurrent_streams: u32,
    /// Automatic compaction (`--auto-compaction-mode`/`--auto-compaction-retention`); `None`
    /// when the retention is 0.
    pub auto_compaction: Option<AutoCompaction>,
    /// Compare KV hashes with the peers before serving (`--experimental-initial-corrupt-check`).
    pub initial_corrupt_check: bool,
    /// Interval of the leader's periodic KV hash comparison (`--experimental-corrupt-check-time`);
    /// `None` when disabled.
    pub corrupt_check_interval: Option<Duration>,
}

/// What automatic compaction keeps (etcd's `--auto-compaction-mode` and
/// `--auto-compaction-retention`; etcd v3.5 `server/etcdserver/api/v3compactor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much history: every `retention / 10` (or every hour once the retention is
    /// past an hour), compact to the revision that was current `retention` ago.
    Periodic(Duration),
    /// Keep this many revisions: every 5 minutes, compact to `current - retention`.
    Revision(i64),
}

impl AutoCompaction {
    /// Parses etcd's mode and retention; `Ok(None)` when the retention is zero (disabled).
    ///
    /// # Errors
    /// An unknown mode, or a retention that is not a duration (periodic: a bare number is
    /// hours, as in etcd) or not a revision count (revision).
    pub fn parse(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let d = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => humantime::parse_duration(retention).map_err(|e| e.to_string())?,
                };
                Ok((!d.is_zero()).then_some(AutoCompaction::Periodic(d)))
            }
            "revision" => {
                let r: i64 = retention
                    .parse()
                    .map_err(|_| format!("{retention:?} is not a number of revisions"))?;
                if r < 0 {
                    return Err("must be >= 0".into());
                }
                Ok((r > 0).then_some(AutoCompaction::Revision(r)))
            }
            other => Err(format!("unknown mode {other:?} (periodic or revision)")),
        }
    }
}

/// The auth token type (etcd's `--auth-token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthToken {
    /// Simple tokens: random, assigned through consensus, kept in memory
    /// (`--auth-token-ttl`).
    Simple,
    /// JWT: signed with `priv_key`, verified with `pub_key` (PEM files), algorithm
    /// `sign_method` (etcd's names: RS256/384/512, PS256/384/512, ES256/384, EdDSA), valid
    /// for `ttl` (etcd default 5 min).
    Jwt {
        /// Public key, PEM.
        pub_key: PathBuf,
        /// Private key, PEM.
        priv_key: PathBuf,
        /// Signing algorithm name.
        sign_method: String,
        /// Token lifetime.
        ttl: Duration,
    },
}

impl AuthToken {
    /// Parses etcd's `--auth-token` value.
    ///
    /// # Errors
    /// Unknown token types or options, a missing key or method, a bad TTL.
    pub fn parse(s: &str) -> Result<AuthToken, String> {
        let mut parts = s.split(',');
        match parts.next().unwrap_or_default() {
            "simple" if parts.next().is_none() => Ok(AuthToken::Simple),
            "jwt" => {
                let (mut pub_key, mut priv_key, mut method) = (None, None, None);
                let mut ttl = Duration::from_secs(300);
                for opt in parts {
                    let (k, v) = opt
                        .split_once('=')
                        .ok_or_else(|| format!("option {opt:?} is not key=value"))?;
                    match k {
                        "pub-key" => pub_key = Some(PathBuf::from(v)),
                        "priv-key" => priv_key = Some(PathBuf::from(v)),
                        "sign-method" => method = Some(v.to_owned()),
                        "ttl" => ttl = parse_duration(v)?,
                        other => return Err(format!("unknown jwt option {other:?}")),
                    }
                }
                Ok(AuthToken::Jwt {
                    pub_key: pub_key.ok_or("jwt needs pub-key=<file>")?,
                    priv_key: priv_key.ok_or("jwt needs priv-key=<file>")?,
                    sign_method: method.ok_or("jwt needs sign-method=<algorithm>")?,
                    ttl,
                })
            }
            other => Err(format!("unknown token type {other:?} (simple or jwt,...)")),
        }
    }
}

/// A peer's address: its member ID, the resolved socket address and the host named in its URL
/// (the TLS server name checked against its certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Member ID.
    pub id: u64,
    /// Resolved address of its peer URL.
    pub addr: SocketAddr,
    /// Host part of its peer URL.
    pub host: String,
}

/// Client TLS on the client URLs (etcd's `--cert-file`, `--key-file`, `--trusted-ca-file`,
/// `--client-cert-auth`, `--auto-tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// Certificate and key files, PEM; `None` with `--auto-tls` (a generated certificate).
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// CA(s) client certificates must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify client certificates.
    pub client_cert_auth: bool,
    /// TLS 1.2 cipher suites allowed (`--cipher-suites`); empty = rustls's defaults.
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version` (`TLS1.2` or `TLS1.3`).
    pub min_version: String,
    /// `--tls-max-version` (`TLS1.2`, `TLS1.3`, or empty = newest).
    pub max_version: String,
    /// Revoked client certificates (`--client-crl-file`, PEM CRLs).
    pub crl_file: Option<PathBuf>,
}

/// Verified peer TLS (etcd's `--peer-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// Certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Private key, PEM.
    pub key_file: PathBuf,
    /// CA(s) peers' certificates must chain to; `None` = peers' certificates not verified.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify client certificates from peers.
    pub client_cert_auth: bool,
    /// Revoked peer certificates (`--peer-crl-file`, PEM CRLs).
    pub crl_file: Option<PathBuf>,
    /// Only peers whose certificate has this Common Name (`--peer-cert-allowed-cn`).
    pub allowed_cn: Option<String>,
    /// Only peers whose certificate is valid for this host (`--peer-cert-allowed-hostname`).
    pub allowed_hostname: Option<String>,
}

/// A flag that failed validation; `etch` prints it and exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid --{flag} {value:?}: {reason}")]
pub struct ConfigError {
    /// The flag name.
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// Why it is wrong.
    pub reason: String,
}

/// The addresses of a comma-separated list of `scheme://host:port` URLs (flag `flag`); a URL
/// with another scheme is refused with `why`.
fn listen_addrs(
    flag: &'static str,
    urls: &str,
    scheme: &str,
    why: &str,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for u in urls.split(',').filter(|s| !s.is_empty()) {
        let (s, addr) = parse_url(u).map_err(|e| bad(flag, u, e))?;
        if s != scheme {
            return Err(bad(flag, u, why));
        }
        out.push(addr);
    }
    Ok(out)
}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Parses a humantime duration; a bare number is milliseconds (etcd's flag convention).
///
/// # Errors
/// A message for unparsable input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Splits `scheme://host:port` into (scheme, resolved address).
///
/// # Errors
/// A message when the URL has no scheme, no port, or does not resolve.
pub fn parse_url(url: &str) -> Result<(String, SocketAddr), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "expected scheme://host:port".to_owned())?;
    let hostport = rest.trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    Ok((scheme.to_owned(), addr))
}

/// The socket path a `unix://` or `unixs://` URL names, or `None` for another scheme. As in
/// etcd (`transport.NewListener` listens on the URL's host): `unix://localhost:2379` is the
/// file `localhost:2379` in the working directory, `unix:///run/etch.sock` an absolute path.
pub fn unix_socket_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("unix://")
        .or_else(|| url.strip_prefix("unixs://"))?;
    Some(std::path::PathBuf::from(rest))
}

/// etcd's member ID: the first 8 bytes (big-endian) of SHA-1(sorted peer URLs joined ++ token)
/// (etcd `membership.NewMember`).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.join("").as_bytes());
    h.update(token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// etcd's cluster ID: the first 8 bytes of SHA-1 over the sorted member IDs, each 8 bytes
/// big-endian (etcd `RaftCluster.genID`).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// What `etch --version` prints: etcd's lines first (tools parse `etcd Version: X.Y.Z`), then
/// etch's own version.
pub fn version_text() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        "etcd Version: {ETCD_API_VERSION}\nGit SHA: etch-{v}\nGo Version: (etch is written in Rust)\n\
         Go OS/Arch: {}/{arch}\netch Version: {v}\n",
        std::env::consts::OS,
        v = env!("CARGO_PKG_VERSION"),
    )
}

impl Config {
    /// Validates `flags` into a config.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad flag.
    pub fn from_flags(f: &Flags) -> Result<Config, ConfigError> {
        for (used, name) in [
            (f.logger.is_some(), "logger"),
            (f.log_outputs.is_some(), "log-outputs"),
            (f.enable_v2.is_some(), "enable-v2"),
        ] {
            if used {
                tracing::warn!(flag = name, "etcd flag accepted and ignored by etch");
            }
        }
        let heartbeat_interval = parse_duration(&f.heartbeat_interval)
            .map_err(|e| bad("heartbeat-interval", &f.heartbeat_interval, e))?;
        let election_timeout = parse_duration(&f.election_timeout)
            .map_err(|e| bad("election-timeout", &f.election_timeout, e))?;
        if heartbeat_interval.is_zero() {
            return Err(bad(
                "heartbeat-interval",
                &f.heartbeat_interval,
                "must be > 0",
            ));
        }
        // etcd: election timeout must be at least 5x the heartbeat interval.
        if election_timeout < heartbeat_interval * 5 {
            return Err(bad(
                "election-timeout",
                &f.election_timeout,
                "must be at least 5 x --heartbeat-interval",
            ));
        }
        let native_urls = match &f.listen_native_urls {
            Some(urls) => urls.as_str(),
            None if f.listen_client_urls == DEFAULT_CLIENT_URL => DEFAULT_NATIVE_URL,
            None => "",
        };
        let listen_native = listen_addrs(
            "listen-native-urls",
            native_urls,
            "tcp",
            "scheme must be tcp",
        )?;
        let listen_metrics = listen_addrs(
            "listen-metrics-urls",
            &f.listen_metrics_urls,
            "http",
            "only http:// is served",
        )?;
        // One scheme for every client URL: https when client TLS is configured.
        let cipher_suites: Vec<String> = f
            .cipher_suites
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        crate::api::tls::provider(&cipher_suites)
            .map_err(|e| bad("cipher-suites", &f.cipher_suites, e))?;
        crate::api::tls::versions(&f.tls_min_version, &f.tls_max_version, &cipher_suites)
            .map_err(|e| bad("tls-min-version", &f.tls_min_version, e))?;
        let tls = |cert_and_key| ClientTls {
            cert_and_key,
            trusted_ca_file: f.trusted_ca_file.clone(),
            client_cert_auth: f.client_cert_auth,
            cipher_suites: cipher_suites.clone(),
            min_version: f.tls_min_version.clone(),
            max_version: f.tls_max_version.clone(),
            crl_file: f.client_crl_file.clone(),
        };
        let client_tls = match (&f.cert_file, &f.key_file) {
            (Some(c), Some(k)) => Some(tls(Some((c.clone(), k.clone())))),
            (None, None) if f.auto_tls => Some(tls(None)),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "cert-file",
                    &format!("{:?}", f.cert_file),
                    "--cert-file and --key-file go together",
                ));
            }
        };
        if f.client_cert_auth && f.trusted_ca_file.is_none() {
            return Err(bad("client-cert-auth", "true", "needs --trusted-ca-file"));
        }
        let (scheme, why) = if client_tls.is_some() {
            (
                "https",
                "client TLS is configured: client URLs must be https://",
            )
        } else {
            (
                "http",
                "https:// needs --cert-file and --key-file (or --auto-tls)",
            )
        };
        let (unix_urls, tcp_urls): (Vec<&str>, Vec<&str>) = f
            .listen_client_urls
            .split(',')
            .filter(|s| !s.is_empty())
            .partition(|u| u.starts_with("unix://") || u.starts_with("unixs://"));
        let listen_client = listen_addrs("listen-client-urls", &tcp_urls.join(","), scheme, why)?;
        let mut listen_client_unix = Vec::new();
        for u in unix_urls {
            if u.starts_with("unixs://") != client_tls.is_some() {
                return Err(bad(
                    "listen-client-urls",
                    u,
                    "unixs:// when client TLS is configured, unix:// otherwise",
                ));
            }
            match unix_socket_path(u) {
                Some(p) if !p.as_os_str().is_empty() => listen_client_unix.push(p),
                _ => return Err(bad("listen-client-urls", u, "no socket path")),
            }
        }
        if f.initial_cluster_state != "new" && f.initial_cluster_state != "existing" {
            return Err(bad(
                "initial-cluster-state",
                &f.initial_cluster_state,
                "must be new or existing",
            ));
        }
        let advertised: Vec<String> = f
            .initial_advertise_peer_urls
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let initial_cluster = f
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", f.name, f.initial_advertise_peer_urls));
        // name -> peer URLs, in flag order.
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for part in initial_cluster.split(',').filter(|s| !s.is_empty()) {
            let (n, u) = part
                .split_once('=')
                .ok_or_else(|| bad("initial-cluster", part, "expected name=url"))?;
            match members.iter_mut().find(|(m, _)| m == n) {
                Some((_, urls)) => urls.push(u.to_owned()),
                None => members.push((n.to_owned(), vec![u.to_owned()])),
            }
        }
        let Some((_, own_urls)) = members.iter().find(|(n, _)| *n == f.name) else {
            return Err(bad(
                "initial-cluster",
                &initial_cluster,
                format!("has no member named {:?} (--name)", f.name),
            ));
        };
        let (mut a, mut b) = (own_urls.clone(), advertised.clone());
        a.sort();
        b.sort();
        if a != b {
            return Err(bad(
                "initial-cluster",
                &initial_cluster,
                format!(
                    "URLs of {:?} differ from --initial-advertise-peer-urls",
                    f.name
                ),
            ));
        }
        let initial_members: Vec<u64> = members
            .iter()
            .map(|(_, urls)| member_id(urls, &f.initial_cluster_token))
            .collect();
        let member_id = member_id(own_urls, &f.initial_cluster_token);
        let mut peers = Vec::new();
        for (name, urls) in &members {
            if *name == f.name {
                continue;
            }
            let (_, addr) = parse_url(&urls[0]).map_err(|e| bad("initial-cluster", &urls[0], e))?;
            let host = urls[0]
                .split_once("://")
                .map_or(urls[0].as_str(), |(_, r)| r)
                .rsplit_once(':')
                .map_or("localhost", |(h, _)| h)
                .trim_matches(|c| c == '[' || c == ']')
                .to_owned();
            peers.push(Peer {
                id: self::member_id(urls, &f.initial_cluster_token),
                addr,
                host,
            });
        }
        let peer_tls = match (&f.peer_cert_file, &f.peer_key_file) {
            (Some(c), Some(k)) => Some(PeerTls {
                cert_file: c.clone(),
                key_file: k.clone(),
                trusted_ca_file: f.peer_trusted_ca_file.clone(),
                client_cert_auth: f.peer_client_cert_auth,
                crl_file: f.peer_crl_file.clone(),
                allowed_cn: f.peer_cert_allowed_cn.clone(),
                allowed_hostname: f.peer_cert_allowed_hostname.clone(),
            }),
            (None, None) => None,
            (Some(c), None) => {
                return Err(bad(
                    "peer-cert-file",
                    &c.display().to_string(),
                    "needs --peer-key-file",
                ));
            }
            (None, Some(k)) => {
                return Err(bad(
                    "peer-key-file",
                    &k.display().to_string(),
                    "needs --peer-cert-file",
                ));
            }
        };
        for (given, flag) in [
            (f.peer_crl_file.is_some(), "peer-crl-file"),
            (f.peer_cert_allowed_cn.is_some(), "peer-cert-allowed-cn"),
            (
                f.peer_cert_allowed_hostname.is_some(),
                "peer-cert-allowed-hostname",
            ),
        ] {
            if given && !f.peer_client_cert_auth {
                return Err(bad(
                    flag,
                    "",
                    "needs --peer-client-cert-auth (verified peer certificates)",
                ));
            }
        }
        if f.client_crl_file.is_some() && !f.client_cert_auth {
            return Err(bad("client-crl-file", "", "needs --client-cert-auth"));
        }
        if f.peer_client_cert_auth && (peer_tls.is_none() || f.peer_trusted_ca_file.is_none()) {
            return Err(bad(
                "peer-client-cert-auth",
                "true",
                "needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file",
            ));
        }
        let listen_url = f.listen_peer_urls.split(',').next().unwrap_or_default();
        // Peers speak QUIC over UDP: a unix socket can only name a member that has no peers
        // (etcd's e2e boots one member on `unix://` peer URLs).
        let listen_peer = if listen_url.starts_with("unix://") || listen_url.starts_with("unixs://")
        {
            if !peers.is_empty() {
                return Err(bad(
                    "listen-peer-urls",
                    listen_url,
                    "unix:// peer URLs are served only by a one-member cluster (peers use QUIC over UDP)",
                ));
            }
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            parse_url(listen_url)
                .map_err(|e| bad("listen-peer-urls", listen_url, e))?
                .1
        };
        let cluster_id = cluster_id(&initial_members);
        let members = members
            .iter()
            .map(|(name, urls)| etch_protocol::etcdserverpb::Member {
                id: self::member_id(urls, &f.initial_cluster_token),
                name: name.clone(),
                peer_ur_ls: urls.clone(),
                client_ur_ls: if *name == f.name {
                    f.advertise_client_urls
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                } else {
                    Vec::new()
                },
                is_learner: false,
            })
            .collect();
        let data_dir = f
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etch", f.name)));
        let progress = &f.experimental_watch_progress_notify_interval;
        let progress_notify_interval = parse_duration(progress)
            .map_err(|e| bad("experimental-watch-progress-notify-interval", progress, e))?;
        if progress_notify_interval.is_zero() || f.watch_stream_buffer_responses == 0 {
            return Err(bad(
                "experimental-watch-progress-notify-interval",
                progress,
                "watch interval and stream buffer must be > 0",
            ));
        }
        let watch = crate::watch::WatchLimits {
            max_watchers_per_stream: f.max_watchers_per_stream,
            stream_buffer_responses: f.watch_stream_buffer_responses,
            max_response_bytes: f.max_request_bytes as usize,
            progress_notify_interval,
        };
        let cp = &f.experimental_lease_checkpoint_interval;
        let lease_checkpoint_interval =
            parse_duration(cp).map_err(|e| bad("experimental-lease-checkpoint-interval", cp, e))?;
        if lease_checkpoint_interval.is_zero() {
            return Err(bad(
                "experimental-lease-checkpoint-interval",
                cp,
                "must be > 0",
            ));
        }
        if f.snapshot_count == 0 {
            return Err(bad("snapshot-count", "0", "must be > 0"));
        }
        let auth_token =
            AuthToken::parse(&f.auth_token).map_err(|e| bad("auth-token", &f.auth_token, e))?;
        if let AuthToken::Jwt { .. } = &auth_token {
            crate::auth::Jwt::load(&auth_token).map_err(|e| bad("auth-token", &f.auth_token, e))?;
        }
        if f.auth_token_ttl == 0 {
            return Err(bad("auth-token-ttl", "0", "must be > 0"));
        }
        if !(4..=31).contains(&f.bcrypt_cost) {
            return Err(bad(
                "bcrypt-cost",
                &f.bcrypt_cost.to_string(),
                "must be between 4 and 31",
            ));
        }
        let auto_compaction =
            AutoCompaction::parse(&f.auto_compaction_mode, &f.auto_compaction_retention)
                .map_err(|e| bad("auto-compaction-retention", &f.auto_compaction_retention, e))?;
        let cc = &f.experimental_corrupt_check_time;
        let corrupt_check_interval =
            parse_duration(cc).map_err(|e| bad("experimental-corrupt-check-time", cc, e))?;
        if f.force_new_cluster {
            return Err(bad(
                "force-new-cluster",
                "true",
                "not supported by etch yet (membership changes are not implemented): restart the \
                 surviving members with the same --initial-cluster instead",
            ));
        }
        let wal_dir = f
            .wal_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("member").join("wal"));
        Ok(Config {
            wal_dir,
            max_concurrent_streams: f.max_concurrent_streams,
            auto_compaction,
            initial_corrupt_check: f.experimental_initial_corrupt_check,
            corrupt_check_interval: (!corrupt_check_interval.is_zero())
                .then_some(corrupt_check_interval),
            name: f.name.clone(),
            data_dir,
            listen_native,
            listen_client,
            listen_client_unix,
            listen_metrics,
            client_tls,
            members,
            member_id,
            cluster_id,
            initial_members,
            peers,
            listen_peer,
            peer_tls,
            heartbeat_interval,
            election_timeout,
            snapshot_count: f.snapshot_count,
            quota_backend_bytes: if f.quota_backend_bytes == 0 {
                DEFAULT_QUOTA_BACKEND_BYTES
            } else {
                f.quota_backend_bytes
            },
            max_request_bytes: f.max_request_bytes as usize,
            max_txn_ops: f.max_txn_ops as usize,
            wal_segment_bytes: f.experimental_wal_segment_bytes,
            watch,
            min_lease_ttl: (election_timeout.as_millis() as i64 * 3 / 2 + 999) / 1000,
            lease_checkpoint_interval,
            request_timeout: Duration::from_secs(5) + election_timeout * 2,
            auth_token_ttl: Duration::from_secs(f.auth_token_ttl),
            bcrypt_cost: f.bcrypt_cost,
            auth_token,
        })
    }

    /// Raft ticks per election timeout (at least 2 more than the heartbeat's 1).
    pub fn election_ticks(&self) -> usize {
        let t = self.election_timeout.as_millis() / self.heartbeat_interval.as_millis().max(1);
        usize::try_from(t).unwrap_or(usize::MAX).max(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_urls_name_the_socket_as_etcd_does() {
        assert_eq!(
            unix_socket_path("unix://localhost:2379"),
            Some("localhost:2379".into())
        );
        assert_eq!(
            unix_socket_path("unixs:///run/etch.sock"),
            Some("/run/etch.sock".into())
        );
        assert_eq!(unix_socket_path("http://127.0.0.1:2379"), None);
    }

    fn flags(args: &[&str]) -> Flags {
        let mut v = vec!["etch"];
        v.extend_from_slice(args);
        Flags::parse_from(v)
    }

    #[test]
    fn ids_match_etcd_for_the_default_member() {
        // etcd's well-known default: `etcd` with no flags is member 8e9e05c52164694d of
        // cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".into()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
        let c = Config::from_flags(&flags(&[])).unwrap();
        assert_eq!(c.member_id, id);
        assert_eq!(c.data_dir, PathBuf::from("default.etch"));
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value_as_in_go() {
        let f = flags(&[
            "--client-cert-auth",
            "--client-cert-auth",
            "--name",
            "a",
            "--name=b",
        ]);
        assert!(f.client_cert_auth);
        assert_eq!(f.name, "b");
    }

    #[test]
    fn durations_follow_etcd_conventions() {
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        let c = Config::from_flags(&flags(&[
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500ms",
        ]))
        .unwrap();
        assert_eq!(c.election_ticks(), 10);
        let e = Config::from_flags(&flags(&["--election-timeout", "200ms"])).unwrap_err();
        assert!(e.to_string().contains("election-timeout"), "{e}");
        assert!(Config::from_flags(&flags(&["--heartbeat-interval", "soon"])).is_err());
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
