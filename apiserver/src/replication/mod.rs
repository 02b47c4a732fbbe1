//! Replication: the apiserver's log, agreed on by its members with raft-rs.
//!
//! ```text
//!   service ──Replica::propose──▶ raft loop (one thread, node.rs)
//!      ▲     ◀─ forwarded to the leader if this member is not it
//!      │                  │ Ready: send messages ─▶ transport ─▶ peers
//!      │                  │        append + fsync (one per Ready: group commit)
//!      │                  │        apply committed entries ─▶ state machine
//!      └──── reply ◀──────┘        publish snapshot ─▶ readers, watchers
//! ```
//!
//! - [`node`]: the Ready loop — proposals, reads, membership, apply, persist.
//! - [`log_store`]: raft-rs's `Storage` over the sled store.
//! - [`transport`]: batched streams between members, snapshot streaming, and
//!   the gRPC service that receives them.
//! - [`snapshots`]: where snapshots wait between the loop and the transport.
//!
//! [`Replica`] is what the rest of the apiserver sees: propose a command,
//! confirm a read is current, change membership, report status.

mod checkpoint;
mod flusher;
mod log_store;
mod logger;
mod node;
mod snapshots;
pub mod transport;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_proto::internal::{Command, ProposeRequest, raft_client::RaftClient};
use berth_proto::pb;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub use log_store::LogStore;
pub use snapshots::SnapshotShelf;

use crate::error::ApiError;
use crate::state_machine::{Applied, Outcome, StateMachine};
use crate::storage::{LoadedLog, Storage};
use crate::watch::WatchHub;

/// Timing and sizes of the raft loop.
#[derive(Debug, Clone)]
pub struct Settings {
    pub member_id: u64,
    /// Where this member serves (sent to peers with every batch).
    pub advertise: String,
    /// One raft tick.
    pub tick: Duration,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Ticks without a leader before a follower campaigns (randomized up to
    /// half as many again: raft-rs's `max_election_tick` is set to 3/2 of
    /// this in `node.rs`).
    pub election_ticks: usize,
    /// Compact the log once it holds more entries than this.
    pub snapshot_threshold: u64,
    /// How long a proposal may wait to be committed.
    pub proposal_timeout: Duration,
    /// History revisions kept for watches.
    pub history_retention: u64,
    /// Whether the Partition RPC (test fault injection) is served.
    pub fault_injection: bool,
    /// The data dir, whose free space is watched.
    pub data_dir: std::path::PathBuf,
    pub disk_reserve: crate::disk::Reserve,
    pub metrics: crate::metrics::RaftMetrics,
}

/// What the raft loop is asked to do.
pub(crate) enum Input {
    Propose {
        command: Box<Command>,
        reply: oneshot::Sender<Result<Applied, ApiError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, ApiError>>,
    },
    ChangeMembers {
        change: MemberChange,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    Step(Box<raft::eraftpb::Message>),
    Unreachable(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    CheckpointDone {
        epoch: u64,
        applied: u64,
        error: Option<String>,
    },
    /// The flusher made the Readies up to `number` durable (or failed to).
    Persisted {
        number: u64,
        result: Result<(), crate::storage::StorageError>,
    },
    Shutdown,
}

/// A membership change, as the Cluster service asks for it.
#[derive(Debug, Clone)]
pub enum MemberChange {
    AddLearner {
        id: u64,
        address: String,
    },
    /// Make a caught-up learner a voter, optionally removing a voter in the
    /// same joint-consensus step.
    Promote {
        id: u64,
        replace: Option<u64>,
    },
    Remove {
        id: u64,
    },
}

/// One member's view of the cluster.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub member_id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub role: &'static str,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub progress: Vec<pb::MemberProgress>,
}

/// The apiserver's handle on replication. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    member_id: u64,
    inputs: mpsc::Sender<Input>,
    hub: Arc<WatchHub>,
    shelf: Arc<SnapshotShelf>,
    /// Members whose traffic is dropped (fault injection).
    blocked: Arc<RwLock<HashSet<u64>>>,
    /// Clients of other members, for forwarding.
    peers: Arc<Mutex<HashMap<String, RaftClient<Channel>>>>,
    /// Addresses learned from peers' batches, for members not (yet) in the
    /// replicated member list.
    address_book: Arc<RwLock<HashMap<u64, String>>>,
    /// The leader as the raft loop last saw it: id and address.
    leader: Arc<RwLock<(u64, Option<String>)>>,
    fault_injection: bool,
}

/// The raft loop's thread, and word from it that the member must restart
/// from its store (after a full disk, once space is back).
pub struct Running {
    pub thread: std::thread::JoinHandle<()>,
    pub restart_wanted: oneshot::Receiver<()>,
}

/// Starts the raft loop on its own thread.
pub fn start(
    settings: Settings,
    storage: Storage,
    log: LoadedLog,
    machine: StateMachine,
    hub: Arc<WatchHub>,
) -> anyhow::Result<(Replica, Running)> {
    let shelf = Arc::new(SnapshotShelf::new(settings.metrics.clone()));
    let blocked: Arc<RwLock<HashSet<u64>>> = Arc::default();
    let address_book: Arc<RwLock<HashMap<u64, String>>> = Arc::default();
    let leader: Arc<RwLock<(u64, Option<String>)>> = Arc::default();
    let (inputs, receiver) = mpsc::channel();
    let transport = transport::Transport::new(
        settings.member_id,
        settings.advertise.clone(),
        address_book.clone(),
        hub.clone(),
        shelf.clone(),
        blocked.clone(),
        inputs.clone(),
        tokio::runtime::Handle::current(),
    );
    let log = LogStore::new(storage.clone(), log, hub.clone(), shelf.clone());
    let (restart, restart_wanted) = oneshot::channel();
    let node = node::Node::new(
        &settings,
        log,
        storage,
        machine,
        hub.clone(),
        shelf.clone(),
        transport,
        receiver,
        inputs.clone(),
        leader.clone(),
        restart,
    )?;
    let thread = std::thread::Builder::new()
        .name("berth-raft".into())
        .spawn(move || node.run())?;
    let replica = Replica {
        member_id: settings.member_id,
        inputs,
        hub,
        shelf,
        blocked,
        peers: Arc::default(),
        address_book,
        leader,
        fault_injection: settings.fault_injection,
    };
    Ok((
        replica,
        Running {
            thread,
            restart_wanted,
        },
    ))
}

/// Writes the first state of a brand-new cluster (see [`LogStore::bootstrap`]).
pub fn bootstrap(storage: &Storage, members: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    Ok(LogStore::bootstrap(storage, members)?)
}

/// Writes the first state of a cluster restored from a snapshot file (see
/// [`LogStore::bootstrap_restored`]).
pub fn bootstrap_restored(
    storage: &Storage,
    members: &BTreeMap<u64, String>,
    backup: berth_proto::backup::Backup,
) -> anyhow::Result<()> {
    Ok(LogStore::bootstrap_restored(storage, members, backup)?)
}

impl Replica {
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    pub fn shelf(&self) -> &Arc<SnapshotShelf> {
        &self.shelf
    }

    async fn ask<T>(&self, input: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(input(reply))
            .map_err(|_| ApiError::ShuttingDown)?;
        answer.await.map_err(|_| ApiError::ShuttingDown)
    }

    /// Commits and applies `command`, forwarding it to the leader when this
    /// member is not the leader. Returns the leader's address when forwarded,
    /// so that the client can go there directly next time.
    pub async fn propose(&self, command: Command) -> Result<(Applied, Option<String>), ApiError> {
        let (leader_id, address) = self
            .leader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match address {
            Some(address) if leader_id != 0 && leader_id != self.member_id => {
                let applied = self.forward(leader_id, &address, command).await?;
                Ok((applied, Some(address)))
            }
            // This member leads (or no one does: the loop says so).
            _ => self
                .propose_here(command)
                .await
                .map(|applied| (applied, None)),
        }
    }

    /// Commits and applies `command` if this member leads; never forwards.
    pub async fn propose_here(&self, command: Command) -> Result<Applied, ApiError> {
        self.ask(|reply| Input::Propose {
            command: Box::new(command),
            reply,
        })
        .await?
    }

    async fn forward(
        &self,
        leader_id: u64,
        address: &str,
        command: Command,
    ) -> Result<Applied, ApiError> {
        if self.is_blocked(leader_id) {
            return Err(ApiError::Unavailable(format!(
                "member {leader_id} (the leader) is unreachable from here"
            )));
        }
        let mut client = self.peer(address)?;
        let response = client
            .propose(ProposeRequest {
                command: Some(command),
            })
            .await
            .map_err(|status| match status.code() {
                // The leader never received it, or lost leadership: a retry is safe to try.
                tonic::Code::Unavailable => ApiError::Unavailable(format!(
                    "forwarding to the leader (member {leader_id} at {address}) failed: {}",
                    status.message()
                )),
                _ => ApiError::from(status),
            })?
            .into_inner();
        let outcome = match response.outcome() {
            berth_proto::internal::Outcome::Created => Outcome::Created,
            berth_proto::internal::Outcome::Updated => Outcome::Updated,
            berth_proto::internal::Outcome::Deleted => Outcome::Deleted,
            _ => Outcome::Unchanged,
        };
        let revision = response.revision;
        // Read-your-writes here: wait until this member has applied it too.
        self.hub.wait_applied(revision).await?;
        Ok(Applied {
            outcome,
            object: Arc::new(response.object.unwrap_or_default()),
            revision,
            record: None,
            batch: response
                .results
                .into_iter()
                .map(crate::error::from_batch_result)
                .collect(),
        })
    }

    fn peer(&self, address: &str) -> Result<RaftClient<Channel>, ApiError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = peers.get(address) {
            return Ok(client.clone());
        }
        let endpoint = berth_proto::connect::endpoint(address)
            .map_err(|e| ApiError::Unavailable(format!("bad member address: {e}")))?;
        let client = transport::raft_client(endpoint.connect_lazy());
        peers.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Returns once this member's state is at least as new as every write
    /// acknowledged before the call (raft's ReadIndex), so that a read served
    /// after it is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let index = self.ask(|reply| Input::ReadIndex { reply }).await??;
        self.hub.wait_applied(index).await?;
        Ok(())
    }

    pub async fn change_members(&self, change: MemberChange) -> Result<(), ApiError> {
        self.ask(|reply| Input::ChangeMembers { change, reply })
            .await?
    }

    pub async fn status(&self) -> Result<NodeStatus, ApiError> {
        self.ask(|reply| Input::Status { reply }).await
    }

    /// Whether this member leads, as the raft loop last said.
    pub fn is_leader(&self) -> bool {
        self.leader.read().unwrap_or_else(|e| e.into_inner()).0 == self.member_id
    }

    /// The leader's id and address, as the raft loop last said.
    pub fn leader(&self) -> (u64, Option<String>) {
        self.leader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the raft loop (it answers what is queued first).
    pub fn shutdown(&self) {
        let _ = self.inputs.send(Input::Shutdown);
    }

    pub fn fault_injection(&self) -> bool {
        self.fault_injection
    }

    /// Drops all traffic to and from `blocked` (test fault injection).
    pub fn partition(&self, blocked: impl IntoIterator<Item = u64>) {
        let mut set = self.blocked.write().unwrap_or_else(|e| e.into_inner());
        set.clear();
        set.extend(blocked);
    }

    /// Remembers where a peer serves, from its own batches.
    pub fn learn_address(&self, member: u64, address: &str) {
        if member == 0 || address.is_empty() || member == self.member_id {
            return;
        }
        let known = self
            .address_book
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&member)
            .is_some_and(|a| a == address);
        if !known {
            self.address_book
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(member, address.to_string());
        }
    }

    pub fn is_blocked(&self, member: u64) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&member)
    }

    pub(crate) fn inputs(&self) -> &mpsc::Sender<Input> {
        &self.inputs
    }
}
