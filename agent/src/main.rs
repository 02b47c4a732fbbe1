use std::time::Duration;

use berth_proto::process::{init_logging, run_until_signal};
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    let config = berth_agent::Config::parse();
    run_until_signal("berth-agent", Duration::from_secs(5), |stopped| {
        berth_agent::run(config, stopped)
    })
    .await
}
