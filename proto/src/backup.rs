//! The snapshot file `berthctl snapshot save` writes and
//! `berth-apiserver --restore` reads.
//!
//! ```text
//! "BERTHSNAP1\n"                      magic (11 bytes)
//! SnapshotChunk (length-delimited)    header: revision, applied index, time
//! SnapshotChunk …                     objects, in batches
//! SnapshotChunk                       trailer: how many objects came before
//! u32 BE                              CRC-32 of every byte before it
//! ```
//!
//! A file cut short has no trailer; a file damaged in place fails the
//! checksum or does not decode. Either is refused with the reason, before
//! anything is restored from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::pb;
use crate::pb::snapshot_chunk::Part;

const MAGIC: &[u8] = b"BERTHSNAP1\n";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read the snapshot {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Berth snapshot (it does not start with {magic:?})", magic = String::from_utf8_lossy(MAGIC).trim())]
    NotASnapshot { path: PathBuf },
    #[error("the snapshot {path} is truncated: it ends {what}, before its trailer")]
    Truncated { path: PathBuf, what: String },
    #[error("the snapshot {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// A snapshot read back and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub header: pb::SnapshotHeader,
    pub objects: Vec<pb::Object>,
}

/// Writes a snapshot file chunk by chunk, as the chunks arrive. Everything
/// goes to `FILE.partial`, renamed to `FILE` only once the trailer is in and
/// the count matches: an interrupted save never leaves a file that looks
/// whole.
pub struct BackupWriter {
    path: PathBuf,
    partial: PathBuf,
    /// Taken by `finish`.
    file: Option<std::io::BufWriter<std::fs::File>>,
    crc: crc32fast::Hasher,
    objects: u64,
    header: Option<pb::SnapshotHeader>,
    trailer: bool,
    bytes: u64,
}

impl BackupWriter {
    pub fn create(path: &Path) -> Result<BackupWriter, BackupError> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = std::fs::File::create(&partial).map_err(|source| BackupError::Write {
            path: partial.clone(),
            source,
        })?;
        let mut writer = BackupWriter {
            path: path.to_path_buf(),
            partial,
            file: Some(std::io::BufWriter::new(file)),
            crc: crc32fast::Hasher::new(),
            objects: 0,
            header: None,
            trailer: false,
            bytes: 0,
        };
        writer.put(MAGIC)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        let result = match self.file.as_mut() {
            Some(file) => file.write_all(bytes),
            None => Err(std::io::Error::other("already finished")),
        };
        result.map_err(|source| BackupError::Write {
            path: self.partial.clone(),
            source,
        })
    }

    /// Appends one chunk, checking that chunks come in order.
    pub fn write(&mut self, chunk: &pb::SnapshotChunk) -> Result<(), BackupError> {
        let corrupt = |reason: &str| BackupError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        match &chunk.part {
            Some(Part::Header(header)) if self.header.is_none() => {
                self.header = Some(header.clone())
            }
            Some(Part::Objects(batch)) if self.header.is_some() && !self.trailer => {
                self.objects += batch.objects.len() as u64;
            }
            Some(Part::Trailer(trailer)) if self.header.is_some() && !self.trailer => {
                if trailer.objects != self.objects {
                    return Err(corrupt(&format!(
                        "the server sent {} objects but its trailer says {}",
                        self.objects, trailer.objects
                    )));
                }
                self.trailer = true;
            }
            _ => return Err(corrupt("the server sent its chunks out of order")),
        }
        self.put(&chunk.encode_length_delimited_to_vec())
    }

    /// Adds the checksum, syncs, and gives the file its name. Returns the
    /// header, the number of objects and the file's size.
    pub fn finish(mut self) -> Result<(pb::SnapshotHeader, u64, u64), BackupError> {
        let Some(header) = self.header.clone().filter(|_| self.trailer) else {
            return Err(BackupError::Truncated {
                path: self.path.clone(),
                what: format!("after {} objects", self.objects),
            });
        };
        let crc = self.crc.clone().finalize();
        self.put(&crc.to_be_bytes())?;
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BackupError::Write { path, source }
        };
        let file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("already finished"))
            .and_then(|f| f.into_inner().map_err(|e| e.into_error()))
            .map_err(write_error(&self.partial))?;
        file.sync_all().map_err(write_error(&self.partial))?;
        std::fs::rename(&self.partial, &self.path).map_err(write_error(&self.path))?;
        Ok((header, self.objects, self.bytes))
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        // Not finished (an error, an interruption): leave nothing behind.
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// Reads and checks a snapshot file.
pub fn read(path: &Path) -> Result<Backup, BackupError> {
    let bytes = std::fs::read(path).map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Backup, BackupError> {
    let truncated = |what: String| BackupError::Truncated {
        path: path.to_path_buf(),
        what,
    };
    let corrupt = |reason: String| BackupError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return Err(BackupError::NotASnapshot {
            path: path.to_path_buf(),
        });
    };
    let mut header = None;
    let mut objects = Vec::new();
    let mut chunks = 0usize;
    loop {
        if rest.is_empty() {
            return Err(truncated(format!(
                "after {} objects ({chunks} chunks)",
                objects.len()
            )));
        }
        let before = rest.len();
        let chunk = match pb::SnapshotChunk::decode_length_delimited(&mut rest) {
            Ok(chunk) => chunk,
            // Not enough bytes left for the chunk its length announced.
            Err(_) if announces_more(&bytes[bytes.len() - before..]) => {
                return Err(truncated(format!(
                    "in the middle of chunk {} (after {} objects)",
                    chunks + 1,
                    objects.len()
                )));
            }
            Err(e) => {
                return Err(corrupt(format!(
                    "chunk {} does not decode: {e}",
                    chunks + 1
                )));
            }
        };
        chunks += 1;
        match chunk.part {
            Some(Part::Header(h)) if header.is_none() && chunks == 1 => header = Some(h),
            Some(Part::Objects(batch)) if header.is_some() => objects.extend(batch.objects),
            Some(Part::Trailer(trailer)) if header.is_some() => {
                if trailer.objects != objects.len() as u64 {
                    return Err(corrupt(format!(
                        "it holds {} objects but its trailer says {}",
                        objects.len(),
                        trailer.objects
                    )));
                }
                break;
            }
            _ => return Err(corrupt(format!("chunk {chunks} is out of place"))),
        }
    }
    let body = bytes.len() - rest.len();
    let crc = match rest {
        [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
        [] | [_] | [_, _] | [_, _, _] => {
            return Err(truncated("after its trailer, in its checksum".into()));
        }
        _ => {
            return Err(corrupt(format!(
                "{} bytes follow the trailer, not a 4-byte checksum",
                rest.len()
            )));
        }
    };
    let computed = crc32fast::hash(&bytes[..body]);
    if computed != crc {
        return Err(corrupt(format!(
            "the checksum does not match (stored {crc:08x}, computed {computed:08x})"
        )));
    }
    let header = header.ok_or_else(|| corrupt("no header".into()))?;
    Ok(Backup { header, objects })
}

/// Whether `bytes` start with a chunk length longer than what follows.
fn announces_more(mut bytes: &[u8]) -> bool {
    prost::decode_length_delimiter(&mut bytes).is_ok_and(|length| length > bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, version: u64) -> pb::Object {
        pb::Object::from(pb::Namespace {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                resource_version: version,
                ..Default::default()
            }),
            spec: Some(pb::NamespaceSpec::default()),
        })
    }

    fn chunk(part: Part) -> pb::SnapshotChunk {
        pb::SnapshotChunk { part: Some(part) }
    }

    /// Writes a snapshot of `count` namespaces; returns its bytes.
    fn saved(dir: &Path, count: u64) -> (PathBuf, Vec<u8>) {
        let path = dir.join("state.snap");
        let mut writer = BackupWriter::create(&path).unwrap();
        let header = pb::SnapshotHeader {
            revision: 40,
            applied_index: 42,
            ..Default::default()
        };
        writer.write(&chunk(Part::Header(header))).unwrap();
        let objects: Vec<_> = (0..count)
            .map(|i| namespace(&format!("n{i}"), i + 1))
            .collect();
        for batch in objects.chunks(3) {
            let batch = pb::SnapshotObjects {
                objects: batch.to_vec(),
            };
            writer.write(&chunk(Part::Objects(batch))).unwrap();
        }
        let trailer = pb::SnapshotTrailer { objects: count };
        writer.write(&chunk(Part::Trailer(trailer))).unwrap();
        let (_, objects, size) = writer.finish().unwrap();
        assert_eq!(objects, count);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(size, bytes.len() as u64);
        (path, bytes)
    }

    #[test]
    fn a_saved_snapshot_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved(dir.path(), 10);
        let backup = read(&path).unwrap();
        assert_eq!(backup.header.revision, 40);
        assert_eq!(backup.objects.len(), 10);
        assert_eq!(backup.objects[9], namespace("n9", 10));
        assert!(!dir.path().join("state.snap.partial").exists());
    }

    #[test]
    fn a_truncated_or_damaged_snapshot_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = saved(dir.path(), 10);
        for cut in [1, 4, 5, 20, bytes.len() / 2, bytes.len() - 12] {
            let error = parse(&path, &bytes[..bytes.len() - cut]).unwrap_err();
            assert!(
                matches!(error, BackupError::Truncated { .. }),
                "cut {cut}: {error}"
            );
            assert!(error.to_string().contains("truncated"), "{error}");
        }
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        let error = parse(&path, &flipped).unwrap_err();
        assert!(error.to_string().contains("corrupt"), "{error}");
        let error = parse(&path, b"hello").unwrap_err();
        assert!(
            error.to_string().contains("not a Berth snapshot"),
            "{error}"
        );
    }

    #[test]
    fn an_unfinished_save_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.snap");
        let mut writer = BackupWriter::create(&path).unwrap();
        let header = pb::SnapshotHeader::default();
        writer.write(&chunk(Part::Header(header))).unwrap();
        let error = writer.finish().unwrap_err();
        assert!(error.to_string().contains("truncated"), "{error}");
        assert!(!path.exists());
        assert!(!dir.path().join("state.snap.partial").exists());
    }
}
