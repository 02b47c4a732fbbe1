//! The job reconciler: from a job and its tasks, the writes that make the
//! tasks match the spec. A pure function of what it is given — run it twice
//! on the same view and it asks for the same writes.
//!
//! - one task per index `0..replicas`, named `<job>-<index>`; missing ones
//!   are created, extra ones deleted;
//! - a task that ended is replaced (deleted and created again with the next
//!   incarnation) when its restart policy says so: Lost, Preempted and
//!   Killed tasks always and at once, Failed ones unless the policy is
//!   Never, after an exponential backoff;
//! - a template change rolls out: old tasks are replaced while at most
//!   `maxUnavailable` tasks are not running, with up to `maxSurge` extra
//!   new tasks (at indexes `replicas..`) standing in meanwhile;
//! - the job's status counts its tasks; a batch job whose tasks all
//!   succeeded has succeeded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::pb::{self, object::Kind as Body};

use crate::state::{ClusterState, JobKey};
use crate::write::Write;

/// Label every task carries: the name of its job.
pub const JOB_LABEL: &str = "berth.dev/job";

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before the incarnation after `incarnation` may start.
    pub fn delay(&self, incarnation: u64) -> Duration {
        let doublings = incarnation.saturating_sub(1).min(20) as u32;
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// What reconciling a job asks for.
#[derive(Debug, Default)]
pub struct Plan {
    /// Groups of writes (a replacement's delete and create travel together).
    pub writes: Vec<Vec<Write>>,
    /// When to look at the job again (a backoff running out), in Unix ms.
    pub wake_at_ms: Option<i64>,
}

fn phase(task: &pb::Task) -> pb::TaskPhase {
    task.status
        .as_ref()
        .map_or(pb::TaskPhase::Pending, |s| s.phase())
}

/// The task's spec, without copying it.
fn task_spec(task: &pb::Task) -> &pb::TaskSpec {
    static EMPTY: std::sync::OnceLock<pb::TaskSpec> = std::sync::OnceLock::new();
    task.spec
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(pb::TaskSpec::default))
}

/// Placeholder for an object in the task map that is not a task (never
/// happens: the map is keyed by kind).
fn task_of(object: &pb::Object) -> &pb::Task {
    static EMPTY: std::sync::OnceLock<pb::Task> = std::sync::OnceLock::new();
    object
        .as_task()
        .unwrap_or_else(|| EMPTY.get_or_init(pb::Task::default))
}

/// The task for index `index` of `job`, incarnation `incarnation`.
pub fn new_task(job: &pb::Job, index: u32, incarnation: u64) -> pb::Object {
    let meta = job.metadata.clone().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let mut labels = meta.labels.clone();
    labels.insert(JOB_LABEL.to_string(), meta.name.clone());
    pb::Object::from(pb::Task {
        metadata: Some(pb::ObjectMeta {
            name: format!("{}-{index}", meta.name),
            namespace: meta.namespace.clone(),
            labels,
            ..Default::default()
        }),
        spec: Some(pb::TaskSpec {
            job: meta.name,
            index,
            incarnation,
            tier: spec.tier,
            priority: spec.priority,
            template: spec.template,
            constraints: spec.constraints,
            job_generation: meta.generation,
            spread: spec.spread,
            max_per_node: spec.max_per_node,
        }),
        status: Some(pb::TaskStatus {
            phase: pb::TaskPhase::Pending as i32,
            ..Default::default()
        }),
    })
}

/// A replacement: the old task goes, the next incarnation comes.
fn replace(job: &pb::Job, old: &Arc<pb::Object>) -> Vec<Write> {
    let task = task_spec(task_of(old));
    vec![
        Write::Delete {
            key: old.key(),
            version: old.resource_version(),
        },
        Write::Create(new_task(job, task.index, task.incarnation + 1)),
    ]
}

/// Reconciles one job; `now_ms` is the wall clock (backoffs compare it with
/// when tasks finished).
pub fn reconcile(state: &ClusterState, key: &JobKey, now_ms: i64, backoff: &Backoff) -> Plan {
    let mut plan = Plan::default();
    let Some(object) = state.jobs.get(key) else {
        return plan; // deleted: the apiserver deleted its tasks with it
    };
    let Some(job) = object.as_job() else {
        return plan;
    };
    let spec = job.spec.clone().unwrap_or_default();
    let generation = job.metadata.as_ref().map_or(0, |m| m.generation);
    let replicas = spec.replicas;
    let restart = spec
        .template
        .as_ref()
        .map_or(pb::RestartPolicy::Always, |t| t.restart_policy());
    let batch_job = spec.tier() == pb::Tier::Batch;

    let mut by_index: BTreeMap<u32, Arc<pb::Object>> = BTreeMap::new();
    for task in state.tasks_of(key) {
        if let Some(t) = task.as_task() {
            by_index.insert(spec_index(t), task.clone());
        }
    }

    let mut counts = pb::JobStatus {
        desired: replicas,
        ..Default::default()
    };
    let mut old_running = Vec::new();
    let mut old_idle = Vec::new();
    let mut available = 0u32;
    let mut final_failure = false;

    for index in 0..replicas {
        let Some(object) = by_index.get(&index) else {
            plan.writes
                .push(vec![Write::Create(new_task(job, index, 1))]);
            counts.pending += 1;
            continue;
        };
        let task = task_of(object);
        let finished_at_ms = task.status.as_ref().map_or(0, |s| s.finished_at_ms);
        match phase(task) {
            pb::TaskPhase::Succeeded if restart == pb::RestartPolicy::Always => {
                plan.writes.push(replace(job, object));
                counts.pending += 1;
            }
            pb::TaskPhase::Succeeded => counts.succeeded += 1,
            pb::TaskPhase::Failed if restart == pb::RestartPolicy::Never => {
                counts.failed += 1;
                final_failure = true;
            }
            pb::TaskPhase::Failed => {
                let incarnation = task_spec(task).incarnation.max(1);
                let finished = if finished_at_ms > 0 {
                    finished_at_ms
                } else {
                    now_ms
                };
                let due = finished + backoff.delay(incarnation).as_millis() as i64;
                if due <= now_ms {
                    plan.writes.push(replace(job, object));
                } else {
                    plan.wake_at_ms = Some(plan.wake_at_ms.map_or(due, |w| w.min(due)));
                }
                counts.pending += 1;
            }
            pb::TaskPhase::Lost | pb::TaskPhase::Preempted | pb::TaskPhase::Killed => {
                plan.writes.push(replace(job, object));
                counts.pending += 1;
            }
            p => {
                let running = p == pb::TaskPhase::Running;
                if running {
                    counts.running += 1;
                    available += 1;
                } else {
                    counts.pending += 1;
                }
                if !is_current(task_spec(task), &spec) {
                    if running {
                        old_running.push(object.clone());
                    } else {
                        old_idle.push(object.clone());
                    }
                }
            }
        }
    }

    // Tasks beyond the replica count: surge stand-ins during a rollout,
    // extras after a scale-down.
    let rolling = !old_running.is_empty() || !old_idle.is_empty();
    let mut surge_live = 0u32;
    for object in by_index.range(replicas..).map(|(_, object)| object) {
        let task = task_of(object);
        let terminal = phase(task).is_terminal();
        if rolling && !terminal && is_current(task_spec(task), &spec) {
            surge_live += 1;
            if phase(task) == pb::TaskPhase::Running {
                available += 1;
            }
            continue;
        }
        plan.writes.push(vec![Write::Delete {
            key: object.key(),
            version: object.resource_version(),
        }]);
    }

    if rolling {
        let (max_unavailable, max_surge) = rollout_limits(&spec, replicas);
        // Stand-ins first, while there is room to surge.
        let wanted_surge = max_surge.min((old_running.len() + old_idle.len()) as u32);
        let mut next_surge = replicas;
        while surge_live < wanted_surge {
            while by_index.contains_key(&next_surge) {
                next_surge += 1;
            }
            plan.writes
                .push(vec![Write::Create(new_task(job, next_surge, 1))]);
            surge_live += 1;
            next_surge += 1;
        }
        // Old tasks that are not running cost no availability to replace.
        for object in &old_idle {
            plan.writes.push(replace(job, object));
        }
        // Running old tasks: only while enough stay available.
        let floor = replicas.saturating_sub(max_unavailable);
        for object in &old_running {
            if available <= floor {
                break;
            }
            plan.writes.push(replace(job, object));
            available -= 1;
        }
    }

    counts.phase = if batch_job && counts.succeeded == replicas {
        pb::JobPhase::Succeeded
    } else if batch_job && final_failure {
        pb::JobPhase::Failed
    } else {
        pb::JobPhase::Running
    } as i32;
    let previous = job.status.unwrap_or_default();
    counts.updated_generation = if rolling {
        previous.updated_generation
    } else {
        generation
    };
    if counts != previous {
        let mut updated = (**object).clone();
        if let Some(Body::Job(j)) = &mut updated.kind {
            j.status = Some(counts);
            if let Some(meta) = j.metadata.as_mut() {
                meta.resource_version = 0; // status is the scheduler's alone
            }
        }
        plan.writes.push(vec![Write::Status(updated)]);
    }
    plan
}

fn spec_index(task: &pb::Task) -> u32 {
    task.spec.as_ref().map_or(0, |s| s.index)
}

/// Whether a task runs what the job's spec asks for now. Only what the task
/// copies from the job counts: scaling the job (a new generation too) rolls
/// nothing out, as in Kubernetes.
fn is_current(task: &pb::TaskSpec, job: &pb::JobSpec) -> bool {
    task.template == job.template
        && task.tier == job.tier
        && task.priority == job.priority
        && task.constraints == job.constraints
        && task.spread == job.spread
        && task.max_per_node == job.max_per_node
}

/// maxUnavailable and maxSurge, defaulted as Kubernetes does: a quarter of
/// the replicas each (unavailable rounded down but at least 1 when no surge
/// is allowed, surge rounded up).
pub fn rollout_limits(spec: &pb::JobSpec, replicas: u32) -> (u32, u32) {
    let update = spec.update.unwrap_or_default();
    let max_surge = update.max_surge.unwrap_or(replicas.div_ceil(4));
    let mut max_unavailable = update.max_unavailable.unwrap_or(replicas / 4);
    if max_unavailable == 0 && max_surge == 0 {
        max_unavailable = 1;
    }
    (max_unavailable, max_surge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterState;

    const NOW: i64 = 1_000_000;

    fn job(
        replicas: u32,
        tier: pb::Tier,
        restart: pb::RestartPolicy,
        generation: u64,
    ) -> pb::Object {
        pb::Object::from(pb::Job {
            metadata: Some(pb::ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                generation,
                resource_version: 1,
                ..Default::default()
            }),
            spec: Some(pb::JobSpec {
                tier: tier as i32,
                replicas,
                template: Some(pb::TaskTemplate {
                    image: "app".into(),
                    resources: Some(pb::Resources {
                        cpu_millis: 100,
                        memory_bytes: 1,
                        ..Default::default()
                    }),
                    restart_policy: restart as i32,
                    ..Default::default()
                }),
                update: Some(pb::UpdateStrategy {
                    max_unavailable: Some(1),
                    max_surge: Some(1),
                }),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn task_at(
        job: &pb::Object,
        index: u32,
        phase: pb::TaskPhase,
        generation: u64,
        rv: u64,
    ) -> pb::Object {
        let mut task = new_task(job.as_job().unwrap(), index, 1);
        if let Some(Body::Task(t)) = &mut task.kind {
            t.spec.as_mut().unwrap().job_generation = generation;
            let status = t.status.as_mut().unwrap();
            status.phase = phase as i32;
            status.node = "n1".into();
            status.finished_at_ms = NOW - 500;
        }
        task.metadata_mut().unwrap().resource_version = rv;
        task
    }

    fn state(job: pb::Object, tasks: Vec<pb::Object>) -> ClusterState {
        let mut s = ClusterState::default();
        s.upsert(job);
        for t in tasks {
            s.upsert(t);
        }
        s
    }

    fn key() -> JobKey {
        ("default".into(), "web".into())
    }

    fn backoff() -> Backoff {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.writes
            .iter()
            .flatten()
            .map(|w| match w {
                Write::Create(o) => format!("create {}", o.name()),
                Write::Delete { key, .. } => format!("delete {}", key.name),
                Write::Status(o) if o.kind() == pb::Kind::Job => "job status".to_string(),
                Write::Status(o) => format!("status {}", o.name()),
                Write::Bind { task, .. } => format!("bind {}", task.name),
            })
            .collect()
    }

    #[test]
    fn creates_missing_tasks_and_deletes_extra_ones() {
        let j = job(3, pb::Tier::Prod, pb::RestartPolicy::Always, 1);
        let extra = task_at(&j, 5, pb::TaskPhase::Running, 1, 3);
        let s = state(
            j.clone(),
            vec![task_at(&j, 1, pb::TaskPhase::Running, 1, 2), extra],
        );
        let plan = reconcile(&s, &key(), NOW, &backoff());
        assert_eq!(
            summary(&plan),
            vec!["create web-0", "create web-2", "delete web-5", "job status"]
        );
    }

    #[test]
    fn replacements_follow_the_restart_policy_with_backoff() {
        let j = job(4, pb::Tier::Batch, pb::RestartPolicy::OnFailure, 1);
        let s = state(
            j.clone(),
            vec![
                task_at(&j, 0, pb::TaskPhase::Succeeded, 1, 2),
                task_at(&j, 1, pb::TaskPhase::Failed, 1, 3),
                task_at(&j, 2, pb::TaskPhase::Lost, 1, 4),
                task_at(&j, 3, pb::TaskPhase::Preempted, 1, 5),
            ],
        );
        // Failed 500ms ago: the first backoff (1s) is not over.
        let plan = reconcile(&s, &key(), NOW, &backoff());
        assert_eq!(
            summary(&plan),
            vec![
                "delete web-2",
                "create web-2",
                "delete web-3",
                "create web-3",
                "job status"
            ]
        );
        assert_eq!(plan.wake_at_ms, Some(NOW + 500));
        let later = reconcile(&s, &key(), NOW + 600, &backoff());
        assert!(summary(&later).contains(&"create web-1".to_string()));
        // The replacement is the next incarnation.
        let created = later.writes.iter().flatten().find_map(|w| match w {
            Write::Create(o) if o.name() == "web-1" => o.as_task().cloned(),
            _ => None,
        });
        assert_eq!(created.unwrap().spec.unwrap().incarnation, 2);
    }

    #[test]
    fn a_batch_job_succeeds_when_its_tasks_do() {
        let j = job(2, pb::Tier::Batch, pb::RestartPolicy::Never, 1);
        let s = state(
            j.clone(),
            vec![
                task_at(&j, 0, pb::TaskPhase::Succeeded, 1, 2),
                task_at(&j, 1, pb::TaskPhase::Succeeded, 1, 3),
            ],
        );
        let plan = reconcile(&s, &key(), NOW, &backoff());
        let status = plan.writes.iter().flatten().find_map(|w| match w {
            Write::Status(o) => o.as_job().and_then(|j| j.status),
            _ => None,
        });
        assert_eq!(status.unwrap().phase(), pb::JobPhase::Succeeded);
        // A task that failed with policy Never fails the job.
        let s = state(
            j.clone(),
            vec![
                task_at(&j, 0, pb::TaskPhase::Succeeded, 1, 2),
                task_at(&j, 1, pb::TaskPhase::Failed, 1, 3),
            ],
        );
        let plan = reconcile(&s, &key(), NOW, &backoff());
        assert!(!summary(&plan).iter().any(|w| w.starts_with("create")));
    }

    #[test]
    fn a_rollout_keeps_availability_and_surges() {
        // Generation 2 replaces a template of generation 1; three running.
        let j = job(3, pb::Tier::Prod, pb::RestartPolicy::Always, 2);
        let old: Vec<_> = (0..3)
            .map(|i| {
                let mut t = task_at(&j, i, pb::TaskPhase::Running, 1, 2 + i as u64);
                if let Some(Body::Task(t)) = &mut t.kind {
                    t.spec.as_mut().unwrap().template.as_mut().unwrap().image = "app:old".into();
                }
                t
            })
            .collect();
        let s = state(j.clone(), old.clone());
        let plan = reconcile(&s, &key(), NOW, &backoff());
        // One surge stand-in, and one old task replaced (3 running, floor 2).
        assert_eq!(
            summary(&plan),
            vec!["create web-3", "delete web-0", "create web-0", "job status"]
        );
        // Once every index runs the new generation, the stand-in goes.
        let mut done: Vec<_> = (0..3)
            .map(|i| task_at(&j, i, pb::TaskPhase::Running, 2, 10 + i as u64))
            .collect();
        done.push(task_at(&j, 3, pb::TaskPhase::Running, 2, 20));
        let s = state(j, done);
        let plan = reconcile(&s, &key(), NOW, &backoff());
        assert_eq!(summary(&plan), vec!["delete web-3", "job status"]);
    }

    #[test]
    fn scaling_rolls_nothing_out() {
        // Generation 2 only changed the replica count.
        let j = job(4, pb::Tier::Prod, pb::RestartPolicy::Always, 2);
        let tasks: Vec<_> = (0..3)
            .map(|i| task_at(&j, i, pb::TaskPhase::Running, 1, 2 + i as u64))
            .collect();
        let s = state(j, tasks);
        let plan = reconcile(&s, &key(), NOW, &backoff());
        assert_eq!(summary(&plan), vec!["create web-3", "job status"]);
    }

    #[test]
    fn limits_default_as_kubernetes_does() {
        let spec = pb::JobSpec::default();
        assert_eq!(rollout_limits(&spec, 8), (2, 2));
        assert_eq!(rollout_limits(&spec, 1), (0, 1));
    }
}
