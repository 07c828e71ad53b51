//! `Maintenance.Snapshot` (etcd `v3rpc/maintenance.go`): this member's store as of one moment,
//! as an etcd backend file (bbolt, see `etch_storage::mvcc::MvccStore::write_etcd_snapshot`),
//! streamed in 32 KiB chunks whose `remaining_bytes` count what is still to come, then one last
//! message carrying the SHA-256 of everything sent (the file `etcdctl snapshot save` keeps is
//! the data followed by its hash; `snapshot restore` checks it). Writes go on meanwhile.
//!
//! The image is written to a file in the member directory first, which is unlinked at once:
//! nothing is left behind whatever happens to the stream or the process.

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};

use etch_protocol::etcdserverpb::SnapshotResponse;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{AuthInfo, Res, Service};
use crate::error::ApiError;

/// Bytes per message (etcd `snapshotSendBufferSize`).
pub(super) const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Service {
    /// Streams this member's snapshot (see the module doc). Root only when auth is enabled,
    /// as in etcd.
    ///
    /// # Errors
    /// Permission errors at once; a store or IO failure ends the stream with an internal
    /// error.
    pub fn snapshot(
        &self,
        who: &AuthInfo,
    ) -> Res<impl Stream<Item = Res<SnapshotResponse>> + Send + 'static> {
        self.check_admin(who)?;
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel::<Res<SnapshotResponse>>(4);
        tokio::task::spawn_blocking(move || {
            let path = store.dir().join(format!(
                "snapshot-{}-{}.tmp",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let result = (|| -> Result<(), String> {
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| e.to_string())?;
                let _ = std::fs::remove_file(&path);
                let total = store
                    .write_etcd_snapshot(&mut f)
                    .map_err(|e| e.to_string())?;
                f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
                let mut sha = Sha256::new();
                let mut sent = 0u64;
                while sent < total {
                    let n = SNAPSHOT_CHUNK_BYTES.min((total - sent) as usize);
                    let mut blob = vec![0u8; n];
                    f.read_exact(&mut blob).map_err(|e| e.to_string())?;
                    sha.update(&blob);
                    sent += n as u64;
                    let msg = SnapshotResponse {
                        header: None,
                        remaining_bytes: total - sent,
                        blob: blob.into(),
                    };
                    if tx.blocking_send(Ok(msg)).is_err() {
                        return Ok(()); // the client went away
                    }
                }
                let _ = tx.blocking_send(Ok(SnapshotResponse {
                    header: None,
                    remaining_bytes: 0,
                    blob: sha.finalize().to_vec().into(),
                }));
                tracing::info!(bytes = total, "sent a snapshot");
                Ok(())
            })();
            if let Err(e) = result {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(error = %e, "snapshot failed");
                let _ = tx.blocking_send(Err(ApiError::SnapshotFailed));
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}
