//! Docker for tests: whether an engine is reachable, the test workload
//! image (built locally, no registry), and cleanup of a test's containers.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt as _;

/// The test workload image: `FROM scratch` plus a static `berth-workload`.
pub const TEST_IMAGE: &str = "berth-test-workload:dev";
/// Label on the image: a hash of the binary inside, to rebuild when it changed.
const HASH_LABEL: &str = "berth.workload.hash";

/// Whether Docker tests run: true if an engine answers. If none does, the
/// test prints why and skips — unless `BERTH_REQUIRE_DOCKER=1` (CI), where
/// that is a failure.
pub async fn docker_or_skip(test: &str) -> bool {
    let reason = match Docker::connect_with_local_defaults() {
        Ok(docker) => match docker.ping().await {
            Ok(_) => return true,
            Err(e) => format!("the Docker engine does not answer: {e}"),
        },
        Err(e) => format!("no Docker engine: {e}"),
    };
    if std::env::var("BERTH_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
        panic!("{test}: {reason} (BERTH_REQUIRE_DOCKER=1)");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

/// The workspace's target directory (test binaries run from
/// target/<profile>/deps, `berth-test-image` from target/<profile>).
fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    crate::repo_root().join("target")
}

/// Builds `berth-workload` as a static binary; returns its path.
fn build_static_workload() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let status = Command::new(&cargo)
        .current_dir(crate::repo_root())
        .args(["build", "--release", "--quiet", "-p", "berth-workload"])
        .args(["--target", target, "--target-dir"])
        .arg(target_dir())
        // The explicit --target keeps the flag away from build scripts.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    anyhow::ensure!(
        status.success(),
        "building berth-workload failed ({status})"
    );
    Ok(target_dir()
        .join(target)
        .join("release")
        .join("berth-workload"))
}

/// Makes sure the engine has [`TEST_IMAGE`] with the current workload
/// binary: builds the binary (statically) and, if the image is missing or
/// holds another binary, the image, through the engine's build API.
pub async fn ensure_test_image() -> anyhow::Result<()> {
    let binary_path = build_static_workload()?;
    let binary = std::fs::read(&binary_path)
        .with_context(|| format!("cannot read {}", binary_path.display()))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    binary.hash(&mut hasher);
    let hash = format!("{:016x}", hasher.finish());

    let docker = Docker::connect_with_local_defaults().context("no Docker engine")?;
    if let Ok(image) = docker.inspect_image(TEST_IMAGE).await {
        let current = image
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(HASH_LABEL).cloned());
        if current.as_deref() == Some(hash.as_str()) {
            return Ok(());
        }
    }

    let dockerfile = format!(
        "FROM scratch\nCOPY berth-workload /berth-workload\nLABEL {HASH_LABEL}={hash}\nENTRYPOINT [\"/berth-workload\"]\n"
    );
    let mut context = tar::Builder::new(Vec::new());
    for (name, bytes, mode) in [
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("berth-workload", binary.as_slice(), 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        context.append_data(&mut header, name, bytes)?;
    }
    let context = context.into_inner()?;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(TEST_IMAGE)
        .rm(true)
        .build();
    let mut progress = docker.build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    while let Some(step) = progress.next().await {
        let info = step.context("building the test image failed")?;
        if let Some(error) = info.error {
            anyhow::bail!("building the test image failed: {error}");
        }
    }
    Ok(())
}

/// A job manifest of the test image; `template` holds further lines of the
/// template (args, resources, …), indented by four spaces.
pub fn job_yaml(name: &str, tier: &str, replicas: u32, template: &str) -> String {
    format!(
        "apiVersion: berth/v1
kind: Job
metadata:
  name: {name}
spec:
  tier: {tier}
  replicas: {replicas}
  template:
    image: {TEST_IMAGE}
{template}"
    )
}

/// Removes every container of `node` (what a test's agent started).
pub fn remove_containers_of(node: &str) {
    let Ok(listed) = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=berth.node={node}"))
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

/// One container as `docker inspect` shows it (the fields tests check).
#[derive(Debug, Clone)]
pub struct Inspected {
    pub id: String,
    pub running: bool,
    pub started_at: String,
    pub nano_cpus: i64,
    pub memory: i64,
    pub labels: HashMap<String, String>,
}

/// The containers of `node`, inspected.
pub async fn containers_of(node: &str) -> Vec<Inspected> {
    let Ok(docker) = Docker::connect_with_local_defaults() else {
        return Vec::new();
    };
    let filters: HashMap<String, Vec<String>> =
        [("label".to_string(), vec![format!("berth.node={node}")])].into();
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = docker.list_containers(Some(options)).await else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for summary in list {
        let Some(id) = summary.id else { continue };
        let Ok(c) = docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        else {
            continue;
        };
        let state = c.state.unwrap_or_default();
        let host = c.host_config.unwrap_or_default();
        found.push(Inspected {
            id,
            running: state.running.unwrap_or(false),
            started_at: state.started_at.unwrap_or_default(),
            nano_cpus: host.nano_cpus.unwrap_or(0),
            memory: host.memory.unwrap_or(0),
            labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
        });
    }
    found
}

/// A one-node cluster on the real Docker engine: an apiserver, a scheduler
/// and a Docker agent whose node is named after the test (so that parallel
/// tests never touch each other's containers). Its containers are removed
/// when it is dropped.
pub struct DockerNode {
    pub server: crate::ApiServer,
    pub scheduler: crate::Component,
    pub agent: crate::Component,
    pub node: String,
    _dir: tempfile::TempDir,
}

impl DockerNode {
    /// `None` when Docker tests skip (see [`docker_or_skip`]).
    pub async fn start(test: &str, apiserver_args: &[&str]) -> Option<DockerNode> {
        DockerNode::start_with(test, apiserver_args, &[]).await
    }

    /// As [`DockerNode::start`], with extra flags for the agent too (e.g.
    /// `--metrics-listen`).
    pub async fn start_with(
        test: &str,
        apiserver_args: &[&str],
        agent_args: &[&str],
    ) -> Option<DockerNode> {
        if !docker_or_skip(test).await {
            return None;
        }
        ensure_test_image()
            .await
            .unwrap_or_else(|e| panic!("cannot build the test image: {e:#}"));
        let node: String = format!("{test}-{}", std::process::id())
            .to_ascii_lowercase()
            .replace('_', "-")
            .chars()
            .take(63)
            .collect();
        remove_containers_of(&node);
        let dir = tempfile::tempdir().expect("temp dir");
        let server = crate::ApiServer::start_with(dir.path(), apiserver_args);
        let scheduler = crate::Component::scheduler(&server.addr, &[]);
        let agent = start_agent(&server.addr, &node, agent_args);
        Some(DockerNode {
            server,
            scheduler,
            agent,
            node,
            _dir: dir,
        })
    }

    /// Starts the agent again (after `agent.kill9()`).
    pub fn restart_agent(&mut self) {
        self.agent = start_agent(&self.server.addr, &self.node, &[]);
    }

    /// Replaces the agent with one started with extra flags.
    pub fn restart_agent_with(&mut self, args: &[&str]) {
        self.agent.kill9();
        self.agent = start_agent(&self.server.addr, &self.node, args);
    }

    /// A task of the default namespace, if it exists.
    pub async fn task(&self, name: &str) -> Option<berth_proto::pb::Task> {
        self.server
            .client()
            .get(berth_proto::pb::Kind::Task, "default", name)
            .await
            .ok()
            .and_then(|o| o.as_task().cloned())
    }
}

fn start_agent(server: &str, node: &str, extra: &[&str]) -> crate::Component {
    let mut args = vec![
        "--server",
        server,
        "--runtime",
        "docker",
        "--node-name",
        node,
        "--listen",
        "127.0.0.1:0",
        "--cpu",
        "2",
        "--memory",
        "4Gi",
        "--labels",
        "zone=zone-a",
        "--heartbeat",
        "500ms",
        "--usage-interval",
        "1s",
        "--stop-grace",
        "2s",
        "--restart-backoff",
        "200ms",
        "--restart-backoff-max",
        "2s",
    ];
    args.extend_from_slice(extra);
    crate::Component::start("berth-agent", &args)
}

impl Drop for DockerNode {
    fn drop(&mut self) {
        self.agent.kill9();
        remove_containers_of(&self.node);
    }
}
