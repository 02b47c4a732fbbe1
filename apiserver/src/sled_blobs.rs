//! Makes sled's blob files durable.
//!
//! sled 0.34 writes a log message (a tree node or a value) larger than a
//! quarter of its segment size as a file of its own under `blobs/`, and never
//! fsyncs it: its flush syncs only the main file, which holds the pointer to
//! the blob. After a power loss the pointer would survive and the node it
//! points to could be gone. [`Blobs::sync`], called by every storage flush,
//! fdatasyncs each blob it has not seen at its current size, then the
//! directory, so that a flush covers the blobs too.
//!
//! Listing the directory on every flush would cost syscalls on the hot path,
//! so it is listed only when its modification time says a file came or went
//! recently (the time's granularity is coarse, hence "recently" rather than
//! "since the last look").

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A directory modified less than this long ago is listed again.
const RECENT: Duration = Duration::from_secs(10);

pub struct Blobs {
    dir: PathBuf,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The directory's modification time when last listed.
    modified: Option<SystemTime>,
    /// Each blob synced, with its size then: sled writes a blob after
    /// creating it, so a flush on another thread may see it half written.
    synced: HashMap<OsString, u64>,
}

impl Blobs {
    /// The blobs of the sled store at `store`.
    pub fn new(store: PathBuf) -> Blobs {
        Blobs {
            dir: store.join("blobs"),
            seen: Mutex::default(),
        }
    }

    /// Fdatasyncs every blob not yet synced at its current size, then the
    /// directory if any was.
    pub fn sync(&self) -> io::Result<()> {
        let modified = match std::fs::metadata(&self.dir) {
            Ok(meta) => meta.modified()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let recent = SystemTime::now()
            .duration_since(modified)
            .map_or(true, |age| age < RECENT);
        if seen.modified == Some(modified) && !recent {
            return Ok(());
        }
        let mut synced = HashMap::with_capacity(seen.synced.len());
        let mut any = false;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let file = match File::open(entry.path()) {
                Ok(file) => file,
                // sled removed it meanwhile: nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let size = file.metadata()?.len();
            if seen.synced.get(&name) != Some(&size) {
                file.sync_data()?;
                any = true;
            }
            synced.insert(name, size);
        }
        if any {
            File::open(&self.dir)?.sync_all()?;
        }
        *seen = Seen {
            modified: Some(modified),
            synced,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_blob_is_synced_again_when_it_grew() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().to_path_buf());
        // No blobs directory yet: nothing to do.
        blobs.sync().unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        let path = dir.path().join("blobs").join("42");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"half").unwrap();
        blobs.sync().unwrap();
        let size_of = |blobs: &Blobs| {
            blobs
                .seen
                .lock()
                .unwrap()
                .synced
                .get(&OsString::from("42"))
                .copied()
        };
        assert_eq!(size_of(&blobs), Some(4));
        file.write_all(b" and the rest").unwrap();
        blobs.sync().unwrap();
        assert_eq!(size_of(&blobs), Some(17));
        std::fs::remove_file(&path).unwrap();
        blobs.sync().unwrap();
        assert_eq!(size_of(&blobs), None);
    }
}
