//! Command-line flags of `berth-apiserver`; every flag has an environment
//! variable of the same meaning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-apiserver",
    version,
    about = "Berth's API server: stores the cluster's desired state durably and serves it over gRPC",
    long_about = "Berth's API server: stores jobs, tasks, nodes, namespaces and events durably in \
                  DATA_DIR and serves them over gRPC (berth.v1.Objects, berth.v1.Cluster). A write \
                  is acknowledged only once it is fsync'ed. Prints `berth-apiserver listening on \
                  ADDR` on stdout once it serves."
)]
pub struct Config {
    /// Directory holding the store; created if missing.
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "BERTH_LISTEN", default_value = berth_proto::connect::DEFAULT_SERVER)]
    pub listen: SocketAddr,

    /// Revisions of history kept for watches; a watch from an older revision
    /// gets OUT_OF_RANGE and must re-list.
    #[arg(long, env = "BERTH_HISTORY_RETENTION", default_value_t = 50_000)]
    pub history_retention: u64,

    /// History records also kept in memory, so that watchers that keep up
    /// never read the disk.
    #[arg(long, env = "BERTH_HISTORY_CACHE", default_value_t = 10_000)]
    pub history_cache: usize,

    /// Most writes made durable by one fsync.
    #[arg(long, env = "BERTH_MAX_BATCH", default_value_t = 1024)]
    pub max_batch: usize,

    /// How often an idle watch stream gets a BOOKMARK with the current revision.
    #[arg(long, env = "BERTH_BOOKMARK_INTERVAL", default_value = "10s", value_parser = humantime_duration)]
    pub bookmark_interval: Duration,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    s.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 10s, 500ms): {e}"))
}

impl Config {
    /// Defaults for an in-process server on `data_dir` (tests, `berthctl up`).
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            data_dir,
            listen,
            history_retention: 50_000,
            history_cache: 10_000,
            max_batch: 1024,
            bookmark_interval: Duration::from_secs(10),
        }
    }
}
