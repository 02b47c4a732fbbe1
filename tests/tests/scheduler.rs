//! The scheduler end to end: real `berth-apiserver`, `berth-scheduler` and
//! `berth-agent --runtime sim` processes on loopback.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_proto::capacity::Amount;
use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::{ApiServer, Cluster, Component, apply, job, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

async fn list(client: &BerthClient, kind: pb::Kind, selector: &str) -> Vec<pb::Object> {
    client.list(kind, selector).await.unwrap().objects
}

async fn get(
    client: &BerthClient,
    kind: pb::Kind,
    namespace: &str,
    name: &str,
) -> Option<pb::Object> {
    client.get(kind, namespace, name).await.ok()
}

/// A job's tasks by name.
async fn tasks_of(client: &BerthClient, job: &str) -> BTreeMap<String, pb::Task> {
    list(client, pb::Kind::Task, &format!("berth.dev/job={job}"))
        .await
        .into_iter()
        .filter_map(|o| Some((o.name().to_string(), o.as_task()?.clone())))
        .collect()
}

fn phase(task: &pb::Task) -> pb::TaskPhase {
    task.status
        .as_ref()
        .map_or(pb::TaskPhase::Pending, |s| s.phase())
}

fn node_of(task: &pb::Task) -> &str {
    task.status.as_ref().map_or("", |s| s.node.as_str())
}

/// Waits until `job` has exactly `count` tasks, all Running.
async fn wait_running(client: &BerthClient, job: &str, count: usize) {
    wait_until(
        DEADLINE,
        &format!("{count} running tasks of {job}"),
        || async {
            let tasks = tasks_of(client, job).await;
            tasks.len() == count && tasks.values().all(|t| phase(t) == pb::TaskPhase::Running)
        },
    )
    .await;
}

/// Waits until `count` nodes are Ready.
async fn wait_nodes_ready(client: &BerthClient, count: usize) {
    wait_until(DEADLINE, &format!("{count} ready nodes"), || async {
        let nodes = list(client, pb::Kind::Node, "").await;
        let ready = nodes
            .iter()
            .filter_map(|o| o.as_node()?.status.as_ref())
            .filter(|s| s.state() == pb::NodeState::Ready)
            .count();
        ready == count
    })
    .await;
}

/// Checks every node against what its tasks ask, the rule the scheduler
/// and the apiserver both keep.
async fn assert_no_node_overcommitted(client: &BerthClient) {
    let nodes = list(client, pb::Kind::Node, "").await;
    let tasks = list(client, pb::Kind::Task, "").await;
    let mut held: HashMap<String, (Amount, Amount)> = HashMap::new();
    for task in tasks.iter().filter_map(|o| o.as_task()) {
        let Some(node) = task.holding_node() else {
            continue;
        };
        let asked = Amount::of(task.requests().unwrap());
        let entry = held.entry(node.to_string()).or_default();
        if task.spec.as_ref().unwrap().tier() == pb::Tier::Prod {
            entry.0.add(&asked, 1);
        } else {
            entry.1.add(&asked, 1);
        }
    }
    for node in nodes.iter().filter_map(|o| o.as_node()) {
        let name = &node.metadata.as_ref().unwrap().name;
        let (prod, batch) = held.remove(name).unwrap_or_default();
        let capacity = berth_proto::capacity::Capacity::of(node);
        if let Err(e) = capacity.check(name, &prod, &batch) {
            panic!("over-committed: {e}");
        }
    }
}

fn sized(mut job: pb::Object, tier: pb::Tier, cpu: i64) -> pb::Object {
    if let Some(pb::object::Kind::Job(j)) = &mut job.kind {
        let spec = j.spec.as_mut().unwrap();
        spec.tier = tier as i32;
        spec.template
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .cpu_millis = cpu;
    }
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_500_tasks_is_placed_and_scaled() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(&dir.path().join("api"));
    let _nodes = Component::sim_nodes(&server.addr, "n", 50, &["--cpu", "4", "--memory", "16Gi"]);
    let _scheduler = Component::scheduler(&server.addr, &[]);
    let client = server.client();
    wait_nodes_ready(&client, 50).await;

    // 500 tasks of 300m on 50 nodes of 4 CPU: 13 fit per node, 650 in all.
    apply(
        &client,
        sized(job("default", "wide", 500), pb::Tier::Batch, 300),
    )
    .await
    .unwrap();
    wait_running(&client, "wide", 500).await;
    assert_no_node_overcommitted(&client).await;
    let tasks = tasks_of(&client, "wide").await;
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for task in tasks.values() {
        *per_node.entry(node_of(task)).or_default() += 1;
    }
    assert!(per_node.values().all(|n| *n <= 13), "{per_node:?}");
    wait_until(
        DEADLINE,
        "the job's status to count 500 running",
        || async {
            let job = get(&client, pb::Kind::Job, "default", "wide")
                .await
                .unwrap();
            job.as_job()
                .unwrap()
                .status
                .as_ref()
                .is_some_and(|s| s.running == 500)
        },
    )
    .await;

    // berthctl scale, down then up: tasks follow, and the ones that stay are
    // not replaced (scaling rolls nothing out).
    let before = tasks_of(&client, "wide").await;
    server
        .ctl(&["scale", "job", "wide", "--replicas", "100"])
        .ok();
    wait_running(&client, "wide", 100).await;
    let after = tasks_of(&client, "wide").await;
    for (name, task) in &after {
        let old = &before[name];
        assert_eq!(
            old.metadata.as_ref().unwrap().uid,
            task.metadata.as_ref().unwrap().uid,
            "{name} was replaced"
        );
    }
    server.ctl(&["scale", "job/wide", "--replicas", "120"]).ok();
    wait_running(&client, "wide", 120).await;
    let missing = server
        .ctl(&["scale", "job", "nope", "--replicas", "1"])
        .fails();
    assert!(missing.contains("nope"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_preempts_batch_which_is_rescheduled() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(&dir.path().join("api"));
    let _nodes = Component::sim_nodes(&server.addr, "n", 2, &["--cpu", "4", "--memory", "16Gi"]);
    let _scheduler = Component::scheduler(&server.addr, &["--no-reclaim"]);
    let client = server.client();
    wait_nodes_ready(&client, 2).await;

    // Batch fills both nodes.
    apply(
        &client,
        sized(job("default", "filler", 8), pb::Tier::Batch, 1000),
    )
    .await
    .unwrap();
    wait_running(&client, "filler", 8).await;

    // Prod needs 3 CPU twice: it fits nowhere without evicting batch.
    apply(
        &client,
        sized(job("default", "urgent", 2), pb::Tier::Prod, 3000),
    )
    .await
    .unwrap();
    wait_running(&client, "urgent", 2).await;
    assert_no_node_overcommitted(&client).await;

    // Six batch tasks were evicted (three per node), each with an Event, and
    // replaced by new incarnations that wait for room, saying why.
    wait_until(DEADLINE, "six Preempted events", || async {
        let events = list(&client, pb::Kind::Event, "").await;
        events
            .iter()
            .filter_map(|o| match &o.kind {
                Some(pb::object::Kind::Event(e)) => Some(e),
                _ => None,
            })
            .filter(|e| e.reason == "Preempted" && e.message.contains("urgent"))
            .count()
            == 6
    })
    .await;
    wait_until(
        DEADLINE,
        "the evicted batch tasks to be replaced and wait",
        || async {
            let tasks = tasks_of(&client, "filler").await;
            let running = tasks
                .values()
                .filter(|t| phase(t) == pb::TaskPhase::Running)
                .count();
            let waiting: Vec<_> = tasks
                .values()
                .filter(|t| phase(t) == pb::TaskPhase::Pending)
                .filter(|t| t.spec.as_ref().unwrap().incarnation == 2)
                .filter(|t| {
                    t.status
                        .as_ref()
                        .unwrap()
                        .message
                        .contains("insufficient resources")
                })
                .collect();
            tasks.len() == 8 && running == 2 && waiting.len() == 6
        },
    )
    .await;
    // Prod tasks were never the victims.
    for task in tasks_of(&client, "urgent").await.values() {
        assert_eq!(task.spec.as_ref().unwrap().incarnation, 1);
    }

    // When prod goes, batch gets its room back.
    let deleted = server.ctl(&["delete", "job", "urgent"]);
    deleted.ok();
    wait_running(&client, "filler", 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_lost_node_move_to_other_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start_with(
        &dir.path().join("api"),
        &["--node-not-ready-after", "1s", "--node-lost-after", "3s"],
    );
    // The job runs on the doomed nodes first: they are the only ones.
    let mut doomed = Component::sim_nodes(&server.addr, "doomed", 2, &["--cpu", "8"]);
    let _scheduler = Component::scheduler(&server.addr, &[]);
    let client = server.client();
    wait_nodes_ready(&client, 2).await;
    let mut svc = sized(job("default", "svc", 8), pb::Tier::Prod, 500);
    if let Some(pb::object::Kind::Job(j)) = &mut svc.kind {
        j.spec.as_mut().unwrap().max_per_node = 4;
    }
    apply(&client, svc).await.unwrap();
    wait_running(&client, "svc", 8).await;
    let _healthy = Component::sim_nodes(&server.addr, "healthy", 2, &["--cpu", "8"]);
    wait_nodes_ready(&client, 4).await;

    // The doomed nodes' agent dies: no heartbeat, NotReady, then Lost.
    doomed.kill9();
    wait_until(DEADLINE, "the doomed nodes to be Lost", || async {
        let nodes = list(&client, pb::Kind::Node, "").await;
        let lost = nodes
            .iter()
            .filter(|o| o.name().starts_with("doomed"))
            .filter(|o| {
                o.as_node().unwrap().status.as_ref().unwrap().state() == pb::NodeState::Lost
            })
            .count();
        lost == 2
    })
    .await;
    // Its tasks were replaced on the healthy nodes.
    wait_until(
        DEADLINE,
        "the lost tasks to be replaced on healthy nodes",
        || async {
            let tasks = tasks_of(&client, "svc").await;
            let healthy_running = tasks
                .values()
                .filter(|t| phase(t) == pb::TaskPhase::Running && node_of(t).starts_with("healthy"))
                .count();
            tasks.len() == 8 && healthy_running == 8
        },
    )
    .await;
    assert_no_node_overcommitted(&client).await;
    let replaced = tasks_of(&client, "svc").await;
    assert!(
        replaced
            .values()
            .any(|t| t.spec.as_ref().unwrap().incarnation == 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_scheduler_takes_over_when_the_active_one_dies() {
    let cluster = Cluster::start(3, &[]);
    let servers = cluster.addresses().join(",");
    let client = cluster.client();
    let _nodes = Component::sim_nodes(&servers, "n", 4, &[]);
    let lease = ["--lease-duration", "2s"];
    let mut schedulers: HashMap<&str, Component> = HashMap::new();
    for identity in ["first", "second"] {
        let mut args = vec!["--identity", identity];
        args.extend_from_slice(&lease);
        schedulers.insert(identity, Component::scheduler(&servers, &args));
    }

    wait_nodes_ready(&client, 4).await;
    apply(&client, job("default", "steady", 10)).await.unwrap();
    wait_running(&client, "steady", 10).await;
    let holder = |lease: Option<pb::Object>| -> String {
        lease
            .and_then(|o| o.as_lease().and_then(|l| l.spec.clone()))
            .map(|s| s.holder)
            .unwrap_or_default()
    };
    let active = holder(get(&client, pb::Kind::Lease, "default", "berth-scheduler").await);
    assert!(
        ["first", "second"].contains(&active.as_str()),
        "holder {active:?}"
    );
    let standby = if active == "first" { "second" } else { "first" };

    // The active scheduler dies without letting go of the lease.
    schedulers.get_mut(active.as_str()).unwrap().kill9();
    apply(&client, job("default", "later", 10)).await.unwrap();
    wait_running(&client, "later", 10).await;
    let now = holder(get(&client, pb::Kind::Lease, "default", "berth-scheduler").await);
    assert_eq!(now, standby);

    // A scheduler that stops cleanly hands the lease over at once.
    schedulers.get_mut(standby).unwrap().stop();
    wait_until(DEADLINE, "the lease to be released", || async {
        holder(get(&client, pb::Kind::Lease, "default", "berth-scheduler").await).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_borrows_what_prod_does_not_use_and_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(&dir.path().join("api"));
    // Prod uses half of what it asks for.
    let mut nodes = Component::sim_nodes(&server.addr, "n", 1, &["--cpu", "4", "--usage", "0.5"]);
    let _scheduler = Component::scheduler(&server.addr, &["--reclaim-margin", "0.2"]);
    let client = server.client();
    wait_nodes_ready(&client, 1).await;

    // Prod reserves the whole node.
    apply(
        &client,
        sized(job("default", "reserved", 1), pb::Tier::Prod, 4000),
    )
    .await
    .unwrap();
    wait_running(&client, "reserved", 1).await;
    // It uses 2000m, 2400m with the margin: 1600m can be lent.
    wait_until(DEADLINE, "1600m lent to batch", || async {
        let node = get(&client, pb::Kind::Node, "", "n-0").await.unwrap();
        let status = node.as_node().unwrap().status.clone().unwrap();
        status.reclaimable.is_some_and(|r| r.cpu_millis == 1600)
    })
    .await;
    apply(
        &client,
        sized(job("default", "borrower", 2), pb::Tier::Batch, 800),
    )
    .await
    .unwrap();
    wait_running(&client, "borrower", 2).await;
    assert_no_node_overcommitted(&client).await;

    // Prod's usage grows to all it asked for: batch gives the room back.
    nodes.kill9();
    let _busier = Component::sim_nodes(&server.addr, "n", 1, &["--cpu", "4", "--usage", "1.0"]);
    wait_until(DEADLINE, "the borrowers to be evicted and wait", || async {
        let tasks = tasks_of(&client, "borrower").await;
        tasks.len() == 2
            && tasks.values().all(|t| {
                phase(t) == pb::TaskPhase::Pending && t.spec.as_ref().unwrap().incarnation == 2
            })
    })
    .await;
    let events = list(&client, pb::Kind::Event, "").await;
    let reclaimed = events
        .iter()
        .filter(|o| matches!(&o.kind, Some(pb::object::Kind::Event(e)) if e.reason == "Reclaimed"))
        .count();
    assert_eq!(reclaimed, 2);
    let prod = tasks_of(&client, "reserved").await;
    assert!(prod.values().all(|t| phase(t) == pb::TaskPhase::Running));
}
