use berth_proto::process::{init_logging, shutdown_signal};
use clap::Parser;

/// The servers allocate and free many small buffers per request (decoded
/// objects, encoded batches); mimalloc keeps them thread-local. Measured
/// with `berth-bench trace alibaba2017`: about 1.5x the tasks placed per
/// second of the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    init_logging();
    let config = berth_apiserver::Config::parse();
    let mut addresses = vec![config.listen.to_string()];
    addresses.extend(config.advertise.clone());
    addresses.extend(
        config
            .initial_cluster
            .iter()
            .flat_map(|m| m.values().cloned()),
    );
    addresses.extend(config.metrics_listen.map(|a| a.to_string()));
    let secured = berth_proto::connect::secure_daemon(
        "berth-apiserver",
        &config.tls,
        config.insecure_dev,
        &addresses,
    );
    if let Err(e) = secured {
        eprintln!("berth-apiserver: error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let outcome = berth_proto::process::server_runtime()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(config)));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-apiserver: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: berth_apiserver::Config) -> anyhow::Result<()> {
    let server = berth_apiserver::ApiServer::start(config).await?;
    // Tests and `berthctl up` wait for this line.
    println!("berth-apiserver listening on {}", server.local_addr());
    server.serve_until(shutdown_signal()).await
}
