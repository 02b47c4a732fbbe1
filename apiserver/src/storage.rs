//! The apiserver's on-disk state, in one sled database: the raft log and the
//! state machine side by side (the state segments in a tree of their own).
//!
//! This is the only module that knows sled. It offers a narrow interface —
//! load, write a batch atomically, flush, read log entries and history — so
//! that the store could be swapped without touching the state machine or the
//! raft driver (sled's own README says to prefer SQLite where reliability is
//! the primary constraint).
//!
//! Layout (keys sort as bytes; `s:`, `h:` and `r:g:` keys live in trees of
//! their own — `segments`, `history`, `log` — the rest in the default tree):
//!
//! ```text
//! m:format            u64 BE   on-disk format, refused if unknown
//! m:revision          u64 BE   the log index of the last change to objects
//! m:applied           u64 BE   the last log index applied to the state machine
//! m:compacted         u64 BE   history at or below this revision is gone
//! m:members                    berth.internal.v1.Members: member addresses
//! r:hs                         raft HardState (term, vote, commit)
//! r:cs                         raft ConfState as of m:applied
//! r:start             2 x u64  index and term of the last entry compacted away
//! s:<applied u64 BE><chunk u32 BE>
//!                              berth.internal.v1.StateSegment: a chunk of the
//!                              objects of a checkpoint (all, or what changed)
//! h:<revision u64 BE>          berth.internal.v1.HistoryGroup: the records
//!                              written together, keyed by the last revision
//! r:g:<index u64 BE>           berth.internal.v1.EntryGroup: raft entries
//!                              appended together, keyed by the first index
//! ```
//!
//! The `s:`, `h:` and `r:g:` values are LZ4-compressed (format 5; see
//! [`compressed`]); those of format 4, plain, still read.
//!
//! sled's cost is per key written, so the log and the history are written a
//! group per raft Ready or checkpoint, not a key per entry. But sled keeps up
//! to 16 keys in a leaf and rewrites the whole leaf every tenth change to it
//! (and when it splits), so large values are kept apart from the small keys
//! every Ready rewrites — in trees of their own — and a checkpoint's objects
//! are cut into chunks of [`SEGMENT_CHUNK_BYTES`].
//!
//! Writes are grouped in [`WriteBatch`]es. sled's log recovers a prefix of the
//! writes after a crash, so order does the work of atomicity for the hot
//! path: [`Storage::write`] writes a batch's keys in order (an applied index
//! last), buffered until the next flush. sled would make each atomic batch a
//! synchronous write of its own, so [`Storage::write_atomic`] is kept for the
//! rare changes that must be all-or-nothing (snapshot installs, compactions).
//! Writes become durable at the next [`Storage::flush`]: sled's own flush
//! writes with `sync_file_range`, which flushes neither the disk's write cache
//! nor the file's metadata, so `flush` adds an `fdatasync` of sled's log file —
//! an acknowledged write survives power loss, not only a crash of the process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::{BTreeMap, HashMap};

use crate::sled_blobs::Blobs;

use berth_proto::internal::{
    DeletedObject, EntryGroup, HistoryGroup, HistoryRecord, Members, StateSegment,
};
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};

/// sled's segment (write buffer) size for a new store. sled writes a tree
/// node larger than a quarter of a segment as a file of its own (a "blob":
/// a file created, written and later deleted). A leaf holds up to 16 keys,
/// and the log's and history's groups are tens of KiB under load, so with
/// sled's default 512 KiB segments the newest leaves went out as blob files
/// on every consolidation; 8 MiB keeps them inline in the log.
const SEGMENT_BYTES: usize = 8 * 1024 * 1024;

/// The segment size of the store at `path`: what it was created with (sled
/// refuses another), else [`SEGMENT_BYTES`].
fn segment_size(path: &Path) -> usize {
    // The file ends in a binary checksum: read it as lossy text.
    std::fs::read(path.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|line| line.strip_prefix("segment_size: "))
                .and_then(|size| size.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_BYTES)
}

/// Format 5 compresses the raft log's entry groups, history groups and
/// segment chunks ([`compressed`]); it reads format 4's plain ones, so a
/// format 4 store is only re-marked.
const FORMAT: u64 = 5;
/// The trees of state segments (since format 3), of the log's entry groups
/// and of the history's groups (since format 4).
const SEGMENT_TREE: &[u8] = b"segments";
const LOG_TREE: &[u8] = b"log";
const HISTORY_TREE: &[u8] = b"history";
const KEY_FORMAT: &[u8] = b"m:format";
const KEY_REVISION: &[u8] = b"m:revision";
const KEY_APPLIED: &[u8] = b"m:applied";
const KEY_COMPACTED: &[u8] = b"m:compacted";
const KEY_MEMBERS: &[u8] = b"m:members";
const KEY_HARD_STATE: &[u8] = b"r:hs";
const KEY_CONF_STATE: &[u8] = b"r:cs";
const KEY_LOG_START: &[u8] = b"r:start";
const PREFIX_SEGMENT: &[u8] = b"s:";
const PREFIX_HISTORY: &[u8] = b"h:";
const PREFIX_ENTRY_GROUP: &[u8] = b"r:g:";
/// The groups format 3 kept in the default tree and format 4 in their own.
const MOVED_IN_FORMAT_4: [&[u8]; 2] = [PREFIX_ENTRY_GROUP, PREFIX_HISTORY];

/// sled's page cache. The apiserver keeps every object decoded in memory
/// anyway (see `state`), so sled's cache mostly absorbs writes and log reads.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the data dir {dir}: {source}{hint}")]
    Open {
        dir: PathBuf,
        source: sled::Error,
        hint: &'static str,
    },
    #[error("storage I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error(
        "the data dir is corrupt: {0}; refusing to serve from it (restore a backup, or remove this member and add it back empty)"
    )]
    Corrupt(String),
    #[error("the data dir holds format {found}, this berth-apiserver reads format {FORMAT}")]
    Format { found: u64 },
}

impl StorageError {
    /// An I/O error from outside sled (our own fdatasync).
    fn io(e: std::io::Error) -> StorageError {
        StorageError::Io(sled::Error::Io(e))
    }
}

/// The state machine's part of the store, as a restart finds it.
pub struct Loaded {
    pub revision: u64,
    pub applied: u64,
    pub compacted: u64,
    pub members: Members,
    pub objects: Vec<pb::Object>,
}

/// The raft log's part of the store, as a restart finds it.
pub struct LoadedLog {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// Index and term of the last compacted entry (0, 0 for a fresh log).
    pub start: (u64, u64),
    /// Terms of the entries after `start`, in order.
    pub terms: Vec<u64>,
    /// The stored entry groups: first index → last index.
    pub groups: BTreeMap<u64, u64>,
}

impl LoadedLog {
    /// The index of the last entry.
    pub fn last_index(&self) -> u64 {
        self.start.0 + self.terms.len() as u64
    }

    /// Checks that the log and the state machine stored beside it tell one
    /// story; a store that does not is refused rather than served wrongly
    /// (raft would otherwise stop on an impossible commit index).
    pub fn check(&self, loaded: &Loaded) -> Result<(), StorageError> {
        let last = self.last_index();
        if self.hard_state.commit > last {
            return Err(StorageError::Corrupt(format!(
                "the commit index {} is beyond the last log entry {last}: committed entries are missing",
                self.hard_state.commit
            )));
        }
        if loaded.applied > self.hard_state.commit.max(self.start.0) {
            return Err(StorageError::Corrupt(format!(
                "the state machine is at index {}, beyond the commit index {}",
                loaded.applied, self.hard_state.commit
            )));
        }
        if loaded.applied < self.start.0 {
            return Err(StorageError::Corrupt(format!(
                "the state machine is at index {}, but the log was compacted up to {}: entries in between are lost",
                loaded.applied, self.start.0
            )));
        }
        if self.terms.windows(2).any(|w| w[0] > w[1])
            || self.terms.first().is_some_and(|t| *t < self.start.1)
        {
            return Err(StorageError::Corrupt(
                "the terms of the raft log go backwards".into(),
            ));
        }
        Ok(())
    }
}

/// Writes, in order. A later write of a key replaces an earlier one. The
/// small bookkeeping keys (applied index, revision, raft hard state, …),
/// which every entry of a batch may set, are written once, after the rest.
pub struct WriteBatch {
    ops: Vec<(sled::IVec, Option<sled::IVec>)>,
    meta: BTreeMap<&'static [u8], Vec<u8>>,
}

impl Default for WriteBatch {
    fn default() -> WriteBatch {
        WriteBatch::new()
    }
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch {
            ops: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.meta.is_empty()
    }

    fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.ops.push((key.into(), None));
    }

    fn set(&mut self, key: &'static [u8], value: Vec<u8>) {
        self.meta.insert(key, value);
    }

    /// All writes in order, bookkeeping last.
    fn into_ops(self) -> impl Iterator<Item = (sled::IVec, Option<sled::IVec>)> {
        self.ops.into_iter().chain(
            self.meta
                .into_iter()
                .map(|(k, v)| (sled::IVec::from(k), Some(sled::IVec::from(v)))),
        )
    }

    /// Stores one chunk of a checkpoint's objects (an encoded
    /// `StateSegment`) at `applied`; see [`SegmentChunks`].
    pub fn put_segment_chunk(&mut self, applied: u64, chunk: u32, segment: &[u8]) {
        self.insert(
            segment_chunk_key(applied, chunk).to_vec(),
            compressed(segment),
        );
    }

    /// Stores history records written together (in revision order).
    pub fn put_history(&mut self, records: &[std::sync::Arc<HistoryRecord>]) {
        self.put_history_with(records, &mut EncodedObjects::default());
    }

    /// [`WriteBatch::put_history`], encoding at the end of `encoded`, which
    /// then finds the records' objects for a segment of the same checkpoint.
    pub fn put_history_with(
        &mut self,
        records: &[std::sync::Arc<HistoryRecord>],
        encoded: &mut EncodedObjects,
    ) {
        let Some(last) = records.last() else {
            return;
        };
        // Encoded as a HistoryGroup field by field, so the records need not
        // be copied into an owned message first.
        let EncodedObjects { bytes, at, held } = encoded;
        let start = bytes.len();
        for record in records {
            berth_proto::history::encode_group_record(record, bytes, |object, range| {
                if at.insert(address(object), range).is_none() {
                    held.push(object.clone());
                }
            });
        }
        self.insert(
            history_key(last.revision).to_vec(),
            compressed(&bytes[start..]),
        );
    }

    pub fn put_revision(&mut self, revision: u64) {
        self.set(KEY_REVISION, revision.to_be_bytes().to_vec());
    }

    pub fn put_applied(&mut self, index: u64) {
        self.set(KEY_APPLIED, index.to_be_bytes().to_vec());
    }

    pub fn put_compacted(&mut self, revision: u64) {
        self.set(KEY_COMPACTED, revision.to_be_bytes().to_vec());
    }

    pub fn put_members(&mut self, members: &Members) {
        self.set(KEY_MEMBERS, members.encode_to_vec());
    }

    /// Stores consecutive raft entries as one group, under the first index.
    pub fn put_entries(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut group = EntryGroup {
            entries: Vec::with_capacity(entries.len()),
        };
        for entry in entries {
            group.entries.push(entry.write_to_bytes().map_err(|e| {
                StorageError::Corrupt(format!("cannot encode entry {}: {e}", entry.index))
            })?);
        }
        self.insert(
            entry_group_key(first.index).to_vec(),
            compressed(&group.encode_to_vec()),
        );
        Ok(())
    }

    pub fn delete_entry_group(&mut self, first: u64) {
        self.remove(entry_group_key(first).to_vec());
    }

    pub fn put_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        let bytes = hs
            .write_to_bytes()
            .map_err(|e| StorageError::Corrupt(format!("cannot encode the hard state: {e}")))?;
        self.set(KEY_HARD_STATE, bytes);
        Ok(())
    }

    pub fn put_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        let bytes = cs
            .write_to_bytes()
            .map_err(|e| StorageError::Corrupt(format!("cannot encode the conf state: {e}")))?;
        self.set(KEY_CONF_STATE, bytes);
        Ok(())
    }

    pub fn put_log_start(&mut self, index: u64, term: u64) {
        let mut value = Vec::with_capacity(16);
        value.extend_from_slice(&index.to_be_bytes());
        value.extend_from_slice(&term.to_be_bytes());
        self.set(KEY_LOG_START, value);
    }
}

/// Cheap to clone: the handles are reference-counted.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    /// The checkpoints' state segments, the raft log's entry groups and the
    /// history's groups, each in a tree of their own: sled rewrites a whole
    /// leaf every tenth change to it, so the groups must not share a leaf
    /// with the small keys every raft Ready writes, nor with each other.
    segments: sled::Tree,
    log: sled::Tree,
    history: sled::Tree,
    /// sled's log file, opened again to fdatasync it.
    log_file: Arc<std::fs::File>,
    blobs: Arc<Blobs>,
}

impl Storage {
    /// Whether `dir` holds a store (as opposed to a fresh, empty data dir).
    pub fn exists(dir: &Path) -> bool {
        dir.join("store").exists()
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        let open_error = |source: sled::Error| {
            let hint = match &source {
                sled::Error::Io(e) if e.to_string().contains("lock") => {
                    " (is another berth-apiserver running on this data dir?)"
                }
                _ => "",
            };
            StorageError::Open {
                dir: dir.to_path_buf(),
                source,
                hint,
            }
        };
        let path = dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .segment_size(segment_size(&path))
            // sled would wait for each log buffer's write with
            // `sync_file_range`, which does not make it durable (no cache
            // flush): `flush` fdatasyncs anyway, and one wait for the disk
            // per flush rather than two makes every flush a writer waits
            // for shorter. `write_out` waits for the disk on its own.
            .sync_file_range(false)
            .open()
            .map_err(open_error)?;
        let log_file =
            std::fs::File::open(path.join("db")).map_err(|e| open_error(sled::Error::Io(e)))?;
        let segments = db.open_tree(SEGMENT_TREE).map_err(open_error)?;
        let log = db.open_tree(LOG_TREE).map_err(open_error)?;
        let history = db.open_tree(HISTORY_TREE).map_err(open_error)?;
        let storage = Storage {
            db,
            segments,
            log,
            history,
            log_file: Arc::new(log_file),
            blobs: Arc::new(Blobs::new(path)),
        };
        storage.check_format()?;
        Ok(storage)
    }

    fn check_format(&self) -> Result<(), StorageError> {
        match self.db.get(KEY_FORMAT)? {
            Some(v) => {
                let found = decode_u64(&v, "m:format")?;
                match found {
                    FORMAT => self.drop_moved_keys()?,
                    4 => self.mark_format()?,
                    3 => self.upgrade_from_3()?,
                    _ => return Err(StorageError::Format { found }),
                }
            }
            None if self.db.is_empty() => {
                self.db.insert(KEY_FORMAT, &FORMAT.to_be_bytes())?;
                self.flush()?;
            }
            None => {
                return Err(StorageError::Corrupt(
                    "data is present but the format marker is missing".into(),
                ));
            }
        }
        Ok(())
    }

    /// Format 3 kept the log's and the history's groups in the default tree,
    /// beside the keys every raft Ready rewrites. Copies them to their own
    /// trees, then marks the store with the current format, then removes the
    /// originals. A crash before the mark leaves format 3 to copy again (the
    /// same values); one after it leaves originals that the next open
    /// removes.
    fn upgrade_from_3(&self) -> Result<(), StorageError> {
        tracing::info!("upgrading the store from format 3 to {FORMAT}");
        for prefix in MOVED_IN_FORMAT_4 {
            let tree = self.tree_of(prefix);
            for item in self.db.scan_prefix(prefix) {
                let (key, value) = item?;
                tree.insert(key, value)?;
            }
        }
        self.flush()?;
        self.db.insert(KEY_FORMAT, &FORMAT.to_be_bytes())?;
        self.flush()?;
        self.drop_moved_keys()
    }

    /// Format 4 differs only in storing entry groups, history groups and
    /// segment chunks plain, which this format reads: the marker alone
    /// changes, so that an older berth-apiserver refuses the store rather
    /// than misread it.
    fn mark_format(&self) -> Result<(), StorageError> {
        tracing::info!("upgrading the store from format 4 to {FORMAT}");
        self.db.insert(KEY_FORMAT, &FORMAT.to_be_bytes())?;
        self.flush()
    }

    /// Removes format 3's copies of the groups that format 4 keeps in trees
    /// of their own (left by an upgrade that a crash cut short).
    fn drop_moved_keys(&self) -> Result<(), StorageError> {
        let mut moved = false;
        for prefix in MOVED_IN_FORMAT_4 {
            for key in self.db.scan_prefix(prefix).keys() {
                self.db.remove(key?)?;
                moved = true;
            }
        }
        if moved {
            self.flush()?;
        }
        Ok(())
    }

    /// Reads the state machine: every object, the counters, the members.
    pub fn load(&self) -> Result<Loaded, StorageError> {
        let revision = self.read_u64(KEY_REVISION)?;
        let applied = self.read_u64(KEY_APPLIED)?;
        let compacted = self.read_u64(KEY_COMPACTED)?;
        let members = match self.db.get(KEY_MEMBERS)? {
            None => Members::default(),
            Some(bytes) => Members::decode(bytes.as_ref()).map_err(|e| {
                StorageError::Corrupt(format!("the member list does not decode: {e}"))
            })?,
        };
        let mut state: BTreeMap<ObjectKey, pb::Object> = BTreeMap::new();
        // Segments past the applied index belong to a checkpoint whose
        // bookkeeping a crash cut off (the segment is written first, on its
        // own; see `checkpoint`): the log still holds what they hold.
        let past = segment_key(applied.saturating_add(1));
        for item in self
            .segments
            .range(segment_key(0).as_slice()..past.as_slice())
        {
            let (key, value) = item?;
            let segment = decode_stored::<StateSegment>(&value).map_err(|e| {
                StorageError::Corrupt(format!(
                    "state segment {:?} does not decode: {e}",
                    String::from_utf8_lossy(&key)
                ))
            })?;
            if segment.full {
                state.clear();
            }
            for deleted in segment.deletes {
                let kind = pb::Kind::try_from(deleted.kind).unwrap_or(pb::Kind::Unspecified);
                state.remove(&ObjectKey::new(kind, deleted.namespace, deleted.name));
            }
            for object in segment.puts {
                state.insert(object.key(), object);
            }
        }
        let objects: Vec<pb::Object> = state.into_values().collect();
        for object in &objects {
            if object.resource_version() > revision {
                return Err(StorageError::Corrupt(format!(
                    "object {} has revision {} beyond the store's revision {revision}",
                    object.key(),
                    object.resource_version()
                )));
            }
        }
        if revision > applied {
            return Err(StorageError::Corrupt(format!(
                "revision {revision} is beyond the applied index {applied}"
            )));
        }
        Ok(Loaded {
            revision,
            applied,
            compacted,
            members,
            objects,
        })
    }

    /// Reads the raft log's state: hard state, conf state, where the log
    /// starts and the term of every entry after that.
    pub fn load_log(&self) -> Result<LoadedLog, StorageError> {
        let hard_state = match self.db.get(KEY_HARD_STATE)? {
            None => HardState::default(),
            Some(bytes) => HardState::parse_from_bytes(&bytes).map_err(|e| {
                StorageError::Corrupt(format!("the raft hard state does not decode: {e}"))
            })?,
        };
        let conf_state = match self.db.get(KEY_CONF_STATE)? {
            None => ConfState::default(),
            Some(bytes) => ConfState::parse_from_bytes(&bytes).map_err(|e| {
                StorageError::Corrupt(format!("the raft conf state does not decode: {e}"))
            })?,
        };
        let start = match self.db.get(KEY_LOG_START)? {
            None => (0, 0),
            Some(bytes) if bytes.len() == 16 => (
                decode_u64(&bytes[..8], "r:start")?,
                decode_u64(&bytes[8..], "r:start")?,
            ),
            Some(bytes) => {
                return Err(StorageError::Corrupt(format!(
                    "r:start is {} bytes, not 16",
                    bytes.len()
                )));
            }
        };
        let mut terms = Vec::new();
        let mut groups = BTreeMap::new();
        let mut expected = start.0 + 1;
        for item in self.log.scan_prefix(PREFIX_ENTRY_GROUP) {
            let (_, value) = item?;
            let entries = decode_group(&value)?;
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                continue;
            };
            if last.index < expected {
                // Wholly compacted; left by a compaction a crash cut short.
                continue;
            }
            for entry in &entries {
                if entry.index < expected {
                    continue;
                }
                if entry.index != expected {
                    return Err(StorageError::Corrupt(format!(
                        "the raft log has a hole: entry {} follows entry {}",
                        entry.index,
                        expected - 1
                    )));
                }
                terms.push(entry.term);
                expected += 1;
            }
            groups.insert(first.index, last.index);
        }
        Ok(LoadedLog {
            hard_state,
            conf_state,
            start,
            terms,
            groups,
        })
    }

    /// The entries of the group stored under `first`.
    pub fn read_group(&self, first: u64) -> Result<Vec<Entry>, StorageError> {
        match self.log.get(entry_group_key(first))? {
            Some(value) => decode_group(&value),
            None => Err(StorageError::Corrupt(format!(
                "the raft entry group at {first} is missing"
            ))),
        }
    }

    /// Adds to `batch` the removal of every object, history record and log
    /// entry: the state a snapshot replaces.
    pub fn clear_all(&self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        for prefix in [PREFIX_SEGMENT, PREFIX_HISTORY, PREFIX_ENTRY_GROUP] {
            for key in self.tree_of(prefix).scan_prefix(prefix).keys() {
                batch.remove(key?);
            }
        }
        Ok(())
    }

    /// The tree a key lives in.
    fn tree_of(&self, key: &[u8]) -> &sled::Tree {
        match TreeOf::key(key) {
            TreeOf::Main => &self.db,
            TreeOf::Segments => &self.segments,
            TreeOf::Log => &self.log,
            TreeOf::History => &self.history,
        }
    }

    /// Writes a batch's keys in order. Not durable until [`Storage::flush`];
    /// after a crash, a prefix of the writes survives.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        for (key, value) in batch.into_ops() {
            let tree = self.tree_of(&key);
            match value {
                Some(value) => tree.insert(key, value)?,
                None => tree.remove(key)?,
            };
        }
        Ok(())
    }

    /// Writes a batch all-or-nothing (sled writes it out synchronously),
    /// across every tree. Not durable until [`Storage::flush`].
    pub fn write_atomic(&self, batch: WriteBatch) -> Result<(), StorageError> {
        use sled::Transactional as _;
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        if batch.is_empty() {
            return Ok(());
        }
        let ops: Vec<(sled::IVec, Option<sled::IVec>)> = batch.into_ops().collect();
        let default_tree: &sled::Tree = &self.db;
        let trees = (default_tree, &self.segments, &self.log, &self.history);
        let result = trees.transaction(|(main, segments, log, history)| {
            for (key, value) in &ops {
                let tree = match TreeOf::key(key) {
                    TreeOf::Main => main,
                    TreeOf::Segments => segments,
                    TreeOf::Log => log,
                    TreeOf::History => history,
                };
                match value {
                    Some(value) => tree.insert(key.clone(), value.clone())?,
                    None => tree.remove(key.clone())?,
                };
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => {
                Err(StorageError::Corrupt("an atomic write was aborted".into()))
            }
        }
    }

    /// Hands what was written so far to the disk and waits for it
    /// (`sync_file_range`) without making it durable: a checkpoint's bulk
    /// then goes out on its own thread, piece by piece, rather than with the
    /// next raft turn's flush, which a writer waits for. Measured with
    /// `berth-bench cluster`, 4 alternating pairs of runs: write p99 10 ms
    /// rather than 12, throughput unchanged.
    pub fn write_out(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.db.write_out()?;
        Ok(())
    }

    /// Makes everything written so far durable: sled writes its buffers
    /// (into the page cache: see [`Storage::open`]), then the log file is
    /// fdatasync'ed, then any new blob files (which sled never syncs; see
    /// `sled_blobs`).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.log_file.sync_data().map_err(StorageError::io)?;
        self.blobs.sync().map_err(StorageError::io)?;
        Ok(())
    }

    /// Up to about `limit` history records with a revision above `after`,
    /// in order.
    pub fn history_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StorageError> {
        // Groups are keyed by their last revision: the first group that can
        // hold revision `after + 1` is the first key at or above it.
        let start = history_key(after.saturating_add(1));
        let mut records = Vec::new();
        for item in self.history.range(start.as_slice()..) {
            let (key, value) = item?;
            if !key.starts_with(PREFIX_HISTORY) || records.len() >= limit {
                break;
            }
            let group = decode_stored::<HistoryGroup>(&value)
                .map_err(|e| StorageError::Corrupt(format!("history does not decode: {e}")))?;
            records.extend(group.records.into_iter().filter(|r| r.revision > after));
        }
        Ok(records)
    }

    /// Adds to `batch` the removal of every state segment before `applied`
    /// (a full segment at `applied` replaces them).
    pub fn drop_segments_before(
        &self,
        applied: u64,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        for key in self
            .segments
            .range(segment_key(0).as_slice()..segment_key(applied).as_slice())
            .keys()
        {
            batch.remove(key?);
        }
        Ok(())
    }

    /// The revision of the last stored history record (0 if none).
    pub fn last_history_revision(&self) -> Result<u64, StorageError> {
        let last = self
            .history
            .range(history_key(0).as_slice()..=history_key(u64::MAX).as_slice())
            .next_back()
            .transpose()?;
        match last {
            Some((key, _)) => decode_u64(&key[PREFIX_HISTORY.len()..], "a history key"),
            None => Ok(0),
        }
    }

    /// Deletes the history groups that end at or before `upto`. The caller
    /// publishes the new compacted revision *before* calling, so that a
    /// concurrent reader notices that what it read may have a hole.
    pub fn compact_history(&self, upto: u64) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        for key in self
            .history
            .range(history_key(0).as_slice()..=history_key(upto).as_slice())
            .keys()
        {
            batch.remove(key?);
        }
        batch.put_compacted(upto);
        self.write_atomic(batch)
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn read_u64(&self, key: &[u8]) -> Result<u64, StorageError> {
        match self.db.get(key)? {
            None => Ok(0),
            Some(v) => decode_u64(&v, &String::from_utf8_lossy(key)),
        }
    }
}

fn decode_group(bytes: &[u8]) -> Result<Vec<Entry>, StorageError> {
    let group = decode_stored::<EntryGroup>(bytes)
        .map_err(|e| StorageError::Corrupt(format!("a raft entry group does not decode: {e}")))?;
    group
        .entries
        .iter()
        .map(|b| {
            Entry::parse_from_bytes(b)
                .map_err(|e| StorageError::Corrupt(format!("a raft entry does not decode: {e}")))
        })
        .collect()
}

fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, StorageError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("{what} is {} bytes, not 8", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

fn history_key(revision: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(PREFIX_HISTORY);
    key[2..].copy_from_slice(&revision.to_be_bytes());
    key
}

fn entry_group_key(index: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(PREFIX_ENTRY_GROUP);
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Which tree a key lives in, by its prefix.
enum TreeOf {
    Main,
    Segments,
    Log,
    History,
}

impl TreeOf {
    fn key(key: &[u8]) -> TreeOf {
        if key.starts_with(PREFIX_SEGMENT) {
            TreeOf::Segments
        } else if key.starts_with(PREFIX_ENTRY_GROUP) {
            TreeOf::Log
        } else if key.starts_with(PREFIX_HISTORY) {
            TreeOf::History
        } else {
            TreeOf::Main
        }
    }
}

/// The first key of the segment at `applied`: its chunks follow it. (Format
/// 3 stored a segment whole, at exactly this key.)
fn segment_key(applied: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(PREFIX_SEGMENT);
    key[2..].copy_from_slice(&applied.to_be_bytes());
    key
}

fn segment_chunk_key(applied: u64, chunk: u32) -> [u8; 14] {
    let mut key = [0u8; 14];
    key[..10].copy_from_slice(&segment_key(applied));
    key[10..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// The first byte of a compressed value. A protobuf message cannot start
/// with it (it would be field number 0), so the values of format 4, stored
/// plain, read as they are.
const COMPRESSED: u8 = 0;

/// The largest value a compressed one may expand to: a corrupt size must
/// give an error, not an allocation of gigabytes.
const MAX_DECOMPRESSED_BYTES: usize = 1 << 30;

/// An entry group, history group or segment chunk as stored (since format
/// 5): LZ4, behind [`COMPRESSED`] and the plain length. Objects repeat most
/// of their fields (a job's template, the labels of a node), each is stored
/// three times (log, history, checkpoint), and sled rewrites these values
/// again when it consolidates their leaves: they are most of the bytes a
/// member writes, and fewer bytes make every flush — the one a write waits
/// for included — faster on a disk that all members share. Measured with
/// `berth-bench cluster` in alternating runs: 3–5% more writes per second,
/// and a p99 of 13–15 ms rather than 16–17.
fn compressed(plain: &[u8]) -> Vec<u8> {
    let block = lz4_flex::block::compress_prepend_size(plain);
    let mut value = Vec::with_capacity(1 + block.len());
    value.push(COMPRESSED);
    value.extend_from_slice(&block);
    value
}

/// A stored entry group, history group or segment chunk, plain (as format 4
/// wrote them) or compressed ([`compressed`]).
fn decompressed(value: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    let Some((&COMPRESSED, block)) = value.split_first() else {
        return Ok(std::borrow::Cow::Borrowed(value));
    };
    let (size, block) = lz4_flex::block::uncompressed_size(block).map_err(|e| e.to_string())?;
    if size > MAX_DECOMPRESSED_BYTES {
        return Err(format!("it claims to expand to {size} bytes"));
    }
    let plain = lz4_flex::block::decompress(block, size).map_err(|e| e.to_string())?;
    if plain.len() != size {
        return Err(format!(
            "it expands to {} bytes, not the {size} it claims",
            plain.len()
        ));
    }
    Ok(std::borrow::Cow::Owned(plain))
}

/// A stored entry group, history group or segment chunk, decoded.
fn decode_stored<M: prost::Message + Default>(value: &[u8]) -> Result<M, String> {
    let plain = decompressed(value)?;
    M::decode(plain.as_ref()).map_err(|e| e.to_string())
}

/// Bytes of objects per stored chunk of a segment. sled keeps up to 16 keys
/// in a leaf and rewrites the whole leaf when it consolidates or splits one,
/// and writes a leaf larger than a quarter of its segment size (2 MiB) as a
/// blob file: stored whole, a checkpoint of megabytes made every rewrite of
/// its leaf a rewrite of megabytes, out of sled's log.
const SEGMENT_CHUNK_BYTES: usize = 64 << 10;

/// A checkpoint's segment, encoded and stored as a run of chunks keyed by
/// the checkpoint's index then the chunk's number, each a `StateSegment` of
/// its own; only the first of a full segment is marked full (it clears what
/// came before, the others add to it).
pub struct SegmentChunks<'b> {
    batch: &'b mut WriteBatch,
    applied: u64,
    chunk: u32,
    buffer: Vec<u8>,
    bytes: usize,
}

impl<'b> SegmentChunks<'b> {
    pub fn new(batch: &'b mut WriteBatch, applied: u64, full: bool) -> SegmentChunks<'b> {
        let mut buffer = Vec::with_capacity(SEGMENT_CHUNK_BYTES + SEGMENT_CHUNK_BYTES / 4);
        if full {
            prost::encoding::bool::encode(1, &true, &mut buffer);
        }
        SegmentChunks {
            batch,
            applied,
            chunk: 0,
            buffer,
            bytes: 0,
        }
    }

    pub fn put(&mut self, object: &pb::Object) {
        prost::encoding::message::encode(2, object, &mut self.buffer);
        self.maybe_end_chunk();
    }

    /// [`SegmentChunks::put`], copying the object's record from `encoded`
    /// when it is there.
    pub fn put_shared(&mut self, object: &Arc<pb::Object>, encoded: &EncodedObjects) {
        match encoded.get(object) {
            Some(record) => {
                self.buffer.extend_from_slice(record);
                self.maybe_end_chunk();
            }
            None => self.put(object),
        }
    }

    /// The bytes an object's record takes in a segment.
    pub fn put_bytes(object: &pb::Object) -> usize {
        prost::encoding::message::encoded_len(2, object)
    }

    /// Adds a deletion; the bytes its record takes.
    pub fn delete(&mut self, key: &ObjectKey) -> usize {
        let before = self.buffer.len();
        prost::encoding::message::encode(3, &deleted(key), &mut self.buffer);
        let bytes = self.buffer.len() - before;
        self.maybe_end_chunk();
        bytes
    }

    fn maybe_end_chunk(&mut self) {
        if self.buffer.len() >= SEGMENT_CHUNK_BYTES {
            self.end_chunk();
        }
    }

    fn end_chunk(&mut self) {
        self.batch
            .put_segment_chunk(self.applied, self.chunk, &self.buffer);
        self.bytes += self.buffer.len();
        self.buffer.clear();
        self.chunk += 1;
    }

    /// Stores what is left (at least one chunk, so that an empty full
    /// segment still clears the state); the segment's size in bytes.
    pub fn finish(mut self) -> usize {
        if !self.buffer.is_empty() || self.chunk == 0 {
            self.end_chunk();
        }
        self.bytes
    }
}

/// Objects already encoded as a segment stores them: a checkpoint stores
/// the history records since the previous one first, and they hold every
/// object it changed as the same field a segment's record is (see
/// [`berth_proto::history::encode_group_record`]), so the segment copies
/// those bytes rather than encoding each object a second time.
#[derive(Default)]
pub struct EncodedObjects {
    bytes: Vec<u8>,
    /// Where each object's record lies in `bytes`, by the object's address.
    at: HashMap<usize, std::ops::Range<usize>, foldhash::fast::RandomState>,
    /// The objects of `at`, held so that no other object can take one of
    /// their addresses while they are here.
    held: Vec<Arc<pb::Object>>,
}

impl EncodedObjects {
    /// The record of this very object (not an equal one), if encoded here.
    pub fn get(&self, object: &Arc<pb::Object>) -> Option<&[u8]> {
        let range = self.at.get(&address(object))?;
        self.bytes.get(range.clone())
    }

    /// Forgets every object, keeping the memory for the next checkpoint.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.at.clear();
        self.held.clear();
    }
}

fn address(object: &Arc<pb::Object>) -> usize {
    Arc::as_ptr(object) as usize
}

/// A deleted object's key, as a segment stores it.
pub fn deleted(key: &ObjectKey) -> DeletedObject {
    DeletedObject {
        kind: key.kind as i32,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_proto::internal::Change;

    fn namespace(name: &str, revision: u64) -> pb::Object {
        pb::Object::from(pb::Namespace {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                resource_version: revision,
                ..Default::default()
            }),
            spec: None,
        })
    }

    fn term_1_entries(indexes: impl IntoIterator<Item = u64>) -> Vec<Entry> {
        indexes
            .into_iter()
            .map(|index| Entry {
                index,
                term: 1,
                ..Default::default()
            })
            .collect()
    }

    /// sled lets go of its file lock shortly after the database is dropped.
    pub(crate) fn reopen(dir: &Path) -> Storage {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Storage::open(dir) {
                Ok(storage) => return storage,
                Err(e)
                    if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn batches_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(dir.path()).unwrap();
            let mut batch = WriteBatch::new();
            let mut records = Vec::new();
            let mut segment = StateSegment::default();
            for revision in 1..=3 {
                let object = namespace(&format!("ns-{revision}"), revision);
                segment.puts.push(object.clone());
                records.push(std::sync::Arc::new(HistoryRecord {
                    revision,
                    changes: vec![Change {
                        r#type: pb::WatchEventType::Added as i32,
                        object: Some(std::sync::Arc::new(object.clone())),
                        prev: None,
                    }],
                }));
                batch.put_revision(revision);
                batch.put_applied(revision);
            }
            // A full segment in two chunks: only the first clears.
            let rest = segment.puts.split_off(1);
            batch.put_segment_chunk(2, 0, &segment.encode_to_vec());
            let rest = StateSegment {
                full: false,
                puts: rest,
                deletes: vec![],
            };
            batch.put_segment_chunk(2, 1, &rest.encode_to_vec());
            // A later delta deletes one of them, stored whole as format 3
            // did (at the segment's own key, without a chunk number).
            batch.insert(
                segment_key(3).to_vec(),
                StateSegment {
                    full: false,
                    puts: vec![],
                    deletes: vec![deleted(&namespace("ns-1", 1).key())],
                }
                .encode_to_vec()
                .as_slice(),
            );
            // A checkpoint's segment whose bookkeeping a crash cut off:
            // beyond the applied index, ignored.
            batch.put_segment_chunk(
                9,
                0,
                StateSegment {
                    full: true,
                    puts: vec![],
                    deletes: vec![],
                }
                .encode_to_vec()
                .as_slice(),
            );
            batch.put_history(&records[..2]);
            batch.put_history(&records[2..]);
            batch.put_entries(&term_1_entries(1..=3)).unwrap();
            storage.write(batch).unwrap();
            storage.flush().unwrap();
        }
        let storage = reopen(dir.path());
        let loaded = storage.load().unwrap();
        assert_eq!((loaded.revision, loaded.applied), (3, 3));
        assert_eq!(loaded.objects.len(), 2);
        let log = storage.load_log().unwrap();
        assert_eq!(log.terms, vec![1, 1, 1]);
        assert_eq!(log.groups, BTreeMap::from([(1, 3)]));
        assert_eq!(storage.read_group(1).unwrap().len(), 3);
        let history = storage.history_after(1, 10).unwrap();
        assert_eq!(
            history.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![2, 3]
        );
        storage.compact_history(2).unwrap();
        assert_eq!(storage.history_after(2, 10).unwrap().len(), 1);
        assert_eq!(storage.load().unwrap().compacted, 2);
    }

    #[test]
    fn a_format_3_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let record = |revision| {
            std::sync::Arc::new(HistoryRecord {
                revision,
                changes: vec![],
            })
        };
        {
            // Format 3: the groups beside the small keys, in the default tree.
            let db = sled::open(dir.path().join("store")).unwrap();
            let mut batch = WriteBatch::new();
            batch.put_entries(&term_1_entries(1..=2)).unwrap();
            batch.put_history(&[record(1), record(2)]);
            batch.set(KEY_FORMAT, 3u64.to_be_bytes().to_vec());
            for (key, value) in batch.into_ops() {
                db.insert(key, value.unwrap()).unwrap();
            }
            db.flush().unwrap();
        }
        // sled's threads may hold the raw store's lock a moment longer.
        let storage = reopen(dir.path());
        assert_eq!(storage.read_u64(KEY_FORMAT).unwrap(), FORMAT);
        assert_eq!(storage.load_log().unwrap().terms, vec![1, 1]);
        assert_eq!(storage.read_group(1).unwrap().len(), 2);
        assert_eq!(storage.history_after(0, 10).unwrap().len(), 2);
        assert_eq!(storage.last_history_revision().unwrap(), 2);
        for prefix in MOVED_IN_FORMAT_4 {
            assert!(storage.db.scan_prefix(prefix).next().is_none());
        }
        drop(storage);
        // And it stays upgraded, with the groups in their trees.
        let storage = reopen(dir.path());
        assert_eq!(storage.history_after(0, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_format_4_store_with_plain_values_is_read_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let object = namespace("ns-1", 1);
        {
            // Format 4: entry groups, history groups and segment chunks
            // stored plain.
            let db = sled::open(dir.path().join("store")).unwrap();
            let mut group = EntryGroup::default();
            for entry in term_1_entries(1..=2) {
                group.entries.push(entry.write_to_bytes().unwrap());
            }
            db.open_tree(LOG_TREE)
                .unwrap()
                .insert(entry_group_key(1), group.encode_to_vec())
                .unwrap();
            db.insert(KEY_FORMAT, &4u64.to_be_bytes()).unwrap();
            db.insert(KEY_REVISION, &1u64.to_be_bytes()).unwrap();
            db.insert(KEY_APPLIED, &1u64.to_be_bytes()).unwrap();
            let segment = StateSegment {
                full: true,
                puts: vec![object.clone()],
                deletes: vec![],
            };
            db.open_tree(SEGMENT_TREE)
                .unwrap()
                .insert(segment_chunk_key(1, 0), segment.encode_to_vec())
                .unwrap();
            let group = HistoryGroup {
                records: vec![HistoryRecord {
                    revision: 1,
                    changes: vec![Change {
                        r#type: pb::WatchEventType::Added as i32,
                        object: Some(std::sync::Arc::new(object.clone())),
                        prev: None,
                    }],
                }],
            };
            db.open_tree(HISTORY_TREE)
                .unwrap()
                .insert(history_key(1), group.encode_to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        // sled's threads may hold the raw store's lock a moment longer.
        let storage = reopen(dir.path());
        assert_eq!(storage.read_u64(KEY_FORMAT).unwrap(), FORMAT);
        assert_eq!(storage.load_log().unwrap().terms, vec![1, 1]);
        assert_eq!(storage.read_group(1).unwrap().len(), 2);
        let loaded = storage.load().unwrap();
        assert_eq!(loaded.objects.len(), 1);
        assert_eq!(storage.history_after(0, 10).unwrap().len(), 1);
        // New values are compressed; both kinds read side by side.
        let mut batch = WriteBatch::new();
        batch.put_history(&[std::sync::Arc::new(HistoryRecord {
            revision: 2,
            changes: vec![],
        })]);
        storage.write(batch).unwrap();
        let stored = storage.history.get(history_key(2)).unwrap().unwrap();
        assert_eq!(stored.first(), Some(&COMPRESSED));
        let revisions: Vec<u64> = storage
            .history_after(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(revisions, vec![1, 2]);
    }

    #[test]
    fn compressed_values_round_trip_and_corrupt_ones_are_errors() {
        let plain = b"apiVersion berth/v1 ".repeat(100);
        let value = compressed(&plain);
        assert!(value.len() < plain.len() / 4, "{} bytes", value.len());
        assert_eq!(decompressed(&value).unwrap().as_ref(), plain.as_slice());
        assert!(decompressed(&value[..value.len() - 3]).is_err());
        let huge = [COMPRESSED, 0xff, 0xff, 0xff, 0xff, 0];
        let err = decompressed(&huge).unwrap_err();
        assert!(err.contains("claims to expand"), "{err}");
    }

    #[test]
    fn a_hole_in_the_log_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        for group in [[1, 2], [4, 5]] {
            batch.put_entries(&term_1_entries(group)).unwrap();
        }
        storage.write(batch).unwrap();
        let err = storage.load_log().err().unwrap().to_string();
        assert!(err.contains("hole: entry 4 follows entry 2"), "{err}");
    }

    #[test]
    fn refuses_a_foreign_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(dir.path()).unwrap();
            storage.db.insert(KEY_FORMAT, &99u64.to_be_bytes()).unwrap();
            storage.flush().unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let err = loop {
            let err = Storage::open(dir.path()).err().unwrap().to_string();
            if !err.contains("lock") || std::time::Instant::now() > deadline {
                break err;
            }
        };
        assert!(err.contains("format 99"), "{err}");
    }
}
