//! `berth-bench containers`: N replicas of the test image started through
//! Berth (3 apiserver members, the scheduler, one Docker agent) and through
//! Docker Swarm mode on the same engine, same image and arguments.
//!
//! Measured the same way for both: the time from submitting the job (the
//! service) until the orchestrator reports every replica running, and each
//! replica's start latency — its container's `State.StartedAt` minus the
//! submission time. Also the agent's resident memory with the N tasks
//! running.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use berth_proto::pb;
use berth_tests::docker::{
    TEST_IMAGE, containers_of, ensure_test_image, job_yaml, remove_containers_of,
};
use berth_tests::{Cluster, Component, try_wait_until};

const DEADLINE: Duration = Duration::from_secs(300);
const SWARM_SERVICE: &str = "berth-bench-swarm";

pub struct Options {
    pub replicas: u32,
    pub skip_swarm: bool,
}

struct Outcome {
    all_running: Duration,
    latencies_ms: Vec<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .context("cannot run the docker CLI")?;
    if !output.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `State.StartedAt` of containers, in Unix ms.
fn started_at_ms(ids: &[String]) -> anyhow::Result<Vec<i64>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["inspect", "--format", "{{.State.StartedAt}}"];
    args.extend(ids.iter().map(String::as_str));
    let out = docker(&args)?;
    Ok(out
        .lines()
        .map(berth_agent::docker::runtime::unix_ms)
        .collect())
}

/// The service's replica count as Swarm shows it (`running/desired`).
fn swarm_replicas() -> String {
    docker(&[
        "service",
        "ls",
        "--filter",
        &format!("name={SWARM_SERVICE}"),
        "--format",
        "{{.Replicas}}",
    ])
    .map(|r| r.trim().to_string())
    .unwrap_or_default()
}

/// Ids of the service's containers, running or not.
fn swarm_containers() -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.swarm.service.name={SWARM_SERVICE}"),
    ])
    .map(|out| out.split_whitespace().map(String::from).collect())
    .unwrap_or_default()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    ensure_test_image().await?;
    let n = options.replicas;
    println!("{n} replicas of {TEST_IMAGE} (--serve 8080) on this machine's Docker engine");
    let berth = berth(n).await?;
    let swarm = if options.skip_swarm {
        None
    } else {
        Some(swarm(n).await?)
    };
    println!();
    println!(
        "{:<8} {:>14} {:>12} {:>12} {:>12}",
        "system", "all running s", "start p50 ms", "start p99 ms", "start max ms"
    );
    for (name, outcome) in [("berth", Some(&berth)), ("swarm", swarm.as_ref())] {
        let Some(outcome) = outcome else { continue };
        let mut sorted = outcome.latencies_ms.clone();
        sorted.sort_unstable();
        println!(
            "{:<8} {:>14.2} {:>12} {:>12} {:>12}",
            name,
            outcome.all_running.as_secs_f64(),
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or(0)
        );
    }
    if let Some(swarm) = &swarm {
        println!(
            "\nBerth is {:.2}x as fast as Swarm end to end",
            swarm.all_running.as_secs_f64() / berth.all_running.as_secs_f64()
        );
    }
    Ok(())
}

/// A prod job of `replicas` tasks of the test image, with the limits the
/// Swarm service gets.
fn job_manifest(name: &str, replicas: u32) -> String {
    job_yaml(
        name,
        "prod",
        replicas,
        "    args: [\"--serve\", \"8080\"]\n    resources:\n      cpu: 10m\n      memory: 16Mi\n",
    )
}

async fn berth(n: u32) -> anyhow::Result<Outcome> {
    let node = format!("bench-{}", std::process::id());
    remove_containers_of(&node);
    let cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let servers = cluster.addresses().join(",");
    let _scheduler = Component::scheduler(&servers, &[]);
    let agent = Component::start(
        "berth-agent",
        &[
            "--server",
            &servers,
            "--runtime",
            "docker",
            "--node-name",
            &node,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let client = cluster.client();
    try_wait_until(DEADLINE, "the node to register", || async {
        client.get(pb::Kind::Node, "", &node).await.is_ok()
    })
    .await?;

    // Warm up (scheduler lease, first watch, image lookup) with one task,
    // as the swarm side is warmed up with one replica.
    let ctl = |args: &[&str], file: &std::path::Path| {
        Command::new(berth_tests::binary("berthctl"))
            .args(args)
            .arg(file)
            .env("BERTH_SERVER", &servers)
            .env("BERTH_CONFIG", "/nonexistent/berth-config.yaml")
            .output()
    };
    let warm_path = cluster.dir.path().join("warm-up.yaml");
    std::fs::write(&warm_path, job_manifest("warm-up", 1))?;
    ctl(&["apply", "-f"], &warm_path)?;
    try_wait_until(DEADLINE, "the warm-up task running", || async {
        !containers_of(&node).await.is_empty()
    })
    .await?;
    ctl(&["delete", "-f"], &warm_path)?;
    try_wait_until(DEADLINE, "the warm-up task gone", || async {
        containers_of(&node).await.is_empty()
            && client
                .list(pb::Kind::Task, "")
                .await
                .is_ok_and(|l| l.objects.is_empty())
    })
    .await?;

    let manifest = job_manifest("bench", n);
    let path = cluster.dir.path().join("bench.yaml");
    std::fs::write(&path, manifest)?;
    let submitted_ms = now_ms();
    let started = Instant::now();
    let applied = ctl(&["apply", "-f"], &path)?;
    if !applied.status.success() {
        bail!(
            "berthctl apply: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    let running = |objects: &[pb::Object]| {
        objects
            .iter()
            .filter(|o| {
                o.as_task()
                    .and_then(|t| t.status.as_ref())
                    .is_some_and(|s| s.phase() == pb::TaskPhase::Running)
            })
            .count()
    };
    try_wait_until(DEADLINE, "every Berth task Running", || async {
        match client.list(pb::Kind::Task, "").await {
            Ok(list) => running(&list.objects) == n as usize,
            Err(_) => false,
        }
    })
    .await?;
    let all_running = started.elapsed();
    if let Ok(list) = client.list(pb::Kind::Task, "").await {
        let created = list
            .objects
            .iter()
            .filter_map(|o| o.metadata().map(|m| m.created_at_ms))
            .min()
            .unwrap_or(0);
        let first_start = list
            .objects
            .iter()
            .filter_map(|o| o.as_task()?.status.as_ref().map(|s| s.started_at_ms))
            .min()
            .unwrap_or(0);
        println!(
            "berth: first task created {} ms after submission, first started {} ms after",
            created - submitted_ms,
            first_start - submitted_ms
        );
    }
    let ids: Vec<String> = containers_of(&node)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let latencies_ms = started_at_ms(&ids)?
        .into_iter()
        .map(|at| at - submitted_ms)
        .collect();

    // Resident memory once usage sampling and heartbeats have run a while.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rss = agent.pid().and_then(rss_kib);
    println!(
        "berth: all {n} Running after {:.2} s; agent RSS with {n} tasks: {}",
        all_running.as_secs_f64(),
        rss.map_or("unknown".into(), |k| format!(
            "{:.1} MiB",
            k as f64 / 1024.0
        ))
    );
    drop(agent);
    remove_containers_of(&node);
    Ok(Outcome {
        all_running,
        latencies_ms,
    })
}

/// Creates the bench service with `replicas` replicas of the test image,
/// with the same limits as the Berth job.
fn create_service(replicas: u32) -> anyhow::Result<()> {
    let replicas = replicas.to_string();
    docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        SWARM_SERVICE,
        "--replicas",
        &replicas,
        "--limit-cpu",
        "0.01",
        "--limit-memory",
        "16m",
        TEST_IMAGE,
        "--serve",
        "8080",
    ])
    .map(drop)
}

/// Removes the bench service and waits for its containers to go.
async fn remove_service() -> anyhow::Result<()> {
    let _ = docker(&["service", "rm", SWARM_SERVICE]);
    try_wait_until(Duration::from_secs(60), "swarm containers gone", || async {
        swarm_containers().is_empty()
    })
    .await
}

async fn swarm(n: u32) -> anyhow::Result<Outcome> {
    // A swarm of one manager on loopback, left again afterwards.
    let joined = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
    let ours = joined.trim() != "active";
    if ours {
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
    }
    let result = async {
        remove_service().await?;
        // Warm up with one replica, as the Berth side is.
        create_service(1)?;
        try_wait_until(DEADLINE, "the warm-up replica running", || async {
            swarm_replicas() == "1/1"
        })
        .await?;
        remove_service().await?;

        let submitted_ms = now_ms();
        let started = Instant::now();
        create_service(n)?;
        let want = format!("{n}/{n}");
        try_wait_until(DEADLINE, "every Swarm replica running", || async {
            swarm_replicas() == want
        })
        .await?;
        let all_running = started.elapsed();
        let latencies_ms = started_at_ms(&swarm_containers())?
            .into_iter()
            .map(|at| at - submitted_ms)
            .collect();
        println!(
            "swarm: all {n} running after {:.2} s",
            all_running.as_secs_f64()
        );
        anyhow::Ok(Outcome {
            all_running,
            latencies_ms,
        })
    }
    .await;
    let _ = remove_service().await;
    if ours {
        let _ = docker(&["swarm", "leave", "--force"]);
    }
    result
}
