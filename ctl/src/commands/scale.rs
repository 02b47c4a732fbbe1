//! `berthctl scale job NAME --replicas N` (or `job/NAME`), as `kubectl
//! scale`: reads the job, changes its replica count and writes it back with
//! the version it read, retrying when someone else wrote meanwhile.

use anyhow::bail;
use berth_proto::pb;
use tonic::Code;

use crate::Context;
use crate::cli::ScaleArgs;

/// Tries before giving up when the job keeps changing under us.
const ATTEMPTS: usize = 5;

pub async fn run(ctx: &Context, args: ScaleArgs) -> anyhow::Result<()> {
    let (kind, name) = match (args.target.split_once('/'), &args.name) {
        (Some((kind, name)), None) => (kind.to_string(), name.to_string()),
        (None, Some(name)) => (args.target.clone(), name.clone()),
        _ => bail!("give the job as `job NAME` or `job/NAME`"),
    };
    if crate::parse_kind(&kind)? != pb::Kind::Job {
        bail!("only jobs can be scaled, not {kind}");
    }
    let namespace = ctx.namespace_or_default();
    for _ in 0..ATTEMPTS {
        let mut object = ctx
            .get(pb::Kind::Job, namespace.clone(), &name)
            .await
            .map_err(|s| ctx.error(&s))?;
        let Some(pb::object::Kind::Job(job)) = &mut object.kind else {
            bail!("job {namespace}/{name}: the server answered with another kind");
        };
        let spec = job.spec.get_or_insert_with(Default::default);
        if spec.replicas == args.replicas {
            crate::say!(
                "job {namespace}/{name} already has {} replicas",
                args.replicas
            );
            return Ok(());
        }
        spec.replicas = args.replicas;
        match ctx.client.apply(object, false).await {
            Ok(_) => {
                crate::say!(
                    "job {namespace}/{name} scaled to {} replicas",
                    args.replicas
                );
                return Ok(());
            }
            // Changed since we read it: read it again.
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => bail!("job {namespace}/{name}: {}", ctx.explain(&status)),
        }
    }
    bail!("job {namespace}/{name} kept changing; try again")
}
