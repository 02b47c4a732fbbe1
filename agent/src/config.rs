//! Command-line flags of `berth-agent`; every flag has an environment
//! variable of the same meaning.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::pb;
use berth_proto::quantity::{parse_count, parse_cpu, parse_memory};

use crate::sim::{SimConfig, SimNode};

/// How tasks are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
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
    /// API servers as HOST:PORT, comma-separated.
    #[arg(long, env = "BERTH_SERVER", default_value = berth_proto::connect::DEFAULT_SERVER)]
    pub server: String,

    /// How tasks run. Only the simulated runtime exists so far.
    #[arg(long, env = "BERTH_RUNTIME", value_enum)]
    pub runtime: Runtime,

    /// Simulated nodes this process hosts.
    #[arg(long, env = "BERTH_SIM_NODES", default_value_t = 1)]
    pub sim_nodes: usize,

    /// Node names are PREFIX-0, PREFIX-1, … [default: the host name].
    #[arg(long, env = "BERTH_NODE_PREFIX")]
    pub node_prefix: Option<String>,

    /// Allocatable CPU of each simulated node (e.g. 32, 7500m).
    #[arg(long, env = "BERTH_NODE_CPU", default_value = "32", value_parser = cpu)]
    pub cpu: i64,

    /// Allocatable memory of each simulated node (e.g. 128Gi).
    #[arg(long, env = "BERTH_NODE_MEMORY", default_value = "128Gi", value_parser = memory)]
    pub memory: i64,

    /// GPUs of each simulated node.
    #[arg(long, env = "BERTH_NODE_GPUS", default_value = "0", value_parser = count)]
    pub gpus: i64,

    /// Zones the nodes are spread over (label zone=zone-a, zone-b, …).
    #[arg(long, env = "BERTH_ZONES", default_value_t = 3)]
    pub zones: usize,

    /// Racks per zone (label rack=rack-0, rack-1, …).
    #[arg(long, env = "BERTH_RACKS", default_value_t = 4)]
    pub racks: usize,

    /// Extra labels for every node: key=value, comma-separated.
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

impl Config {
    /// The simulated nodes these flags describe.
    pub fn sim(&self) -> anyhow::Result<SimConfig> {
        if !(0.0..=1.0).contains(&self.usage) {
            anyhow::bail!("--usage: {} is not between 0.0 and 1.0", self.usage);
        }
        if self.sim_nodes == 0 {
            anyhow::bail!("--sim-nodes: at least 1");
        }
        let prefix = match &self.node_prefix {
            Some(p) => p.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_ascii_lowercase())
                .unwrap_or_else(|_| "node".into()),
        };
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
                        cpu_millis: self.cpu,
                        memory_bytes: self.memory,
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
