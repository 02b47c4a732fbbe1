//! The raft loop: one thread drives raft-rs's `RawNode`.
//!
//! Each turn takes every queued input (proposals, peer messages, reads,
//! membership changes), ticks the clock, then handles one Ready in the order
//! raft-rs requires:
//!
//! 1. send the messages a leader may send before persisting;
//! 2. install a snapshot, if one arrived;
//! 3. append new entries and the hard state — one batch, one fsync for every
//!    proposal of the turn (group commit);
//! 4. apply committed entries to the state machine (raft-rs hands out only
//!    ones this member has persisted) and publish them to readers and
//!    watchers;
//! 5. only after the fsync send the messages that acknowledge persisted
//!    entries (a follower does 3 and 5 before 4: the leader waits for its
//!    acknowledgement, nobody waits for its applying);
//! 6. advance, apply and publish what that commits.
//!
//! A leader with followers does not fsync in step 3: it hands the flush to
//! its flusher thread (`flusher.rs`) and goes on taking inputs; raft-rs
//! counts the leader's own copy toward a commit once the flusher reports it
//! durable (`Input::Persisted`), and what that commits comes with a later
//! Ready.
//!
//! Then proposers are answered, and pending linearizable reads. A proposal is
//! answered once its entry is applied — or failed when another entry took its
//! index (leadership changed) or it timed out; its outcome is then unknown to
//! the client.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_proto::internal::{ApplyOp, Command, MemberChange as MemberChangeRecord, command::Op};
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType,
};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use super::checkpoint::{self, Checkpointer};
use super::flusher::Flusher;
use super::log_store::LogStore;
use super::snapshots::SnapshotShelf;
use super::transport::Transport;
use super::{Input, MemberChange, NodeStatus, Settings};
use crate::disk::DiskSpace;
use crate::error::ApiError;
use crate::state::Membership;
use crate::state_machine::{Applied, DEFAULT_NAMESPACE, StateMachine};
use crate::storage::{Storage, StorageError, WriteBatch};
use crate::watch::WatchHub;

/// An entry's context: the proposing member and its request id.
fn proposal_context(member: u64, request_id: u64) -> Vec<u8> {
    let mut context = Vec::with_capacity(16);
    context.extend_from_slice(&member.to_be_bytes());
    context.extend_from_slice(&request_id.to_be_bytes());
    context
}

fn parse_proposal_context(context: &[u8]) -> (u64, u64) {
    match (context.get(..8), context.get(8..16)) {
        (Some(member), Some(request)) => (
            u64::from_be_bytes(member.try_into().unwrap_or_default()),
            u64::from_be_bytes(request.try_into().unwrap_or_default()),
        ),
        _ => (0, 0),
    }
}

/// Whether a command only deletes: deletes are taken on a disk short of
/// space, since they are how an operator makes room.
fn only_deletes(command: &Command) -> bool {
    use berth_proto::internal::single_op::Op as SingleOp;
    match &command.op {
        Some(Op::Delete(_)) => true,
        Some(Op::Batch(batch)) => {
            !batch.ops.is_empty()
                && batch
                    .ops
                    .iter()
                    .all(|op| matches!(op.op, Some(SingleOp::Delete(_))))
        }
        _ => false,
    }
}

/// Inputs handled per turn before the loop looks at the Ready.
const MAX_INPUTS_PER_TURN: usize = 4096;

enum Reply {
    Write(oneshot::Sender<Result<Applied, ApiError>>),
    Change(oneshot::Sender<Result<(), ApiError>>),
    /// Nobody waits (the loop's own proposals).
    None,
}

/// Tells the writers of applied entries how their writes went.
fn answer(answers: &mut Vec<(Reply, Result<Applied, ApiError>)>) {
    for (reply, result) in answers.drain(..) {
        match reply {
            Reply::Write(r) => {
                let _ = r.send(result);
            }
            Reply::Change(r) => {
                let _ = r.send(result.map(|_| ()));
            }
            Reply::None => {}
        }
    }
}

impl Reply {
    fn fail(self, error: ApiError) {
        match self {
            Reply::Write(r) => {
                let _ = r.send(Err(error));
            }
            Reply::Change(r) => {
                let _ = r.send(Err(error));
            }
            Reply::None => {}
        }
    }
}

struct Pending {
    reply: Reply,
    /// The command, kept by the proposer so that applying it needs no decode.
    command: Option<Command>,
    /// The log index the entry was appended at.
    index: u64,
    deadline: Instant,
    proposed_at: Instant,
}

/// Something waiting for raft to confirm a read index.
struct WaitingRead {
    kind: ReadKind,
    deadline: Instant,
}

enum ReadKind {
    /// A linearizable read: answered with the index to wait for.
    Index(oneshot::Sender<Result<u64, ApiError>>),
    /// A write the leader's state would refuse or find unchanged. Answering
    /// that from the leader's state is a read, so it is answered only once
    /// the read index confirms that state is current — never from a leader
    /// that was deposed without knowing it yet. Refusals never reach the log.
    Check(Box<Command>, WriteReply),
}

type WriteReply = oneshot::Sender<Result<Applied, ApiError>>;

impl ReadKind {
    fn fail(self, error: ApiError) {
        match self {
            ReadKind::Index(reply) => {
                let _ = reply.send(Err(error));
            }
            ReadKind::Check(_, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Reads that share one ReadIndex request.
struct InflightRead {
    reads: Vec<WaitingRead>,
    issued: Instant,
}

pub(crate) struct Node {
    id: u64,
    raw: RawNode<LogStore>,
    machine: StateMachine,
    storage: Storage,
    hub: Arc<WatchHub>,
    shelf: Arc<SnapshotShelf>,
    transport: Transport,
    inputs: Receiver<Input>,
    settings: Settings,
    next_request: u64,
    pending: HashMap<u64, Pending>,
    /// Request ids by log index, to fail proposals whose index another entry took.
    by_index: BTreeMap<u64, u64>,
    reads: Vec<WaitingRead>,
    inflight_reads: HashMap<u64, InflightRead>,
    /// Checked writes whose read index this member has not applied yet.
    deferred: Vec<(u64, Box<Command>, WriteReply)>,
    next_read: u64,
    /// Set when storage failed: what every request is refused with until
    /// the member restarts (by itself, after a full disk).
    failed: Option<ApiError>,
    /// Free space on the data dir: new writes wait for room.
    disk: DiskSpace,
    /// Told when the disk filled up and has room again: the server restarts
    /// this member from its store (the state in memory may be ahead of it).
    restart: Option<oneshot::Sender<()>>,
    /// The term in which this member last proposed the default namespace.
    bootstrapped_in_term: u64,
    /// The log index of that proposal: checked writes are decided once it
    /// is applied.
    bootstrap_index: u64,
    /// The applied index the stored state machine is current at.
    checkpointed: u64,
    /// A membership change asks for a checkpoint at the end of the turn.
    checkpoint_due: bool,
    checkpoint_running: bool,
    checkpointer: Checkpointer,
    /// Flushes the log for a leader, off this loop.
    flusher: Flusher,
    /// Shared with the Replica: who leads, so writes go straight there.
    leader: Arc<std::sync::RwLock<(u64, Option<String>)>>,
    /// The last revision whose history record is stored or queued in
    /// `unsaved_history`.
    history_stored: u64,
    /// History records not yet stored: the next checkpoint writes them.
    /// Until then the log holds what they were made from (a restart replays
    /// it and makes them again) and the watch hub keeps them in memory.
    unsaved_history: Vec<Arc<berth_proto::internal::HistoryRecord>>,
    /// The records handed to the checkpoint being written, until it is
    /// done: a clean stop drops a checkpoint still queued, and must store
    /// them itself.
    history_in_flight: Vec<Arc<berth_proto::internal::HistoryRecord>>,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        settings: &Settings,
        log: LogStore,
        storage: Storage,
        machine: StateMachine,
        hub: Arc<WatchHub>,
        shelf: Arc<SnapshotShelf>,
        transport: Transport,
        inputs: Receiver<Input>,
        inputs_sender: std::sync::mpsc::Sender<Input>,
        leader: Arc<std::sync::RwLock<(u64, Option<String>)>>,
        restart: oneshot::Sender<()>,
    ) -> anyhow::Result<Node> {
        let config = raft::Config {
            id: settings.member_id,
            election_tick: settings.election_ticks,
            // Randomized over [1, 1.5) election timeouts rather than raft-rs's
            // [1, 2): failover stays under 1.5 timeouts, split votes stay rare.
            min_election_tick: settings.election_ticks,
            max_election_tick: settings.election_ticks * 3 / 2,
            heartbeat_tick: settings.heartbeat_ticks,
            applied: machine.applied(),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            // The proposals of one turn reach a follower as one append (and
            // one answer), not one append per proposal.
            batch_append: true,
            max_uncommitted_size: 256 * 1024 * 1024,
            ..Default::default()
        };
        config.validate()?;
        let raw = RawNode::new(&config, log, &super::logger::logger(settings.member_id))?;
        let machine_applied = machine.applied();
        let checkpointer = Checkpointer::start(storage.clone(), inputs_sender.clone())?;
        let flusher = Flusher::start(storage.clone(), inputs_sender)?;
        let history_stored = storage.last_history_revision()?;
        let disk = DiskSpace::new(&settings.data_dir, settings.disk_reserve)?;
        Ok(Node {
            id: settings.member_id,
            raw,
            machine,
            storage,
            hub,
            shelf,
            transport,
            inputs,
            settings: settings.clone(),
            next_request: 1,
            pending: HashMap::new(),
            by_index: BTreeMap::new(),
            reads: Vec::new(),
            inflight_reads: HashMap::new(),
            deferred: Vec::new(),
            next_read: 1,
            failed: None,
            disk,
            restart: Some(restart),
            bootstrapped_in_term: 0,
            bootstrap_index: 0,
            checkpointed: machine_applied,
            checkpoint_due: false,
            checkpoint_running: false,
            checkpointer,
            flusher,
            leader,
            history_stored,
            unsaved_history: Vec::new(),
            history_in_flight: Vec::new(),
        })
    }

    pub(crate) fn run(mut self) {
        // A lone voter need not wait out an election timeout to lead.
        let cs = self.raw.store().conf_state();
        if cs.voters == [self.id] && cs.voters_outgoing.is_empty() {
            let _ = self.raw.campaign();
        }
        let tick = self.settings.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            // A turn may end with work raft-rs already has (a proposal made
            // while deciding checked writes, the default namespace): take it
            // on at once rather than at the next input or tick.
            let wait = if self.failed.is_none() && self.raw.has_ready() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            match self.inputs.recv_timeout(wait) {
                Ok(Input::Shutdown) => break,
                Ok(input) => {
                    self.handle(input);
                    for _ in 0..MAX_INPUTS_PER_TURN {
                        match self.inputs.try_recv() {
                            Ok(Input::Shutdown) => return self.stop(),
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = now + tick;
                self.expire(now);
            }
            if let Some(error) = &self.failed {
                if error.is_disk_full() && self.disk.has_room() {
                    tracing::warn!(
                        member = self.id,
                        "the disk has room again: restarting this member from its store"
                    );
                    if let Some(restart) = self.restart.take() {
                        let _ = restart.send(());
                    }
                    break;
                }
                continue;
            }
            self.issue_reads();
            if let Err(e) = self.on_ready() {
                self.fail(e);
            }
        }
        self.stop();
    }

    fn stop(mut self) {
        if self.failed.is_none() {
            // A clean stop leaves nothing to replay.
            if let Err(e) = self.checkpoint_now() {
                tracing::warn!(member = self.id, error = %e, "final checkpoint failed; the log will be replayed");
            }
        }
        for (_, pending) in self.pending.drain() {
            pending.reply.fail(ApiError::ShuttingDown);
        }
        for read in self.reads.drain(..) {
            read.kind.fail(ApiError::ShuttingDown);
        }
        tracing::debug!(member = self.id, "raft loop stopped");
    }

    /// Storage failed: memory and disk may disagree from here on, so this
    /// member stops participating and refuses every request — until it is
    /// restarted, or, after a full disk, until space returns.
    fn fail(&mut self, error: StorageError) {
        let reason = error.to_string();
        tracing::error!(member = self.id, %reason, "storage failed; this member stops serving");
        for (_, pending) in self.pending.drain() {
            // Its entry may have reached other members, which can commit it
            // without this one: the outcome is unknown, not refused.
            pending.reply.fail(ApiError::Unavailable(format!(
                "this member's storage failed while the write was in flight, so it may or may not \
                 have been committed: {reason}"
            )));
        }
        self.by_index.clear();
        // Readers waiting for this turn's publish must not wait forever.
        self.hub.reopen(self.machine.snapshot());
        let error = ApiError::storage(reason);
        if error.is_disk_full() {
            self.disk.filled_up();
        }
        self.failed = Some(error);
    }

    fn not_leader(&self) -> ApiError {
        let leader_id = self.raw.raft.leader_id;
        ApiError::NotLeader {
            leader_id,
            leader_address: self
                .machine
                .membership()
                .address(leader_id)
                .map(str::to_string),
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn handle(&mut self, input: Input) {
        if let Some(error) = self.failed.clone() {
            match input {
                Input::Propose { reply, .. } => {
                    let _ = reply.send(Err(error));
                }
                Input::ReadIndex { reply } => {
                    let _ = reply.send(Err(error));
                }
                Input::ChangeMembers { reply, .. } => {
                    let _ = reply.send(Err(error));
                }
                Input::Status { reply } => {
                    let _ = reply.send(self.status());
                }
                _ => {}
            }
            return;
        }
        match input {
            Input::Propose { command, reply } => self.check_then_propose(*command, reply),
            Input::ReadIndex { reply } => self.reads.push(WaitingRead {
                kind: ReadKind::Index(reply),
                deadline: Instant::now() + self.settings.proposal_timeout,
            }),
            Input::ChangeMembers { change, reply } => self.change_members(change, reply),
            Input::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Input::Step(message) => {
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!(member = self.id, error = %e, "raft message refused");
                }
            }
            Input::Unreachable(to) => self.raw.report_unreachable(to),
            Input::SnapshotDone { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::CheckpointDone {
                epoch,
                applied,
                error,
            } => self.checkpoint_done(epoch, applied, error),
            Input::Persisted { number, result } => match result {
                Ok(()) => {
                    self.flusher.persisted(number);
                    self.raw.on_persist_ready(number);
                }
                Err(e) => self.fail(e),
            },
            Input::Shutdown => {}
        }
    }

    fn track(&mut self, request_id: u64, reply: Reply) {
        let index = self.raw.raft.raft_log.last_index();
        let now = Instant::now();
        self.pending.insert(
            request_id,
            Pending {
                reply,
                command: None,
                index,
                deadline: now + self.settings.proposal_timeout,
                proposed_at: now,
            },
        );
        self.by_index.insert(index, request_id);
    }

    /// A client's write: proposed at once if the leader's state accepts it;
    /// refused or answered "unchanged" only after a read index confirms it.
    fn check_then_propose(
        &mut self,
        command: Command,
        reply: oneshot::Sender<Result<Applied, ApiError>>,
    ) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if !only_deletes(&command)
            && let Err(e) = self.disk.check_write()
        {
            let _ = reply.send(Err(e));
            return;
        }
        match self.machine.check(&command) {
            Ok(None) => self.propose(command, Reply::Write(reply)),
            Ok(Some(_)) | Err(_) => self.reads.push(WaitingRead {
                kind: ReadKind::Check(Box::new(command), reply),
                deadline: Instant::now() + self.settings.proposal_timeout,
            }),
        }
    }

    /// Decides a checked write against state known to be current.
    fn decide(&mut self, command: Command, reply: oneshot::Sender<Result<Applied, ApiError>>) {
        match self.machine.check(&command) {
            Ok(None) => self.propose(command, Reply::Write(reply)),
            Ok(Some(applied)) => {
                let _ = reply.send(Ok(applied));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn propose(&mut self, command: Command, reply: Reply) {
        if !self.is_leader() {
            return reply.fail(self.not_leader());
        }
        let request_id = self.next_request;
        self.next_request += 1;
        // Who proposed it travels in the entry's context, the command in its
        // data: the proposer applies the command it kept, without decoding.
        let data = command.encode_to_vec();
        match self
            .raw
            .propose(proposal_context(self.id, request_id), data)
        {
            Ok(()) => {
                self.track(request_id, reply);
                if let Some(pending) = self.pending.get_mut(&request_id) {
                    pending.command = Some(command);
                }
            }
            Err(raft::Error::ProposalDropped) => reply.fail(self.not_leader()),
            Err(e) => reply.fail(ApiError::Unavailable(format!(
                "the proposal was refused: {e}"
            ))),
        }
    }

    fn change_members(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<Result<(), ApiError>>,
    ) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let single = |id: u64, change_type: ConfChangeType| ConfChangeSingle {
            change_type,
            node_id: id,
            ..Default::default()
        };
        let mut add = Vec::new();
        let changes = match change {
            MemberChange::AddLearner { id, address } => {
                add.push(pb::Member {
                    id,
                    address,
                    voter: false,
                });
                vec![single(id, ConfChangeType::AddLearnerNode)]
            }
            MemberChange::Promote {
                replace: Some(old), ..
            } if old == self.id => {
                // As for a removal: a leader does not replace itself; it
                // hands leadership over first and the caller retries there.
                let _ = reply.send(Err(self.hand_over_leadership(old)));
                return;
            }
            MemberChange::Promote { id, replace } => {
                let mut changes = vec![single(id, ConfChangeType::AddNode)];
                if let Some(old) = replace {
                    changes.push(single(old, ConfChangeType::RemoveNode));
                }
                changes
            }
            MemberChange::Remove { id } if id == self.id => {
                let _ = reply.send(Err(self.hand_over_leadership(id)));
                return;
            }
            MemberChange::Remove { id } => vec![single(id, ConfChangeType::RemoveNode)],
        };
        let request_id = self.next_request;
        self.next_request += 1;
        let context = MemberChangeRecord {
            proposer: self.id,
            request_id,
            add,
        }
        .encode_to_vec();
        let cc = ConfChangeV2 {
            transition: ConfChangeTransition::Auto,
            changes: changes.into(),
            ..Default::default()
        };
        match self.raw.propose_conf_change(context, cc) {
            Ok(()) => self.track(request_id, Reply::Change(reply)),
            Err(e) => {
                let _ = reply.send(Err(ApiError::FailedPrecondition(format!(
                    "the membership change was refused: {e}"
                ))));
            }
        }
    }

    /// A leader asked to remove (or replace) itself hands leadership to
    /// the most up-to-date other voter first; the error tells the caller to
    /// retry there.
    fn hand_over_leadership(&mut self, id: u64) -> ApiError {
        let target = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(peer, _)| {
                **peer != self.id && self.raw.raft.prs().conf().voters().contains(**peer)
            })
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(peer, _)| *peer);
        match target {
            Some(target) => {
                self.raw.transfer_leader(target);
                ApiError::Unavailable(format!(
                    "member {id} leads: leadership is moving to member {target}; retry the change there"
                ))
            }
            None => ApiError::FailedPrecondition(format!("member {id} is the only voter")),
        }
    }

    /// Sends one ReadIndex request for every read waiting. raft-rs drops the
    /// request silently when there is no leader, so reads wait for one.
    fn issue_reads(&mut self) {
        if self.reads.is_empty() || self.raw.raft.leader_id == 0 {
            return;
        }
        // raft-rs drops a read index asked of a leader that has not yet
        // committed an entry of its term; keep the reads until it has (a
        // turn or two after its election) rather than retry them an election
        // timeout later.
        if self.is_leader() && !self.raw.raft.commit_to_current_term() {
            return;
        }
        let ctx = self.next_read;
        self.next_read += 1;
        let reads = std::mem::take(&mut self.reads);
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        self.inflight_reads.insert(
            ctx,
            InflightRead {
                reads,
                issued: Instant::now(),
            },
        );
    }

    /// Fails proposals and reads that waited too long.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.by_index.remove(&p.index);
                p.reply.fail(ApiError::Unavailable(format!(
                    "not committed within {:?} (no quorum reachable?); the outcome is unknown",
                    self.settings.proposal_timeout
                )));
            }
        }
        // A ReadIndex request can be lost with its leader: ask again.
        let retry_after = self.settings.tick * self.settings.election_ticks as u32;
        let lost: Vec<u64> = self
            .inflight_reads
            .iter()
            .filter(|(_, read)| now.duration_since(read.issued) > retry_after)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in lost {
            if let Some(read) = self.inflight_reads.remove(&ctx) {
                self.reads.extend(read.reads);
            }
        }
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|read| read.deadline <= now);
        self.reads = waiting;
        for read in expired {
            read.kind.fail(ApiError::Unavailable(
                "this member could not confirm with a quorum in time that its state is current; retry".into(),
            ));
        }
    }

    fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        tracing::trace!(
            member = self.id,
            entries = ready.entries().len(),
            committed = ready.committed_entries().len(),
            messages = ready.messages().len(),
            "ready"
        );
        self.transport.send(ready.take_messages());

        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&snapshot)?;
        }

        // The log first: no applied state may outlive the commit index that
        // covers it after a crash.
        let mut log_batch = WriteBatch::new();
        self.raw
            .mut_store()
            .append(ready.entries(), &mut log_batch)?;
        if let Some(hs) = ready.hs() {
            self.raw
                .mut_store()
                .set_hard_state(hs.clone(), &mut log_batch)?;
        }
        self.storage.write(log_batch)?;
        // A leader with followers flushes on the flusher's thread: it has
        // sent the entries already and acknowledges nothing after a flush.
        // (A snapshot and what comes with it stay on this loop.)
        let voters = self.raw.raft.prs().conf().voters().ids().len();
        let flush_elsewhere = self.is_leader()
            && voters > 1
            && ready.snapshot().is_empty()
            && ready.persisted_messages().is_empty();
        // A follower acknowledges the new entries before it applies the
        // committed ones: its acknowledgement is what the leader waits for
        // to commit, its applying is what nobody waits for. A leader
        // applies first: its writers hear back before the flush.
        let acknowledge_first = !self.is_leader();
        if acknowledge_first {
            self.flush_and_acknowledge(&mut ready)?;
        }

        let mut records = Vec::new();
        let mut answers = Vec::new();
        let applied = self.machine.applied();
        self.apply(ready.take_committed_entries(), &mut records, &mut answers)?;
        if self.machine.applied() > applied {
            // Committed entries are already in this member's log (raft-rs
            // hands out only persisted ones): readers may see them now rather
            // than wait at the hub's gate through the flush below.
            self.publish_applied(&mut records);
        }
        // With other voters, a committed entry is in the fsync'ed logs of a
        // majority, whatever this member's flushes below: its writer hears
        // back now rather than after the flush of the next entries (about
        // 6% more writes per second with `berth-bench cluster`).
        let answer_early = voters > 1;
        if answer_early {
            answer(&mut answers);
        }
        let read_states = if flush_elsewhere {
            let read_states = ready.take_read_states();
            if ready.must_sync() {
                self.flusher.request(ready.number());
            }
            // Raft counts the leader's own copy once `Input::Persisted`
            // says it is durable; committed entries come with later Readies.
            self.raw.advance_append_async(ready);
            self.raw.advance_apply();
            read_states
        } else {
            if !acknowledge_first {
                self.flush_and_acknowledge(&mut ready)?;
            }
            let read_states = ready.take_read_states();
            self.advance_and_apply(ready, answer_early, &mut records, &mut answers)?;
            read_states
        };
        answer(&mut answers);
        self.answer_reads(read_states);
        // Before checked writes are decided: one that names the default
        // namespace of a brand-new cluster waits for it rather than be refused.
        self.ensure_default_namespace();
        let applied = self.machine.applied();
        // (A deposed leader decides at once: its proposals fail over.)
        let bootstrapped = !self.is_leader() || self.bootstrap_index <= applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(index, _, _)| *index <= applied && bootstrapped);
        self.deferred = waiting;
        for (_, command, reply) in ready {
            self.decide(*command, reply);
        }
        self.share_leader();
        self.publish_metrics();
        self.checkpoint();
        self.compact_log()?;
        self.compact_history();
        Ok(())
    }

    /// Makes a Ready's new entries durable, then sends the messages that
    /// acknowledge them (raft-rs's persisted messages).
    fn flush_and_acknowledge(&mut self, ready: &mut raft::Ready) -> Result<(), StorageError> {
        // `advance` tells raft that every earlier Ready is durable too,
        // including any whose flush the flusher has not reported yet.
        if ready.must_sync() || self.flusher.pending() {
            self.storage.flush()?;
            self.flusher.covered();
        }
        self.transport.send(ready.take_persisted_messages());
        Ok(())
    }

    /// Hands a Ready flushed here back to raft, and applies what becomes
    /// committed with it (answering its writers at once if `answer_early`).
    fn advance_and_apply(
        &mut self,
        ready: raft::Ready,
        answer_early: bool,
        records: &mut Vec<Arc<berth_proto::internal::HistoryRecord>>,
        answers: &mut Vec<(Reply, Result<Applied, ApiError>)>,
    ) -> Result<(), StorageError> {
        let mut light = self.raw.advance(ready);
        let mut batch = WriteBatch::new();
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit, &mut batch)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries(), records, answers)?;
        // Readers see the new state before writers hear back.
        self.publish_applied(records);
        if answer_early {
            answer(answers);
        }
        // These writes are already safe in the log. A single member flushes
        // them before its writers hear back: its stored commit index is then
        // all a restart has to tell that an acknowledged write went missing
        // (and its store is quiet once writers hear back).
        let settle = !batch.is_empty();
        self.storage.write(batch)?;
        if settle {
            self.storage.flush()?;
        }
        self.raw.advance_apply();
        Ok(())
    }

    /// Answers the reads whose read index raft confirmed, and queues the
    /// checked writes that waited for one.
    fn answer_reads(&mut self, read_states: Vec<raft::ReadState>) {
        for state in read_states {
            let Ok(ctx) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(inflight) = self.inflight_reads.remove(&u64::from_be_bytes(ctx)) {
                for read in inflight.reads {
                    match read.kind {
                        ReadKind::Index(reply) => {
                            let _ = reply.send(Ok(state.index));
                        }
                        ReadKind::Check(command, reply) => {
                            self.deferred.push((state.index, command, reply))
                        }
                    }
                }
            }
        }
    }

    /// Keeps `history_retention` revisions of history for watches, deleting
    /// older ones in bulk once a tenth more has accumulated.
    fn compact_history(&mut self) {
        let retention = self.settings.history_retention;
        let revision = self.machine.revision();
        if revision.saturating_sub(self.hub.compacted()) <= retention + retention / 10 {
            return;
        }
        let upto = revision - retention;
        self.hub.begin_compaction(upto);
        if let Err(e) = self.storage.compact_history(upto) {
            // Not fatal: the history stays longer than asked.
            tracing::warn!(error = %e, upto, "history compaction failed");
        }
    }

    fn apply(
        &mut self,
        entries: Vec<Entry>,
        records: &mut Vec<Arc<berth_proto::internal::HistoryRecord>>,
        answers: &mut Vec<(Reply, Result<Applied, ApiError>)>,
    ) -> Result<(), StorageError> {
        if !entries.is_empty() {
            // Apply in place if no reader holds the published state; readers
            // wait for this turn's publish.
            self.hub.reclaim();
        }
        for entry in entries {
            let index = entry.index;
            if index <= self.machine.applied() {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => self.machine.skip(index),
                EntryType::EntryNormal => {
                    let (proposer, request_id) = parse_proposal_context(&entry.context);
                    // Ours only if it sits where we appended it: request ids
                    // restart at 1 with the process, so an entry of an
                    // earlier incarnation still being replayed can carry the
                    // id of a new proposal (found by the full-disk test: the
                    // new command was applied in the old entry's place).
                    let mine = proposer == self.id
                        && self
                            .pending
                            .get(&request_id)
                            .is_some_and(|p| p.index == index);
                    let mut mine = if mine {
                        self.pending.remove(&request_id)
                    } else {
                        None
                    };
                    let command = match mine.as_mut().and_then(|p| p.command.take()) {
                        Some(command) => Some(command),
                        None => Command::decode(entry.data.as_ref()).ok(),
                    };
                    let Some(command) = command else {
                        tracing::error!(
                            member = self.id,
                            index,
                            "an entry does not decode; skipped"
                        );
                        self.machine.skip(index);
                        continue;
                    };
                    let result = self.machine.apply(index, command);
                    if let Ok(Applied {
                        record: Some(record),
                        ..
                    }) = &result
                    {
                        records.push(record.clone());
                    }
                    if let Some(pending) = mine {
                        self.by_index.remove(&pending.index);
                        let latency = pending.proposed_at.elapsed().as_secs_f64();
                        self.settings.metrics.observe_proposal(latency);
                        answers.push((pending.reply, result));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data).map_err(|e| {
                        StorageError::Corrupt(format!(
                            "conf change at {index} does not decode: {e}"
                        ))
                    })?;
                    // Berth proposes only V2 changes; a V1 one is its single change.
                    let v2 = ConfChangeV2 {
                        changes: vec![ConfChangeSingle {
                            change_type: cc.get_change_type(),
                            node_id: cc.node_id,
                            ..Default::default()
                        }]
                        .into(),
                        ..Default::default()
                    };
                    self.apply_conf_change(index, &v2, &[])?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data).map_err(|e| {
                        StorageError::Corrupt(format!(
                            "conf change at {index} does not decode: {e}"
                        ))
                    })?;
                    let context =
                        MemberChangeRecord::decode(entry.context.as_ref()).unwrap_or_default();
                    self.apply_conf_change(index, &cc, &context.add)?;
                    if context.proposer == self.id
                        && self
                            .pending
                            .get(&context.request_id)
                            .is_some_and(|p| p.index == index)
                        && let Some(pending) = self.pending.remove(&context.request_id)
                    {
                        self.by_index.remove(&pending.index);
                        let object = Arc::new(pb::Object::default());
                        answers.push((
                            pending.reply,
                            Ok(Applied {
                                outcome: crate::state_machine::Outcome::Updated,
                                object,
                                revision: self.machine.revision(),
                                record: None,
                                batch: Vec::new(),
                            }),
                        ));
                    }
                }
            }
            // Proposals waiting at this index or below lost it to another entry.
            while let Some((&at, _)) = self.by_index.first_key_value() {
                if at > index {
                    break;
                }
                if let Some(request_id) = self.by_index.remove(&at)
                    && let Some(pending) = self.pending.remove(&request_id)
                {
                    answers.push((
                        pending.reply,
                        Err(ApiError::Unavailable(
                            "leadership changed before the write was committed; it was not applied, retry".into(),
                        )),
                    ));
                }
            }
        }
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        index: u64,
        cc: &ConfChangeV2,
        added: &[pb::Member],
    ) -> Result<(), StorageError> {
        let conf_state = match self.raw.apply_conf_change(cc) {
            Ok(cs) => cs,
            Err(e) => {
                tracing::warn!(member = self.id, index, error = %e, "membership change not applied");
                self.machine.skip(index);
                return Ok(());
            }
        };
        let mut membership: Membership = (**self.machine.membership()).clone();
        for member in added {
            membership
                .addresses
                .insert(member.id, member.address.clone());
        }
        let present: Vec<u64> = conf_state
            .voters
            .iter()
            .chain(&conf_state.voters_outgoing)
            .chain(&conf_state.learners)
            .chain(&conf_state.learners_next)
            .copied()
            .collect();
        membership.addresses.retain(|id, _| present.contains(id));
        membership.conf_state = conf_state.clone();
        tracing::info!(
            member = self.id,
            index,
            voters = ?conf_state.voters,
            outgoing = ?conf_state.voters_outgoing,
            learners = ?conf_state.learners,
            "membership changed"
        );
        self.raw.mut_store().set_conf_state(conf_state);
        self.machine.set_membership(index, membership);
        // The stored member list and raft configuration change together.
        self.checkpoint_due = true;
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: &raft::eraftpb::Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        let Some(incoming) = self.shelf.take_incoming(meta.index) else {
            return Err(StorageError::Corrupt(format!(
                "raft asked to install the snapshot at {} but its objects never arrived",
                meta.index
            )));
        };
        // No checkpoint of the old state may land after this.
        let _exclusive = self.checkpointer.exclusive();
        self.checkpoint_running = false;
        let mut batch = WriteBatch::new();
        self.storage.clear_all(&mut batch)?;
        self.raw.mut_store().install_snapshot(meta, &mut batch)?;
        let membership = Membership::from_record(&incoming.members, meta.get_conf_state().clone());
        let objects = incoming.objects.len();
        self.machine.install(
            meta.index,
            incoming.revision,
            incoming.objects,
            membership,
            &mut batch,
        );
        self.storage.write(batch)?;
        self.storage.flush()?;
        // The snapshot replaces the history before it.
        self.unsaved_history.clear();
        self.history_in_flight.clear();
        self.hub.reset(self.machine.snapshot(), incoming.revision);
        self.shelf.count_installed();
        tracing::info!(
            member = self.id,
            index = meta.index,
            objects,
            "snapshot installed"
        );
        Ok(())
    }

    /// Sets the raft gauges (a few atomic stores per turn).
    fn publish_metrics(&self) {
        let metrics = &self.settings.metrics;
        let raft = &self.raw.raft;
        metrics.term.set(raft.term as i64);
        metrics.commit_index.set(raft.raft_log.committed as i64);
        metrics.applied_index.set(self.machine.applied() as i64);
        metrics.leader.set(i64::from(self.is_leader()));
    }

    /// Publishes who leads, when it changed.
    fn share_leader(&self) {
        let id = self.raw.raft.leader_id;
        let address = self.machine.membership().address(id).map(str::to_string);
        let known = self
            .leader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if known.0 != id || known.1 != address {
            if id != 0 && known.0 != id {
                self.settings.metrics.leader_changes.inc();
            }
            *self.leader.write().unwrap_or_else(|e| e.into_inner()) = (id, address);
        }
    }

    /// Publishes the state as applied so far with its new history records
    /// (queued for the next checkpoint too), which opens the hub's gate.
    fn publish_applied(&mut self, records: &mut Vec<Arc<berth_proto::internal::HistoryRecord>>) {
        self.queue_history(records);
        self.hub
            .publish(self.machine.snapshot(), std::mem::take(records));
    }

    /// Queues the records not stored yet for the next checkpoint (a restart
    /// replays the log after the last checkpoint, and makes again records
    /// that are stored already).
    fn queue_history(&mut self, records: &[Arc<berth_proto::internal::HistoryRecord>]) {
        let new = records.partition_point(|r| r.revision <= self.history_stored);
        if let Some(last) = records[new..].last() {
            self.history_stored = last.revision;
            self.unsaved_history.extend_from_slice(&records[new..]);
        }
    }

    /// Writes the state machine's changes to disk every half threshold of
    /// entries (and after a membership change), so that the log before it
    /// can be dropped and a restart replays at most about a threshold.
    fn checkpoint(&mut self) {
        let interval = (self.settings.snapshot_threshold / 2).max(1);
        let due = self.checkpoint_due || self.machine.applied() >= self.checkpointed + interval;
        if !due || self.checkpoint_running {
            return;
        }
        let checkpoint = self.machine.take_checkpoint();
        self.history_in_flight = std::mem::take(&mut self.unsaved_history);
        self.checkpointer.submit(
            checkpoint,
            self.raw.store().conf_state().clone(),
            self.history_in_flight.clone(),
        );
        self.checkpoint_running = true;
        self.checkpoint_due = false;
    }

    fn checkpoint_done(&mut self, epoch: u64, applied: u64, error: Option<String>) {
        if epoch != self.checkpointer.epoch() {
            return; // overtaken by a snapshot install
        }
        self.checkpoint_running = false;
        match error {
            None => {
                self.checkpointed = self.checkpointed.max(applied);
                self.history_in_flight.clear();
                self.hub.history_stored(applied);
                tracing::debug!(member = self.id, applied, "state checkpointed");
            }
            Some(reason) => self.fail(StorageError::Corrupt(format!(
                "a checkpoint failed: {reason}"
            ))),
        }
    }

    /// A checkpoint written here and now (when stopping cleanly).
    fn checkpoint_now(&mut self) -> Result<(), StorageError> {
        let _exclusive = self.checkpointer.exclusive();
        // The checkpoint handed over last may have been written, or dropped
        // from the queue by `exclusive`: its records go again unless stored.
        let stored = self.storage.last_history_revision()?;
        let history = std::mem::take(&mut self.history_in_flight)
            .into_iter()
            .chain(std::mem::take(&mut self.unsaved_history))
            .filter(|r| r.revision > stored)
            .collect();
        let job = checkpoint::Job {
            epoch: 0,
            checkpoint: self.machine.take_checkpoint(),
            conf_state: self.raw.store().conf_state().clone(),
            history,
        };
        checkpoint::write(&self.storage, &job)
    }

    /// Drops entries once the log is longer than the threshold, keeping half
    /// of it (so that followers a little behind need no snapshot) and every
    /// entry after the last checkpoint (a restart replays them).
    fn compact_log(&mut self) -> Result<(), StorageError> {
        let store = self.raw.store();
        let length = store.last_index().saturating_sub(store.first_index()) + 1;
        if length <= self.settings.snapshot_threshold {
            return Ok(());
        }
        let upto = self
            .machine
            .applied()
            .saturating_sub(self.settings.snapshot_threshold / 2)
            .min(self.checkpointed);
        if upto < store.first_index() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        self.raw.mut_store().compact(upto, &mut batch)?;
        self.storage.write_atomic(batch)?;
        tracing::debug!(member = self.id, upto, "log compacted");
        Ok(())
    }

    /// A new leader of a cluster without the `default` namespace creates it.
    fn ensure_default_namespace(&mut self) {
        let term = self.raw.raft.term;
        if !self.is_leader() || self.bootstrapped_in_term == term {
            return;
        }
        let key = ObjectKey::new(pb::Kind::Namespace, "", DEFAULT_NAMESPACE);
        // Wait until this leader has applied everything of earlier terms.
        if self.machine.applied() < self.raw.raft.raft_log.committed || self.machine.contains(&key)
        {
            if self.machine.contains(&key) {
                self.bootstrapped_in_term = term;
            }
            return;
        }
        self.bootstrapped_in_term = term;
        let namespace = pb::Object::from(pb::Namespace {
            metadata: Some(pb::ObjectMeta {
                name: DEFAULT_NAMESPACE.into(),
                ..Default::default()
            }),
            spec: Some(pb::NamespaceSpec::default()),
        });
        let command = Command {
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            op: Some(Op::Apply(ApplyOp {
                object: Some(namespace),
                create_only: true,
                new_uid: format!("default-{term}-{}", self.id),
            })),
        };
        self.propose(command, Reply::None);
        self.bootstrap_index = self.raw.raft.raft_log.last_index();
    }

    fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        let progress = if raft.state == StateRole::Leader {
            let mut progress: Vec<pb::MemberProgress> = raft
                .prs()
                .iter()
                .map(|(id, pr)| pb::MemberProgress {
                    id: *id,
                    matched: pr.matched,
                    state: match pr.state {
                        ProgressState::Probe => "probe",
                        ProgressState::Replicate => "replicate",
                        ProgressState::Snapshot => "snapshot",
                    }
                    .into(),
                    recent_active: pr.recent_active || *id == self.id,
                })
                .collect();
            progress.sort_by_key(|p| p.id);
            progress
        } else {
            Vec::new()
        };
        NodeStatus {
            member_id: self.id,
            leader_id: raft.leader_id,
            term: raft.term,
            role,
            commit: raft.raft_log.committed,
            applied: self.machine.applied(),
            first_index: self.raw.store().first_index(),
            last_index: self.raw.store().last_index(),
            progress,
        }
    }
}
