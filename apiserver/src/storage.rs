//! The apiserver's on-disk state, in one sled database: the raft log and the
//! state machine side by side.
//!
//! This is the only module that knows sled. It offers a narrow interface —
//! load, write a batch atomically, flush, read log entries and history — so
//! that the store could be swapped without touching the state machine or the
//! raft driver (sled's own README says to prefer SQLite where reliability is
//! the primary constraint).
//!
//! Layout (one keyspace, keys sort as bytes):
//!
//! ```text
//! m:format            u64 BE   on-disk format, refused if unknown
//! m:revision          u64 BE   the log index of the last change to objects
//! m:applied           u64 BE   the last log index applied to the state machine
//! m:compacted         u64 BE   history at or below this revision is gone
//! m:members                    berth.internal.v1.Members: member addresses
//! o:<kind><ns>\0<name>         the object, prost-encoded berth.v1.Object
//! h:<revision u64 BE>          berth.internal.v1.HistoryRecord
//! r:hs                         raft HardState (term, vote, commit)
//! r:cs                         raft ConfState as of m:applied
//! r:start             2 x u64  index and term of the last entry compacted away
//! r:e:<index u64 BE>           raft Entry
//! ```
//!
//! Writes go in atomic [`WriteBatch`]es. sled recovers a prefix of the batches
//! after a crash, so writing the log's batch before the state machine's batch
//! means no applied state can survive without the commit index covering it.
//! Batches become durable at the next [`Storage::flush`]: sled's own flush
//! writes with `sync_file_range`, which flushes neither the disk's write cache
//! nor the file's metadata, so `flush` adds an `fdatasync` of sled's log file —
//! an acknowledged write survives power loss, not only a crash of the process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_proto::internal::{HistoryRecord, Members};
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};

const FORMAT: u64 = 2;
const KEY_FORMAT: &[u8] = b"m:format";
const KEY_REVISION: &[u8] = b"m:revision";
const KEY_APPLIED: &[u8] = b"m:applied";
const KEY_COMPACTED: &[u8] = b"m:compacted";
const KEY_MEMBERS: &[u8] = b"m:members";
const KEY_HARD_STATE: &[u8] = b"r:hs";
const KEY_CONF_STATE: &[u8] = b"r:cs";
const KEY_LOG_START: &[u8] = b"r:start";
const PREFIX_OBJECT: &[u8] = b"o:";
const PREFIX_HISTORY: &[u8] = b"h:";
const PREFIX_ENTRY: &[u8] = b"r:e:";

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
}

/// Writes applied atomically by [`Storage::write`]. A later write of a key in
/// the batch replaces an earlier one.
pub struct WriteBatch {
    batch: sled::Batch,
    empty: bool,
}

impl Default for WriteBatch {
    fn default() -> WriteBatch {
        WriteBatch::new()
    }
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch {
            batch: sled::Batch::default(),
            empty: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.empty = false;
        self.batch.insert(key, value);
    }

    fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.empty = false;
        self.batch.remove(key);
    }

    pub fn put_object(&mut self, object: &pb::Object) {
        self.insert(object_key_bytes(&object.key()), object.encode_to_vec());
    }

    pub fn delete_object(&mut self, key: &ObjectKey) {
        self.remove(object_key_bytes(key));
    }

    /// Records a revision's changes and makes it the store's revision.
    pub fn put_revision(&mut self, record: &HistoryRecord) {
        self.insert(
            history_key(record.revision).to_vec(),
            record.encode_to_vec(),
        );
        self.insert(KEY_REVISION, &record.revision.to_be_bytes());
    }

    /// Sets the revision without a history record (a snapshot's).
    pub fn put_revision_number(&mut self, revision: u64) {
        self.insert(KEY_REVISION, &revision.to_be_bytes());
    }

    pub fn put_applied(&mut self, index: u64) {
        self.insert(KEY_APPLIED, &index.to_be_bytes());
    }

    pub fn put_compacted(&mut self, revision: u64) {
        self.insert(KEY_COMPACTED, &revision.to_be_bytes());
    }

    pub fn put_members(&mut self, members: &Members) {
        self.insert(KEY_MEMBERS, members.encode_to_vec());
    }

    pub fn put_entry(&mut self, entry: &Entry) -> Result<(), StorageError> {
        let bytes = entry.write_to_bytes().map_err(|e| {
            StorageError::Corrupt(format!("cannot encode entry {}: {e}", entry.index))
        })?;
        self.insert(entry_key(entry.index).to_vec(), bytes);
        Ok(())
    }

    pub fn delete_entry(&mut self, index: u64) {
        self.remove(entry_key(index).to_vec());
    }

    pub fn put_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        let bytes = hs
            .write_to_bytes()
            .map_err(|e| StorageError::Corrupt(format!("cannot encode the hard state: {e}")))?;
        self.insert(KEY_HARD_STATE, bytes);
        Ok(())
    }

    pub fn put_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        let bytes = cs
            .write_to_bytes()
            .map_err(|e| StorageError::Corrupt(format!("cannot encode the conf state: {e}")))?;
        self.insert(KEY_CONF_STATE, bytes);
        Ok(())
    }

    pub fn put_log_start(&mut self, index: u64, term: u64) {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&index.to_be_bytes());
        value[8..].copy_from_slice(&term.to_be_bytes());
        self.insert(KEY_LOG_START, &value);
    }
}

/// Cheap to clone: the handles are reference-counted.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    /// sled's log file, opened again to fdatasync it.
    log_file: Arc<std::fs::File>,
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
            .open()
            .map_err(open_error)?;
        let log_file =
            std::fs::File::open(path.join("db")).map_err(|e| open_error(sled::Error::Io(e)))?;
        let storage = Storage {
            db,
            log_file: Arc::new(log_file),
        };
        storage.check_format()?;
        Ok(storage)
    }

    fn check_format(&self) -> Result<(), StorageError> {
        match self.db.get(KEY_FORMAT)? {
            Some(v) => {
                let found = decode_u64(&v, "m:format")?;
                if found != FORMAT {
                    return Err(StorageError::Format { found });
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
        let mut objects = Vec::new();
        for item in self.db.scan_prefix(PREFIX_OBJECT) {
            let (key, value) = item?;
            let object = pb::Object::decode(value.as_ref()).map_err(|e| {
                StorageError::Corrupt(format!(
                    "object at key {:?} does not decode: {e}",
                    String::from_utf8_lossy(&key)
                ))
            })?;
            if object_key_bytes(&object.key()) != key.as_ref() {
                return Err(StorageError::Corrupt(format!(
                    "object {} is stored under the wrong key",
                    object.key()
                )));
            }
            if object.resource_version() > revision {
                return Err(StorageError::Corrupt(format!(
                    "object {} has revision {} beyond the store's revision {revision}",
                    object.key(),
                    object.resource_version()
                )));
            }
            objects.push(object);
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
        let mut expected = start.0 + 1;
        for item in self.db.scan_prefix(PREFIX_ENTRY) {
            let (_, value) = item?;
            let entry = decode_entry(&value)?;
            if entry.index < expected {
                // Left behind by a compaction that a crash cut short.
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
        Ok(LoadedLog {
            hard_state,
            conf_state,
            start,
            terms,
        })
    }

    /// Log entries with indexes in `[low, high)`, stopping once `max_bytes`
    /// is exceeded (at least one entry is returned).
    pub fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut entries = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        for item in self
            .db
            .range(entry_key(low).to_vec()..entry_key(high).to_vec())
        {
            let (_, value) = item?;
            size += value.len() as u64;
            if !entries.is_empty() && size > max_bytes {
                break;
            }
            let entry = decode_entry(&value)?;
            if entry.index != low + entries.len() as u64 {
                return Err(StorageError::Corrupt(format!(
                    "expected raft entry {}, found {}",
                    low + entries.len() as u64,
                    entry.index
                )));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Adds to `batch` the removal of every object, history record and log
    /// entry: the state a snapshot replaces.
    pub fn clear_all(&self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        for prefix in [PREFIX_OBJECT, PREFIX_HISTORY, PREFIX_ENTRY] {
            for key in self.db.scan_prefix(prefix).keys() {
                batch.remove(key?);
            }
        }
        Ok(())
    }

    /// Applies a batch atomically. Not durable until [`Storage::flush`].
    pub fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if !batch.empty {
            self.db.apply_batch(batch.batch)?;
        }
        Ok(())
    }

    /// Makes everything written so far durable: sled writes its buffers out,
    /// then the log file is fdatasync'ed.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.log_file.sync_data().map_err(StorageError::io)?;
        Ok(())
    }

    /// Up to `limit` history records with a revision above `after`, in order.
    pub fn history_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryRecord>, StorageError> {
        let start = history_key(after.saturating_add(1));
        let mut records = Vec::new();
        for item in self.db.range(start.as_slice()..).take(limit) {
            let (key, value) = item?;
            if !key.starts_with(PREFIX_HISTORY) {
                break;
            }
            let record = HistoryRecord::decode(value.as_ref()).map_err(|e| {
                StorageError::Corrupt(format!("history record does not decode: {e}"))
            })?;
            records.push(record);
        }
        Ok(records)
    }

    /// Deletes history up to and including `upto`. The caller publishes the
    /// new compacted revision *before* calling, so that a concurrent reader
    /// notices that what it read may have a hole.
    pub fn compact_history(&self, upto: u64) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        for key in self
            .db
            .range(history_key(0).as_slice()..=history_key(upto).as_slice())
            .keys()
        {
            batch.remove(key?);
        }
        batch.put_compacted(upto);
        self.write(batch)
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

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    Entry::parse_from_bytes(bytes)
        .map_err(|e| StorageError::Corrupt(format!("a raft entry does not decode: {e}")))
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

fn entry_key(index: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(PREFIX_ENTRY);
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

fn object_key_bytes(key: &ObjectKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + key.namespace.len() + key.name.len());
    bytes.extend_from_slice(PREFIX_OBJECT);
    bytes.push(key.kind as u8);
    bytes.extend_from_slice(key.namespace.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.name.as_bytes());
    bytes
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
            for revision in 1..=3 {
                let object = namespace(&format!("ns-{revision}"), revision);
                batch.put_object(&object);
                batch.put_revision(&HistoryRecord {
                    revision,
                    changes: vec![Change {
                        r#type: pb::WatchEventType::Added as i32,
                        object: Some(object.clone()),
                        prev: None,
                    }],
                });
                batch.put_applied(revision);
                let entry = Entry {
                    index: revision,
                    term: 1,
                    ..Default::default()
                };
                batch.put_entry(&entry).unwrap();
            }
            storage.write(batch).unwrap();
            storage.flush().unwrap();
        }
        let storage = reopen(dir.path());
        let loaded = storage.load().unwrap();
        assert_eq!((loaded.revision, loaded.applied), (3, 3));
        assert_eq!(loaded.objects.len(), 3);
        let log = storage.load_log().unwrap();
        assert_eq!(log.terms, vec![1, 1, 1]);
        let entries = storage.read_entries(2, 4, u64::MAX).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(
            storage.read_entries(1, 4, 1).unwrap().len(),
            1,
            "at least one entry"
        );
        let history = storage.history_after(1, 10).unwrap();
        assert_eq!(
            history.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![2, 3]
        );
        storage.compact_history(2).unwrap();
        assert_eq!(storage.history_after(0, 10).unwrap().len(), 1);
        assert_eq!(storage.load().unwrap().compacted, 2);
    }

    #[test]
    fn a_hole_in_the_log_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        for index in [1, 2, 4] {
            batch
                .put_entry(&Entry {
                    index,
                    term: 1,
                    ..Default::default()
                })
                .unwrap();
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
