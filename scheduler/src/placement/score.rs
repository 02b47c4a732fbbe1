//! Scoring: among feasible nodes, which is best for this class? Higher wins.
//!
//! - **binpack** (default, after Borg): fill nodes up, so that whole nodes
//!   stay free for large tasks — but penalize leaving one resource stranded
//!   while another is full (a node at 100% CPU and 20% memory wastes the
//!   memory), and keep GPU nodes for tasks that need GPUs (a CPU-only task on
//!   a GPU node can strand its GPUs, the fragmentation the Alibaba 2023 trace
//!   paper measures).
//! - **spread** (least allocated, like Kubernetes' default): prefer the
//!   emptiest node, balanced across resources.
//! - **firstfit**: the first feasible node in name order, as a baseline.

use super::{Class, Policy};
use crate::state::NodeView;

/// How much the imbalance between CPU and memory costs, against fullness.
const BALANCE_WEIGHT: f64 = 0.5;
/// How much a CPU-only task on a node with idle GPUs costs.
const GPU_WASTE_WEIGHT: f64 = 1.0;

/// The fractions of CPU, memory (and GPU) the node would have promised
/// after taking the class's task.
fn fractions(node: &NodeView, class: &Class) -> (f64, f64, Option<f64>, f64) {
    let cap = &node.capacity.allocatable;
    let used = node.prod.plus(&node.batch).plus(&class.asked);
    let frac = |used: i64, cap: i64| {
        if cap > 0 {
            used as f64 / cap as f64
        } else {
            1.0
        }
    };
    let cpu = frac(used.cpu, cap.cpu);
    let memory = frac(used.memory, cap.memory);
    let gpus = cap.extended("gpu");
    let gpu = (class.asked.extended("gpu") > 0).then(|| frac(used.extended("gpu"), gpus));
    // A task that needs no GPU, on a node whose GPUs are idle.
    let idle_gpus = if class.asked.extended("gpu") == 0 && gpus > 0 {
        (gpus - node.prod.plus(&node.batch).extended("gpu")).max(0) as f64 / gpus as f64
    } else {
        0.0
    };
    (cpu, memory, gpu, idle_gpus)
}

/// The node's score for a task of `class` under `policy`; `index` is the
/// node's position in name order (first fit prefers the lowest).
pub fn score(policy: Policy, node: &NodeView, class: &Class, index: usize) -> f64 {
    let (cpu, memory, gpu, idle_gpus) = fractions(node, class);
    let (fullness, imbalance) = match gpu {
        Some(g) => (
            (cpu + memory + g) / 3.0,
            (cpu - memory).abs().max((g - cpu).abs() / 2.0),
        ),
        None => ((cpu + memory) / 2.0, (cpu - memory).abs()),
    };
    match policy {
        Policy::Binpack => fullness - BALANCE_WEIGHT * imbalance - GPU_WASTE_WEIGHT * idle_gpus,
        Policy::Spread => {
            (1.0 - fullness) - BALANCE_WEIGHT * imbalance - GPU_WASTE_WEIGHT * idle_gpus
        }
        Policy::Firstfit => -(index as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::{class, view};
    use berth_proto::pb;

    #[test]
    fn binpack_prefers_the_fuller_node_spread_the_emptier() {
        let c = class(pb::Tier::Batch, 1000, "");
        let mut full = view("a", 8000, &[]);
        full.batch.cpu = 6000;
        full.batch.memory = 48 << 30;
        let empty = view("b", 8000, &[]);
        assert!(score(Policy::Binpack, &full, &c, 0) > score(Policy::Binpack, &empty, &c, 1));
        assert!(score(Policy::Spread, &full, &c, 0) < score(Policy::Spread, &empty, &c, 1));
    }

    #[test]
    fn binpack_avoids_stranding_memory() {
        // Both end equally full on average; one leaves memory stranded.
        let c = class(pb::Tier::Batch, 1000, "");
        let mut lopsided = view("a", 8000, &[]);
        lopsided.batch.cpu = 7000;
        let mut balanced = view("b", 8000, &[]);
        balanced.batch.cpu = 3500;
        balanced.batch.memory = 32 << 30;
        assert!(
            score(Policy::Binpack, &balanced, &c, 1) > score(Policy::Binpack, &lopsided, &c, 0)
        );
    }

    #[test]
    fn binpack_keeps_gpu_nodes_for_gpu_tasks() {
        let c = class(pb::Tier::Batch, 1000, "");
        let mut gpu_node = view("a", 8000, &[]);
        gpu_node
            .capacity
            .allocatable
            .extended
            .insert("gpu".into(), 8);
        gpu_node.batch.cpu = 6000;
        let cpu_node = view("b", 8000, &[]);
        assert!(
            score(Policy::Binpack, &cpu_node, &c, 1) > score(Policy::Binpack, &gpu_node, &c, 0)
        );
    }

    #[test]
    fn firstfit_prefers_the_first_node() {
        let c = class(pb::Tier::Batch, 1000, "");
        let n = view("a", 8000, &[]);
        assert!(score(Policy::Firstfit, &n, &c, 0) > score(Policy::Firstfit, &n, &c, 5));
    }
}
