//! Node liveness: heartbeats and usage as soft state on the leader, and the
//! node lifecycle it drives.
//!
//! Heartbeats are not written to the log — at ten thousand nodes they would
//! swamp it. The leader keeps when it last heard from each node and what the
//! node reported using, serves that to the scheduler and to `berthctl top`,
//! and commits only transitions: Ready → NotReady after `not_ready_after`
//! without a heartbeat, → Lost after `lost_after` (which also marks the
//! node's tasks Lost, in the same write), and back to Ready when it is heard
//! again. A member that becomes leader starts every node's clock afresh, so a
//! failover never makes healthy nodes look lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_proto::internal::{BatchOps, Command, SingleOp, UpdateStatusOp, command::Op, single_op};
use berth_proto::pb;
use tokio::sync::watch;

use crate::replication::Replica;
use crate::watch::WatchHub;

/// How often the leader looks for nodes to move between states.
const CHECK_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub not_ready_after: Duration,
    pub lost_after: Duration,
}

/// What the leader last heard from a node.
#[derive(Clone)]
struct Seen {
    at: Instant,
    at_ms: i64,
    usage: pb::Usage,
    tasks: Vec<pb::TaskUsage>,
}

#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<String, Seen>>,
}

impl Liveness {
    /// Records heartbeats (on the leader).
    pub fn heartbeat(&self, beats: Vec<pb::NodeHeartbeat>) {
        let now = Instant::now();
        let at_ms = now_ms();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for beat in beats {
            seen.insert(
                beat.node,
                Seen {
                    at: now,
                    at_ms,
                    usage: beat.usage.unwrap_or_default(),
                    tasks: beat.tasks,
                },
            );
        }
    }

    /// Every node's latest usage.
    pub fn report(&self) -> pb::UsageReport {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut nodes: Vec<pb::NodeUsage> = seen
            .iter()
            .map(|(node, s)| pb::NodeUsage {
                node: node.clone(),
                usage: Some(s.usage),
                tasks: s.tasks.clone(),
                last_heartbeat_ms: s.at_ms,
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        pb::UsageReport { nodes }
    }

    fn forget_all(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn last_heard(&self, node: &str) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map(|s| s.at)
    }
}

/// Runs the node lifecycle while this member leads, until `shutdown`.
pub async fn run_lifecycle(
    liveness: Arc<Liveness>,
    replica: Replica,
    hub: Arc<WatchHub>,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut leading_since: Option<Instant> = None;
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stopped| *stopped) => return,
        }
        if !replica.is_leader() {
            if leading_since.take().is_some() {
                liveness.forget_all();
            }
            continue;
        }
        // A new leader gives every node a fresh grace period.
        let since = *leading_since.get_or_insert_with(Instant::now);
        let transitions = due_transitions(&liveness, &hub, timeouts, since);
        if transitions.is_empty() {
            continue;
        }
        let command = Command {
            time_ms: now_ms(),
            op: Some(Op::Batch(BatchOps { ops: transitions })),
        };
        // A conflict (the node changed meanwhile) is retried next round.
        if let Err(e) = replica.propose_here(command).await {
            tracing::debug!(error = %e, "node transitions not written");
        }
    }
}

/// The state changes due now, as status writes with preconditions.
fn due_transitions(
    liveness: &Liveness,
    hub: &WatchHub,
    timeouts: Timeouts,
    leading_since: Instant,
) -> Vec<SingleOp> {
    let now = Instant::now();
    let snapshot = hub.snapshot();
    let mut ops = Vec::new();
    for object in snapshot.scan(pb::Kind::Node, None) {
        let Some(node) = object.as_node() else {
            continue;
        };
        let name = object.name();
        let status = node.status.clone().unwrap_or_default();
        let current = status.state();
        let heard = liveness.last_heard(name);
        let silent_for = now.duration_since(heard.unwrap_or(leading_since).max(leading_since));
        let wanted = match (current, heard) {
            // A node nobody has heard from yet is left as its creator made it.
            (pb::NodeState::Unspecified, None) => continue,
            _ if heard.is_some_and(|at| now.duration_since(at) < timeouts.not_ready_after) => {
                pb::NodeState::Ready
            }
            _ if silent_for < timeouts.not_ready_after => continue,
            _ if silent_for < timeouts.lost_after => pb::NodeState::NotReady,
            _ => pb::NodeState::Lost,
        };
        // Lost stays Lost until the node is heard again.
        if wanted == current
            || (current == pb::NodeState::Lost && wanted == pb::NodeState::NotReady)
        {
            continue;
        }
        let message = match wanted {
            pb::NodeState::Ready => String::new(),
            pb::NodeState::NotReady => format!("no heartbeat for {}s", silent_for.as_secs()),
            _ => format!(
                "no heartbeat for {}s: its tasks are lost",
                silent_for.as_secs()
            ),
        };
        tracing::info!(node = name, from = ?current, to = ?wanted, "node state changes");
        let mut changed = (**object).clone();
        if let Some(pb::object::Kind::Node(n)) = &mut changed.kind {
            let status = n.status.get_or_insert_with(Default::default);
            status.state = wanted as i32;
            status.last_heartbeat_ms = now_ms();
            status.message = message;
        }
        ops.push(SingleOp {
            op: Some(single_op::Op::UpdateStatus(UpdateStatusOp {
                object: Some(changed),
            })),
        });
    }
    ops
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
