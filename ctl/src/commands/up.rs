//! `berthctl up`: a local cluster in the foreground.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use berth_apiserver::{ApiServer, Config};

use crate::cli::UpArgs;
use crate::config;

/// Ports between replicas: 7400, 7410, 7420, …
const PORT_STEP: u16 = 10;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.replicas == 0 || args.replicas > 7 {
        bail!("--replicas must be between 1 and 7 (3 or 5 tolerate one or two failures)");
    }
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => config::home()
            .map(|h| h.join("cluster"))
            .context("no --data-dir given and HOME is not set")?,
    };
    let mut members = BTreeMap::new();
    for id in 1..=args.replicas {
        let port = args
            .listen
            .port()
            .checked_add(PORT_STEP * (id as u16 - 1))
            .context("--listen's port is too high for this many replicas")?;
        members.insert(id, SocketAddr::new(args.listen.ip(), port));
    }
    let initial: BTreeMap<u64, String> =
        members.iter().map(|(id, a)| (*id, a.to_string())).collect();

    let mut servers = Vec::new();
    for (id, address) in &members {
        let dir = data_dir.join(format!("apiserver-{id}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut config = Config::new(dir, *address);
        config.member_id = *id;
        config.initial_cluster = Some(initial.clone());
        servers.push(ApiServer::start(config).await?);
    }
    let addresses: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
    let config_file = config::write(&addresses)?;

    println!("Berth is up.");
    println!(
        "  API servers  {}   ({} replicas, data in {})",
        addresses.join(","),
        args.replicas,
        data_dir.display()
    );
    if let Some(path) = config_file {
        println!(
            "  config       {}   (berthctl finds the cluster through it)",
            path.display()
        );
    }
    println!();
    println!(
        "Try:  berthctl apply -f manifests/   then   berthctl get jobs   and   berthctl cluster status"
    );
    println!("Press Ctrl-C to stop.");

    wait_for_stop().await?;
    println!("Stopping…");
    for server in servers {
        server.shutdown().await?;
    }
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
