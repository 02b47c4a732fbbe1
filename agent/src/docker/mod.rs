//! The Docker runtime: one node, its tasks run as containers through the
//! local Docker engine.
//!
//! - [`runtime`]: the engine (bollard), containers labelled with their task;
//! - [`decide`]: what to do about one task given its container (pure);
//! - [`supervisor`]: the loop that applies it, fences strays, writes status;
//! - [`health`]: HTTP, TCP and exec probes;
//! - [`usage`]: CPU and memory from the stats API, sent with heartbeats;
//! - [`logs`]: the agent's gRPC service (`berthctl logs`).

pub mod decide;
pub mod health;
pub mod logs;
pub mod runtime;
pub mod supervisor;
pub mod usage;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_proto::connect::BerthClient;
use berth_proto::pb;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::node::{NodeInfo, register, send_heartbeats};
use decide::Backoff;
use runtime::Engine;
use supervisor::{Supervisor, SupervisorConfig};
use usage::{SharedUsage, sample_forever};

#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub server: String,
    pub node: String,
    /// Overrides of what the host has (millicores, bytes).
    pub cpu: Option<i64>,
    pub memory: Option<i64>,
    pub labels: BTreeMap<String, String>,
    /// Where the agent's own service (logs) listens.
    pub listen: SocketAddr,
    /// The address others reach it at [default: what it listens on].
    pub advertise: Option<String>,
    pub heartbeat: Duration,
    pub usage_interval: Duration,
    pub stop_grace: Duration,
    pub backoff: Backoff,
    /// On shutdown: cordon the node, give its tasks up (Killed, so that
    /// their jobs replace them elsewhere) and stop their containers; the
    /// next agent to register the node lifts the cordon.
    pub drain_on_exit: bool,
}

/// Runs the agent of one Docker node until `shutdown` turns true, keeping
/// `metrics` up to date.
pub async fn run(
    config: DockerConfig,
    metrics: Metrics,
    auth: berth_proto::auth::Authenticator,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let engine = Engine::connect(&config.node)
        .await?
        .with_metrics(metrics.clone());
    let client = Arc::new(BerthClient::from_list(&config.server)?);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| local.to_string());
    let mut server_stop = shutdown.clone();
    let server = tokio::spawn(
        berth_proto::connect::server()?
            .add_service(berth_proto::connect::agent_service(logs::AgentService {
                engine: engine.clone(),
                auth,
            }))
            .serve_with_incoming_shutdown(berth_proto::connect::incoming(listener), async move {
                let _ = server_stop.wait_for(|s| *s).await;
            }),
    );

    let (host_cpu, host_memory) = engine.host_capacity().await?;
    let capacity = pb::Resources {
        cpu_millis: host_cpu,
        memory_bytes: host_memory,
        ..Default::default()
    };
    let allocatable = pb::Resources {
        cpu_millis: config.cpu.unwrap_or(host_cpu),
        memory_bytes: config.memory.unwrap_or(host_memory),
        ..Default::default()
    };
    let node = NodeInfo {
        name: config.node.clone(),
        capacity,
        allocatable,
        labels: config.labels.clone(),
        address: address.clone(),
    };
    register(&client, std::slice::from_ref(&node), 1).await?;
    tracing::info!(node = %config.node, %address, "node registered");

    let usage = SharedUsage::default();
    let sampler = tokio::spawn(sample_forever(
        engine.clone(),
        config.usage_interval,
        usage.clone(),
        shutdown.clone(),
    ));
    let heartbeats = tokio::spawn(heartbeat(
        client.clone(),
        config.node.clone(),
        config.heartbeat,
        usage,
        metrics.clone(),
        shutdown.clone(),
    ));
    let supervisor = SupervisorConfig {
        node: config.node.clone(),
        stop_grace: config.stop_grace,
        backoff: config.backoff,
    };
    Supervisor::run(
        supervisor,
        engine.clone(),
        client.clone(),
        metrics,
        shutdown,
    )
    .await;
    let _ = tokio::join!(sampler, heartbeats);
    if config.drain_on_exit {
        drain(&client, &engine, &config.node, config.stop_grace).await?;
    }
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("the agent's service failed: {e}")),
        Err(e) => Err(anyhow::anyhow!("the agent's service failed: {e}")),
    }
}

/// Cordons the node, marks its tasks Killed and stops their containers.
async fn drain(
    client: &BerthClient,
    engine: &Engine,
    node: &str,
    grace: Duration,
) -> anyhow::Result<()> {
    use berth_proto::pb::batch_op::Op;
    tracing::info!(%node, "draining the node");
    let mut object = client
        .get(pb::Kind::Node, "", node)
        .await
        .map_err(|s| anyhow::anyhow!("drain: cannot read node {node}: {}", s.message()))?;
    // Cordoned, with a label that says the agent did it: the next agent to
    // register the node lifts this cordon (not an operator's).
    if let Some(meta) = object.metadata_mut() {
        meta.labels
            .insert(crate::node::DRAINED_LABEL.to_string(), "true".to_string());
    }
    if let Some(pb::object::Kind::Node(n)) = &mut object.kind {
        n.spec.get_or_insert_with(Default::default).unschedulable = true;
    }
    client
        .apply(object, false)
        .await
        .map_err(|s| anyhow::anyhow!("drain: cannot cordon node {node}: {}", s.message()))?;
    let tasks = client
        .list(pb::Kind::Task, "")
        .await
        .map_err(|s| anyhow::anyhow!("drain: cannot list tasks: {}", s.message()))?;
    let now = berth_proto::process::now_ms();
    let ops: Vec<pb::BatchOp> = tasks
        .objects
        .into_iter()
        .filter_map(|mut object| {
            let Some(pb::object::Kind::Task(task)) = &mut object.kind else {
                return None;
            };
            let status = task.status.as_mut()?;
            if status.node != node || status.phase().is_terminal() {
                return None;
            }
            status.phase = pb::TaskPhase::Killed as i32;
            status.message = format!("node {node} was drained");
            status.finished_at_ms = now;
            Some(pb::BatchOp {
                op: Some(Op::UpdateStatus(pb::UpdateStatusRequest {
                    object: Some(object),
                })),
            })
        })
        .collect();
    let given_up = ops.len();
    if !ops.is_empty() {
        client
            .batch(ops)
            .await
            .map_err(|s| anyhow::anyhow!("drain: cannot give the tasks up: {}", s.message()))?;
    }
    let containers = engine.list().await?;
    let stops = containers.iter().map(|c| async move {
        let _ = engine.stop(&c.id, grace).await;
        engine.remove(&c.id).await
    });
    for result in futures::future::join_all(stops).await {
        if let Err(e) = result {
            tracing::warn!(error = %e, "drain: cannot remove a container");
        }
    }
    tracing::info!(%node, tasks = given_up, containers = containers.len(), "node drained");
    Ok(())
}

/// Heartbeats the node with its latest usage until shutdown.
async fn heartbeat(
    client: Arc<BerthClient>,
    node: String,
    period: Duration,
    usage: SharedUsage,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let table = usage.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let beat = pb::NodeHeartbeat {
            node: node.clone(),
            usage: Some(table.total()),
            tasks: table
                .tasks
                .into_iter()
                .map(|((namespace, name), usage)| pb::TaskUsage {
                    namespace,
                    name,
                    usage: Some(usage),
                })
                .collect(),
        };
        send_heartbeats(&client, vec![beat], &metrics).await;
    }
}
