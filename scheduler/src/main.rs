use std::time::Duration;

use berth_proto::process::{init_logging, run_until_signal};
use clap::Parser;

/// The servers allocate and free many small buffers per request (decoded
/// objects, encoded batches); mimalloc keeps them thread-local. Measured
/// with `berth-bench trace alibaba2017`: about 1.5x the tasks placed per
/// second of the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    let config = berth_scheduler::Config::parse();
    let mut addresses: Vec<String> = config.server.split(',').map(str::to_string).collect();
    addresses.extend(config.metrics_listen.map(|a| a.to_string()));
    let secured = berth_proto::connect::secure_daemon(
        "berth-scheduler",
        &config.tls,
        config.insecure_dev,
        &addresses,
    );
    if let Err(e) = secured {
        eprintln!("berth-scheduler: error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // On a signal it releases its lease, so that a standby takes over at once.
    run_until_signal("berth-scheduler", Duration::from_secs(5), |stopped| {
        berth_scheduler::run(config, stopped)
    })
    .await
}
