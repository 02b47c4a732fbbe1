//! Mutual TLS from the cluster CA (`berthctl certs`, `--tls-ca/-cert/-key`):
//! three members that talk to each other and to clients over TLS; a client
//! with a certificate from the cluster CA gets in, one without a
//! certificate, with one from another CA, or with an expired one does not.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use berth_proto::connect::{Tls, use_tls};
use berth_proto::pb;
use berth_proto::pki::{Identity, Pki, Role};
use berth_tests::{Cluster, apply, ctl_at, job};

fn arg(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_from_the_cluster_ca_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::at(&dir.path().join("pki"));
    pki.init().unwrap();
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    pki.issue_now(&Identity::new(Role::Apiserver, "apiserver").with_hosts(hosts))
        .unwrap();
    pki.issue_now(&Identity::new(Role::Admin, "admin")).unwrap();
    let yesterday = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    pki.issue(
        &Identity::new(Role::Admin, "admin"),
        Some("expired"),
        yesterday,
        1,
    )
    .unwrap();
    let other = Pki::at(&dir.path().join("other"));
    other.init().unwrap();
    other
        .issue_now(&Identity::new(Role::Admin, "admin"))
        .unwrap();

    let (ca, cert, key) = (
        arg(&pki.ca_cert()),
        arg(&pki.cert("apiserver")),
        arg(&pki.key("apiserver")),
    );
    let cluster = Cluster::start(
        3,
        &["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key],
    );
    // This test process is a client with the admin's certificate.
    use_tls(
        Tls::load(
            &pki.ca_cert(),
            Some((&pki.cert("admin"), &pki.key("admin"))),
        )
        .unwrap(),
    )
    .unwrap();
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    // Writes reach the leader from any member: members speak TLS too.
    for id in 1..=3 {
        apply(&cluster.client_of(id), job("default", &format!("j{id}"), 1))
            .await
            .unwrap();
    }

    let server = cluster.addresses()[0].clone();
    let ctl = |tls: &[String]| {
        let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
        args.extend(["get", "jobs"]);
        ctl_at(&server, &args)
    };
    let with = |ca: &Path, cert: &Path, key: &Path| {
        vec![
            "--tls-ca".to_string(),
            arg(ca),
            "--tls-cert".to_string(),
            arg(cert),
            "--tls-key".to_string(),
            arg(key),
        ]
    };
    let admin = with(&pki.ca_cert(), &pki.cert("admin"), &pki.key("admin"));
    let out = tokio::task::block_in_place(|| ctl(&admin)).ok();
    assert!(out.contains("j1") && out.contains("j3"), "{out}");

    // Refused: plaintext; TLS without a certificate; a certificate of
    // another CA; an expired one.
    let refused = [
        ("plaintext", Vec::new()),
        ("no certificate", vec!["--tls-ca".to_string(), ca.clone()]),
        (
            "another CA",
            with(&pki.ca_cert(), &other.cert("admin"), &other.key("admin")),
        ),
        (
            "expired",
            with(&pki.ca_cert(), &pki.cert("expired"), &pki.key("expired")),
        ),
    ];
    for (what, tls) in refused {
        let out = tokio::task::block_in_place(|| ctl(&tls));
        assert!(!out.success, "{what}: let in:\n{}", out.stdout);
        eprintln!("{what}: {}", out.stderr.trim());
        assert!(
            out.stderr.contains("--tls-"),
            "{what}: no hint: {}",
            out.stderr
        );
        // The cluster is fine: the admin still gets in.
        assert!(tokio::task::block_in_place(|| ctl(&admin)).success);
    }
    let list = cluster.client().list(pb::Kind::Job, "").await.unwrap();
    assert_eq!(list.objects.len(), 3);
}

/// Runs a daemon with `args`, which must refuse to start; its stderr.
fn refuses(binary: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(berth_tests::binary(binary))
        .args(args)
        .env_remove("BERTH_INSECURE_DEV")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{binary} {args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn daemons_speak_plaintext_only_when_told_and_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let untold = refuses(
        "berth-apiserver",
        &["--data-dir", &data, "--listen", "127.0.0.1:0"],
    );
    assert!(
        untold.contains("--tls-ca") && untold.contains("--insecure-dev"),
        "{untold}"
    );
    let far = refuses(
        "berth-apiserver",
        &[
            "--data-dir",
            &data,
            "--listen",
            "0.0.0.0:0",
            "--insecure-dev",
        ],
    );
    assert!(
        far.contains("0.0.0.0:0") && far.contains("loopback"),
        "{far}"
    );
    let scheduler = refuses(
        "berth-scheduler",
        &["--server", "10.9.9.9:7400", "--insecure-dev"],
    );
    assert!(scheduler.contains("10.9.9.9:7400"), "{scheduler}");
    let agent = refuses("berth-agent", &["--runtime", "sim"]);
    assert!(agent.contains("mutual TLS"), "{agent}");
    // The data dir was not touched.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
