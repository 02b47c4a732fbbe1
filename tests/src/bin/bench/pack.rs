//! Placement alone, in this process: the scheduler's `Placer` over a
//! workload, tasks arriving in submission order a batch at a time, with no
//! apiserver and no network. It isolates what the scoring policy and the
//! placement tricks (equivalence classes, sampling) do to packing and to
//! placement cost. Tasks never end, and preempted victims are not replaced
//! (the reconciler would, in the end-to-end replay): `preempted` counts
//! them apart from `pending`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::pb;
use berth_scheduler::placement::{Decision, Placer, Policy};
use berth_scheduler::reconcile::new_task;
use berth_scheduler::state::ClusterState;

use crate::workload::{Totals, Workload, first_refusal};

pub struct Outcome {
    pub bound: u64,
    pub pending: u64,
    pub preempted: u64,
    /// Time spent in placement.
    pub placing: Duration,
    pub at_first_refusal: Option<Totals>,
    pub at_end: Totals,
}

fn held(state: &ClusterState) -> Totals {
    let mut total = Totals::default();
    for node in state.nodes.values() {
        let sum = node.prod.plus(&node.batch);
        total.add(
            Totals {
                cpu: sum.cpu as f64,
                memory: sum.memory as f64,
                gpu: sum.extended("gpu") as f64,
            },
            1.0,
        );
    }
    total
}

fn with_status(object: &pb::Object, phase: pb::TaskPhase, node: &str, version: u64) -> pb::Object {
    let mut object = object.clone();
    if let Some(pb::object::Kind::Task(t)) = &mut object.kind {
        let status = t.status.get_or_insert_with(Default::default);
        status.phase = phase as i32;
        status.node = node.to_string();
    }
    if let Some(meta) = object.metadata_mut() {
        meta.resource_version = version;
    }
    object
}

/// Which of the placement tricks are on.
#[derive(Debug, Clone, Copy)]
pub struct Tricks {
    /// Feasible nodes examined per class (0: all).
    pub sample: usize,
    /// Equivalence classes (off: every task on its own).
    pub classes: bool,
}

/// Places `workload` with `policy`, `arrival` tasks per round.
pub fn run(workload: &Workload, policy: Policy, tricks: Tricks, arrival: usize) -> Outcome {
    let mut state = ClusterState::default();
    let mut version = 1;
    for node in &workload.nodes {
        state.upsert(pb::Object::from(pb::Node {
            metadata: Some(pb::ObjectMeta {
                name: node.name.clone(),
                resource_version: version,
                ..Default::default()
            }),
            spec: Some(pb::NodeSpec::default()),
            status: Some(pb::NodeStatus {
                allocatable: Some(node.allocatable.clone()),
                labels: node.labels.clone(),
                state: pb::NodeState::Ready as i32,
                ..Default::default()
            }),
        }));
    }
    let tasks: Vec<pb::Object> = workload
        .jobs
        .iter()
        .filter_map(|j| {
            let job = j.as_job()?.clone();
            let replicas = job.spec.as_ref().map_or(0, |s| s.replicas);
            Some(
                (0..replicas)
                    .map(move |i| new_task(&job, i, 1))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();

    let mut outcome = Outcome {
        bound: 0,
        pending: 0,
        preempted: 0,
        placing: Duration::ZERO,
        at_first_refusal: None,
        at_end: Totals::default(),
    };
    for (round, arriving) in tasks.chunks(arrival.max(1)).enumerate() {
        for task in arriving {
            version += 1;
            state.upsert(with_status(task, pb::TaskPhase::Pending, "", version));
        }
        let pending: Vec<Arc<pb::Object>> = state
            .pending
            .iter()
            .filter_map(|k| state.tasks.get(k).cloned())
            .collect();
        let started = Instant::now();
        let mut placer = Placer::new(&state, policy, tricks.sample, round);
        if !tricks.classes {
            placer = placer.without_classes();
        }
        let decisions = placer.place(pending);
        outcome.placing += started.elapsed();
        for decision in decisions {
            match decision {
                Decision::Bind {
                    task,
                    node,
                    victims,
                } => {
                    for victim in victims {
                        version += 1;
                        state.upsert(with_status(
                            &victim,
                            pb::TaskPhase::Preempted,
                            &node,
                            version,
                        ));
                        outcome.preempted += 1;
                    }
                    version += 1;
                    state.upsert(with_status(&task, pb::TaskPhase::Running, &node, version));
                    outcome.bound += 1;
                }
                Decision::Wait { task, .. } => {
                    let job = task
                        .as_task()
                        .and_then(|t| t.spec.as_ref())
                        .map_or("", |s| s.job.as_str());
                    if outcome.at_first_refusal.is_none() && !workload.never_fit.contains(job) {
                        outcome.at_first_refusal = Some(held(&state));
                    }
                }
            }
        }
    }
    outcome.pending = state.pending.len() as u64;
    outcome.at_end = held(&state);
    outcome
}

/// Runs every policy and prints a table.
pub fn compare(
    workload: &Workload,
    policies: &[String],
    tricks: Tricks,
    arrival: usize,
) -> anyhow::Result<()> {
    let sample = tricks.sample;
    println!(
        "{}: {} nodes, {} tasks; placement only (no apiserver), {arrival} tasks arriving per round, sample {}, {}",
        workload.name,
        workload.nodes.len(),
        workload.tasks,
        if sample == 0 {
            "all".to_string()
        } else {
            sample.to_string()
        },
        if tricks.classes {
            "equivalence classes"
        } else {
            "no equivalence classes"
        }
    );
    println!(
        "demand (all tasks / capacity): {}",
        workload.demand.percent_of(&workload.capacity)
    );
    println!(
        "{:<9} {:>8} {:>11} {:>8} {:>10}   {:<34}   allocated at end",
        "policy", "bound", "placing ms", "pending", "preempted", "allocated at first refusal",
    );
    for name in policies {
        let policy = <Policy as clap::ValueEnum>::from_str(name, true)
            .map_err(|e| anyhow::anyhow!("policy {name:?}: {e}"))?;
        let outcome = run(workload, policy, tricks, arrival);
        let first = first_refusal(outcome.at_first_refusal, &workload.capacity);
        println!(
            "{:<9} {:>8} {:>11.0} {:>8} {:>10}   {:<34}   {}",
            name,
            outcome.bound,
            outcome.placing.as_secs_f64() * 1000.0,
            outcome.pending,
            outcome.preempted,
            first,
            outcome.at_end.percent_of(&workload.capacity)
        );
    }
    Ok(())
}
