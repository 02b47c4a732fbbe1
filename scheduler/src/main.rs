use std::sync::Arc;
use std::time::Duration;

use berth_proto::process::{init_logging, run_until_signal};
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    let config = berth_scheduler::Config::parse();
    // On a signal it releases its lease, so that a standby takes over at once.
    run_until_signal("berth-scheduler", Duration::from_secs(5), |stopped| {
        berth_scheduler::run(config, Arc::default(), stopped)
    })
    .await
}
