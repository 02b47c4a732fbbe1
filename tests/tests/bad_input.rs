//! Bad input: every malformed, invalid or forbidden request gets a clear
//! error naming what is wrong — and the store is byte-for-byte unchanged.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::{ApiServer, apply, dump, job};
use tonic::Code;

const JOB: &str = "apiVersion: berth/v1
kind: Job
metadata:
  name: web
spec:
  tier: prod
  replicas: 2
  template:
    image: berth-testapp:latest
    resources:
      cpu: 500m
      memory: 256Mi
";

fn with(replace: &str, by: &str) -> String {
    assert!(
        JOB.contains(replace),
        "{replace:?} is not in the base manifest"
    );
    JOB.replacen(replace, by, 1)
}

fn with_health_check(check: &str) -> String {
    format!("{JOB}    healthCheck:\n{check}")
}

/// The contents of every file under `dir`: equal maps mean byte-for-byte
/// equal stores.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A server with some state to protect: a namespace with a quota, a job
/// written twice. Returns the job's first (now stale) and current versions.
async fn server_with_state(dir: &Path) -> (ApiServer, BerthClient, u64, u64) {
    let server = ApiServer::start(dir);
    let client = server.client();
    server
        .ctl_stdin(
            &["apply", "-f", "-"],
            b"apiVersion: berth/v1
kind: Namespace
metadata: {name: team-a}
spec:
  quota:
    prod: {cpu: 2, memory: 4Gi}
",
        )
        .ok();
    let stale = apply(&client, job("default", "existing", 1))
        .await
        .unwrap()
        .resource_version();
    let current = apply(&client, job("default", "existing", 2))
        .await
        .unwrap()
        .resource_version();
    (server, client, stale, current)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, client, stale, current) = server_with_state(&data).await;
    let inputs = tempfile::tempdir().unwrap();
    let stale_error = format!("resource_version {stale} is stale, the object is at {current}");

    let ten_megabytes = format!("{JOB}    args: [\"{}\"]\n", "x".repeat(10 * 1024 * 1024));
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        // (file name, contents, extra berthctl args, expected error text)
        ("syntax.yaml", "apiVersion: berth/v1\nkind: Job\nmetadata: {name: x\n".into(), vec![], "document 1: YAML syntax error"),
        ("tabs.yaml", "apiVersion: berth/v1\nkind: Job\nmetadata:\n\tname: x\n".into(), vec![], "YAML syntax error"),
        ("list.yaml", "- a\n- b\n".into(), vec![], "expected a mapping with apiVersion, kind, metadata and spec, found a list"),
        ("no-version.yaml", with("apiVersion: berth/v1\n", ""), vec![], "apiVersion: required"),
        ("version.yaml", with("berth/v1", "apps/v1"), vec![], "apiVersion: \"apps/v1\" is not supported"),
        ("kind.yaml", with("kind: Job", "kind: Deployment"), vec![], "kind: \"Deployment\" is not a Berth kind"),
        ("top-field.yaml", format!("{JOB}specs: {{}}\n"), vec![], "specs: unknown field `specs`"),
        ("nested-field.yaml", with("    image:", "    imagePullPolicy: Always\n    image:"), vec![], "spec.template.imagePullPolicy: unknown field `imagePullPolicy`"),
        ("type.yaml", with("replicas: 2", "replicas: three"), vec![], "spec.replicas: invalid type: string \"three\""),
        ("negative.yaml", with("replicas: 2", "replicas: -1"), vec![], "spec.replicas: invalid value: integer `-1`"),
        ("range.yaml", with("replicas: 2", "replicas: 200000"), vec![], "spec.replicas: 200000 is out of range"),
        ("cpu.yaml", with("cpu: 500m", "cpu: 5x"), vec![], "spec.template.resources.cpu: \"5x\" is not a quantity"),
        ("memory.yaml", with("memory: 256Mi", "memory: \"1.5\""), vec![], "spec.template.resources.memory: \"1.5\" is not a quantity"),
        ("zero-cpu.yaml", with("cpu: 500m", "cpu: 0"), vec![], "spec.template.resources.cpu: must be greater than zero"),
        ("negative-memory.yaml", with("memory: 256Mi", "memory: -1Gi"), vec![], "spec.template.resources.memory: must be greater than zero"),
        ("no-resources.yaml", with("    resources:\n      cpu: 500m\n      memory: 256Mi\n", ""), vec![], "spec.template: missing field `resources`"),
        ("no-image.yaml", with("    image: berth-testapp:latest\n", ""), vec![], "spec.template: missing field `image`"),
        ("empty-image.yaml", with("image: berth-testapp:latest", "image: \"\""), vec![], "spec.template.image: required"),
        ("tier.yaml", with("tier: prod", "tier: gold"), vec![], "spec.tier: unknown variant `gold`"),
        ("no-tier.yaml", with("  tier: prod\n", ""), vec![], "spec: missing field `tier`"),
        ("name.yaml", with("name: web", "name: Web_App"), vec![], "metadata.name: \"Web_App\" is not a valid name"),
        ("long-name.yaml", with("name: web", &format!("name: {}", "a".repeat(70))), vec![], "is longer than 63 characters"),
        ("label.yaml", with("  name: web\n", "  name: web\n  labels: {\"bad key\": x}\n"), vec![], "metadata.labels.bad key: \"bad key\" is not a valid label key"),
        ("batch-always.yaml", format!("{}    restartPolicy: Always\n", with("tier: prod", "tier: batch")), vec![], "spec.template.restartPolicy: Always is not allowed for batch"),
        ("two-probes.yaml", with_health_check("      http: {path: /, port: 80}\n      tcp: {port: 80}\n"), vec![], "spec.template.healthCheck: give exactly one of http, tcp or exec"),
        ("timeout.yaml", with_health_check("      tcp: {port: 80}\n      period: 1s\n      timeout: 5s\n"), vec![], "spec.template.healthCheck.timeout: must be positive and at most the period"),
        ("duration.yaml", with_health_check("      tcp: {port: 80}\n      period: 10 parsecs\n"), vec![], "spec.template.healthCheck.period: \"10 parsecs\" is not a duration"),
        ("port.yaml", with("    image:", "    ports: [{containerPort: 70000}]\n    image:"), vec![], "spec.template.ports[0].containerPort: 70000 is not a port number"),
        ("operator.yaml", format!("{JOB}  constraints: [{{key: zone, operator: Near, values: [a]}}]\n"), vec![], "spec.constraints[0].operator: unknown variant `Near`"),
        ("values.yaml", format!("{JOB}  constraints: [{{key: zone, operator: In}}]\n"), vec![], "spec.constraints[0].values: required for In and NotIn"),
        ("env.yaml", with("    image:", "    env: {PORT: 8080}\n    image:"), vec![], "spec.template.env.PORT: invalid type: integer `8080`, expected a string"),
        ("extended.yaml", with("memory: 256Mi", "memory: 256Mi\n      extended: {cpu: 1}"), vec![], "spec.template.resources.extended.cpu: cpu is a built-in resource"),
        ("huge.yaml", ten_megabytes, vec![], "document 1: the object is 10485"),
        ("quota.yaml", "apiVersion: berth/v1\nkind: Namespace\nmetadata: {name: q}\nspec: {quota: {prod: {cpu: -1}}}\n".into(), vec![], "spec.quota.prod.cpu: must not be negative"),
        ("node-namespace.yaml", "apiVersion: berth/v1\nkind: Node\nmetadata: {name: n1, namespace: default}\n".into(), vec![], "metadata.namespace: Node is not namespaced"),
        ("second-bad.yaml", format!("{}---\n{}", with("name: web", "name: fine"), with("cpu: 500m", "cpu: lots")), vec![], "document 2: spec.template.resources.cpu: \"lots\" is not a quantity"),
        ("other-namespace.yaml", with("  name: web\n", "  name: web\n  namespace: team-b\n"), vec!["-n", "team-a"], "metadata.namespace: \"team-b\" does not match the namespace \"team-a\""),
        // Rules only the server can check, against stored state.
        ("stale.yaml", with("  name: web\n", &format!("  name: existing\n  resourceVersion: {stale}\n")), vec![], &stale_error),
        ("over-quota.yaml", with("replicas: 2", "replicas: 5"), vec!["-n", "team-a"], "quota exceeded: namespace team-a: the prod quota for cpu is 2"),
        ("ghost.yaml", with("  name: web\n", "  name: web\n  namespace: ghost\n"), vec![], "namespace \"ghost\" not found"),
    ];
    assert!(cases.len() >= 25);

    let store_before = files(&data);
    let dump_before = dump(&client).await;
    for (file, contents, extra, expected) in &cases {
        let path = inputs.path().join(file);
        std::fs::write(&path, contents).unwrap();
        let mut args = vec!["apply", "-f", path.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let stderr = server.ctl(&args).fails();
        assert!(
            stderr.contains(file),
            "{file}: the error must name the file:\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{file}: expected {expected:?} in:\n{stderr}"
        );
    }

    // Inputs that are not manifests at all.
    let not_utf8 = inputs.path().join("binary.yaml");
    std::fs::write(&not_utf8, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let stderr = server
        .ctl(&["apply", "-f", not_utf8.to_str().unwrap()])
        .fails();
    assert!(stderr.contains("binary.yaml: not UTF-8 text"), "{stderr}");
    let stderr = server
        .ctl(&["apply", "-f", "/nonexistent/web.yaml"])
        .fails();
    assert!(
        stderr.contains("/nonexistent/web.yaml: cannot read"),
        "{stderr}"
    );
    let stderr = server.ctl_stdin(&["apply", "-f", "-"], b"kind: [").fails();
    assert!(
        stderr.contains("<stdin>: document 1: YAML syntax error"),
        "{stderr}"
    );

    assert_eq!(
        dump_before,
        dump(&client).await,
        "no stored object or revision may change"
    );
    assert!(
        files(&data) == store_before,
        "the store's files must be byte-for-byte unchanged"
    );
}

async fn expect_status<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    text: &str,
) {
    let status = match result {
        Ok(response) => panic!("{what}: accepted: {response:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{what}: {status}");
    assert!(
        status.message().contains(text),
        "{what}: expected {text:?} in {:?}",
        status.message()
    );
}

fn job_with(edit: impl FnOnce(&mut pb::Job)) -> pb::Object {
    let Some(pb::object::Kind::Job(mut j)) = job("default", "raw", 1).kind else {
        unreachable!()
    };
    edit(&mut j);
    pb::Object::from(j)
}

fn template(j: &mut pb::Job) -> &mut pb::TaskTemplate {
    j.spec.as_mut().unwrap().template.as_mut().unwrap()
}

/// The server cannot trust its clients: the same rules, over raw gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_grpc_requests_are_checked_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_server, client, stale, _) = server_with_state(&data).await;
    let mut c = client.objects();
    let store_before = files(&data);
    let dump_before = dump(&client).await;

    let apply_req = |object: Option<pb::Object>| pb::ApplyRequest {
        object,
        create_only: false,
    };
    let invalid: Vec<(&str, Option<pb::Object>, Code, &str)> = vec![
        ("no object", None, Code::InvalidArgument, "object: required"),
        (
            "no kind",
            Some(pb::Object { kind: None }),
            Code::InvalidArgument,
            "kind: required",
        ),
        (
            "zero cpu",
            Some(job_with(|j| {
                template(j).resources.as_mut().unwrap().cpu_millis = 0
            })),
            Code::InvalidArgument,
            "spec.template.resources.cpu: must be greater than zero",
        ),
        (
            "negative memory",
            Some(job_with(|j| {
                template(j).resources.as_mut().unwrap().memory_bytes = -5
            })),
            Code::InvalidArgument,
            "spec.template.resources.memory",
        ),
        (
            "no resources",
            Some(job_with(|j| template(j).resources = None)),
            Code::InvalidArgument,
            "spec.template.resources: required",
        ),
        (
            "unknown tier",
            Some(job_with(|j| j.spec.as_mut().unwrap().tier = 7)),
            Code::InvalidArgument,
            "spec.tier: 7 is not a known tier",
        ),
        (
            "no tier",
            Some(job_with(|j| j.spec.as_mut().unwrap().tier = 0)),
            Code::InvalidArgument,
            "spec.tier: required",
        ),
        (
            "empty image",
            Some(job_with(|j| template(j).image.clear())),
            Code::InvalidArgument,
            "spec.template.image: required",
        ),
        (
            "bad name",
            Some(job_with(|j| {
                j.metadata.as_mut().unwrap().name = "UPPER".into()
            })),
            Code::InvalidArgument,
            "metadata.name",
        ),
        (
            "too many replicas",
            Some(job_with(|j| j.spec.as_mut().unwrap().replicas = 200_000)),
            Code::InvalidArgument,
            "spec.replicas: 200000 is out of range",
        ),
        (
            "negative priority",
            Some(job_with(|j| j.spec.as_mut().unwrap().priority = -3)),
            Code::InvalidArgument,
            "spec.priority",
        ),
        (
            "bad restart policy",
            Some(job_with(|j| template(j).restart_policy = 9)),
            Code::InvalidArgument,
            "spec.template.restartPolicy: 9 is not a restart policy",
        ),
        (
            "oversize",
            Some(job_with(|j| template(j).args = vec!["x".repeat(10 << 20)])),
            Code::ResourceExhausted,
            "more than the limit of 1048576 bytes",
        ),
        (
            "missing namespace",
            Some(job_with(|j| {
                j.metadata.as_mut().unwrap().namespace = "ghost".into()
            })),
            Code::NotFound,
            "namespace \"ghost\" not found",
        ),
        (
            "over quota",
            Some(job_with(|j| {
                j.metadata.as_mut().unwrap().namespace = "team-a".into();
                let spec = j.spec.as_mut().unwrap();
                spec.tier = pb::Tier::Prod as i32;
                spec.replicas = 100;
            })),
            Code::ResourceExhausted,
            "quota exceeded",
        ),
        (
            "stale version",
            Some(job_with(|j| {
                let meta = j.metadata.as_mut().unwrap();
                meta.name = "existing".into();
                meta.resource_version = 3;
            })),
            Code::Aborted,
            "is stale",
        ),
        (
            "wrong uid",
            Some(job_with(|j| {
                let meta = j.metadata.as_mut().unwrap();
                meta.name = "existing".into();
                meta.uid = "not-the-uid".into();
            })),
            Code::Aborted,
            "uid not-the-uid does not match",
        ),
        (
            "node in a namespace",
            Some(pb::Object::from(pb::Node {
                metadata: Some(pb::ObjectMeta {
                    name: "n1".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            Code::InvalidArgument,
            "metadata.namespace: Node is not namespaced",
        ),
        (
            "task of no job",
            Some(pb::Object::from(pb::Task {
                metadata: Some(pb::ObjectMeta {
                    name: "orphan-0".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                spec: Some(pb::TaskSpec {
                    job: "nope".into(),
                    tier: pb::Tier::Batch as i32,
                    template: job_with(|_| {}).kind.and_then(|k| match k {
                        pb::object::Kind::Job(j) => j.spec?.template,
                        _ => None,
                    }),
                    ..Default::default()
                }),
                status: None,
            })),
            Code::FailedPrecondition,
            "spec.job: job default/nope not found",
        ),
    ];
    assert!(invalid.len() >= 15);
    for (what, object, code, text) in invalid {
        expect_status(what, c.apply(apply_req(object)).await, code, text).await;
    }

    let existing = job("default", "existing", 2);
    expect_status(
        "create-only over an existing object",
        c.apply(pb::ApplyRequest {
            object: Some(existing),
            create_only: true,
        })
        .await,
        Code::AlreadyExists,
        "job default/existing already exists",
    )
    .await;
    expect_status(
        "status of a namespace",
        c.update_status(pb::UpdateStatusRequest {
            object: Some(pb::Object::from(pb::Namespace {
                metadata: Some(pb::ObjectMeta {
                    name: "team-a".into(),
                    ..Default::default()
                }),
                spec: None,
            })),
        })
        .await,
        Code::InvalidArgument,
        "Namespace has no status",
    )
    .await;
    expect_status(
        "delete the default namespace",
        c.delete(pb::DeleteRequest {
            kind: pb::Kind::Namespace as i32,
            name: "default".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "cannot be deleted",
    )
    .await;
    expect_status(
        "delete with a stale version",
        c.delete(pb::DeleteRequest {
            kind: pb::Kind::Job as i32,
            namespace: "default".into(),
            name: "existing".into(),
            resource_version: stale,
        })
        .await,
        Code::Aborted,
        "is stale",
    )
    .await;
    expect_status(
        "get without a kind",
        c.get(pb::GetRequest {
            name: "x".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "kind: required",
    )
    .await;
    expect_status(
        "list with a bad selector",
        c.list(pb::ListRequest {
            kind: pb::Kind::Job as i32,
            label_selector: "app in (web".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "label_selector",
    )
    .await;
    expect_status(
        "watch from the future",
        c.watch(pb::WatchRequest {
            kind: pb::Kind::Job as i32,
            from_revision: 1 << 40,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "in the future",
    )
    .await;

    assert_eq!(
        dump_before,
        dump(&client).await,
        "no stored object or revision may change"
    );
    assert!(
        files(&data) == store_before,
        "the store's files must be byte-for-byte unchanged"
    );
}
