//! Where snapshots wait between the raft loop and the transport.
//!
//! raft-rs only carries a snapshot's metadata; the objects travel on their own
//! stream. When raft asks the log store for a snapshot, the store shelves the
//! current state (an immutable view, cheap to keep) under its index for the
//! transport to stream. On the receiving side the transport shelves what it
//! received, then hands raft the MsgSnapshot; when raft says to install it,
//! the loop takes the objects from the shelf.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_proto::internal::Members;
use berth_proto::pb;

use crate::state::Snapshot;

/// Outgoing views kept at once (one per index; followers share them).
const KEEP_OUTGOING: usize = 4;

/// A snapshot received from a leader, waiting to be installed.
pub struct Incoming {
    pub index: u64,
    pub revision: u64,
    pub objects: Vec<pb::Object>,
    pub members: Members,
}

#[derive(Default)]
pub struct SnapshotShelf {
    outgoing: Mutex<BTreeMap<u64, Arc<Snapshot>>>,
    incoming: Mutex<Option<Incoming>>,
    sent: AtomicU64,
    installed: AtomicU64,
    metrics: crate::metrics::RaftMetrics,
}

impl SnapshotShelf {
    pub fn new(metrics: crate::metrics::RaftMetrics) -> SnapshotShelf {
        SnapshotShelf {
            metrics,
            ..Default::default()
        }
    }

    pub fn put_outgoing(&self, view: Arc<Snapshot>) {
        let mut outgoing = self.outgoing.lock().unwrap_or_else(|e| e.into_inner());
        outgoing.insert(view.applied, view);
        while outgoing.len() > KEEP_OUTGOING {
            outgoing.pop_first();
        }
    }

    pub fn outgoing(&self, index: u64) -> Option<Arc<Snapshot>> {
        let outgoing = self.outgoing.lock().unwrap_or_else(|e| e.into_inner());
        outgoing.get(&index).cloned()
    }

    pub fn put_incoming(&self, incoming: Incoming) {
        *self.incoming.lock().unwrap_or_else(|e| e.into_inner()) = Some(incoming);
    }

    /// The received snapshot for `index`, if that is the one on the shelf.
    pub fn take_incoming(&self, index: u64) -> Option<Incoming> {
        let mut slot = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some(incoming) if incoming.index == index => Some(incoming),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// A snapshot whose objects took `bytes` was sent.
    pub fn count_sent(&self, bytes: u64) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.metrics.observe_snapshot_sent(bytes);
    }

    pub fn count_installed(&self) {
        self.installed.fetch_add(1, Ordering::Relaxed);
        self.metrics.snapshots_installed.inc();
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn installed(&self) -> u64 {
        self.installed.load(Ordering::Relaxed)
    }
}
