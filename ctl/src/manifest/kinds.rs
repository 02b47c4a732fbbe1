//! The manifest shape of each kind, and its conversion to and from `berth.v1`.

use std::collections::BTreeMap;

use berth_proto::pb::{self, object::Kind as Body};
use serde::{Deserialize, Serialize};

use super::values::{
    Count, Cpu, EventType, JobPhase, Kind, Memory, Millis, NodeState, Operator, Protocol,
    RestartPolicy, TaskPhase, Tier, Time, Version,
};
use super::{API_VERSION, from_value};

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn one() -> u32 {
    1
}

// ---------------------------------------------------------------------------
// Shared parts
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Read-only: printed by `get`, accepted back as a precondition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Version::is_zero")]
    pub resource_version: Version,
    #[serde(default, skip_serializing_if = "Time::is_zero")]
    pub created_at: Time,
}

impl From<Metadata> for pb::ObjectMeta {
    fn from(m: Metadata) -> pb::ObjectMeta {
        pb::ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            labels: m.labels,
            generation: m.generation,
            resource_version: m.resource_version.0,
            created_at_ms: m.created_at.0,
        }
    }
}

impl From<&pb::ObjectMeta> for Metadata {
    fn from(m: &pb::ObjectMeta) -> Metadata {
        Metadata {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            labels: m.labels.clone(),
            uid: m.uid.clone(),
            generation: m.generation,
            resource_version: Version(m.resource_version),
            created_at: Time(m.created_at_ms),
        }
    }
}

/// What a task asks for: CPU and memory are required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    pub cpu: Cpu,
    pub memory: Memory,
    /// Named scalar resources, e.g. `gpu: 1`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extended: BTreeMap<String, Count>,
}

/// What a node offers: every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    #[serde(default)]
    pub cpu: Cpu,
    #[serde(default)]
    pub memory: Memory,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extended: BTreeMap<String, Count>,
}

fn resources_to_pb(cpu: Cpu, memory: Memory, extended: BTreeMap<String, Count>) -> pb::Resources {
    pb::Resources {
        cpu_millis: cpu.0,
        memory_bytes: memory.0,
        extended: extended.into_iter().map(|(k, v)| (k, v.0)).collect(),
    }
}

fn extended_from_pb(extended: &BTreeMap<String, i64>) -> BTreeMap<String, Count> {
    extended
        .iter()
        .map(|(k, v)| (k.clone(), Count(*v)))
        .collect()
}

impl From<&pb::Resources> for Requests {
    fn from(r: &pb::Resources) -> Requests {
        Requests {
            cpu: Cpu(r.cpu_millis),
            memory: Memory(r.memory_bytes),
            extended: extended_from_pb(&r.extended),
        }
    }
}

impl From<&pb::Resources> for Capacity {
    fn from(r: &pb::Resources) -> Capacity {
        Capacity {
            cpu: Cpu(r.cpu_millis),
            memory: Memory(r.memory_bytes),
            extended: extended_from_pb(&r.extended),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    #[serde(default)]
    pub cpu: Cpu,
    #[serde(default)]
    pub memory: Memory,
}

impl From<Usage> for pb::Usage {
    fn from(u: Usage) -> pb::Usage {
        pb::Usage {
            cpu_millis: u.cpu.0,
            memory_bytes: u.memory.0,
        }
    }
}

impl From<&pb::Usage> for Usage {
    fn from(u: &pb::Usage) -> Usage {
        Usage {
            cpu: Cpu(u.cpu_millis),
            memory: Memory(u.memory_bytes),
        }
    }
}

// ---------------------------------------------------------------------------
// Task template, shared by jobs and tasks
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Template {
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    pub resources: Requests,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub container_port: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub host_port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Millis>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub path: String,
    pub port: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    pub port: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProbe {
    pub command: Vec<String>,
}

impl Template {
    fn into_pb(self, path: &str) -> Result<pb::TaskTemplate, String> {
        let health_check = match self.health_check {
            None => None,
            Some(hc) => {
                use pb::health_check::Probe;
                let mut probes = Vec::new();
                if let Some(p) = hc.http {
                    probes.push(Probe::Http(pb::HttpProbe {
                        path: p.path,
                        port: p.port,
                    }));
                }
                if let Some(p) = hc.tcp {
                    probes.push(Probe::Tcp(pb::TcpProbe { port: p.port }));
                }
                if let Some(p) = hc.exec {
                    probes.push(Probe::Exec(pb::ExecProbe { command: p.command }));
                }
                if probes.len() > 1 {
                    return Err(format!(
                        "{path}.healthCheck: give exactly one of http, tcp or exec, not {}",
                        probes.len()
                    ));
                }
                Some(pb::HealthCheck {
                    probe: probes.pop(),
                    period_ms: hc.period.map_or(0, |d| d.0),
                    timeout_ms: hc.timeout.map_or(0, |d| d.0),
                    failure_threshold: hc.failure_threshold.unwrap_or(0),
                    initial_delay_ms: hc.initial_delay.map_or(0, |d| d.0),
                })
            }
        };
        Ok(pb::TaskTemplate {
            image: self.image,
            command: self.command,
            args: self.args,
            env: self.env,
            ports: self
                .ports
                .into_iter()
                .map(|p| pb::Port {
                    name: p.name,
                    container_port: p.container_port,
                    host_port: p.host_port,
                    protocol: p.protocol.map_or(0, |v| pb::Protocol::from(v) as i32),
                })
                .collect(),
            resources: Some(resources_to_pb(
                self.resources.cpu,
                self.resources.memory,
                self.resources.extended,
            )),
            health_check,
            restart_policy: self
                .restart_policy
                .map_or(0, |v| pb::RestartPolicy::from(v) as i32),
        })
    }

    fn from_pb(t: &pb::TaskTemplate) -> Template {
        use pb::health_check::Probe;
        Template {
            image: t.image.clone(),
            command: t.command.clone(),
            args: t.args.clone(),
            env: t.env.clone(),
            ports: t
                .ports
                .iter()
                .map(|p| Port {
                    name: p.name.clone(),
                    container_port: p.container_port,
                    host_port: p.host_port,
                    protocol: Protocol::from_pb(p.protocol),
                })
                .collect(),
            resources: t.resources.as_ref().map(Requests::from).unwrap_or_default(),
            health_check: t.health_check.as_ref().map(|hc| HealthCheck {
                http: match &hc.probe {
                    Some(Probe::Http(p)) => Some(HttpProbe {
                        path: p.path.clone(),
                        port: p.port,
                    }),
                    _ => None,
                },
                tcp: match &hc.probe {
                    Some(Probe::Tcp(p)) => Some(TcpProbe { port: p.port }),
                    _ => None,
                },
                exec: match &hc.probe {
                    Some(Probe::Exec(p)) => Some(ExecProbe {
                        command: p.command.clone(),
                    }),
                    _ => None,
                },
                period: Some(Millis(hc.period_ms)).filter(|d| d.0 != 0),
                timeout: Some(Millis(hc.timeout_ms)).filter(|d| d.0 != 0),
                failure_threshold: Some(hc.failure_threshold).filter(|n| *n != 0),
                initial_delay: Some(Millis(hc.initial_delay_ms)).filter(|d| d.0 != 0),
            }),
            restart_policy: RestartPolicy::from_pb(t.restart_policy),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

fn constraints_to_pb(constraints: Vec<Constraint>) -> Vec<pb::LabelRequirement> {
    constraints
        .into_iter()
        .map(|c| pb::LabelRequirement {
            key: c.key,
            operator: pb::Operator::from(c.operator) as i32,
            values: c.values,
        })
        .collect()
}

fn constraints_from_pb(constraints: &[pb::LabelRequirement]) -> Vec<Constraint> {
    constraints
        .iter()
        .map(|c| Constraint {
            key: c.key.clone(),
            operator: Operator::from_pb(c.operator).unwrap_or_default(),
            values: c.values.clone(),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Job
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub metadata: Metadata,
    pub spec: JobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobSpec {
    pub tier: Tier,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(default = "one")]
    pub replicas: u32,
    pub template: Template,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    /// Anti-affinity: at most this many of the job's tasks per node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_per_node: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spread {
    pub key: String,
    pub max_skew: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Update {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    #[serde(default)]
    pub desired: u32,
    #[serde(default)]
    pub pending: u32,
    #[serde(default)]
    pub running: u32,
    #[serde(default)]
    pub succeeded: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub updated_generation: u64,
}

impl Job {
    fn into_pb(self) -> Result<pb::Job, String> {
        let s = self.spec;
        Ok(pb::Job {
            metadata: Some(self.metadata.into()),
            spec: Some(pb::JobSpec {
                tier: pb::Tier::from(s.tier) as i32,
                priority: s.priority,
                replicas: s.replicas,
                template: Some(s.template.into_pb("spec.template")?),
                constraints: constraints_to_pb(s.constraints),
                spread: s.spread.map(|sp| pb::Spread {
                    key: sp.key,
                    max_skew: sp.max_skew,
                }),
                update: s.update.map(|u| pb::UpdateStrategy {
                    max_unavailable: u.max_unavailable,
                    max_surge: u.max_surge,
                }),
                max_per_node: s.max_per_node,
            }),
            status: self.status.map(|st| pb::JobStatus {
                desired: st.desired,
                pending: st.pending,
                running: st.running,
                succeeded: st.succeeded,
                failed: st.failed,
                phase: st.phase.map_or(0, |p| pb::JobPhase::from(p) as i32),
                updated_generation: st.updated_generation,
            }),
        })
    }

    fn from_pb(j: &pb::Job) -> Job {
        let s = j.spec.clone().unwrap_or_default();
        Job {
            metadata: j.metadata.as_ref().map(Metadata::from).unwrap_or_default(),
            spec: JobSpec {
                tier: Tier::from_pb(s.tier).unwrap_or_default(),
                priority: s.priority,
                replicas: s.replicas,
                template: s
                    .template
                    .as_ref()
                    .map(Template::from_pb)
                    .unwrap_or_default(),
                constraints: constraints_from_pb(&s.constraints),
                spread: s.spread.map(|sp| Spread {
                    key: sp.key,
                    max_skew: sp.max_skew,
                }),
                update: s.update.map(|u| Update {
                    max_unavailable: u.max_unavailable,
                    max_surge: u.max_surge,
                }),
                max_per_node: s.max_per_node,
            },
            status: j.status.as_ref().map(|st| JobStatus {
                phase: JobPhase::from_pb(st.phase),
                desired: st.desired,
                pending: st.pending,
                running: st.running,
                succeeded: st.succeeded,
                failed: st.failed,
                updated_generation: st.updated_generation,
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Task
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub metadata: Metadata,
    pub spec: TaskSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskSpec {
    pub job: String,
    #[serde(default)]
    pub index: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
    pub tier: Tier,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    pub template: Template,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub job_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_per_node: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Time::is_zero")]
    pub started_at: Time,
    #[serde(default, skip_serializing_if = "Time::is_zero")]
    pub finished_at: Time,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub oom_killed: bool,
}

impl Task {
    fn into_pb(self) -> Result<pb::Task, String> {
        let s = self.spec;
        Ok(pb::Task {
            metadata: Some(self.metadata.into()),
            spec: Some(pb::TaskSpec {
                job: s.job,
                index: s.index,
                incarnation: s.incarnation,
                tier: pb::Tier::from(s.tier) as i32,
                priority: s.priority,
                template: Some(s.template.into_pb("spec.template")?),
                constraints: constraints_to_pb(s.constraints),
                job_generation: s.job_generation,
                spread: s.spread.map(|sp| pb::Spread {
                    key: sp.key,
                    max_skew: sp.max_skew,
                }),
                max_per_node: s.max_per_node,
            }),
            status: self.status.map(|st| pb::TaskStatus {
                phase: st.phase.map_or(0, |p| pb::TaskPhase::from(p) as i32),
                node: st.node,
                container_id: st.container_id,
                restarts: st.restarts,
                exit_code: st.exit_code,
                message: st.message,
                usage: st.usage.map(Into::into),
                started_at_ms: st.started_at.0,
                finished_at_ms: st.finished_at.0,
                oom_killed: st.oom_killed,
            }),
        })
    }

    fn from_pb(t: &pb::Task) -> Task {
        let s = t.spec.clone().unwrap_or_default();
        Task {
            metadata: t.metadata.as_ref().map(Metadata::from).unwrap_or_default(),
            spec: TaskSpec {
                job: s.job,
                index: s.index,
                incarnation: s.incarnation,
                tier: Tier::from_pb(s.tier).unwrap_or_default(),
                priority: s.priority,
                template: s
                    .template
                    .as_ref()
                    .map(Template::from_pb)
                    .unwrap_or_default(),
                constraints: constraints_from_pb(&s.constraints),
                job_generation: s.job_generation,
                spread: s.spread.map(|sp| Spread {
                    key: sp.key,
                    max_skew: sp.max_skew,
                }),
                max_per_node: s.max_per_node,
            },
            status: t.status.as_ref().map(|st| TaskStatus {
                phase: TaskPhase::from_pb(st.phase),
                node: st.node.clone(),
                container_id: st.container_id.clone(),
                restarts: st.restarts,
                exit_code: st.exit_code,
                message: st.message.clone(),
                usage: st.usage.as_ref().map(Usage::from),
                started_at: Time(st.started_at_ms),
                finished_at: Time(st.finished_at_ms),
                oom_killed: st.oom_killed,
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default)]
    pub unschedulable: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<NodeState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<Capacity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "Time::is_zero")]
    pub last_heartbeat: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimable: Option<Usage>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Node {
    fn into_pb(self) -> pb::Node {
        pb::Node {
            metadata: Some(self.metadata.into()),
            spec: Some(pb::NodeSpec {
                unschedulable: self.spec.unschedulable,
            }),
            status: self.status.map(|st| pb::NodeStatus {
                capacity: st
                    .capacity
                    .map(|c| resources_to_pb(c.cpu, c.memory, c.extended)),
                allocatable: st
                    .allocatable
                    .map(|c| resources_to_pb(c.cpu, c.memory, c.extended)),
                labels: st.labels,
                state: st.state.map_or(0, |s| pb::NodeState::from(s) as i32),
                last_heartbeat_ms: st.last_heartbeat.0,
                usage: st.usage.map(Into::into),
                address: st.address,
                reclaimable: st.reclaimable.map(Into::into),
                message: st.message,
            }),
        }
    }

    fn from_pb(n: &pb::Node) -> Node {
        Node {
            metadata: n.metadata.as_ref().map(Metadata::from).unwrap_or_default(),
            spec: NodeSpec {
                unschedulable: n.spec.as_ref().is_some_and(|s| s.unschedulable),
            },
            status: n.status.as_ref().map(|st| NodeStatus {
                state: NodeState::from_pb(st.state),
                capacity: st.capacity.as_ref().map(Capacity::from),
                allocatable: st.allocatable.as_ref().map(Capacity::from),
                labels: st.labels.clone(),
                address: st.address.clone(),
                last_heartbeat: Time(st.last_heartbeat_ms),
                usage: st.usage.as_ref().map(Usage::from),
                reclaimable: st.reclaimable.as_ref().map(Usage::from),
                message: st.message.clone(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Namespace
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: NamespaceSpec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prod: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Limits>,
}

/// Per-resource limits; an absent resource is unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extended: BTreeMap<String, Count>,
}

impl From<Limits> for pb::QuotaLimits {
    fn from(l: Limits) -> pb::QuotaLimits {
        pb::QuotaLimits {
            cpu_millis: l.cpu.map(|c| c.0),
            memory_bytes: l.memory.map(|m| m.0),
            extended: l.extended.into_iter().map(|(k, v)| (k, v.0)).collect(),
        }
    }
}

impl From<&pb::QuotaLimits> for Limits {
    fn from(l: &pb::QuotaLimits) -> Limits {
        Limits {
            cpu: l.cpu_millis.map(Cpu),
            memory: l.memory_bytes.map(Memory),
            extended: extended_from_pb(&l.extended),
        }
    }
}

impl Namespace {
    fn into_pb(self) -> pb::Namespace {
        pb::Namespace {
            metadata: Some(self.metadata.into()),
            spec: Some(pb::NamespaceSpec {
                quota: self.spec.quota.map(|q| pb::Quota {
                    prod: q.prod.map(Into::into),
                    batch: q.batch.map(Into::into),
                }),
            }),
        }
    }

    fn from_pb(n: &pb::Namespace) -> Namespace {
        Namespace {
            metadata: n.metadata.as_ref().map(Metadata::from).unwrap_or_default(),
            spec: NamespaceSpec {
                quota: n
                    .spec
                    .as_ref()
                    .and_then(|s| s.quota.as_ref())
                    .map(|q| Quota {
                        prod: q.prod.as_ref().map(Limits::from),
                        batch: q.batch.as_ref().map(Limits::from),
                    }),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Event
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Event {
    pub metadata: Metadata,
    pub involved: ObjectRef,
    #[serde(default, rename = "type")]
    pub event_type: EventType,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "Time::is_zero")]
    pub time: Time,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl Event {
    fn into_pb(self) -> pb::Event {
        pb::Event {
            metadata: Some(self.metadata.into()),
            involved: Some(pb::ObjectRef {
                kind: pb::Kind::from(self.involved.kind) as i32,
                namespace: self.involved.namespace,
                name: self.involved.name,
                uid: self.involved.uid,
            }),
            r#type: pb::EventType::from(self.event_type) as i32,
            reason: self.reason,
            message: self.message,
            source: self.source,
            time_ms: self.time.0,
        }
    }

    fn from_pb(e: &pb::Event) -> Event {
        let involved = e.involved.clone().unwrap_or_default();
        Event {
            metadata: e.metadata.as_ref().map(Metadata::from).unwrap_or_default(),
            involved: ObjectRef {
                kind: Kind::from_pb(involved.kind).unwrap_or_default(),
                namespace: involved.namespace,
                name: involved.name,
                uid: involved.uid,
            },
            event_type: EventType::from_pb(e.r#type).unwrap_or_default(),
            reason: e.reason.clone(),
            message: e.message.clone(),
            source: e.source.clone(),
            time: Time(e.time_ms),
        }
    }
}

// ---------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub metadata: Metadata,
    pub spec: LeaseSpec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaseSpec {
    #[serde(default)]
    pub holder: String,
    #[serde(default, skip_serializing_if = "Time::is_zero")]
    pub acquired_at: Time,
    #[serde(default, skip_serializing_if = "Time::is_zero")]
    pub renewed_at: Time,
    pub duration: Millis,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub transitions: u64,
}

impl Lease {
    fn into_pb(self) -> pb::Lease {
        pb::Lease {
            metadata: Some(self.metadata.into()),
            spec: Some(pb::LeaseSpec {
                holder: self.spec.holder,
                acquired_at_ms: self.spec.acquired_at.0,
                renewed_at_ms: self.spec.renewed_at.0,
                duration_ms: self.spec.duration.0,
                transitions: self.spec.transitions,
            }),
        }
    }

    fn from_pb(l: &pb::Lease) -> Lease {
        let s = l.spec.clone().unwrap_or_default();
        Lease {
            metadata: l.metadata.as_ref().map(Metadata::from).unwrap_or_default(),
            spec: LeaseSpec {
                holder: s.holder,
                acquired_at: Time(s.acquired_at_ms),
                renewed_at: Time(s.renewed_at_ms),
                duration: Millis(s.duration_ms),
                transitions: s.transitions,
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Any kind
// ---------------------------------------------------------------------------

/// One object in manifest form. Serializes with `apiVersion` and `kind` first.
#[derive(Debug, Clone)]
pub enum Manifest {
    Namespace(Namespace),
    Node(Node),
    Job(Job),
    Task(Task),
    Event(Event),
    Lease(Lease),
}

impl Manifest {
    /// Reads the body of a document (without apiVersion and kind) as `kind`.
    pub fn deserialize(kind: pb::Kind, body: serde_yaml::Value) -> Result<Manifest, String> {
        Ok(match kind {
            pb::Kind::Namespace => Manifest::Namespace(from_value(body)?),
            pb::Kind::Node => Manifest::Node(from_value(body)?),
            pb::Kind::Job => Manifest::Job(from_value(body)?),
            pb::Kind::Task => Manifest::Task(from_value(body)?),
            pb::Kind::Event => Manifest::Event(from_value(body)?),
            pb::Kind::Lease => Manifest::Lease(from_value(body)?),
            pb::Kind::Unspecified => return Err("kind: required".into()),
        })
    }

    pub fn into_object(self) -> Result<pb::Object, String> {
        Ok(match self {
            Manifest::Namespace(n) => n.into_pb().into(),
            Manifest::Node(n) => n.into_pb().into(),
            Manifest::Job(j) => j.into_pb()?.into(),
            Manifest::Task(t) => t.into_pb()?.into(),
            Manifest::Event(e) => e.into_pb().into(),
            Manifest::Lease(l) => l.into_pb().into(),
        })
    }

    pub fn from_object(object: &pb::Object) -> Manifest {
        match &object.kind {
            Some(Body::Namespace(n)) => Manifest::Namespace(Namespace::from_pb(n)),
            Some(Body::Node(n)) => Manifest::Node(Node::from_pb(n)),
            Some(Body::Job(j)) => Manifest::Job(Job::from_pb(j)),
            Some(Body::Task(t)) => Manifest::Task(Task::from_pb(t)),
            Some(Body::Event(e)) => Manifest::Event(Event::from_pb(e)),
            Some(Body::Lease(l)) => Manifest::Lease(Lease::from_pb(l)),
            None => Manifest::Namespace(Namespace::default()),
        }
    }
}

#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

impl Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn tagged<T: Serialize, S: serde::Serializer>(
            kind: &'static str,
            body: &T,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            Tagged {
                api_version: API_VERSION,
                kind,
                body,
            }
            .serialize(s)
        }
        match self {
            Manifest::Namespace(b) => tagged("Namespace", b, s),
            Manifest::Node(b) => tagged("Node", b, s),
            Manifest::Job(b) => tagged("Job", b, s),
            Manifest::Task(b) => tagged("Task", b, s),
            Manifest::Event(b) => tagged("Event", b, s),
            Manifest::Lease(b) => tagged("Lease", b, s),
        }
    }
}
