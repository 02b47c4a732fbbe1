//! raft-rs's `Storage` over the apiserver's sled store.
//!
//! raft-rs reads the log through this type; the raft loop writes through it.
//! Everything small is kept in memory — hard state, conf state, where the log
//! starts, the term of every entry — and the newest entries are cached, so
//! that replicating to a follower that keeps up never reads the disk. Writes
//! are added to the caller's [`WriteBatch`]; the loop makes them durable.
//!
//! Only the raft thread touches a `LogStore` (raft-rs owns it inside the
//! `RawNode`), so it needs no lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot as RaftSnapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use super::snapshots::SnapshotShelf;
use crate::storage::{LoadedLog, Storage, StorageError, WriteBatch};
use crate::watch::WatchHub;

/// Newest entries kept decoded in memory.
const CACHE_ENTRIES: usize = 4096;
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Marks a snapshot's data: the objects themselves travel separately.
pub const SNAPSHOT_MARKER: &[u8] = b"berth-snapshot/v1";

pub struct LogStore {
    storage: Storage,
    hub: Arc<WatchHub>,
    shelf: Arc<SnapshotShelf>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry compacted away.
    start_index: u64,
    start_term: u64,
    /// Terms of entries `start_index + 1 ..= last_index`.
    terms: VecDeque<u64>,
    /// Stored entry groups (first index → last index) holding the log.
    groups: BTreeMap<u64, u64>,
    /// The newest entries, contiguous, ending at the last index.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
}

impl LogStore {
    pub fn new(
        storage: Storage,
        log: LoadedLog,
        hub: Arc<WatchHub>,
        shelf: Arc<SnapshotShelf>,
    ) -> LogStore {
        LogStore {
            storage,
            hub,
            shelf,
            hard_state: log.hard_state,
            conf_state: log.conf_state,
            start_index: log.start.0,
            start_term: log.start.1,
            terms: log.terms.into(),
            groups: log.groups,
            cache: VecDeque::new(),
            cache_bytes: 0,
        }
    }

    /// Writes the initial state of a new cluster: every initial member does
    /// the same, so they all start from an identical snapshot at index 1 that
    /// holds the voters. A member joining later starts empty and receives a
    /// snapshot from the leader instead (its log is behind index 1).
    pub fn bootstrap(
        storage: &Storage,
        members: &BTreeMap<u64, String>,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        let conf_state = ConfState {
            voters: members.keys().copied().collect(),
            ..Default::default()
        };
        let hard_state = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        batch.put_log_start(1, 1);
        batch.put_hard_state(&hard_state)?;
        batch.put_conf_state(&conf_state)?;
        batch.put_applied(1);
        // The cluster's creation is its first revision: a list never reports
        // revision 0, which a watch takes to mean "from now" — a client that
        // listed an empty new cluster and watched from there would miss the
        // first objects.
        batch.put_revision(1);
        batch.put_members(
            &crate::state::Membership {
                conf_state,
                addresses: members.clone(),
            }
            .to_record(),
        );
        storage.write_atomic(batch)?;
        storage.flush()
    }

    /// Writes the initial state of a cluster restored from a snapshot file:
    /// like [`LogStore::bootstrap`], but at the snapshot's index, with its
    /// objects — every initial member given the same file starts from the
    /// same state, and new writes get revisions after the restored ones.
    pub fn bootstrap_restored(
        storage: &Storage,
        members: &BTreeMap<u64, String>,
        backup: berth_proto::backup::Backup,
    ) -> Result<(), StorageError> {
        let index = backup
            .header
            .applied_index
            .max(backup.header.revision)
            .max(1);
        let conf_state = ConfState {
            voters: members.keys().copied().collect(),
            ..Default::default()
        };
        let hard_state = HardState {
            term: 1,
            commit: index,
            ..Default::default()
        };
        let mut batch = WriteBatch::new();
        batch.put_log_start(index, 1);
        batch.put_hard_state(&hard_state)?;
        batch.put_conf_state(&conf_state)?;
        let membership = crate::state::Membership {
            conf_state: conf_state.clone(),
            addresses: members.clone(),
        };
        let empty = crate::storage::Loaded {
            revision: 0,
            applied: 0,
            compacted: 0,
            members: Default::default(),
            objects: Vec::new(),
        };
        crate::state_machine::StateMachine::new(empty, conf_state).install(
            index,
            backup.header.revision,
            backup.objects,
            membership,
            &mut batch,
        );
        storage.write_atomic(batch)?;
        storage.flush()
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn first_index(&self) -> u64 {
        self.start_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.start_index + self.terms.len() as u64
    }

    /// Appends entries from a Ready (stored as one group), replacing any
    /// conflicting tail.
    pub fn append(
        &mut self,
        entries: &[Entry],
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let first_index = first.index;
        if first_index <= self.start_index || first_index > self.last_index() + 1 {
            return Err(StorageError::Corrupt(format!(
                "cannot append entries from {first_index}: the log holds {} to {}",
                self.first_index(),
                self.last_index()
            )));
        }
        if first_index <= self.last_index() {
            self.truncate_from(first_index, batch)?;
        }
        batch.put_entries(entries)?;
        self.groups
            .insert(first_index, first_index + entries.len() as u64 - 1);
        for entry in entries {
            self.terms.push_back(entry.term);
            self.cache_bytes += entry.data.len();
            self.cache.push_back(entry.clone());
        }
        while self.cache.len() > CACHE_ENTRIES || self.cache_bytes > CACHE_BYTES {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.data.len();
            }
        }
        Ok(())
    }

    /// Drops entries from `index` on: a new leader's entries replace them.
    fn truncate_from(&mut self, index: u64, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let doomed: Vec<u64> = self
            .groups
            .range(index..)
            .map(|(first, _)| *first)
            .collect();
        for first in doomed {
            batch.delete_entry_group(first);
            self.groups.remove(&first);
        }
        // A group straddling `index` keeps its head.
        if let Some((&first, &last)) = self.groups.range(..index).next_back()
            && last >= index
        {
            let head: Vec<Entry> = self
                .storage
                .read_group(first)?
                .into_iter()
                .filter(|e| e.index < index)
                .collect();
            batch.put_entries(&head)?;
            self.groups.insert(first, index - 1);
        }
        self.terms.truncate((index - self.start_index - 1) as usize);
        while self.cache.back().is_some_and(|e| e.index >= index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.data.len();
            }
        }
        Ok(())
    }

    pub fn set_hard_state(
        &mut self,
        hs: HardState,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        batch.put_hard_state(&hs)?;
        self.hard_state = hs;
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs, batch)
    }

    /// The configuration raft applied; stored with the next checkpoint (it
    /// must match the stored state machine's applied index).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Drops entries up to and including `upto`, which must be applied.
    /// Whole groups are deleted; a group straddling `upto` stays until a
    /// later compaction passes its end.
    pub fn compact(&mut self, upto: u64, batch: &mut WriteBatch) -> Result<(), StorageError> {
        if upto <= self.start_index {
            return Ok(());
        }
        let term = self.term_of(upto).ok_or_else(|| {
            StorageError::Corrupt(format!(
                "cannot compact to {upto}: past the last entry {}",
                self.last_index()
            ))
        })?;
        let gone: Vec<u64> = self
            .groups
            .iter()
            .take_while(|(_, last)| **last <= upto)
            .map(|(first, _)| *first)
            .collect();
        for first in gone {
            batch.delete_entry_group(first);
            self.groups.remove(&first);
        }
        batch.put_log_start(upto, term);
        self.terms.drain(..(upto - self.start_index) as usize);
        self.start_index = upto;
        self.start_term = term;
        while self.cache.front().is_some_and(|e| e.index <= upto) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.data.len();
            }
        }
        Ok(())
    }

    /// Makes the log start after a leader's snapshot. The caller has removed
    /// the old entries from storage in `batch`.
    pub fn install_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        self.start_index = meta.index;
        self.start_term = meta.term;
        self.terms.clear();
        self.groups.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        batch.put_log_start(meta.index, meta.term);
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(hs, batch)?;
        batch.put_conf_state(meta.get_conf_state())?;
        self.set_conf_state(meta.get_conf_state().clone());
        Ok(())
    }

    /// Entries `[low, high)` from the stored groups, up to about `max_bytes`.
    fn read_stored(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut bytes = 0u64;
        let start = self
            .groups
            .range(..=low)
            .next_back()
            .map_or(low, |(first, _)| *first);
        for (&first, _) in self.groups.range(start..high) {
            for entry in self.storage.read_group(first)? {
                if entry.index < low || entry.index >= high {
                    continue;
                }
                bytes += entry.data.len() as u64;
                if !entries.is_empty() && bytes > max_bytes {
                    return Ok(entries);
                }
                entries.push(entry);
            }
        }
        if entries.first().is_some_and(|e| e.index != low) {
            return Err(StorageError::Corrupt(format!(
                "raft entry {low} is missing from its group"
            )));
        }
        Ok(entries)
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.start_index {
            return Some(self.start_term);
        }
        let offset = index.checked_sub(self.start_index + 1)?;
        self.terms.get(offset as usize).copied()
    }
}

fn store_error(e: StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if low <= self.start_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index() + 1 || low > high {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if low == high {
            return Ok(Vec::new());
        }
        let mut entries = match self.cache.front() {
            Some(first) if first.index <= low => {
                let skip = (low - first.index) as usize;
                self.cache
                    .iter()
                    .skip(skip)
                    .take((high - low) as usize)
                    .cloned()
                    .collect()
            }
            _ => self.read_stored(low, high, max_size).map_err(store_error)?,
        };
        raft::util::limit_size(&mut entries, Some(max_size));
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.start_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        self.term_of(index)
            .ok_or(raft::Error::Store(RaftStorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(LogStore::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(LogStore::last_index(self))
    }

    /// The state as last published: an immutable view at its applied index,
    /// shelved for the transport, which streams its objects. Not while the
    /// raft loop (the caller) is applying entries to a reclaimed map: raft
    /// asks again later.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<RaftSnapshot> {
        let Some(view) = self.hub.try_snapshot() else {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        if view.applied < request_index {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let term = self.term(view.applied)?;
        let mut snapshot = RaftSnapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = view.applied;
        meta.term = term;
        meta.set_conf_state(view.membership.conf_state.clone());
        snapshot.data = SNAPSHOT_MARKER.to_vec().into();
        self.shelf.put_outgoing(view);
        debug_assert!(snapshot.write_to_bytes().is_ok());
        Ok(snapshot)
    }
}
