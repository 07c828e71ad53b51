//! `etchctl snapshot status|restore`: local work on a snapshot file, etcdutl's commands for
//! etch. A snapshot file is an etcd backend file (bbolt) followed by the SHA-256 of it, as
//! `etcdctl snapshot save` keeps it against etch or etcd alike, so an etcd cluster's data moves
//! to etch with the same two commands (see `etch_storage::mvcc::MvccStore::restore_etcd` for
//! what is kept).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use etch_storage::bbolt;
use etch_storage::members::Membership;
use etch_storage::mvcc::MvccStore;

use crate::output::Format;

/// etcd's snapshot summary (`etcdutl snapshot status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// CRC-32C of every bucket name, key and value, in order (etcd's `hash`).
    pub hash: u32,
    /// Main revision of the newest key revision.
    pub revision: i64,
    /// Entries in all buckets (etcd's `totalKey`).
    pub total_keys: u64,
    /// Size of the backend file, bytes (without the trailing hash).
    pub total_size: u64,
}

/// Splits a snapshot file into the backend file and its hash check, as etcd does: a file whose
/// size is 32 more than a multiple of 512 carries a SHA-256 of the rest at its end.
///
/// # Errors
/// etcd's "expected sha256 [...], got [...]" when the hash does not match, and "snapshot
/// missing hash but --skip-hash-check=false" when there is none and `skip_hash_check` is off.
pub fn verified_db(file: &[u8], skip_hash_check: bool) -> Result<&[u8], String> {
    let has_hash = file.len() % 512 == 32;
    if !has_hash {
        if skip_hash_check {
            return Ok(file);
        }
        return Err("snapshot missing hash but --skip-hash-check=false".into());
    }
    let (db, sha) = file.split_at(file.len() - 32);
    if !skip_hash_check {
        let got = Sha256::digest(db);
        if got.as_slice() != sha {
            return Err(format!("expected sha256 {sha:?}, got {:?}", got.as_slice()));
        }
    }
    Ok(db)
}

/// The summary of backend file `db`.
///
/// # Errors
/// The file is not a readable bbolt file.
pub fn status(db: &[u8]) -> Result<Status, String> {
    let buckets = bbolt::read_buckets(db).map_err(|e| e.to_string())?;
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut digest = crc.digest();
    let mut s = Status {
        hash: 0,
        revision: 0,
        total_keys: 0,
        total_size: db.len() as u64,
    };
    for (name, entries) in &buckets {
        digest.update(name);
        for (k, v) in entries {
            digest.update(k);
            digest.update(v);
            s.total_keys += 1;
        }
        if name == b"key"
            && let Some((k, _)) = entries.last()
            && k.len() >= 8
        {
            s.revision = i64::from_be_bytes(k[..8].try_into().unwrap_or_default());
        }
    }
    s.hash = digest.finalize();
    Ok(s)
}

/// `status` as etcdctl prints it in `fmt`.
pub fn status_text(s: &Status, fmt: Format) -> String {
    let size = human_bytes(s.total_size);
    match fmt {
        Format::Json => format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_keys, s.total_size
        ),
        Format::Fields => format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            s.hash, s.revision, s.total_keys, s.total_size
        ),
        Format::Table => {
            let cells = [
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_keys.to_string(),
                size,
            ];
            let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let w: Vec<usize> = heads
                .iter()
                .zip(&cells)
                .map(|(h, c)| h.len().max(c.len()))
                .collect();
            let line: String = w
                .iter()
                .map(|n| format!("+{}", "-".repeat(n + 2)))
                .collect::<String>()
                + "+\n";
            let row = |v: Vec<String>| {
                v.iter()
                    .zip(&w)
                    .map(|(c, n)| format!("| {c:>n$} "))
                    .collect::<String>()
                    + "|\n"
            };
            format!(
                "{line}{}{line}{}{line}",
                row(heads.iter().map(|h| (*h).to_owned()).collect()),
                row(cells.to_vec())
            )
        }
        Format::Simple => format!("{:x}, {}, {}, {}\n", s.hash, s.revision, s.total_keys, size),
    }
}

/// Sizes as etcdctl prints them (go-humanize `Bytes`: SI units, e.g. `20 kB`).
fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let v = n as f64 / 1000f64.powi(e as i32);
    if v < 10.0 {
        format!("{v:.1} {}", units[e])
    } else {
        format!("{v:.0} {}", units[e])
    }
}

/// Where and as whom a snapshot is restored (etcdutl's flags).
#[derive(Debug, Clone)]
pub struct RestoreTo {
    /// This member's name (`--name`).
    pub name: String,
    /// Every member, `name=url,...` (`--initial-cluster`).
    pub initial_cluster: String,
    /// `--initial-cluster-token`.
    pub token: String,
    /// This member's peer URLs, comma separated (`--initial-advertise-peer-urls`).
    pub advertise_peer_urls: String,
    /// The new data dir (`--data-dir`); must not exist or be empty.
    pub data_dir: PathBuf,
}

/// Builds a new data dir from snapshot file `file`: the data of the snapshot, this member's
/// identity and the new cluster's membership (IDs computed as etcd does from the URLs and
/// token). Start etch on it with the same `--name`/`--initial-cluster`/token flags. Returns a
/// line saying what was restored.
///
/// # Errors
/// A bad hash, a damaged file, a data dir in use, a name missing from the cluster.
pub fn restore(file: &[u8], skip_hash_check: bool, to: &RestoreTo) -> Result<String, String> {
    let db = verified_db(file, skip_hash_check)?;
    let buckets = bbolt::read_buckets(db)
        .map_err(|e| format!("snapshot file integrity check failed: {e}"))?;
    let mut members = Vec::new();
    for part in to.initial_cluster.split(',').filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {part:?} is not name=url"))?;
        match members
            .iter_mut()
            .find(|(n, _): &&mut (String, Vec<String>)| n == name)
        {
            Some((_, urls)) => urls.push(url.to_owned()),
            None => members.push((name.to_owned(), vec![url.to_owned()])),
        }
    }
    let own: Vec<String> = to
        .advertise_peer_urls
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let (_, urls) = members.iter().find(|(n, _)| *n == to.name).ok_or_else(|| {
        format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            to.name
        )
    })?;
    let (mut a, mut b) = (urls.clone(), own.clone());
    a.sort();
    b.sort();
    if a != b {
        return Err(format!(
            "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
            to.name,
            urls.join(","),
            own.join(",")
        ));
    }
    let mut membership = Membership::default();
    for (name, urls) in &members {
        membership
            .members
            .push(etch_protocol::etcdserverpb::Member {
                id: etch_storage::members::member_id(urls, &to.token),
                name: name.clone(),
                peer_ur_ls: urls.clone(),
                client_ur_ls: Vec::new(),
                is_learner: false,
            });
    }
    membership.members.sort_by_key(|m| m.id);
    let ids: Vec<u64> = membership.members.iter().map(|m| m.id).collect();
    let member_id = etch_storage::members::member_id(&own, &to.token);
    let cluster_id = etch_storage::members::cluster_id(&ids);
    check_empty(&to.data_dir)?;
    let member_dir = to.data_dir.join("member");
    let store = MvccStore::open(&member_dir).map_err(|e| e.to_string())?;
    let r = store.restore_etcd(&buckets).map_err(|e| e.to_string())?;
    store
        .replace_membership(&membership)
        .and_then(|()| store.set_identity(member_id, cluster_id))
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "restored snapshot into {}: revision {}, {} keys ({} revisions), {} leases; member {:x} of cluster {:x} ({} members)\n",
        to.data_dir.display(),
        r.revision,
        r.keys,
        r.revisions,
        r.leases,
        member_id,
        cluster_id,
        membership.members.len()
    ))
}

fn check_empty(dir: &Path) -> Result<(), String> {
    let used = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if used {
        return Err(format!("data-dir {:?} exists", dir.display().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_checked_as_etcd_does() {
        let db = vec![7u8; 1024];
        let mut file = db.clone();
        file.extend_from_slice(&Sha256::digest(&db));
        assert_eq!(verified_db(&file, false).unwrap(), &db[..]);
        let mut bad = file.clone();
        bad[3] ^= 1;
        assert!(
            verified_db(&bad, false)
                .unwrap_err()
                .starts_with("expected sha256")
        );
        assert!(verified_db(&bad, true).is_ok());
        assert!(
            verified_db(&db, false)
                .unwrap_err()
                .contains("missing hash")
        );
    }

    #[test]
    fn sizes_print_as_etcdctl() {
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(5), "5 B");
    }
}
