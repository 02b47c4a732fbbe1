//! raft-rs logs through `slog`; this drain hands its records to `tracing`, so
//! that raft's messages appear in the apiserver's log with the same filter.

use std::fmt::Write;

use slog::{Drain, KV, Level, OwnedKVList, Record, Serializer};

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let message = record.msg();
        match record.level() {
            Level::Critical | Level::Error => {
                tracing::error!(target: "raft", "{message}{}", fields.0)
            }
            Level::Warning => tracing::warn!(target: "raft", "{message}{}", fields.0),
            Level::Info => tracing::info!(target: "raft", "{message}{}", fields.0),
            Level::Debug => tracing::debug!(target: "raft", "{message}{}", fields.0),
            Level::Trace => tracing::trace!(target: "raft", "{message}{}", fields.0),
        }
        Ok(())
    }
}

struct Fields(String);

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// A logger for raft-rs whose records go to `tracing` (target `raft`).
pub fn logger(member: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("member" => member))
}
