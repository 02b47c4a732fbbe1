//! The agent's Prometheus series (`--metrics-listen`).
//!
//! Handles are atomics shared with the registry: cheap to clone into the
//! supervisor, the engine and the heartbeat loop, and an atomic add to
//! update. Label sets are static strings, so recording allocates nothing.

use std::time::Instant;

use berth_proto::metrics::{Counter, Family, Gauge, Histogram, Registry, latency_histogram};

use crate::docker::runtime::{Container, ContainerState};

/// One label, `name="value"`, both fixed at compile time.
type Label = [(&'static str, &'static str); 1];

#[derive(Debug, Clone)]
pub struct Metrics {
    /// This node's containers by state (Docker), or the simulated tasks
    /// running (sim: all `state="running"`).
    pub containers: Family<Label, Gauge>,
    /// Latency of each Docker engine call, by operation.
    pub docker_calls: Family<Label, Histogram, fn() -> Histogram>,
    /// Container restarts the agent performed (after an exit, or a
    /// container removed behind its back).
    pub restarts: Counter,
    /// Node heartbeats sent, by result (one per node: a simulated fleet
    /// heartbeats many nodes in one RPC).
    pub heartbeats: Family<Label, Counter>,
}

impl Default for Metrics {
    /// Handles that no registry serves (an in-process agent without
    /// `--metrics-listen`, as `berthctl up` runs one).
    fn default() -> Metrics {
        Metrics {
            containers: Family::default(),
            docker_calls: Family::new_with_constructor(latency_histogram),
            restarts: Counter::default(),
            heartbeats: Family::default(),
        }
    }
}

/// The `state` label of a container state.
fn state_label(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
        ContainerState::Other => "other",
    }
}

impl Metrics {
    /// The agent's series, registered in `registry`. Counters get their
    /// `_total` suffix from the encoder.
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        registry.register(
            "berth_agent_containers",
            "Containers of this agent's node(s) by state (sim: simulated tasks running)",
            metrics.containers.clone(),
        );
        registry.register(
            "berth_agent_docker_call_seconds",
            "Latency of Docker engine calls, by operation",
            metrics.docker_calls.clone(),
        );
        registry.register(
            "berth_agent_restarts",
            "Container restarts the agent performed",
            metrics.restarts.clone(),
        );
        registry.register(
            "berth_agent_heartbeats",
            "Node heartbeats sent, by result",
            metrics.heartbeats.clone(),
        );
        metrics
    }

    /// Records how long a Docker call `op` took since `started`.
    pub fn docker_call(&self, op: &'static str, started: Instant) {
        self.docker_calls
            .get_or_create(&[("op", op)])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Sets the container counts from one list of the node's containers.
    /// Every state is set, to 0 if none, so that none keeps a stale count.
    pub fn set_containers(&self, containers: &[Container]) {
        for state in [
            ContainerState::Created,
            ContainerState::Running,
            ContainerState::Exited,
            ContainerState::Other,
        ] {
            let count = containers.iter().filter(|c| c.state == state).count();
            self.containers
                .get_or_create(&[("state", state_label(state))])
                .set(count as i64);
        }
    }

    /// Sets the running count alone (the simulated runtime has no other).
    pub fn set_running(&self, count: usize) {
        self.containers
            .get_or_create(&[("state", "running")])
            .set(count as i64);
    }

    /// Counts `nodes` heartbeats sent in one RPC, which succeeded or not.
    pub fn heartbeats_sent(&self, nodes: usize, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.heartbeats
            .get_or_create(&[("result", result)])
            .inc_by(nodes as u64);
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
        let container = |state| Container {
            id: String::new(),
            namespace: String::new(),
            task: String::new(),
            uid: String::new(),
            incarnation: 0,
            state,
            ip: None,
            created: 0,
        };
        metrics.set_containers(&[
            container(ContainerState::Running),
            container(ContainerState::Running),
            container(ContainerState::Exited),
        ]);
        metrics.heartbeats_sent(3, true);
        metrics.heartbeats_sent(1, false);
        metrics.restarts.inc();
        metrics.docker_call("start", Instant::now());
        let text = render(&registry);
        let get = |name, labels| value(&text, name, labels);
        assert_eq!(
            get("berth_agent_containers", "state=\"running\""),
            Some(2.0)
        );
        assert_eq!(get("berth_agent_containers", "state=\"exited\""), Some(1.0));
        assert_eq!(
            get("berth_agent_containers", "state=\"created\""),
            Some(0.0)
        );
        assert_eq!(
            get("berth_agent_heartbeats_total", "result=\"ok\""),
            Some(3.0)
        );
        assert_eq!(
            get("berth_agent_heartbeats_total", "result=\"error\""),
            Some(1.0)
        );
        assert_eq!(get("berth_agent_restarts_total", ""), Some(1.0));
        assert_eq!(
            get("berth_agent_docker_call_seconds_count", "op=\"start\""),
            Some(1.0),
            "{text}"
        );
    }
}
