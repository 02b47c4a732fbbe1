//! Checkpoints written on their own thread.
//!
//! Each checkpoint is one state segment: what changed since the previous
//! one. Once the segments on disk outweigh the live objects in them
//! [`MAX_AMPLIFICATION`] times — objects overwritten or deleted since, whose
//! older records a restart reads for nothing — the next checkpoint is full
//! and replaces every older segment.
//!
//! A checkpoint writes every object changed since the previous one — tens of
//! milliseconds for thousands of objects — so the raft loop hands it over and
//! goes on; it learns with `Input::CheckpointDone` when the checkpoint is
//! durable and the log before it may be compacted. Installing a leader's
//! snapshot takes the same lock and bumps the epoch, so that an older
//! checkpoint can never land on top of the snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use berth_proto::internal::HistoryRecord;
use raft::eraftpb::ConfState;

use super::Input;
use crate::state_machine::{Checkpoint, SegmentSize};
use crate::storage::{EncodedObjects, Storage, StorageError, WriteBatch};

pub struct Job {
    pub epoch: u64,
    pub checkpoint: Checkpoint,
    /// Raft's configuration as of the checkpoint's index.
    pub conf_state: ConfState,
    /// The history records since the previous checkpoint, stored with this
    /// one rather than by the raft loop every turn: the log they are made
    /// from is durable, so they can wait, and the raft loop writes each
    /// change once instead of twice.
    pub history: Vec<Arc<HistoryRecord>>,
}

/// How many times the segments on disk may outweigh the live objects they
/// hold before the next checkpoint is full (space amplification, as
/// RocksDB's universal compaction bounds it). A full segment encodes,
/// compresses and writes every object, cold in memory by then; deltas that
/// only add objects waste nothing, so a full segment is due only once
/// overwritten and deleted records make up three quarters of the store
/// (and of what a restart reads).
const MAX_AMPLIFICATION: usize = 4;

/// Below this many live bytes the store may hold up to
/// [`MAX_AMPLIFICATION`] times this much before a full segment: rewriting
/// a small state on every checkpoint would gain nothing.
const SMALL_STATE_BYTES: usize = 1 << 20;

/// History records per stored group: small enough that sled keeps a group
/// inline in its leaf rather than as a blob file of its own.
const HISTORY_GROUP: usize = 256;

pub struct Checkpointer {
    jobs: mpsc::Sender<Job>,
    /// Held while a checkpoint (or a snapshot install) is written.
    writing: Arc<Mutex<()>>,
    epoch: Arc<AtomicU64>,
}

impl Checkpointer {
    pub(crate) fn start(
        storage: Storage,
        inputs: mpsc::Sender<Input>,
    ) -> std::io::Result<Checkpointer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let writing: Arc<Mutex<()>> = Arc::default();
        let epoch: Arc<AtomicU64> = Arc::default();
        let (lock, current) = (writing.clone(), epoch.clone());
        std::thread::Builder::new()
            .name("berth-checkpoint".into())
            .spawn(move || {
                let mut stored = Stored::default();
                let mut encoded = EncodedObjects::default();
                for mut job in queue {
                    let _writing = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if job.epoch != current.load(Ordering::Acquire) {
                        // A snapshot replaced the state (with a full segment
                        // whose records this thread did not count).
                        stored = Stored::default();
                        continue;
                    }
                    let full = stored.full_due();
                    if !full {
                        // Let go of the raft loop's map at once: while a
                        // clone of it lives, every change there copies.
                        job.checkpoint.forget_objects();
                    }
                    let result = write_counted(&storage, &job, full, &mut stored, &mut encoded);
                    encoded.clear();
                    if result.is_err() {
                        // What reached the disk is unknown: start afresh.
                        stored = Stored::default();
                    }
                    let done = Input::CheckpointDone {
                        epoch: job.epoch,
                        applied: job.checkpoint.applied,
                        error: result.err().map(|e| e.to_string()),
                    };
                    if inputs.send(done).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer {
            jobs,
            writing,
            epoch,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn submit(
        &self,
        checkpoint: Checkpoint,
        conf_state: ConfState,
        history: Vec<Arc<HistoryRecord>>,
    ) {
        let _ = self.jobs.send(Job {
            epoch: self.epoch(),
            checkpoint,
            conf_state,
            history,
        });
    }

    /// Waits for a checkpoint being written and keeps others out; queued
    /// ones are dropped (the caller is about to replace the whole state).
    pub fn exclusive(&self) -> MutexGuard<'_, ()> {
        let guard = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        guard
    }
}

/// What the segments since the last full one (that one included) hold:
/// the bytes of all their records, and of those that later ones overwrote
/// or deleted (counted by the state machine, which sees each object's old
/// version when it changes: no map of every record's size here).
#[derive(Default)]
struct Stored {
    /// Whether this is known (after a first full segment written here).
    known: bool,
    bytes: usize,
    dead_bytes: usize,
}

impl Stored {
    fn full_due(&self) -> bool {
        let live = self.bytes.saturating_sub(self.dead_bytes);
        !self.known || self.bytes > MAX_AMPLIFICATION * live.max(SMALL_STATE_BYTES)
    }

    fn add(&mut self, full: bool, segment: SegmentSize) {
        if full {
            *self = Stored {
                known: true,
                ..Stored::default()
            };
        }
        self.bytes += segment.bytes;
        self.dead_bytes += segment.dead_bytes;
    }
}

/// Writes a full checkpoint atomically and makes it durable.
pub fn write(storage: &Storage, job: &Job) -> Result<(), StorageError> {
    write_counted(
        storage,
        job,
        true,
        &mut Stored::default(),
        &mut EncodedObjects::default(),
    )
}

fn write_counted(
    storage: &Storage,
    job: &Job,
    full: bool,
    stored: &mut Stored,
    encoded: &mut EncodedObjects,
) -> Result<(), StorageError> {
    // Four steps, none of which holds sled's global write lock for long
    // (an atomic batch does, and the raft loop's writes would wait behind
    // megabytes of segment): the history records, which a restart before
    // the bookkeeping makes again identical from the log; the segment
    // alone, keyed by its index, which a restart ignores until the
    // bookkeeping reaches it; then that bookkeeping, small and atomic; then,
    // after a full segment, the removal of the segments it replaces. The
    // bulk goes out to the disk here (`write_out`), not with the raft
    // loop's next flush.
    for group in job.history.chunks(HISTORY_GROUP) {
        let mut batch = WriteBatch::new();
        batch.put_history_with(group, encoded);
        storage.write(batch)?;
        storage.write_out()?;
    }
    let mut batch = WriteBatch::new();
    let size = job.checkpoint.put_segment(full, &mut batch, encoded);
    storage.write(batch)?;
    storage.write_out()?;
    let mut batch = WriteBatch::new();
    job.checkpoint.put_bookkeeping(&mut batch);
    batch.put_conf_state(&job.conf_state)?;
    storage.write_atomic(batch)?;
    if full {
        let mut batch = WriteBatch::new();
        storage.drop_segments_before(job.checkpoint.applied, &mut batch)?;
        storage.write(batch)?;
    }
    storage.flush()?;
    stored.add(full, size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn full(bytes: usize) -> SegmentSize {
        SegmentSize {
            bytes,
            dead_bytes: 0,
        }
    }

    /// A delta of `bytes` that overwrites or deletes `dead_bytes`.
    fn delta(bytes: usize, dead_bytes: usize) -> SegmentSize {
        SegmentSize { bytes, dead_bytes }
    }

    #[test]
    fn the_first_checkpoint_is_full() {
        assert!(Stored::default().full_due());
    }

    #[test]
    fn segments_that_only_add_objects_never_make_a_full_one_due() {
        let mut stored = Stored::default();
        stored.add(true, full(MIB));
        for i in 0..1000 {
            stored.add(false, delta(MIB, 0));
            assert!(!stored.full_due(), "after {} MiB", i + 2);
        }
    }

    #[test]
    fn a_full_segment_is_due_past_four_times_the_live_bytes() {
        let mut stored = Stored::default();
        stored.add(true, full(2 * MIB));
        // Three rewrites of every object: 8 MiB on disk, 2 MiB live.
        for _ in 0..3 {
            stored.add(false, delta(2 * MIB, 2 * MIB));
            assert!(!stored.full_due());
        }
        stored.add(false, delta(1024, 1024));
        assert!(stored.full_due());
        // The full segment starts the count afresh.
        stored.add(true, full(2 * MIB));
        assert!(!stored.full_due());
    }

    #[test]
    fn a_small_state_may_leave_up_to_four_mebibytes_behind() {
        let mut stored = Stored::default();
        stored.add(true, full(1024));
        // Rewrites of one 1 KiB object: 4 MiB before a full is due.
        for _ in 1..4096 {
            stored.add(false, delta(1024, 1024));
        }
        assert!(!stored.full_due());
        stored.add(false, delta(1024, 1024));
        assert!(stored.full_due());
    }

    #[test]
    fn deletions_count_as_dead_with_their_own_records() {
        let mut stored = Stored::default();
        stored.add(true, full(8 * MIB));
        // Most objects deleted: their records and the deletions are dead.
        stored.add(false, delta(MIB / 4, 7 * MIB + MIB / 4));
        assert!(stored.full_due());
    }
}
