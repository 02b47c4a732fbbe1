//! Watch: every change exactly once, in revision order, resumable from any
//! retained revision, and a clear error for a compacted one.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::{ApiServer, apply, job, wait_until};
use tonic::Code;

async fn watch(
    client: &BerthClient,
    kind: pb::Kind,
    selector: &str,
    from: u64,
) -> Result<tonic::Streaming<pb::WatchEvent>, tonic::Status> {
    let request = pb::WatchRequest {
        kind: kind as i32,
        namespace: String::new(),
        label_selector: selector.into(),
        from_revision: from,
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.watch(request).await }
        })
        .await
        .map(|r| r.into_inner())
}

async fn delete(client: &BerthClient, name: &str) -> Result<u64, tonic::Status> {
    let request = pb::DeleteRequest {
        kind: pb::Kind::Job as i32,
        namespace: "default".into(),
        name: name.into(),
        resource_version: 0,
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.delete(request).await }
        })
        .await
        .map(|r| r.into_inner().revision)
}

/// Collects a stream's non-bookmark events in the background.
fn collect(mut stream: tonic::Streaming<pb::WatchEvent>) -> Arc<Mutex<Vec<pb::WatchEvent>>> {
    let seen: Arc<Mutex<Vec<pb::WatchEvent>>> = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            if event.r#type() != pb::WatchEventType::Bookmark {
                sink.lock().unwrap().push(event);
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_revision_once_in_order_under_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path());
    let client = Arc::new(server.client());
    let seen = collect(watch(&client, pb::Kind::Job, "", 0).await.unwrap());

    // Eight writers create, update and delete their own jobs concurrently.
    let acknowledged: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..40 {
                let name = format!("w{w}-{}", i % 10);
                let revision = if i % 7 == 6 {
                    match delete(&client, &name).await {
                        Ok(revision) => revision,
                        Err(status) if status.code() == Code::NotFound => continue,
                        Err(status) => panic!("delete: {status}"),
                    }
                } else {
                    let replicas = (i % 5) + 1;
                    apply(&client, job("default", &name, replicas))
                        .await
                        .unwrap()
                        .resource_version()
                };
                acknowledged.lock().unwrap().push(revision);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let expected: BTreeSet<u64> = acknowledged.lock().unwrap().iter().copied().collect();
    let last = *expected.last().unwrap();
    wait_until(
        Duration::from_secs(30),
        "the watcher to reach the last write",
        || {
            let done = seen
                .lock()
                .unwrap()
                .last()
                .is_some_and(|e| e.revision >= last);
            async move { done }
        },
    )
    .await;

    let seen = seen.lock().unwrap();
    let revisions: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions must strictly increase (no duplicate, no reordering): {revisions:?}"
    );
    let got: BTreeSet<u64> = revisions.iter().copied().collect();
    assert_eq!(
        got, expected,
        "the watcher must see exactly the acknowledged revisions"
    );
    // An unchanged apply takes no revision, so every acknowledged revision is
    // a real change, seen once.
    assert_eq!(revisions.len(), expected.len());
}

#[tokio::test]
async fn a_watch_resumes_from_a_revision_and_follows_selectors() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path());
    let client = server.client();
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(
            apply(&client, job("default", &format!("j{i}"), 1))
                .await
                .unwrap()
                .resource_version(),
        );
    }
    // Resume after the fifth write: exactly the last five, in order.
    let seen = collect(
        watch(&client, pb::Kind::Job, "", revisions[4])
            .await
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "five events", || {
        let n = seen.lock().unwrap().len();
        async move { n >= 5 }
    })
    .await;
    let got: Vec<u64> = seen.lock().unwrap().iter().map(|e| e.revision).collect();
    assert_eq!(got, revisions[5..].to_vec());

    // A selector watcher sees an object enter (ADDED) and leave (DELETED)
    // its selection when labels change.
    let selected = collect(watch(&client, pb::Kind::Job, "team=blue", 0).await.unwrap());
    let mut blue = job("default", "j0", 1);
    blue.metadata_mut()
        .unwrap()
        .labels
        .insert("team".into(), "blue".into());
    apply(&client, blue).await.unwrap();
    apply(&client, job("default", "j0", 1)).await.unwrap();
    wait_until(Duration::from_secs(10), "two selector events", || {
        let n = selected.lock().unwrap().len();
        async move { n >= 2 }
    })
    .await;
    let types: Vec<_> = selected
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.r#type())
        .collect();
    assert_eq!(
        types,
        vec![pb::WatchEventType::Added, pb::WatchEventType::Deleted]
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // History reaches the disk with checkpoints (every 4 entries here).
    let mut server = ApiServer::start_with(
        dir.path(),
        &[
            "--history-retention",
            "10",
            "--history-cache",
            "5",
            "--snapshot-threshold",
            "8",
        ],
    );
    let client = server.client();
    let mut last = 0;
    for i in 0..40 {
        last = apply(&client, job("default", &format!("j{i}"), 1))
            .await
            .unwrap()
            .resource_version();
    }
    let err = watch(&client, pb::Kind::Job, "", 1).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("compacted"), "{}", err.message());

    // A retained revision older than the in-memory cache is read from disk,
    // before and after a kill -9 (which loses the records not yet stored:
    // the restart makes them again from the log).
    let from = last - 8;
    for round in ["before", "after"] {
        let client = server.client();
        let seen = collect(watch(&client, pb::Kind::Job, "", from).await.unwrap());
        wait_until(Duration::from_secs(10), "eight events", || {
            let n = seen.lock().unwrap().len();
            async move { n >= 8 }
        })
        .await;
        let got: Vec<u64> = seen.lock().unwrap().iter().map(|e| e.revision).collect();
        assert_eq!(
            got,
            ((from + 1)..=last).collect::<Vec<_>>(),
            "{round} a restart"
        );
        if round == "before" {
            server.kill9();
            server.restart();
        }
    }
}

/// Reflectors list, then watch from the list's revision. A brand-new
/// cluster's first list must not report revision 0, which a watch takes to
/// mean "from now": the watcher would miss every object created between.
#[tokio::test]
async fn a_watch_from_the_first_list_of_a_new_cluster_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path());
    let client = server.client();
    // Listed at once, possibly before the default namespace exists.
    let listed = client.list(pb::Kind::Job, "").await.unwrap();
    assert!(listed.objects.is_empty());
    assert!(listed.revision > 0, "a list reported revision 0");
    let seen = collect(
        watch(&client, pb::Kind::Job, "", listed.revision)
            .await
            .unwrap(),
    );
    apply(&client, job("default", "first", 1)).await.unwrap();
    wait_until(Duration::from_secs(10), "the first job's ADDED", || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|e| e.object.as_ref().is_some_and(|o| o.name() == "first"))
    })
    .await;
}
