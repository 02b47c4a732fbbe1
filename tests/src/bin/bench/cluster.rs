//! `berth-bench cluster`: the replicated apiserver against etcd 3.4, same
//! machine, same client load, same durability (both fsync before answering).

use std::sync::Arc;
use std::time::Duration;

use berth_proto::pb;
use berth_tests::{Cluster, apply, job};
use prost::Message;

use crate::cpu::Usage;
use crate::etcd::{EtcdClient, EtcdCluster};
use crate::load::{self, Stats};

pub struct Options {
    pub replicas: u64,
    pub clients: usize,
    pub duration: Duration,
    pub failovers: usize,
    pub etcd: bool,
    pub tls: bool,
}

struct Row {
    name: String,
    writes: Stats,
    reads: Stats,
    /// CPU microseconds per write and per read.
    write_cpu: Usage,
    read_cpu: Usage,
    failovers: Vec<Duration>,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    // The value etcd stores is as large as the job Berth stores.
    let value_bytes = job("default", "bench-0-0", 1).encoded_len();
    println!(
        "{} replicas on this machine, {} clients, {:?} per measurement, writes of {value_bytes}-byte objects",
        options.replicas, options.clients, options.duration
    );
    let mut rows = vec![berth(&options).await?];
    if options.etcd {
        rows.push(etcd(&options, value_bytes).await?);
    }
    println!();
    println!(
        "{:<14} {:>10} {:>8} {:>8} {:>10} {:>8} {:>8}   failover (kill -9 leader → first acknowledged write)",
        "system", "writes/s", "p50 ms", "p99 ms", "reads/s", "p50 ms", "p99 ms"
    );
    for row in &rows {
        let failovers: Vec<String> = row
            .failovers
            .iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
            .collect();
        println!(
            "{:<14} {:>10.0} {:>8.2} {:>8.2} {:>10.0} {:>8.2} {:>8.2}   {}",
            row.name,
            row.writes.per_second(),
            row.writes.percentile_ms(0.5),
            row.writes.percentile_ms(0.99),
            row.reads.per_second(),
            row.reads.percentile_ms(0.5),
            row.reads.percentile_ms(0.99),
            failovers.join(", "),
        );
        if row.writes.errors + row.reads.errors > 0 {
            println!(
                "  ({} write and {} read errors)",
                row.writes.errors, row.reads.errors
            );
        }
    }
    println!();
    println!(
        "{:<14} {:>22} {:>22}",
        "CPU µs per op", "write: servers+client", "read: servers+client"
    );
    for row in &rows {
        println!(
            "{:<14} {:>13.0} + {:>6.0} {:>13.0} + {:>6.0}",
            row.name,
            row.write_cpu.servers,
            row.write_cpu.client,
            row.read_cpu.servers,
            row.read_cpu.client,
        );
    }
    if let [berth, etcd] = rows.as_slice() {
        println!(
            "Berth/etcd: writes {:.2}x (p99 {:.2} vs {:.2} ms), linearizable reads {:.2}x",
            berth.writes.per_second() / etcd.writes.per_second(),
            berth.writes.percentile_ms(0.99),
            etcd.writes.percentile_ms(0.99),
            berth.reads.per_second() / etcd.reads.per_second(),
        );
    }
    Ok(())
}

/// A CA for the run, with certificates for the members (on loopback) and
/// for this process, which then speaks TLS; the members' flags.
fn tls_for_the_run(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use berth_proto::pki::{Identity, Pki, Role};
    let pki = Pki::at(dir);
    pki.init()?;
    let hosts = ["127.0.0.1".to_string()];
    pki.issue_now(&Identity::new(Role::Apiserver, "apiserver").with_hosts(hosts))?;
    pki.issue_now(&Identity::new(Role::Admin, "bench"))?;
    berth_proto::connect::use_tls(berth_proto::connect::Tls::load(
        &pki.ca_cert(),
        Some((&pki.cert("bench"), &pki.key("bench"))),
    )?)?;
    let path = |p: std::path::PathBuf| p.display().to_string();
    Ok(vec![
        "--tls-ca".into(),
        path(pki.ca_cert()),
        "--tls-cert".into(),
        path(pki.cert("apiserver")),
        "--tls-key".into(),
        path(pki.key("apiserver")),
    ])
}

async fn berth(options: &Options) -> anyhow::Result<Row> {
    let pki_dir = tempfile::tempdir()?;
    let args = if options.tls {
        tls_for_the_run(pki_dir.path())?
    } else {
        Vec::new()
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start(options.replicas, &args);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let client = Arc::new(cluster.client());
    apply(&client, job("default", "bench-read", 1)).await?;

    let pids: Vec<u32> = cluster.members.iter().filter_map(|m| m.pid()).collect();
    let c = client.clone();
    let before = Usage::now(&pids);
    let writes = load::run(options.clients, options.duration, move |client, i| {
        let c = c.clone();
        async move {
            apply(&c, job("default", &format!("bench-{client}-{i}"), 1)).await?;
            Ok(())
        }
    })
    .await;
    let write_cpu = Usage::now(&pids).per_op_since(&before, writes.ops);
    let c = client.clone();
    let before = Usage::now(&pids);
    let reads = load::run(options.clients, options.duration, move |_, _| {
        let c = c.clone();
        async move {
            c.call(|mut k| async move {
                k.get(pb::GetRequest {
                    kind: pb::Kind::Job as i32,
                    namespace: "default".into(),
                    name: "bench-read".into(),
                    stale: false,
                })
                .await
            })
            .await?;
            Ok(())
        }
    })
    .await;
    let read_cpu = Usage::now(&pids).per_op_since(&before, reads.ops);

    let mut failovers = Vec::new();
    for round in 0..options.failovers {
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let c = client.clone();
        let member = cluster.member(leader);
        let took = load::failover(
            8,
            || member.kill9(),
            move |client, i| {
                let c = c.clone();
                async move {
                    apply(
                        &c,
                        job("default", &format!("failover-{round}-{client}-{i}"), 1),
                    )
                    .await?;
                    Ok(())
                }
            },
        )
        .await;
        failovers.push(took);
        cluster.member(leader).restart();
    }
    Ok(Row {
        name: format!(
            "berth ({}){}",
            options.replicas,
            if options.tls { " mTLS" } else { "" }
        ),
        writes,
        reads,
        write_cpu,
        read_cpu,
        failovers,
    })
}

async fn etcd(options: &Options, value_bytes: usize) -> anyhow::Result<Row> {
    // The election timeout of Berth's defaults (400 ms); etcd wants a heartbeat
    // of at most a fifth of it.
    let mut cluster = EtcdCluster::start(options.replicas as usize, 80, 400)?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let client = Arc::new(EtcdClient::new(&cluster.endpoints())?);
    let value = vec![b'x'; value_bytes];
    client.put("bench-read".into(), value.clone()).await?;

    let pids = cluster.pids();
    let (c, v) = (client.clone(), value.clone());
    let before = Usage::now(&pids);
    let writes = load::run(options.clients, options.duration, move |client, i| {
        let (c, v) = (c.clone(), v.clone());
        async move { c.put(format!("bench/{client}/{i}"), v).await }
    })
    .await;
    let write_cpu = Usage::now(&pids).per_op_since(&before, writes.ops);
    let c = client.clone();
    let before = Usage::now(&pids);
    let reads = load::run(options.clients, options.duration, move |_, _| {
        let c = c.clone();
        async move { c.get("bench-read").await }
    })
    .await;
    let read_cpu = Usage::now(&pids).per_op_since(&before, reads.ops);

    let mut failovers = Vec::new();
    for round in 0..options.failovers {
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
        let (c, v) = (client.clone(), value.clone());
        let took = load::failover(
            8,
            || cluster.kill9(leader),
            move |client, i| {
                let (c, v) = (c.clone(), v.clone());
                async move { c.put(format!("failover/{round}/{client}/{i}"), v).await }
            },
        )
        .await;
        failovers.push(took);
        cluster.restart(leader)?;
    }
    Ok(Row {
        name: format!("etcd 3.4 ({})", options.replicas),
        writes,
        reads,
        write_cpu,
        read_cpu,
        failovers,
    })
}
