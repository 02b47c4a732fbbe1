//! `berth-agent`: the node agent. It registers its node(s), heartbeats
//! them and runs the tasks bound to them.
//!
//! So far the only runtime is the simulated one ([`sim`]): many nodes in one
//! process, no containers, for scale runs and tests of the scheduler. The
//! Docker runtime is the agent issue's work.

pub mod config;
pub mod sim;

pub use config::{Config, Runtime};

use tokio::sync::watch;

/// Runs the agent until `shutdown` turns true.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    match config.runtime {
        Runtime::Sim => sim::run(config.sim()?, shutdown).await,
    }
}
