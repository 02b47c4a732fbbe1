//! Authentication and authorization over mutual TLS: every RPC of the API
//! for every role (a table), a compromised agent that tries to reach
//! another node's tasks, users with bearer tokens through berthctl, the
//! refusals counted in metrics — and, on Docker, the real scheduler and
//! agent doing their work with nothing but their own roles' rights.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_proto::connect::{Tls, endpoint_with};
use berth_proto::internal::raft_client::RaftClient;
use berth_proto::metrics::{scrape, value};
use berth_proto::pb::{
    self, cluster_client::ClusterClient, nodes_client::NodesClient, objects_client::ObjectsClient,
};
use berth_proto::pki::{Identity, Role};
use berth_tests::security::{TestPki, enable_tls};
use berth_tests::{Cluster, Component, apply, ctl_at, free_port, job, wait_until};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);

/// Adds a bearer token, if any, to each request.
#[derive(Clone)]
struct Bearer(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Ch = InterceptedService<Channel, Bearer>;

/// One identity's clients of one member.
#[derive(Clone)]
struct Caller {
    name: &'static str,
    objects: ObjectsClient<Ch>,
    cluster: ClusterClient<Ch>,
    nodes: NodesClient<Ch>,
    raft: RaftClient<Ch>,
}

impl Caller {
    fn new(name: &'static str, address: &str, tls: &Tls, token: Option<&str>) -> Caller {
        let channel = endpoint_with(address, Some(tls)).unwrap().connect_lazy();
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
        let channel = InterceptedService::new(channel, bearer);
        Caller {
            name,
            objects: ObjectsClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            nodes: NodesClient::new(channel.clone()),
            raft: RaftClient::new(channel),
        }
    }
}

/// The CA and this identity's certificate (issued once).
fn tls_of(test: &TestPki, file: &str, identity: Identity) -> Tls {
    test.issue(file, identity);
    Tls::load(
        &test.pki.ca_cert(),
        Some((&test.pki.cert(file), &test.pki.key(file))),
    )
    .unwrap()
}

fn namespace(name: &str) -> pb::Object {
    pb::Object::from(pb::Namespace {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(pb::NamespaceSpec::default()),
    })
}

fn node_of(task: &pb::Object) -> String {
    task.as_task()
        .and_then(|t| t.status.as_ref())
        .map(|s| s.node.clone())
        .unwrap_or_default()
}

/// A cluster of one TLS member with a token file and metrics, a scheduler
/// that spreads, and a simulated fleet of nodes n-0 and n-1 running job
/// `team-a/web` (three tasks, on both nodes).
struct Setup {
    cluster: Cluster,
    address: String,
    metrics: String,
    token_file: std::path::PathBuf,
    _scheduler: Component,
    _fleet: Component,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    enable_tls();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, "# no tokens yet\n").unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let token_arg = token_file.display().to_string();
    let cluster = Cluster::start(
        1,
        &["--token-file", &token_arg, "--metrics-listen", &metrics],
    );
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let address = cluster.addresses()[0].clone();
    let client = cluster.client();
    for ns in ["team-a", "team-b"] {
        apply(&client, namespace(ns)).await.unwrap();
    }
    let scheduler = Component::scheduler(&address, &["--policy", "spread"]);
    let fleet = Component::sim_nodes(&address, "n", 2, &[]);
    apply(&client, job("team-a", "web", 3)).await.unwrap();
    wait_until(DEADLINE, "web's tasks running on both nodes", || async {
        let tasks = client.list(pb::Kind::Task, "").await.unwrap().objects;
        let running = tasks.iter().all(|t| {
            t.as_task()
                .and_then(|t| t.status.as_ref())
                .is_some_and(|s| s.phase() == pb::TaskPhase::Running)
        });
        let bound: Vec<String> = tasks.iter().map(node_of).collect();
        bound.len() == 3
            && running
            && bound.iter().any(|n| n == "n-0")
            && bound.iter().any(|n| n == "n-1")
    })
    .await;
    Setup {
        cluster,
        address,
        metrics,
        token_file,
        _scheduler: scheduler,
        _fleet: fleet,
        _dir: dir,
    }
}

/// The RPCs of the table: each the smallest call that passes
/// authorization without harm (a missing object, an invalid member id…).
#[derive(Debug, Clone, Copy)]
enum Rpc {
    ApplyJobTeamA,
    ApplyJobTeamB,
    ApplyNamespace,
    GetJobTeamA,
    ListJobsEverywhere,
    ListJobsTeamB,
    DeleteJobTeamB,
    UpdateJobStatusTeamA,
    WatchTasksTeamA,
    BindTask,
    GetNode,
    ClusterStatus,
    ClusterMembers,
    AddMember,
    RemoveMember,
    Snapshot,
    Heartbeat,
    WatchUsage,
    RaftPropose,
    RaftPartition,
}

async fn call(c: &mut Caller, rpc: Rpc, web: &pb::Object) -> Code {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    match rpc {
        Rpc::ApplyJobTeamA | Rpc::ApplyJobTeamB | Rpc::ApplyNamespace => {
            let object = match rpc {
                Rpc::ApplyJobTeamA => job("team-a", "table", 1),
                Rpc::ApplyJobTeamB => job("team-b", "table", 1),
                _ => namespace("team-c"),
            };
            let request = pb::ApplyRequest {
                object: Some(object),
                create_only: false,
            };
            code(c.objects.apply(request).await.map(drop))
        }
        Rpc::GetJobTeamA => {
            let request = pb::GetRequest {
                kind: pb::Kind::Job as i32,
                namespace: "team-a".into(),
                name: "web".into(),
                stale: false,
            };
            code(c.objects.get(request).await.map(drop))
        }
        Rpc::ListJobsEverywhere | Rpc::ListJobsTeamB => {
            let request = pb::ListRequest {
                kind: pb::Kind::Job as i32,
                namespace: if matches!(rpc, Rpc::ListJobsTeamB) {
                    "team-b".into()
                } else {
                    String::new()
                },
                ..Default::default()
            };
            code(c.objects.list(request).await.map(drop))
        }
        Rpc::DeleteJobTeamB => {
            let request = pb::DeleteRequest {
                kind: pb::Kind::Job as i32,
                namespace: "team-b".into(),
                name: "missing".into(),
                resource_version: 0,
            };
            code(c.objects.delete(request).await.map(drop))
        }
        Rpc::UpdateJobStatusTeamA => {
            let mut object = web.clone();
            if let Some(meta) = object.metadata_mut() {
                meta.resource_version = 0;
            }
            let request = pb::UpdateStatusRequest {
                object: Some(object),
            };
            code(c.objects.update_status(request).await.map(drop))
        }
        Rpc::WatchTasksTeamA => {
            let request = pb::WatchRequest {
                kind: pb::Kind::Task as i32,
                namespace: "team-a".into(),
                ..Default::default()
            };
            code(c.objects.watch(request).await.map(drop))
        }
        Rpc::BindTask => {
            let op = pb::BatchOp {
                op: Some(pb::batch_op::Op::Bind(pb::BindRequest {
                    namespace: "team-a".into(),
                    task: "missing".into(),
                    node: "n-0".into(),
                    resource_version: 0,
                })),
            };
            let request = pb::BatchRequest { ops: vec![op] };
            match c.objects.batch(request).await {
                Err(status) => status.code(),
                Ok(response) => match response.into_inner().results[0].result.clone() {
                    Some(pb::batch_result::Result::Error(e)) => Code::from_i32(e.code),
                    _ => Code::Ok,
                },
            }
        }
        Rpc::GetNode => {
            let request = pb::GetRequest {
                kind: pb::Kind::Node as i32,
                name: "n-1".into(),
                ..Default::default()
            };
            code(c.objects.get(request).await.map(drop))
        }
        Rpc::ClusterStatus => code(
            c.cluster
                .status(pb::ClusterStatusRequest {})
                .await
                .map(drop),
        ),
        Rpc::ClusterMembers => code(c.cluster.members(pb::MembersRequest {}).await.map(drop)),
        Rpc::AddMember => {
            let request = pb::AddMemberRequest {
                id: 0,
                address: "127.0.0.1:1".into(),
                replace_id: 0,
            };
            code(c.cluster.add_member(request).await.map(drop))
        }
        Rpc::RemoveMember => {
            let request = pb::RemoveMemberRequest { id: 99 };
            code(c.cluster.remove_member(request).await.map(drop))
        }
        Rpc::Snapshot => code(c.cluster.snapshot(pb::SnapshotRequest {}).await.map(drop)),
        Rpc::Heartbeat => {
            let request = pb::HeartbeatRequest {
                nodes: vec![pb::NodeHeartbeat {
                    node: "n-0".into(),
                    ..Default::default()
                }],
            };
            code(c.nodes.heartbeat(request).await.map(drop))
        }
        Rpc::WatchUsage => {
            let request = pb::WatchUsageRequest { interval_ms: 1000 };
            code(c.nodes.watch_usage(request).await.map(drop))
        }
        Rpc::RaftPropose => {
            let request = berth_proto::internal::ProposeRequest::default();
            code(c.raft.propose(request).await.map(drop))
        }
        Rpc::RaftPartition => {
            let request = berth_proto::internal::PartitionRequest::default();
            code(c.raft.partition(request).await.map(drop))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_refused_to_roles_without_the_right() {
    let s = setup().await;
    let test = enable_tls();
    let token = berth_proto::auth::new_token().unwrap();
    let ann = berth_proto::auth::Principal::new(Role::Viewer, "ann").in_namespaces(["team-a"]);
    std::fs::write(
        &s.token_file,
        berth_proto::auth::token_line(&token, &ann) + "\n",
    )
    .unwrap();

    let a = &s.address;
    let ca_only = Tls::load(&test.pki.ca_cert(), None).unwrap();
    let team_a = || ["team-a".to_string()];
    let by_certificate =
        |name, file, identity| Caller::new(name, a, &tls_of(test, file, identity), None);
    let mut callers = vec![
        by_certificate("admin", "admin", Identity::new(Role::Admin, "admin")),
        by_certificate("viewer", "v", Identity::new(Role::Viewer, "v")),
        by_certificate(
            "team-a admin",
            "u",
            Identity::new(Role::Admin, "u").in_namespaces(team_a()),
        ),
        by_certificate(
            "team-a viewer",
            "tv",
            Identity::new(Role::Viewer, "tv").in_namespaces(team_a()),
        ),
        by_certificate("scheduler", "s", Identity::new(Role::Scheduler, "s")),
        by_certificate("node n-0", "n0", Identity::new(Role::Node, "n-0")),
        by_certificate("member", "m", Identity::new(Role::Apiserver, "m")),
        Caller::new("team-a viewer by token", a, &ca_only, Some(&token)),
        Caller::new("nobody", a, &ca_only, None),
        Caller::new("unknown token", a, &ca_only, Some("not-a-token")),
    ];
    // Who may: admin, viewer, team-a admin, team-a viewer, scheduler,
    // node n-0, member, token (team-a viewer); nobody and an unknown token
    // never (they are UNAUTHENTICATED).
    use Rpc::*;
    let table: [(Rpc, [bool; 8]); 20] = [
        (
            ApplyJobTeamA,
            [true, false, true, false, false, false, true, false],
        ),
        (
            ApplyJobTeamB,
            [true, false, false, false, false, false, true, false],
        ),
        (
            ApplyNamespace,
            [true, false, false, false, false, false, true, false],
        ),
        (
            GetJobTeamA,
            [true, true, true, true, true, false, true, true],
        ),
        (
            ListJobsEverywhere,
            [true, true, false, false, true, false, true, false],
        ),
        (
            ListJobsTeamB,
            [true, true, false, false, true, false, true, false],
        ),
        (
            DeleteJobTeamB,
            [true, false, false, false, false, false, true, false],
        ),
        (
            UpdateJobStatusTeamA,
            [true, false, true, false, true, false, true, false],
        ),
        (
            WatchTasksTeamA,
            [true, true, true, true, true, true, true, true],
        ),
        (
            BindTask,
            [true, false, true, false, true, false, true, false],
        ),
        (GetNode, [true, true, false, false, true, true, true, false]),
        (
            ClusterStatus,
            [true, true, false, false, true, false, true, false],
        ),
        (
            ClusterMembers,
            [true, true, false, false, true, false, true, false],
        ),
        (
            AddMember,
            [true, false, false, false, false, false, true, false],
        ),
        (
            RemoveMember,
            [true, false, false, false, false, false, true, false],
        ),
        (
            Snapshot,
            [true, false, false, false, false, false, true, false],
        ),
        (
            Heartbeat,
            [true, false, false, false, false, true, true, false],
        ),
        (
            WatchUsage,
            [true, true, false, false, true, false, true, false],
        ),
        (
            RaftPropose,
            [false, false, false, false, false, false, true, false],
        ),
        (
            RaftPartition,
            [true, false, false, false, false, false, true, false],
        ),
    ];
    let web = s
        .cluster
        .client()
        .get(pb::Kind::Job, "team-a", "web")
        .await
        .unwrap();
    // The token file is read again within a second of its change.
    let token_caller = Caller::new("token", a, &ca_only, Some(&token));
    wait_until(DEADLINE, "the token to be known", || {
        let mut caller = token_caller.clone();
        let web = web.clone();
        async move { call(&mut caller, GetJobTeamA, &web).await == Code::Ok }
    })
    .await;
    let mut wrong = Vec::new();
    for (rpc, allowed) in table {
        for (i, caller) in callers.iter_mut().enumerate() {
            let got = call(caller, rpc, &web).await;
            let expected = allowed.get(i).copied().unwrap_or(false);
            let refused = matches!(got, Code::PermissionDenied | Code::Unauthenticated);
            let ok = if expected {
                !refused
            } else if i >= 8 {
                got == Code::Unauthenticated
            } else {
                got == Code::PermissionDenied
            };
            if !ok {
                wrong.push(format!("{rpc:?} by {}: {got:?}", caller.name));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the policy was not enforced:\n{}",
        wrong.join("\n")
    );

    // Refusals are counted, by code and role.
    let text = scrape(&s.metrics).await.unwrap();
    let denied = |role: &str| {
        value(
            &text,
            "berth_api_auth_denials_total",
            &format!("code=\"permission_denied\",role=\"{role}\""),
        )
        .unwrap_or(0.0)
    };
    assert!(denied("viewer") >= 10.0, "{text}");
    assert!(denied("node") >= 10.0, "{text}");
    let unauthenticated = value(
        &text,
        "berth_api_auth_denials_total",
        "code=\"unauthenticated\",role=\"\"",
    )
    .unwrap_or(0.0);
    assert!(unauthenticated >= 40.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_agent_cannot_reach_another_nodes_tasks() {
    let s = setup().await;
    let test = enable_tls();
    let admin = s.cluster.client();
    let start = admin.list(pb::Kind::Task, "").await.unwrap();
    let theirs = start
        .objects
        .iter()
        .find(|t| node_of(t) == "n-1")
        .unwrap()
        .clone();
    let ours = start
        .objects
        .iter()
        .find(|t| node_of(t) == "n-0")
        .unwrap()
        .clone();
    let mine_count = start.objects.iter().filter(|t| node_of(t) == "n-0").count();
    let key = |t: &pb::Object| (t.namespace().to_string(), t.name().to_string());
    let (ns, name) = key(&theirs);

    let tls = tls_of(test, "n0", Identity::new(Role::Node, "n-0"));
    let mut agent = Caller::new("node n-0", &s.address, &tls, None);
    let refused = |r: Result<_, tonic::Status>, what: &str| match r {
        Err(status) if status.code() == Code::PermissionDenied => {
            assert!(
                status.message().contains("node \"n-0\""),
                "{what}: the refusal names the caller: {status:?}"
            );
        }
        Err(status) => panic!("{what}: refused with {status:?}, not PERMISSION_DENIED"),
        Ok(_) => panic!("{what}: a node was allowed to touch another node's task"),
    };

    // Reading another node's task (its template's secrets).
    let get = pb::GetRequest {
        kind: pb::Kind::Task as i32,
        namespace: ns.clone(),
        name: name.clone(),
        stale: false,
    };
    refused(agent.objects.get(get).await.map(drop), "get");
    let listed = agent
        .objects
        .list(pb::ListRequest {
            kind: pb::Kind::Task as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.objects.len(),
        mine_count,
        "a node lists its own tasks"
    );
    assert!(listed.objects.iter().all(|t| node_of(t) == "n-0"));
    // A watch replays history: only its own tasks' events.
    let mut stream = agent
        .objects
        .watch(pb::WatchRequest {
            kind: pb::Kind::Task as i32,
            from_revision: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .unwrap_or(Ok(None))
    {
        if let Some(object) = event.object {
            assert_eq!(node_of(&object), "n-0", "the watch showed {}", object.key());
            seen += 1;
        }
    }
    assert!(
        seen >= mine_count,
        "the watch showed {seen} events of its own tasks"
    );

    // Killing it: a terminal status, a delete.
    let mut killed = theirs.clone();
    if let Some(pb::object::Kind::Task(t)) = &mut killed.kind {
        let status = t.status.get_or_insert_with(Default::default);
        status.phase = pb::TaskPhase::Failed as i32;
        status.message = "killed by a compromised agent".into();
    }
    refused(
        agent
            .objects
            .update_status(pb::UpdateStatusRequest {
                object: Some(killed.clone()),
            })
            .await
            .map(drop),
        "update_status",
    );
    // The same status claiming the task is ours does not move it either.
    let mut claimed = killed.clone();
    if let Some(pb::object::Kind::Task(t)) = &mut claimed.kind {
        t.status.get_or_insert_with(Default::default).node = "n-0".into();
    }
    refused(
        agent
            .objects
            .update_status(pb::UpdateStatusRequest {
                object: Some(claimed),
            })
            .await
            .map(drop),
        "update_status claiming the task",
    );
    let delete = pb::DeleteRequest {
        kind: pb::Kind::Task as i32,
        namespace: ns.clone(),
        name: name.clone(),
        resource_version: 0,
    };
    refused(agent.objects.delete(delete).await.map(drop), "delete");
    // Binding, in a batch: the op is refused.
    let bind = pb::BatchRequest {
        ops: vec![pb::BatchOp {
            op: Some(pb::batch_op::Op::Bind(pb::BindRequest {
                namespace: ns.clone(),
                task: name.clone(),
                node: "n-0".into(),
                resource_version: 0,
            })),
        }],
    };
    let result = agent.objects.batch(bind).await.unwrap().into_inner();
    match &result.results[0].result {
        Some(pb::batch_result::Result::Error(e)) => {
            assert_eq!(Code::from_i32(e.code), Code::PermissionDenied, "{e:?}")
        }
        other => panic!("a node bound a task: {other:?}"),
    }
    // The other node itself: cordoning it, heartbeating for it.
    let mut other_node = admin.get(pb::Kind::Node, "", "n-1").await.unwrap();
    if let Some(pb::object::Kind::Node(n)) = &mut other_node.kind {
        n.spec.get_or_insert_with(Default::default).unschedulable = true;
    }
    refused(
        agent
            .objects
            .apply(pb::ApplyRequest {
                object: Some(other_node),
                create_only: false,
            })
            .await
            .map(drop),
        "apply node n-1",
    );
    let beat = pb::HeartbeatRequest {
        nodes: vec![pb::NodeHeartbeat {
            node: "n-1".into(),
            ..Default::default()
        }],
    };
    refused(agent.nodes.heartbeat(beat).await.map(drop), "heartbeat n-1");
    let event = berth_proto::object::task_warning(&theirs, "Fake", "lies".into(), "x", 1);
    refused(
        agent
            .objects
            .apply(pb::ApplyRequest {
                object: Some(event),
                create_only: false,
            })
            .await
            .map(drop),
        "an event about n-1's task",
    );

    // An event about its own task, but in another tenant's namespace.
    let mut elsewhere = berth_proto::object::task_warning(&ours, "Fake", "lies".into(), "x", 1);
    if let Some(meta) = elsewhere.metadata_mut() {
        meta.namespace = "team-b".into();
    }
    refused(
        agent
            .objects
            .apply(pb::ApplyRequest {
                object: Some(elsewhere),
                create_only: false,
            })
            .await
            .map(drop),
        "an event in another namespace",
    );

    // Its own task it may report on.
    let mut own = ours.clone();
    if let Some(pb::object::Kind::Task(t)) = &mut own.kind {
        t.status.get_or_insert_with(Default::default).message = "reported by n-0".into();
    }
    if let Some(meta) = own.metadata_mut() {
        meta.resource_version = 0;
    }
    agent
        .objects
        .update_status(pb::UpdateStatusRequest { object: Some(own) })
        .await
        .expect("a node updates its own task's status");

    // Nothing of n-1's task changed.
    let after = admin.get(pb::Kind::Task, &ns, &name).await.unwrap();
    let phase = |t: &pb::Object| {
        t.as_task()
            .and_then(|t| t.status.as_ref())
            .map(|s| s.phase())
    };
    assert_eq!(phase(&after), Some(pb::TaskPhase::Running));
    assert_eq!(node_of(&after), "n-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_with_tokens_see_their_namespaces_through_berthctl() {
    let s = setup().await;
    let test = enable_tls();
    let file = s.token_file.display().to_string();
    let created = tokio::task::spawn_blocking(move || {
        ctl_at(
            "127.0.0.1:1",
            &[
                "tokens",
                "create",
                "--file",
                &file,
                "--name",
                "ann",
                "--role",
                "viewer",
                "--namespaces",
                "team-a",
            ],
        )
    })
    .await
    .unwrap();
    assert!(created.success, "{}", created.stderr);
    let token = created.stdout.trim().to_string();
    assert_eq!(token.len(), 64, "{}", created.stdout);
    let stored = std::fs::read_to_string(&s.token_file).unwrap();
    assert!(!stored.contains(&token), "the token file holds hashes only");

    let ca = test.pki.ca_cert().display().to_string();
    let server = s.address.clone();
    let ctl = move |args: Vec<String>| {
        let server = server.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                ctl_at(&server, &args)
            })
            .await
            .unwrap()
        }
    };
    let with = |token: &str, rest: &[&str]| {
        let mut args = vec!["--tls-ca".to_string(), ca.clone()];
        if !token.is_empty() {
            args.extend(["--token".to_string(), token.to_string()]);
        }
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };
    // The token file is read again within a second of the change.
    wait_until(DEADLINE, "berthctl to get in with the token", || {
        let run = ctl(with(&token, &["get", "jobs", "-n", "team-a"]));
        async move { run.await.success }
    })
    .await;
    let out = ctl(with(&token, &["get", "jobs", "-n", "team-a"])).await;
    assert!(out.stdout.contains("web"), "{}", out.stdout);

    let out = ctl(with(&token, &["get", "jobs", "-n", "team-b"])).await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("viewer \"ann\"") && out.stderr.contains("team-b"),
        "{}",
        out.stderr
    );
    let out = ctl(with(&token, &["delete", "job", "web", "-n", "team-a"])).await;
    assert!(
        !out.success && out.stderr.contains("may not delete"),
        "{}",
        out.stderr
    );
    let out = ctl(with("0123", &["get", "jobs", "-n", "team-a"])).await;
    assert!(
        !out.success && out.stderr.contains("not known"),
        "{}",
        out.stderr
    );
    let out = ctl(with("", &["get", "jobs", "-n", "team-a"])).await;
    assert!(
        !out.success
            && out
                .stderr
                .contains("no client certificate and no bearer token"),
        "{}",
        out.stderr
    );
}

/// The real scheduler and a Docker agent, each with its own role's
/// certificate (the agent's names its node), run a job end to end; berthctl
/// reads its logs from the agent as an admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_and_a_docker_agent_work_with_their_own_rights_only() {
    enable_tls();
    let Some(cluster) = berth_tests::docker::DockerNode::start("authz_docker", &[]).await else {
        return;
    };
    let manifest = berth_tests::docker::job_yaml(
        "hello",
        "prod",
        1,
        "    args: [\"--print\", \"hello over mutual TLS\", \"--serve\", \"8080\"]
    resources:
      cpu: 100m
      memory: 32Mi
",
    );
    let applied = cluster
        .server
        .ctl_stdin(&["apply", "-f", "-"], manifest.as_bytes());
    assert!(applied.success, "{}", applied.stderr);
    wait_until(DEADLINE, "hello-0 to run", || async {
        cluster.task("hello-0").await.is_some_and(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.phase() == pb::TaskPhase::Running)
        })
    })
    .await;
    let server = cluster.server.addr.clone();
    wait_until(DEADLINE, "the task's logs", || {
        let server = server.clone();
        async move {
            let logs = tokio::task::spawn_blocking(move || ctl_at(&server, &["logs", "hello-0"]))
                .await
                .unwrap();
            logs.success && logs.stdout.contains("hello over mutual TLS")
        }
    })
    .await;
}
