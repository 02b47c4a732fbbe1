//! Command-line flags of `berth-apiserver`; every flag has an environment
//! variable of the same meaning.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-apiserver",
    version,
    about = "Berth's API server: stores the cluster's desired state, replicated with Raft, and serves it over gRPC",
    long_about = "Berth's API server: stores jobs, tasks, nodes, namespaces and events in DATA_DIR, \
                  replicated across the members of --initial-cluster with Raft, and serves them over \
                  gRPC (berth.v1.Objects, berth.v1.Cluster). A write is acknowledged once a majority \
                  has fsync'ed it. Prints `berth-apiserver listening on ADDR` on stdout once it serves.\n\n\
                  A new cluster: start every member with the same --initial-cluster and its own \
                  --member-id, each on an empty DATA_DIR. A restart needs only --data-dir and \
                  --listen. A member added later (berthctl cluster add-member) starts with --join."
)]
pub struct Config {
    #[command(flatten)]
    pub tls: berth_proto::connect::TlsFlags,

    /// Plaintext without authentication, for development on one machine:
    /// every address must be on loopback, and a warning says so at start.
    /// Without it, TLS flags are required.
    #[arg(long, env = "BERTH_INSECURE_DEV", conflicts_with = "tls_ca")]
    pub insecure_dev: bool,

    /// Bearer tokens for users (`berthctl tokens create` writes it): lines
    /// of `sha256:HASH NAME ROLE [NAMESPACES]`, read again when it changes.
    /// With it, TLS clients may come without a certificate, to show a token.
    #[arg(long, env = "BERTH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Directory holding the store. It must exist: an empty one starts a new
    /// member; a missing one is an error (a lost disk must not look like a
    /// fresh member).
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Address to serve gRPC on, for clients and other members (port 0 picks
    /// a free port).
    #[arg(long, env = "BERTH_LISTEN", default_value = berth_proto::connect::DEFAULT_SERVER)]
    pub listen: SocketAddr,

    /// Address other members and clients reach this member at [default: the
    /// listen address].
    #[arg(long, env = "BERTH_ADVERTISE")]
    pub advertise: Option<String>,

    /// This member's id (non-zero, unique in the cluster).
    #[arg(long, env = "BERTH_MEMBER_ID", default_value_t = 1)]
    pub member_id: u64,

    /// The members of a new cluster, `ID=HOST:PORT,…`, the same on every
    /// initial member [default: this member alone]. Used only on an empty
    /// data dir.
    #[arg(long, env = "BERTH_INITIAL_CLUSTER", value_parser = parse_members)]
    pub initial_cluster: Option<Members>,

    /// Start empty and wait to receive the cluster's state from its leader
    /// (for a member added with `berthctl cluster add-member`).
    #[arg(long, env = "BERTH_JOIN")]
    pub join: bool,

    /// Start a new cluster from a snapshot file (`berthctl snapshot save`):
    /// every object comes back with its revision. Only on an empty data dir;
    /// every initial member is given the same file.
    #[arg(long, env = "BERTH_RESTORE")]
    pub restore: Option<PathBuf>,

    /// Compact the raft log once it holds more entries than this (followers
    /// further behind catch up from a snapshot).
    #[arg(long, env = "BERTH_SNAPSHOT_THRESHOLD", default_value_t = 10_000)]
    pub snapshot_threshold: u64,

    /// Interval between a leader's heartbeats.
    #[arg(long, env = "BERTH_HEARTBEAT_INTERVAL", default_value = "100ms", value_parser = duration)]
    pub heartbeat_interval: Duration,

    /// How long followers wait without a leader before electing a new one
    /// (randomized between this and one and a half times this).
    #[arg(long, env = "BERTH_ELECTION_TIMEOUT", default_value = "400ms", value_parser = duration)]
    pub election_timeout: Duration,

    /// How long a write may wait to be committed before it fails.
    #[arg(long, env = "BERTH_PROPOSAL_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub proposal_timeout: Duration,

    /// A node without a heartbeat for this long is marked NotReady.
    #[arg(long, env = "BERTH_NODE_NOT_READY_AFTER", default_value = "10s", value_parser = duration)]
    pub node_not_ready_after: Duration,

    /// A node without a heartbeat for this long is marked Lost, and its tasks
    /// with it (the scheduler replaces them elsewhere).
    #[arg(long, env = "BERTH_NODE_LOST_AFTER", default_value = "30s", value_parser = duration)]
    pub node_lost_after: Duration,

    /// Revisions of history kept for watches; a watch from an older revision
    /// gets OUT_OF_RANGE and must re-list.
    #[arg(long, env = "BERTH_HISTORY_RETENTION", default_value_t = 50_000)]
    pub history_retention: u64,

    /// History records also kept in memory, so that watchers that keep up
    /// never read the disk. Records newer than the last checkpoint (which
    /// stores them) stay in memory whatever this says.
    #[arg(long, env = "BERTH_HISTORY_CACHE", default_value_t = 10_000)]
    pub history_cache: usize,

    /// How often an idle watch stream gets a BOOKMARK with the current revision.
    #[arg(long, env = "BERTH_BOOKMARK_INTERVAL", default_value = "10s", value_parser = duration)]
    pub bookmark_interval: Duration,

    /// Free space to keep on the data dir's filesystem: below it, the leader
    /// refuses new writes with RESOURCE_EXHAUSTED (reads and deletes go on)
    /// until space is freed. `auto` is 5 % of the filesystem, at most 256Mi.
    #[arg(long, env = "BERTH_DISK_RESERVE", default_value = "auto")]
    pub disk_reserve: crate::disk::Reserve,

    /// Serve Prometheus metrics over HTTP on this address (unset: none).
    #[arg(long, env = "BERTH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve the Raft.Partition RPC that drops traffic to chosen members
    /// (tests only).
    #[arg(long, env = "BERTH_FAULT_INJECTION")]
    pub fault_injection: bool,
}

/// Member ids and their addresses.
pub type Members = BTreeMap<u64, String>;

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 10s, 500ms): {e}"))
}

/// Parses `1=127.0.0.1:7400,2=127.0.0.1:7410`.
pub fn parse_members(s: &str) -> Result<Members, String> {
    let mut members = Members::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, address) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| format!("{part:?}: the member id must be a positive number"))?;
        berth_proto::connect::endpoint(address.trim()).map_err(|e| e.to_string())?;
        if members.insert(id, address.trim().to_string()).is_some() {
            return Err(format!("member {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("no member given".into());
    }
    Ok(members)
}

impl Config {
    /// Defaults for an in-process single member on `data_dir` (tests, `berthctl up`).
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            tls: Default::default(),
            insecure_dev: false,
            token_file: None,
            data_dir,
            listen,
            advertise: None,
            member_id: 1,
            initial_cluster: None,
            join: false,
            restore: None,
            snapshot_threshold: 10_000,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(400),
            proposal_timeout: Duration::from_secs(10),
            node_not_ready_after: Duration::from_secs(10),
            node_lost_after: Duration::from_secs(30),
            history_retention: 50_000,
            history_cache: 10_000,
            bookmark_interval: Duration::from_secs(10),
            disk_reserve: crate::disk::Reserve::Auto,
            metrics_listen: None,
            fault_injection: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_member_lists() {
        let members = parse_members("1=127.0.0.1:7400, 2=127.0.0.1:7410").unwrap();
        assert_eq!(members[&2], "127.0.0.1:7410");
        assert!(parse_members("0=a:1").is_err());
        assert!(parse_members("1=a:1,1=b:2").unwrap_err().contains("twice"));
        assert!(parse_members("x").is_err());
    }
}
