//! Free space on the data dir's filesystem, and the reserve kept on it.
//!
//! A store that runs out of disk in the middle of a write is the classic way
//! to lose data (Redis's war story): so the leader refuses new writes with
//! RESOURCE_EXHAUSTED while free space is below a reserve — before the disk
//! is actually full — and takes them again as soon as space returns. Reads
//! and deletes are still served (as etcd does under its NOSPACE alarm):
//! deletes are how an operator makes room.
//!
//! The reserve absorbs what is already under way when the line is crossed
//! (replication, checkpoints, raft's own bookkeeping). If the disk fills
//! anyway — a follower's disk fuller than the leader's, another program
//! filling it — the write fails, the member stops serving (see
//! `replication::node`), and restarts itself from its store once
//! [`DiskSpace::has_room`] says space is back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// The default reserve: this share of the filesystem, at most
/// [`DEFAULT_RESERVE_MAX`].
const DEFAULT_RESERVE_SHARE: f64 = 0.05;
const DEFAULT_RESERVE_MAX: u64 = 256 << 20;

/// Free space is sampled at most this often (a statvfs per write would cost
/// little, but the hot path needs none).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// After a full disk, a member restarts only once this much more is free
/// than when the write failed (a write can fail with megabytes still free,
/// if it needed more), and at least the reserve.
const MIN_ROOM_TO_RESTART: u64 = 1 << 20;

/// How much space to keep free, as `--disk-reserve` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// 5 % of the filesystem, at most 256Mi.
    Auto,
    Bytes(u64),
}

impl std::str::FromStr for Reserve {
    type Err = String;

    fn from_str(s: &str) -> Result<Reserve, String> {
        if s == "auto" {
            return Ok(Reserve::Auto);
        }
        let bytes = berth_proto::quantity::parse_memory(s)
            .map_err(|e| format!("{s:?} is neither `auto` nor a size like 512Mi: {e}"))?;
        u64::try_from(bytes)
            .map(Reserve::Bytes)
            .map_err(|_| format!("{s:?}: the reserve cannot be negative"))
    }
}

/// The data dir's free space, sampled.
pub struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
    sampled: Option<(Instant, u64)>,
    /// Free bytes when a write failed for want of space.
    full_at: Option<u64>,
}

impl DiskSpace {
    /// Resolves `reserve` against the filesystem holding `dir`.
    pub fn new(dir: &Path, reserve: Reserve) -> std::io::Result<DiskSpace> {
        let reserve = match reserve {
            Reserve::Bytes(bytes) => bytes,
            Reserve::Auto => {
                let total = fs2::total_space(dir)?;
                ((total as f64 * DEFAULT_RESERVE_SHARE) as u64).min(DEFAULT_RESERVE_MAX)
            }
        };
        Ok(DiskSpace {
            dir: dir.to_path_buf(),
            reserve,
            sampled: None,
            full_at: None,
        })
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Free bytes, at most [`SAMPLE_EVERY`] old. A filesystem that cannot
    /// say counts as roomy: refusing every write because statvfs failed
    /// would be an outage of our own making.
    fn available(&mut self) -> u64 {
        let now = Instant::now();
        if let Some((at, bytes)) = self.sampled
            && now.duration_since(at) < SAMPLE_EVERY
        {
            return bytes;
        }
        let bytes = match fs2::available_space(&self.dir) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "cannot read free space");
                u64::MAX
            }
        };
        self.sampled = Some((now, bytes));
        bytes
    }

    /// The refusal for a new write when free space is below the reserve.
    pub fn check_write(&mut self) -> Result<(), ApiError> {
        let available = self.available();
        if available >= self.reserve {
            return Ok(());
        }
        Err(ApiError::LowDiskSpace(format!(
            "the data dir {} has {} free, less than its reserve of {} (--disk-reserve): \
             writes are refused until space is freed; reads and deletes are still served",
            self.dir.display(),
            kibibytes(available),
            kibibytes(self.reserve)
        )))
    }

    /// Notes that a write failed for want of space.
    pub fn filled_up(&mut self) {
        self.sampled = None;
        let available = self.available();
        self.full_at = Some(available);
    }

    /// Whether a member whose disk filled up may start again: space was
    /// freed since (see [`DiskSpace::filled_up`]).
    pub fn has_room(&mut self) -> bool {
        let available = self.available();
        let freed_from = self.full_at.unwrap_or(0);
        available >= self.reserve && available >= freed_from.saturating_add(MIN_ROOM_TO_RESTART)
    }
}

/// Sizes in the message, to the KiB: rounder units would print "3.0Mi
/// free, less than 3Mi".
fn kibibytes(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reserves() {
        assert_eq!("auto".parse::<Reserve>(), Ok(Reserve::Auto));
        assert_eq!("64Mi".parse::<Reserve>(), Ok(Reserve::Bytes(64 << 20)));
        assert_eq!("0".parse::<Reserve>(), Ok(Reserve::Bytes(0)));
        assert!("lots".parse::<Reserve>().unwrap_err().contains("lots"));
    }

    #[test]
    fn an_impossible_reserve_refuses_writes_and_names_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = DiskSpace::new(dir.path(), Reserve::Bytes(u64::MAX)).unwrap();
        let error = disk.check_write().unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string())
        );
        assert!(!disk.has_room());
        let mut full = DiskSpace::new(dir.path(), Reserve::Bytes(0)).unwrap();
        full.filled_up();
        assert!(!full.has_room(), "no space was freed since");
        let mut roomy = DiskSpace::new(dir.path(), Reserve::Bytes(0)).unwrap();
        assert!(roomy.check_write().is_ok());
        assert!(
            DiskSpace::new(dir.path(), Reserve::Auto).unwrap().reserve() <= DEFAULT_RESERVE_MAX
        );
    }
}
