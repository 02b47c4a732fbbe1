//! Messages between members.
//!
//! Sending: one task per peer owns one client-streaming `Raft.Send` call and
//! packs whatever raft messages are queued into each batch (as TiKV does). A
//! broken stream — noticed even while idle — is re-opened after a short
//! pause, and raft is told the peer is unreachable. Messages the broken
//! stream did not take go out on the next one, as do election messages
//! queued meanwhile (raft would not repeat them before another election
//! timeout); stale appends are dropped, raft resends from what the peer has. Snapshots go on their own `Raft.InstallSnapshot` stream: the
//! MsgSnapshot, then the objects in chunks, then a trailer.
//!
//! Receiving: [`RaftService`] decodes batches and hands each message to the
//! raft loop; a received snapshot is shelved before its message is stepped.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_proto::internal::raft_client::RaftClient;
use berth_proto::internal::raft_server::{Raft, RaftServer};
use berth_proto::internal::{
    ObjectBatch, Outcome as WireOutcome, PartitionRequest, ProposeRequest, ProposeResponse,
    RaftAck, RaftBatch, SnapshotChunk, SnapshotTrailer, snapshot_chunk::Part,
};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc as async_mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::snapshots::{Incoming, SnapshotShelf};
use super::{Input, Replica};
use crate::state_machine::Outcome;
use crate::watch::WatchHub;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 16 * 1024;
/// Most messages and bytes in one batch.
const BATCH_MESSAGES: usize = 512;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Objects per snapshot chunk (bounded by bytes too).
const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest message the raft service decodes (a batch, a snapshot chunk).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// A `Raft` client with the raft service's message limits.
pub fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

/// Sends the raft loop's messages to peers. Owned by the raft thread.
pub struct Transport {
    member_id: u64,
    advertise: String,
    address_book: Arc<RwLock<HashMap<u64, String>>>,
    hub: Arc<WatchHub>,
    shelf: Arc<SnapshotShelf>,
    blocked: Arc<RwLock<HashSet<u64>>>,
    inputs: mpsc::Sender<Input>,
    runtime: tokio::runtime::Handle,
    peers: HashMap<u64, Peer>,
}

struct Peer {
    address: String,
    queue: async_mpsc::Sender<Message>,
}

impl Transport {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        member_id: u64,
        advertise: String,
        address_book: Arc<RwLock<HashMap<u64, String>>>,
        hub: Arc<WatchHub>,
        shelf: Arc<SnapshotShelf>,
        blocked: Arc<RwLock<HashSet<u64>>>,
        inputs: mpsc::Sender<Input>,
        runtime: tokio::runtime::Handle,
    ) -> Transport {
        Transport {
            member_id,
            advertise,
            address_book,
            hub,
            shelf,
            blocked,
            inputs,
            runtime,
            peers: HashMap::new(),
        }
    }

    fn is_blocked(&self, member: u64) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&member)
    }

    /// Queues messages for their peers; never blocks the raft loop.
    pub fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if to == self.member_id || self.is_blocked(to) {
                continue;
            }
            let address = self
                .hub
                .membership()
                .address(to)
                .map(str::to_string)
                .or_else(|| {
                    self.address_book
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&to)
                        .cloned()
                });
            let Some(address) = address else {
                tracing::debug!(to, "no address for member; message dropped");
                let _ = self.inputs.send(Input::Unreachable(to));
                continue;
            };
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(message, address);
                continue;
            }
            let queue = self.peer(to, &address);
            if queue.try_send(message).is_err() {
                let _ = self.inputs.send(Input::Unreachable(to));
            }
        }
    }

    /// The queue of a peer's sender task, started (or restarted when the
    /// peer's address changed) as needed.
    fn peer(&mut self, to: u64, address: &str) -> async_mpsc::Sender<Message> {
        if let Some(peer) = self.peers.get(&to)
            && peer.address == address
            && !peer.queue.is_closed()
        {
            return peer.queue.clone();
        }
        let (queue, receiver) = async_mpsc::channel(PEER_QUEUE);
        let task = PeerSender {
            to,
            from_id: self.member_id,
            from_address: self.advertise.clone(),
            address: address.to_string(),
            inputs: self.inputs.clone(),
            blocked: self.blocked.clone(),
        };
        self.runtime.spawn(task.run(receiver));
        self.peers.insert(
            to,
            Peer {
                address: address.to_string(),
                queue: queue.clone(),
            },
        );
        queue
    }

    fn send_snapshot(&self, message: Message, address: String) {
        let to = message.to;
        let index = message.get_snapshot().get_metadata().index;
        let inputs = self.inputs.clone();
        let shelf = self.shelf.clone();
        self.runtime.spawn(async move {
            let result = stream_snapshot(&message, &address, &shelf).await;
            match &result {
                Ok((objects, bytes)) => {
                    shelf.count_sent(*bytes);
                    tracing::info!(to, index, objects, "snapshot sent");
                }
                Err(e) => tracing::warn!(to, index, error = %e, "snapshot not sent"),
            }
            let _ = inputs.send(Input::SnapshotDone {
                to,
                ok: result.is_ok(),
            });
        });
    }
}

/// Owns the stream to one peer.
struct PeerSender {
    to: u64,
    from_id: u64,
    from_address: String,
    address: String,
    inputs: mpsc::Sender<Input>,
    blocked: Arc<RwLock<HashSet<u64>>>,
}

impl PeerSender {
    async fn run(self, mut queue: async_mpsc::Receiver<Message>) {
        let endpoint = match berth_proto::connect::endpoint(&self.address) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                tracing::warn!(to = self.to, error = %e, "bad member address");
                return;
            }
        };
        let channel = endpoint.connect_lazy();
        // Messages a broken stream did not take: sent again on the next one
        // (raft ignores duplicates; a lost vote would cost an election).
        let mut carried: Vec<Message> = Vec::new();
        loop {
            let (batches, stream) = async_mpsc::channel::<RaftBatch>(64);
            let mut client = raft_client(channel.clone());
            let mut call =
                tokio::spawn(async move { client.send(ReceiverStream::new(stream)).await });
            // Pump until the stream breaks — noticed while idle too, so that
            // the next message goes out on a fresh stream rather than into
            // a dead one — or the raft loop stops.
            let ended = loop {
                let mut messages = std::mem::take(&mut carried);
                if messages.is_empty() {
                    tokio::select! {
                        message = queue.recv() => match message {
                            Some(message) => messages.push(message),
                            None => return, // the raft loop is gone
                        },
                        ended = &mut call => break Some(ended),
                    }
                }
                while messages.len() < BATCH_MESSAGES {
                    match queue.try_recv() {
                        Ok(m) => messages.push(m),
                        Err(_) => break,
                    }
                }
                if self
                    .blocked
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&self.to)
                {
                    continue;
                }
                let mut sent = true;
                for mut batch in encode_batches(&messages) {
                    batch.from_id = self.from_id;
                    batch.from_address.clone_from(&self.from_address);
                    if batches.send(batch).await.is_err() {
                        sent = false;
                        break;
                    }
                }
                if !sent {
                    carried = messages;
                    break None;
                }
            };
            drop(batches);
            let ended = match ended {
                Some(ended) => ended,
                None => call.await,
            };
            if let Ok(Err(status)) = ended {
                tracing::debug!(to = self.to, error = %status.message(), "stream to peer broke");
            }
            let _ = self.inputs.send(Input::Unreachable(self.to));
            tokio::time::sleep(RECONNECT_PAUSE).await;
            // Appends queued meanwhile are stale (raft probes the peer and
            // resends from what it has); elections are not, and raft does
            // not repeat a vote request before the next timeout.
            while let Ok(message) = queue.try_recv() {
                if is_election(&message) {
                    carried.push(message);
                }
            }
            carried.truncate(BATCH_MESSAGES);
        }
    }
}

/// Vote requests, their answers and leadership transfers.
fn is_election(message: &Message) -> bool {
    matches!(
        message.get_msg_type(),
        MessageType::MsgRequestVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVote
            | MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgTimeoutNow
    )
}

fn encode_batches(messages: &[Message]) -> Vec<RaftBatch> {
    let mut batches = Vec::new();
    let mut current = RaftBatch::default();
    let mut bytes = 0;
    for message in messages {
        let Ok(encoded) = message.write_to_bytes() else {
            continue;
        };
        if !current.messages.is_empty() && bytes + encoded.len() > BATCH_BYTES {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += encoded.len();
        current.messages.push(encoded);
    }
    if !current.messages.is_empty() {
        batches.push(current);
    }
    batches
}

/// Streams a shelved snapshot: message, objects in chunks, trailer. Returns
/// the number of objects sent.
async fn stream_snapshot(
    message: &Message,
    address: &str,
    shelf: &SnapshotShelf,
) -> anyhow::Result<(usize, u64)> {
    let index = message.get_snapshot().get_metadata().index;
    let view = shelf
        .outgoing(index)
        .ok_or_else(|| anyhow::anyhow!("the snapshot at index {index} is no longer shelved"))?;
    let endpoint = berth_proto::connect::endpoint(address)?;
    let mut client = raft_client(endpoint.connect_lazy());
    let (chunks, stream) = async_mpsc::channel::<SnapshotChunk>(4);
    let call =
        tokio::spawn(async move { client.install_snapshot(ReceiverStream::new(stream)).await });
    let send = |part: Part| {
        let chunks = chunks.clone();
        async move {
            chunks
                .send(SnapshotChunk { part: Some(part) })
                .await
                .map_err(|_| anyhow::anyhow!("the receiver closed the stream"))
        }
    };
    send(Part::Message(message.write_to_bytes()?)).await?;
    let mut batch = ObjectBatch::default();
    let mut bytes = 0;
    let mut total_bytes = 0u64;
    let mut count = 0;
    for object in view.objects.values() {
        bytes += object.encoded_len();
        total_bytes += object.encoded_len() as u64;
        batch.objects.push((**object).clone());
        count += 1;
        if bytes >= CHUNK_BYTES {
            send(Part::Objects(std::mem::take(&mut batch))).await?;
            bytes = 0;
        }
    }
    if !batch.objects.is_empty() {
        send(Part::Objects(batch)).await?;
    }
    send(Part::Trailer(SnapshotTrailer {
        revision: view.revision,
        object_count: count as u64,
        members: Some(view.membership.to_record()),
    }))
    .await?;
    drop(chunks);
    call.await??;
    Ok((count, total_bytes))
}

/// The receiving side: the `Raft` gRPC service.
#[derive(Clone)]
pub struct RaftService {
    pub replica: Replica,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Only members may replicate (and tests' admins cut links).
    pub auth: std::sync::Arc<berth_proto::auth::Authenticator>,
}

use crate::authz::ClusterAction;

impl RaftService {
    pub fn into_server(self) -> RaftServer<RaftService> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }

    /// Refuses callers that may not `action`.
    fn allow<T>(&self, request: &Request<T>, action: ClusterAction) -> Result<(), Status> {
        let who = self.auth.authenticate(request)?;
        match crate::authz::decide_cluster(&who, action) {
            crate::authz::Decision::Deny(what) => Err(self.auth.deny(&who, what)),
            _ => Ok(()),
        }
    }

    fn step(&self, message: Message) -> Result<(), Status> {
        if self.replica.is_blocked(message.from) {
            return Ok(());
        }
        self.replica
            .inputs()
            .send(Input::Step(Box::new(message)))
            .map_err(|_| Status::unavailable("the member is shutting down"))
    }
}

fn parse_message(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| Status::invalid_argument(format!("not a raft message: {e}")))
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftAck>, Status> {
        self.allow(&request, ClusterAction::Replicate)?;
        let mut stream = request.into_inner();
        let mut shutdown = self.shutdown.clone();
        loop {
            // A peer's stream never ends by itself: end it when stopping, so
            // that a graceful shutdown does not wait for it forever.
            let batch = tokio::select! {
                batch = stream.message() => batch?,
                _ = shutdown.wait_for(|stopped| *stopped) => {
                    return Err(Status::unavailable("the member is shutting down"));
                }
            };
            let Some(batch) = batch else { break };
            self.replica
                .learn_address(batch.from_id, &batch.from_address);
            for bytes in &batch.messages {
                self.step(parse_message(bytes)?)?;
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        self.allow(&request, ClusterAction::Replicate)?;
        let mut stream = request.into_inner();
        let message = match stream.message().await?.and_then(|c| c.part) {
            Some(Part::Message(bytes)) => parse_message(&bytes)?,
            _ => {
                return Err(Status::invalid_argument(
                    "a snapshot stream starts with its raft message",
                ));
            }
        };
        if message.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "the first chunk is not a MsgSnapshot",
            ));
        }
        let index = message.get_snapshot().get_metadata().index;
        let mut objects = Vec::new();
        let trailer = loop {
            match stream.message().await?.and_then(|c| c.part) {
                Some(Part::Objects(batch)) => objects.extend(batch.objects),
                Some(Part::Trailer(trailer)) => break trailer,
                Some(Part::Message(_)) => {
                    return Err(Status::invalid_argument("a second raft message"));
                }
                None => {
                    return Err(Status::invalid_argument(
                        "the snapshot stream ended without its trailer",
                    ));
                }
            }
        };
        if trailer.object_count != objects.len() as u64 {
            return Err(Status::invalid_argument(format!(
                "the snapshot announced {} objects but carried {}",
                trailer.object_count,
                objects.len()
            )));
        }
        tracing::info!(
            index,
            objects = objects.len(),
            from = message.from,
            "snapshot received"
        );
        self.replica.shelf().put_incoming(Incoming {
            index,
            revision: trailer.revision,
            objects,
            members: trailer.members.unwrap_or_default(),
        });
        self.step(message)?;
        Ok(Response::new(RaftAck {}))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        self.allow(&request, ClusterAction::Replicate)?;
        let command = request
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("command: required"))?;
        // A forwarded write is proposed here or refused: never forwarded again.
        let applied = self.replica.propose_here(command).await?;
        let outcome = match applied.outcome {
            Outcome::Created => WireOutcome::Created,
            Outcome::Updated => WireOutcome::Updated,
            Outcome::Unchanged => WireOutcome::Unchanged,
            Outcome::Deleted => WireOutcome::Deleted,
        };
        Ok(Response::new(ProposeResponse {
            outcome: outcome as i32,
            object: Some((*applied.object).clone()),
            revision: applied.revision,
            results: applied
                .batch
                .iter()
                .map(crate::error::batch_result)
                .collect(),
        }))
    }

    async fn partition(
        &self,
        request: Request<PartitionRequest>,
    ) -> Result<Response<RaftAck>, Status> {
        self.allow(&request, ClusterAction::Partition)?;
        if !self.replica.fault_injection() {
            return Err(Status::permission_denied(
                "fault injection is off; start berth-apiserver with --fault-injection",
            ));
        }
        let blocked = request.into_inner().blocked;
        tracing::warn!(?blocked, "fault injection: partitioned from these members");
        self.replica.partition(blocked);
        Ok(Response::new(RaftAck {}))
    }
}
