use std::time::Duration;

use berth_proto::process::{init_logging, run_until_signal};
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    let config = berth_agent::Config::parse();
    let mut addresses: Vec<String> = config.server.split(',').map(str::to_string).collect();
    addresses.push(config.listen.to_string());
    addresses.extend(config.advertise.clone());
    addresses.extend(config.metrics_listen.map(|a| a.to_string()));
    let secured = berth_proto::connect::secure_daemon(
        "berth-agent",
        &config.tls,
        config.insecure_dev,
        &addresses,
    );
    if let Err(e) = secured {
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
