//! Auth (users, roles, key permissions) over real processes, with etcd's rules and messages:
//! the same permission matrix through Debian's etcdctl 3.4 (gRPC) and through etchctl (the
//! native protocol) against a 3-member cluster; tokens issued on one member work on another;
//! an auth change re-checks requests of identities established before it; a TLS client
//! certificate's Common Name is the user; no secret reaches the logs.

use std::process::{Command, Output, Stdio};

use etch_tests::{Cluster, Node, bin, http, http_with, make_pki, wait_for};

/// One CLI, etcdctl or etchctl, aimed at one member.
struct Cli {
    etcdctl: bool,
    endpoint: String,
}

impl Cli {
    /// etcdctl 3.4 against a member's gRPC address.
    fn etcdctl(endpoint: &str) -> Cli {
        Cli {
            etcdctl: true,
            endpoint: endpoint.to_owned(),
        }
    }

    /// etchctl against a member's native address.
    fn native(endpoint: &str) -> Cli {
        Cli {
            etcdctl: false,
            endpoint: endpoint.to_owned(),
        }
    }

    /// Runs `args` as `user` (`name:password`), `stdin` as input; bounded by `timeout` so a
    /// watch that is not canceled fails the test instead of hanging it.
    fn run(&self, user: Option<&str>, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut c = Command::new("timeout");
        c.arg("20");
        if self.etcdctl {
            c.arg("etcdctl").env("ETCDCTL_API", "3");
        } else {
            c.arg(bin("etchctl"));
        }
        c.args(["--endpoints", &self.endpoint]);
        if let Some(u) = user {
            c.args(["--user", u]);
        }
        let mut child = c
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn CLI");
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes());
        child.wait_with_output().expect("CLI output")
    }

    fn ok(&self, user: Option<&str>, args: &[&str]) -> String {
        let o = self.run(user, args, "");
        assert!(
            o.status.success(),
            "{args:?} as {user:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Asserts the command fails with `message` on stderr.
    fn refused(&self, user: Option<&str>, args: &[&str], stdin: &str, message: &str) {
        let o = self.run(user, args, stdin);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(message),
            "{args:?} as {user:?} should fail with {message:?}; status {:?}, stdout {:?}, stderr {err:?}",
            o.status,
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

/// Authenticates through the HTTP gateway of the member at `addr`; returns the token.
fn gateway_token(addr: &str, name: &str, password: &str) -> String {
    let body = serde_json::json!({"name": name, "password": password}).to_string();
    let auth = http(addr, "POST", "/v3/auth/authenticate", &body);
    assert_eq!(auth.status, 200, "{}", auth.body);
    serde_json::from_str::<serde_json::Value>(&auth.body).unwrap()["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

const ROOT: Option<&str> = Some("root:rootpw");
const ALICE: Option<&str> = Some("alice:alicepw");
const DENIED: &str = "etcdserver: permission denied";

/// The matrix: `admin` sets up and checks, `probe` is another member (auth state and writes
/// are replicated through consensus).
fn matrix(admin: &Cli, probe: &Cli) {
    admin.ok(None, &["user", "add", "root:rootpw"]);
    admin.ok(None, &["user", "add", "alice:alicepw"]);
    admin.ok(None, &["role", "add", "ra"]);
    admin.ok(
        None,
        &["role", "grant-permission", "ra", "read", "/a/", "--prefix"],
    );
    admin.ok(None, &["user", "grant-role", "alice", "ra"]);
    admin.ok(None, &["put", "/a/x", "1"]);
    admin.ok(None, &["put", "/b/x", "1"]);
    let grant = admin.ok(None, &["lease", "grant", "600"]);
    let lease = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_owned();
    admin.ok(
        None,
        &["put", "/b/leased", "v", &format!("--lease={lease}")],
    );
    assert!(
        admin
            .ok(None, &["auth", "enable"])
            .contains("Authentication Enabled")
    );

    // No identity at all.
    probe.refused(None, &["get", "/a/x"], "", "etcdserver: user name is empty");
    probe.refused(
        Some("alice:wrong"),
        &["get", "/a/x"],
        "",
        "etcdserver: authentication failed, invalid user ID or password",
    );
    // alice: read on /a/ only.
    assert_eq!(probe.ok(ALICE, &["get", "/a/x"]), "/a/x\n1\n");
    probe.refused(ALICE, &["put", "/a/x", "2"], "", DENIED);
    probe.refused(ALICE, &["get", "/b/x"], "", DENIED);
    probe.refused(ALICE, &["get", "/", "--prefix"], "", DENIED);
    probe.refused(ALICE, &["watch", "/b/", "--prefix"], "", DENIED);
    // A write hidden in the branch the compare picks, or in the other one: refused either way.
    let sneak_failure = "value(\"/a/x\") = \"nope\"\n\nput /a/y 1\n\nput /b/x sneaky\n\n";
    probe.refused(ALICE, &["txn"], sneak_failure, DENIED);
    let sneak_success = "value(\"/a/x\") = \"1\"\n\nput /b/x sneaky\n\n\n";
    probe.refused(ALICE, &["txn"], sneak_success, DENIED);
    // A compare on a key alice may not read.
    let peek = "value(\"/b/x\") = \"1\"\n\nget /a/x\n\n\n";
    probe.refused(ALICE, &["txn"], peek, DENIED);
    // The lease's time-to-live names its keys: reading /b/leased's name is refused too.
    probe.refused(
        ALICE,
        &["lease", "timetolive", &lease, "--keys"],
        "",
        DENIED,
    );
    // Revoking the lease would delete /b/leased.
    probe.refused(ALICE, &["lease", "revoke", &lease], "", DENIED);
    // Administration needs root.
    probe.refused(ALICE, &["auth", "disable"], "", DENIED);
    probe.refused(ALICE, &["user", "add", "mallory:m"], "", DENIED);
    probe.refused(
        ALICE,
        &["role", "grant-permission", "ra", "readwrite", "/"],
        "",
        DENIED,
    );
    // Nothing alice tried got through.
    assert_eq!(
        admin.ok(ROOT, &["get", "/b/x", "--print-value-only"]),
        "1\n"
    );
    assert_eq!(
        admin.ok(ROOT, &["get", "/b/leased", "--print-value-only"]),
        "v\n"
    );
    assert_eq!(admin.ok(ROOT, &["get", "/a/y"]), "");
    // root may do everything.
    admin.ok(ROOT, &["put", "/b/y", "2"]);
    admin.ok(ROOT, &["lease", "revoke", &lease]);
    assert_eq!(admin.ok(ROOT, &["get", "/b/leased"]), "");
    assert!(admin.ok(ROOT, &["user", "list"]).contains("alice"));
    assert!(
        admin
            .ok(ROOT, &["role", "get", "ra"])
            .contains("[/a/, /a0) (prefix /a/)")
    );
    // root cannot lock itself out while auth is on.
    admin.refused(
        ROOT,
        &["user", "delete", "root"],
        "",
        "etcdserver: invalid auth management",
    );
    // Granting write makes alice's write pass, on another member.
    admin.ok(
        ROOT,
        &[
            "role",
            "grant-permission",
            "ra",
            "readwrite",
            "/a/",
            "--prefix",
        ],
    );
    probe.ok(ALICE, &["put", "/a/x", "3"]);
    assert!(
        admin
            .ok(ROOT, &["auth", "disable"])
            .contains("Authentication Disabled")
    );
    assert_eq!(
        probe.ok(None, &["get", "/b/x", "--print-value-only"]),
        "1\n"
    );
}

#[test]
fn permission_matrix_through_etcdctl_on_three_members() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let cli = |i: usize| Cli::etcdctl(&c.nodes[i].grpc);
    matrix(&cli(0), &cli(1));
}

#[test]
fn permission_matrix_through_the_native_protocol_on_three_members() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let cli = |i: usize| Cli::native(&c.nodes[i].native);
    matrix(&cli(0), &cli(2));
}

/// A member whose apply lags (a store commit delayed through the disk fault file) refuses a
/// read without identity that comes right after an `auth enable` committed through the
/// others, over gRPC and the native protocol: the caller is identified and checked after the
/// read barrier, against the auth state the read sees (etcd v3.5's Range), not against the
/// member's own state from before it applied the change.
#[test]
fn a_lagging_member_applies_auth_enable_before_it_serves_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, &[]);
    let leader = c.leader();
    let slow = (leader + 1) % 3;
    let faults = dir.path().join("slow.faults");
    std::fs::write(&faults, "").unwrap();
    c.nodes[slow].kill9();
    let args = c.member_args(slow, &["--debug-disk-faults", faults.to_str().unwrap()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data_dir = c.nodes[slow].data_dir.clone();
    c.nodes[slow] = Node::launch(data_dir, &args);
    c.nodes[slow].wait_leader();
    let admin = Cli::native(&c.nodes[leader].native);
    admin.ok(None, &["user", "add", "root:rootpw"]);
    admin.ok(None, &["put", "k", "v"]);
    for probe in [
        Cli::native(&c.nodes[slow].native),
        Cli::etcdctl(&c.nodes[slow].grpc),
    ] {
        // Caught up: the slow member serves the key.
        assert_eq!(probe.ok(None, &["get", "k", "--print-value-only"]), "v\n");
        // Its apply of the next write takes 1.5 s; the `auth enable` committed meanwhile
        // waits behind it there (the fault is off again before its turn).
        std::fs::write(&faults, "store-write=delay=1500ms\n").unwrap();
        admin.ok(None, &["put", "x", "1"]);
        let enabled = admin.ok(None, &["auth", "enable"]);
        std::fs::write(&faults, "").unwrap();
        assert!(enabled.contains("Authentication Enabled"), "{enabled}");
        probe.refused(None, &["get", "k"], "", "etcdserver: user name is empty");
        admin.ok(ROOT, &["auth", "disable"]);
    }
}

/// A token issued by one member works on another (simple tokens are assigned through
/// consensus); a password change and a role revocation take effect for identities established
/// before them; bad tokens get etcd's `invalid auth token`.
#[test]
fn tokens_are_cluster_wide_and_auth_changes_apply_to_existing_identities() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, &[]);
    let admin = Cli::native(&c.nodes[0].native);
    admin.ok(None, &["user", "add", "root:rootpw"]);
    admin.ok(None, &["user", "add", "bob:bobpw"]);
    admin.ok(None, &["role", "add", "rb"]);
    admin.ok(
        None,
        &[
            "role",
            "grant-permission",
            "rb",
            "readwrite",
            "/b/",
            "--prefix",
        ],
    );
    admin.ok(None, &["user", "grant-role", "bob", "rb"]);
    admin.ok(None, &["auth", "enable"]);

    let token = gateway_token(&c.nodes[0].grpc, "bob", "bobpw");
    let put = |member: usize, token: &str| {
        http_with(
            &c.nodes[member].grpc,
            "POST",
            "/v3/kv/put",
            &[("Authorization", token)],
            r#"{"key":"L2IveA==","value":"MQ=="}"#,
        )
    };
    // Issued by m0, used on m2: every member learns a simple token when it applies the
    // Authenticate (as in etcd), so m2 may need a moment to catch up.
    wait_for(
        std::time::Duration::from_secs(30),
        "m2 to accept m0's token",
        || {
            let r = put(2, &token);
            (r.status == 200).then_some(())
        },
    );
    // An unknown token.
    let r = put(1, "forged.123");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body.contains("etcdserver: invalid auth token"),
        "{}",
        r.body
    );

    // A native connection authenticated as bob before the role loses its permission.
    let rt = etch_tests::rt();
    rt.block_on(async {
        let opts = etch_tools::ConnectOptions {
            user: Some(("bob".into(), "bobpw".into())),
            ..Default::default()
        };
        let bob = etch_tools::Client::connect_with(&c.nodes[1].native, &opts)
            .await
            .expect("bob connects");
        let put = || {
            bob.put(etch_tools::pb::PutRequest {
                key: "/b/y".into(),
                value: "1".into(),
                ..Default::default()
            })
        };
        put().await.expect("bob may write /b/");
        admin.ok(
            ROOT,
            &["role", "revoke-permission", "rb", "/b/", "--prefix"],
        );
        // m1 applies the revocation shortly after m0 acknowledged it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match put().await {
                Err(e) if e.to_string() == DENIED => break,
                r => assert!(
                    tokio::time::Instant::now() < deadline,
                    "bob still writes after the revocation: {r:?}"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    // A password change ends the old password and the tokens issued with it.
    admin.ok(
        ROOT,
        &["user", "passwd", "bob", "--new-user-password", "newpw"],
    );
    let r = put(2, &token);
    assert_eq!(r.status, 401, "{}", r.body);
    Cli::etcdctl(&c.nodes[1].grpc).refused(
        Some("bob:bobpw"),
        &["get", "/b/x"],
        "",
        "authentication failed",
    );
}

/// With `--client-cert-auth`, a verified client certificate's Common Name is the user when no
/// token is given (etcd `AuthInfoFromTLS`), over gRPC (etcdctl) and the native protocol.
#[test]
fn client_certificate_common_name_is_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (ca, cert, key) = etch_tests::make_pki_with_clients(&pki, "server", &["carol", "root"]);
    let client = |cn: &str| {
        let p = |f: &str| {
            pki.join(format!("server-{cn}-{f}"))
                .to_string_lossy()
                .into_owned()
        };
        (p("cert.pem"), p("key.pem"))
    };
    let (carol_cert, carol_key) = client("carol");
    let (root_cert, root_key) = client("root");
    let n = Node::start(dir.path(), &etch_tests::client_tls_args(&ca, &cert, &key));
    let ctl = |cert: &str, key: &str, args: &[&str]| {
        Command::new(bin("etchctl"))
            .args([
                "--endpoints",
                &n.native,
                "--cacert",
                &ca,
                "--cert",
                cert,
                "--key",
                key,
            ])
            .args(args)
            .output()
            .expect("etchctl")
    };
    let ok = |o: Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(ctl(
        &root_cert,
        &root_key,
        &["user", "add", "root", "--no-password"],
    ));
    ok(ctl(
        &root_cert,
        &root_key,
        &["user", "add", "carol", "--no-password"],
    ));
    ok(ctl(&root_cert, &root_key, &["role", "add", "rc"]));
    ok(ctl(
        &root_cert,
        &root_key,
        &[
            "role",
            "grant-permission",
            "rc",
            "readwrite",
            "/c/",
            "--prefix",
        ],
    ));
    ok(ctl(
        &root_cert,
        &root_key,
        &["user", "grant-role", "carol", "rc"],
    ));
    ok(ctl(&root_cert, &root_key, &["auth", "enable"]));
    // carol by certificate, over the native protocol.
    ok(ctl(&carol_cert, &carol_key, &["put", "/c/1", "x"]));
    let o = ctl(&carol_cert, &carol_key, &["put", "/d/1", "x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains(DENIED));
    // ... and over gRPC with etcdctl.
    let etcdctl = |cert: &str, key: &str, args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &format!("https://{}", n.grpc),
                "--cacert",
                &ca,
            ])
            .args(["--cert", cert, "--key", key])
            .args(args)
            .output()
            .expect("etcdctl")
    };
    assert_eq!(
        ok(etcdctl(
            &carol_cert,
            &carol_key,
            &["get", "/c/1", "--print-value-only"]
        )),
        "x\n"
    );
    let o = etcdctl(&carol_cert, &carol_key, &["get", "/d/1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains(DENIED));
    // The server's own certificate names no user: it is refused as anyone but root would be.
    let o = etcdctl(&cert, &key, &["put", "/c/2", "x"]);
    assert!(!o.status.success());
    ok(etcdctl(&root_cert, &root_key, &["auth", "disable"]));
}

/// Passwords, tokens and private keys never appear in a member's log, even at debug level.
#[test]
fn no_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (ca, cert, key) = make_pki(&pki, "s");
    let mut n = Node::start(
        dir.path(),
        &[
            "--log-level",
            "debug",
            "--listen-client-urls",
            "https://127.0.0.1:0",
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
        ],
    );
    let secret_root = "Root-Secret-0xA1";
    let secret_user = "User-Secret-0xB2";
    let secret_new = "Changed-Secret-0xC3";
    n.ctl_ok(&["user", "add", &format!("root:{secret_root}")]);
    n.ctl_ok(&["user", "add", &format!("u:{secret_user}")]);
    n.ctl_ok(&["auth", "enable"]);
    let root = format!("root:{secret_root}");
    n.ctl_ok(&[
        "--user",
        &root,
        "user",
        "passwd",
        "u",
        "--new-user-password",
        secret_new,
    ]);
    n.ctl_ok(&["--user", &format!("u:{secret_new}"), "user", "get", "u"]);
    let _ = n.etchctl(&["--user", "u:wrong-Secret-0xD4", "get", "k"]);
    // A token over the gateway (the same member; HTTPS is not spoken by the test helper, so
    // etcdctl gets one instead).
    let o = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &format!("https://{}", n.grpc),
            "--cacert",
            &ca,
        ])
        .args(["--user", &root, "put", "k", "v"])
        .output()
        .expect("etcdctl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = {
        let rt = etch_tests::rt();
        rt.block_on(async {
            let c = etch_tools::Client::connect_with(
                &n.native,
                &etch_tools::ConnectOptions {
                    tls: etch_tools::TlsFiles {
                        ca: Some(ca.clone().into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .expect("connect");
            c.authenticate(etch_tools::pb::AuthenticateRequest {
                name: "root".into(),
                password: secret_root.into(),
            })
            .await
            .expect("authenticate")
            .token
        })
    };
    n.ctl_ok(&["--user", &root, "auth", "disable"]);
    n.terminate();
    let log = n.log();
    assert!(log.contains("auth enabled"), "the run was logged: {log}");
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body = key_pem
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .expect("key body");
    for secret in [
        secret_root,
        secret_user,
        secret_new,
        "wrong-Secret-0xD4",
        token.as_str(),
        token.split('.').next().unwrap_or("x"),
        key_body,
        "$2b$",
        "$2y$",
    ] {
        assert!(!log.contains(secret), "{secret:?} is in the log");
    }
}

#[test]
fn gateway_auth_routes_answer_etcds_json() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    let post = |path: &str, body: &str| http(&n.grpc, "POST", path, body);
    assert_eq!(
        post("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#).status,
        200
    );
    assert_eq!(
        post("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#).status,
        200
    );
    // (false is a default: the gateway's JSON leaves it out, as etcd's does)
    let r = post("/v3/auth/status", "{}");
    assert!(r.status == 200 && !r.body.contains("enabled"), "{}", r.body);
    let r = post("/v3/auth/enable", "{}");
    assert_eq!(r.status, 200, "{}", r.body);
    // Once enabled, AuthStatus needs root (etcd v3.5).
    let r = post("/v3/auth/status", "{}");
    assert!(
        r.body.contains("etcdserver: user name is empty"),
        "{}",
        r.body
    );
    let token = gateway_token(&n.grpc, "root", "pw");
    let r = http_with(
        &n.grpc,
        "POST",
        "/v3/auth/status",
        &[("Authorization", &token)],
        "{}",
    );
    assert!(r.body.contains(r#""enabled":true"#), "{}", r.body);
    let r = post("/v3/kv/range", r#"{"key":"YQ=="}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("etcdserver: user name is empty"),
        "{}",
        r.body
    );
    let r = post(
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"bad"}"#,
    );
    assert!(r.body.contains("authentication failed"), "{}", r.body);
    // /health stays healthy with auth on (etcd v3.5 counts the refused probe as served).
    let h = http(&n.grpc, "GET", "/health", "");
    assert_eq!(h.status, 200, "{}", h.body);
}

/// The `etcd-client` Rust crate (as applications use it) authenticates and gets etcd's
/// errors: its token goes in `token` metadata on every call.
#[test]
fn etcd_client_crate_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    n.ctl_ok(&["user", "add", "root:rootpw"]);
    n.ctl_ok(&["user", "add", "dave:davepw"]);
    n.ctl_ok(&["role", "add", "rd"]);
    n.ctl_ok(&[
        "role",
        "grant-permission",
        "rd",
        "readwrite",
        "/d/",
        "--prefix",
    ]);
    n.ctl_ok(&["user", "grant-role", "dave", "rd"]);
    n.ctl_ok(&["auth", "enable"]);
    etch_tests::rt().block_on(async {
        let opts = etcd_client::ConnectOptions::new().with_user("dave", "davepw");
        let mut c = etcd_client::Client::connect([n.grpc.as_str()], Some(opts))
            .await
            .expect("dave connects");
        c.put("/d/1", "x", None).await.expect("dave writes /d/");
        let r = c.get("/d/1", None).await.expect("dave reads /d/");
        assert_eq!(r.kvs()[0].value(), b"x");
        let err = c
            .put("/e/1", "x", None)
            .await
            .expect_err("dave may not write /e/");
        assert!(err.to_string().contains(DENIED), "{err}");
        let bad = etcd_client::ConnectOptions::new().with_user("dave", "nope");
        let err = etcd_client::Client::connect([n.grpc.as_str()], Some(bad))
            .await
            .err()
            .expect("wrong password refused");
        assert!(err.to_string().contains("authentication failed"), "{err}");
    });
}

/// `--auth-token jwt,...`: signed tokens (etcd's JWT provider) that any member verifies; a token
/// from before an auth change is stale (`revision of auth store is old`); forged or
/// misconfigured ones are refused.
#[test]
fn jwt_tokens_are_verified_by_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (pub_key, priv_key) = (dir.path().join("jwt.pub"), dir.path().join("jwt.key"));
    std::fs::write(&pub_key, key.public_key_pem()).unwrap();
    std::fs::write(&priv_key, key.serialize_pem()).unwrap();
    let flag = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=10m",
        pub_key.display(),
        priv_key.display()
    );
    let c = Cluster::start(&dir.path().join("etch"), 3, &["--auth-token", &flag]);
    let admin = Cli::native(&c.nodes[0].native);
    admin.ok(None, &["user", "add", "root:rootpw"]);
    admin.ok(None, &["auth", "enable"]);
    let token = gateway_token(&c.nodes[0].grpc, "root", "rootpw");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let put = |member: usize, token: &str| {
        http_with(
            &c.nodes[member].grpc,
            "POST",
            "/v3/kv/put",
            &[("Authorization", token)],
            r#"{"key":"ang=","value":"MQ=="}"#,
        )
    };
    let r = put(2, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    let forged = format!("{}x", &token[..token.len() - 1]);
    let r = put(1, &forged);
    assert!(
        r.body.contains("etcdserver: invalid auth token"),
        "{}",
        r.body
    );
    // An auth change: the token names an older auth revision now.
    admin.ok(ROOT, &["role", "add", "later"]);
    wait_for(
        std::time::Duration::from_secs(10),
        "m1 to apply the change",
        || {
            let r = put(1, &token);
            r.body
                .contains("etcdserver: revision of auth store is old")
                .then_some(())
        },
    );
    // etcdctl authenticates again per command: fine on every member.
    for n in &c.nodes {
        Cli::etcdctl(&n.grpc).ok(ROOT, &["put", "jwt", "ok"]);
    }
    // A JWT configuration whose keys do not load stops the start (exit 2).
    let out = Command::new(bin("etch"))
        .args(["--data-dir", &dir.path().join("never").to_string_lossy()])
        .args([
            "--auth-token",
            "jwt,pub-key=/nonexistent,priv-key=/nonexistent,sign-method=ES256",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}
