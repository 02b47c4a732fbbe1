//! `berthctl cluster status|members|add-member|remove-member`.

use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::pb;

use crate::Context;
use crate::cli::ClusterCommand;
use crate::output;

/// How long `status` waits for each member.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(ctx: &Context, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => status(ctx).await,
        ClusterCommand::Members => {
            let members = ctx
                .client
                .call_cluster(|mut c| async move { c.members(pb::MembersRequest {}).await })
                .await
                .map_err(|s| ctx.error(&s))?
                .into_inner();
            print_members(&members);
            Ok(())
        }
        ClusterCommand::AddMember {
            id,
            address,
            replace,
        } => {
            let request = pb::AddMemberRequest {
                id,
                address,
                replace_id: replace.unwrap_or(0),
            };
            let members = ctx
                .client
                .call_cluster(|mut c| {
                    let request = request.clone();
                    async move { c.add_member(request).await }
                })
                .await
                .map_err(|s| ctx.error(&s))?
                .into_inner();
            match replace {
                Some(old) => crate::say!("member {id} added as a voter, member {old} removed"),
                None => crate::say!("member {id} added as a voter"),
            }
            print_members(&members);
            Ok(())
        }
        ClusterCommand::RemoveMember { id } => {
            let members = ctx
                .client
                .call_cluster(|mut c| async move {
                    c.remove_member(pb::RemoveMemberRequest { id }).await
                })
                .await
                .map_err(|s| ctx.error(&s))?
                .into_inner();
            crate::say!("member {id} removed");
            print_members(&members);
            Ok(())
        }
    }
}

fn print_members(members: &pb::MembersResponse) {
    let rows = members
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.address.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                if m.id == members.leader_id { "yes" } else { "" }.to_string(),
            ]
        })
        .collect();
    crate::say!(
        "{}",
        output::table(
            Some(vec![
                "ID".into(),
                "ADDRESS".into(),
                "ROLE".into(),
                "LEADER".into()
            ]),
            rows
        )
    );
}

/// Asks every member for its own view: one that does not answer is shown as
/// unreachable rather than failing the command.
async fn status(ctx: &Context) -> anyhow::Result<()> {
    let any = ctx
        .client
        .call_cluster(|mut c| async move { c.status(pb::ClusterStatusRequest {}).await })
        .await
        .map_err(|s| ctx.error(&s))?
        .into_inner();
    let mut views = Vec::new();
    for member in &any.members {
        let view = match BerthClient::new(std::slice::from_ref(&member.address)) {
            Ok(client) => {
                let client = client.with_retry_for(Duration::ZERO);
                tokio::time::timeout(
                    MEMBER_TIMEOUT,
                    client.call_cluster(|mut c| async move {
                        c.status(pb::ClusterStatusRequest {}).await
                    }),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| r.into_inner())
            }
            Err(_) => None,
        };
        views.push((member.clone(), view));
    }
    let leader = views
        .iter()
        .filter_map(|(_, v)| v.as_ref())
        .find(|v| v.role == "leader")
        .cloned();
    match &leader {
        Some(l) => crate::say!(
            "leader: member {} (term {}, commit {})",
            l.member_id,
            l.term,
            l.commit_index
        ),
        None => crate::say!("leader: none reachable"),
    }
    let mut rows = Vec::new();
    for (member, view) in &views {
        let progress = leader
            .as_ref()
            .and_then(|l| l.progress.iter().find(|p| p.id == member.id));
        let replication = progress.map_or("-".to_string(), |p| {
            format!("{} (matched {})", p.state, p.matched)
        });
        let role = if member.voter { "voter" } else { "learner" };
        match view {
            Some(v) => {
                let health = match (&leader, progress) {
                    (_, Some(p)) if !p.recent_active => "unresponsive".to_string(),
                    (Some(l), _) if l.commit_index > v.applied_index => {
                        format!("healthy, {} behind", l.commit_index - v.applied_index)
                    }
                    _ => "healthy".to_string(),
                };
                rows.push(vec![
                    member.id.to_string(),
                    member.address.clone(),
                    format!("{} ({role})", v.role),
                    v.term.to_string(),
                    v.commit_index.to_string(),
                    v.applied_index.to_string(),
                    format!("{}..{}", v.first_log_index, v.last_log_index),
                    replication,
                    health,
                ]);
            }
            None => rows.push(vec![
                member.id.to_string(),
                member.address.clone(),
                format!("? ({role})"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                replication,
                "unreachable".into(),
            ]),
        }
    }
    let header = [
        "MEMBER",
        "ADDRESS",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LOG",
        "REPLICATION",
        "HEALTH",
    ];
    crate::say!(
        "{}",
        output::table(Some(header.iter().map(|h| h.to_string()).collect()), rows)
    );
    Ok(())
}
