//! Prometheus metrics end to end: real processes started with
//! `--metrics-listen`, scraped over HTTP before and after a job runs.
//! Every check waits for the series with a deadline: they are updated by
//! loops (scheduling cycles, heartbeats), not at the moment of a write.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::metrics::{scrape, value};
use berth_proto::pb;
use berth_tests::{ApiServer, Cluster, Component, apply, free_port, job, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// A scrape of `addr`, or an empty text while its server is not up yet
/// (every `value` of it is then `None`).
async fn metrics_of(addr: &str) -> String {
    scrape(addr).await.unwrap_or_default()
}

/// The value of a series in a fresh scrape of `addr`.
async fn series(addr: &str, name: &str, labels: &str) -> Option<f64> {
    value(&metrics_of(addr).await, name, labels)
}

/// Tasks of `job` that are Running.
async fn running(client: &BerthClient, job: &str) -> usize {
    client
        .list(pb::Kind::Task, &format!("berth.dev/job={job}"))
        .await
        .map(|l| l.objects)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| o.as_task()?.status.as_ref())
        .filter(|s| s.phase() == pb::TaskPhase::Running)
        .count()
}

// ---- berth-apiserver ----

/// A series in a fresh scrape, 0 when absent.
async fn series_or_zero(addr: &str, name: &str, labels: &str) -> f64 {
    series(addr, name, labels).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_metrics_serve_and_move() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut cluster = Cluster::start(1, &["--metrics-listen", &metrics]);
    cluster.wait_for_leader(DEADLINE).await;
    let client = cluster.client();
    let addr = metrics.as_str();

    // The raft gauges are set at the end of the loop's turn that made this
    // member leader, a moment after it says so.
    wait_until(DEADLINE, "the leader gauge", || async {
        series_or_zero(addr, "berth_raft_leader", "").await == 1.0
    })
    .await;
    let text = scrape(addr).await.unwrap();
    for series in [
        "berth_raft_term",
        "berth_raft_commit_index",
        "berth_raft_applied_index",
        "berth_raft_leader",
        "berth_raft_leader_changes_total",
        "berth_raft_proposal_seconds_count",
        "berth_raft_snapshots_sent_total",
        "berth_api_watchers",
    ] {
        assert!(
            value(&text, series, "").is_some(),
            "{series} missing:\n{text}"
        );
    }
    assert!(value(&text, "berth_raft_term", "").unwrap() >= 1.0);
    assert!(value(&text, "berth_raft_leader_changes_total", "").unwrap() >= 1.0);

    // Writes: counted by method and code, timed from proposal to apply.
    let applied_before = series_or_zero(addr, "berth_raft_applied_index", "").await;
    let ok = r#"method="Objects/Apply",code="Ok""#;
    let applies_before = series_or_zero(addr, "berth_api_requests_total", ok).await;
    for i in 0..10 {
        apply(&client, job("default", &format!("j{i}"), 1))
            .await
            .unwrap();
    }
    let text = scrape(addr).await.unwrap();
    assert_eq!(
        value(&text, "berth_api_requests_total", ok).unwrap() - applies_before,
        10.0,
        "{text}"
    );
    // Set at the end of the turn that answered the writes.
    wait_until(DEADLINE, "the applied index gauge", || async {
        series_or_zero(addr, "berth_raft_applied_index", "").await >= applied_before + 10.0
    })
    .await;
    assert!(value(&text, "berth_raft_proposal_seconds_count", "").unwrap() >= 10.0);
    assert!(
        value(
            &text,
            "berth_api_request_seconds_count",
            r#"method="Objects/Apply""#
        )
        .unwrap()
            >= 10.0
    );

    // A refusal is counted with its code.
    let missing = client.get(pb::Kind::Job, "default", "nope").await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    let not_found = r#"method="Objects/Get",code="NotFound""#;
    assert_eq!(
        series_or_zero(addr, "berth_api_requests_total", not_found).await,
        1.0
    );

    // A path no service serves is answered UNIMPLEMENTED and counted, but
    // under one shared label: a client cannot grow the series at will.
    let channel = berth_proto::connect::endpoint(&cluster.addresses()[0])
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let unserved = raw
        .unary(
            tonic::Request::new(pb::GetRequest::default()),
            "/berth.v1.Nope/Nothing".parse().unwrap(),
            tonic_prost::ProstCodec::<pb::GetRequest, pb::Object>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unserved.code(), tonic::Code::Unimplemented);
    let text = scrape(addr).await.unwrap();
    assert_eq!(
        value(
            &text,
            "berth_api_requests_total",
            r#"method="other",code="Unimplemented""#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("Nope"), "{text}");

    // An open watch is counted while it lasts.
    let request = pb::WatchRequest {
        kind: pb::Kind::Job as i32,
        ..Default::default()
    };
    let stream = client.objects().watch(request).await.unwrap();
    wait_until(DEADLINE, "one watcher", || async {
        series_or_zero(addr, "berth_api_watchers", "").await == 1.0
    })
    .await;
    drop(stream);
    // The watch ends when its client is gone (seen at the next event).
    apply(&client, job("default", "wake", 1)).await.unwrap();
    wait_until(DEADLINE, "no watcher", || async {
        series_or_zero(addr, "berth_api_watchers", "").await == 0.0
    })
    .await;

    // A new member catches up from a snapshot: sent, and sized.
    let address = cluster.start_joiner(2, &[]);
    cluster.members[0]
        .ctl(&["cluster", "add-member", "2", &address])
        .ok();
    wait_until(DEADLINE, "a snapshot sent", || async {
        series_or_zero(addr, "berth_raft_snapshots_sent_total", "").await >= 1.0
    })
    .await;
    assert!(series_or_zero(addr, "berth_raft_snapshot_bytes_count", "").await >= 1.0);
    assert!(series_or_zero(addr, "berth_raft_snapshot_bytes_sum", "").await > 1000.0);
}

// ---- berth-scheduler and berth-agent ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_agent_series_follow_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(&dir.path().join("api"));
    let scheduler_metrics = format!("127.0.0.1:{}", free_port());
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let _nodes = Component::sim_nodes(&server.addr, "m", 3, &["--metrics-listen", &agent_metrics]);
    let _scheduler = Component::scheduler(&server.addr, &["--metrics-listen", &scheduler_metrics]);
    let client = server.client();

    // Before: the scheduler leads, nothing waits, the nodes heartbeat.
    wait_until(DEADLINE, "berth_scheduler_leader 1", || async {
        series(&scheduler_metrics, "berth_scheduler_leader", "").await == Some(1.0)
    })
    .await;
    wait_until(DEADLINE, "a successful heartbeat counted", || async {
        let ok = series(
            &agent_metrics,
            "berth_agent_heartbeats_total",
            "result=\"ok\"",
        );
        ok.await.is_some_and(|n| n > 0.0)
    })
    .await;
    let before = metrics_of(&scheduler_metrics).await;
    let binds_before = value(&before, "berth_scheduler_binds_total", "").unwrap();
    assert_eq!(
        value(&before, "berth_scheduler_pending_tasks", ""),
        Some(0.0)
    );
    let heartbeats_before = series(
        &agent_metrics,
        "berth_agent_heartbeats_total",
        "result=\"ok\"",
    )
    .await
    .unwrap();

    // A job of 12 tasks: each placed task is one accepted bind (a create
    // with its node set), and every one ends up running on the sim nodes.
    const TASKS: usize = 12;
    apply(&client, job("default", "metered", TASKS as u32))
        .await
        .unwrap();
    wait_until(DEADLINE, "12 running tasks", || async {
        running(&client, "metered").await == TASKS
    })
    .await;

    wait_until(DEADLINE, "binds_total to grow by 12", || async {
        series(&scheduler_metrics, "berth_scheduler_binds_total", "")
            .await
            .is_some_and(|n| n >= binds_before + TASKS as f64)
    })
    .await;
    wait_until(DEADLINE, "pending_tasks back to 0", || async {
        series(&scheduler_metrics, "berth_scheduler_pending_tasks", "").await == Some(0.0)
    })
    .await;
    let after = metrics_of(&scheduler_metrics).await;
    let get = |name| value(&after, name, "");
    assert_eq!(
        get("berth_scheduler_binds_total"),
        Some(binds_before + TASKS as f64),
        "one bind per task, no more:\n{after}"
    );
    assert_eq!(
        get("berth_scheduler_bind_conflicts_total"),
        Some(0.0),
        "{after}"
    );
    assert_eq!(
        get("berth_scheduler_preemptions_total"),
        Some(0.0),
        "{after}"
    );
    assert!(
        get("berth_scheduler_placement_seconds_count").is_some_and(|n| n > 0.0),
        "{after}"
    );
    assert_eq!(get("berth_scheduler_leader"), Some(1.0), "{after}");

    // The agent: its running tasks as running containers, and heartbeats
    // still counted.
    wait_until(DEADLINE, "12 running containers on the agent", || async {
        let running = series(
            &agent_metrics,
            "berth_agent_containers",
            "state=\"running\"",
        );
        running.await == Some(TASKS as f64)
    })
    .await;
    wait_until(DEADLINE, "more successful heartbeats", || async {
        let ok = series(
            &agent_metrics,
            "berth_agent_heartbeats_total",
            "result=\"ok\"",
        );
        ok.await.is_some_and(|n| n > heartbeats_before)
    })
    .await;
    assert_eq!(running(&client, "metered").await, TASKS);
}
