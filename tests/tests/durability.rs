//! Durability: what the apiserver acknowledged survives kill -9, and a
//! restart serves exactly the same objects and revisions.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb;
use berth_tests::{ApiServer, apply, dump, job, repo_root};

/// Every kind's `get -o yaml` output, as a user would compare it.
fn get_everything(server: &ApiServer) -> String {
    let mut out = String::new();
    for kind in ["namespaces", "nodes", "jobs", "tasks", "events"] {
        out.push_str(&server.ctl(&["get", kind, "-A", "-o", "yaml"]).ok());
    }
    out
}

#[test]
fn apply_get_kill9_restart_get_shows_identical_objects() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ApiServer::start(dir.path());
    let manifests = repo_root().join("manifests");
    let applied = server
        .ctl(&["apply", "-f", manifests.to_str().unwrap()])
        .ok();
    assert!(applied.contains("job/web created"), "{applied}");

    let before = get_everything(&server);
    assert!(before.contains("name: web"), "{before}");
    assert!(before.contains("resourceVersion:"), "{before}");

    server.kill9();
    server.restart();
    let after = get_everything(&server);
    assert_eq!(
        before, after,
        "a restart must serve the same objects and revisions"
    );

    // And the table view agrees.
    let jobs = server.ctl(&["get", "jobs", "-n", "team-a"]).ok();
    assert!(
        jobs.contains("web") && jobs.contains("nightly-report"),
        "{jobs}"
    );
}

/// Writers hammer the server; it is killed with writes in flight. Every
/// write it acknowledged must be there after the restart, at the revision
/// it was acknowledged with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ApiServer::start(dir.path());
    let acknowledged: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();

    for round in 0..3 {
        let client = Arc::new(server.client());
        let mut writers = Vec::new();
        for writer in 0..8 {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("r{round}-w{writer}-{i}");
                    match apply(&client, job("default", &name, 1)).await {
                        Ok(object) => {
                            acknowledged
                                .lock()
                                .unwrap()
                                .insert(name, object.resource_version());
                        }
                        // The server died under us: stop writing.
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let a few hundred writes through, then pull the plug mid-stream.
        let target = acknowledged.lock().unwrap().len() + 300;
        berth_tests::wait_until(Duration::from_secs(60), "300 acknowledged writes", || {
            let n = acknowledged.lock().unwrap().len();
            async move { n >= target }
        })
        .await;
        server.kill9();
        for w in writers {
            w.await.unwrap();
        }
        server.restart();

        let client = server.client();
        let stored: BTreeMap<String, u64> = client
            .call(|mut c| async move {
                c.list(pb::ListRequest {
                    kind: pb::Kind::Job as i32,
                    ..Default::default()
                })
                .await
            })
            .await
            .unwrap()
            .into_inner()
            .objects
            .iter()
            .map(|o| (o.name().to_string(), o.resource_version()))
            .collect();
        let acknowledged = acknowledged.lock().unwrap();
        let lost: Vec<_> = acknowledged
            .iter()
            .filter(|(name, rv)| stored.get(*name) != Some(rv))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged writes lost or changed, e.g. {:?}",
            lost.len(),
            acknowledged.len(),
            &lost[..lost.len().min(5)]
        );
    }
}

/// Restarting twice in a row without writes changes nothing, not even the
/// revision (the default namespace is created once).
#[tokio::test]
async fn restart_without_writes_keeps_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ApiServer::start(dir.path());
    apply(&server.client(), job("default", "a", 1))
        .await
        .unwrap();
    let before = dump(&server.client()).await;
    server.restart();
    server.restart();
    assert_eq!(before, dump(&server.client()).await);
}
