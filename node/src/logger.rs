//! Bridges raft-rs's `slog` output into `tracing`, so the whole node logs through one
//! subscriber (raft's messages appear under the `raft` target).

use etch_protocol::ids::MemberId;
use slog::{Drain, KV, Level, OwnedKVList, Record};

struct TracingDrain;

struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut f = Fields(String::new());
        let _ = record.kv().serialize(record, &mut f);
        let _ = values.serialize(record, &mut f);
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{}", f.0),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{}", f.0),
            Level::Info => tracing::info!(target: "raft", "{msg}{}", f.0),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{}", f.0),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{}", f.0),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that forwards to `tracing`, tagged with the member ID.
pub(crate) fn raft_logger(member_id: u64) -> slog::Logger {
    slog::Logger::root(
        TracingDrain.fuse(),
        slog::o!("member" => MemberId(member_id).to_string()),
    )
}
