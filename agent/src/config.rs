//! Command-line flags of `berth-agent`; every flag has an environment
//! variable of the same meaning.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::pb;
use berth_proto::quantity::{parse_count, parse_cpu, parse_memory};

use crate::docker::DockerConfig;
use crate::docker::decide::Backoff;
use crate::sim::{SimConfig, SimNode};

/// How tasks are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// Tasks run as containers through the local Docker engine (one node).
    Docker,
    /// No containers: tasks start after --start-latency, use a share of
    /// what they asked for, and batch tasks finish after --batch-runtime.
    /// One process hosts many nodes (--sim-nodes).
    Sim,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-agent",
    version,
    about = "Berth's node agent: registers nodes, heartbeats them and runs the tasks bound to them"
)]
pub struct Config {
    #[command(flatten)]
    pub tls: berth_proto::connect::TlsFlags,

    /// Plaintext without authentication, for development on one machine:
    /// every address must be on loopback, and a warning says so at start.
    /// Without it, TLS flags are required.
    #[arg(long, env = "BERTH_INSECURE_DEV", conflicts_with = "tls_ca")]
    pub insecure_dev: bool,

    /// API servers as HOST:PORT, comma-separated.
    #[arg(long, env = "BERTH_SERVER", default_value = berth_proto::connect::DEFAULT_SERVER)]
    pub server: String,

    /// How tasks run.
    #[arg(long, env = "BERTH_RUNTIME", value_enum, default_value = "docker")]
    pub runtime: Runtime,

    /// The node's name (docker runtime) [default: the host name].
    #[arg(long, env = "BERTH_NODE_NAME")]
    pub node_name: Option<String>,

    /// Where the agent serves logs (docker runtime); port 0 picks one.
    #[arg(long, env = "BERTH_AGENT_LISTEN", default_value = "127.0.0.1:7600")]
    pub listen: std::net::SocketAddr,

    /// The address berthctl reaches the agent at [default: the listen address].
    #[arg(long, env = "BERTH_AGENT_ADVERTISE")]
    pub advertise: Option<String>,

    /// How long a stopped container has between SIGTERM and SIGKILL.
    #[arg(long, env = "BERTH_STOP_GRACE", default_value = "10s", value_parser = duration)]
    pub stop_grace: Duration,

    /// On SIGTERM, drain the node: cordon it, give its tasks up (their jobs
    /// replace them elsewhere) and stop their containers. The next agent to
    /// register the node lifts that cordon. Without it, the
    /// containers keep running and the next agent adopts them.
    #[arg(long, env = "BERTH_DRAIN_ON_EXIT")]
    pub drain_on_exit: bool,

    /// How often container usage is sampled (docker runtime).
    #[arg(long, env = "BERTH_USAGE_INTERVAL", default_value = "5s", value_parser = duration)]
    pub usage_interval: Duration,

    /// First pause before restarting a failed container; doubles per restart.
    #[arg(long, env = "BERTH_RESTART_BACKOFF", default_value = "1s", value_parser = duration)]
    pub restart_backoff: Duration,

    /// Longest pause before restarting a failed container.
    #[arg(long, env = "BERTH_RESTART_BACKOFF_MAX", default_value = "1m", value_parser = duration)]
    pub restart_backoff_max: Duration,

    /// Simulated nodes this process hosts.
    #[arg(long, env = "BERTH_SIM_NODES", default_value_t = 1)]
    pub sim_nodes: usize,

    /// Node names are PREFIX-0, PREFIX-1, … [default: the host name].
    #[arg(long, env = "BERTH_NODE_PREFIX")]
    pub node_prefix: Option<String>,

    /// Allocatable CPU of each node (e.g. 32, 7500m) [default: the host's
    /// CPUs for docker, 32 for sim].
    #[arg(long, env = "BERTH_NODE_CPU", value_parser = cpu)]
    pub cpu: Option<i64>,

    /// Allocatable memory of each node (e.g. 128Gi) [default: the host's
    /// memory for docker, 128Gi for sim].
    #[arg(long, env = "BERTH_NODE_MEMORY", value_parser = memory)]
    pub memory: Option<i64>,

    /// GPUs of each simulated node.
    #[arg(long, env = "BERTH_NODE_GPUS", default_value = "0", value_parser = count)]
    pub gpus: i64,

    /// Zones the nodes are spread over (label zone=zone-a, zone-b, …).
    #[arg(long, env = "BERTH_ZONES", default_value_t = 3)]
    pub zones: usize,

    /// Racks per zone (label rack=rack-0, rack-1, …).
    #[arg(long, env = "BERTH_RACKS", default_value_t = 4)]
    pub racks: usize,

    /// Labels of the node(s): key=value, comma-separated (e.g. zone=a,rack=r1).
    #[arg(long, env = "BERTH_NODE_LABELS", default_value = "")]
    pub labels: String,

    /// Delay between a task's bind and its start (simulated).
    #[arg(long, env = "BERTH_START_LATENCY", default_value = "0s", value_parser = duration)]
    pub start_latency: Duration,

    /// How long a simulated batch task runs before it succeeds; 0: forever.
    #[arg(long, env = "BERTH_BATCH_RUNTIME", default_value = "0s", value_parser = duration)]
    pub batch_runtime: Duration,

    /// Share of its requests a simulated task uses (0.0 to 1.0).
    #[arg(long, env = "BERTH_USAGE", default_value_t = 0.5)]
    pub usage: f64,

    /// How often nodes send heartbeats.
    #[arg(long, env = "BERTH_HEARTBEAT", default_value = "2s", value_parser = duration)]
    pub heartbeat: Duration,

    /// Serve Prometheus metrics over HTTP at ADDR (e.g. 127.0.0.1:9102)
    /// [default: no metrics server].
    #[arg(long, env = "BERTH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 2s, 500ms): {e}"))
}

fn cpu(s: &str) -> Result<i64, String> {
    parse_cpu(s).map_err(|e| e.to_string())
}

fn memory(s: &str) -> Result<i64, String> {
    parse_memory(s).map_err(|e| e.to_string())
}

fn count(s: &str) -> Result<i64, String> {
    parse_count(s).map_err(|e| e.to_string())
}

/// `key=value,key=value`.
fn parse_labels(list: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("--labels: {pair:?} is not key=value");
        };
        labels.insert(key.trim().to_string(), value.trim().to_string());
    }
    Ok(labels)
}

/// Zone names: zone-a … zone-z, then zone-26, …
fn zone_name(i: usize) -> String {
    match u8::try_from(i).ok().filter(|i| *i < 26) {
        Some(i) => format!("zone-{}", (b'a' + i) as char),
        None => format!("zone-{i}"),
    }
}

/// This host's name, lower-case (a node name must be a DNS label).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "node".into())
}

impl Config {
    /// The Docker node these flags describe.
    pub fn docker(&self) -> anyhow::Result<DockerConfig> {
        if self.restart_backoff.is_zero() || self.restart_backoff > self.restart_backoff_max {
            anyhow::bail!("--restart-backoff must be above zero and at most --restart-backoff-max");
        }
        Ok(DockerConfig {
            server: self.server.clone(),
            node: self.node_name.clone().unwrap_or_else(host_name),
            cpu: self.cpu,
            memory: self.memory,
            labels: parse_labels(&self.labels)?,
            listen: self.listen,
            advertise: self.advertise.clone(),
            heartbeat: self.heartbeat,
            usage_interval: self.usage_interval,
            stop_grace: self.stop_grace,
            backoff: Backoff {
                first: self.restart_backoff,
                max: self.restart_backoff_max,
                ..Backoff::default()
            },
            drain_on_exit: self.drain_on_exit,
        })
    }

    /// The simulated nodes these flags describe.
    pub fn sim(&self) -> anyhow::Result<SimConfig> {
        if !(0.0..=1.0).contains(&self.usage) {
            anyhow::bail!("--usage: {} is not between 0.0 and 1.0", self.usage);
        }
        if self.sim_nodes == 0 {
            anyhow::bail!("--sim-nodes: at least 1");
        }
        let prefix = self.node_prefix.clone().unwrap_or_else(host_name);
        let extra = parse_labels(&self.labels)?;
        let (zones, racks) = (self.zones.max(1), self.racks.max(1));
        let nodes = (0..self.sim_nodes)
            .map(|i| {
                let mut labels = extra.clone();
                labels.insert("zone".into(), zone_name(i % zones));
                labels.insert("rack".into(), format!("rack-{}", (i / zones) % racks));
                let extended = if self.gpus > 0 {
                    [("gpu".to_string(), self.gpus)].into()
                } else {
                    Default::default()
                };
                SimNode {
                    name: format!("{prefix}-{i}"),
                    allocatable: pb::Resources {
                        cpu_millis: self.cpu.unwrap_or(32_000),
                        memory_bytes: self.memory.unwrap_or(128 << 30),
                        extended,
                    },
                    labels,
                }
            })
            .collect();
        Ok(SimConfig {
            server: self.server.clone(),
            nodes,
            start_latency: self.start_latency,
            batch_runtime: (!self.batch_runtime.is_zero()).then_some(self.batch_runtime),
            usage: self.usage,
            heartbeat: self.heartbeat,
        })
    }
}
