//! Scoring: among feasible nodes, which is best for this class? Higher wins.
//!
//! - **binpack** (default, after Borg): fill nodes up, so that whole nodes
//!   stay free for large tasks — but penalize what a placement strands: CPU
//!   nearly gone while memory is free (or the reverse), GPUs left without
//!   the CPU or memory to feed them, a CPU-only task taking a GPU node's host
//!   resources while its GPUs idle (the fragmentation the Alibaba 2023 trace
//!   paper measures) — and starting on an empty node the larger it is, so
//!   that the biggest nodes stay whole for the tasks only they can take.
//!   The weights were chosen with `berth-bench pack` on both Alibaba traces.
//! - **spread** (least allocated plus balanced allocation, like Kubernetes'
//!   default): prefer the emptiest node, balanced across resources.
//! - **firstfit**: the first feasible node in name order, as a baseline.

use super::{Class, Policy};
use crate::state::NodeView;

/// How much CPU and memory out of step with each other cost, against
/// fullness (both policies, like Kubernetes' balanced allocation).
const BALANCE_WEIGHT: f64 = 0.5;
/// How much a CPU-only task on a node with idle GPUs costs (both policies).
const GPU_WASTE_WEIGHT: f64 = 1.0;
/// Binpack: how much stranding CPU or memory costs — a node whose CPU is
/// nearly gone while much memory is free (or the reverse).
const STRANDED_HOST_WEIGHT: f64 = 2.0;
/// Binpack: how much GPU left without the CPU or memory to use it costs.
const STRANDED_GPU_WEIGHT: f64 = 3.0;
/// Binpack: how much starting on an empty node costs, for the cluster's
/// largest node (smaller ones in proportion): big nodes stay whole for the
/// tasks only they can take.
const OPENING_WEIGHT: f64 = 0.5;

/// The largest CPU and memory any node offers, against which a node's size
/// is measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Largest {
    cpu: i64,
    memory: i64,
}

impl Largest {
    pub fn of<'n>(nodes: impl IntoIterator<Item = &'n NodeView>) -> Largest {
        nodes.into_iter().fold(Largest::default(), |l, n| Largest {
            cpu: l.cpu.max(n.capacity.allocatable.cpu),
            memory: l.memory.max(n.capacity.allocatable.memory),
        })
    }

    /// The node's size as a fraction of the largest (mean of CPU and memory).
    fn size(&self, node: &NodeView) -> f64 {
        let frac = |have: i64, most: i64| {
            if most > 0 {
                have as f64 / most as f64
            } else {
                0.0
            }
        };
        let cap = &node.capacity.allocatable;
        (frac(cap.cpu, self.cpu) + frac(cap.memory, self.memory)) / 2.0
    }
}

/// What a node would have promised after taking one task of the class, as
/// fractions of its allocatable resources.
struct After {
    cpu: f64,
    memory: f64,
    /// `None` on a node without GPUs.
    gpu: Option<f64>,
    /// Whether the class asks for GPUs.
    wants_gpu: bool,
}

impl After {
    fn of(node: &NodeView, class: &Class) -> After {
        let cap = &node.capacity.allocatable;
        let used = node.prod.plus(&node.batch).plus(&class.asked);
        let frac = |used: i64, cap: i64| {
            if cap > 0 {
                used as f64 / cap as f64
            } else {
                1.0
            }
        };
        let gpus = cap.extended("gpu");
        After {
            cpu: frac(used.cpu, cap.cpu),
            memory: frac(used.memory, cap.memory),
            gpu: (gpus > 0).then(|| frac(used.extended("gpu"), gpus)),
            wants_gpu: class.asked.extended("gpu") > 0,
        }
    }

    /// How full the node is in the resources the task asks for.
    fn fullness(&self) -> f64 {
        match self.gpu {
            Some(g) if self.wants_gpu => (self.cpu + self.memory + g) / 3.0,
            _ => (self.cpu + self.memory) / 2.0,
        }
    }

    /// CPU and memory out of step with each other.
    fn imbalance(&self) -> f64 {
        (self.cpu - self.memory).abs()
    }

    /// The share of the node's GPUs left free that its free CPU or memory
    /// could no longer feed (at the node's own ratio): GPUs nobody can use.
    fn stranded_gpu(&self) -> f64 {
        let Some(g) = self.gpu else { return 0.0 };
        let free_gpu = 1.0 - g;
        let free_host = (1.0 - self.cpu).min(1.0 - self.memory);
        (free_gpu - free_host).max(0.0)
    }

    /// The share of the freer of CPU and memory that the other no longer
    /// matches: 0 when both are equally free, 1 when one is gone and the
    /// other is not. Unlike `imbalance` it grows as the node fills, where
    /// stranding is for good.
    fn stranded_host(&self) -> f64 {
        let (cpu, memory) = (1.0 - self.cpu, 1.0 - self.memory);
        let freer = cpu.max(memory);
        if freer > 0.0 {
            (freer - cpu.min(memory)) / freer
        } else {
            0.0
        }
    }

    /// For a CPU-only task: the share of the node's GPUs still idle, which
    /// the task's CPU and memory would rather leave to GPU tasks.
    fn idle_gpu(&self) -> f64 {
        match self.gpu {
            Some(g) if !self.wants_gpu => 1.0 - g,
            _ => 0.0,
        }
    }
}

/// The node's score for a task of `class` under `policy`; `index` is the
/// node's position in name order (first fit prefers the lowest).
pub fn score(
    policy: Policy,
    node: &NodeView,
    class: &Class,
    index: usize,
    largest: &Largest,
) -> f64 {
    let after = After::of(node, class);
    let held = node.prod.plus(&node.batch);
    let opening = if held.cpu == 0 && held.memory == 0 {
        largest.size(node)
    } else {
        0.0
    };
    let penalty = BALANCE_WEIGHT * after.imbalance() + GPU_WASTE_WEIGHT * after.idle_gpu();
    match policy {
        Policy::Binpack => {
            after.fullness()
                - penalty
                - STRANDED_HOST_WEIGHT * after.stranded_host()
                - STRANDED_GPU_WEIGHT * after.stranded_gpu()
                - OPENING_WEIGHT * opening
        }
        Policy::Spread => (1.0 - after.fullness()) - penalty,
        Policy::Firstfit => -(index as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::{class, view};
    use berth_proto::pb;

    /// No size reference: opening a node costs nothing.
    const NONE: Largest = Largest { cpu: 0, memory: 0 };

    #[test]
    fn binpack_keeps_the_largest_nodes_whole() {
        // Two empty nodes, both able to take the task: binpack starts on
        // the smaller one.
        let c = class(pb::Tier::Batch, 1000, "");
        let small = view("a", 8000, &[]);
        let mut big = view("b", 16_000, &[]);
        big.capacity.allocatable.memory = 128 << 30;
        let largest = Largest::of([&small, &big]);
        assert!(
            score(Policy::Binpack, &small, &c, 0, &largest)
                > score(Policy::Binpack, &big, &c, 1, &largest)
        );
    }

    #[test]
    fn binpack_prefers_the_fuller_node_spread_the_emptier() {
        let c = class(pb::Tier::Batch, 1000, "");
        let mut full = view("a", 8000, &[]);
        full.batch.cpu = 6000;
        full.batch.memory = 48 << 30;
        let empty = view("b", 8000, &[]);
        assert!(
            score(Policy::Binpack, &full, &c, 0, &NONE)
                > score(Policy::Binpack, &empty, &c, 1, &NONE)
        );
        assert!(
            score(Policy::Spread, &full, &c, 0, &NONE)
                < score(Policy::Spread, &empty, &c, 1, &NONE)
        );
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
            score(Policy::Binpack, &balanced, &c, 1, &NONE)
                > score(Policy::Binpack, &lopsided, &c, 0, &NONE)
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
            score(Policy::Binpack, &cpu_node, &c, 1, &NONE)
                > score(Policy::Binpack, &gpu_node, &c, 0, &NONE)
        );
    }

    #[test]
    fn binpack_leaves_cpu_for_free_gpus() {
        // A GPU task: on the CPU-heavy node it would leave GPUs free with
        // almost no CPU to feed them; on the other, nothing is stranded.
        let mut c = class(pb::Tier::Batch, 10_000, "");
        c.asked.extended.insert("gpu".into(), 1);
        let gpu_node = |name: &str, cpu_used: i64| {
            let mut n = view(name, 96_000, &[]);
            n.capacity.allocatable.extended.insert("gpu".into(), 8);
            n.batch.cpu = cpu_used;
            n.batch.extended.insert("gpu".into(), 4);
            n
        };
        let cpu_heavy = gpu_node("a", 80_000);
        let light = gpu_node("b", 20_000);
        assert!(
            score(Policy::Binpack, &light, &c, 1, &NONE)
                > score(Policy::Binpack, &cpu_heavy, &c, 0, &NONE)
        );
    }

    #[test]
    fn binpack_does_not_fill_cpu_where_memory_would_be_left() {
        // The first node is fuller (95% CPU, 80% memory after the task),
        // but its last memory would be stranded: four times the CPU left.
        let c = class(pb::Tier::Batch, 1000, "");
        let mut cpu_bound = view("a", 10_000, &[]);
        cpu_bound.batch.cpu = 8_500;
        cpu_bound.batch.memory = 51 << 30;
        let mut even = view("b", 10_000, &[]);
        even.batch.cpu = 6_000;
        even.batch.memory = 45 << 30;
        assert!(
            score(Policy::Binpack, &even, &c, 1, &NONE)
                > score(Policy::Binpack, &cpu_bound, &c, 0, &NONE)
        );
    }

    #[test]
    fn firstfit_prefers_the_first_node() {
        let c = class(pb::Tier::Batch, 1000, "");
        let n = view("a", 8000, &[]);
        assert!(
            score(Policy::Firstfit, &n, &c, 0, &NONE) > score(Policy::Firstfit, &n, &c, 5, &NONE)
        );
    }
}
