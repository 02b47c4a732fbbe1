//! berthctl's command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "berthctl",
    version,
    about = "Drive a Berth cluster: apply manifests, inspect jobs, tasks and nodes, run a local cluster",
    after_help = "Start a local cluster with `berthctl up`, then `berthctl apply -f manifests/` and \
                  `berthctl get jobs`.\n\nThe server is taken from --server, else BERTH_SERVER, else \
                  the config file `berthctl up` writes (BERTH_CONFIG, default ~/.berth/config.yaml), \
                  else 127.0.0.1:7400."
)]
pub struct Cli {
    #[command(flatten)]
    pub tls: berth_proto::connect::TlsFlags,

    /// API servers as HOST:PORT, comma-separated; berthctl fails over between them.
    #[arg(long, global = true, env = "BERTH_SERVER")]
    pub server: Option<String>,

    /// The config file's context to use [default: its current-context].
    #[arg(long, global = true, env = "BERTH_CONTEXT")]
    pub context: Option<String>,

    /// A bearer token to show the apiserver (`berthctl tokens create`).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Namespace of namespaced kinds (jobs, tasks, events) [default: default].
    #[arg(short = 'n', long, global = true, env = "BERTH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Read from the member contacted without confirming with a quorum that
    /// it is current: faster, possibly behind. Reads are linearizable otherwise.
    #[arg(long, global = true)]
    pub stale: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from YAML manifests.
    Apply(ApplyArgs),
    /// List objects, or show some by name.
    Get(GetArgs),
    /// Show one object in detail, with its related objects and events.
    Describe(DescribeArgs),
    /// Delete objects by name or by manifest.
    Delete(DeleteArgs),
    /// Change a job's number of replicas.
    Scale(ScaleArgs),
    /// Print a task's container output (from its node's agent).
    Logs(LogsArgs),
    /// Show the CPU and memory nodes or tasks use now.
    Top(TopArgs),
    /// Run a local cluster in the foreground until Ctrl-C.
    Up(UpArgs),
    /// Mark a node unschedulable: its tasks stay, no new one is placed.
    Cordon(NodeArgs),
    /// Make a cordoned node schedulable again.
    Uncordon(NodeArgs),
    /// Cordon a node and move its tasks elsewhere, a job's maxUnavailable at a time.
    Drain(DrainArgs),
    /// Inspect and change the apiserver's members.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create the cluster's certificate authority and issue certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Make bearer tokens for users.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Show and change the config file's contexts (cluster, identity, namespace).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Back the cluster's state up to a file (restore: `berth-apiserver --restore FILE`).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's name (`berthctl get nodes`).
    pub node: String,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node's name (`berthctl get nodes`).
    pub node: String,

    /// Give up (with a non-zero exit) if tasks are still on the node after this long.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory of *.yaml / *.yml / *.json files, or - for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// namespaces (ns), nodes (no), jobs (j), tasks (t) or events (ev).
    pub kind: String,

    /// Names of the objects to show; all when omitted.
    pub names: Vec<String>,

    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Label selector, e.g. `app=web,zone in (a,b)`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,

    /// After printing, watch for changes and print them as they happen.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The kind: namespace, node, job, task or event.
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The kind, when deleting by name.
    pub kind: Option<String>,

    /// Names of the objects to delete.
    pub names: Vec<String>,

    /// Delete the objects a manifest describes (file, directory or -). Repeatable.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,

    /// Succeed when an object is already gone.
    #[arg(long)]
    pub ignore_not_found: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// `job NAME` or `job/NAME`.
    pub target: String,
    pub name: Option<String>,

    /// The new number of replicas.
    #[arg(long)]
    pub replicas: u32,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The task (`web-0` or `task/web-0`).
    pub task: String,

    /// Keep printing new output until the container stops (or Ctrl-C).
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u32>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// nodes or tasks.
    pub kind: String,

    /// Tasks of all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every member's role, term, commit and applied index, and health.
    Status,
    /// The members: voters and learners, and which one leads.
    Members,
    /// Add a member: it joins as a learner, catches up, then becomes a voter.
    /// Start it with `berth-apiserver --join --member-id ID` on an empty data dir.
    AddMember {
        /// The new member's id (a positive number not in use).
        id: u64,
        /// Where it serves: HOST:PORT.
        address: String,
        /// Remove this voter in the same step (joint consensus).
        #[arg(long)]
        replace: Option<u64>,
    },
    /// Remove a member (a leader hands over leadership first).
    RemoveMember { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA in DIR, with certificates for the apiservers (every
    /// --host as a SAN, plus localhost and 127.0.0.1), the scheduler and an
    /// admin.
    Init {
        /// Where the CA and certificates go [default: ~/.berth/pki].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// An address the apiservers are dialled at (IP or DNS name, no
        /// port). Repeatable.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Issue a certificate from the CA in DIR, as NAME.crt / NAME.key.
    Issue {
        /// apiserver, scheduler, node, admin or viewer.
        #[arg(long)]
        role: berth_proto::pki::Role,
        /// Who: a node's name for `node`, a user's for `admin` / `viewer`.
        #[arg(long)]
        name: String,
        /// An address it is dialled at (apiservers, agents). Repeatable.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Limit an admin or viewer to these namespaces (comma-separated).
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a token, add its hash to the apiservers' token file (every
    /// member's --token-file; they read it again when it changes) and print
    /// the token, once.
    Create {
        /// The token file (`berthctl up`: DATA_DIR/tokens).
        #[arg(long)]
        file: PathBuf,
        /// Who the token is for.
        #[arg(long)]
        name: String,
        /// admin, viewer, scheduler or node.
        #[arg(long)]
        role: berth_proto::pki::Role,
        /// Limit an admin or viewer to these namespaces (comma-separated).
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts; `*` marks the current one.
    GetContexts,
    /// Make a context the current one.
    UseContext { name: String },
    /// Create or change a context from the connection flags given with it:
    /// --server, --token, --tls-ca/--tls-cert/--tls-key, -n.
    SetContext { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write every object, at one revision, to FILE (checksummed), taken from
    /// the leader while it goes on serving.
    Save { file: PathBuf },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of apiserver replicas.
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,

    /// Where the cluster keeps its state, reused across runs [default: ~/.berth/cluster].
    #[arg(long, env = "BERTH_UP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address of the first replica; replica N listens 10·(N-1) ports higher.
    #[arg(long, default_value = berth_proto::connect::DEFAULT_SERVER)]
    pub listen: SocketAddr,

    /// How tasks run: docker (one node, this host, its Docker engine) or
    /// sim (--sim-nodes simulated nodes: tasks are bound and marked Running,
    /// no containers start).
    #[arg(long, value_enum, default_value = "docker")]
    pub runtime: berth_agent::Runtime,

    /// Simulated nodes to run with --runtime sim.
    #[arg(long, default_value_t = 3)]
    pub sim_nodes: usize,

    /// Where the Docker node's agent serves logs.
    #[arg(long, default_value = "127.0.0.1:7600")]
    pub agent_listen: SocketAddr,

    /// CPU of each simulated node.
    #[arg(long, default_value = "8", value_parser = cpu)]
    pub node_cpu: i64,

    /// Memory of each simulated node.
    #[arg(long, default_value = "32Gi", value_parser = memory)]
    pub node_memory: i64,

    /// Do not run a scheduler (jobs get tasks only from another scheduler).
    #[arg(long)]
    pub no_scheduler: bool,

    /// Plaintext instead of mutual TLS: only for a cluster on loopback
    /// addresses (the default is TLS from a CA kept in DATA_DIR/pki).
    #[arg(long)]
    pub insecure_dev: bool,
}

fn cpu(s: &str) -> Result<i64, String> {
    berth_proto::quantity::parse_cpu(s).map_err(|e| e.to_string())
}

fn memory(s: &str) -> Result<i64, String> {
    berth_proto::quantity::parse_memory(s).map_err(|e| e.to_string())
}

/// `30s`, `5m`, `1h30m`.
fn duration(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 30s, 5m): {e}"))
}
