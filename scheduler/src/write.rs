//! Sending the scheduler's decisions: writes grouped so that what belongs
//! together (evictions and the bind they make room for; the delete and
//! create of a replacement) shares one batch, batches sent with the Batch
//! RPC, and every answer taken into the cluster view at once.

use berth_proto::connect::BerthClient;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::pb::batch_op::Op;
use berth_proto::pb::batch_result::Result as Answer;

use futures::StreamExt;

use crate::state::{ClusterState, JobKey};

/// One write.
#[derive(Debug, Clone)]
pub enum Write {
    /// Create an object that must not exist yet.
    Create(pb::Object),
    /// Delete at exactly this version.
    Delete { key: ObjectKey, version: u64 },
    /// Write an object's status (a non-zero version is a precondition).
    Status(pb::Object),
    /// Bind a task at exactly this version.
    Bind {
        task: ObjectKey,
        node: String,
        version: u64,
    },
}

impl Write {
    fn op(self) -> pb::BatchOp {
        let op = match self {
            Write::Create(object) => Op::Apply(pb::ApplyRequest {
                object: Some(object),
                create_only: true,
            }),
            Write::Delete { key, version } => Op::Delete(pb::DeleteRequest {
                kind: key.kind as i32,
                namespace: key.namespace,
                name: key.name,
                resource_version: version,
            }),
            Write::Status(object) => Op::UpdateStatus(pb::UpdateStatusRequest {
                object: Some(object),
            }),
            Write::Bind {
                task,
                node,
                version,
            } => Op::Bind(pb::BindRequest {
                namespace: task.namespace,
                task: task.name,
                node,
                resource_version: version,
            }),
        };
        pb::BatchOp { op: Some(op) }
    }
}

/// Evicting a task: its status says Preempted and why (at the version the
/// decision saw, so that a task that changed meanwhile is left alone), and an
/// Event records it. The reconciler then replaces the task.
pub fn evict(victim: &pb::Object, reason: &str, message: String, now_ms: i64) -> Vec<Write> {
    let mut preempted = victim.clone();
    if let Some(pb::object::Kind::Task(task)) = &mut preempted.kind {
        let status = task.status.get_or_insert_with(Default::default);
        status.phase = pb::TaskPhase::Preempted as i32;
        status.message = message.clone();
        status.finished_at_ms = now_ms;
    }
    vec![
        Write::Status(preempted),
        Write::Create(berth_proto::object::task_warning(
            victim,
            reason,
            message,
            "berth-scheduler",
            now_ms,
        )),
    ]
}

/// What a round of writes achieved.
#[derive(Debug, Default)]
pub struct Report {
    pub written: usize,
    pub failed: usize,
    /// Tasks whose bind was refused (the view was stale): they wait a little.
    pub refused_binds: Vec<ObjectKey>,
    /// Jobs one of whose tasks could not be created (placed on a node that
    /// turned out full, or already there): reconciled again a little later.
    pub refused_creates: Vec<JobKey>,
    /// Binds and creates with a node set that were accepted (metrics).
    pub binds: u64,
    /// Binds and creates with a node set that were refused (metrics).
    pub bind_conflicts: u64,
    /// Evictions (Preempted status writes) that were accepted (metrics).
    pub evicted: u64,
}

impl Report {
    /// Adds up another round's report.
    pub fn merge(&mut self, other: Report) {
        self.written += other.written;
        self.failed += other.failed;
        self.refused_binds.extend(other.refused_binds);
        self.refused_creates.extend(other.refused_creates);
        self.binds += other.binds;
        self.bind_conflicts += other.bind_conflicts;
        self.evicted += other.evicted;
    }
}

/// Batches in flight at once: the apiserver commits concurrent batches
/// together, so a few in flight keep its log busy.
const IN_FLIGHT: usize = 4;

/// What to do with the answer to one write.
enum Answering {
    Upsert,
    /// A status write that evicts the task (Preempted).
    Evict,
    /// A delete: gone as of the batch's revision.
    Remove,
    Bind(ObjectKey),
    /// A create; the job of a task, and whether it names a node (a bind).
    Create {
        job: Option<JobKey>,
        placed: bool,
    },
}

impl Answering {
    fn of(write: &Write) -> Answering {
        match write {
            Write::Delete { .. } => Answering::Remove,
            Write::Bind { task, .. } => Answering::Bind(task.clone()),
            Write::Create(object) => {
                let task = object.as_task();
                Answering::Create {
                    job: task
                        .and_then(|t| t.spec.as_ref())
                        .map(|s| (object.namespace().to_string(), s.job.clone())),
                    placed: task.and_then(|t| t.holding_node()).is_some(),
                }
            }
            Write::Status(object) => {
                let phase = object.as_task().and_then(|t| t.status.as_ref());
                if phase.is_some_and(|s| s.phase() == pb::TaskPhase::Preempted) {
                    Answering::Evict
                } else {
                    Answering::Upsert
                }
            }
        }
    }
}

/// Sends `groups` of writes, at most `max` per batch (a group is never
/// split), a few batches at a time, and takes every answer into `state`.
pub async fn send(
    client: &BerthClient,
    groups: Vec<Vec<Write>>,
    max: usize,
    state: &mut ClusterState,
) -> Report {
    let mut batches: Vec<Vec<Write>> = Vec::new();
    let mut chunk: Vec<Write> = Vec::new();
    for group in groups {
        if !chunk.is_empty() && chunk.len() + group.len() > max.max(1) {
            batches.push(std::mem::take(&mut chunk));
        }
        chunk.extend(group);
    }
    if !chunk.is_empty() {
        batches.push(chunk);
    }
    let mut answers = futures::stream::iter(batches.into_iter().map(|writes| {
        let answering: Vec<Answering> = writes.iter().map(Answering::of).collect();
        let ops = writes.into_iter().map(Write::op).collect();
        async move { (answering, client.batch(ops).await) }
    }))
    .buffered(IN_FLIGHT);
    let mut report = Report::default();
    while let Some((answering, response)) = answers.next().await {
        take_answers(answering, response, state, &mut report);
    }
    report
}

fn take_answers(
    answering: Vec<Answering>,
    response: Result<pb::BatchResponse, tonic::Status>,
    state: &mut ClusterState,
    report: &mut Report,
) {
    let response = match response {
        Ok(response) => response,
        Err(status) => {
            tracing::warn!(error = %status.message(), writes = answering.len(), "a batch of writes failed");
            report.failed += answering.len();
            return;
        }
    };
    let revision = response.revision;
    for (answering, result) in answering.into_iter().zip(response.results) {
        match result.result {
            Some(Answer::Object(object)) => {
                report.written += 1;
                match answering {
                    Answering::Remove => state.remove_key(object.key(), revision),
                    Answering::Bind(_) | Answering::Create { placed: true, .. } => {
                        report.binds += 1;
                        state.upsert(object);
                    }
                    Answering::Evict => {
                        report.evicted += 1;
                        state.upsert(object);
                    }
                    _ => state.upsert(object),
                }
            }
            Some(Answer::Error(error)) => {
                report.failed += 1;
                tracing::debug!(code = error.code, error = %error.message, "write refused");
                match answering {
                    Answering::Bind(task) => {
                        report.bind_conflicts += 1;
                        report.refused_binds.push(task);
                    }
                    Answering::Create { job, placed } => {
                        if placed {
                            report.bind_conflicts += 1;
                        }
                        if let Some(job) = job {
                            report.refused_creates.push(job);
                        }
                    }
                    _ => {}
                }
            }
            None => report.failed += 1,
        }
    }
}
