//! The gRPC services: request checks, then the write path or a snapshot read.
//!
//! Writes are checked in full before they are sequenced (size, defaults,
//! field rules), so that a bad request never takes a revision; rules that
//! depend on other objects are the state machine's. Reads are served from the
//! newest durable snapshot.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::defaults;
use berth_proto::internal::{ApplyOp, Command, DeleteOp, UpdateStatusOp, command::Op};
use berth_proto::object::ObjectKey;
use berth_proto::pb::{self, cluster_server::Cluster, objects_server::Objects};
use berth_proto::selector::Selector;
use berth_proto::validate::{self, MAX_OBJECT_BYTES};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::sequencer::Proposer;
use crate::state_machine::{Applied, Outcome};
use crate::watch::{Filter, WatchHub, run_watcher};

/// Events buffered per watch stream before the watcher waits for its client.
const WATCH_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct ApiService {
    pub proposer: Proposer,
    pub hub: Arc<WatchHub>,
    pub shutdown: watch::Receiver<bool>,
    pub bookmark_every: Duration,
}

impl ApiService {
    async fn write(&self, op: Op) -> Result<Applied, ApiError> {
        self.proposer
            .propose(Command {
                time_ms: now_ms(),
                op: Some(op),
            })
            .await
    }
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
        let pb::ApplyRequest {
            object,
            create_only,
        } = request.into_inner();
        let object = admit_object(object)?;
        let applied = self
            .write(Op::Apply(ApplyOp {
                object: Some(object),
                create_only,
                new_uid: uuid::Uuid::new_v4().to_string(),
            }))
            .await?;
        Ok(Response::new(apply_response(applied)))
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let object = admit_object(request.into_inner().object)?;
        let applied = self
            .write(Op::UpdateStatus(UpdateStatusOp {
                object: Some(object),
            }))
            .await?;
        Ok(Response::new(apply_response(applied)))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Object>, Status> {
        let pb::GetRequest {
            kind,
            namespace,
            name,
        } = request.into_inner();
        let key = key_of(kind, namespace, name)?;
        let snapshot = self.hub.snapshot();
        match snapshot.get(&key) {
            Some(object) => Ok(Response::new((**object).clone())),
            None => Err(ApiError::NotFound(key).into()),
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let pb::ListRequest {
            kind,
            namespace,
            label_selector,
        } = request.into_inner();
        let kind = kind_of(kind)?;
        let namespace = namespace_filter(kind, namespace)?;
        let selector = selector_of(&label_selector)?;
        let snapshot = self.hub.snapshot();
        let objects = snapshot
            .list(kind, namespace.as_deref(), &selector)
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
        let pb::DeleteRequest {
            kind,
            namespace,
            name,
            resource_version,
        } = request.into_inner();
        let key = key_of(kind, namespace, name)?;
        let applied = self
            .write(Op::Delete(DeleteOp {
                kind: key.kind as i32,
                namespace: key.namespace,
                name: key.name,
                resource_version,
            }))
            .await?;
        Ok(Response::new(pb::DeleteResponse {
            object: Some((*applied.object).clone()),
            revision: applied.revision,
        }))
    }

    type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let pb::WatchRequest {
            kind,
            namespace,
            label_selector,
            from_revision,
        } = request.into_inner();
        let kind = kind_of(kind)?;
        let filter = Filter {
            kind,
            namespace: namespace_filter(kind, namespace)?,
            selector: selector_of(&label_selector)?,
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
        tokio::spawn(run_watcher(
            self.hub.clone(),
            filter,
            from,
            tx,
            self.shutdown.clone(),
            self.bookmark_every,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl Cluster for ApiService {
    async fn status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let snapshot = self.hub.snapshot();
        Ok(Response::new(pb::ClusterStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: snapshot.revision,
            compacted_revision: self.hub.compacted(),
            object_count: snapshot.objects.len() as u64,
        }))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
