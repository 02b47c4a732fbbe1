//! Backups: `berthctl snapshot save` takes every object at one revision from
//! the leader while writes go on; `berth-apiserver --restore` builds a new
//! cluster from the file with every object and revision as they were; a
//! truncated or damaged file is refused, and leaves the data dir empty.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::{ApiServer, Cluster, apiserver_refuses, apply, ctl_at, job, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

fn namespace(name: &str, version: &str) -> pb::Object {
    pb::Object::from(pb::Namespace {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            labels: [("version".to_string(), version.to_string())].into(),
            ..Default::default()
        }),
        spec: Some(pb::NamespaceSpec::default()),
    })
}

/// Every object of every kind, by key, and the revision of the store.
async fn everything(client: &BerthClient) -> (BTreeMap<String, pb::Object>, u64) {
    let mut objects = BTreeMap::new();
    let mut revision = 0;
    for kind in pb::Kind::ALL {
        let list = client.list(kind, "").await.unwrap();
        revision = revision.max(list.revision);
        for object in list.objects {
            objects.insert(format!("{:?}", object.key()), object);
        }
    }
    (objects, revision)
}

fn by_key(objects: &[pb::Object]) -> BTreeMap<String, pb::Object> {
    objects
        .iter()
        .map(|o| (format!("{:?}", o.key()), o.clone()))
        .collect()
}

/// Creates, updates and deletes a few namespaces and jobs.
async fn some_history(client: &BerthClient) {
    for i in 0..30 {
        apply(client, namespace(&format!("ns-{i}"), "1"))
            .await
            .unwrap();
    }
    for i in 0..10 {
        apply(client, namespace(&format!("ns-{i}"), "2"))
            .await
            .unwrap();
        apply(client, job(&format!("ns-{i}"), "batch", 2))
            .await
            .unwrap();
    }
    for i in 20..25 {
        let request = pb::DeleteRequest {
            kind: pb::Kind::Namespace as i32,
            name: format!("ns-{i}"),
            ..Default::default()
        };
        client
            .call(|mut c| {
                let request = request.clone();
                async move { c.delete(request).await }
            })
            .await
            .unwrap();
    }
}

/// Saves a snapshot through berthctl; returns its revision.
async fn save(servers: &str, file: &Path) -> u64 {
    let (servers, file) = (servers.to_string(), file.display().to_string());
    let out = tokio::task::spawn_blocking(move || ctl_at(&servers, &["snapshot", "save", &file]))
        .await
        .unwrap()
        .ok();
    let revision = out
        .split("at revision ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|r| r.parse().ok());
    revision.unwrap_or_else(|| panic!("no revision in {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_under_writes_restores_every_object_and_revision() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    some_history(&client).await;

    // Writes go on while the snapshot is taken; each acknowledged one is
    // noted with its revision.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let writer = {
        let (servers, stop, acknowledged) =
            (cluster.addresses(), stop.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let client = BerthClient::new(&servers).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("live-{i}");
                let stored = apply(&client, namespace(&name, "1")).await.unwrap();
                acknowledged
                    .lock()
                    .unwrap()
                    .push((name, stored.resource_version()));
                i += 1;
            }
        })
    };
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("cluster.snap");
    // Some writes before and after.
    let written = |count: usize| {
        let acknowledged = acknowledged.clone();
        move || {
            let acknowledged = acknowledged.clone();
            async move { acknowledged.lock().unwrap().len() >= count }
        }
    };
    wait_until(DEADLINE, "writes before the snapshot", written(20)).await;
    let revision = save(&cluster.addresses().join(","), &file).await;
    let taken = acknowledged.lock().unwrap().len();
    wait_until(DEADLINE, "writes after the snapshot", written(taken + 20)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // Consistent at its revision: exactly the writes acknowledged up to it.
    let backup = berth_proto::backup::read(&file).unwrap();
    assert_eq!(backup.header.revision, revision);
    let saved = by_key(&backup.objects);
    for (name, version) in acknowledged.lock().unwrap().iter() {
        let key = format!("{:?}", namespace(name, "1").key());
        assert_eq!(
            saved.contains_key(&key),
            *version <= revision,
            "{name} written at {version}, snapshot at {revision}"
        );
    }
    // And equal to the store for everything not written since.
    let (now, _) = everything(&client).await;
    for (key, object) in &saved {
        if object.resource_version() <= revision && !key.contains("live-") {
            assert_eq!(now.get(key), Some(object), "{key}");
        }
    }
    assert!(saved.len() > 40, "{} objects", saved.len());

    // The cluster is gone; a new one comes back from the file.
    drop(cluster);
    let file_arg = file.display().to_string();
    let restored = Cluster::start(3, &["--restore", &file_arg]);
    restored.wait_for_leader(Duration::from_secs(20)).await;
    let client = restored.client();
    let (objects, store_revision) = everything(&client).await;
    assert_eq!(objects, saved, "every object, uid and revision as saved");
    assert_eq!(store_revision, revision);
    // Every member holds the same, and new writes come after.
    for id in 1..=3 {
        restored
            .wait_applied(revision, Duration::from_secs(20))
            .await;
        let (theirs, _) = everything(&restored.client_of(id)).await;
        assert_eq!(theirs, saved, "member {id}");
    }
    let created = apply(&client, namespace("after-restore", "1"))
        .await
        .unwrap();
    assert!(created.resource_version() > revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused_and_the_data_dir_stays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(&dir.path().join("source"));
    some_history(&server.client()).await;
    let file = dir.path().join("good.snap");
    save(&server.addr, &file).await;
    let bytes = std::fs::read(&file).unwrap();

    let restore = |name: &str, contents: &[u8]| {
        let damaged = dir.path().join(name);
        std::fs::write(&damaged, contents).unwrap();
        let data = dir.path().join(format!("{name}.data"));
        std::fs::create_dir_all(&data).unwrap();
        let error = apiserver_refuses(&[
            "--data-dir",
            data.to_str().unwrap(),
            "--restore",
            damaged.to_str().unwrap(),
        ]);
        let left: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
        assert!(left.is_empty(), "{name}: the data dir was written to");
        error
    };
    let truncated = restore("cut.snap", &bytes[..bytes.len() * 2 / 3]);
    assert!(
        truncated.contains("cut.snap") && truncated.contains("truncated"),
        "{truncated}"
    );
    let mut flipped = bytes.clone();
    let at = flipped.len() - 40;
    flipped[at] ^= 0x01;
    let corrupt = restore("flipped.snap", &flipped);
    assert!(
        corrupt.contains("flipped.snap") && corrupt.contains("corrupt"),
        "{corrupt}"
    );
    let missing = apiserver_refuses(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--restore",
        "/nonexistent/x.snap",
    ]);
    assert!(missing.contains("/nonexistent/x.snap"), "{missing}");

    // A store already there is never overwritten by a restore.
    drop(server);
    let source = dir.path().join("source");
    let existing = apiserver_refuses(&[
        "--data-dir",
        source.to_str().unwrap(),
        "--restore",
        file.to_str().unwrap(),
    ]);
    assert!(existing.contains("already holds a store"), "{existing}");
}
