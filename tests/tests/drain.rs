//! `berthctl cordon|uncordon|drain` against real processes: an apiserver, a
//! scheduler and simulated nodes. A drain empties its node while a watcher
//! checks, change by change, that no job ever had more tasks down than its
//! maxUnavailable; a drain that a job's budget blocks gives up at its
//! timeout, naming the job.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::{ApiServer, Component, apply, job, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// A job of `replicas` prod tasks of half a CPU, with `max_unavailable`.
fn web(name: &str, replicas: u32, max_unavailable: u32) -> pb::Object {
    let mut object = job("default", name, replicas);
    if let Some(pb::object::Kind::Job(j)) = &mut object.kind {
        let spec = j.spec.as_mut().unwrap();
        spec.tier = pb::Tier::Prod as i32;
        spec.update = Some(pb::UpdateStrategy {
            max_unavailable: Some(max_unavailable),
            max_surge: None,
        });
        let resources = spec.template.as_mut().unwrap().resources.as_mut().unwrap();
        resources.cpu_millis = 500;
    }
    object
}

async fn tasks(client: &BerthClient) -> Vec<pb::Task> {
    client
        .list(pb::Kind::Task, "")
        .await
        .unwrap()
        .objects
        .iter()
        .filter_map(|o| o.as_task().cloned())
        .collect()
}

fn job_of(task: &pb::Task) -> &str {
    task.spec.as_ref().map_or("", |s| s.job.as_str())
}

fn running(task: &pb::Task) -> bool {
    task.status
        .as_ref()
        .is_some_and(|s| s.phase() == pb::TaskPhase::Running)
}

async fn all_running(client: &BerthClient, want: &[(&str, usize)]) -> bool {
    let tasks = tasks(client).await;
    want.iter().all(|(job, count)| {
        tasks
            .iter()
            .filter(|t| job_of(t) == *job && running(t))
            .count()
            == *count
    })
}

/// The fewest tasks of each job running at once, as a watch on tasks saw
/// them from `from` (the state at `from` given in `start`), until `stop`.
async fn watch_availability(
    servers: String,
    start: Vec<pb::Task>,
    from: u64,
    stop: Arc<AtomicBool>,
    lowest: Arc<Mutex<BTreeMap<String, usize>>>,
) {
    let client = BerthClient::from_list(&servers).unwrap();
    let mut state: BTreeMap<String, pb::Task> = start
        .into_iter()
        .map(|t| (t.metadata.as_ref().unwrap().name.clone(), t))
        .collect();
    let request = pb::WatchRequest {
        kind: pb::Kind::Task as i32,
        from_revision: from,
        ..Default::default()
    };
    let mut stream = client.objects().watch(request).await.unwrap().into_inner();
    while !stop.load(Ordering::Relaxed) {
        let Ok(next) = tokio::time::timeout(Duration::from_millis(200), stream.message()).await
        else {
            continue;
        };
        let Some(event) = next.unwrap() else { break };
        let Some(task) = event.object.as_ref().and_then(|o| o.as_task()) else {
            continue;
        };
        let name = task.metadata.as_ref().unwrap().name.clone();
        if event.r#type() == pb::WatchEventType::Deleted {
            state.remove(&name);
        } else {
            state.insert(name, task.clone());
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for task in state.values() {
            *counts.entry(job_of(task).to_string()).or_default() += usize::from(running(task));
        }
        let mut lowest = lowest.lock().unwrap();
        for (job, count) in counts {
            let low = lowest.entry(job).or_insert(count);
            *low = (*low).min(count);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_tasks_off_a_node_within_each_jobs_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path());
    let _scheduler = Component::scheduler(&server.addr, &[]);
    let _nodes = Component::sim_nodes(&server.addr, "n", 3, &["--cpu", "4"]);
    let client = server.client();

    // 8 + 4 tasks of half a CPU on three nodes of 4: every node holds some.
    apply(&client, web("web", 8, 1)).await.unwrap();
    apply(&client, web("api", 4, 2)).await.unwrap();
    wait_until(DEADLINE, "all tasks running", || {
        all_running(&client, &[("web", 8), ("api", 4)])
    })
    .await;

    // The node with the most tasks.
    let before = tasks(&client).await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for task in &before {
        *per_node
            .entry(task.status.as_ref().unwrap().node.clone())
            .or_default() += 1;
    }
    let (node, count) = per_node.iter().max_by_key(|(_, c)| **c).unwrap();
    let node = node.clone();
    assert!(*count >= 3, "{per_node:?}");

    let revision = client.list(pb::Kind::Task, "").await.unwrap().revision;
    let stop = Arc::new(AtomicBool::new(false));
    let lowest = Arc::new(Mutex::new(BTreeMap::new()));
    let watcher = tokio::spawn(watch_availability(
        server.addr.clone(),
        before.clone(),
        revision,
        stop.clone(),
        lowest.clone(),
    ));

    let out = {
        let (server, node) = (server.addr.clone(), node.clone());
        tokio::task::spawn_blocking(move || {
            berth_tests::ctl_at(&server, &["drain", &node, "--timeout", "60s"])
        })
        .await
        .unwrap()
    };
    let stdout = out.ok();
    assert!(stdout.contains(&format!("node/{node} drained")), "{stdout}");
    assert_eq!(
        stdout.matches(" evicted (default)").count(),
        *count,
        "one line per evicted task: {stdout}"
    );

    // Every task runs again, none on the drained node.
    wait_until(DEADLINE, "replacements running", || {
        all_running(&client, &[("web", 8), ("api", 4)])
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let after = tasks(&client).await;
    assert!(
        after
            .iter()
            .all(|t| t.holding_node() != Some(node.as_str())),
        "tasks left on {node}"
    );
    let lowest = lowest.lock().unwrap().clone();
    assert!(
        lowest["web"] >= 8 - 1,
        "web went below its budget: {lowest:?}"
    );
    assert!(
        lowest["api"] >= 4 - 2,
        "api went below its budget: {lowest:?}"
    );

    // Cordoned: nothing comes back until uncordoned.
    let node_object = client.get(pb::Kind::Node, "", &node).await.unwrap();
    assert!(node_object.as_node().unwrap().spec.unwrap().unschedulable);
    let again = server.ctl(&["drain", &node]).ok();
    assert!(again.contains("drained: 0 task(s)"), "{again}");
    assert!(server.ctl(&["uncordon", &node]).ok().contains("uncordoned"));
    assert!(
        server
            .ctl(&["uncordon", &node])
            .ok()
            .contains("already schedulable")
    );
    let node_object = client.get(pb::Kind::Node, "", &node).await.unwrap();
    assert!(!node_object.as_node().unwrap().spec.unwrap().unschedulable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_blocked_by_a_budget_of_zero_times_out_naming_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path());
    let _scheduler = Component::scheduler(&server.addr, &[]);
    let _nodes = Component::sim_nodes(&server.addr, "z", 1, &["--cpu", "4"]);
    let client = server.client();
    apply(&client, web("pinned", 2, 0)).await.unwrap();
    wait_until(DEADLINE, "pinned running", || {
        all_running(&client, &[("pinned", 2)])
    })
    .await;

    assert!(
        server
            .ctl(&["cordon", "z-0"])
            .ok()
            .contains("node/z-0 cordoned")
    );
    assert!(
        server
            .ctl(&["cordon", "z-0"])
            .ok()
            .contains("already cordoned")
    );
    let error = server.ctl(&["drain", "z-0", "--timeout", "1s"]).fails();
    assert!(
        error.contains("not drained within 1s")
            && error.contains("job default/pinned")
            && error.contains("maxUnavailable 0"),
        "{error}"
    );
    // Nothing was evicted.
    assert!(all_running(&client, &[("pinned", 2)]).await);
    let missing = server.ctl(&["drain", "no-such-node"]).fails();
    assert!(missing.contains("no-such-node"), "{missing}");
}
