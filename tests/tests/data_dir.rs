//! A data dir that is missing, damaged or inconsistent is refused with a
//! clear error — never served as if it were fine.

#![allow(clippy::unwrap_used)]

use berth_tests::{ApiServer, apiserver_refuses, apply, job};

/// Fills a member's store, then stops it.
async fn stored_member(dir: &std::path::Path) {
    let mut server = ApiServer::start(dir);
    let client = server.client();
    for i in 0..20 {
        apply(&client, job("default", &format!("j{i}"), 1))
            .await
            .unwrap();
    }
    server.kill9();
}

/// Opens the stopped member's sled store directly, as a disk fault would
/// reach it.
fn open_store(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The segment size the apiserver created the store with.
        let conf = std::fs::read(dir.join("store/conf")).unwrap_or_default();
        let segment_size = String::from_utf8_lossy(&conf)
            .lines()
            .find_map(|l| l.strip_prefix("segment_size: "))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(512 * 1024);
        let config = sled::Config::new()
            .path(dir.join("store"))
            .segment_size(segment_size);
        match config.open() {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::yield_now()
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_missing_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone");
    let stderr = apiserver_refuses(&["--data-dir", missing.to_str().unwrap()]);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        stderr.contains("must not rejoin as an empty member"),
        "{stderr}"
    );
    assert!(!missing.exists(), "nothing may be created in its place");
}

#[tokio::test]
async fn a_record_that_does_not_decode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    stored_member(dir.path()).await;
    {
        let db = open_store(dir.path());
        db.insert(b"r:hs", &b"\xff\xff\xff garbage"[..]).unwrap();
        db.flush().unwrap();
    }
    let stderr = apiserver_refuses(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(stderr.contains("the data dir is corrupt"), "{stderr}");
    assert!(stderr.contains("hard state does not decode"), "{stderr}");
}

#[tokio::test]
async fn lost_committed_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    stored_member(dir.path()).await;
    {
        // The newest entries vanish, as from a disk that lost writes it had
        // acknowledged.
        let db = open_store(dir.path());
        // The raft log's entry groups have a tree of their own (format 4).
        let log = db.open_tree(b"log").unwrap();
        let last = log.scan_prefix(b"r:g:").keys().last().unwrap().unwrap();
        log.remove(last).unwrap();
        db.flush().unwrap();
    }
    let stderr = apiserver_refuses(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(stderr.contains("committed entries are missing"), "{stderr}");
}

#[tokio::test]
async fn a_store_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    stored_member(dir.path()).await;
    {
        let db = open_store(dir.path());
        db.insert(b"m:format", &7u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let stderr = apiserver_refuses(&["--data-dir", dir.path().to_str().unwrap()]);
    assert!(stderr.contains("holds format 7"), "{stderr}");
}
