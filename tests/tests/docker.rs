//! The Docker agent against the real Docker engine: each test runs an
//! apiserver, a scheduler and a `berth-agent --runtime docker` whose node is
//! named after the test, and applies jobs of the test workload image
//! (`berth-test-workload:dev`, built locally when missing).
//!
//! Without a reachable engine these tests print why and skip, unless
//! `BERTH_REQUIRE_DOCKER=1` (CI), where they fail.

use std::time::Duration;

use berth_proto::pb;
use berth_tests::docker::{DockerNode, Inspected, containers_of, job_yaml};
use berth_tests::{try_wait_until, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// A prod job whose tasks serve HTTP and ask for little.
fn serving_job(name: &str, replicas: u32) -> String {
    job_yaml(
        name,
        "prod",
        replicas,
        "    args: [\"--serve\", \"8080\"]
    resources:
      cpu: 100m
      memory: 32Mi
",
    )
}

/// `berthctl apply -f -` of a manifest, which must succeed.
fn apply(cluster: &DockerNode, manifest: &str) {
    cluster
        .server
        .ctl_stdin(&["apply", "-f", "-"], manifest.as_bytes())
        .ok();
}

fn phase_of(task: &Option<pb::Task>) -> pb::TaskPhase {
    task.as_ref()
        .and_then(|t| t.status.as_ref())
        .map_or(pb::TaskPhase::Unspecified, |s| s.phase())
}

fn status_of(task: &Option<pb::Task>) -> pb::TaskStatus {
    task.as_ref()
        .and_then(|t| t.status.clone())
        .unwrap_or_default()
}

async fn wait_phase(cluster: &DockerNode, task: &str, phase: pb::TaskPhase) -> pb::TaskStatus {
    wait_until(DEADLINE, &format!("{task} {phase:?}"), || async {
        phase_of(&cluster.task(task).await) == phase
    })
    .await;
    status_of(&cluster.task(task).await)
}

fn container_for<'a>(containers: &'a [Inspected], task: &str) -> Option<&'a Inspected> {
    containers
        .iter()
        .find(|c| c.labels.get("berth.task").map(String::as_str) == Some(task))
}

#[tokio::test]
async fn a_job_runs_in_limited_containers_that_restart_when_killed_and_go_when_deleted() {
    let metrics = format!("127.0.0.1:{}", berth_tests::free_port());
    let Some(cluster) =
        DockerNode::start_with("docker-lifecycle", &[], &["--metrics-listen", &metrics]).await
    else {
        return;
    };
    let manifest = job_yaml(
        "web",
        "prod",
        2,
        "    args: [\"--serve\", \"8080\", \"--print\", \"hello from berth\"]
    resources:
      cpu: 250m
      memory: 64Mi
",
    );
    apply(&cluster, &manifest);
    let web0 = wait_phase(&cluster, "web-0", pb::TaskPhase::Running).await;
    wait_phase(&cluster, "web-1", pb::TaskPhase::Running).await;
    assert_eq!(web0.node, cluster.node);
    assert!(!web0.container_id.is_empty());

    // The containers carry the task's limits and labels.
    let containers = containers_of(&cluster.node).await;
    assert_eq!(containers.len(), 2, "{containers:?}");
    for c in &containers {
        assert!(c.running);
        assert_eq!(c.nano_cpus, 250_000_000, "CPU quota of {}", c.id);
        assert_eq!(c.memory, 64 << 20, "memory limit of {}", c.id);
        assert_eq!(c.labels.get("berth.node"), Some(&cluster.node));
    }
    let first = container_for(&containers, "web-0")
        .expect("web-0's container")
        .clone();
    assert_eq!(first.id, web0.container_id);

    // berthctl logs reaches the agent.
    let logs = cluster.server.ctl(&["logs", "web-0"]).ok();
    assert!(logs.contains("hello from berth"), "logs: {logs:?}");

    // A container killed behind Berth's back is restarted, and counted.
    let killed = std::process::Command::new("docker")
        .args(["kill", &first.id])
        .output()
        .expect("docker kill");
    assert!(killed.status.success(), "{killed:?}");
    wait_until(DEADLINE, "web-0 restarted once", || async {
        let status = status_of(&cluster.task("web-0").await);
        status.restarts == 1 && status.phase() == pb::TaskPhase::Running
    })
    .await;
    let after = status_of(&cluster.task("web-0").await);
    assert_eq!(after.container_id, first.id, "restarted in place");
    assert!(after.message.contains("exited with code 137"), "{after:?}");

    // The agent's metrics saw it: the restart counted, the containers
    // running again (by the next supervisor pass), the start timed.
    wait_until(DEADLINE, "the restart in the agent's metrics", || async {
        let text = berth_proto::metrics::scrape(&metrics)
            .await
            .unwrap_or_default();
        let get = |name, labels| berth_proto::metrics::value(&text, name, labels);
        get("berth_agent_restarts_total", "").is_some_and(|n| n >= 1.0)
            && get("berth_agent_containers", "state=\"running\"").is_some_and(|n| n >= 1.0)
            && get("berth_agent_docker_call_seconds_count", "op=\"start\"").is_some_and(|n| n > 0.0)
    })
    .await;

    // Usage reaches `berthctl top`.
    wait_until(DEADLINE, "top tasks shows web-0", || async {
        let top = cluster.server.ctl(&["top", "tasks"]);
        top.success && top.stdout.contains("web-0")
    })
    .await;

    // Deleting the job removes its containers.
    cluster.server.ctl(&["delete", "job", "web"]).ok();
    wait_until(DEADLINE, "no container left", || async {
        containers_of(&cluster.node).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn exit_codes_end_tasks_succeeded_or_failed() {
    let Some(cluster) = DockerNode::start("docker-exits", &[]).await else {
        return;
    };
    for (name, code) in [("zero", 0), ("three", 3)] {
        let manifest = job_yaml(
            name,
            "batch",
            1,
            &format!(
                "    args: [\"--sleep\", \"200ms\", \"--exit\", \"{code}\"]
    restartPolicy: Never
    resources:
      cpu: 100m
      memory: 32Mi
"
            ),
        );
        apply(&cluster, &manifest);
    }
    let zero = wait_phase(&cluster, "zero-0", pb::TaskPhase::Succeeded).await;
    assert_eq!(zero.exit_code, Some(0));
    let three = wait_phase(&cluster, "three-0", pb::TaskPhase::Failed).await;
    assert_eq!(three.exit_code, Some(3));
    assert!(three.message.contains("code 3"), "{}", three.message);
    assert!(!three.oom_killed);
    assert!(three.finished_at_ms >= three.started_at_ms && three.started_at_ms > 0);
}

#[tokio::test]
async fn failing_health_checks_restart_the_task_http_tcp_and_exec() {
    let Some(cluster) = DockerNode::start("docker-health", &[]).await else {
        return;
    };
    // Failing probes fail fast; the healthy task's probe is lenient, so
    // that a loaded machine (a slow `docker exec`) does not fail it.
    let probe_job = |name: &str, args: &str, probe: &str| {
        let timing = if name == "fine" {
            "      period: 2s\n      timeout: 2s\n      failureThreshold: 5\n"
        } else {
            "      period: 300ms\n      timeout: 300ms\n      failureThreshold: 2\n"
        };
        job_yaml(
            name,
            "prod",
            1,
            &format!(
                "    args: {args}
    resources:
      cpu: 100m
      memory: 32Mi
    healthCheck:
{probe}{timing}"
            ),
        )
    };
    let jobs = [
        // Healthy for one second, then /health answers 500.
        probe_job(
            "http",
            r#"["--serve", "8080", "--healthy-for", "1s"]"#,
            "      http:\n        path: /health\n        port: 8080\n",
        ),
        // Nothing listens on 9090.
        probe_job(
            "tcp",
            r#"["--serve", "8080"]"#,
            "      tcp:\n        port: 9090\n",
        ),
        // The file the probe looks for is never created.
        probe_job(
            "exec",
            r#"["--serve", "8080"]"#,
            "      exec:\n        command: [\"/berth-workload\", \"check\", \"/ready\"]\n",
        ),
        // A healthy task: its exec probe finds the file.
        probe_job(
            "fine",
            r#"["--serve", "8080", "--healthy-file", "/ready"]"#,
            "      exec:\n        command: [\"/berth-workload\", \"check\", \"/ready\"]\n",
        ),
    ];
    for manifest in &jobs {
        apply(&cluster, manifest);
    }
    for (task, why) in [
        ("http-0", "answered 500"),
        ("tcp-0", "cannot connect to port 9090"),
        ("exec-0", "exited with code 1"),
    ] {
        wait_until(
            DEADLINE,
            &format!("{task} restarted for its health"),
            // The reason, not only a restart: on a loaded machine a probe
            // may also find the server not listening yet, which is a failure
            // too; the next rounds then show the reason under test.
            || async {
                let status = status_of(&cluster.task(task).await);
                status.restarts >= 1
                    && status.message.contains("health check failed")
                    && status.message.contains(why)
            },
        )
        .await;
    }
    let fine = status_of(&cluster.task("fine-0").await);
    assert_eq!(fine.phase(), pb::TaskPhase::Running);
    assert_eq!(fine.restarts, 0, "{fine:?}");
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_the_task_with_the_reason() {
    let Some(cluster) = DockerNode::start("docker-pull", &[]).await else {
        return;
    };
    let manifest = "apiVersion: berth/v1
kind: Job
metadata:
  name: ghost
spec:
  tier: batch
  replicas: 1
  template:
    image: berth-no-such-image:1
    restartPolicy: Never
    resources:
      cpu: 100m
      memory: 32Mi
";
    apply(&cluster, manifest);
    let status = wait_phase(&cluster, "ghost-0", pb::TaskPhase::Failed).await;
    assert!(
        status
            .message
            .contains("berth-no-such-image:1 cannot be pulled"),
        "{}",
        status.message
    );
    assert!(containers_of(&cluster.node).await.is_empty());
    let events = cluster.server.ctl(&["get", "events"]).ok();
    assert!(events.contains("ImagePullFailed"), "{events}");
}

#[tokio::test]
async fn a_task_over_its_memory_limit_is_reported_oom_killed() {
    let Some(cluster) = DockerNode::start("docker-oom", &[]).await else {
        return;
    };
    let manifest = job_yaml(
        "hog",
        "batch",
        1,
        "    args: [\"--alloc\", \"256\"]
    restartPolicy: Never
    resources:
      cpu: 100m
      memory: 32Mi
",
    );
    apply(&cluster, &manifest);
    // The engine may mark the container OOM killed seconds after its exit
    // on a busy machine, after the agent reported the task Failed: the
    // agent then corrects the report, and the task must end up so.
    let reported = try_wait_until(DEADLINE, "hog-0 Failed and OOM killed", || async {
        let status = status_of(&cluster.task("hog-0").await);
        status.phase() == pb::TaskPhase::Failed && status.oom_killed
    })
    .await;
    let status = status_of(&cluster.task("hog-0").await);
    if let Err(e) = reported {
        panic!("{e}; the last status: {status:?}");
    }
    assert_eq!(status.exit_code, Some(137));
    assert!(status.message.contains("OOM killed"), "{}", status.message);
    let events = cluster.server.ctl(&["get", "events"]).ok();
    assert!(events.contains("OOMKilled"), "{events}");
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_containers_without_restarting_them() {
    let Some(mut cluster) = DockerNode::start("docker-adopt", &[]).await else {
        return;
    };
    let manifest = |replicas| serving_job("keep", replicas);
    apply(&cluster, &manifest(2));
    wait_phase(&cluster, "keep-0", pb::TaskPhase::Running).await;
    wait_phase(&cluster, "keep-1", pb::TaskPhase::Running).await;
    let before = containers_of(&cluster.node).await;
    assert_eq!(before.len(), 2);

    cluster.agent.kill9();
    cluster.restart_agent();
    // A change only the new agent can carry out shows it is at work.
    apply(&cluster, &manifest(3));
    wait_phase(&cluster, "keep-2", pb::TaskPhase::Running).await;

    let after = containers_of(&cluster.node).await;
    assert_eq!(after.len(), 3, "no duplicates: {after:?}");
    for old in &before {
        let same = after.iter().find(|c| c.id == old.id).expect("adopted");
        assert!(same.running);
        assert_eq!(same.started_at, old.started_at, "not restarted");
    }
    for task in ["keep-0", "keep-1"] {
        assert_eq!(status_of(&cluster.task(task).await).restarts, 0);
    }
}

#[tokio::test]
async fn a_task_replaced_while_its_node_was_lost_has_its_container_killed() {
    let Some(cluster) = DockerNode::start(
        "docker-fence",
        &["--node-not-ready-after", "1s", "--node-lost-after", "2s"],
    )
    .await
    else {
        return;
    };
    let manifest = serving_job("fenced", 1);
    apply(&cluster, &manifest);
    let first = wait_phase(&cluster, "fenced-0", pb::TaskPhase::Running).await;

    // The agent freezes: no heartbeats, the node is lost, its task with it,
    // and the job reconciler replaces the task (a new incarnation).
    cluster.agent.signal("STOP");
    wait_until(DEADLINE, "fenced-0 replaced", || async {
        let task = cluster.task("fenced-0").await;
        task.as_ref()
            .and_then(|t| t.spec.as_ref())
            .is_some_and(|s| s.incarnation > 1)
    })
    .await;
    // The old container still runs: nobody has told Docker yet.
    assert!(
        containers_of(&cluster.node)
            .await
            .iter()
            .any(|c| c.id == first.container_id && c.running)
    );

    // The agent wakes up, sees the task it ran is no longer its own, and
    // kills the container; the new incarnation gets a container of its own.
    cluster.agent.signal("CONT");
    wait_until(DEADLINE, "the old container removed", || async {
        !containers_of(&cluster.node)
            .await
            .iter()
            .any(|c| c.id == first.container_id)
    })
    .await;
    let second = wait_phase(&cluster, "fenced-0", pb::TaskPhase::Running).await;
    assert_ne!(second.container_id, first.container_id);
}

#[tokio::test]
async fn logs_show_the_tail_and_follow_new_output() {
    use std::io::BufRead as _;
    let Some(cluster) = DockerNode::start("docker-logs", &[]).await else {
        return;
    };
    let manifest = job_yaml(
        "ticker",
        "prod",
        1,
        "    args: [\"--print\", \"first line\", \"--tick\", \"100ms\"]
    resources:
      cpu: 100m
      memory: 32Mi
",
    );
    apply(&cluster, &manifest);
    wait_phase(&cluster, "ticker-0", pb::TaskPhase::Running).await;
    wait_until(DEADLINE, "a few ticks", || async {
        cluster
            .server
            .ctl(&["logs", "ticker-0"])
            .ok()
            .contains("tick 3")
    })
    .await;
    let tail = cluster
        .server
        .ctl(&["logs", "ticker-0", "--tail", "1"])
        .ok();
    assert_eq!(tail.lines().count(), 1, "{tail:?}");
    assert!(tail.starts_with("tick "), "{tail:?}");

    // -f keeps streaming: lines written after it started arrive.
    let mut follower = std::process::Command::new(berth_tests::binary("berthctl"))
        .args(["logs", "-f", "ticker-0", "--tail", "1"])
        .env("BERTH_SERVER", &cluster.server.addr)
        .env("BERTH_CONFIG", "/nonexistent/berth-config.yaml")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("berthctl logs -f");
    let stdout = follower.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let tick = |line: &str| {
        line.strip_prefix("tick ")
            .and_then(|n| n.parse::<u64>().ok())
    };
    let first = tick(&lines.recv_timeout(DEADLINE).expect("the last line")).expect("a tick");
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut newest = first;
    while newest < first + 5 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("new output while following");
        newest = tick(&line).unwrap_or(newest);
    }
    let _ = follower.kill();
    let _ = follower.wait();
}

#[tokio::test]
async fn an_agent_asked_to_drain_gives_its_tasks_up_when_stopped() {
    let Some(mut cluster) = DockerNode::start("docker-drain", &[]).await else {
        return;
    };
    cluster.restart_agent_with(&["--drain-on-exit"]);
    let manifest = serving_job("drained", 2);
    apply(&cluster, &manifest);
    wait_phase(&cluster, "drained-0", pb::TaskPhase::Running).await;
    wait_phase(&cluster, "drained-1", pb::TaskPhase::Running).await;

    cluster.agent.stop();
    // Cordoned, containers gone, tasks given up: their job replaced them
    // (a new incarnation, waiting for a node).
    let node = cluster
        .server
        .client()
        .get(pb::Kind::Node, "", &cluster.node)
        .await
        .expect("node");
    let unschedulable = node
        .as_node()
        .and_then(|n| n.spec.as_ref())
        .is_some_and(|s| s.unschedulable);
    assert!(unschedulable, "cordoned: {node:?}");
    assert!(containers_of(&cluster.node).await.is_empty());
    for task in ["drained-0", "drained-1"] {
        wait_until(DEADLINE, &format!("{task} replaced"), || async {
            cluster
                .task(task)
                .await
                .and_then(|t| t.spec)
                .is_some_and(|s| s.incarnation > 1)
        })
        .await;
    }
    // An agent that comes back makes the node Ready, and the tasks return.
    cluster.restart_agent();
    wait_phase(&cluster, "drained-0", pb::TaskPhase::Running).await;
}
