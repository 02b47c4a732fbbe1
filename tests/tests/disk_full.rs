//! A member whose data dir sits on a tiny filesystem (a tmpfs the test
//! mounts): it refuses writes with RESOURCE_EXHAUSTED before the disk is
//! full, keeps serving reads and deletes, takes writes again once space
//! returns, and loses nothing it acknowledged — and when the disk does fill
//! under a write, it stops serving, then restarts by itself from its store
//! once space is freed.
//!
//! Mounting needs root: without it the tests say so and pass, unless
//! `BERTH_REQUIRE_PRIVILEGED=1` (set by `.ci/run`) makes that a failure.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::{ApiServer, wait_until};
use tonic::Code;

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    !berth_tests::privileged_required(),
                    "BERTH_REQUIRE_PRIVILEGED=1 but a tmpfs cannot be mounted: {why}"
                );
                eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows (or shrinks) the filesystem in place: space returns.
    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .expect("mount -o remount");
        assert!(status.success(), "remount to {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A namespace of about 3 KB (40 labels of 60 bytes): the disk fills fast.
fn bulky_namespace(name: &str) -> pb::Object {
    let labels = (0..40)
        .map(|i| (format!("pad-{i}"), "x".repeat(60)))
        .collect();
    pb::Object::from(pb::Namespace {
        metadata: Some(pb::ObjectMeta {
            name: name.to_string(),
            labels,
            ..Default::default()
        }),
        spec: Some(pb::NamespaceSpec::default()),
    })
}

async fn namespaces(client: &BerthClient) -> BTreeSet<String> {
    client
        .list(pb::Kind::Namespace, "")
        .await
        .expect("list namespaces")
        .objects
        .iter()
        .map(|o| o.name().to_string())
        .collect()
}

/// A client that reports every error as it comes (no retries), so that the
/// test sees each refusal.
fn direct_client(server: &ApiServer) -> BerthClient {
    server.client().with_retry_for(Duration::ZERO)
}

fn data_dir(fs: &Tmpfs) -> PathBuf {
    let dir = fs.path().join("data");
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}

/// What writing until the first refusal gave: the acknowledged names, the
/// names whose outcome is unknown, and the refusal.
#[derive(Default)]
struct Filled {
    acknowledged: BTreeSet<String>,
    unknown: BTreeSet<String>,
    refusal: Option<tonic::Status>,
}

/// Writers at once: the member commits their writes together, so the disk
/// fills in seconds rather than a minute.
const WRITERS: usize = 8;

/// Writes bulky namespaces from several clients until the server refuses
/// one with RESOURCE_EXHAUSTED. Other failures (writes in flight when the
/// disk filled) are unknown outcomes.
async fn fill(server: &ApiServer) -> Filled {
    let filled = Arc::new(Mutex::new(Filled::default()));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (client, filled) = (direct_client(server), filled.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..5_000 {
                if filled.lock().unwrap().refusal.is_some() {
                    return;
                }
                let name = format!("ns-{writer}-{i}");
                let result = client.apply(bulky_namespace(&name), false).await;
                let mut filled = filled.lock().unwrap();
                match result {
                    Ok(_) => {
                        filled.acknowledged.insert(name);
                    }
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        filled.refusal.get_or_insert(status);
                        return;
                    }
                    Err(status) => {
                        assert!(
                            filled.unknown.len() < 10 * WRITERS,
                            "too many failed writes: {status:?}"
                        );
                        filled.unknown.insert(name);
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let filled = std::mem::take(&mut *filled.lock().unwrap());
    assert!(
        filled.refusal.is_some(),
        "{} bulky writes and the disk is not full",
        filled.acknowledged.len()
    );
    filled
}

#[tokio::test]
async fn writes_are_refused_below_the_reserve_and_resume_when_space_returns() {
    let Some(fs) = Tmpfs::mount("12m") else {
        return;
    };
    let dir = data_dir(&fs);
    let mut server = ApiServer::start_with(&dir, &["--disk-reserve", "3Mi"]);
    let client = direct_client(&server);

    let filled = fill(&server).await;
    let message = filled
        .refusal
        .as_ref()
        .map(|s| s.message())
        .unwrap_or_default();
    assert!(
        message.contains(&dir.display().to_string())
            && message.contains("reserve")
            && message.contains("refused until space is freed"),
        "the refusal names the data dir and the reserve: {message}"
    );
    assert!(
        filled.unknown.is_empty(),
        "no write failed for want of space: {:?}",
        filled.unknown
    );
    assert!(
        filled.acknowledged.len() > 100,
        "only {} writes before the reserve",
        filled.acknowledged.len()
    );
    eprintln!(
        "{} writes acknowledged, then: {message}",
        filled.acknowledged.len()
    );

    // Reads are served (linearizable ones, through raft), and hold every
    // acknowledged write.
    let stored = namespaces(&client).await;
    assert!(filled.acknowledged.is_subset(&stored));

    // Writes stay refused; deletes go through (they are how room is made).
    let refused = client
        .apply(bulky_namespace("one-more"), false)
        .await
        .expect_err("still below the reserve");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let delete = pb::DeleteRequest {
        kind: pb::Kind::Namespace as i32,
        name: "ns-0-0".into(),
        ..Default::default()
    };
    client
        .objects()
        .delete(delete)
        .await
        .expect("a delete below the reserve");

    // Space returns: writes are taken again, without a restart.
    fs.resize("48m");
    wait_until(
        Duration::from_secs(10),
        "a write once space returns",
        || async { client.apply(bulky_namespace("after"), false).await.is_ok() },
    )
    .await;

    // Nothing acknowledged was lost, across a crash too.
    server.kill9();
    server.restart();
    let client = direct_client(&server);
    let stored = namespaces(&client).await;
    let mut expected = filled.acknowledged.clone();
    expected.remove("ns-0-0");
    expected.insert("after".into());
    assert!(
        expected.is_subset(&stored),
        "lost after the restart: {:?}",
        expected.difference(&stored).collect::<Vec<_>>()
    );
    assert!(!stored.contains("ns-0-0"), "the delete holds");
}

#[tokio::test]
async fn a_disk_that_fills_under_a_write_recovers_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = data_dir(&fs);
    // No reserve: the disk really fills, in the middle of a write.
    let mut server = ApiServer::start_with(&dir, &["--disk-reserve", "0"]);
    let client = direct_client(&server);

    let filled = fill(&server).await;
    let message = filled
        .refusal
        .as_ref()
        .map(|s| s.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("disk of this member is full"),
        "the refusal says the disk is full: {message}"
    );
    eprintln!(
        "{} writes acknowledged, {} unknown, then: {message}",
        filled.acknowledged.len(),
        filled.unknown.len()
    );
    // It serves nothing wrong: reads are refused too, with the reason.
    let read = client
        .list(pb::Kind::Namespace, "")
        .await
        .expect_err("a member with a full disk does not serve reads");
    assert_eq!(read.code(), Code::ResourceExhausted, "{read:?}");

    // Space returns: the member restarts from its store by itself.
    fs.resize("32m");
    wait_until(
        Duration::from_secs(30),
        "writes once space is freed",
        || async { client.apply(bulky_namespace("after"), false).await.is_ok() },
    )
    .await;
    let stored = namespaces(&client).await;
    assert!(
        filled.acknowledged.is_subset(&stored),
        "lost: {:?}",
        filled.acknowledged.difference(&stored).collect::<Vec<_>>()
    );
    assert!(stored.contains("after"));

    // And across a crash: the same objects.
    server.kill9();
    server.restart();
    let again = namespaces(&direct_client(&server)).await;
    assert_eq!(stored, again, "the store after a crash");
}
