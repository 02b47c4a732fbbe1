//! Watch: ordered, gap-free change streams from any revision.
//!
//! Every change is a [`HistoryRecord`] at its revision. The [`WatchHub`] keeps
//! the newest records in memory and the rest in storage until compacted; a
//! watcher is a cursor that reads records after its revision (from memory when
//! it can, from disk when it fell behind), filters them, and waits for the next
//! published snapshot when it has caught up. Because a watcher only ever moves
//! its cursor over records in revision order, it cannot skip or repeat one,
//! however slow its client is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use berth_proto::internal::{Change, HistoryRecord};
use berth_proto::pb;
use berth_proto::selector::Selector;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::error::ApiError;
use crate::state::{Membership, ObjectMap, Snapshot};
use crate::storage::Storage;

/// Records read per step of a watcher.
const READ_CHUNK: usize = 512;

pub struct WatchHub {
    storage: Storage,
    /// The published state. Read its objects only through the gate: while
    /// the gate is closed they are not there (see [`WatchHub::reclaim`]).
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Closed (true) while the raft loop applies entries to the map it took
    /// back from the published snapshot.
    gate: Mutex<bool>,
    opened: Condvar,
    recent: RwLock<Recent>,
    /// History at or below this revision may be gone.
    compacted: AtomicU64,
    capacity: usize,
}

/// The newest records. Every record with a revision above `floor` is here.
struct Recent {
    floor: u64,
    /// Records up to this revision are in storage too; only those may leave
    /// memory (the rest are stored with the next checkpoint).
    stored: u64,
    records: VecDeque<Arc<HistoryRecord>>,
}

impl WatchHub {
    pub fn new(storage: Storage, snapshot: Snapshot, compacted: u64, capacity: usize) -> WatchHub {
        let floor = snapshot.revision;
        WatchHub {
            storage,
            snapshot: watch::Sender::new(Arc::new(snapshot)),
            gate: Mutex::new(false),
            opened: Condvar::new(),
            recent: RwLock::new(Recent {
                floor,
                stored: floor,
                records: VecDeque::new(),
            }),
            compacted: AtomicU64::new(compacted),
            capacity: capacity.max(1),
        }
    }

    /// The newest durable state. Waits while the raft loop applies entries
    /// to a reclaimed map (a fraction of a turn; see [`WatchHub::reclaim`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let mut closed = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        while *closed {
            closed = self.opened.wait(closed).unwrap_or_else(|e| e.into_inner());
        }
        self.snapshot.borrow().clone()
    }

    /// The newest durable state, or `None` while the gate is closed: for the
    /// raft loop itself, which must not wait for its own publish.
    pub fn try_snapshot(&self) -> Option<Arc<Snapshot>> {
        let closed = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        (!*closed).then(|| self.snapshot.borrow().clone())
    }

    /// The members as of the newest durable state (never waits: a reclaim
    /// leaves them in place).
    pub fn membership(&self) -> Arc<Membership> {
        self.snapshot.borrow().membership.clone()
    }

    /// Takes the objects back from the published snapshot if no reader holds
    /// it, so that the raft loop's map — which that snapshot shares — is its
    /// own again and applying entries changes it in place. Otherwise every
    /// change after a publish copies the persistent map's path to it (tens
    /// of nodes, each a few dozen reference counts), the largest single cost
    /// of applying a write. Until the next [`WatchHub::publish`] the gate is
    /// closed and readers wait. Returns whether it took them.
    pub fn reclaim(&self) -> bool {
        let mut closed = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return true;
        }
        // Readers clone the snapshot holding the gate, so none can start
        // while this looks at the count.
        self.snapshot.send_if_modified(|current| {
            if let Some(snapshot) = Arc::get_mut(current) {
                snapshot.objects = ObjectMap::default();
                *closed = true;
            }
            false
        });
        *closed
    }

    /// Publishes `snapshot` if a reclaim left the gate closed (the raft loop
    /// failed before it could publish).
    pub fn reopen(&self, snapshot: Snapshot) {
        let closed = *self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if closed {
            self.publish(snapshot, Vec::new());
        }
    }

    fn replace_snapshot(&self, snapshot: Snapshot) {
        let mut closed = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        self.snapshot.send_replace(Arc::new(snapshot));
        if std::mem::replace(&mut *closed, false) {
            self.opened.notify_all();
        }
    }

    pub fn compacted(&self) -> u64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Makes a durable batch visible: first its records, then the snapshot
    /// (which wakes the watchers), so a reader of the snapshot at revision R
    /// always finds every record up to R.
    pub fn publish(&self, snapshot: Snapshot, records: Vec<Arc<HistoryRecord>>) {
        if !records.is_empty() {
            let mut recent = self.recent.write().unwrap_or_else(|e| e.into_inner());
            recent.records.extend(records);
            recent.evict(self.capacity);
        }
        self.replace_snapshot(snapshot);
    }

    /// The history up to `revision` is in storage: memory may let it go.
    pub fn history_stored(&self, revision: u64) {
        let mut recent = self.recent.write().unwrap_or_else(|e| e.into_inner());
        recent.stored = recent.stored.max(revision);
        recent.evict(self.capacity);
    }

    /// Replaces everything after a snapshot was installed: the history before
    /// it is gone, so watchers behind `compacted` must list again.
    pub fn reset(&self, snapshot: Snapshot, compacted: u64) {
        {
            let mut recent = self.recent.write().unwrap_or_else(|e| e.into_inner());
            recent.records.clear();
            recent.floor = snapshot.revision;
            recent.stored = snapshot.revision;
        }
        self.compacted.fetch_max(compacted, Ordering::AcqRel);
        self.replace_snapshot(snapshot);
    }

    /// Waits until the published state has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<Arc<Snapshot>, ApiError> {
        let mut publishes = self.subscribe();
        loop {
            // Seen before reading, so that a publish after the read wakes us.
            publishes.borrow_and_update();
            let snapshot = self.snapshot();
            if snapshot.applied >= index {
                return Ok(snapshot);
            }
            drop(snapshot);
            publishes
                .changed()
                .await
                .map_err(|_| ApiError::ShuttingDown)?;
        }
    }

    /// Announces that history up to `upto` is about to be deleted from disk.
    pub fn begin_compaction(&self, upto: u64) {
        self.compacted.fetch_max(upto, Ordering::AcqRel);
    }

    /// Up to [`READ_CHUNK`] records with a revision above `after`, in order.
    pub fn records_after(&self, after: u64) -> Result<Vec<Arc<HistoryRecord>>, ApiError> {
        self.check_not_compacted(after)?;
        {
            let recent = self.recent.read().unwrap_or_else(|e| e.into_inner());
            if after >= recent.floor {
                let start = recent.records.partition_point(|r| r.revision <= after);
                return Ok(recent
                    .records
                    .range(start..)
                    .take(READ_CHUNK)
                    .cloned()
                    .collect());
            }
        }
        let records = self
            .storage
            .history_after(after, READ_CHUNK)
            .map_err(|e| ApiError::Storage(e.to_string()))?;
        // Compaction may have removed records while we read: if it reached our
        // cursor, what we read may have a hole.
        self.check_not_compacted(after)?;
        Ok(records.into_iter().map(Arc::new).collect())
    }

    fn check_not_compacted(&self, after: u64) -> Result<(), ApiError> {
        let compacted = self.compacted();
        if after < compacted {
            return Err(ApiError::Compacted {
                requested: after,
                oldest: compacted,
            });
        }
        Ok(())
    }

    /// Wakes at each publish. Only the revisions may be read from it: the
    /// objects are behind the gate.
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }
}

impl Recent {
    /// Keeps at most `capacity` records, and every record not yet stored.
    fn evict(&mut self, capacity: usize) {
        while self.records.len() > capacity
            && self
                .records
                .front()
                .is_some_and(|r| r.revision <= self.stored)
        {
            if let Some(evicted) = self.records.pop_front() {
                self.floor = evicted.revision;
            }
        }
    }
}

/// What a watcher wants to see.
pub struct Filter {
    pub kind: pb::Kind,
    pub namespace: Option<String>,
    pub selector: Selector,
    /// Only tasks bound to this node (a node's own watch).
    pub bound_to: Option<String>,
}

impl Filter {
    fn selects(&self, object: &pb::Object) -> bool {
        object.kind() == self.kind
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| object.namespace() == ns)
            && object.labels().is_some_and(|l| self.selector.matches(l))
            && self
                .bound_to
                .as_deref()
                .is_none_or(|node| object.as_task().is_some_and(|t| t.bound_node() == node))
    }

    /// The event a change means to this watcher, if any. An object modified
    /// into or out of the selection is ADDED or DELETED for it.
    fn event(&self, change: &Change, revision: u64) -> Option<pb::WatchEvent> {
        let object = change.object.as_ref()?;
        let now = self.selects(object);
        let ty = match pb::WatchEventType::try_from(change.r#type).ok()? {
            pb::WatchEventType::Modified => {
                let before = change.prev.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => pb::WatchEventType::Modified,
                    (false, true) => pb::WatchEventType::Added,
                    (true, false) => pb::WatchEventType::Deleted,
                    (false, false) => return None,
                }
            }
            ty @ (pb::WatchEventType::Added | pb::WatchEventType::Deleted) if now => ty,
            _ => return None,
        };
        Some(pb::WatchEvent {
            r#type: ty as i32,
            object: Some((**object).clone()),
            revision,
        })
    }
}

/// Streams the changes after `from` that pass `filter` into `out`, until the
/// client goes away, the server shuts down, or the cursor falls behind
/// compaction (then the stream ends with OUT_OF_RANGE). Sends a BOOKMARK with
/// the current revision every `bookmark_every` while idle.
pub async fn run_watcher(
    hub: Arc<WatchHub>,
    filter: Filter,
    from: u64,
    out: mpsc::Sender<Result<pb::WatchEvent, Status>>,
    mut shutdown: watch::Receiver<bool>,
    bookmark_every: Duration,
) {
    let mut snapshots = hub.subscribe();
    let mut cursor = from;
    let mut bookmarks = tokio::time::interval(bookmark_every);
    bookmarks.reset();
    loop {
        // Mark the current snapshot seen before reading, so that a publish
        // after the read is never missed.
        let latest = snapshots.borrow_and_update().revision;
        let records = match hub.records_after(cursor) {
            Ok(records) => records,
            Err(e) => {
                let _ = out.send(Err(e.into())).await;
                return;
            }
        };
        if records.is_empty() {
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                _ = bookmarks.tick() => {
                    let bookmark = pb::WatchEvent {
                        r#type: pb::WatchEventType::Bookmark as i32,
                        object: None,
                        revision: latest.max(cursor),
                    };
                    if out.send(Ok(bookmark)).await.is_err() {
                        return;
                    }
                }
                _ = out.closed() => return,
                _ = shutdown.changed() => return,
            }
            continue;
        }
        for record in records {
            for change in &record.changes {
                if let Some(event) = filter.event(change, record.revision)
                    && out.send(Ok(event)).await.is_err()
                {
                    return;
                }
            }
            cursor = record.revision;
        }
        bookmarks.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(revision: u64) -> Arc<HistoryRecord> {
        Arc::new(HistoryRecord {
            revision,
            changes: Vec::new(),
        })
    }

    fn at(revision: u64) -> Snapshot {
        Snapshot {
            revision,
            applied: revision,
            ..Default::default()
        }
    }

    fn revisions(records: &[Arc<HistoryRecord>]) -> Vec<u64> {
        records.iter().map(|r| r.revision).collect()
    }

    fn with_object(revision: u64) -> Snapshot {
        let object = Arc::new(pb::Object::from(pb::Namespace {
            metadata: Some(pb::ObjectMeta {
                name: format!("ns-{revision}"),
                resource_version: revision,
                ..Default::default()
            }),
            spec: None,
        }));
        let mut snapshot = at(revision);
        snapshot
            .objects
            .insert(crate::state::MapKey::new(Arc::new(object.key())), object);
        snapshot
    }

    /// A reader never sees the objects a reclaim took: it waits for the
    /// next publish. A reader holding the snapshot prevents the reclaim.
    #[test]
    fn readers_wait_out_a_reclaim_and_holders_prevent_it() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(WatchHub::new(
            Storage::open(dir.path()).unwrap(),
            with_object(1),
            0,
            8,
        ));
        let held = hub.snapshot();
        assert!(!hub.reclaim(), "a reader holds the snapshot");
        assert_eq!(hub.snapshot().objects.len(), 1);
        drop(held);

        assert!(hub.reclaim());
        assert!(hub.try_snapshot().is_none());
        assert_eq!(hub.membership(), Arc::default());
        let reader = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.snapshot())
        };
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.publish(with_object(2), vec![]))
        };
        publisher.join().unwrap();
        let seen = reader.join().unwrap();
        assert_eq!((seen.revision, seen.objects.len()), (2, 1));
        assert!(hub.try_snapshot().is_some());
        drop(seen);

        // A member whose storage failed mid-turn opens the gate too.
        assert!(hub.reclaim());
        hub.reopen(with_object(3));
        assert_eq!(hub.snapshot().revision, 3);
    }

    /// Records the last checkpoint has not stored yet exist nowhere but in
    /// memory: however small the cache, they stay until stored.
    #[test]
    fn memory_keeps_every_record_not_yet_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let hub = WatchHub::new(storage.clone(), at(0), 0, 2);
        for revision in 1..=5 {
            hub.publish(at(revision), vec![record(revision)]);
        }
        // Nothing stored: all five are still served from memory.
        assert_eq!(revisions(&hub.records_after(0).unwrap()), [1, 2, 3, 4, 5]);

        // A checkpoint stored 1..=4: memory may keep only the cache's two.
        let mut batch = crate::storage::WriteBatch::new();
        batch.put_history(&(1..=4).map(record).collect::<Vec<_>>());
        storage.write(batch).unwrap();
        hub.history_stored(4);
        assert_eq!(hub.recent.read().unwrap().records.len(), 2);
        // Older revisions come from disk, still every one in order.
        assert_eq!(revisions(&hub.records_after(0).unwrap()), [1, 2, 3, 4]);
        assert_eq!(revisions(&hub.records_after(3).unwrap()), [4, 5]);
    }
}
