//! `berth-bench catch-up`: a follower down for many writes comes back and
//! catches up from a streamed snapshot; how long that takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use berth_tests::{Cluster, apply, job};

pub async fn run(writes: u64, clients: u64) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap_or(1);
    cluster.member(follower).kill9();
    println!("member {follower} stopped; writing {writes} objects through the other two");

    let client = Arc::new(cluster.client());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= writes {
                    return anyhow::Ok(());
                }
                apply(&client, job("default", &format!("catch-up-{i}"), 1)).await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let wrote = started.elapsed();
    let leader_status = cluster.status(leader).await;
    let Some(leader_status) = leader_status else {
        bail!("the leader stopped answering");
    };
    println!(
        "{writes} writes in {:.1} s ({:.0}/s); the leader's log now starts at {} (compacted), commit {}",
        wrote.as_secs_f64(),
        writes as f64 / wrote.as_secs_f64(),
        leader_status.first_log_index,
        leader_status.commit_index
    );

    let restarted = Instant::now();
    cluster.member(follower).restart();
    cluster
        .wait_applied(leader_status.commit_index, Duration::from_secs(600))
        .await;
    let caught_up = restarted.elapsed();
    let status = cluster.status(follower).await;
    let installed = status.as_ref().map_or(0, |s| s.snapshots_installed);
    let objects = status.as_ref().map_or(0, |s| s.object_count);
    let same = cluster.dump_of(follower).await == cluster.dump_of(leader).await;
    println!(
        "member {follower} caught up in {:.2} s (restart included): {installed} snapshot(s) installed, \
         {objects} objects, identical to the leader: {same}",
        caught_up.as_secs_f64()
    );
    if installed == 0 || !same {
        bail!("the follower did not catch up from a snapshot to identical state");
    }
    Ok(())
}
