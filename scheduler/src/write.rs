//! Sending the scheduler's decisions: writes grouped so that what belongs
//! together (evictions and the bind they make room for; the delete and
//! create of a replacement) shares one batch, batches sent with the Batch
//! RPC, and every answer taken into the cluster view at once.

use berth_proto::connect::BerthClient;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::pb::batch_op::Op;
use berth_proto::pb::batch_result::Result as Answer;

use crate::state::ClusterState;

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

    fn is_delete(&self) -> bool {
        matches!(self, Write::Delete { .. })
    }
}

/// Evicting a task: its status says Preempted and why (at the version the
/// decision saw, so that a task that changed meanwhile is left alone), and an
/// Event records it. The reconciler then replaces the task.
pub fn evict(victim: &pb::Object, reason: &str, message: String, now_ms: i64) -> Vec<Write> {
    let mut preempted = victim.clone();
    let mut incarnation = 0;
    if let Some(pb::object::Kind::Task(task)) = &mut preempted.kind {
        incarnation = task.spec.as_ref().map_or(0, |s| s.incarnation);
        let status = task.status.get_or_insert_with(Default::default);
        status.phase = pb::TaskPhase::Preempted as i32;
        status.message = message.clone();
        status.finished_at_ms = now_ms;
    }
    vec![
        Write::Status(preempted),
        Write::Create(event(victim, reason, message, incarnation, now_ms)),
    ]
}

/// A warning Event about a task, named after the task's incarnation and
/// the reason (one such event per incarnation).
fn event(
    task: &pb::Object,
    reason: &str,
    message: String,
    incarnation: u64,
    now_ms: i64,
) -> pb::Object {
    pb::Object::from(pb::Event {
        metadata: Some(pb::ObjectMeta {
            name: format!(
                "{}.{incarnation}.{}",
                task.name(),
                reason.to_ascii_lowercase()
            ),
            namespace: task.namespace().to_string(),
            ..Default::default()
        }),
        involved: Some(pb::ObjectRef {
            kind: pb::Kind::Task as i32,
            namespace: task.namespace().to_string(),
            name: task.name().to_string(),
            uid: task.metadata().map(|m| m.uid.clone()).unwrap_or_default(),
        }),
        r#type: pb::EventType::Warning as i32,
        reason: reason.to_string(),
        message,
        source: "berth-scheduler".to_string(),
        time_ms: now_ms,
    })
}

/// What a round of writes achieved.
#[derive(Debug, Default)]
pub struct Report {
    pub written: usize,
    pub failed: usize,
    /// Tasks whose bind was refused (the view was stale): they wait a little.
    pub refused_binds: Vec<ObjectKey>,
}

/// Sends `groups` of writes, at most `max` per batch (a group is never
/// split), and takes every answer into `state`.
pub async fn send(
    client: &BerthClient,
    groups: Vec<Vec<Write>>,
    max: usize,
    state: &mut ClusterState,
) -> Report {
    let mut report = Report::default();
    let mut chunk: Vec<Write> = Vec::new();
    for group in groups {
        if !chunk.is_empty() && chunk.len() + group.len() > max.max(1) {
            flush(client, std::mem::take(&mut chunk), state, &mut report).await;
        }
        chunk.extend(group);
    }
    if !chunk.is_empty() {
        flush(client, chunk, state, &mut report).await;
    }
    report
}

async fn flush(
    client: &BerthClient,
    writes: Vec<Write>,
    state: &mut ClusterState,
    report: &mut Report,
) {
    let kinds: Vec<(bool, Option<ObjectKey>)> = writes
        .iter()
        .map(|w| {
            let bind = match w {
                Write::Bind { task, .. } => Some(task.clone()),
                _ => None,
            };
            (w.is_delete(), bind)
        })
        .collect();
    let response = client
        .batch(writes.into_iter().map(Write::op).collect())
        .await;
    let (results, revision) = match response {
        Ok(response) => (response.results, response.revision),
        Err(status) => {
            tracing::warn!(error = %status.message(), writes = kinds.len(), "a batch of writes failed");
            report.failed += kinds.len();
            return;
        }
    };
    for ((is_delete, bind), result) in kinds.into_iter().zip(results) {
        match result.result {
            Some(Answer::Object(object)) => {
                report.written += 1;
                if is_delete {
                    // The answer is the object as it was; it is gone as of
                    // the batch's revision.
                    state.remove_key(object.key(), revision);
                } else {
                    state.upsert(object);
                }
            }
            Some(Answer::Error(error)) => {
                report.failed += 1;
                tracing::debug!(code = error.code, error = %error.message, "write refused");
                if let Some(task) = bind {
                    report.refused_binds.push(task);
                }
            }
            None => report.failed += 1,
        }
    }
}
