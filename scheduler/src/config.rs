//! Command-line flags of `berth-scheduler`; every flag has an environment
//! variable of the same meaning.

use std::net::SocketAddr;
use std::time::Duration;

use crate::placement::Policy;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-scheduler",
    version,
    about = "Berth's scheduler: keeps every job's tasks as its spec says and places them on nodes",
    long_about = "Berth's scheduler: keeps every job's tasks as its spec says (creating, replacing and \
                  rolling them out), places pending tasks on nodes (feasibility, scoring, topology \
                  spread, batched binding), lets prod preempt batch, and lends batch what prod \
                  reserved but does not use. Several may run: a lease in the apiserver makes one \
                  active."
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

    /// How nodes are ranked: binpack (Borg-like, the default), spread
    /// (least allocated, like Kubernetes') or firstfit.
    #[arg(long, env = "BERTH_POLICY", value_enum, default_value_t = Policy::Binpack)]
    pub policy: Policy,

    /// Feasible nodes examined per placement (0: all of them).
    #[arg(long, env = "BERTH_SAMPLE", default_value_t = 0)]
    pub sample: usize,

    /// This scheduler's name in the lease [default: host name and process id].
    #[arg(long, env = "BERTH_IDENTITY")]
    pub identity: Option<String>,

    /// How long the lease lasts without renewal: the longest a dead active
    /// scheduler delays the standby.
    #[arg(long, env = "BERTH_LEASE_DURATION", default_value = "6s", value_parser = duration)]
    pub lease_duration: Duration,

    /// Safety margin added to prod's measured usage before lending the rest
    /// to batch (0.2 = 20%).
    #[arg(long, env = "BERTH_RECLAIM_MARGIN", default_value_t = 0.2)]
    pub reclaim_margin: f64,

    /// Turn reclamation off: batch only ever uses what prod did not reserve.
    #[arg(long, env = "BERTH_NO_RECLAIM")]
    pub no_reclaim: bool,

    /// First delay before a failed task is replaced; doubles each time, up
    /// to --max-backoff.
    #[arg(long, env = "BERTH_BACKOFF", default_value = "1s", value_parser = duration)]
    pub backoff: Duration,

    #[arg(long, env = "BERTH_MAX_BACKOFF", default_value = "5m", value_parser = duration)]
    pub max_backoff: Duration,

    /// Most writes sent in one batch.
    #[arg(long, env = "BERTH_BATCH", default_value_t = 1000)]
    pub batch: usize,

    /// Serve Prometheus metrics over HTTP at ADDR (e.g. 127.0.0.1:9101)
    /// [default: no metrics server].
    #[arg(long, env = "BERTH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 6s, 500ms): {e}"))
}

impl Config {
    /// Defaults for an in-process scheduler (tests, `berthctl up`, benches).
    pub fn new(server: String) -> Config {
        Config {
            tls: Default::default(),
            insecure_dev: false,
            server,
            policy: Policy::Binpack,
            sample: 0,
            identity: None,
            lease_duration: Duration::from_secs(6),
            reclaim_margin: 0.2,
            no_reclaim: false,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            batch: 1000,
            metrics_listen: None,
        }
    }
}
