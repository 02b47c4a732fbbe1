//! The deterministic state machine: applies one [`Command`] at one log index.
//!
//! Given the same objects and the same command at the same index, every
//! replica computes the same result: the command carries everything that is
//! not a function of the state (the proposer's clock, a fresh uid), and maps
//! iterate in key order. A command that breaks a rule against the current
//! state (stale resource_version, quota, missing namespace) is rejected here,
//! at apply time, because only here is the state it is checked against final.
//!
//! A rejected or no-op command changes nothing but the applied index. A
//! command that changes something returns a history record (for watches).
//!
//! Applying writes nothing to disk: the raft log already holds every command
//! durably. The state reaches disk in checkpoints ([`StateMachine::checkpoint`]:
//! the objects changed since the last one, and the index they are current
//! at); after a restart, raft replays the log from that index. This keeps
//! the per-write cost of the store to the log append alone.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use berth_proto::internal::{
    ApplyOp, BindOp, Change, Command, DeleteOp, HistoryRecord, SingleOp, UpdateStatusOp,
    command::Op, single_op,
};
use berth_proto::object::ObjectKey;
use berth_proto::pb::{self, object::Kind as Body};
use berth_proto::quantity::{format_cpu, format_memory};

use crate::allocation::Allocations;
use crate::error::ApiError;
use crate::state::{self, MapKey, Membership, ObjectMap, Snapshot};
use crate::storage::{EncodedObjects, Loaded, SegmentChunks, WriteBatch};
use raft::eraftpb::ConfState;

/// The namespace every cluster has, which cannot be deleted.
pub const DEFAULT_NAMESPACE: &str = berth_proto::defaults::DEFAULT_NAMESPACE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Deleted,
}

/// The result of one applied command.
#[derive(Debug, Clone)]
pub struct Applied {
    pub outcome: Outcome,
    /// The object the command named: as it is now, or as it was when deleted.
    pub object: Arc<pb::Object>,
    /// The revision that holds this result.
    pub revision: u64,
    /// What the command changed, for watchers; `None` when nothing changed.
    pub record: Option<Arc<HistoryRecord>>,
    /// For a batch: each write's result, in order.
    pub batch: Vec<Result<Arc<pb::Object>, ApiError>>,
}

impl Applied {
    fn single(
        outcome: Outcome,
        object: Arc<pb::Object>,
        revision: u64,
        record: Option<Arc<HistoryRecord>>,
    ) -> Applied {
        Applied {
            outcome,
            object,
            revision,
            record,
            batch: Vec::new(),
        }
    }
}

pub struct StateMachine {
    objects: ObjectMap,
    /// The same objects by key, for the point lookups of applying: an
    /// ordered map's lookup compares a dozen keys string by string, this
    /// hashes one. `objects` stays the source of snapshots and scans.
    index: ObjectIndex,
    /// The log index of the last change.
    revision: u64,
    /// The last log index applied, whether it changed anything or not.
    applied: u64,
    membership: Arc<Membership>,
    /// Objects changed since the last checkpoint.
    dirty: HashSet<Arc<ObjectKey>, FastHash>,
    /// Bytes of the records on disk that the changes since the last
    /// checkpoint overwrite or delete (each object's, as of that checkpoint).
    superseded: usize,
    /// What every node promised its tasks (derived from the tasks).
    allocations: Allocations,
    /// What the jobs of each namespace and tier ask for (derived from the
    /// jobs), so that a quota check does not add up every job per write.
    demands: JobDemands,
}

/// Hashing for keys of the state machine's own maps (seeded per process).
type FastHash = foldhash::fast::RandomState;

type ObjectIndex = HashMap<Arc<ObjectKey>, Arc<pb::Object>, FastHash>;

fn index_of(objects: &ObjectMap) -> ObjectIndex {
    objects
        .iter()
        .map(|(key, object)| (key.shared().clone(), object.clone()))
        .collect()
}

/// The state machine's changes since the previous checkpoint.
pub struct Checkpoint {
    pub applied: u64,
    pub revision: u64,
    pub members: berth_proto::internal::Members,
    objects: ObjectMap,
    /// What changed, as of `applied`: the object, or `None` if deleted
    /// (looked up by the raft loop in its hash index, which is cheaper than
    /// the ordered map the checkpoint thread would search).
    dirty: Vec<(Arc<ObjectKey>, Option<Arc<pb::Object>>)>,
    /// Bytes of earlier segments' records that these changes overwrite or
    /// delete.
    superseded: usize,
}

/// A segment's size, and how much of the store it makes dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSize {
    pub bytes: usize,
    /// Bytes of records on disk that only a full segment would drop: those
    /// of earlier segments that this one overwrites or deletes, and this
    /// one's deletion records themselves.
    pub dead_bytes: usize,
}

impl Checkpoint {
    /// Adds to `batch` the objects to store — all of them (`full`) or what
    /// changed — as the chunks of a segment, which a restart ignores until
    /// the bookkeeping reaches its index; returns its size in bytes. Encoded
    /// field by field from the shared objects: a full segment of every
    /// object must not copy them all first.
    ///
    /// Objects found in `encoded` (the history records stored with this
    /// checkpoint) are copied from there rather than encoded again.
    pub fn put_segment(
        &self,
        full: bool,
        batch: &mut WriteBatch,
        encoded: &EncodedObjects,
    ) -> SegmentSize {
        let mut segment = SegmentChunks::new(batch, self.applied, full);
        let mut dead_bytes = 0;
        if full {
            for object in self.objects.values() {
                segment.put_shared(object, encoded);
            }
        } else {
            dead_bytes = self.superseded;
            for (key, object) in &self.dirty {
                match object {
                    Some(object) => segment.put_shared(object, encoded),
                    None => dead_bytes += segment.delete(key),
                }
            }
        }
        SegmentSize {
            bytes: segment.finish(),
            dead_bytes,
        }
    }

    /// Drops the objects a full segment would need, for a delta.
    pub fn forget_objects(&mut self) {
        self.objects = ObjectMap::default();
    }

    /// The index, revision and members the segment brings the store to
    /// (to be written atomically, after the segment).
    pub fn put_bookkeeping(&self, batch: &mut WriteBatch) {
        batch.put_revision(self.revision);
        batch.put_applied(self.applied);
        batch.put_members(&self.members);
    }
}

/// What a command will change, computed before anything is written.
struct Plan {
    outcome: Outcome,
    subject: Arc<pb::Object>,
    puts: Vec<Arc<pb::Object>>,
    deletes: Vec<ObjectKey>,
    changes: Vec<Change>,
}

impl StateMachine {
    /// The state machine as storage holds it; `conf_state` is raft's, as of
    /// the applied index.
    pub fn new(loaded: Loaded, conf_state: ConfState) -> StateMachine {
        let objects: ObjectMap = loaded
            .objects
            .into_iter()
            .map(|o| (MapKey::new(Arc::new(o.key())), Arc::new(o)))
            .collect();
        StateMachine {
            allocations: Allocations::build(objects.iter().map(|(k, o)| (k.shared(), o))),
            demands: JobDemands::build(objects.values()),
            index: index_of(&objects),
            objects,
            revision: loaded.revision,
            applied: loaded.applied,
            membership: Arc::new(Membership::from_record(&loaded.members, conf_state)),
            dirty: HashSet::default(),
            superseded: 0,
        }
    }

    /// The revision of the last applied change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The last applied log index.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.index.contains_key(key)
    }

    /// The current object at `key`.
    fn get(&self, key: &ObjectKey) -> Option<&Arc<pb::Object>> {
        self.index.get(key)
    }

    /// A view of the current objects.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            applied: self.applied,
            objects: self.objects.clone(),
            membership: self.membership.clone(),
        }
    }

    /// Applies `command`, the entry at `index`. The index counts as applied
    /// whatever the outcome: a rejected command is a deterministic no-op on
    /// every replica.
    pub fn apply(&mut self, index: u64, command: Command) -> Result<Applied, ApiError> {
        self.advance(index);
        let time_ms = command.time_ms;
        let plan = match command.op {
            None => return Err(ApiError::InvalidArgument("empty command".into())),
            Some(Op::Apply(op)) => self.plan_apply(index, time_ms, Cow::Owned(op))?,
            Some(Op::UpdateStatus(op)) => self.plan_update_status(index, &op)?,
            Some(Op::Delete(op)) => self.plan_delete(index, &op)?,
            Some(Op::Batch(ops)) => return Ok(self.apply_batch(index, time_ms, ops.ops)),
        };
        if plan.outcome == Outcome::Unchanged {
            return Ok(Applied::single(
                plan.outcome,
                plan.subject,
                self.revision,
                None,
            ));
        }
        let (outcome, subject) = (plan.outcome, plan.subject.clone());
        let mut changes = Vec::new();
        self.commit(plan, &mut changes);
        Ok(Applied::single(
            outcome,
            subject,
            index,
            Some(self.record(index, changes)),
        ))
    }

    /// Applies each write of a batch in order, each against the state the
    /// ones before it left; all changes share the revision `index`.
    fn apply_batch(&mut self, index: u64, time_ms: i64, ops: Vec<SingleOp>) -> Applied {
        let mut changes = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let plan = match op.op {
                None => Err(ApiError::InvalidArgument("empty write".into())),
                Some(single_op::Op::Apply(op)) => self.plan_apply(index, time_ms, Cow::Owned(op)),
                Some(single_op::Op::UpdateStatus(op)) => self.plan_update_status(index, &op),
                Some(single_op::Op::Delete(op)) => self.plan_delete(index, &op),
                Some(single_op::Op::Bind(op)) => self.plan_bind(index, &op),
            };
            results.push(plan.map(|plan| {
                let subject = plan.subject.clone();
                if plan.outcome != Outcome::Unchanged {
                    self.commit(plan, &mut changes);
                }
                subject
            }));
        }
        let record = (!changes.is_empty()).then(|| self.record(index, changes));
        Applied {
            outcome: if record.is_some() {
                Outcome::Updated
            } else {
                Outcome::Unchanged
            },
            object: Arc::new(pb::Object::default()),
            revision: if record.is_some() {
                index
            } else {
                self.revision
            },
            record,
            batch: results,
        }
    }

    /// Makes a plan's changes: objects, allocations, the dirty set.
    fn commit(&mut self, plan: Plan, changes: &mut Vec<Change>) {
        for key in plan.deletes {
            let key = Arc::new(key);
            self.index.remove(&key);
            let old = self.objects.remove(&MapKey::new(key.clone()));
            if let Some(old) = &old {
                self.allocations.account(&key, Some(old), None);
                self.demands.account(Some(old), None);
            }
            self.mark_dirty(key, old.as_deref());
        }
        for object in plan.puts {
            let key = Arc::new(object.key());
            self.index.insert(key.clone(), object.clone());
            let old = self
                .objects
                .insert(MapKey::new(key.clone()), object.clone());
            self.allocations
                .account(&key, old.as_deref(), Some(&object));
            self.demands.account(old.as_deref(), Some(&object));
            self.mark_dirty(key, old.as_deref());
        }
        changes.extend(plan.changes);
    }

    /// Notes that the next checkpoint must store the object at `key`, which
    /// was `old`. The first change since the last checkpoint of an object
    /// that existed then makes its record on disk dead.
    fn mark_dirty(&mut self, key: Arc<ObjectKey>, old: Option<&pb::Object>) {
        if self.dirty.insert(key)
            && let Some(old) = old
        {
            self.superseded += SegmentChunks::put_bytes(old);
        }
    }

    fn record(&mut self, index: u64, changes: Vec<Change>) -> Arc<HistoryRecord> {
        self.revision = index;
        Arc::new(HistoryRecord {
            revision: index,
            changes,
        })
    }

    /// Decides `command` against the current state without applying it:
    /// `Err` with the error it would meet, `Ok(Some(_))` with the answer when
    /// it would change nothing, `Ok(None)` when it has to go through the log.
    /// The caller must know the state is current (a confirmed leader's).
    pub fn check(&self, command: &Command) -> Result<Option<Applied>, ApiError> {
        let index = self.applied + 1;
        let plan = match &command.op {
            None => return Err(ApiError::InvalidArgument("empty command".into())),
            Some(Op::Apply(op)) => self.plan_apply(index, command.time_ms, Cow::Borrowed(op))?,
            Some(Op::UpdateStatus(op)) => self.plan_update_status(index, op)?,
            Some(Op::Delete(op)) => self.plan_delete(index, op)?,
            // Each write of a batch stands on its own: always through the log.
            Some(Op::Batch(_)) => return Ok(None),
        };
        Ok((plan.outcome == Outcome::Unchanged)
            .then(|| Applied::single(Outcome::Unchanged, plan.subject, self.revision, None)))
    }

    /// Applies an entry that carries no command (a new leader's empty entry).
    pub fn skip(&mut self, index: u64) {
        self.advance(index);
    }

    /// Applies a membership change at `index`. The caller checkpoints right
    /// after, so that the stored member list always matches raft's stored
    /// configuration.
    pub fn set_membership(&mut self, index: u64, membership: Membership) {
        self.advance(index);
        self.membership = Arc::new(membership);
    }

    /// What changed since the last checkpoint, and the index it is current
    /// at — cheap to take (the objects are an immutable view), so that a
    /// checkpoint can be written off the raft thread.
    pub fn take_checkpoint(&mut self) -> Checkpoint {
        Checkpoint {
            applied: self.applied,
            revision: self.revision,
            members: self.membership.to_record(),
            objects: self.objects.clone(),
            dirty: self
                .dirty
                .drain()
                .map(|key| {
                    let object = self.index.get(&key).cloned();
                    (key, object)
                })
                .collect(),
            superseded: std::mem::take(&mut self.superseded),
        }
    }

    /// Replaces everything with a leader's snapshot taken at `index`. The
    /// caller has already cleared the old state from storage in `batch`.
    pub fn install(
        &mut self,
        index: u64,
        revision: u64,
        objects: Vec<pb::Object>,
        membership: Membership,
        batch: &mut WriteBatch,
    ) {
        self.dirty.clear();
        self.superseded = 0;
        let mut segment = SegmentChunks::new(batch, index, true);
        for object in &objects {
            segment.put(object);
        }
        segment.finish();
        self.objects = objects
            .into_iter()
            .map(|o| (MapKey::new(Arc::new(o.key())), Arc::new(o)))
            .collect();
        self.index = index_of(&self.objects);
        self.allocations = Allocations::build(self.objects.iter().map(|(k, o)| (k.shared(), o)));
        self.demands = JobDemands::build(self.objects.values());
        self.revision = revision;
        self.applied = index;
        batch.put_revision(revision);
        batch.put_applied(index);
        // The history before the snapshot is not part of it.
        batch.put_compacted(revision);
        batch.put_members(&membership.to_record());
        self.membership = Arc::new(membership);
    }

    fn advance(&mut self, index: u64) {
        debug_assert!(index > self.applied, "index {index} applied twice");
        self.applied = index;
    }

    /// Plans an apply: from the committed entry's own command (`Owned`, its
    /// object becomes the new one without a copy) or, for a leader's
    /// check, from a borrowed one.
    fn plan_apply(&self, index: u64, time_ms: i64, op: Cow<'_, ApplyOp>) -> Result<Plan, ApiError> {
        let create_only = op.create_only;
        let required = || ApiError::InvalidArgument("object: required".into());
        let (request, new_uid): (Cow<'_, pb::Object>, Cow<'_, str>) = match op {
            Cow::Borrowed(op) => (
                Cow::Borrowed(op.object.as_ref().ok_or_else(required)?),
                Cow::Borrowed(&op.new_uid),
            ),
            Cow::Owned(op) => (
                Cow::Owned(op.object.ok_or_else(required)?),
                Cow::Owned(op.new_uid),
            ),
        };
        let key = request.key();
        self.require_namespace(&key)?;
        let expected = request.resource_version();
        let current = self.get(&key);

        let new = match current {
            None => {
                if expected != 0 {
                    return Err(ApiError::NotFound(key));
                }
                let mut new = request.into_owned();
                let meta = metadata_of(&mut new)?;
                meta.uid = new_uid.into_owned();
                meta.generation = 1;
                meta.resource_version = index;
                meta.created_at_ms = time_ms;
                self.admit_placed_task(&key, &mut new)?;
                new
            }
            Some(current) => {
                if create_only {
                    return Err(ApiError::AlreadyExists(key));
                }
                check_preconditions(current, &request)?;
                let (mut new, spec_changed) = with_spec_of(current, &request)?;
                if new == **current {
                    return Ok(Plan::unchanged(current.clone()));
                }
                let meta = metadata_of(&mut new)?;
                if spec_changed {
                    meta.generation += 1;
                }
                meta.resource_version = index;
                new
            }
        };
        self.admit(&new, current.map(|c| c.as_ref()))?;
        Ok(Plan::put(new, current))
    }

    fn plan_update_status(&self, index: u64, op: &UpdateStatusOp) -> Result<Plan, ApiError> {
        let request = op
            .object
            .as_ref()
            .ok_or_else(|| ApiError::InvalidArgument("object: required".into()))?;
        let key = request.key();
        let current = self
            .get(&key)
            .ok_or_else(|| ApiError::NotFound(key.clone()))?;
        check_preconditions(current, request)?;
        let mut new = with_status_of(current, request)?;
        if new == **current {
            return Ok(Plan::unchanged(current.clone()));
        }
        check_task_status_change(&key, current, &new)?;
        metadata_of(&mut new)?.resource_version = index;
        let lost = node_state(&new) == Some(pb::NodeState::Lost)
            && node_state(current) != Some(pb::NodeState::Lost);
        let mut plan = Plan::put(new, Some(current));
        if lost {
            // Fencing: a lost node's tasks are lost with it, in the same
            // write, so that nothing still counts them as running there.
            let bound = self
                .allocations
                .get(&key.name)
                .map(|a| a.tasks.clone())
                .unwrap_or_default();
            for task_key in bound {
                let Some(task) = self.get(&task_key) else {
                    continue;
                };
                let mut gone = (**task).clone();
                if let Some(Body::Task(t)) = &mut gone.kind {
                    let status = t.status.get_or_insert_with(Default::default);
                    status.phase = pb::TaskPhase::Lost as i32;
                    status.message = format!("node {} was lost", key.name);
                }
                metadata_of(&mut gone)?.resource_version = index;
                plan.add_put(gone, task);
            }
        }
        Ok(plan)
    }

    /// Binds an unbound task to a node that has room for it (see
    /// `allocation`): the check that keeps every node within its capacity
    /// whatever the schedulers believed.
    fn plan_bind(&self, index: u64, op: &BindOp) -> Result<Plan, ApiError> {
        let key = ObjectKey::new(pb::Kind::Task, op.namespace.clone(), op.task.clone());
        let current = self
            .get(&key)
            .ok_or_else(|| ApiError::NotFound(key.clone()))?;
        if op.resource_version != 0 && op.resource_version != current.resource_version() {
            return Err(stale(&key, op.resource_version, current.resource_version()));
        }
        let task = current
            .as_task()
            .ok_or_else(|| ApiError::InvalidArgument("not a task".into()))?;
        let status = task.status.clone().unwrap_or_default();
        if status.node == op.node && !status.phase().is_terminal() {
            return Ok(Plan::unchanged(current.clone()));
        }
        if !status.node.is_empty() || status.phase().is_terminal() {
            return Err(ApiError::FailedPrecondition(format!(
                "{key} is {} on node {:?}: only an unscheduled task can be bound",
                format!("{:?}", status.phase()).to_lowercase(),
                status.node
            )));
        }
        self.check_placement(&key, &op.node, task)?;
        let mut new = (**current).clone();
        if let Some(Body::Task(t)) = &mut new.kind {
            let status = t.status.get_or_insert_with(Default::default);
            status.node = op.node.clone();
            status.phase = pb::TaskPhase::Scheduled as i32;
            status.message.clear();
        }
        metadata_of(&mut new)?.resource_version = index;
        Ok(Plan::put(new, Some(current)))
    }

    /// Whether `task` may be placed on `node_name`: the node exists, is
    /// Ready and not cordoned, and has room next to what is bound there.
    /// Binding and creating a task already placed both go through here.
    fn check_placement(
        &self,
        key: &ObjectKey,
        node_name: &str,
        task: &pb::Task,
    ) -> Result<(), ApiError> {
        let node_key = ObjectKey::new(pb::Kind::Node, "", node_name);
        let node = self
            .get(&node_key)
            .and_then(|o| o.as_node())
            .ok_or_else(|| ApiError::NotFound(node_key.clone()))?;
        let state = node
            .status
            .as_ref()
            .map_or(pb::NodeState::Unspecified, |s| s.state());
        if state != pb::NodeState::Ready {
            return Err(ApiError::Conflict {
                key: key.clone(),
                reason: format!("node {node_name} is {state:?}, not Ready"),
            });
        }
        if node.spec.as_ref().is_some_and(|s| s.unschedulable) {
            return Err(ApiError::Conflict {
                key: key.clone(),
                reason: format!("node {node_name} is cordoned"),
            });
        }
        self.allocations
            .check_bind(node_name, node, task)
            .map_err(|reason| ApiError::Conflict {
                key: key.clone(),
                reason,
            })
    }

    fn plan_delete(&self, index: u64, op: &DeleteOp) -> Result<Plan, ApiError> {
        let kind = pb::Kind::try_from(op.kind).unwrap_or(pb::Kind::Unspecified);
        let key = ObjectKey::new(kind, op.namespace.clone(), op.name.clone());
        let current = self
            .get(&key)
            .ok_or_else(|| ApiError::NotFound(key.clone()))?;
        if op.resource_version != 0 && op.resource_version != current.resource_version() {
            return Err(stale(&key, op.resource_version, current.resource_version()));
        }
        if kind == pb::Kind::Namespace && op.name == DEFAULT_NAMESPACE {
            return Err(ApiError::FailedPrecondition(
                "the default namespace cannot be deleted".into(),
            ));
        }
        // Cascade: a job owns its tasks, a namespace owns everything in it.
        let mut victims = vec![current.clone()];
        match kind {
            pb::Kind::Job => victims.extend(
                state::scan(&self.objects, pb::Kind::Task, Some(&op.namespace))
                    .filter(|t| task_job(t) == Some(op.name.as_str()))
                    .cloned(),
            ),
            pb::Kind::Namespace => {
                for child in pb::Kind::ALL.into_iter().filter(|k| k.is_namespaced()) {
                    victims.extend(state::scan(&self.objects, child, Some(&op.name)).cloned());
                }
            }
            _ => {}
        }
        let mut deletes = Vec::with_capacity(victims.len());
        let mut changes = Vec::with_capacity(victims.len());
        for victim in &victims {
            let mut gone = (**victim).clone();
            metadata_of(&mut gone)?.resource_version = index;
            deletes.push(victim.key());
            changes.push(Change {
                r#type: pb::WatchEventType::Deleted as i32,
                object: Some(Arc::new(gone)),
                prev: None,
            });
        }
        Ok(Plan {
            outcome: Outcome::Deleted,
            subject: current.clone(),
            puts: Vec::new(),
            deletes,
            changes,
        })
    }

    fn require_namespace(&self, key: &ObjectKey) -> Result<(), ApiError> {
        if key.kind.is_namespaced()
            && !self.contains(&ObjectKey::new(
                pb::Kind::Namespace,
                "",
                key.namespace.clone(),
            ))
        {
            return Err(ApiError::NamespaceNotFound(key.namespace.clone()));
        }
        Ok(())
    }

    /// Rules that depend on other objects.
    /// A task created already placed (the scheduler creates and places a
    /// task in one write, as Nomad's plans do) passes the same check as a
    /// bind, and starts Scheduled.
    fn admit_placed_task(&self, key: &ObjectKey, new: &mut pb::Object) -> Result<(), ApiError> {
        let Some(Body::Task(task)) = &mut new.kind else {
            return Ok(());
        };
        let Some(node) = task
            .status
            .as_ref()
            .map(|s| s.node.clone())
            .filter(|n| !n.is_empty())
        else {
            return Ok(());
        };
        self.check_placement(key, &node, task)?;
        let status = task.status.get_or_insert_with(Default::default);
        if matches!(
            status.phase(),
            pb::TaskPhase::Unspecified | pb::TaskPhase::Pending
        ) {
            status.phase = pb::TaskPhase::Scheduled as i32;
        }
        Ok(())
    }

    fn admit(&self, new: &pb::Object, old: Option<&pb::Object>) -> Result<(), ApiError> {
        match &new.kind {
            Some(Body::Job(job)) => {
                let old = match old.and_then(|o| o.kind.as_ref()) {
                    Some(Body::Job(old)) => Some(old),
                    _ => None,
                };
                self.check_quota(job, old)
            }
            Some(Body::Task(task)) => {
                let job = task.spec.as_ref().map_or("", |s| s.job.as_str());
                let job_key = ObjectKey::new(pb::Kind::Job, new.namespace(), job);
                if self.contains(&job_key) {
                    Ok(())
                } else {
                    Err(ApiError::FailedPrecondition(format!(
                        "spec.job: {job_key} not found; a task belongs to an existing job"
                    )))
                }
            }
            _ => Ok(()),
        }
    }

    /// Borg-style admission: the requests of all of a namespace's jobs of one
    /// tier must fit the tier's quota. A change that does not raise a job's
    /// demand is always admitted, so that lowering a quota never blocks
    /// scaling down.
    fn check_quota(&self, job: &pb::Job, old: Option<&pb::Job>) -> Result<(), ApiError> {
        let (Some(meta), Some(spec)) = (&job.metadata, &job.spec) else {
            return Ok(());
        };
        let namespace_key = ObjectKey::new(pb::Kind::Namespace, "", meta.namespace.clone());
        let limits = match self.get(&namespace_key).and_then(|o| match &o.kind {
            Some(Body::Namespace(ns)) => ns.spec.as_ref().and_then(|s| s.quota.clone()),
            _ => None,
        }) {
            None => return Ok(()),
            Some(quota) => match spec.tier() {
                pb::Tier::Prod => quota.prod,
                pb::Tier::Batch => quota.batch,
                pb::Tier::Unspecified => None,
            },
        };
        let Some(limits) = limits else {
            return Ok(());
        };
        let tier = spec.tier();
        let asked = Demand::of(job);
        let before = old
            .filter(|o| o.spec.as_ref().is_some_and(|s| s.tier() == tier))
            .map(Demand::of)
            .unwrap_or_default();
        // The job's stored version is `old`: every other job of the tier
        // is the total less what `old` counts for in it.
        let mut others = self.demands.total(&meta.namespace, tier);
        others.subtract(&before);
        let tier_name = match tier {
            pb::Tier::Prod => "prod",
            _ => "batch",
        };
        let mut lines = vec![
            QuotaLine::new("cpu", limits.cpu_millis, format_cpu, |d| d.cpu),
            QuotaLine::new("memory", limits.memory_bytes, format_memory, |d| d.memory),
        ];
        for (name, limit) in &limits.extended {
            lines.push(QuotaLine {
                resource: name.clone(),
                limit: Some(*limit),
                format: |v| v.to_string(),
                of: Box::new(move |d: &Demand| d.extended.get(name).copied().unwrap_or(0)),
            });
        }
        for line in lines {
            let Some(limit) = line.limit else { continue };
            let (others, asked, before) =
                ((line.of)(&others), (line.of)(&asked), (line.of)(&before));
            if others + asked > i128::from(limit) && asked > before {
                let show = |v: i128| (line.format)(i64::try_from(v).unwrap_or(i64::MAX));
                return Err(ApiError::QuotaExceeded(format!(
                    "namespace {}: the {tier_name} quota for {} is {}; other {tier_name} jobs use {}, \
                     job {} asks for {} ({} replicas)",
                    meta.namespace,
                    line.resource,
                    (line.format)(limit),
                    show(others),
                    meta.name,
                    show(asked),
                    spec.replicas,
                )));
            }
        }
        Ok(())
    }
}

impl Plan {
    fn unchanged(current: Arc<pb::Object>) -> Plan {
        Plan {
            outcome: Outcome::Unchanged,
            subject: current,
            puts: Vec::new(),
            deletes: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// One more object the plan changes.
    fn add_put(&mut self, new: pb::Object, current: &Arc<pb::Object>) {
        let new = Arc::new(new);
        self.changes.push(Change {
            r#type: pb::WatchEventType::Modified as i32,
            object: Some(new.clone()),
            prev: Some(current.clone()),
        });
        self.puts.push(new);
    }

    fn put(new: pb::Object, current: Option<&Arc<pb::Object>>) -> Plan {
        let (outcome, change_type) = match current {
            None => (Outcome::Created, pb::WatchEventType::Added),
            Some(_) => (Outcome::Updated, pb::WatchEventType::Modified),
        };
        let new = Arc::new(new);
        Plan {
            outcome,
            subject: new.clone(),
            puts: vec![new.clone()],
            deletes: Vec::new(),
            changes: vec![Change {
                r#type: change_type as i32,
                object: Some(new.clone()),
                prev: current.cloned(),
            }],
        }
    }
}

/// One limited resource of a tier's quota.
struct QuotaLine<'a> {
    resource: String,
    limit: Option<i64>,
    format: fn(i64) -> String,
    /// Picks this resource out of a demand.
    of: Box<dyn Fn(&Demand) -> i128 + 'a>,
}

impl QuotaLine<'_> {
    fn new(
        resource: &str,
        limit: Option<i64>,
        format: fn(i64) -> String,
        of: fn(&Demand) -> i128,
    ) -> Self {
        QuotaLine {
            resource: resource.to_string(),
            limit,
            format,
            of: Box::new(of),
        }
    }
}

/// Total requests of a job: replicas × per-task resources. Wide integers,
/// so that no sum of valid jobs can overflow.
#[derive(Clone, Default)]
struct Demand {
    cpu: i128,
    memory: i128,
    extended: BTreeMap<String, i128>,
}

impl Demand {
    fn of(job: &pb::Job) -> Demand {
        let Some(spec) = &job.spec else {
            return Demand::default();
        };
        let replicas = i128::from(spec.replicas);
        let Some(r) = spec.template.as_ref().and_then(|t| t.resources.as_ref()) else {
            return Demand::default();
        };
        Demand {
            cpu: replicas * i128::from(r.cpu_millis),
            memory: replicas * i128::from(r.memory_bytes),
            extended: r
                .extended
                .iter()
                .map(|(k, v)| (k.clone(), replicas * i128::from(*v)))
                .collect(),
        }
    }

    fn add(&mut self, other: &Demand) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        for (k, v) in &other.extended {
            *self.extended.entry(k.clone()).or_default() += v;
        }
    }

    fn subtract(&mut self, other: &Demand) {
        self.cpu -= other.cpu;
        self.memory -= other.memory;
        for (k, v) in &other.extended {
            *self.extended.entry(k.clone()).or_default() -= v;
        }
    }
}

/// The summed [`Demand`] of the jobs of each namespace and tier, kept up to
/// date as jobs change.
#[derive(Default)]
struct JobDemands {
    by_namespace: HashMap<String, BTreeMap<pb::Tier, Demand>, FastHash>,
}

impl JobDemands {
    fn build<'a>(objects: impl Iterator<Item = &'a Arc<pb::Object>>) -> JobDemands {
        let mut demands = JobDemands::default();
        for object in objects {
            demands.account(None, Some(object));
        }
        demands
    }

    /// `old` is replaced by `new` (either may be absent).
    fn account(&mut self, old: Option<&pb::Object>, new: Option<&pb::Object>) {
        if let Some((namespace, tier, job)) = old.and_then(job_of) {
            self.adjust(namespace, tier, |total| total.subtract(&Demand::of(job)));
        }
        if let Some((namespace, tier, job)) = new.and_then(job_of) {
            self.adjust(namespace, tier, |total| total.add(&Demand::of(job)));
        }
    }

    fn adjust(&mut self, namespace: &str, tier: pb::Tier, change: impl FnOnce(&mut Demand)) {
        // Looked up by `&str` first: a write in a known namespace (almost
        // every one) allocates nothing.
        if let Some(tiers) = self.by_namespace.get_mut(namespace) {
            return change(tiers.entry(tier).or_default());
        }
        let mut tiers = BTreeMap::new();
        change(tiers.entry(tier).or_default());
        self.by_namespace.insert(namespace.to_string(), tiers);
    }

    fn total(&self, namespace: &str, tier: pb::Tier) -> Demand {
        self.by_namespace
            .get(namespace)
            .and_then(|tiers| tiers.get(&tier))
            .cloned()
            .unwrap_or_default()
    }
}

/// A job's namespace and tier, if `object` is a job with a spec.
fn job_of(object: &pb::Object) -> Option<(&str, pb::Tier, &pb::Job)> {
    let Some(Body::Job(job)) = &object.kind else {
        return None;
    };
    let tier = job.spec.as_ref()?.tier();
    Some((object.namespace(), tier, job))
}

fn metadata_of(object: &mut pb::Object) -> Result<&mut pb::ObjectMeta, ApiError> {
    object
        .metadata_mut()
        .ok_or_else(|| ApiError::InvalidArgument("kind: required".into()))
}

fn stale(key: &ObjectKey, expected: u64, actual: u64) -> ApiError {
    ApiError::Conflict {
        key: key.clone(),
        reason: format!("resource_version {expected} is stale, the object is at {actual}"),
    }
}

/// Optimistic concurrency: a non-zero resource_version and a non-empty uid in
/// the request must match the stored object.
fn check_preconditions(current: &pb::Object, request: &pb::Object) -> Result<(), ApiError> {
    let expected = request.resource_version();
    if expected != 0 && expected != current.resource_version() {
        return Err(stale(&current.key(), expected, current.resource_version()));
    }
    let uid = request.metadata().map_or("", |m| m.uid.as_str());
    let current_uid = current.metadata().map_or("", |m| m.uid.as_str());
    if !uid.is_empty() && uid != current_uid {
        return Err(ApiError::Conflict {
            key: current.key(),
            reason: format!(
                "uid {uid} does not match: the object was deleted and created again as {current_uid}"
            ),
        });
    }
    Ok(())
}

/// The current object with labels and spec taken from the request (status,
/// uid, generation and creation time stay the server's). Also tells whether
/// the spec changed.
fn with_spec_of(
    current: &pb::Object,
    request: &pb::Object,
) -> Result<(pb::Object, bool), ApiError> {
    let mut new = current.clone();
    let spec_changed = match (&mut new.kind, &request.kind) {
        (Some(Body::Job(n)), Some(Body::Job(r))) => replace(&mut n.spec, &r.spec),
        (Some(Body::Task(n)), Some(Body::Task(r))) => replace(&mut n.spec, &r.spec),
        (Some(Body::Node(n)), Some(Body::Node(r))) => replace(&mut n.spec, &r.spec),
        (Some(Body::Namespace(n)), Some(Body::Namespace(r))) => replace(&mut n.spec, &r.spec),
        (Some(Body::Lease(n)), Some(Body::Lease(r))) => replace(&mut n.spec, &r.spec),
        (Some(Body::Event(n)), Some(Body::Event(r))) => {
            // An event has no spec/status split: everything but metadata.
            let metadata = n.metadata.take();
            let changed = *n
                != pb::Event {
                    metadata: None,
                    ..r.clone()
                };
            *n = pb::Event {
                metadata,
                ..r.clone()
            };
            changed
        }
        _ => {
            return Err(ApiError::InvalidArgument(
                "kind does not match the stored object".into(),
            ));
        }
    };
    if let (Some(meta), Some(requested)) = (new.metadata_mut(), request.metadata()) {
        meta.labels = requested.labels.clone();
    }
    Ok((new, spec_changed))
}

/// The current object with its status replaced by the request's.
fn with_status_of(current: &pb::Object, request: &pb::Object) -> Result<pb::Object, ApiError> {
    let mut new = current.clone();
    match (&mut new.kind, &request.kind) {
        (Some(Body::Job(n)), Some(Body::Job(r))) => n.status = r.status,
        (Some(Body::Task(n)), Some(Body::Task(r))) => n.status = r.status.clone(),
        (Some(Body::Node(n)), Some(Body::Node(r))) => n.status = r.status.clone(),
        _ => {
            return Err(ApiError::InvalidArgument(format!(
                "{} has no status to update",
                current.kind()
            )));
        }
    }
    Ok(new)
}

/// What a status write may not do to a task: move it to another node (only
/// a bind places a task, with the capacity check), or bring an ended task
/// back (its resources were released; its job replaces it instead).
fn check_task_status_change(
    key: &ObjectKey,
    current: &pb::Object,
    new: &pb::Object,
) -> Result<(), ApiError> {
    let (Some(current), Some(new)) = (current.as_task(), new.as_task()) else {
        return Ok(());
    };
    // No status is no node: a status write can neither bind an unbound
    // task nor unbind a bound one.
    let (old_node, new_node) = (current.bound_node(), new.bound_node());
    if new_node != old_node {
        return Err(ApiError::FailedPrecondition(format!(
            "status.node: {key} is on node {old_node:?}; a status write cannot move it to {new_node:?} (bind an unscheduled task instead)"
        )));
    }
    let (Some(old), Some(new)) = (current.status.as_ref(), new.status.as_ref()) else {
        return Ok(());
    };
    if old.phase().is_terminal() && !new.phase().is_terminal() {
        return Err(ApiError::FailedPrecondition(format!(
            "status.phase: {key} has ended ({:?}) and cannot become {:?}; its job replaces it",
            old.phase(),
            new.phase()
        )));
    }
    Ok(())
}

fn replace<T: Clone + PartialEq>(slot: &mut Option<T>, value: &Option<T>) -> bool {
    let changed = slot != value;
    slot.clone_from(value);
    changed
}

fn node_state(object: &pb::Object) -> Option<pb::NodeState> {
    Some(object.as_node()?.status.as_ref()?.state())
}

fn task_job(object: &pb::Object) -> Option<&str> {
    match &object.kind {
        Some(Body::Task(t)) => t.spec.as_ref().map(|s| s.job.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use berth_proto::defaults;
    use berth_proto::internal::BatchOps;

    struct Fixture {
        storage: Storage,
        machine: StateMachine,
    }

    fn open(storage: Storage) -> Fixture {
        let machine = StateMachine::new(storage.load().unwrap(), ConfState::default());
        Fixture { storage, machine }
    }

    impl Fixture {
        fn new(dir: &tempfile::TempDir) -> Fixture {
            let mut f = open(Storage::open(dir.path()).unwrap());
            f.apply(namespace("default", None)).unwrap();
            f
        }

        fn next(&mut self, op: Op) -> Result<Applied, ApiError> {
            let index = self.machine.applied() + 1;
            self.machine.apply(
                index,
                Command {
                    time_ms: 1_000 * index as i64,
                    op: Some(op),
                },
            )
        }

        fn apply(&mut self, mut object: pb::Object) -> Result<Applied, ApiError> {
            defaults::apply(&mut object);
            let uid = format!("uid-{}", self.machine.applied() + 1);
            self.next(Op::Apply(ApplyOp {
                object: Some(object),
                create_only: false,
                new_uid: uid,
            }))
        }

        fn delete(
            &mut self,
            kind: pb::Kind,
            namespace: &str,
            name: &str,
        ) -> Result<Applied, ApiError> {
            self.next(Op::Delete(DeleteOp {
                kind: kind as i32,
                namespace: namespace.into(),
                name: name.into(),
                resource_version: 0,
            }))
        }

        fn count(&self, kind: pb::Kind) -> usize {
            self.machine.snapshot().scan(kind, None).count()
        }
    }

    fn meta(name: &str, namespace: &str) -> Option<pb::ObjectMeta> {
        Some(pb::ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        })
    }

    fn namespace(name: &str, prod_cpu: Option<i64>) -> pb::Object {
        pb::Object::from(pb::Namespace {
            metadata: meta(name, ""),
            spec: Some(pb::NamespaceSpec {
                quota: prod_cpu.map(|cpu| pb::Quota {
                    prod: Some(pb::QuotaLimits {
                        cpu_millis: Some(cpu),
                        ..Default::default()
                    }),
                    batch: None,
                }),
            }),
        })
    }

    fn job(name: &str, namespace: &str, replicas: u32, cpu: i64) -> pb::Object {
        pb::Object::from(pb::Job {
            metadata: meta(name, namespace),
            spec: Some(pb::JobSpec {
                tier: pb::Tier::Prod as i32,
                replicas,
                template: Some(pb::TaskTemplate {
                    image: "app:1".into(),
                    resources: Some(pb::Resources {
                        cpu_millis: cpu,
                        memory_bytes: 1 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn task(name: &str, job: &str) -> pb::Object {
        let pb::Object {
            kind: Some(Body::Job(j)),
        } = self::job(job, "default", 1, 100)
        else {
            unreachable!()
        };
        let spec = j.spec.unwrap();
        pb::Object::from(pb::Task {
            metadata: meta(name, "default"),
            spec: Some(pb::TaskSpec {
                job: job.into(),
                tier: spec.tier,
                template: spec.template,
                ..Default::default()
            }),
            status: None,
        })
    }

    fn ready_node(name: &str, cpu: i64) -> pb::Object {
        pb::Object::from(pb::Node {
            metadata: meta(name, ""),
            spec: Some(pb::NodeSpec::default()),
            status: Some(pb::NodeStatus {
                allocatable: Some(pb::Resources {
                    cpu_millis: cpu,
                    memory_bytes: 1 << 30,
                    ..Default::default()
                }),
                state: pb::NodeState::Ready as i32,
                ..Default::default()
            }),
        })
    }

    fn bind(task: &str, node: &str) -> SingleOp {
        SingleOp {
            op: Some(single_op::Op::Bind(BindOp {
                namespace: "default".into(),
                task: task.into(),
                node: node.into(),
                resource_version: 0,
            })),
        }
    }

    fn phase_of(f: &Fixture, name: &str) -> (pb::TaskPhase, String) {
        let key = ObjectKey::new(pb::Kind::Task, "default", name);
        let status = f
            .machine
            .objects
            .get(&key)
            .unwrap()
            .as_task()
            .unwrap()
            .status
            .clone()
            .unwrap_or_default();
        (status.phase(), status.node)
    }

    #[test]
    fn binds_are_checked_against_the_whole_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(ready_node("n1", 250)).unwrap();
        f.apply(job("web", "default", 3, 100)).unwrap();
        for i in 0..3 {
            f.apply(task(&format!("web-{i}"), "web")).unwrap();
        }
        let applied = f
            .next(Op::Batch(BatchOps {
                ops: vec![
                    bind("web-0", "n1"),
                    bind("web-1", "n1"),
                    bind("web-2", "n1"),
                    bind("nope", "n1"),
                ],
            }))
            .unwrap();
        let codes: Vec<_> = applied
            .batch
            .iter()
            .map(|r| r.as_ref().err().map(ApiError::code))
            .collect();
        assert_eq!(
            codes,
            vec![
                None,
                None,
                Some(tonic::Code::Aborted),
                Some(tonic::Code::NotFound)
            ],
            "two tasks of 100m fit 250m, a third does not"
        );
        assert_eq!(
            phase_of(&f, "web-1"),
            (pb::TaskPhase::Scheduled, "n1".into())
        );
        assert_eq!(
            phase_of(&f, "web-2"),
            (pb::TaskPhase::Unspecified, String::new())
        );
        // Both binds share one revision.
        let record = applied.record.unwrap();
        assert_eq!(record.changes.len(), 2);
        // A bound task cannot be bound again elsewhere.
        let again = f
            .next(Op::Batch(BatchOps {
                ops: vec![bind("web-0", "n2")],
            }))
            .unwrap();
        assert_eq!(
            again.batch[0].as_ref().unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
    }

    fn placed(name: &str, node: &str) -> pb::Object {
        let mut t = task(name, "web");
        if let Some(Body::Task(t)) = &mut t.kind {
            t.status = Some(pb::TaskStatus {
                node: node.into(),
                ..Default::default()
            });
        }
        t
    }

    #[test]
    fn a_task_created_placed_passes_the_bind_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(ready_node("n1", 250)).unwrap();
        f.apply(job("web", "default", 3, 100)).unwrap();
        f.apply(placed("web-0", "n1")).unwrap();
        f.apply(placed("web-1", "n1")).unwrap();
        assert_eq!(
            phase_of(&f, "web-1"),
            (pb::TaskPhase::Scheduled, "n1".into())
        );
        let full = f.apply(placed("web-2", "n1")).unwrap_err();
        assert_eq!(full.code(), tonic::Code::Aborted, "{full}");
        let nowhere = f.apply(placed("web-2", "n9")).unwrap_err();
        assert_eq!(nowhere.code(), tonic::Code::NotFound, "{nowhere}");
        assert!(!f.machine.objects.contains_key(&ObjectKey::new(
            pb::Kind::Task,
            "default",
            "web-2"
        )));
    }

    #[test]
    fn a_status_write_neither_moves_a_task_nor_revives_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(ready_node("n1", 250)).unwrap();
        f.apply(ready_node("n2", 100)).unwrap();
        f.apply(job("web", "default", 3, 100)).unwrap();
        f.apply(placed("web-0", "n1")).unwrap();
        let update = |node: &str, phase: pb::TaskPhase| {
            let mut t = placed("web-0", node);
            if let Some(Body::Task(t)) = &mut t.kind {
                t.status.as_mut().unwrap().phase = phase as i32;
            }
            Op::UpdateStatus(UpdateStatusOp { object: Some(t) })
        };
        let moved = f.next(update("n2", pb::TaskPhase::Running)).unwrap_err();
        assert!(moved.to_string().contains("status.node"), "{moved}");
        f.next(update("n1", pb::TaskPhase::Preempted)).unwrap();
        assert!(
            f.machine.allocations.get("n1").is_none(),
            "an ended task frees its room"
        );
        let revived = f.next(update("n1", pb::TaskPhase::Running)).unwrap_err();
        assert!(revived.to_string().contains("has ended"), "{revived}");
    }

    #[test]
    fn a_lost_node_loses_its_tasks_and_frees_its_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(ready_node("n1", 1000)).unwrap();
        f.apply(job("web", "default", 2, 100)).unwrap();
        f.apply(task("web-0", "web")).unwrap();
        f.next(Op::Batch(BatchOps {
            ops: vec![bind("web-0", "n1")],
        }))
        .unwrap();
        let mut lost = ready_node("n1", 1000);
        if let Some(Body::Node(n)) = &mut lost.kind {
            n.status.as_mut().unwrap().state = pb::NodeState::Lost as i32;
        }
        let applied = f
            .next(Op::UpdateStatus(UpdateStatusOp { object: Some(lost) }))
            .unwrap();
        assert_eq!(
            applied.record.unwrap().changes.len(),
            2,
            "the node and its task"
        );
        assert_eq!(phase_of(&f, "web-0").0, pb::TaskPhase::Lost);
        assert!(f.machine.allocations.get("n1").is_none());
        // Nothing binds to a node that is not Ready.
        f.apply(task("web-1", "web")).unwrap();
        let refused = f
            .next(Op::Batch(BatchOps {
                ops: vec![bind("web-1", "n1")],
            }))
            .unwrap();
        assert!(
            refused.batch[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("not Ready")
        );
    }

    #[test]
    fn create_update_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        let created = f.apply(job("web", "default", 2, 100)).unwrap();
        assert_eq!(created.outcome, Outcome::Created);
        let meta = created.object.metadata().unwrap().clone();
        assert_eq!((meta.generation, meta.resource_version), (1, 2));
        assert_eq!(meta.created_at_ms, 2_000);
        assert_eq!(meta.uid, "uid-2");

        let same = f.apply(job("web", "default", 2, 100)).unwrap();
        assert_eq!(same.outcome, Outcome::Unchanged);
        assert_eq!(f.machine.revision(), 2, "a no-op write changes no revision");
        assert_eq!(f.machine.applied(), 3, "but its log index is applied");

        let updated = f.apply(job("web", "default", 3, 100)).unwrap();
        assert_eq!(updated.outcome, Outcome::Updated);
        let meta = updated.object.metadata().unwrap();
        assert_eq!(
            (meta.generation, meta.resource_version, meta.uid.as_str()),
            (2, 4, "uid-2")
        );
        let record = updated.record.unwrap();
        assert_eq!(
            record.changes[0].r#type,
            pb::WatchEventType::Modified as i32
        );
        assert!(record.changes[0].prev.is_some());
    }

    #[test]
    fn stale_resource_version_is_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(job("web", "default", 1, 100)).unwrap();
        f.apply(job("web", "default", 2, 100)).unwrap();
        let mut stale = job("web", "default", 5, 100);
        stale.metadata_mut().unwrap().resource_version = 2;
        let err = f.apply(stale).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted, "{err}");
        assert!(
            err.to_string()
                .contains("resource_version 2 is stale, the object is at 3")
        );
    }

    #[test]
    fn objects_need_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        let err = f.apply(job("web", "team-a", 1, 100)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(
            f.machine.revision(),
            1,
            "a rejected write takes no revision"
        );
    }

    #[test]
    fn quota_use_follows_deletes_and_tier_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(namespace("team-a", Some(1000))).unwrap();
        f.apply(job("a", "team-a", 3, 300)).unwrap();
        let err = f.apply(job("b", "team-a", 1, 300)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        // A deleted job's share is free again.
        f.delete(pb::Kind::Job, "team-a", "a").unwrap();
        f.apply(job("b", "team-a", 3, 300)).unwrap();
        // A job moved to batch (which has no quota here) leaves prod's use.
        let mut batch = job("b", "team-a", 3, 300);
        if let Some(Body::Job(j)) = &mut batch.kind {
            j.spec.as_mut().unwrap().tier = pb::Tier::Batch as i32;
        }
        f.apply(batch).unwrap();
        f.apply(job("c", "team-a", 3, 300)).unwrap();
        let err = f.apply(job("d", "team-a", 1, 300)).unwrap_err();
        assert!(
            err.to_string().contains("other prod jobs use 900m"),
            "{err}"
        );
    }

    #[test]
    fn quota_is_enforced_per_tier() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(namespace("team-a", Some(1000))).unwrap();
        f.apply(job("a", "team-a", 2, 300)).unwrap();
        let err = f.apply(job("b", "team-a", 2, 300)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.to_string().contains(
                "the prod quota for cpu is 1; other prod jobs use 600m, job b asks for 600m"
            ),
            "{err}"
        );
        f.apply(job("b", "team-a", 1, 300)).unwrap();
        // Lowering the quota below use does not block scaling down.
        f.apply(namespace("team-a", Some(100))).unwrap();
        f.apply(job("a", "team-a", 1, 300)).unwrap();
    }

    #[test]
    fn deleting_a_job_deletes_its_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(job("web", "default", 2, 100)).unwrap();
        f.apply(job("db", "default", 1, 100)).unwrap();
        f.apply(task("web-0", "web")).unwrap();
        f.apply(task("web-1", "web")).unwrap();
        f.apply(task("db-0", "db")).unwrap();
        let deleted = f.delete(pb::Kind::Job, "default", "web").unwrap();
        assert_eq!(deleted.record.unwrap().changes.len(), 3);
        assert_eq!(f.count(pb::Kind::Task), 1);
        let err = f.apply(task("web-2", "web")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn deleting_a_namespace_deletes_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        f.apply(namespace("team-a", None)).unwrap();
        f.apply(job("a", "team-a", 1, 100)).unwrap();
        f.apply(job("b", "default", 1, 100)).unwrap();
        f.delete(pb::Kind::Namespace, "", "team-a").unwrap();
        assert_eq!(f.count(pb::Kind::Job), 1);
        let err = f.delete(pb::Kind::Namespace, "", "default").unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn a_delta_counts_the_records_it_makes_dead() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new(&dir);
        let size = |f: &mut Fixture| {
            f.machine.take_checkpoint().put_segment(
                false,
                &mut WriteBatch::new(),
                &EncodedObjects::default(),
            )
        };
        for i in 0..3 {
            f.apply(job(&format!("job-{i}"), "default", 1, 100))
                .unwrap();
        }
        // Objects created since the last checkpoint overwrite nothing.
        assert_eq!(size(&mut f).dead_bytes, 0);
        let stored = |f: &Fixture, name: &str| {
            let key = ObjectKey::new(pb::Kind::Job, "default", name);
            SegmentChunks::put_bytes(&f.machine.index[&key])
        };
        let (job_0, job_1) = (stored(&f, "job-0"), stored(&f, "job-1"));
        // Changed twice, job-0's record on disk is dead once; job-1's too,
        // and its deletion record is dead from the start; the new job-3
        // overwrites nothing.
        f.apply(job("job-0", "default", 2, 100)).unwrap();
        f.apply(job("job-0", "default", 3, 100)).unwrap();
        f.apply(job("job-3", "default", 1, 100)).unwrap();
        f.delete(pb::Kind::Job, "default", "job-1").unwrap();
        let deletion = {
            let mut batch = WriteBatch::new();
            let mut segment = SegmentChunks::new(&mut batch, 0, false);
            segment.delete(&ObjectKey::new(pb::Kind::Job, "default", "job-1"))
        };
        let size = size(&mut f);
        assert_eq!(size.dead_bytes, job_0 + job_1 + deletion);
        // A full segment makes nothing dead.
        let full = f.machine.take_checkpoint();
        assert_eq!(
            full.put_segment(true, &mut WriteBatch::new(), &EncodedObjects::default())
                .dead_bytes,
            0
        );
    }

    /// Checkpoints of more objects than one stored chunk holds, full then
    /// a delta with deletes, read back whole. The delta copies its objects
    /// from the history records stored with it, as the checkpoint thread
    /// does, to the byte what encoding them again makes.
    #[test]
    fn checkpoints_of_many_chunks_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = |f: &mut Fixture, full: bool, encoded: &EncodedObjects| {
            let mut batch = WriteBatch::new();
            let checkpoint = f.machine.take_checkpoint();
            let bytes = checkpoint.put_segment(full, &mut batch, encoded).bytes;
            let plain =
                checkpoint.put_segment(full, &mut WriteBatch::new(), &EncodedObjects::default());
            assert_eq!(bytes, plain.bytes);
            checkpoint.put_bookkeeping(&mut batch);
            f.storage.write(batch).unwrap();
            f.storage.flush().unwrap();
            bytes
        };
        let before = {
            let mut f = Fixture::new(&dir);
            for i in 0..5000 {
                f.apply(job(&format!("job-{i:04}"), "default", 1, 100))
                    .unwrap();
            }
            let bytes = checkpoint(&mut f, true, &EncodedObjects::default());
            assert!(
                bytes > 2 * (64 << 10),
                "{bytes} bytes: three chunks or more"
            );
            let mut records = Vec::new();
            for i in (0..5000).step_by(3) {
                let deleted = f
                    .delete(pb::Kind::Job, "default", &format!("job-{i:04}"))
                    .unwrap();
                records.extend(deleted.record);
            }
            for i in (1..5000).step_by(3) {
                for replicas in [2, 3] {
                    let updated = f
                        .apply(job(&format!("job-{i:04}"), "default", replicas, 100))
                        .unwrap();
                    records.extend(updated.record);
                }
            }
            let created = f.apply(job("job-new", "default", 1, 100)).unwrap();
            records.extend(created.record);
            let mut encoded = EncodedObjects::default();
            WriteBatch::new().put_history_with(&records, &mut encoded);
            let latest = &f.machine.index[&ObjectKey::new(pb::Kind::Job, "default", "job-0001")];
            assert!(encoded.get(latest).is_some(), "found in the history");
            checkpoint(&mut f, false, &encoded);
            f.machine.snapshot()
        };
        let f = open(crate::storage::tests::reopen(dir.path()));
        let after = f.machine.snapshot();
        assert_eq!(after.applied, before.applied);
        assert_eq!(after.objects, before.objects);
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let mut f = Fixture::new(&dir);
            f.apply(job("web", "default", 2, 100)).unwrap();
            f.delete(pb::Kind::Job, "default", "web").unwrap();
            f.apply(job("api", "default", 2, 100)).unwrap();
            let mut batch = WriteBatch::new();
            let checkpoint = f.machine.take_checkpoint();
            checkpoint.put_segment(true, &mut batch, &EncodedObjects::default());
            checkpoint.put_bookkeeping(&mut batch);
            f.storage.write_atomic(batch).unwrap();
            f.storage.flush().unwrap();
            f.machine.snapshot()
        };
        let f = open(crate::storage::tests::reopen(dir.path()));
        let after = f.machine.snapshot();
        assert_eq!(
            (after.revision, after.applied),
            (before.revision, before.applied)
        );
        assert_eq!(after.objects, before.objects);
    }
}
