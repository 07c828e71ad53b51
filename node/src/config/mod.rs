//! Command-line flags (etcd's names) and the validated, immutable [`Config`].
//!
//! Every flag is also read from the environment as `ETCH_<FLAG>` (upper case, `-` -> `_`).
//! Durations are humantime strings (`100ms`, `1s`); a bare number means milliseconds, as in
//! etcd. etcd flags etch does not need (`--logger`, `--log-outputs`, ...) are accepted and
//! ignored with a warning, so scripts written to start etcd start etch unchanged.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

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

mod flags;
pub mod sources;
pub mod tls;
mod validate;

pub use flags::Flags;

/// bcrypt cost etcd uses by default (`--bcrypt-cost`).
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// Limits of the watch service (named config values, each with its unit).
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// Watchers one stream may hold. Default 10,000.
    pub max_watchers_per_stream: usize,
    /// Responses buffered per stream before its watchers fall back to catching up from the
    /// store. Default 128.
    pub stream_buffer_responses: usize,
    /// Above this size a response of a `fragment` watch is split, bytes. Default 1.5 MiB.
    pub max_response_bytes: usize,
    /// Interval of progress notifications to synced `progress_notify` watchers. Default 10 min
    /// (etcd `--experimental-watch-progress-notify-interval`).
    pub progress_notify_interval: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            max_watchers_per_stream: 10_000,
            stream_buffer_responses: 128,
            max_response_bytes: 1_572_864,
            progress_notify_interval: Duration::from_secs(600),
        }
    }
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
    /// Disk fault file for tests (`--debug-disk-faults`), `None` normally.
    pub disk_fault_file: Option<std::path::PathBuf>,
    /// Watch limits.
    pub watch: WatchLimits,
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
    /// `--initial-cluster-state=existing`: a new data dir joins a running cluster (it asks the
    /// peers of `--initial-cluster` for the cluster and its own member ID).
    pub join_existing: bool,
    /// `--strict-reconfig-check` (default true).
    pub strict_reconfig_check: bool,
    /// `--experimental-max-learners` (default 1).
    pub max_learners: usize,
    /// `--force-new-cluster`.
    pub force_new_cluster: bool,
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

impl Peer {
    /// Member `id` reached at the first of its peer URLs `urls`.
    ///
    /// # Errors
    /// The URL has no scheme or port, or does not resolve.
    pub fn new(id: u64, urls: &[String]) -> Result<Peer, String> {
        let url = urls.first().ok_or_else(|| "no peer URL".to_owned())?;
        let (_, addr) = parse_url(url)?;
        let host = url
            .split_once("://")
            .map_or(url.as_str(), |(_, r)| r)
            .rsplit_once(':')
            .map_or("localhost", |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        Ok(Peer { id, addr, host })
    }
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

pub use etch_storage::members::{cluster_id, member_id};

/// What `etch --version` prints: etcd's lines first (tools parse `etcd Version: X.Y.Z`), then
/// etch's own version. `Git SHA:` is the commit the binary was built from when the build set
/// `ETCH_GIT_SHA` (`tools/scripts/build-pgo.sh` does: the short commit, `-dirty` when the
/// sources differed from it), else `etch-` and the version.
pub fn version_text() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        "etcd Version: {ETCD_API_VERSION}\nGit SHA: {sha}\nGo Version: (etch is written in Rust)\n\
         Go OS/Arch: {}/{arch}\netch Version: {v}\n",
        std::env::consts::OS,
        sha = option_env!("ETCH_GIT_SHA").unwrap_or(concat!("etch-", env!("CARGO_PKG_VERSION"))),
        v = env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

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
