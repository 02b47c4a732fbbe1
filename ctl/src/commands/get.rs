//! `berthctl get KIND [NAME…]`: print objects, and with `-w` follow changes.

use std::time::Duration;

use berth_proto::pb;
use tonic::Code;

use crate::cli::GetArgs;
use crate::manifest;
use crate::output::{self, Format};
use crate::{Context, Failed};

/// What to show: one kind, a namespace filter, a selector, optional names.
struct Query {
    kind: pb::Kind,
    namespace: Option<String>,
    selector: String,
    names: Vec<String>,
    format: Option<Format>,
}

impl Query {
    fn wants(&self, object: &pb::Object) -> bool {
        self.names.is_empty() || self.names.iter().any(|n| n == object.name())
    }

    fn with_namespace_column(&self) -> bool {
        self.namespace.is_none() && self.kind.is_namespaced()
    }
}

pub async fn run(ctx: &Context, args: GetArgs) -> anyhow::Result<()> {
    let kind = crate::parse_kind(&args.kind)?;
    let query = Query {
        kind,
        namespace: (kind.is_namespaced() && !args.all_namespaces)
            .then(|| ctx.namespace_or_default()),
        selector: args.selector.unwrap_or_default(),
        names: args.names,
        format: args.output,
    };

    let (objects, revision, missing) = if query.names.is_empty() || args.watch {
        let (objects, revision) = ctx
            .list(query.kind, query.namespace.clone(), &query.selector)
            .await?;
        let objects: Vec<_> = objects.into_iter().filter(|o| query.wants(o)).collect();
        (objects, revision, 0)
    } else {
        let mut objects = Vec::new();
        let mut missing = 0;
        for name in &query.names {
            match ctx
                .get(
                    query.kind,
                    query.namespace.clone().unwrap_or_default(),
                    name,
                )
                .await
            {
                Ok(object) => objects.push(object),
                Err(status) if status.code() == Code::NotFound => {
                    eprintln!("error: {}", status.message());
                    missing += 1;
                }
                Err(status) => return Err(ctx.error(&status)),
            }
        }
        (objects, 0, missing)
    };

    print_all(&query, &objects)?;
    if missing > 0 {
        return Err(Failed(format!("{missing} object(s) not found")).into());
    }
    if args.watch {
        follow(ctx, &query, revision).await?;
    }
    Ok(())
}

fn print_all(query: &Query, objects: &[pb::Object]) -> anyhow::Result<()> {
    if objects.is_empty() {
        if query.names.is_empty() {
            match &query.namespace {
                Some(ns) => eprintln!("No {} found in namespace {ns}.", query.kind.plural()),
                None => eprintln!("No {} found.", query.kind.plural()),
            }
        }
        return Ok(());
    }
    match query.format {
        None | Some(Format::Wide) => {
            let wide = query.format == Some(Format::Wide);
            let with_ns = query.with_namespace_column();
            let rows = objects
                .iter()
                .map(|o| output::row(o, wide, with_ns))
                .collect();
            crate::say!(
                "{}",
                output::table(Some(output::header(query.kind, wide, with_ns)), rows)
            );
        }
        Some(Format::Yaml) => crate::say_raw!("{}", manifest::to_yaml(objects)?),
        Some(Format::Json) => {
            crate::say!("{}", manifest::to_json(objects, query.names.len() == 1)?)
        }
        Some(Format::Name) => {
            for object in objects {
                crate::say!("{}", output::name(object));
            }
        }
    }
    Ok(())
}

/// Prints each change after `revision` as it happens, until interrupted.
/// Reconnects (failing over) when a server goes away, and lists again when
/// the server no longer has the history to resume from.
async fn follow(ctx: &Context, query: &Query, mut revision: u64) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let request = pb::WatchRequest {
            kind: query.kind as i32,
            namespace: query.namespace.clone().unwrap_or_default(),
            label_selector: query.selector.clone(),
            from_revision: revision,
        };
        let result = ctx
            .client
            .call(|mut c| {
                let request = request.clone();
                async move { c.watch(request).await }
            })
            .await;
        let mut stream = match result {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unavailable => {
                eprintln!("warning: {}; retrying", ctx.explain(&status));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(status) => return Err(ctx.error(&status)),
        };
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    backoff = Duration::from_millis(200);
                    revision = event.revision;
                    print_event(query, &event)?;
                }
                Ok(None) => break,
                Err(status) if status.code() == Code::OutOfRange => {
                    // Fell behind compaction: start over from a fresh list.
                    let (objects, now) = ctx
                        .list(query.kind, query.namespace.clone(), &query.selector)
                        .await?;
                    let objects: Vec<_> = objects.into_iter().filter(|o| query.wants(o)).collect();
                    print_all(query, &objects)?;
                    revision = now;
                    break;
                }
                Err(status)
                    if status.code() == Code::Unavailable || status.code() == Code::Unknown =>
                {
                    eprintln!(
                        "warning: the watch was interrupted ({}); resuming",
                        status.message()
                    );
                    break;
                }
                Err(status) => return Err(ctx.error(&status)),
            }
        }
    }
}

fn print_event(query: &Query, event: &pb::WatchEvent) -> anyhow::Result<()> {
    let Some(object) = &event.object else {
        return Ok(()); // a bookmark
    };
    if !query.wants(object) {
        return Ok(());
    }
    let change = match event.r#type() {
        pb::WatchEventType::Added => "ADDED",
        pb::WatchEventType::Modified => "MODIFIED",
        pb::WatchEventType::Deleted => "DELETED",
        _ => return Ok(()),
    };
    match query.format {
        None | Some(Format::Wide) => {
            let mut row = output::row(
                object,
                query.format == Some(Format::Wide),
                query.with_namespace_column(),
            );
            row.insert(0, change.to_string());
            crate::say!("{}", output::table(None, vec![row]));
        }
        Some(Format::Yaml) => {
            crate::say_raw!("---\n{}", manifest::to_yaml(std::slice::from_ref(object))?)
        }
        Some(Format::Json) => {
            crate::say!("{}", manifest::to_json(std::slice::from_ref(object), true)?)
        }
        Some(Format::Name) => {
            crate::say!("{} {}", output::name(object), change.to_ascii_lowercase())
        }
    }
    Ok(())
}
