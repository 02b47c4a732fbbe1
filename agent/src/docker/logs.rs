//! The agent's gRPC service: a task's container output, for `berthctl logs`.

use std::pin::Pin;

use berth_proto::pb;
use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::runtime::Engine;

pub struct AgentService {
    pub engine: Engine,
    pub auth: berth_proto::auth::Authenticator,
}

/// Logs are read by admins and viewers (of the task's namespace, when they
/// are limited to some) and by apiserver members (which hold every right);
/// another node or the scheduler has no business with a task's output.
fn may_read_logs(who: &berth_proto::auth::Principal, namespace: &str) -> bool {
    use berth_proto::pki::Role;
    matches!(who.role, Role::Admin | Role::Viewer | Role::Apiserver) && who.covers(namespace)
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type LogsStream = LogStream;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<LogStream>, Status> {
        let who = self.auth.authenticate(&request)?;
        let request = request.into_inner();
        if request.task.is_empty() {
            return Err(Status::invalid_argument(
                "logs: task: a task name is required",
            ));
        }
        let namespace = if request.namespace.is_empty() {
            "default"
        } else {
            request.namespace.as_str()
        };
        if !may_read_logs(&who, namespace) {
            let what = format!(
                "read the logs of task {:?} in namespace {namespace:?}",
                request.task
            );
            return Err(self.auth.deny(&who, what));
        }
        let containers = self
            .engine
            .list_task(namespace, &request.task)
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        // The newest incarnation's container.
        let Some(container) = containers.first() else {
            return Err(Status::not_found(format!(
                "task {namespace}/{} has no container on node {}",
                request.task,
                self.engine.node()
            )));
        };
        let stream = self
            .engine
            .logs(&container.id, request.follow, request.tail)
            .map(|chunk| chunk.map_err(|e| Status::unavailable(format!("{e:#}"))));
        Ok(Response::new(Box::pin(stream)))
    }
}
