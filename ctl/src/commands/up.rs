//! `berthctl up`: a local cluster in the foreground.

use anyhow::Context as _;
use berth_apiserver::{ApiServer, Config};

use crate::cli::UpArgs;
use crate::config;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => config::home()
            .map(|h| h.join("cluster"))
            .context("no --data-dir given and HOME is not set")?,
    };
    let server = ApiServer::start(Config::new(data_dir.join("apiserver-1"), args.listen)).await?;
    let address = server.local_addr().to_string();
    let config_file = config::write(std::slice::from_ref(&address))?;

    println!("Berth is up.");
    println!(
        "  API server   {address}   (data in {})",
        data_dir.display()
    );
    if let Some(path) = config_file {
        println!(
            "  config       {}   (berthctl finds the cluster through it)",
            path.display()
        );
    }
    println!();
    println!("Try:  berthctl apply -f manifests/   then   berthctl get jobs");
    println!("Press Ctrl-C to stop.");

    wait_for_stop().await?;
    println!("Stopping…");
    server.shutdown().await?;
    println!("Stopped. The state stays in {}.", data_dir.display());
    Ok(())
}

async fn wait_for_stop() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
