//! The scheduler's Prometheus series (`--metrics-listen`).
//!
//! Handles are atomics shared with the registry: cloning one is cheap, and
//! updating it costs an atomic add. The loop updates them once per cycle or
//! per batch of writes, never per task, so that placing tens of thousands
//! of tasks a second does not notice them.

use berth_proto::metrics::{Counter, Gauge, Histogram, Registry, latency_histogram};

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Tasks waiting for a node, as this scheduler's view has them.
    pub pending_tasks: Gauge,
    /// How long one cycle's placement took (the pure part: classes,
    /// feasibility, scores, preemption), whatever the number of tasks.
    pub placement_seconds: Histogram,
    /// Batch tasks evicted (written Preempted) to make room for prod: by
    /// placement's preemption, or by reclamation when prod takes back what
    /// it reserved. Counted when the apiserver accepts the eviction.
    pub preemptions: Counter,
    /// Binds and creates-with-a-node the apiserver accepted.
    pub binds: Counter,
    /// Binds and creates-with-a-node it refused (a stale version, or the
    /// node was full as of the stored state).
    pub bind_conflicts: Counter,
    /// 1 while this scheduler holds the lease, else 0.
    pub leader: Gauge,
}

impl Default for Metrics {
    /// Handles that no registry serves (an in-process scheduler without
    /// `--metrics-listen`): updating them is as cheap, and harmless.
    fn default() -> Metrics {
        Metrics {
            pending_tasks: Gauge::default(),
            placement_seconds: latency_histogram(),
            preemptions: Counter::default(),
            binds: Counter::default(),
            bind_conflicts: Counter::default(),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    /// The scheduler's series, registered in `registry`. Counters get their
    /// `_total` suffix from the encoder.
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        registry.register(
            "berth_scheduler_pending_tasks",
            "Tasks waiting for a node",
            metrics.pending_tasks.clone(),
        );
        registry.register(
            "berth_scheduler_placement_seconds",
            "Time one scheduling cycle spent placing its tasks",
            metrics.placement_seconds.clone(),
        );
        registry.register(
            "berth_scheduler_preemptions",
            "Tasks evicted to make room for a higher-priority (prod) task",
            metrics.preemptions.clone(),
        );
        registry.register(
            "berth_scheduler_binds",
            "Binds and creates with a node the apiserver accepted",
            metrics.binds.clone(),
        );
        registry.register(
            "berth_scheduler_bind_conflicts",
            "Binds and creates with a node the apiserver refused (stale version or no capacity)",
            metrics.bind_conflicts.clone(),
        );
        registry.register(
            "berth_scheduler_leader",
            "1 while this scheduler holds the lease, else 0",
            metrics.leader.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::metrics::{render, value};

    #[test]
    fn series_have_the_documented_names() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.binds.inc_by(3);
        metrics.leader.set(1);
        metrics.placement_seconds.observe(0.01);
        let text = render(&registry);
        assert_eq!(value(&text, "berth_scheduler_binds_total", ""), Some(3.0));
        assert_eq!(
            value(&text, "berth_scheduler_bind_conflicts_total", ""),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "berth_scheduler_preemptions_total", ""),
            Some(0.0)
        );
        assert_eq!(value(&text, "berth_scheduler_leader", ""), Some(1.0));
        assert_eq!(value(&text, "berth_scheduler_pending_tasks", ""), Some(0.0));
        assert_eq!(
            value(&text, "berth_scheduler_placement_seconds_count", ""),
            Some(1.0)
        );
    }
}
