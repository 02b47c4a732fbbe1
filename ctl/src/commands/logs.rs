//! `berthctl logs TASK [-f] [--tail N]`: a task's container output.
//!
//! berthctl reaches the node's agent directly, at the address the node
//! registered (`status.address`): the apiserver stores state and does not
//! proxy container output, so a `logs -f` never loads the Raft members.

use anyhow::{Context as _, bail};
use berth_proto::pb;

use crate::Context;
use crate::cli::LogsArgs;

pub async fn run(ctx: &Context, args: LogsArgs) -> anyhow::Result<()> {
    let namespace = ctx.namespace_or_default();
    let name = args.task.strip_prefix("task/").unwrap_or(&args.task);
    let object = ctx
        .get(pb::Kind::Task, namespace.clone(), name)
        .await
        .map_err(|s| ctx.error(&s))?;
    let node = object
        .as_task()
        .and_then(|t| t.status.as_ref())
        .map(|s| s.node.clone())
        .unwrap_or_default();
    if node.is_empty() {
        bail!("task {namespace}/{name} is not scheduled yet: it has no container to show");
    }
    let node_object = ctx
        .get(pb::Kind::Node, String::new(), &node)
        .await
        .map_err(|s| ctx.error(&s))?;
    let address = node_object
        .as_node()
        .and_then(|n| n.status.as_ref())
        .map(|s| s.address.clone())
        .unwrap_or_default();
    if address.is_empty() || address == "simulated" {
        bail!(
            "task {namespace}/{name} runs on node {node}, which has no agent to ask for logs (simulated or not registered)"
        );
    }
    let mut agent = berth_proto::connect::agent_client(&address)?;
    let request = pb::LogsRequest {
        namespace: namespace.clone(),
        task: name.to_string(),
        follow: args.follow,
        tail: args.tail,
    };
    let mut stream = agent
        .logs(request)
        .await
        .map_err(|s| anyhow::anyhow!("node {node}'s agent at {address}: {}", s.message()))?
        .into_inner();
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let chunk = tokio::select! {
            chunk = stream.message() => chunk,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match chunk {
            Ok(Some(chunk)) => {
                let out: &mut dyn std::io::Write = if chunk.stderr {
                    &mut stderr
                } else {
                    &mut stdout
                };
                out.write_all(&chunk.data)
                    .context("cannot write the output")?;
                out.flush().context("cannot write the output")?;
            }
            Ok(None) => return Ok(()),
            Err(s) => bail!("node {node}'s agent at {address}: {}", s.message()),
        }
    }
}
