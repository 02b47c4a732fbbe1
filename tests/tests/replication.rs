//! The replicated apiserver: three real members on loopback, killed,
//! partitioned (through the transport's fault injection) and restarted.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::{Cluster, apply, job, wait_until};
use tonic::Code;

/// Name → resource version of every write a client saw acknowledged.
type Acknowledged = Arc<Mutex<BTreeMap<String, u64>>>;

/// Writers creating jobs through a failing-over client until `stop`.
fn start_writers(
    client: Arc<BerthClient>,
    writers: usize,
    prefix: &str,
    acknowledged: Acknowledged,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("{prefix}-{w}-{i}");
                    // An error (failover in progress) leaves the outcome unknown:
                    // only acknowledged writes are counted.
                    if let Ok(object) = apply(&client, job("default", &name, 1)).await {
                        acknowledged
                            .lock()
                            .unwrap()
                            .insert(name, object.resource_version());
                        i += 1;
                    }
                }
            })
        })
        .collect()
}

async fn wait_for_count(acknowledged: &Acknowledged, count: usize, what: &str) {
    wait_until(Duration::from_secs(60), what, || {
        let n = acknowledged.lock().unwrap().len();
        async move { n >= count }
    })
    .await;
}

/// Jobs on one member, from its own state.
async fn jobs_on(cluster: &Cluster, id: u64) -> BTreeMap<String, u64> {
    cluster
        .client_of(id)
        .call(|mut c| async move {
            c.list(pb::ListRequest {
                kind: pb::Kind::Job as i32,
                stale: true,
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
        .collect()
}

/// Every acknowledged write is on every member, at its acknowledged version.
async fn assert_everywhere(cluster: &Cluster, acknowledged: &Acknowledged) {
    let acknowledged = acknowledged.lock().unwrap().clone();
    let highest = acknowledged.values().copied().max().unwrap_or(0);
    cluster.wait_applied(highest, Duration::from_secs(60)).await;
    for id in 1..=cluster.members.len() as u64 {
        let stored = jobs_on(cluster, id).await;
        let missing: Vec<_> = acknowledged
            .iter()
            .filter(|(name, rv)| stored.get(*name) != Some(rv))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "member {id} lacks acknowledged writes ({} acknowledged, {} stored), e.g. {missing:?}",
            acknowledged.len(),
            stored.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_writes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let acknowledged: Acknowledged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(
        Arc::new(cluster.client()),
        4,
        "w",
        acknowledged.clone(),
        stop.clone(),
    );

    wait_for_count(&acknowledged, 200, "200 writes before the kill").await;
    let killed_at = Instant::now();
    cluster.member(leader).kill9();
    let before_kill = acknowledged.lock().unwrap().len();
    wait_for_count(
        &acknowledged,
        before_kill + 200,
        "200 writes after the leader died",
    )
    .await;
    let new_leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);
    eprintln!(
        "writes resumed {:?} after the leader was killed",
        killed_at.elapsed()
    );

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    cluster.member(leader).restart();
    assert_everywhere(&cluster, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_minority_cannot_commit_and_converges_after_healing() {
    let cluster = Cluster::start(3, &["--proposal-timeout", "2s"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    apply(&client, job("default", "before", 1)).await.unwrap();

    // Cut off a follower: the majority keeps working, the follower cannot
    // commit (it has no one to forward to and no quorum).
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != follower).collect();
    cluster.partition(follower, &others).await;
    let majority = BerthClient::new(
        &others
            .iter()
            .map(|id| cluster.members[(*id - 1) as usize].addr.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for i in 0..20 {
        apply(&majority, job("default", &format!("majority-{i}"), 1))
            .await
            .unwrap();
    }
    let refused = apply(&cluster.client_of(follower), job("default", "minority", 1)).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unavailable);

    // Now cut off the leader itself: it cannot commit, the other two elect a
    // new leader and go on.
    cluster.heal().await;
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    cluster.partition(leader, &survivors).await;
    let stuck = apply(&cluster.client_of(leader), job("default", "old-leader", 1)).await;
    assert_eq!(
        stuck.unwrap_err().code(),
        Code::Unavailable,
        "an isolated leader must not commit"
    );
    let survivors_client = BerthClient::new(
        &survivors
            .iter()
            .map(|id| cluster.members[(*id - 1) as usize].addr.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let acked = apply(&survivors_client, job("default", "new-leader", 1))
        .await
        .unwrap();
    let statuses = [
        cluster.status(survivors[0]).await.unwrap(),
        cluster.status(survivors[1]).await.unwrap(),
    ];
    assert!(
        statuses.iter().any(|s| s.role == "leader"),
        "the majority elected a new leader"
    );

    // After healing, everyone converges on the majority's history.
    cluster.heal().await;
    cluster
        .wait_applied(acked.resource_version(), Duration::from_secs(30))
        .await;
    let reference = cluster.dump_of(survivors[0]).await;
    for id in 1..=3 {
        wait_until(Duration::from_secs(30), "member to converge", || {
            let cluster = &cluster;
            let reference = reference.clone();
            async move { cluster.dump_of(id).await == reference }
        })
        .await;
    }
    let names = jobs_on(&cluster, leader).await;
    assert!(names.contains_key("new-leader") && names.contains_key("majority-19"));
    assert!(!names.contains_key("minority") && !names.contains_key("old-leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_member_at_once_keeps_objects_and_revisions() {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client();
    for i in 0..50 {
        apply(&client, job("default", &format!("j{i}"), 1 + i % 3))
            .await
            .unwrap();
    }
    let before = berth_tests::dump(&client).await;
    for id in 1..=3 {
        cluster.member(id).kill9();
    }
    for id in 1..=3 {
        cluster.member(id).restart();
    }
    assert_eq!(before, berth_tests::dump(&cluster.client()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_catch_up_from_snapshots_and_members_come_and_go() {
    let mut cluster = Cluster::start(3, &["--snapshot-threshold", "200"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.member(follower).kill9();

    // Far more writes than the log keeps while the follower is down.
    let client = Arc::new(cluster.client());
    let acknowledged: Acknowledged = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(client.clone(), 8, "s", acknowledged.clone(), stop.clone());
    wait_for_count(&acknowledged, 2000, "2000 writes while a follower is down").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let status = cluster.status(leader).await.unwrap();
    assert!(
        status.first_log_index > 1000,
        "the log was compacted: {status:?}"
    );

    cluster.member(follower).restart();
    assert_everywhere(&cluster, &acknowledged).await;
    assert!(cluster.status(follower).await.unwrap().snapshots_installed >= 1);

    // A brand-new member joins as a learner, catches up from a snapshot and
    // becomes a voter.
    let address = cluster.start_joiner(4, &[]);
    let out = cluster.members[0]
        .ctl(&["cluster", "add-member", "4", &address])
        .ok();
    assert!(out.contains("member 4 added as a voter"), "{out}");
    let members = cluster.status(leader).await.unwrap().members;
    assert_eq!(members.iter().filter(|m| m.voter).count(), 4, "{members:?}");
    assert!(cluster.status(4).await.unwrap().snapshots_installed >= 1);

    // Remove the leader itself: it hands over leadership first.
    let current = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let any_other = (1..=4).find(|id| *id != current).unwrap();
    cluster.members[(any_other - 1) as usize]
        .ctl(&["cluster", "remove-member", &current.to_string()])
        .ok();
    let voters: Vec<u64> = cluster
        .status(any_other)
        .await
        .unwrap()
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters.len(), 3, "{voters:?}");
    assert!(!voters.contains(&current));

    // The cluster keeps serving, through any remaining member.
    let remaining: Vec<String> = voters
        .iter()
        .map(|id| cluster.members[(*id - 1) as usize].addr.clone())
        .collect();
    let client = BerthClient::new(&remaining).unwrap();
    let written = apply(&client, job("default", "after-changes", 1))
        .await
        .unwrap()
        .resource_version();
    for id in &voters {
        let stale = cluster.client_of(*id);
        wait_until(Duration::from_secs(10), "the write on every voter", || {
            let stale = &stale;
            async move {
                stale
                    .call(|mut c| async move {
                        c.get(pb::GetRequest {
                            kind: pb::Kind::Job as i32,
                            namespace: "default".into(),
                            name: "after-changes".into(),
                            stale: true,
                        })
                        .await
                    })
                    .await
                    .is_ok_and(|o| o.into_inner().resource_version() == written)
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_member_goes_through_joint_consensus() {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client();
    apply(&client, job("default", "a", 1)).await.unwrap();
    let address = cluster.start_joiner(4, &[]);
    let out = cluster.members[0]
        .ctl(&["cluster", "add-member", "4", &address, "--replace", "3"])
        .ok();
    assert!(
        out.contains("member 4 added as a voter, member 3 removed"),
        "{out}"
    );
    let voters = |status: pb::ClusterStatus| -> Vec<u64> {
        status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    };
    // Members 1, 2 and 4 apply the change (the add-member answer came once
    // the leader had).
    for id in [1, 2, 4] {
        wait_until(
            Duration::from_secs(10),
            &format!("member {id} to apply the change"),
            || {
                let cluster = &cluster;
                async move {
                    cluster
                        .status(id)
                        .await
                        .is_some_and(|s| voters(s) == vec![1, 2, 4])
                }
            },
        )
        .await;
    }
    cluster.member(3).kill9();
    let written = apply(&cluster.client(), job("default", "b", 1))
        .await
        .unwrap();
    assert!(written.resource_version() > 0);

    // The leader itself replaced: it hands leadership over first, and the
    // change completes on the new leader.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let address = cluster.start_joiner(5, &[]);
    let out = cluster.members[0]
        .ctl(&[
            "cluster",
            "add-member",
            "5",
            &address,
            "--replace",
            &leader.to_string(),
        ])
        .ok();
    assert!(
        out.contains(&format!(
            "member 5 added as a voter, member {leader} removed"
        )),
        "{out}"
    );
    let remaining: Vec<u64> = [1, 2, 4, 5]
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    wait_until(Duration::from_secs(10), "the new voters", || {
        let cluster = &cluster;
        let remaining = remaining.clone();
        async move {
            cluster
                .status(new_leader)
                .await
                .is_some_and(|s| voters(s) == remaining)
        }
    })
    .await;
}
