//! `etchctl`: the command-line client, with etcdctl's command shapes, flags and output.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use etch_tools::client::prefix_end;
use etch_tools::output::{self, Format};
use etch_tools::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use etch_tools::pb::range_request::{SortOrder, SortTarget};
use etch_tools::pb::request_op::Request as Op;
use etch_tools::pb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use etch_tools::{Client, ClientError};

#[derive(Parser)]
#[command(
    name = "etchctl",
    version,
    about = "A command-line client for etch (etcdctl's commands)"
)]
struct Cli {
    /// Comma-separated endpoints (`host:port` or URLs).
    #[arg(
        long,
        global = true,
        env = "ETCHCTL_ENDPOINTS",
        default_value = "127.0.0.1:2378"
    )]
    endpoints: String,
    /// Output format.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        value_enum,
        default_value = "simple"
    )]
    write_out: Format,
    /// Dial timeout (humantime).
    #[arg(long, global = true, default_value = "2s")]
    dial_timeout: String,
    /// Timeout of one command (humantime).
    #[arg(long, global = true, default_value = "5s")]
    command_timeout: String,
    /// TLS: CA bundle that signs the server's certificate.
    #[arg(long, id = "tls_cacert", global = true, env = "ETCHCTL_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// TLS: client certificate (with --key).
    #[arg(long = "cert", id = "tls_cert", global = true, env = "ETCHCTL_CERT")]
    cert: Option<std::path::PathBuf>,
    /// TLS: client private key (with --cert).
    #[arg(long = "key", id = "tls_key", global = true, env = "ETCHCTL_KEY")]
    key: Option<std::path::PathBuf>,
    /// TLS: accept any server certificate (encrypted but not authenticated).
    #[arg(long, global = true)]
    insecure_skip_tls_verify: bool,
    /// Authenticate as `name:password` (or `name` with --password).
    #[arg(long = "user", id = "auth_user", global = true, env = "ETCHCTL_USER")]
    user: Option<String>,
    /// Password for --user.
    #[arg(
        long = "password",
        id = "auth_password",
        global = true,
        env = "ETCHCTL_PASSWORD"
    )]
    password: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Puts the given key into the store (value from stdin when omitted).
    Put(PutArgs),
    /// Gets the key or a range of keys.
    Get(GetArgs),
    /// Removes the specified key or range of keys [key, range_end).
    Del(DelArgs),
    /// Txn processes all the requests in one transaction (read from stdin).
    Txn {
        /// Input from an interactive prompt.
        #[arg(short, long)]
        interactive: bool,
    },
    /// Compacts the event history in etch.
    Compaction {
        /// Revision to compact to.
        revision: i64,
        /// Wait for the compaction to be physically applied (always the case in etch).
        #[arg(long)]
        physical: bool,
    },
    /// Lease related commands.
    Lease {
        #[command(subcommand)]
        cmd: LeaseCmd,
    },
    /// Watches events on a key or prefix (until interrupted, or canceled by the server).
    Watch(WatchArgs),
    /// Endpoint related commands.
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Enable or disable authentication.
    Auth {
        #[command(subcommand)]
        cmd: etch_tools::authcmd::AuthCmd,
    },
    /// User related commands.
    User {
        #[command(subcommand)]
        cmd: etch_tools::authcmd::UserCmd,
    },
    /// Role related commands.
    Role {
        #[command(subcommand)]
        cmd: etch_tools::authcmd::RoleCmd,
    },
    /// Snapshot files (taken with `etcdctl snapshot save` from etch or etcd): status and
    /// restore into a new data dir. Local: no member is contacted.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Prints the snapshot's hash, revision, total keys and size (etcdutl's status).
    Status { file: PathBuf },
    /// Builds a new member data dir from a snapshot (etcdutl's restore flags).
    Restore {
        file: PathBuf,
        /// This member's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Every member of the new cluster, name=peer-url,...
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// The new cluster's token.
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// This member's peer URLs.
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// The data dir to create (default `<name>.etch`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Restore a file without (or with a wrong) trailing SHA-256.
        #[arg(long)]
        skip_hash_check: bool,
    },
}

/// Runs a snapshot command.
fn snapshot(cmd: &SnapshotCmd, fmt: Format) -> Result<String, String> {
    use etch_tools::snapshot as s;
    let read = |f: &PathBuf| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()));
    match cmd {
        SnapshotCmd::Status { file } => {
            let bytes = read(file)?;
            let db = s::verified_db(&bytes, true)?;
            let st =
                s::status(db).map_err(|e| format!("snapshot file integrity check failed: {e}"))?;
            Ok(s::status_text(&st, fmt))
        }
        SnapshotCmd::Restore {
            file,
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            data_dir,
            skip_hash_check,
        } => {
            let bytes = read(file)?;
            s::restore(
                &bytes,
                *skip_hash_check,
                &s::RestoreTo {
                    name: name.clone(),
                    initial_cluster: initial_cluster.clone(),
                    token: initial_cluster_token.clone(),
                    advertise_peer_urls: initial_advertise_peer_urls.clone(),
                    data_dir: data_dir
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(format!("{name}.etch"))),
                },
            )
        }
    }
}

/// How to connect, from the global flags.
fn connect_options(cli: &Cli, dial: Duration) -> Result<etch_tools::ConnectOptions, String> {
    let user = match (&cli.user, &cli.password) {
        (None, _) => None,
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (Some(u), None) => match u.split_once(':') {
            Some((n, p)) => Some((n.to_owned(), p.to_owned())),
            None => return Err("--user needs name:password (or --password)".into()),
        },
    };
    Ok(etch_tools::ConnectOptions {
        tls: etch_tools::TlsFiles {
            ca: cli.cacert.clone(),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
            insecure_skip_verify: cli.insecure_skip_tls_verify,
        },
        user,
        dial_timeout: dial,
    })
}

#[derive(Subcommand)]
enum LeaseCmd {
    /// Creates leases (TTL in seconds).
    Grant { ttl: i64 },
    /// Revokes leases (ID in hex).
    Revoke { id: String },
    /// Gets lease information.
    Timetolive {
        id: String,
        /// Get keys attached to this lease.
        #[arg(long)]
        keys: bool,
    },
    /// Lists all active leases.
    List,
    /// Keeps leases alive (renew).
    KeepAlive {
        id: String,
        /// Resets the keep-alive time to its original value and exits immediately.
        #[arg(long)]
        once: bool,
    },
}

fn lease_id(s: &str) -> Result<i64, String> {
    i64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("bad lease ID arg ({e}), expecting ID in Hex"))
}

/// etcdctl's lease commands and their output.
async fn lease(c: &Client, cmd: &LeaseCmd, fmt: Format, out: &mut String) -> Result<(), String> {
    use etch_tools::pb::{
        LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    };
    let e = |e: ClientError| e.to_string();
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let r = c
                .lease_grant(LeaseGrantRequest { ttl: *ttl, id: 0 })
                .await
                .map_err(e)?;
            match fmt {
                Format::Json => out.push_str(&json_line(serde_json::json!({"header": output::header_json(&r.header), "ID": r.id, "TTL": r.ttl}))),
                _ => out.push_str(&format!("lease {:x} granted with TTL({}s)\n", r.id, r.ttl)),
            }
        }
        LeaseCmd::Revoke { id } => {
            let id = lease_id(id)?;
            c.lease_revoke(LeaseRevokeRequest { id }).await.map_err(e)?;
            out.push_str(&format!("lease {id:x} revoked\n"));
        }
        LeaseCmd::Timetolive { id, keys } => {
            let id = lease_id(id)?;
            let r = c
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: *keys })
                .await
                .map_err(e)?;
            if fmt == Format::Json {
                out.push_str(&json_line(serde_json::json!({"cluster_id": r.header.map_or(0, |h| h.cluster_id), "member_id": r.header.map_or(0, |h| h.member_id), "revision": r.header.map_or(0, |h| h.revision), "raft_term": r.header.map_or(0, |h| h.raft_term), "id": r.id, "ttl": r.ttl, "granted-ttl": r.granted_ttl, "keys": r.keys.iter().map(|k| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k)).collect::<Vec<_>>()})));
            } else if r.granted_ttl == 0 && r.ttl == -1 {
                out.push_str(&format!("lease {id:x} already expired\n"));
            } else {
                out.push_str(&format!(
                    "lease {id:x} granted with TTL({}s), remaining({}s)",
                    r.granted_ttl, r.ttl
                ));
                if *keys {
                    let ks: Vec<String> = r
                        .keys
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).to_string())
                        .collect();
                    out.push_str(&format!(", attached keys([{}])", ks.join(" ")));
                }
                out.push('\n');
            }
        }
        LeaseCmd::List => {
            let r = c.lease_leases().await.map_err(e)?;
            out.push_str(&format!("found {} leases\n", r.leases.len()));
            for l in r.leases {
                out.push_str(&format!("{:x}\n", l.id));
            }
        }
        LeaseCmd::KeepAlive { id, once } => {
            use std::io::Write as _;
            let id = lease_id(id)?;
            loop {
                let r = c
                    .lease_keep_alive(LeaseKeepAliveRequest { id })
                    .await
                    .map_err(e)?;
                if r.ttl <= 0 {
                    return Err(format!("lease {id:x} expired or revoked."));
                }
                let line = format!("lease {id:x} keepalived with TTL({})\n", r.ttl);
                if *once {
                    out.push_str(&line);
                    return Ok(());
                }
                let mut so = std::io::stdout().lock();
                let _ = so.write_all(line.as_bytes());
                let _ = so.flush();
                drop(so);
                tokio::time::sleep(Duration::from_millis((r.ttl as u64 * 1000 / 3).max(100))).await;
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Prints the status of the endpoints in `--endpoints`.
    Status,
}

#[derive(Args, Clone)]
struct PutArgs {
    key: String,
    value: Option<String>,
    /// Lease ID (hexadecimal) to attach to the key.
    #[arg(long, default_value = "0")]
    lease: String,
    /// Return the previous key-value pair.
    #[arg(long)]
    prev_kv: bool,
    /// Update the key using its current value.
    #[arg(long)]
    ignore_value: bool,
    /// Update the key using its current lease.
    #[arg(long)]
    ignore_lease: bool,
}

#[derive(Args, Clone)]
struct GetArgs {
    key: String,
    range_end: Option<String>,
    /// Get keys with matching prefix.
    #[arg(long)]
    prefix: bool,
    /// Get keys that are greater than or equal to the given key (byte order).
    #[arg(long)]
    from_key: bool,
    /// Specify the kv revision.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Maximum number of results.
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Sort target: CREATE, KEY, MODIFY, VALUE, or VERSION.
    #[arg(long, default_value = "")]
    sort_by: String,
    /// Order of results: ASCEND or DESCEND.
    #[arg(long, default_value = "")]
    order: String,
    /// Get only the keys.
    #[arg(long)]
    keys_only: bool,
    /// Get only the count.
    #[arg(long)]
    count_only: bool,
    /// Only write values when using the "simple" output format.
    #[arg(long)]
    print_value_only: bool,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l")]
    consistency: String,
}

#[derive(Args, Clone)]
struct WatchArgs {
    key: String,
    range_end: Option<String>,
    /// Watch on a prefix.
    #[arg(long)]
    prefix: bool,
    /// Revision to start watching from.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Get the previous key-value pair before the event happens.
    #[arg(long)]
    prev_kv: bool,
    /// Get periodic watch progress notifications from the server.
    #[arg(long)]
    progress_notify: bool,
}

#[derive(Args, Clone)]
struct DelArgs {
    key: String,
    range_end: Option<String>,
    /// Delete keys with matching prefix.
    #[arg(long)]
    prefix: bool,
    /// Return deleted key-value pairs.
    #[arg(long)]
    prev_kv: bool,
    /// Delete keys that are greater than or equal to the given key (byte order).
    #[arg(long)]
    from_key: bool,
}

/// An operation inside `txn`, parsed with the same flags as the top-level command.
#[derive(Parser)]
#[command(no_binary_name = true)]
enum TxnOp {
    Get(GetArgs),
    Put(PutArgs),
    Del(DelArgs),
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn range_of(key: &str, end: &Option<String>, prefix: bool, from_key: bool) -> (Bytes, Bytes) {
    let mut k = b(key);
    let e = if prefix {
        if k.is_empty() {
            k = Bytes::from_static(b"\0");
            Bytes::from_static(b"\0")
        } else {
            Bytes::from(prefix_end(&k))
        }
    } else if from_key {
        if k.is_empty() {
            k = Bytes::from_static(b"\0");
        }
        Bytes::from_static(b"\0")
    } else {
        end.as_deref().map(b).unwrap_or_default()
    };
    (k, e)
}

fn get_request(a: &GetArgs) -> Result<RangeRequest, String> {
    let (key, range_end) = range_of(&a.key, &a.range_end, a.prefix, a.from_key);
    let order = match a.order.to_uppercase().as_str() {
        "" => SortOrder::None,
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        o => return Err(format!("bad sort order {o}")),
    };
    let target = match a.sort_by.to_uppercase().as_str() {
        "" | "KEY" => SortTarget::Key,
        "CREATE" => SortTarget::Create,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        t => return Err(format!("bad sort target {t}")),
    };
    // clientv3.WithSort: ascending by key is the natural order.
    let order = if target == SortTarget::Key && order == SortOrder::Ascend {
        SortOrder::None
    } else {
        order
    };
    let serializable = match a.consistency.as_str() {
        "l" => false,
        "s" => true,
        c => return Err(format!("unknown consistency flag {c:?}")),
    };
    Ok(RangeRequest {
        key,
        range_end,
        limit: a.limit,
        revision: a.rev,
        sort_order: order as i32,
        sort_target: target as i32,
        serializable,
        keys_only: a.keys_only,
        count_only: a.count_only,
        ..Default::default()
    })
}

fn put_request(a: &PutArgs, value: String) -> Result<PutRequest, String> {
    let lease = i64::from_str_radix(a.lease.trim_start_matches("0x"), 16)
        .map_err(|e| format!("bad lease ID ({e}), expecting ID in Hex"))?;
    Ok(PutRequest {
        key: b(&a.key),
        value: b(&value),
        lease,
        prev_kv: a.prev_kv,
        ignore_value: a.ignore_value,
        ignore_lease: a.ignore_lease,
    })
}

fn del_request(a: &DelArgs) -> DeleteRangeRequest {
    let (key, range_end) = range_of(&a.key, &a.range_end, a.prefix, a.from_key);
    DeleteRangeRequest {
        key,
        range_end,
        prev_kv: a.prev_kv,
    }
}

/// Splits a line into words; double-quoted words may hold spaces and Go escapes (etcdctl's
/// `argify`).
fn argify(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let mut w = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote in {line:?}")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => w.push('\n'),
                        Some('t') => w.push('\t'),
                        Some(x) => w.push(x),
                        None => return Err(format!("bad escape in {line:?}")),
                    },
                    Some(x) => w.push(x),
                }
            }
        } else {
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() {
                    break;
                }
                w.push(x);
                chars.next();
            }
        }
        out.push(w);
    }
    Ok(out)
}

/// Parses `target("key") op "value"` (etcdctl's `parseCompare`).
fn parse_compare(line: &str) -> Result<Compare, String> {
    let bad = || format!("malformed comparison: {line}");
    let (target, rest) = line.split_once('(').ok_or_else(bad)?;
    let (key_part, rest) = rest.split_once(')').ok_or_else(bad)?;
    let key = argify(key_part)?.pop().ok_or_else(bad)?;
    let words = argify(rest)?;
    let [op, val] = words.as_slice() else {
        return Err(bad());
    };
    let result = match op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => return Err(format!("malformed comparison: {line} (unknown op {op})")),
    };
    let int = || {
        val.parse::<i64>()
            .map_err(|e| format!("malformed comparison: {line} ({e})"))
    };
    let (t, u) = match target.trim() {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(int()?)),
        "c" | "create" => (CompareTarget::Create, TargetUnion::CreateRevision(int()?)),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(int()?)),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(b(val))),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(int()?)),
        t => return Err(format!("malformed comparison: {line} (unknown target {t})")),
    };
    Ok(Compare {
        result: result as i32,
        target: t as i32,
        key: b(&key),
        target_union: Some(u),
        range_end: Bytes::new(),
    })
}

fn parse_op(line: &str) -> Result<RequestOp, String> {
    let words = argify(line)?;
    let op = TxnOp::try_parse_from(&words)
        .map_err(|e| format!("invalid txn request {line:?}: {}", e.kind()))?;
    let request = match op {
        TxnOp::Get(a) => Op::RequestRange(get_request(&a)?),
        TxnOp::Put(a) => {
            let v = a
                .value
                .clone()
                .ok_or_else(|| format!("put in txn needs a value: {line}"))?;
            Op::RequestPut(put_request(&a, v)?)
        }
        TxnOp::Del(a) => Op::RequestDeleteRange(del_request(&a)),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

/// Reads etcdctl's txn input: compares, blank line, success ops, blank line, failure ops.
fn read_txn(interactive: bool) -> Result<TxnRequest, String> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut section = |prompt: &str| -> Result<Vec<String>, String> {
        if interactive {
            println!("{prompt}");
        }
        let mut v = Vec::new();
        for l in lines.by_ref() {
            let l = l.map_err(|e| e.to_string())?;
            if l.trim().is_empty() {
                break;
            }
            v.push(l);
        }
        Ok(v)
    };
    let compare = section("compares:")?
        .iter()
        .map(|l| parse_compare(l))
        .collect::<Result<Vec<_>, _>>()?;
    let success = section("success requests (get, put, del):")?
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<Vec<_>, _>>()?;
    let failure = section("failure requests (get, put, del):")?
        .iter()
        .map(|l| parse_op(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

async fn connect_any(
    endpoints: &str,
    opts: &etch_tools::ConnectOptions,
) -> Result<Client, ClientError> {
    let mut last = ClientError::Closed;
    for ep in endpoints.split(',').filter(|s| !s.is_empty()) {
        match Client::connect_with(ep, opts).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn json_line(v: serde_json::Value) -> String {
    format!("{v}\n")
}

/// Streams events to stdout as etcdctl does: the event type, then (with --prev-kv) the previous
/// key and value, then the key and value.
async fn watch(cli: &Cli, a: &WatchArgs, opts: &etch_tools::ConnectOptions) -> Result<(), String> {
    use std::io::Write as _;
    let (key, range_end) = range_of(&a.key, &a.range_end, a.prefix, false);
    let c = connect_any(&cli.endpoints, opts)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = c.watch_stream().map_err(|e| e.to_string())?;
    stream
        .create(etch_tools::pb::WatchCreateRequest {
            key,
            range_end,
            start_revision: a.rev,
            prev_kv: a.prev_kv,
            progress_notify: a.progress_notify,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut so = std::io::stdout().lock();
    while let Some(r) = stream.next().await {
        if r.compact_revision != 0 {
            return Err(
                "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
                    .into(),
            );
        }
        if r.canceled {
            return Err(format!(
                "watch is canceled by the server ({})",
                r.cancel_reason
            ));
        }
        if r.created {
            continue;
        }
        let mut out = String::new();
        match cli.write_out {
            Format::Json => out.push_str(&json_line(output::watch_json(&r))),
            _ if r.events.is_empty() => {
                let rev = r.header.map_or(0, |h| h.revision);
                out.push_str(&format!("progress notify: {rev}\n"));
            }
            _ => output::watch_simple(&r, &mut out),
        }
        so.write_all(out.as_bytes()).map_err(|e| e.to_string())?;
        so.flush().map_err(|e| e.to_string())?;
    }
    Err("watch stream closed".into())
}

async fn run(cli: Cli) -> Result<String, String> {
    let dial = humantime::parse_duration(&cli.dial_timeout).map_err(|e| e.to_string())?;
    let timeout = humantime::parse_duration(&cli.command_timeout).map_err(|e| e.to_string())?;
    let fmt = cli.write_out;
    if let Cmd::Snapshot { cmd } = &cli.cmd {
        return snapshot(cmd, fmt);
    }
    let opts = connect_options(&cli, dial)?;
    if let Cmd::Watch(a) = &cli.cmd {
        // Runs until interrupted: no command timeout.
        watch(&cli, a, &opts).await?;
        return Ok(String::new());
    }
    if let Cmd::Lease {
        cmd: cmd @ LeaseCmd::KeepAlive { once: false, .. },
    } = &cli.cmd
    {
        let c = connect_any(&cli.endpoints, &opts)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        lease(&c, cmd, fmt, &mut out).await?;
        return Ok(out);
    }
    let mut out = String::new();
    let work = async {
        match &cli.cmd {
            Cmd::Endpoint {
                cmd: EndpointCmd::Status,
            } => {
                let mut rows = Vec::new();
                for ep in cli.endpoints.split(',').filter(|s| !s.is_empty()) {
                    let c = Client::connect_with(ep, &opts)
                        .await
                        .map_err(|e| format!("{ep}: {e}"))?;
                    rows.push((ep.to_owned(), c.status().await.map_err(|e| e.to_string())?));
                }
                match fmt {
                    Format::Json => {
                        let v: Vec<_> = rows
                            .iter()
                            .map(|(e, s)| serde_json::json!({"Endpoint": e, "Status": output::status_json(s)}))
                            .collect();
                        out.push_str(&json_line(serde_json::Value::Array(v)));
                    }
                    Format::Table => out.push_str(&output::status_table(&rows)),
                    _ => rows
                        .iter()
                        .for_each(|(e, s)| out.push_str(&output::status_simple(e, s))),
                }
                return Ok(());
            }
            Cmd::Txn { interactive } => {
                let req = read_txn(*interactive)?;
                let c = connect_any(&cli.endpoints, &opts)
                    .await
                    .map_err(|e| e.to_string())?;
                let r = c.txn(req).await.map_err(|e| e.to_string())?;
                match fmt {
                    Format::Json => out.push_str(&json_line(output::txn_json(&r))),
                    _ => output::txn_simple(&r, &mut out),
                }
                return Ok(());
            }
            _ => {}
        }
        let c = connect_any(&cli.endpoints, &opts)
            .await
            .map_err(|e| e.to_string())?;
        match &cli.cmd {
            Cmd::Put(a) => {
                let value = match &a.value {
                    Some(v) => v.clone(),
                    None if a.ignore_value => String::new(),
                    None => {
                        let mut s = String::new();
                        std::io::stdin()
                            .lock()
                            .read_line(&mut s)
                            .map_err(|e| e.to_string())?;
                        s.trim_end_matches('\n').to_owned()
                    }
                };
                let r = c
                    .put(put_request(a, value)?)
                    .await
                    .map_err(|e| e.to_string())?;
                match fmt {
                    Format::Json => out.push_str(&json_line(output::put_json(&r))),
                    Format::Fields => output::put_fields(&r, &mut out),
                    _ => output::put_simple(&r, &mut out),
                }
            }
            Cmd::Get(a) => {
                let r = c.range(get_request(a)?).await.map_err(|e| e.to_string())?;
                match fmt {
                    Format::Json => out.push_str(&json_line(output::range_json(&r))),
                    Format::Fields => output::range_fields(&r, &mut out),
                    _ if a.count_only => out.push_str(&format!("{}\n", r.count)),
                    _ => output::range_simple(&r, a.print_value_only, &mut out),
                }
            }
            Cmd::Del(a) => {
                let r = c
                    .delete_range(del_request(a))
                    .await
                    .map_err(|e| e.to_string())?;
                match fmt {
                    Format::Json => out.push_str(&json_line(output::del_json(&r))),
                    Format::Fields => output::del_fields(&r, &mut out),
                    _ => output::del_simple(&r, &mut out),
                }
            }
            Cmd::Compaction { revision, physical } => {
                let r = c
                    .compact(CompactionRequest {
                        revision: *revision,
                        physical: *physical,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                match fmt {
                    Format::Json => out.push_str(&json_line(
                        serde_json::json!({"header": output::header_json(&r.header)}),
                    )),
                    _ => out.push_str(&format!("compacted revision {revision}\n")),
                }
            }
            Cmd::Lease { cmd } => lease(&c, cmd, fmt, &mut out).await?,
            Cmd::Auth { cmd } => etch_tools::authcmd::auth(&c, cmd, &mut out).await?,
            Cmd::User { cmd } => etch_tools::authcmd::user(&c, cmd, &mut out).await?,
            Cmd::Role { cmd } => etch_tools::authcmd::role(&c, cmd, &mut out).await?,
            Cmd::Txn { .. } | Cmd::Endpoint { .. } | Cmd::Watch(_) | Cmd::Snapshot { .. } => {}
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => return Err("context deadline exceeded".into()),
        Ok(r) => r?,
    }
    Ok(out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            let mut so = std::io::stdout().lock();
            let _ = so.write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_txn_lines() {
        let c = parse_compare(r#"mod("key1") > "0""#).unwrap();
        assert_eq!(c.target, CompareTarget::Mod as i32);
        assert_eq!(c.result, CompareResult::Greater as i32);
        assert_eq!(&c.key[..], b"key1");
        let c = parse_compare(r#"value("a b") = "x y""#).unwrap();
        assert_eq!(c.target_union, Some(TargetUnion::Value(b("x y"))));
        assert!(parse_compare("nonsense").is_err());
        let op = parse_op(r#"put "k 1" "v \"q\"""#).unwrap();
        match op.request {
            Some(Op::RequestPut(p)) => {
                assert_eq!(&p.key[..], b"k 1");
                assert_eq!(&p.value[..], b"v \"q\"");
            }
            o => panic!("{o:?}"),
        }
        let op = parse_op("get a --prefix").unwrap();
        match op.request {
            Some(Op::RequestRange(r)) => assert_eq!(&r.range_end[..], b"b"),
            o => panic!("{o:?}"),
        }
    }
}
