//! `berthctl delete KIND NAME…` or `delete -f FILE`.

use anyhow::bail;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use tonic::Code;

use crate::cli::DeleteArgs;
use crate::inputs::{parse_all, read_inputs};
use crate::{Context, Failed};

pub async fn run(ctx: &Context, args: DeleteArgs) -> anyhow::Result<()> {
    let keys = if !args.files.is_empty() {
        if args.kind.is_some() {
            bail!("give either -f FILE or KIND NAME…, not both");
        }
        let inputs = read_inputs(&args.files)?;
        match parse_all(&inputs, ctx.namespace.as_deref()) {
            Ok(documents) => documents.into_iter().map(|(_, d)| d.object.key()).collect(),
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                return Err(
                    Failed(format!("{} error(s); nothing was deleted", errors.len())).into(),
                );
            }
        }
    } else {
        let Some(kind) = &args.kind else {
            bail!("give a kind and names (berthctl delete job web) or -f FILE");
        };
        let kind = crate::parse_kind(kind)?;
        if args.names.is_empty() {
            bail!("give the names of the {} to delete", kind.plural());
        }
        let namespace = if kind.is_namespaced() {
            ctx.namespace_or_default()
        } else {
            String::new()
        };
        args.names
            .iter()
            .map(|n| ObjectKey::new(kind, namespace.clone(), n.clone()))
            .collect::<Vec<_>>()
    };

    let mut failed = 0;
    for key in &keys {
        let request = pb::DeleteRequest {
            kind: key.kind as i32,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            resource_version: 0,
        };
        let result = ctx
            .client
            .call(|mut c| {
                let request = request.clone();
                async move { c.delete(request).await }
            })
            .await;
        match result {
            Ok(_) => crate::say!(
                "{}/{} deleted",
                key.kind.title().to_ascii_lowercase(),
                key.name
            ),
            Err(status) if status.code() == Code::NotFound && args.ignore_not_found => {}
            Err(status) => {
                failed += 1;
                eprintln!("error: {}", ctx.explain(&status));
            }
        }
    }
    if failed > 0 {
        return Err(Failed(format!(
            "{failed} of {} object(s) were not deleted",
            keys.len()
        ))
        .into());
    }
    Ok(())
}
