//! Where flags come from besides the command line: etcd's `ETCD_*` environment variables, etcd's
//! YAML configuration file (`--config-file`), and etcd flags etch accepts without using.
//!
//! [`effective_args`] turns the process's arguments into the argument list clap parses:
//! - with `--config-file FILE` (or `ETCD_CONFIG_FILE`/`ETCH_CONFIG_FILE`), the file's keys become
//!   flags and every other flag and variable is ignored, as etcd does ("if the configuration
//!   file is provided, other command line flags and environment variables will be ignored");
//! - otherwise each known flag not on the command line is taken from `ETCD_<FLAG>` (upper case,
//!   `-` -> `_`; etcd's own variables, so existing deployments switch unchanged) when set; the
//!   `ETCH_<FLAG>` spelling is read by clap itself and wins over `ETCD_<FLAG>`;
//! - etcd flags with no meaning in etch ([`IGNORED_FLAGS`]) are removed with a warning.
//!
//! The YAML file uses etcd's keys: the flag names (`name`, `data-dir`, `listen-client-urls`,
//! `heartbeat-interval: 100`, ...), and the two sections `client-transport-security` and
//! `peer-transport-security` (`cert-file`, `key-file`, `client-cert-auth`, `trusted-ca-file`,
//! `auto-tls`, `crl-file`, `allowed-cn`, `allowed-hostname`; in the peer section they become
//! the `--peer-*` flags). Lists (`log-outputs: [stderr]`) become comma-separated values; empty
//! and null values are skipped, as etcd's sample file leaves many keys empty.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

use clap::CommandFactory;
use yaml_rust2::{Yaml, YamlLoader};

use super::Flags;

/// etcd v3.5 flags that etch accepts and ignores (name, whether it takes a value, why it is
/// harmless). A script written for etcd passes them; etch warns once per flag.
pub const IGNORED_FLAGS: &[(&str, bool, &str)] = &[
    ("enable-pprof", false, "Go's profiler; etch has none"),
    ("debug", false, "use --log-level debug"),
    ("cors", true, "the HTTP gateway sends no CORS headers"),
    ("host-whitelist", true, "no host check on the client URLs"),
    (
        "max-snapshots",
        true,
        "etch keeps no snapshot files to rotate",
    ),
    (
        "max-wals",
        true,
        "WAL segments are released behind each snapshot",
    ),
    ("metrics", true, "etch exports one metric set"),
    ("pre-vote", false, "etch always uses pre-vote"),
    (
        "enable-grpc-gateway",
        false,
        "the JSON gateway is always served",
    ),
    ("grpc-keepalive-min-time", true, "HTTP/2 defaults"),
    ("grpc-keepalive-interval", true, "HTTP/2 defaults"),
    ("grpc-keepalive-timeout", true, "HTTP/2 defaults"),
    ("backend-batch-interval", true, "fjall batches per apply"),
    ("backend-batch-limit", true, "fjall batches per apply"),
    ("backend-bbolt-freelist-type", true, "no bbolt"),
    ("experimental-backend-bbolt-freelist-type", true, "no bbolt"),
    (
        "experimental-compaction-batch-limit",
        true,
        "compaction runs in the background",
    ),
    (
        "experimental-warning-apply-duration",
        true,
        "apply warns past 100 ms",
    ),
    ("experimental-downgrade-check-time", true, "no downgrades"),
    ("experimental-enable-v2v3", true, "no v2 API"),
    (
        "experimental-enable-lease-checkpoint",
        false,
        "checkpoints are always on",
    ),
    (
        "experimental-enable-lease-checkpoint-persist",
        false,
        "checkpoints persist",
    ),
    ("experimental-memory-mlock", false, "not needed"),
    (
        "experimental-txn-mode-write-with-shared-buffer",
        false,
        "not needed",
    ),
    (
        "experimental-bootstrap-defrag-threshold-megabytes",
        true,
        "fjall compacts itself",
    ),
    (
        "experimental-peer-skip-client-san-verification",
        false,
        "peers use QUIC's TLS",
    ),
    (
        "experimental-enable-distributed-tracing",
        false,
        "no OpenTelemetry exporter",
    ),
    (
        "experimental-distributed-tracing-address",
        true,
        "no OpenTelemetry exporter",
    ),
    (
        "experimental-distributed-tracing-service-name",
        true,
        "no OpenTelemetry exporter",
    ),
    (
        "experimental-distributed-tracing-instance-id",
        true,
        "no OpenTelemetry exporter",
    ),
    (
        "self-signed-cert-validity",
        true,
        "auto TLS certificates are generated per start",
    ),
    ("v2-deprecation", true, "no v2 API"),
    (
        "initial-election-tick-advance",
        false,
        "pre-vote makes it unnecessary",
    ),
    ("socket-reuse-port", false, "not needed"),
    ("socket-reuse-address", false, "not needed"),
    ("enable-log-rotation", false, "etch logs to stderr"),
    ("log-rotation-config-json", true, "etch logs to stderr"),
    ("unsafe-no-fsync", false, "etch always fsyncs its WAL"),
    ("proxy", true, "no v2 proxy"),
    (
        "discovery",
        true,
        "no discovery service: use --initial-cluster",
    ),
    (
        "discovery-srv",
        true,
        "no discovery service: use --initial-cluster",
    ),
    ("discovery-srv-name", true, "no discovery service"),
    ("discovery-fallback", true, "no discovery service"),
    ("discovery-proxy", true, "no discovery service"),
];

/// The arguments clap should parse, from the process's `args` (program name first) and
/// `env` (name, value pairs).
///
/// # Errors
/// A configuration file that cannot be read or is not a YAML mapping.
pub fn effective_args(
    args: Vec<OsString>,
    env: &[(String, String)],
) -> Result<(Vec<OsString>, Vec<String>), String> {
    let mut warnings = Vec::new();
    let program = args.first().cloned().unwrap_or_else(|| "etch".into());
    let args = strip_ignored(args, &mut warnings);
    let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config_file = flag_value(&args, "config-file")
        .or_else(|| var("ETCH_CONFIG_FILE"))
        .or_else(|| var("ETCD_CONFIG_FILE"))
        .filter(|f| !f.is_empty());
    if let Some(file) = config_file {
        let mut out = vec![program];
        // --help and --version still work with a config file.
        out.extend(
            args.iter()
                .skip(1)
                .filter(|a| matches!(a.to_str(), Some("--help" | "-h" | "--version" | "-V")))
                .cloned(),
        );
        let from_file = strip_ignored(
            std::iter::once(OsString::from("etch"))
                .chain(file_args(Path::new(&file), &mut warnings)?)
                .collect(),
            &mut warnings,
        );
        out.extend(from_file.into_iter().skip(1));
        // Any flag but the file itself (and --help/--version) was given in vain.
        let ignored = flag_names(&args)
            .iter()
            .any(|n| !matches!(n.as_str(), "config-file" | "help" | "version"));
        if ignored {
            warnings.push(format!(
                "--config-file {file}: the other command-line flags are ignored, as in etcd"
            ));
        }
        return Ok((out, warnings));
    }
    let given = flag_names(&args);
    let mut out = args;
    for name in known_flags() {
        let suffix = name.to_uppercase().replace('-', "_");
        if given.contains(&name) || var(&format!("ETCH_{suffix}")).is_some() {
            continue;
        }
        if let Some(v) = var(&format!("ETCD_{suffix}")) {
            out.push(format!("--{name}={v}").into());
        }
    }
    for (name, _, why) in IGNORED_FLAGS {
        let suffix = name.to_uppercase().replace('-', "_");
        if var(&format!("ETCD_{suffix}")).is_some() {
            warnings.push(format!("ETCD_{suffix} is ignored by etch: {why}"));
        }
    }
    Ok((out, warnings))
}

/// The long names of the flags in `args` (`--name` or `--name=value`).
fn flag_names(args: &[OsString]) -> BTreeSet<String> {
    args.iter()
        .skip(1)
        .filter_map(|a| a.to_str()?.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect()
}

/// Long names of every flag clap knows.
fn known_flags() -> Vec<String> {
    Flags::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .filter(|l| l != "help" && l != "version")
        .collect()
}

/// The value of `--name VALUE` or `--name=VALUE` in `args`.
fn flag_value(args: &[OsString], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let mut it = args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        if a == long {
            return it.next().map(str::to_owned);
        }
        if let Some(v) = a.strip_prefix(&long).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_owned());
        }
    }
    None
}

/// `args` without the flags of [`IGNORED_FLAGS`] (and their values); one warning per flag.
fn strip_ignored(args: Vec<OsString>, warnings: &mut Vec<String>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let ignored = a.to_str().and_then(|s| {
            let name = s.strip_prefix("--")?;
            let (name, inline) = match name.split_once('=') {
                Some((n, _)) => (n, true),
                None => (name, false),
            };
            IGNORED_FLAGS
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|f| (f, inline))
        });
        match ignored {
            Some(((name, takes_value, why), inline)) => {
                if *takes_value && !inline {
                    it.next();
                }
                warnings.push(format!("--{name} is accepted and ignored by etch: {why}"));
            }
            None => out.push(a),
        }
    }
    out
}

/// The flags an etcd YAML configuration file stands for.
fn file_args(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --config-file {}: {e}", path.display()))?;
    yaml_args(&text, warnings).map_err(|e| format!("--config-file {}: {e}", path.display()))
}

/// The flags of etcd YAML configuration `text`.
fn yaml_args(text: &str, warnings: &mut Vec<String>) -> Result<Vec<OsString>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let Some(doc) = docs.into_iter().next() else {
        return Ok(Vec::new());
    };
    let Yaml::Hash(map) = doc else {
        return Err("expected a mapping of etcd's configuration keys".into());
    };
    let known: BTreeSet<String> = known_flags().into_iter().collect();
    let mut out = Vec::new();
    let mut push = |flag: String, v: &Yaml, warnings: &mut Vec<String>| {
        let Some(value) = scalar(v) else {
            return;
        };
        // Ignored flags pass through here: `strip_ignored` then warns about them.
        if known.contains(&flag) || IGNORED_FLAGS.iter().any(|(n, _, _)| *n == flag) {
            out.push(OsString::from(format!("--{flag}={value}")));
        } else {
            warnings.push(format!(
                "configuration key {flag:?} is not known to etch; ignored"
            ));
        }
    };
    for (k, v) in &map {
        let Some(key) = k.as_str() else {
            continue;
        };
        match (key, v) {
            ("client-transport-security" | "peer-transport-security", Yaml::Hash(section)) => {
                let peer = key.starts_with("peer");
                for (sk, sv) in section {
                    let Some(sk) = sk.as_str() else { continue };
                    let flag = match (peer, sk) {
                        (false, "crl-file") => "client-crl-file".to_owned(),
                        (true, "allowed-cn") => "peer-cert-allowed-cn".to_owned(),
                        (true, "allowed-hostname") => "peer-cert-allowed-hostname".to_owned(),
                        (true, other) => format!("peer-{other}"),
                        (false, other) => other.to_owned(),
                    };
                    push(flag, sv, warnings);
                }
            }
            _ => push(key.to_owned(), v, warnings),
        }
    }
    Ok(out)
}

/// A YAML value as a flag value; `None` for null, empty strings and empty lists.
fn scalar(v: &Yaml) -> Option<String> {
    let s = match v {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Array(items) => items
            .iter()
            .filter_map(scalar)
            .collect::<Vec<_>>()
            .join(","),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn etcd_variables_fill_flags_not_given() {
        let env = vec![
            ("ETCD_NAME".to_owned(), "m1".to_owned()),
            ("ETCD_DATA_DIR".to_owned(), "/d".to_owned()),
            ("ETCD_DEBUG".to_owned(), "true".to_owned()),
        ];
        let (args, warnings) =
            effective_args(os(&["etch", "--data-dir", "/x", "--enable-pprof"]), &env).unwrap();
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["etch", "--data-dir", "/x", "--name=m1"]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn ignored_flags_drop_their_values() {
        let (args, _) = effective_args(
            os(&[
                "etch",
                "--cors",
                "*",
                "--max-wals=5",
                "--debug",
                "--name",
                "a",
            ]),
            &[],
        )
        .unwrap();
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["etch", "--name", "a"]);
    }

    #[test]
    fn yaml_uses_etcds_keys_and_sections() {
        let text = "name: 'm0'\ndata-dir:\nheartbeat-interval: 100\nstrict-reconfig-check: false\n\
            log-outputs: [stderr]\nwal-dir: ''\nmax-wals: 5\nnot-a-key: 1\n\
            client-transport-security:\n  cert-file: /c.pem\n  client-cert-auth: true\n  crl-file: /r\n\
            peer-transport-security:\n  key-file: /k.pem\n  allowed-cn: etcd\n";
        let mut w = Vec::new();
        let args: Vec<String> = yaml_args(text, &mut w)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--name=m0",
                "--heartbeat-interval=100",
                "--strict-reconfig-check=false",
                "--log-outputs=stderr",
                "--max-wals=5",
                "--cert-file=/c.pem",
                "--client-cert-auth=true",
                "--client-crl-file=/r",
                "--peer-key-file=/k.pem",
                "--peer-cert-allowed-cn=etcd",
            ]
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(yaml_args("- a\n- b\n", &mut w).is_err());
    }

    #[test]
    fn a_config_file_overrides_flags_and_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd.yml");
        std::fs::write(&file, "name: fromfile\n").unwrap();
        let env = vec![("ETCD_DATA_DIR".to_owned(), "/d".to_owned())];
        let (args, warnings) = effective_args(
            os(&[
                "etch",
                "--config-file",
                file.to_str().unwrap(),
                "--name",
                "x",
            ]),
            &env,
        )
        .unwrap();
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["etch", "--name=fromfile"]);
        assert_eq!(warnings.len(), 1);
        let f = Flags::try_parse_from(&args).unwrap();
        assert_eq!(f.name, "fromfile");
    }
}
