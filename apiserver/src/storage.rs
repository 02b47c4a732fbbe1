//! The apiserver's on-disk state, in one sled database.
//!
//! This is the only module that knows sled. It offers a narrow interface —
//! load everything, commit one revision atomically, flush, read and compact
//! the history — so that the store could be swapped without touching the
//! state machine (sled's own README says to prefer SQLite when reliability is
//! the primary constraint).
//!
//! Layout (one keyspace, keys sort as bytes):
//!
//! ```text
//! m:format            u64 BE   on-disk format, refused if unknown
//! m:revision          u64 BE   the last revision applied to objects
//! m:compacted         u64 BE   history at or below this revision is gone
//! o:<kind><ns>\0<name>         the object, prost-encoded berth.v1.Object
//! h:<revision u64 BE>          berth.internal.v1.HistoryRecord
//! ```
//!
//! The writes of a group of revisions (objects, history records, `m:revision`)
//! go in one atomic [`WriteBatch`], so a crash leaves either all of a group or
//! none of it, and sled writes the log once per group rather than once per
//! revision. Batches become durable at the next [`Storage::flush`].
//!
//! sled's own flush writes with `sync_file_range`, which neither flushes the
//! disk's write cache nor the file's metadata; [`Storage::flush`] therefore
//! adds an `fdatasync` of sled's log file, so that an acknowledged write
//! survives power loss and not only a crash of the process.

use std::path::{Path, PathBuf};

use berth_proto::internal::HistoryRecord;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use prost::Message;

const FORMAT: u64 = 1;
const KEY_FORMAT: &[u8] = b"m:format";
const KEY_REVISION: &[u8] = b"m:revision";
const KEY_COMPACTED: &[u8] = b"m:compacted";
const PREFIX_OBJECT: &[u8] = b"o:";
const PREFIX_HISTORY: &[u8] = b"h:";

/// sled's page cache. The apiserver keeps every object decoded in memory
/// anyway (see `state`), so sled's cache only needs to absorb writes.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

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
        "the data dir is corrupt: {0}; refusing to serve from it (restore from a backup or another replica)"
    )]
    Corrupt(String),
    #[error("the data dir holds format {found}, this berth-apiserver reads format {FORMAT}")]
    Format { found: u64 },
}

/// What a restart finds on disk.
pub struct Loaded {
    pub revision: u64,
    pub compacted: u64,
    pub objects: Vec<pb::Object>,
}

/// Writes of one or more revisions, applied atomically by [`Storage::write`].
/// A later write of the same key in the batch replaces an earlier one.
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

    pub fn put_object(&mut self, object: &pb::Object) {
        self.empty = false;
        self.batch
            .insert(object_key_bytes(&object.key()), object.encode_to_vec());
    }

    pub fn delete_object(&mut self, key: &ObjectKey) {
        self.empty = false;
        self.batch.remove(object_key_bytes(key));
    }

    /// Records a revision's changes and makes it the store's revision.
    pub fn put_revision(&mut self, record: &HistoryRecord) {
        self.empty = false;
        self.batch.insert(
            history_key(record.revision).to_vec(),
            record.encode_to_vec(),
        );
        self.batch
            .insert(KEY_REVISION, &record.revision.to_be_bytes());
    }
}

/// Cheap to clone: the handles are reference-counted.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    /// sled's log file, opened again to fdatasync it.
    log_file: std::sync::Arc<std::fs::File>,
}

impl Storage {
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
            log_file: std::sync::Arc::new(log_file),
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
                self.db.flush()?;
            }
            None => {
                return Err(StorageError::Corrupt(
                    "objects are present but the format marker is missing".into(),
                ));
            }
        }
        Ok(())
    }

    /// Reads every object and the revision counters.
    pub fn load(&self) -> Result<Loaded, StorageError> {
        let revision = self.read_u64(KEY_REVISION)?;
        let compacted = self.read_u64(KEY_COMPACTED)?;
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
        Ok(Loaded {
            revision,
            compacted,
            objects,
        })
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
        self.log_file
            .sync_data()
            .map_err(|e| StorageError::Io(sled::Error::Io(e)))?;
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
        let mut batch = sled::Batch::default();
        for item in self
            .db
            .range(history_key(0).as_slice()..=history_key(upto).as_slice())
        {
            let (key, _) = item?;
            batch.remove(key);
        }
        batch.insert(KEY_COMPACTED, &upto.to_be_bytes());
        self.db.apply_batch(batch)?;
        Ok(())
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
    fn commits_survive_reopen() {
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
            }
            storage.write(batch).unwrap();
            storage.flush().unwrap();
        }
        let storage = reopen(dir.path());
        let loaded = storage.load().unwrap();
        assert_eq!(loaded.revision, 3);
        assert_eq!(loaded.objects.len(), 3);
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
