//! `berth-agent`: the node agent. It registers its node(s), heartbeats
//! them and runs the tasks bound to them.
//!
//! Two runtimes: [`docker`] runs the tasks of one node as containers
//! through the local Docker engine; [`sim`] hosts many simulated nodes in
//! one process, no containers, for scale runs and tests of the scheduler.

pub mod config;
pub mod docker;
pub mod metrics;
pub mod node;
pub mod sim;

pub use config::{Config, Runtime};
pub use metrics::Metrics;

use tokio::sync::watch;

/// Runs the agent until `shutdown` turns true.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut registry = berth_proto::metrics::Registry::default();
    let metrics = Metrics::new(&mut registry);
    // Callers of the log service: certificates only (the agent knows no tokens).
    let auth = berth_proto::auth::Authenticator::new(berth_proto::connect::tls_enabled(), None);
    auth.register(&mut registry, "berth_agent");
    berth_proto::metrics::serve_configured(config.metrics_listen, registry).await?;
    match config.runtime {
        Runtime::Docker => docker::run(config.docker()?, metrics, auth, shutdown).await,
        Runtime::Sim => sim::run(config.sim()?, metrics, shutdown).await,
    }
}
