use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = berth_apiserver::Config::parse();
    match run(config).await {
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
    shutdown_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
