//! etcd's TLS flags as rustls types: `--cipher-suites` to a crypto provider,
//! `--tls-min-version`/`--tls-max-version` to protocol versions. Checked when the flags are
//! parsed, so a bad value stops the member before it starts.

use rustls::crypto::CryptoProvider;

/// The ring provider limited to etcd's `--cipher-suites` (Go/IANA names such as
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`). The list applies to TLS 1.2, as in etcd (Go does
/// not let TLS 1.3 suites be chosen): TLS 1.3 suites stay. Empty = rustls's defaults.
///
/// # Errors
/// A name rustls does not implement (CBC and RSA key-exchange suites, for instance).
pub fn provider(cipher_suites: &[String]) -> Result<CryptoProvider, String> {
    let mut p = rustls::crypto::ring::default_provider();
    if cipher_suites.is_empty() {
        return Ok(p);
    }
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
    let mut chosen: Vec<_> = all
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .copied()
        .collect();
    for name in cipher_suites {
        // Go's short aliases name the same suites as the IANA names.
        let want = match name.as_str() {
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            n => n,
        };
        let Some(s) = all
            .iter()
            .find(|s| s.version() == &rustls::version::TLS12 && s.suite().as_str() == Some(want))
        else {
            let known: Vec<&str> = all
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS12)
                .filter_map(|s| s.suite().as_str())
                .collect();
            return Err(format!(
                "cipher suite {name} is not supported; supported: {}",
                known.join(",")
            ));
        };
        chosen.push(*s);
    }
    p.cipher_suites = chosen;
    Ok(p)
}

/// TLS versions from etcd's `--tls-min-version` / `--tls-max-version` (`TLS1.2`, `TLS1.3`;
/// empty max = the newest).
///
/// # Errors
/// Other names (TLS 1.0 and 1.1 are not offered by rustls), min above max, or a cipher suite
/// list with TLS 1.3 only (etcd: "cipher suites cannot be configured when only TLS1.3 is
/// enabled").
pub fn versions(
    min: &str,
    max: &str,
    cipher_suites: &[String],
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let rank = |v: &str, what: &str| match v {
        "TLS1.2" => Ok(2),
        "TLS1.3" => Ok(3),
        "" if what == "max" => Ok(3),
        other => Err(format!(
            "unsupported TLS version {other:?} for --tls-{what}-version (TLS1.2 or TLS1.3)"
        )),
    };
    let (lo, hi) = (rank(min, "min")?, rank(max, "max")?);
    if lo > hi {
        return Err("--tls-min-version is above --tls-max-version".into());
    }
    if lo == 3 && !cipher_suites.is_empty() {
        return Err("cipher suites cannot be configured when only TLS1.3 is enabled".into());
    }
    let mut v = Vec::new();
    if hi >= 3 {
        v.push(&rustls::version::TLS13);
    }
    if lo <= 2 {
        v.push(&rustls::version::TLS12);
    }
    Ok(v)
}
