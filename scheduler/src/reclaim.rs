//! Reclamation (Borg §5.5): batch may borrow what prod reserved but does
//! not use, and gives it back first when prod's usage grows.
//!
//! For each node, from the usage agents report:
//!
//! ```text
//! reclaimable = Σ over prod tasks of  request − min(request, usage × (1 + margin))
//! ```
//!
//! A prod task with no measured usage yet (just started) counts as using
//! all it asked for; a node with no report lends nothing. The result is
//! written to the node's `status.reclaimable`, which the apiserver's bind
//! check and the placement view both read. When it shrinks so far that the
//! batch tasks on the node no longer fit, the lowest-priority batch tasks
//! (the newest among equals) are evicted until they do.

use std::collections::HashMap;

use berth_proto::capacity::{Amount, Capacity};
use berth_proto::pb;

use crate::state::{ClusterState, NodeView};
use crate::write::{self, Write};

/// A growth of the reclaimable amount smaller than this fraction of the
/// node is not worth a write (shrinking is always written at once).
const HYSTERESIS: f64 = 0.05;

/// Prod's reserved-but-unused CPU and memory on `node`.
pub fn reclaimable(
    state: &ClusterState,
    node: &NodeView,
    usage: Option<&pb::NodeUsage>,
    margin: f64,
) -> (i64, i64) {
    let Some(usage) = usage else { return (0, 0) };
    let measured: HashMap<(&str, &str), &pb::Usage> = usage
        .tasks
        .iter()
        .filter_map(|t| Some(((t.namespace.as_str(), t.name.as_str()), t.usage.as_ref()?)))
        .collect();
    let (mut cpu, mut memory) = (0i64, 0i64);
    for key in &node.tasks {
        let Some(task) = state.tasks.get(key).and_then(|o| o.as_task()) else {
            continue;
        };
        if task
            .spec
            .as_ref()
            .is_none_or(|s| s.tier() != pb::Tier::Prod)
        {
            continue;
        }
        let asked = task.requests().map(Amount::of).unwrap_or_default();
        let Some(used) = measured.get(&(key.namespace.as_str(), key.name.as_str())) else {
            continue; // not measured yet: nothing to lend
        };
        let with_margin = |v: i64| ((v.max(0) as f64) * (1.0 + margin.max(0.0))).ceil() as i64;
        cpu += asked.cpu - asked.cpu.min(with_margin(used.cpu_millis));
        memory += asked.memory - asked.memory.min(with_margin(used.memory_bytes));
    }
    (cpu, memory)
}

fn worth_writing(node: &NodeView, cpu: i64, memory: i64) -> bool {
    let current = (
        node.capacity.reclaimable_cpu,
        node.capacity.reclaimable_memory,
    );
    if (cpu, memory) == current {
        return false;
    }
    if cpu < current.0 || memory < current.1 {
        return true;
    }
    let a = &node.capacity.allocatable;
    let grew =
        |new: i64, old: i64, total: i64| (new - old) as f64 > HYSTERESIS * total.max(1) as f64;
    grew(cpu, current.0, a.cpu) || grew(memory, current.1, a.memory)
}

/// The writes that bring every node's reclaimable amount up to date, with
/// the evictions a shrink makes necessary. `margin` < 0 turns reclamation
/// off (everything lent is taken back).
pub fn plan(
    state: &ClusterState,
    usage: &HashMap<String, pb::NodeUsage>,
    margin: Option<f64>,
    now_ms: i64,
) -> Vec<Vec<Write>> {
    let mut groups = Vec::new();
    for node in state.nodes.values().filter(|n| n.known) {
        let Some(object) = &node.object else { continue };
        let (cpu, memory) = match margin {
            Some(margin) => reclaimable(state, node, usage.get(&node.name), margin),
            None => (0, 0),
        };
        let mut group = Vec::new();
        let mut capacity = node.capacity.clone();
        if worth_writing(node, cpu, memory) {
            let mut updated = (**object).clone();
            if let Some(pb::object::Kind::Node(n)) = &mut updated.kind {
                n.status.get_or_insert_with(Default::default).reclaimable = Some(pb::Usage {
                    cpu_millis: cpu,
                    memory_bytes: memory,
                });
            }
            group.push(Write::Status(updated));
            capacity.reclaimable_cpu = cpu;
            capacity.reclaimable_memory = memory;
        }
        // Also when nothing changed here: the node may have lost what it
        // lent some other way (its agent re-registered it).
        group.extend(evictions(state, node, &capacity, now_ms));
        if !group.is_empty() {
            groups.push(group);
        }
    }
    groups
}

/// Batch tasks to evict so that what remains fits `capacity`.
fn evictions(
    state: &ClusterState,
    node: &NodeView,
    capacity: &Capacity,
    now_ms: i64,
) -> Vec<Write> {
    let mut batch = node.batch.clone();
    if capacity.check(&node.name, &node.prod, &batch).is_ok() {
        return Vec::new();
    }
    let mut candidates: Vec<(i32, u64, &pb::Object)> = node
        .tasks
        .iter()
        .filter_map(|k| state.tasks.get(k))
        .filter_map(|o| {
            let spec = o.as_task()?.spec.as_ref()?;
            (spec.tier() == pb::Tier::Batch).then_some((
                spec.priority,
                o.resource_version(),
                o.as_ref(),
            ))
        })
        .collect();
    // Lowest priority first; the newest first among equals.
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut writes = Vec::new();
    for (_, _, victim) in candidates {
        if capacity.check(&node.name, &node.prod, &batch).is_ok() {
            break;
        }
        if let Some(asked) = victim.as_task().and_then(|t| t.requests()) {
            batch.add(&Amount::of(asked), -1);
        }
        let message = format!(
            "node {}: prod tasks use more of what they reserved; batch gives it back",
            node.name
        );
        writes.extend(write::evict(victim, "Reclaimed", message, now_ms));
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{node, task};

    fn usage(node: &str, tasks: &[(&str, i64)]) -> HashMap<String, pb::NodeUsage> {
        let tasks = tasks
            .iter()
            .map(|(name, cpu)| pb::TaskUsage {
                namespace: "default".into(),
                name: name.to_string(),
                usage: Some(pb::Usage {
                    cpu_millis: *cpu,
                    memory_bytes: 1 << 20,
                }),
            })
            .collect();
        [(
            node.to_string(),
            pb::NodeUsage {
                node: node.into(),
                tasks,
                ..Default::default()
            },
        )]
        .into()
    }

    fn reclaimable_cpu(groups: &[Vec<Write>]) -> Vec<i64> {
        groups
            .iter()
            .flatten()
            .filter_map(|w| match w {
                Write::Status(o) => o
                    .as_node()?
                    .status
                    .as_ref()?
                    .reclaimable
                    .map(|r| r.cpu_millis),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn prod_lends_what_it_does_not_use_with_a_margin() {
        let mut s = ClusterState::default();
        s.upsert(node("n1", 8000, &[]));
        s.upsert(task("p-0", "p", pb::Tier::Prod, 4000, "n1", 2));
        s.upsert(task("p-1", "p", pb::Tier::Prod, 2000, "n1", 3));
        // p-0 uses 1000 (1200 with the margin); p-1 is not measured yet.
        let groups = plan(&s, &usage("n1", &[("p-0", 1000)]), Some(0.2), 0);
        assert_eq!(reclaimable_cpu(&groups), vec![2800]);
        // No report at all: nothing to lend, and nothing to write.
        assert!(plan(&s, &HashMap::new(), Some(0.2), 0).is_empty());
    }

    #[test]
    fn batch_gives_back_lowest_priority_first_when_prod_grows() {
        let mut s = ClusterState::default();
        let mut n = node("n1", 8000, &[]);
        if let Some(pb::object::Kind::Node(node)) = &mut n.kind {
            node.status.as_mut().unwrap().reclaimable = Some(pb::Usage {
                cpu_millis: 3000,
                memory_bytes: 0,
            });
        }
        s.upsert(n);
        s.upsert(task("p-0", "p", pb::Tier::Prod, 6000, "n1", 2));
        let mut b = |name: &str, priority: i32, rv: u64| {
            let mut t = task(name, "b", pb::Tier::Batch, 1500, "n1", rv);
            if let Some(pb::object::Kind::Task(t)) = &mut t.kind {
                t.spec.as_mut().unwrap().priority = priority;
            }
            s.upsert(t);
        };
        b("b-high", 9, 3);
        b("b-low", 1, 4);
        b("b-mid", 5, 5);
        // 4500 of batch on 2000 left by prod + 3000 lent. Prod now uses all
        // it asked: nothing is lent, 2000 remain; two batch tasks must go.
        let groups = plan(&s, &usage("n1", &[("p-0", 6000)]), Some(0.2), 0);
        assert_eq!(reclaimable_cpu(&groups), vec![0]);
        let evicted: Vec<&str> = groups
            .iter()
            .flatten()
            .filter_map(|w| match w {
                Write::Status(o) if o.as_task().is_some() => Some(o.name()),
                _ => None,
            })
            .collect();
        assert_eq!(evicted, vec!["b-low", "b-mid"]);
    }
}
