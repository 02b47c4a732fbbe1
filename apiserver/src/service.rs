//! The gRPC services: request checks, then replication or a snapshot read.
//!
//! Writes are checked in full before they are proposed (size, defaults, field
//! rules), so that a bad request never reaches the log; rules that depend on
//! other objects are the state machine's. Any member takes writes: a follower
//! forwards them to the leader. Reads are linearizable — confirmed current
//! with raft's ReadIndex — unless the request asks for a stale read.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_proto::auth::{Authenticator, Principal};
use berth_proto::defaults;
use berth_proto::internal::{
    ApplyOp, BatchOps, BindOp, Command, DeleteOp, SingleOp, UpdateStatusOp, command::Op, single_op,
};
use berth_proto::object::ObjectKey;
use berth_proto::pb::{
    self, cluster_client::ClusterClient, cluster_server::Cluster, nodes_client::NodesClient,
    nodes_server::Nodes, objects_server::Objects,
};
use berth_proto::selector::Selector;
use berth_proto::validate::{self, MAX_OBJECT_BYTES};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::authz::{self, Access, ClusterAction, Decision, Verb};
use crate::error::ApiError;
use crate::liveness::Liveness;
use crate::replication::{MemberChange, Replica};
use crate::state_machine::{Applied, Outcome};
use crate::watch::{Filter, WatchHub, run_watcher};

/// Events buffered per watch stream before the watcher waits for its client.
const WATCH_BUFFER: usize = 1024;
/// Metadata marking a request one member forwarded to another.
const FORWARDED: &str = "berth-forwarded";
/// How long a new member may take to catch up before it becomes a voter.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct ApiService {
    pub replica: Replica,
    pub liveness: Arc<Liveness>,
    pub hub: Arc<WatchHub>,
    pub shutdown: watch::Receiver<bool>,
    pub bookmark_every: Duration,
    pub proposal_timeout: Duration,
    /// Open watch streams (`berth_api_watchers`).
    pub watchers: berth_proto::metrics::Gauge,
    /// Who calls; the policy itself is [`authz`].
    pub auth: Arc<Authenticator>,
}

/// A response that names the leader when the write was forwarded to it.
fn respond<T>(message: T, leader: Option<String>) -> Response<T> {
    let mut response = Response::new(message);
    if let Some(leader) = leader
        && let Ok(value) = tonic::metadata::MetadataValue::try_from(leader.as_str())
    {
        response
            .metadata_mut()
            .insert(berth_proto::connect::LEADER_METADATA, value);
    }
    response
}

impl ApiService {
    async fn write(&self, op: Op) -> Result<(Applied, Option<String>), ApiError> {
        let command = Command {
            time_ms: now_ms(),
            op: Some(op),
        };
        match tokio::time::timeout(self.proposal_timeout, self.replica.propose(command)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Unavailable(format!(
                "the write was not confirmed within {:?}; its outcome is unknown",
                self.proposal_timeout
            ))),
        }
    }

    /// Makes the following read linearizable, unless `stale` is asked for.
    async fn before_read(&self, stale: bool) -> Result<(), ApiError> {
        if stale {
            return Ok(());
        }
        match tokio::time::timeout(self.proposal_timeout, self.replica.read_barrier()).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Unavailable(
                "this member could not confirm it is current (no quorum reachable?); retry, or ask for a stale read".into(),
            )),
        }
    }
}

/// Authorization: the policy's answer, plus the checks against stored
/// state that a node's "only what is bound to me" needs.
impl ApiService {
    fn who<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        self.auth.authenticate(request)
    }

    fn refuse(&self, who: &Principal, what: impl std::fmt::Display) -> ApiError {
        ApiError::PermissionDenied(self.auth.denied(who, what))
    }

    /// `Ok(None)`: allowed; `Ok(Some(node))`: allowed for what is bound
    /// to that node only.
    fn decide(&self, who: &Principal, access: &Access) -> Result<Option<String>, ApiError> {
        match authz::decide(who, access) {
            Decision::Allow => Ok(None),
            Decision::BoundTo(node) => Ok(Some(node)),
            Decision::Deny(what) => Err(self.refuse(who, what)),
        }
    }

    fn allow_cluster(&self, who: &Principal, action: ClusterAction) -> Result<(), ApiError> {
        match authz::decide_cluster(who, action) {
            Decision::Deny(what) => Err(self.refuse(who, what)),
            _ => Ok(()),
        }
    }

    /// Checks one admitted write of a batch against the caller's rights.
    fn authorize_op(&self, who: &Principal, op: &single_op::Op) -> Result<(), ApiError> {
        let (verb, key, object) = match op {
            single_op::Op::Apply(a) => (
                Verb::Apply,
                object_key(a.object.as_ref()),
                a.object.as_ref(),
            ),
            single_op::Op::UpdateStatus(u) => (
                Verb::UpdateStatus,
                object_key(u.object.as_ref()),
                u.object.as_ref(),
            ),
            single_op::Op::Delete(d) => (
                Verb::Delete,
                ObjectKey::new(
                    pb::Kind::try_from(d.kind).unwrap_or(pb::Kind::Unspecified),
                    d.namespace.clone(),
                    d.name.clone(),
                ),
                None,
            ),
            single_op::Op::Bind(b) => (
                Verb::Bind,
                ObjectKey::new(pb::Kind::Task, b.namespace.clone(), b.task.clone()),
                None,
            ),
        };
        self.authorize_write(who, verb, &key, object)
    }

    /// Checks a write of `object` (or, for a delete or bind, of `key`).
    fn authorize_write(
        &self,
        who: &Principal,
        verb: Verb,
        key: &ObjectKey,
        object: Option<&pb::Object>,
    ) -> Result<(), ApiError> {
        let access = access_to(verb, key);
        let Some(node) = self.decide(who, &access)? else {
            return Ok(());
        };
        let snapshot = self.hub.snapshot();
        let stored_on =
            |key: &ObjectKey| snapshot.get(key).is_some_and(|o| object_bound_to(o, &node));
        let mine = match object.and_then(|o| o.kind.as_ref()) {
            // Its own task, staying its own (the state machine refuses a
            // status write that moves a task, should it be re-created
            // meanwhile).
            Some(pb::object::Kind::Task(task)) => task.bound_node() == node && stored_on(key),
            // An event in the namespace of what it is about; one already
            // stored under its name must be about the same (a node neither
            // overwrites nor squats another's events).
            Some(pb::object::Kind::Event(event)) => {
                let about_mine = |event: &pb::Event| {
                    event
                        .involved
                        .as_ref()
                        .is_some_and(|r| match pb::Kind::try_from(r.kind) {
                            Ok(pb::Kind::Node) => r.name == node,
                            Ok(pb::Kind::Task) => {
                                r.namespace == key.namespace
                                    && stored_on(&ObjectKey::new(
                                        pb::Kind::Task,
                                        r.namespace.clone(),
                                        r.name.clone(),
                                    ))
                            }
                            _ => false,
                        })
                };
                let stored = snapshot.get(key).and_then(|o| match o.kind.as_ref() {
                    Some(pb::object::Kind::Event(e)) => Some(e.clone()),
                    _ => None,
                });
                about_mine(event) && stored.as_ref().is_none_or(about_mine)
            }
            _ => false,
        };
        if mine {
            Ok(())
        } else {
            Err(self.refuse(
                who,
                format!("{access}: it is not about node {node:?} or a task bound to it"),
            ))
        }
    }
}

fn object_key(object: Option<&pb::Object>) -> ObjectKey {
    object.map_or_else(
        || ObjectKey::new(pb::Kind::Unspecified, String::new(), String::new()),
        pb::Object::key,
    )
}

/// The access a verb on an object is.
fn access_to(verb: Verb, key: &ObjectKey) -> Access<'_> {
    Access {
        verb,
        kind: key.kind,
        namespace: key.kind.is_namespaced().then_some(key.namespace.as_str()),
        name: Some(key.name.as_str()),
    }
}

fn object_bound_to(object: &pb::Object, node: &str) -> bool {
    object.as_task().is_some_and(|t| t.bound_node() == node)
}

/// Most writes in one batch, and their total size.
const MAX_BATCH_OPS: usize = 10_000;
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Checks one write of a batch as its own RPC would be checked.
fn admit_op(op: pb::BatchOp) -> Result<SingleOp, ApiError> {
    use berth_proto::pb::batch_op::Op as In;
    let op = match op.op {
        None => return Err(ApiError::InvalidArgument("op: required".into())),
        Some(In::Apply(pb::ApplyRequest {
            object,
            create_only,
        })) => single_op::Op::Apply(ApplyOp {
            object: Some(admit_object(object)?),
            create_only,
            new_uid: uuid::Uuid::new_v4().to_string(),
        }),
        Some(In::UpdateStatus(request)) => single_op::Op::UpdateStatus(UpdateStatusOp {
            object: Some(admit_object(request.object)?),
        }),
        Some(In::Delete(request)) => {
            let key = key_of(request.kind, request.namespace, request.name)?;
            single_op::Op::Delete(DeleteOp {
                kind: key.kind as i32,
                namespace: key.namespace,
                name: key.name,
                resource_version: request.resource_version,
            })
        }
        Some(In::Bind(request)) => {
            let key = key_of(pb::Kind::Task as i32, request.namespace, request.task)?;
            validate::check_dns_subdomain(&request.node)
                .map_err(|e| ApiError::InvalidArgument(format!("node: {e}")))?;
            single_op::Op::Bind(BindOp {
                namespace: key.namespace,
                task: key.name,
                node: request.node,
                resource_version: request.resource_version,
            })
        }
    };
    Ok(SingleOp { op: Some(op) })
}

/// Checks a client's object: size, then defaults, then the field rules.
fn admit_object(object: Option<pb::Object>) -> Result<pb::Object, ApiError> {
    let mut object = object.ok_or_else(|| ApiError::InvalidArgument("object: required".into()))?;
    let size = object.encoded_len();
    if size > MAX_OBJECT_BYTES {
        return Err(ApiError::TooLarge(format!(
            "{}: the object is {size} bytes, more than the limit of {MAX_OBJECT_BYTES} bytes",
            object.key()
        )));
    }
    defaults::apply(&mut object);
    validate::validate_object(&object)?;
    Ok(object)
}

fn kind_of(kind: i32) -> Result<pb::Kind, ApiError> {
    match pb::Kind::try_from(kind) {
        Ok(pb::Kind::Unspecified) => Err(ApiError::InvalidArgument(
            "kind: required (Namespace, Node, Job, Task or Event)".into(),
        )),
        Ok(kind) => Ok(kind),
        Err(_) => Err(ApiError::InvalidArgument(format!(
            "kind: {kind} is not a known kind"
        ))),
    }
}

/// The namespace filter of a read: required empty for cluster-scoped kinds.
fn namespace_filter(kind: pb::Kind, namespace: String) -> Result<Option<String>, ApiError> {
    if namespace.is_empty() {
        Ok(None)
    } else if !kind.is_namespaced() {
        Err(ApiError::InvalidArgument(format!(
            "namespace: {kind} is not namespaced, but namespace {namespace:?} was given"
        )))
    } else {
        Ok(Some(namespace))
    }
}

/// A list or watch of `kind`, in one namespace or (`None`) all.
fn list_access(verb: Verb, kind: pb::Kind, namespace: Option<&str>) -> Access<'_> {
    Access {
        verb,
        kind,
        namespace,
        name: None,
    }
}

fn selector_of(selector: &str) -> Result<Selector, ApiError> {
    Selector::parse(selector).map_err(|e| ApiError::InvalidArgument(format!("label_selector: {e}")))
}

fn key_of(kind: i32, namespace: String, name: String) -> Result<ObjectKey, ApiError> {
    let kind = kind_of(kind)?;
    if name.is_empty() {
        return Err(ApiError::InvalidArgument("name: required".into()));
    }
    let namespace = match (kind.is_namespaced(), namespace.is_empty()) {
        (true, true) => defaults::DEFAULT_NAMESPACE.to_string(),
        (false, false) => {
            return Err(ApiError::InvalidArgument(format!(
                "namespace: {kind} is not namespaced, but namespace {namespace:?} was given"
            )));
        }
        _ => namespace,
    };
    Ok(ObjectKey::new(kind, namespace, name))
}

fn apply_response(applied: Applied) -> pb::ApplyResponse {
    let outcome = match applied.outcome {
        Outcome::Created => pb::ApplyOutcome::Created,
        Outcome::Updated => pb::ApplyOutcome::Updated,
        Outcome::Unchanged | Outcome::Deleted => pb::ApplyOutcome::Unchanged,
    };
    pb::ApplyResponse {
        object: Some((*applied.object).clone()),
        outcome: outcome as i32,
    }
}

#[tonic::async_trait]
impl Objects for ApiService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let who = self.who(&request)?;
        let pb::ApplyRequest {
            object,
            create_only,
        } = request.into_inner();
        let object = admit_object(object)?;
        self.authorize_write(&who, Verb::Apply, &object.key(), Some(&object))?;
        let (applied, leader) = self
            .write(Op::Apply(ApplyOp {
                object: Some(object),
                create_only,
                new_uid: uuid::Uuid::new_v4().to_string(),
            }))
            .await?;
        Ok(respond(apply_response(applied), leader))
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let who = self.who(&request)?;
        let object = admit_object(request.into_inner().object)?;
        self.authorize_write(&who, Verb::UpdateStatus, &object.key(), Some(&object))?;
        let (applied, leader) = self
            .write(Op::UpdateStatus(UpdateStatusOp {
                object: Some(object),
            }))
            .await?;
        Ok(respond(apply_response(applied), leader))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Object>, Status> {
        let who = self.who(&request)?;
        let pb::GetRequest {
            kind,
            namespace,
            name,
            stale,
        } = request.into_inner();
        let key = key_of(kind, namespace, name)?;
        let bound_to = self.decide(&who, &access_to(Verb::Get, &key))?;
        self.before_read(stale).await?;
        let snapshot = self.hub.snapshot();
        let object = snapshot.get(&key);
        if let Some(node) = bound_to
            && !object.is_some_and(|o| object_bound_to(o, &node))
        {
            // Whether it exists at all is none of this caller's business.
            let what = format!(
                "{}: it is not bound to node {node:?}",
                access_to(Verb::Get, &key)
            );
            return Err(self.refuse(&who, what).into());
        }
        match object {
            Some(object) => Ok(Response::new((**object).clone())),
            None => Err(ApiError::NotFound(key).into()),
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let who = self.who(&request)?;
        let pb::ListRequest {
            kind,
            namespace,
            label_selector,
            stale,
        } = request.into_inner();
        let kind = kind_of(kind)?;
        let namespace = namespace_filter(kind, namespace)?;
        let selector = selector_of(&label_selector)?;
        let bound_to = self.decide(&who, &list_access(Verb::List, kind, namespace.as_deref()))?;
        self.before_read(stale).await?;
        let snapshot = self.hub.snapshot();
        let objects = snapshot
            .list(kind, namespace.as_deref(), &selector)
            .filter(|o| {
                bound_to
                    .as_deref()
                    .is_none_or(|node| object_bound_to(o, node))
            })
            .map(|o| (**o).clone())
            .collect();
        Ok(Response::new(pb::ListResponse {
            objects,
            revision: snapshot.revision,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let who = self.who(&request)?;
        let pb::DeleteRequest {
            kind,
            namespace,
            name,
            resource_version,
        } = request.into_inner();
        let key = key_of(kind, namespace, name)?;
        self.authorize_write(&who, Verb::Delete, &key, None)?;
        let (applied, leader) = self
            .write(Op::Delete(DeleteOp {
                kind: key.kind as i32,
                namespace: key.namespace,
                name: key.name,
                resource_version,
            }))
            .await?;
        let response = pb::DeleteResponse {
            object: Some((*applied.object).clone()),
            revision: applied.revision,
        };
        Ok(respond(response, leader))
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let who = self.who(&request)?;
        let ops = request.into_inner().ops;
        if ops.is_empty() {
            return Err(
                ApiError::InvalidArgument("ops: at least one write is required".into()).into(),
            );
        }
        if ops.len() > MAX_BATCH_OPS {
            return Err(ApiError::InvalidArgument(format!(
                "ops: {} writes, more than the {MAX_BATCH_OPS} of one batch",
                ops.len()
            ))
            .into());
        }
        // Each write is checked on its own; the bad ones are answered here
        // and never reach the log.
        let mut results: Vec<Option<Result<Arc<pb::Object>, ApiError>>> =
            Vec::with_capacity(ops.len());
        let mut valid = Vec::with_capacity(ops.len());
        let mut bytes = 0;
        for op in ops {
            let admitted = admit_op(op).and_then(|op| {
                let inner = op
                    .op
                    .as_ref()
                    .ok_or_else(|| ApiError::InvalidArgument("op: required".into()))?;
                self.authorize_op(&who, inner)?;
                Ok(op)
            });
            match admitted {
                Ok(op) => {
                    bytes += op.encoded_len();
                    valid.push(op);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if bytes > MAX_BATCH_BYTES {
            return Err(ApiError::TooLarge(format!(
                "the batch is {bytes} bytes, more than {MAX_BATCH_BYTES}: send fewer writes at once"
            ))
            .into());
        }
        let mut revision = self.hub.snapshot().revision;
        let mut leader = None;
        if !valid.is_empty() {
            let (applied, forwarded) = self.write(Op::Batch(BatchOps { ops: valid })).await?;
            revision = applied.revision;
            leader = forwarded;
            let mut applied_results = applied.batch.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                *slot = Some(applied_results.next().unwrap_or_else(|| {
                    Err(ApiError::Unavailable("a write went unanswered".into()))
                }));
            }
        }
        let response = pb::BatchResponse {
            results: results
                .iter()
                .map(|r| match r {
                    Some(r) => crate::error::batch_result(r),
                    None => {
                        crate::error::batch_result(&Err(ApiError::Unavailable("unanswered".into())))
                    }
                })
                .collect(),
            revision,
        };
        Ok(respond(response, leader))
    }

    type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.who(&request)?;
        let pb::WatchRequest {
            kind,
            namespace,
            label_selector,
            from_revision,
        } = request.into_inner();
        let kind = kind_of(kind)?;
        let namespace = namespace_filter(kind, namespace)?;
        let bound_to = self.decide(&who, &list_access(Verb::Watch, kind, namespace.as_deref()))?;
        let filter = Filter {
            kind,
            namespace,
            selector: selector_of(&label_selector)?,
            bound_to,
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let from = if from_revision == 0 {
            // "From now": tell the client where now is.
            let now = self.hub.snapshot().revision;
            let bookmark = pb::WatchEvent {
                r#type: pb::WatchEventType::Bookmark as i32,
                object: None,
                revision: now,
            };
            tx.send(Ok(bookmark))
                .await
                .map_err(|_| ApiError::ShuttingDown)?;
            now
        } else {
            if from_revision > self.hub.snapshot().revision {
                // The client may have listed on a member that is further
                // ahead: catch up before judging.
                self.before_read(false).await?;
            }
            let current = self.hub.snapshot().revision;
            if from_revision > current {
                return Err(ApiError::InvalidArgument(format!(
                    "from_revision: {from_revision} is in the future (the current revision is {current})"
                ))
                .into());
            }
            from_revision
        };
        // Refuse a compacted start now, as a status rather than a stream error.
        self.hub.records_after(from)?;
        let (hub, shutdown, every) = (self.hub.clone(), self.shutdown.clone(), self.bookmark_every);
        let watchers = self.watchers.clone();
        watchers.inc();
        tokio::spawn(async move {
            run_watcher(hub, filter, from, tx, shutdown, every).await;
            watchers.dec();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl ApiService {
    /// The members as this member knows them, and the leader.
    fn members(&self, leader_id: u64) -> pb::MembersResponse {
        pb::MembersResponse {
            members: self.hub.snapshot().membership.members(),
            leader_id,
        }
    }

    /// A client of the leader's Cluster service when this member does not
    /// lead (`None` when it does). A request that was already forwarded once
    /// is not forwarded again: the caller gets the leader hint instead.
    async fn leader_client(
        &self,
        request_forwarded: bool,
    ) -> Result<Option<ClusterClient<tonic::transport::Channel>>, ApiError> {
        let status = self.replica.status().await?;
        if status.role == "leader" {
            return Ok(None);
        }
        let address = self
            .hub
            .snapshot()
            .membership
            .address(status.leader_id)
            .map(str::to_string);
        let error = ApiError::NotLeader {
            leader_id: status.leader_id,
            leader_address: address.clone(),
        };
        match address {
            Some(address) if status.leader_id != 0 && !request_forwarded => {
                let endpoint = berth_proto::connect::endpoint(&address)
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                Ok(Some(ClusterClient::new(endpoint.connect_lazy())))
            }
            _ => Err(error),
        }
    }
}

/// Marks a request as forwarded.
fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// Objects per chunk of a snapshot stream.
const SNAPSHOT_BATCH: usize = 500;

#[tonic::async_trait]
impl Cluster for ApiService {
    type SnapshotStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;

    /// Streams every object at one revision. The leader serves it (others
    /// answer with its address, which clients follow), after a read barrier:
    /// the copy holds every write acknowledged before the call. It is an
    /// immutable view, so writes go on while it streams.
    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let who = self.who(&request)?;
        self.allow_cluster(&who, ClusterAction::Snapshot)?;
        if !self.replica.is_leader() {
            let (leader_id, leader_address) = self.replica.leader();
            return Err(ApiError::NotLeader {
                leader_id,
                leader_address,
            }
            .into());
        }
        self.before_read(false).await?;
        let snapshot = self.hub.snapshot();
        let header = pb::SnapshotHeader {
            revision: snapshot.revision,
            applied_index: snapshot.applied,
            taken_at_ms: berth_proto::process::now_ms(),
            member_id: self.replica.member_id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        tracing::info!(
            revision = snapshot.revision,
            objects = snapshot.objects.len(),
            "streaming a snapshot"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use berth_proto::pb::snapshot_chunk::Part;
            let chunk = |part| Ok(pb::SnapshotChunk { part: Some(part) });
            if tx.send(chunk(Part::Header(header))).await.is_err() {
                return;
            }
            let mut batch = Vec::with_capacity(SNAPSHOT_BATCH);
            for object in snapshot.objects.values() {
                batch.push((**object).clone());
                if batch.len() == SNAPSHOT_BATCH {
                    let objects = std::mem::take(&mut batch);
                    let part = Part::Objects(pb::SnapshotObjects { objects });
                    if tx.send(chunk(part)).await.is_err() {
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let part = Part::Objects(pb::SnapshotObjects { objects: batch });
                if tx.send(chunk(part)).await.is_err() {
                    return;
                }
            }
            let trailer = pb::SnapshotTrailer {
                objects: snapshot.objects.len() as u64,
            };
            let _ = tx.send(chunk(Part::Trailer(trailer))).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let who = self.who(&request)?;
        self.allow_cluster(&who, ClusterAction::ReadMembers)?;
        let node = self.replica.status().await?;
        let snapshot = self.hub.snapshot();
        let shelf = self.replica.shelf();
        Ok(Response::new(pb::ClusterStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: snapshot.revision,
            compacted_revision: self.hub.compacted(),
            object_count: snapshot.objects.len() as u64,
            member_id: node.member_id,
            leader_id: node.leader_id,
            term: node.term,
            commit_index: node.commit,
            applied_index: node.applied,
            role: node.role.to_string(),
            first_log_index: node.first_index,
            last_log_index: node.last_index,
            snapshots_installed: shelf.installed(),
            snapshots_sent: shelf.sent(),
            progress: node.progress,
            members: snapshot.membership.members(),
        }))
    }

    async fn members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let who = self.who(&request)?;
        self.allow_cluster(&who, ClusterAction::ReadMembers)?;
        self.before_read(false).await?;
        let status = self.replica.status().await?;
        Ok(Response::new(self.members(status.leader_id)))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let who = self.who(&request)?;
        self.allow_cluster(&who, ClusterAction::ChangeMembers)?;
        if let Some(mut leader) = self.leader_client(is_forwarded(&request)).await? {
            return leader.add_member(forwarded(request.into_inner())).await;
        }
        let pb::AddMemberRequest {
            id,
            address,
            replace_id,
        } = request.into_inner();
        if id == 0 {
            return Err(ApiError::InvalidArgument("id: must be a positive number".into()).into());
        }
        berth_proto::connect::endpoint(&address)
            .map_err(|e| ApiError::InvalidArgument(format!("address: {e}")))?;
        let membership = self.hub.snapshot().membership.clone();
        let existing = membership.members().into_iter().find(|m| m.id == id);
        if existing.as_ref().is_some_and(|m| m.voter) {
            return Err(
                ApiError::FailedPrecondition(format!("member {id} is already a voter")).into(),
            );
        }
        if replace_id != 0
            && !membership
                .members()
                .iter()
                .any(|m| m.id == replace_id && m.voter)
        {
            return Err(ApiError::FailedPrecondition(format!(
                "member {replace_id} is not a voter to replace"
            ))
            .into());
        }
        if existing.is_none() {
            self.replica
                .change_members(MemberChange::AddLearner { id, address })
                .await?;
        }
        // A voter that cannot keep up would cost the cluster its quorum: the
        // new member stays a learner until it has caught up.
        let target = self.replica.status().await?.commit;
        let started = Instant::now();
        loop {
            let status = self.replica.status().await?;
            if status.role != "leader" {
                return Err(ApiError::Unavailable(
                    "leadership changed while adding the member; retry".into(),
                )
                .into());
            }
            let matched = status
                .progress
                .iter()
                .find(|p| p.id == id)
                .map_or(0, |p| p.matched);
            if matched >= target {
                break;
            }
            if started.elapsed() > CATCH_UP_TIMEOUT {
                return Err(Status::deadline_exceeded(format!(
                    "member {id} has replicated {matched} of {target} log entries after {CATCH_UP_TIMEOUT:?}; \
                     it stays a learner — is it running with --join at its address?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let replace = (replace_id != 0).then_some(replace_id);
        self.replica
            .change_members(MemberChange::Promote { id, replace })
            .await?;
        // Replacing a voter enters a joint configuration, which raft leaves
        // by itself with the next entry: answer once it has.
        let started = Instant::now();
        while !self
            .hub
            .snapshot()
            .membership
            .conf_state
            .voters_outgoing
            .is_empty()
        {
            if started.elapsed() > self.proposal_timeout {
                return Err(ApiError::Unavailable(
                    "the membership change is still in its joint phase; check `berthctl cluster members`".into(),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = self.replica.status().await?;
        Ok(Response::new(self.members(status.leader_id)))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let who = self.who(&request)?;
        self.allow_cluster(&who, ClusterAction::ChangeMembers)?;
        if let Some(mut leader) = self.leader_client(is_forwarded(&request)).await? {
            return leader.remove_member(forwarded(request.into_inner())).await;
        }
        let id = request.into_inner().id;
        if !self
            .hub
            .snapshot()
            .membership
            .members()
            .iter()
            .any(|m| m.id == id)
        {
            return Err(
                ApiError::FailedPrecondition(format!("member {id} is not a member")).into(),
            );
        }
        self.replica
            .change_members(MemberChange::Remove { id })
            .await?;
        let status = self.replica.status().await?;
        Ok(Response::new(self.members(status.leader_id)))
    }
}

impl ApiService {
    /// The leader's address when another member leads, or the error to give
    /// when the request may not be forwarded (again) or no one leads.
    fn leader_elsewhere(&self, forwarded: bool) -> Result<Option<String>, ApiError> {
        if self.replica.is_leader() {
            return Ok(None);
        }
        let (leader_id, address) = self.replica.leader();
        match address {
            Some(address) if leader_id != 0 && !forwarded => Ok(Some(address)),
            address => Err(ApiError::NotLeader {
                leader_id,
                leader_address: address,
            }),
        }
    }
}

#[tonic::async_trait]
impl Nodes for ApiService {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let who = self.who(&request)?;
        self.allow_cluster(&who, ClusterAction::Heartbeat)?;
        if who.role == berth_proto::pki::Role::Node
            && let Some(other) = request.get_ref().nodes.iter().find(|b| b.node != who.name)
        {
            let what = format!("send heartbeats for node {:?}", other.node);
            return Err(self.refuse(&who, what).into());
        }
        if let Some(leader) = self.leader_elsewhere(is_forwarded(&request))? {
            let endpoint = berth_proto::connect::endpoint(&leader)
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            let mut client = NodesClient::new(endpoint.connect_lazy());
            return client.heartbeat(forwarded(request.into_inner())).await;
        }
        let beats = request.into_inner().nodes;
        for beat in &beats {
            validate::check_dns_subdomain(&beat.node)
                .map_err(|e| ApiError::InvalidArgument(format!("nodes.node: {e}")))?;
        }
        self.liveness.heartbeat(beats);
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type WatchUsageStream = ReceiverStream<Result<pb::UsageReport, Status>>;

    async fn watch_usage(
        &self,
        request: Request<pb::WatchUsageRequest>,
    ) -> Result<Response<Self::WatchUsageStream>, Status> {
        let who = self.who(&request)?;
        self.allow_cluster(&who, ClusterAction::ReadUsage)?;
        // Usage lives on the leader only: the client follows the hint there.
        self.leader_elsewhere(true)?;
        let every = Duration::from_millis(request.into_inner().interval_ms.clamp(100, 60_000));
        let (tx, rx) = mpsc::channel(4);
        let (liveness, replica, mut shutdown) = (
            self.liveness.clone(),
            self.replica.clone(),
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = tx.closed() => return,
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                }
                if !replica.is_leader() {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "this member no longer leads; reconnect",
                        )))
                        .await;
                    return;
                }
                if tx.send(Ok(liveness.report())).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
