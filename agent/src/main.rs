use std::time::Duration;

use berth_proto::process::{init_logging, run_until_signal};
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    let config = berth_agent::Config::parse();
    if let Err(e) = config.tls.apply() {
        eprintln!("berth-agent: error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // Time to finish after SIGTERM: a drain stops containers with their grace.
    let grace = config.stop_grace + Duration::from_secs(10);
    run_until_signal("berth-agent", grace, |stopped| {
        berth_agent::run(config, stopped)
    })
    .await
}
