//! From flags to a validated [`Config`]: every check, default and derived value (member and
//! cluster IDs, listeners, TLS, peers), each failure naming its flag.

use super::*;

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
        tls::provider(&cipher_suites).map_err(|e| bad("cipher-suites", &f.cipher_suites, e))?;
        tls::versions(&f.tls_min_version, &f.tls_max_version, &cipher_suites)
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
            let peer = Peer::new(self::member_id(urls, &f.initial_cluster_token), urls)
                .map_err(|e| bad("initial-cluster", &urls[0], e))?;
            peers.push(peer);
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
        let watch = WatchLimits {
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
        let wal_dir = f
            .wal_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("member").join("wal"));
        Ok(Config {
            join_existing: f.initial_cluster_state == "existing",
            strict_reconfig_check: f.strict_reconfig_check,
            max_learners: f.experimental_max_learners,
            force_new_cluster: f.force_new_cluster,
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
            disk_fault_file: f.debug_disk_faults.clone(),
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
