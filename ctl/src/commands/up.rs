//! `berthctl up`: a local cluster in the foreground.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_agent::docker::DockerConfig;
use berth_agent::sim::{SimConfig, SimNode};
use berth_apiserver::{ApiServer, Config};
use berth_proto::pb;
use berth_proto::quantity::{format_cpu, format_memory};
use tokio::sync::watch;

use crate::cli::UpArgs;
use crate::config;

/// The local cluster's CA in DATA_DIR/pki (made on first use), with one
/// certificate for the components of this process and one for berthctl;
/// turns TLS on for this process. Returns what berthctl needs.
fn local_pki(
    data_dir: &std::path::Path,
    served_on: [SocketAddr; 2],
) -> anyhow::Result<config::TlsPaths> {
    use berth_proto::pki::{Identity, Pki, Role};
    let pki = Pki::at(&data_dir.join("pki"));
    if !pki.ca_cert().exists() {
        pki.init()?;
    }
    // In one process every component shows one certificate: the
    // apiserver's, valid for every address they serve on.
    let mut hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    for address in served_on {
        let ip = address.ip().to_string();
        if !hosts.contains(&ip) {
            hosts.push(ip);
        }
    }
    if !pki.cert("components").exists() {
        let identity = Identity::new(Role::Apiserver, "components").with_hosts(hosts);
        pki.issue(&identity, None, now_minus_an_hour(), 3650)?;
    }
    if !pki.cert("admin").exists() {
        pki.issue(
            &Identity::new(Role::Admin, "admin"),
            None,
            now_minus_an_hour(),
            3650,
        )?;
    }
    berth_proto::connect::use_tls(berth_proto::connect::Tls::load(
        &pki.ca_cert(),
        Some((&pki.cert("components"), &pki.key("components"))),
    )?)?;
    // Absolute: berthctl reads them from any directory.
    let absolute = |path: std::path::PathBuf| std::fs::canonicalize(&path).unwrap_or(path);
    Ok(config::TlsPaths {
        ca: absolute(pki.ca_cert()),
        cert: Some(absolute(pki.cert("admin"))),
        key: Some(absolute(pki.key("admin"))),
    })
}

fn now_minus_an_hour() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::hours(1)
}

const TOKEN_FILE_HEADER: &str = "# Bearer tokens of this cluster's users: \
`berthctl tokens create --file THIS_FILE --name NAME --role ROLE` adds one.\n\
# sha256:HASH NAME ROLE [NAMESPACES]\n";

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
    let tls = if args.insecure_dev {
        for address in [args.listen, args.agent_listen] {
            if !address.ip().is_loopback() {
                bail!(
                    "--insecure-dev: plaintext only on loopback addresses, and {address} is not one"
                );
            }
        }
        berth_proto::connect::warn_insecure("berthctl up");
        None
    } else {
        Some(local_pki(&data_dir, [args.listen, args.agent_listen])?)
    };

    // Users' bearer tokens: `berthctl tokens create --file DATA_DIR/tokens`.
    let token_file = data_dir.join("tokens");
    if tls.is_some() && !token_file.exists() {
        std::fs::create_dir_all(&data_dir)
            .and_then(|()| std::fs::write(&token_file, TOKEN_FILE_HEADER))
            .with_context(|| format!("cannot create {}", token_file.display()))?;
    }
    let mut servers = Vec::new();
    for (id, address) in &members {
        let dir = data_dir.join(format!("apiserver-{id}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut config = Config::new(dir, *address);
        config.member_id = *id;
        config.initial_cluster = Some(initial.clone());
        if tls.is_some() {
            config.token_file = Some(token_file.clone());
        }
        servers.push(ApiServer::start(config).await?);
    }
    let addresses: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
    let config_file = config::write_local(&addresses, tls.clone())?;
    let server_list = addresses.join(",");

    // The scheduler and the simulated nodes run in this process too, and
    // stop before the apiservers do.
    let (stop, stopped) = watch::channel(false);
    let mut components = Vec::new();
    if !args.no_scheduler {
        let config = berth_scheduler::Config::new(server_list.clone());
        components.push(tokio::spawn(berth_scheduler::run(config, stopped.clone())));
    }
    let sim = args.runtime == berth_agent::Runtime::Sim && args.sim_nodes > 0;
    let docker_node = berth_agent::config::host_name();
    match args.runtime {
        berth_agent::Runtime::Sim if sim => {
            let nodes = (0..args.sim_nodes)
                .map(|i| SimNode {
                    name: format!("sim-{i}"),
                    allocatable: pb::Resources {
                        cpu_millis: args.node_cpu,
                        memory_bytes: args.node_memory,
                        ..Default::default()
                    },
                    labels: [
                        (
                            "zone".to_string(),
                            format!("zone-{}", (b'a' + (i % 3) as u8) as char),
                        ),
                        ("rack".to_string(), format!("rack-{}", i / 3)),
                    ]
                    .into(),
                })
                .collect();
            let config = SimConfig {
                server: server_list.clone(),
                nodes,
                start_latency: Duration::ZERO,
                batch_runtime: Some(Duration::from_secs(30)),
                usage: 0.5,
                heartbeat: Duration::from_secs(2),
            };
            components.push(tokio::spawn(berth_agent::sim::run(
                config,
                berth_agent::Metrics::default(),
                stopped.clone(),
            )));
        }
        berth_agent::Runtime::Sim => {}
        berth_agent::Runtime::Docker => {
            let config = DockerConfig {
                server: server_list.clone(),
                node: docker_node.clone(),
                cpu: None,
                memory: None,
                // The zone and rack of the first simulated node, so that the
                // example manifests (constrained to zone-a, zone-b) fit.
                labels: [
                    ("zone".to_string(), "zone-a".to_string()),
                    ("rack".to_string(), "rack-0".to_string()),
                ]
                .into(),
                listen: args.agent_listen,
                advertise: None,
                heartbeat: Duration::from_secs(2),
                usage_interval: Duration::from_secs(5),
                stop_grace: Duration::from_secs(10),
                backoff: Default::default(),
                // Ctrl-C stops the local cluster, containers included; the
                // tasks are replaced when it comes up again.
                drain_on_exit: true,
            };
            // Without an engine no task would ever start: say so now.
            if let Err(e) = berth_agent::docker::runtime::Engine::connect(&docker_node).await {
                for server in servers {
                    server.shutdown().await?;
                }
                bail!("{e:#}\nStart Docker, or run simulated nodes: berthctl up --runtime sim");
            }
            let auth = berth_proto::auth::Authenticator::new(tls.is_some(), None);
            let agent = tokio::spawn(berth_agent::docker::run(
                config,
                berth_agent::Metrics::default(),
                auth,
                stopped.clone(),
            ));
            components.push(agent);
        }
    }

    crate::say!("Berth is up.");
    crate::say!(
        "  API servers  {}   ({} replicas, data in {})",
        addresses.join(","),
        args.replicas,
        data_dir.display()
    );
    if let Some(path) = config_file {
        crate::say!(
            "  config       {}   (berthctl finds the cluster through it)",
            path.display()
        );
    }
    match &tls {
        Some(paths) => crate::say!(
            "  security     mutual TLS from the CA in {} (berthctl shows the admin certificate)",
            paths
                .ca
                .parent()
                .map_or_else(String::new, |p| p.display().to_string())
        ),
        None => crate::say!("  security     NONE (--insecure-dev): plaintext on loopback"),
    }
    if !args.no_scheduler {
        crate::say!("  scheduler    binpack policy, in this process");
    }
    if args.runtime == berth_agent::Runtime::Docker {
        crate::say!(
            "  node         {docker_node}: tasks run as Docker containers on this host; \
             its agent serves logs on {}",
            args.agent_listen
        );
    }
    if sim {
        crate::say!(
            "  nodes        {} simulated (sim-0…), {} CPU and {} memory each: tasks are \
             bound and marked Running, no containers start; batch tasks finish after 30s",
            args.sim_nodes,
            format_cpu(args.node_cpu),
            format_memory(args.node_memory)
        );
    }
    crate::say!();
    crate::say!(
        "Try:  berthctl apply -f manifests/   then   berthctl get jobs   and   berthctl cluster status"
    );
    crate::say!("Press Ctrl-C to stop.");

    berth_proto::process::shutdown_signal().await?;
    crate::say!("Stopping…");
    stop.send_replace(true);
    for component in components {
        match tokio::time::timeout(Duration::from_secs(5), component).await {
            Ok(Ok(Err(e))) => eprintln!("warning: {e:#}"),
            Ok(Err(e)) => eprintln!("warning: {e}"),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
    }
    for server in servers {
        server.shutdown().await?;
    }
    crate::say!("Stopped. The state stays in {}.", data_dir.display());
    Ok(())
}
