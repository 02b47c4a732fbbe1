//! The Docker engine, as the agent sees it: containers that carry Berth's
//! labels, and the handful of calls the supervisor makes on them.
//!
//! This is the only module that speaks bollard. Every container Berth
//! starts is labelled with its node, task and incarnation, so that a
//! restarted agent finds (adopts) its containers by listing them, and the
//! containers of other agents on the same engine are never touched.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use berth_proto::pb;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::{Stream, StreamExt as _, TryStreamExt as _};

use crate::metrics::Metrics;

/// Tries at setting a started container's CPU limit: one that is stopping
/// refuses it until the engine has seen it stop (a few tens of ms).
const UPDATE_ATTEMPTS: usize = 5;
const UPDATE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

pub const NODE_LABEL: &str = "berth.node";
pub const NAMESPACE_LABEL: &str = "berth.namespace";
pub const TASK_LABEL: &str = "berth.task";
pub const UID_LABEL: &str = "berth.uid";
pub const INCARNATION_LABEL: &str = "berth.incarnation";

/// A container of this node, from the engine's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub namespace: String,
    pub task: String,
    pub uid: String,
    pub incarnation: u64,
    pub state: ContainerState,
    /// Its address on the engine's network (for health probes).
    pub ip: Option<String>,
    /// Unix seconds.
    pub created: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    Running,
    /// Exited or dead: `inspect_exit` tells how.
    Exited,
    /// Paused, restarting, being removed: left alone until it settles.
    Other,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub oom_killed: bool,
    /// Unix ms; 0 when unknown.
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// The engine's error (e.g. the command does not exist).
    pub error: String,
}

/// What a container is using now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// CPU time used since the container started, in ns.
    pub cpu_total_ns: u64,
    /// Memory in use, without the page cache the kernel can drop.
    pub memory_bytes: u64,
}

/// Why a container could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("image {image} cannot be pulled: {reason}")]
    Pull { image: String, reason: String },
    #[error("{0}")]
    Engine(String),
}

/// The Docker engine, for the containers of one node.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    node: String,
    metrics: Metrics,
}

/// Unix ms of an RFC 3339 time from the engine; 0 for the engine's zero time
/// (`0001-01-01T00:00:00Z`, "never") or anything unreadable.
pub fn unix_ms(time: &str) -> i64 {
    humantime::parse_rfc3339_weak(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// `nginx` → `nginx:latest`; names with a tag or digest stay as they are.
pub fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The CPU quota of a task in nano-CPUs (Docker's `--cpus` × 10⁹), if any.
fn cpu_limit(object: &pb::Object) -> Option<i64> {
    let millis = object
        .as_task()?
        .spec
        .as_ref()?
        .template
        .as_ref()?
        .resources
        .as_ref()?
        .cpu_millis;
    (millis > 0).then_some(millis * 1_000_000)
}

fn engine_error(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Engine {
    /// Connects to the local engine (DOCKER_HOST or the default socket) and
    /// agrees on an API version it speaks.
    pub async fn connect(node: &str) -> anyhow::Result<Engine> {
        let docker = Docker::connect_with_local_defaults()
            .context("cannot reach the Docker engine")?
            // Stops wait for the grace period; the default 120 s would cut
            // long ones short and hang on a stuck engine for too long.
            .with_timeout(Duration::from_secs(300));
        let docker = docker
            .negotiate_version()
            .await
            .context("cannot reach the Docker engine (is it running? is DOCKER_HOST right?)")?;
        Ok(Engine {
            docker,
            node: node.to_string(),
            metrics: Metrics::default(),
        })
    }

    /// The same engine, timing its calls in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Engine {
        self.metrics = metrics;
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs one engine call, recording its latency as `op`.
    async fn timed<F: Future>(&self, op: &'static str, call: F) -> F::Output {
        let started = std::time::Instant::now();
        let output = call.await;
        self.metrics.docker_call(op, started);
        output
    }

    /// CPUs (millicores) and memory (bytes) of the engine's host.
    pub async fn host_capacity(&self) -> anyhow::Result<(i64, i64)> {
        let info = self
            .timed("info", self.docker.info())
            .await
            .context("cannot read the Docker engine's info")?;
        let cpus = info.ncpu.unwrap_or(1).max(1);
        let memory = info.mem_total.unwrap_or(0);
        Ok((cpus * 1000, memory))
    }

    fn node_filter(&self, extra: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{NODE_LABEL}={}", self.node)];
        labels.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        [("label".to_string(), labels)].into()
    }

    /// Every container of this node, running or not.
    pub async fn list(&self) -> anyhow::Result<Vec<Container>> {
        self.list_matching(&[]).await
    }

    /// The containers of one task (any incarnation), newest first.
    pub async fn list_task(&self, namespace: &str, task: &str) -> anyhow::Result<Vec<Container>> {
        let mut found = self
            .list_matching(&[(NAMESPACE_LABEL, namespace), (TASK_LABEL, task)])
            .await?;
        found.sort_by_key(|c| std::cmp::Reverse((c.incarnation, c.created)));
        Ok(found)
    }

    async fn list_matching(&self, extra: &[(&str, &str)]) -> anyhow::Result<Vec<Container>> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&self.node_filter(extra))
            .build();
        let summaries = self
            .timed("list", self.docker.list_containers(Some(options)))
            .await
            .map_err(|e| anyhow::anyhow!("cannot list containers: {}", engine_error(e)))?;
        Ok(summaries
            .into_iter()
            .filter_map(|s| {
                use bollard::models::ContainerSummaryStateEnum as S;
                let labels = s.labels.unwrap_or_default();
                let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
                let state = match s.state {
                    Some(S::CREATED) => ContainerState::Created,
                    Some(S::RUNNING) => ContainerState::Running,
                    Some(S::EXITED | S::DEAD) => ContainerState::Exited,
                    _ => ContainerState::Other,
                };
                let ip = s
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|n| n.into_values().find_map(|e| e.ip_address))
                    .filter(|ip| !ip.is_empty());
                Some(Container {
                    id: s.id?,
                    namespace: label(NAMESPACE_LABEL),
                    task: label(TASK_LABEL),
                    uid: label(UID_LABEL),
                    incarnation: label(INCARNATION_LABEL).parse().unwrap_or(0),
                    state,
                    ip,
                    created: s.created.unwrap_or(0),
                })
            })
            .collect())
    }

    /// The engine's state of a container.
    async fn state(&self, id: &str) -> anyhow::Result<bollard::models::ContainerState> {
        let inspect = self.docker.inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        );
        let inspected = self
            .timed("inspect", inspect)
            .await
            .map_err(|e| anyhow::anyhow!("cannot inspect container {id}: {}", engine_error(e)))?;
        Ok(inspected.state.unwrap_or_default())
    }

    /// How an exited container ended.
    pub async fn inspect_exit(&self, id: &str) -> anyhow::Result<Exit> {
        let state = self.state(id).await?;
        Ok(Exit {
            code: state.exit_code.unwrap_or(-1) as i32,
            oom_killed: state.oom_killed.unwrap_or(false),
            started_at_ms: state.started_at.as_deref().map_or(0, unix_ms),
            finished_at_ms: state.finished_at.as_deref().map_or(0, unix_ms),
            error: state.error.unwrap_or_default(),
        })
    }

    /// When the running container `id` started, in Unix ms.
    pub async fn started_at_ms(&self, id: &str) -> anyhow::Result<i64> {
        Ok(self
            .state(id)
            .await?
            .started_at
            .as_deref()
            .map_or(0, unix_ms))
    }

    /// Pulls `image` unless the engine has it already.
    pub async fn ensure_image(&self, image: &str) -> Result<(), CreateError> {
        let image = with_tag(image);
        if self
            .timed("inspect_image", self.docker.inspect_image(&image))
            .await
            .is_ok()
        {
            return Ok(());
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(&image)
            .build();
        // The pull as one call: from the request to the last progress line.
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok::<(), bollard::errors::Error>(())
        };
        self.timed("pull", pull)
            .await
            .map_err(|e| CreateError::Pull {
                image,
                reason: engine_error(e),
            })
    }

    /// Creates the container of `task` (pulling its image if the engine
    /// does not have it) and starts it. Returns its id and when it started
    /// (Unix ms, as seen here).
    pub async fn create_and_start(&self, task: &pb::Object) -> Result<(String, i64), CreateError> {
        let (body, name) = self.container_body(task)?;
        let image = body.image.clone().unwrap_or_default();
        let create = |body: ContainerCreateBody| {
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            self.timed("create", self.docker.create_container(Some(options), body))
        };
        // Create first and pull only when the engine lacks the image: one
        // call per container in the common case, instead of an inspect too.
        let created = match create(body.clone()).await {
            Ok(created) => created,
            Err(e) if is_not_found(&e) => {
                self.ensure_image(&image).await?;
                create(body)
                    .await
                    .map_err(|e| CreateError::Engine(engine_error(e)))?
            }
            // Left over from an agent that died between create and start:
            // a fresh one replaces it.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                self.remove(&name)
                    .await
                    .map_err(|e| CreateError::Engine(e.to_string()))?;
                create(body)
                    .await
                    .map_err(|e| CreateError::Engine(engine_error(e)))?
            }
            Err(e) => return Err(CreateError::Engine(engine_error(e))),
        };
        self.start(&created.id)
            .await
            .map_err(|e| CreateError::Engine(e.to_string()))?;
        let started_at_ms = berth_proto::process::now_ms();
        // The CPU quota is set once the process runs: under a quota of a few
        // millicores the engine's own setup inside the container's cgroup
        // (runc init, exec) is throttled, which made starts up to 1.6x as
        // slow. The memory limit holds from the first instruction.
        if let Some(nano_cpus) = cpu_limit(task) {
            let update = bollard::models::ContainerUpdateBody {
                nano_cpus: Some(nano_cpus),
                ..Default::default()
            };
            // A container that stops before the update lands (it ran to its
            // end, or was OOM-killed) refuses it while it stops — and Docker
            // may still call it running for a moment; once stopped, it takes
            // the limit as configuration (for its restarts) and its exit is
            // reported like any other.
            let mut updated = Ok(());
            for attempt in 0..UPDATE_ATTEMPTS {
                let result = self
                    .timed(
                        "update",
                        self.docker.update_container(&created.id, update.clone()),
                    )
                    .await;
                updated = result.map(|_| ()).map_err(engine_error);
                if updated.is_ok() || attempt + 1 == UPDATE_ATTEMPTS {
                    break;
                }
                tokio::time::sleep(UPDATE_RETRY_PAUSE).await;
            }
            if let Err(e) = updated {
                // Never leave a container that may run without its limit.
                let _ = self.remove(&created.id).await;
                return Err(CreateError::Engine(format!(
                    "cannot set the CPU limit: {e}"
                )));
            }
        }
        Ok((created.id, started_at_ms))
    }

    /// The container a task asks for: image, command, env, ports, limits,
    /// and the labels that tie it to the task. Also its name.
    fn container_body(
        &self,
        object: &pb::Object,
    ) -> Result<(ContainerCreateBody, String), CreateError> {
        let missing = |what: &str| CreateError::Engine(format!("the task has no {what}"));
        let task = object.as_task().ok_or_else(|| missing("body"))?;
        let meta = object.metadata().ok_or_else(|| missing("metadata"))?;
        let spec = task.spec.as_ref().ok_or_else(|| missing("spec"))?;
        let template = spec.template.as_ref().ok_or_else(|| missing("template"))?;
        let resources = template.resources.clone().unwrap_or_default();
        let labels: HashMap<String, String> = [
            (NODE_LABEL, self.node.clone()),
            (NAMESPACE_LABEL, meta.namespace.clone()),
            (TASK_LABEL, meta.name.clone()),
            (UID_LABEL, meta.uid.clone()),
            (INCARNATION_LABEL, spec.incarnation.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut exposed = HashMap::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for port in &template.ports {
            let protocol = match port.protocol() {
                pb::Protocol::Udp => "udp",
                _ => "tcp",
            };
            let key = format!("{}/{protocol}", port.container_port);
            exposed.insert(key.clone(), HashMap::new());
            if port.host_port != 0 {
                bindings.insert(
                    key,
                    Some(vec![PortBinding {
                        host_ip: None,
                        host_port: Some(port.host_port.to_string()),
                    }]),
                );
            }
        }
        let memory = (resources.memory_bytes > 0).then_some(resources.memory_bytes);
        // The CPU quota (the request is the limit, as a Kubernetes pod with
        // equal requests and limits) is applied right after the start: see
        // `create_and_start`.
        let host_config = HostConfig {
            memory,
            // No swap: over the memory limit means OOM-killed, not slow.
            memory_swap: memory,
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(with_tag(&template.image)),
            entrypoint: (!template.command.is_empty()).then(|| template.command.clone()),
            cmd: (!template.args.is_empty()).then(|| template.args.clone()),
            env: Some(
                template
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        // Docker names allow [a-zA-Z0-9][a-zA-Z0-9_.-]; Berth names are DNS
        // labels, so this is always valid and unique per incarnation.
        let name = format!(
            "berth.{}.{}.{}.{}",
            self.node, meta.namespace, meta.name, spec.incarnation
        );
        Ok((body, name))
    }

    /// Starts a created or exited container.
    pub async fn start(&self, id: &str) -> anyhow::Result<()> {
        let start = self
            .docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>);
        self.timed("start", start)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start container {id}: {}", engine_error(e)))
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, id: &str, grace: Duration) -> anyhow::Result<()> {
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        match self
            .timed("stop", self.docker.stop_container(id, Some(options)))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => anyhow::bail!("cannot stop container {id}: {}", engine_error(e)),
        }
    }

    /// Removes a container, running or not.
    pub async fn remove(&self, id: &str) -> anyhow::Result<()> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self
            .timed("remove", self.docker.remove_container(id, Some(options)))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => anyhow::bail!("cannot remove container {id}: {}", engine_error(e)),
        }
    }

    /// Runs `command` in the container; its exit code. Timed as one call
    /// (`exec`): create, run to the end, inspect.
    pub async fn exec(&self, id: &str, command: &[String]) -> anyhow::Result<i64> {
        self.timed("exec", self.exec_untimed(id, command)).await
    }

    async fn exec_untimed(&self, id: &str, command: &[String]) -> anyhow::Result<i64> {
        use bollard::exec::{CreateExecOptions, StartExecOptions};
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(command.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", engine_error(e)))?;
        let started = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(|e| anyhow::anyhow!("{}", engine_error(e)))?;
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
            // Drain the output until the command ends.
            while output.next().await.is_some() {}
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| anyhow::anyhow!("{}", engine_error(e)))?;
        Ok(inspected.exit_code.unwrap_or(-1))
    }

    /// What the container uses now (one sample, no waiting).
    pub async fn sample(&self, id: &str) -> anyhow::Result<Sample> {
        let options = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let stats = self
            .timed("stats", self.docker.stats(id, Some(options)).try_next())
            .await
            .map_err(|e| anyhow::anyhow!("cannot read stats of {id}: {}", engine_error(e)))?
            .context("the engine sent no stats")?;
        let cpu_total_ns = stats
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let memory = stats.memory_stats.unwrap_or_default();
        let cache = memory.stats.as_ref().and_then(|s| {
            // cgroup v1 reports total_inactive_file, v2 inactive_file.
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
                .copied()
        });
        let usage = memory.usage.unwrap_or(0);
        Ok(Sample {
            cpu_total_ns,
            memory_bytes: usage.saturating_sub(cache.unwrap_or(0)),
        })
    }

    /// The container's output.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<u32>,
    ) -> impl Stream<Item = anyhow::Result<pb::LogChunk>> + use<> {
        let tail = tail.map_or("all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        self.docker.logs(id, Some(options)).map(|item| {
            use bollard::container::LogOutput;
            match item {
                Ok(LogOutput::StdErr { message }) => Ok(pb::LogChunk {
                    data: message.to_vec(),
                    stderr: true,
                }),
                Ok(
                    LogOutput::StdOut { message }
                    | LogOutput::Console { message }
                    | LogOutput::StdIn { message },
                ) => Ok(pb::LogChunk {
                    data: message.to_vec(),
                    stderr: false,
                }),
                Err(e) => Err(anyhow::anyhow!("{}", engine_error(e))),
            }
        })
    }

    /// Container events of this node (start, die, oom, destroy, …): each
    /// item says only that something changed.
    pub fn events(&self) -> impl Stream<Item = anyhow::Result<()>> + use<> {
        let mut filters = self.node_filter(&[]);
        filters.insert("type".into(), vec!["container".into()]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        self.docker.events(Some(options)).map(|e| {
            e.map(|_| ())
                .map_err(|e| anyhow::anyhow!("{}", engine_error(e)))
        })
    }
}
