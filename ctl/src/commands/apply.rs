//! `berthctl apply -f`: create or update what manifests describe.

use berth_proto::pb;

use crate::cli::ApplyArgs;
use crate::inputs::{parse_all, read_inputs};
use crate::output;
use crate::{Context, Failed};

pub async fn run(ctx: &Context, args: ApplyArgs) -> anyhow::Result<()> {
    let inputs = read_inputs(&args.files)?;
    // Nothing is sent unless every document of every input is valid.
    let mut documents = match parse_all(&inputs, ctx.namespace.as_deref()) {
        Ok(documents) => documents,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return Err(Failed(format!("{} error(s); nothing was applied", errors.len())).into());
        }
    };
    // Namespaces and nodes first, so a file can hold a namespace and its jobs.
    documents.sort_by_key(|(_, d)| match d.object.kind() {
        pb::Kind::Namespace => 0,
        pb::Kind::Node => 1,
        _ => 2,
    });
    let mut failed = 0;
    for (source, document) in &documents {
        let name = output::name(&document.object);
        let request = pb::ApplyRequest {
            object: Some(document.object.clone()),
            create_only: false,
        };
        let result = ctx
            .client
            .call(|mut c| {
                let request = request.clone();
                async move { c.apply(request).await }
            })
            .await;
        match result {
            Ok(response) => {
                let outcome = match response.into_inner().outcome() {
                    pb::ApplyOutcome::Created => "created",
                    pb::ApplyOutcome::Updated => "configured",
                    _ => "unchanged",
                };
                crate::say!("{name} {outcome}");
            }
            Err(status) => {
                failed += 1;
                eprintln!(
                    "error: {source}: document {}: {name}: {}",
                    document.index,
                    ctx.explain(&status)
                );
            }
        }
    }
    if failed > 0 {
        return Err(Failed(format!(
            "{failed} of {} object(s) were not applied",
            documents.len()
        ))
        .into());
    }
    Ok(())
}
