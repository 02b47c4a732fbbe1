//! Node registration, shared by the runtimes.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_proto::pb::batch_op::Op;
use berth_proto::pb::batch_result::Result as Answer;
use berth_proto::process::now_ms;
use tonic::Code;

use crate::metrics::Metrics;

/// Label an agent puts on its node when it drains it (and cordons it); the
/// next registration lifts that cordon. An operator's own cordon has no such
/// label and stays.
pub const DRAINED_LABEL: &str = "berth.dev/drained";

/// `current` uncordoned, without the drain label.
fn uncordoned(current: &pb::Object) -> pb::Object {
    let mut object = current.clone();
    if let Some(meta) = object.metadata_mut() {
        meta.labels.remove(DRAINED_LABEL);
    }
    if let Some(pb::object::Kind::Node(n)) = &mut object.kind {
        n.spec.get_or_insert_with(Default::default).unschedulable = false;
    }
    object
}

/// What an agent says about a node it registers.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// What the host has.
    pub capacity: pb::Resources,
    /// What tasks may use (capacity minus what the system keeps).
    pub allocatable: pb::Resources,
    pub labels: BTreeMap<String, String>,
    /// Where its agent serves (logs); `simulated` for simulated nodes.
    pub address: String,
}

/// Registers every node: creates those that do not exist yet (Ready, with
/// capacity and labels) and brings the status of the others up to date,
/// keeping what others own — the spec (an operator may have cordoned the
/// node) and what the scheduler lends (`reclaimable`). Retried while the
/// nodes change under it.
pub async fn register(
    client: &BerthClient,
    nodes: &[NodeInfo],
    writes_per_batch: usize,
) -> anyhow::Result<()> {
    let mut last_error = String::new();
    for _ in 0..5 {
        match try_register(client, nodes, writes_per_batch).await? {
            None => return Ok(()),
            Some(conflict) => last_error = conflict,
        }
    }
    anyhow::bail!("cannot register the nodes: {last_error}")
}

/// One attempt; `Some(reason)` when a node changed meanwhile.
async fn try_register(
    client: &BerthClient,
    nodes: &[NodeInfo],
    writes_per_batch: usize,
) -> anyhow::Result<Option<String>> {
    let existing: HashMap<String, pb::Object> = client
        .list(pb::Kind::Node, "")
        .await
        .context("cannot list nodes")?
        .objects
        .into_iter()
        .map(|o| (o.name().to_string(), o))
        .collect();
    let mut uncordon = Vec::new();
    let ops: Vec<(String, pb::BatchOp)> = nodes
        .iter()
        .map(|node| {
            let op = match existing.get(&node.name) {
                Some(current)
                    if current
                        .labels()
                        .is_some_and(|l| l.contains_key(DRAINED_LABEL)) =>
                {
                    uncordon.push((node.name.clone(), uncordoned(current)));
                    return (node.name.clone(), pb::BatchOp { op: None });
                }
                Some(current) => {
                    let mut updated = current.clone();
                    if let Some(pb::object::Kind::Node(n)) = &mut updated.kind {
                        let status = n.status.get_or_insert_with(Default::default);
                        status.capacity = Some(node.capacity.clone());
                        status.allocatable = Some(node.allocatable.clone());
                        status.labels = node.labels.clone();
                        status.state = pb::NodeState::Ready as i32;
                        status.last_heartbeat_ms = now_ms();
                        status.address = node.address.clone();
                        status.message.clear();
                    }
                    Op::UpdateStatus(pb::UpdateStatusRequest {
                        object: Some(updated),
                    })
                }
                None => Op::Apply(pb::ApplyRequest {
                    object: Some(pb::Object::from(pb::Node {
                        metadata: Some(pb::ObjectMeta {
                            name: node.name.clone(),
                            ..Default::default()
                        }),
                        spec: Some(pb::NodeSpec::default()),
                        status: Some(pb::NodeStatus {
                            capacity: Some(node.capacity.clone()),
                            allocatable: Some(node.allocatable.clone()),
                            labels: node.labels.clone(),
                            state: pb::NodeState::Ready as i32,
                            last_heartbeat_ms: now_ms(),
                            address: node.address.clone(),
                            ..Default::default()
                        }),
                    })),
                    create_only: true,
                }),
            };
            (node.name.clone(), pb::BatchOp { op: Some(op) })
        })
        .filter(|(_, op)| op.op.is_some())
        .collect();
    // A node its own agent cordoned when it drained is schedulable again
    // once an agent registers it; the status follows on the next attempt.
    if !uncordon.is_empty() {
        let undone = uncordon.len();
        let ops = uncordon
            .into_iter()
            .map(|(_, object)| pb::BatchOp {
                op: Some(Op::Apply(pb::ApplyRequest {
                    object: Some(object),
                    create_only: false,
                })),
            })
            .collect();
        client
            .batch(ops)
            .await
            .context("cannot uncordon the drained nodes")?;
        return Ok(Some(format!("{undone} node(s) uncordoned after a drain")));
    }
    for chunk in ops.chunks(writes_per_batch) {
        let response = client
            .batch(chunk.iter().map(|(_, op)| op.clone()).collect())
            .await
            .context("cannot register the nodes")?;
        for ((node, _), result) in chunk.iter().zip(response.results) {
            if let Some(Answer::Error(e)) = result.result {
                let conflict = [
                    Code::Aborted as i32,
                    Code::AlreadyExists as i32,
                    Code::NotFound as i32,
                ];
                if conflict.contains(&e.code) {
                    return Ok(Some(format!("node {node}: {}", e.message)));
                }
                anyhow::bail!("cannot register node {node}: {}", e.message);
            }
        }
    }
    Ok(None)
}

/// Sends one heartbeat RPC (of one node or many); a failure is logged, and
/// the next beat tries again. Counted in `metrics`, one per node.
pub async fn send_heartbeats(
    client: &BerthClient,
    nodes: Vec<pb::NodeHeartbeat>,
    metrics: &Metrics,
) {
    let count = nodes.len();
    let request = pb::HeartbeatRequest { nodes };
    let sent = client
        .call_nodes(|mut c| {
            let request = request.clone();
            async move { c.heartbeat(request).await }
        })
        .await;
    metrics.heartbeats_sent(count, sent.is_ok());
    if let Err(status) = sent {
        tracing::warn!(error = %status.message(), "heartbeat failed");
    }
}
