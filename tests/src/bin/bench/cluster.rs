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
    pub connections: usize,
    pub duration: Duration,
    pub failovers: usize,
    pub etcd: bool,
    pub tls: bool,
}

/// Rounds of alternating measurements when comparing with etcd.
const ROUNDS: u32 = 4;

/// One system's figures, summed over rounds.
struct Row {
    name: String,
    writes: Phase,
    reads: Phase,
    failovers: Vec<Duration>,
}

impl Row {
    fn new(name: String) -> Row {
        Row {
            name,
            writes: Phase::default(),
            reads: Phase::default(),
            failovers: Vec::new(),
        }
    }
}

/// Throughput, latency and CPU of one kind of operation, over rounds.
struct Phase {
    stats: Stats,
    /// CPU seconds of the servers and of this process meanwhile.
    cpu: Usage,
}

impl Default for Phase {
    fn default() -> Phase {
        Phase {
            stats: Stats::empty(),
            cpu: Usage::default(),
        }
    }
}

impl Phase {
    /// Runs `op` from `clients` clients for `duration` (see [`load::run`])
    /// and adds what it measured, with the CPU the servers (`pids`) and this
    /// process used meanwhile.
    async fn measure<F, Fut>(&mut self, pids: &[u32], clients: usize, duration: Duration, op: F)
    where
        F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let before = Usage::now(pids);
        let run = load::run(clients, duration, op).await;
        self.cpu.add(Usage::now(pids).since(&before));
        self.stats.merge(run);
    }

    fn cpu_per_op(&self) -> Usage {
        self.cpu.per_op(self.stats.ops)
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    // The value etcd stores is as large as the job Berth stores.
    let value_bytes = job("default", "bench-0-0", 1).encoded_len();
    println!(
        "{} replicas on this machine, {} clients over {} connections, {:?} per measurement, writes of {value_bytes}-byte objects",
        options.replicas, options.clients, options.connections, options.duration
    );
    let mut berth = Berth::start(&options).await?;
    let mut etcd = match options.etcd {
        true => Some(Etcd::start(&options, value_bytes).await?),
        false => None,
    };
    // Both systems run side by side and are measured in alternating rounds:
    // the speed of a shared virtual machine drifts by tens of percent within
    // a minute, and a ratio of two measurements taken one after the other
    // would mostly measure that drift.
    let rounds = if etcd.is_some() { ROUNDS } else { 1 };
    let slice = options.duration / rounds;
    for round in 0..rounds {
        berth.writes(options.clients, slice, round).await;
        if let Some(etcd) = &mut etcd {
            etcd.writes(options.clients, slice, round).await;
        }
    }
    for _ in 0..rounds {
        berth.reads(options.clients, slice).await;
        if let Some(etcd) = &mut etcd {
            etcd.reads(options.clients, slice).await;
        }
    }
    berth.failovers(options.failovers).await;
    if let Some(etcd) = &mut etcd {
        etcd.failovers(options.failovers).await?;
    }
    let mut rows = vec![berth.row];
    if let Some(etcd) = etcd {
        rows.push(etcd.row);
    }
    println!();
    if rounds > 1 {
        println!(
            "({rounds} alternating rounds of {slice:?} each for writes and for reads; failovers one system after the other)"
        );
    }
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
            row.writes.stats.per_second(),
            row.writes.stats.percentile_ms(0.5),
            row.writes.stats.percentile_ms(0.99),
            row.reads.stats.per_second(),
            row.reads.stats.percentile_ms(0.5),
            row.reads.stats.percentile_ms(0.99),
            failovers.join(", "),
        );
        if row.writes.stats.errors + row.reads.stats.errors > 0 {
            println!(
                "  ({} write and {} read errors)",
                row.writes.stats.errors, row.reads.stats.errors
            );
        }
    }
    println!();
    println!(
        "{:<14} {:>22} {:>22}",
        "CPU µs per op", "write: servers+client", "read: servers+client"
    );
    for row in &rows {
        let (write, read) = (row.writes.cpu_per_op(), row.reads.cpu_per_op());
        println!(
            "{:<14} {:>13.0} + {:>6.0} {:>13.0} + {:>6.0}",
            row.name, write.servers, write.client, read.servers, read.client,
        );
    }
    if let [berth, etcd] = rows.as_slice() {
        println!(
            "Berth/etcd: writes {:.2}x (p99 {:.2} vs {:.2} ms), linearizable reads {:.2}x",
            berth.writes.stats.per_second() / etcd.writes.stats.per_second(),
            berth.writes.stats.percentile_ms(0.99),
            etcd.writes.stats.percentile_ms(0.99),
            berth.reads.stats.per_second() / etcd.reads.stats.per_second(),
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

struct Berth {
    cluster: Cluster,
    /// The clients of the load, one per connection.
    connections: Arc<Vec<berth_proto::connect::BerthClient>>,
    pids: Vec<u32>,
    row: Row,
    _pki_dir: tempfile::TempDir,
}

/// The connection client `client` of the load uses.
fn connection<T>(connections: &[T], client: usize) -> &T {
    &connections[client % connections.len()]
}

impl Berth {
    async fn start(options: &Options) -> anyhow::Result<Berth> {
        let pki_dir = tempfile::tempdir()?;
        let args = if options.tls {
            tls_for_the_run(pki_dir.path())?
        } else {
            Vec::new()
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cluster = Cluster::start(options.replicas, &args);
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        let connections: Arc<Vec<_>> =
            Arc::new((0..options.connections).map(|_| cluster.client()).collect());
        apply(connection(&connections, 0), job("default", "bench-read", 1)).await?;
        let pids = cluster.members.iter().filter_map(|m| m.pid()).collect();
        let name = format!(
            "berth ({}){}",
            options.replicas,
            if options.tls { " mTLS" } else { "" }
        );
        Ok(Berth {
            cluster,
            connections,
            pids,
            row: Row::new(name),
            _pki_dir: pki_dir,
        })
    }

    async fn writes(&mut self, clients: usize, duration: Duration, round: u32) {
        let connections = self.connections.clone();
        self.row
            .writes
            .measure(&self.pids, clients, duration, move |client, i| {
                let connections = connections.clone();
                async move {
                    let c = connection(&connections, client);
                    let name = format!("bench-{round}-{client}-{i}");
                    apply(c, job("default", &name, 1)).await?;
                    Ok(())
                }
            })
            .await;
    }

    async fn reads(&mut self, clients: usize, duration: Duration) {
        let connections = self.connections.clone();
        self.row
            .reads
            .measure(&self.pids, clients, duration, move |client, _| {
                let connections = connections.clone();
                async move {
                    let c = connection(&connections, client);
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
    }

    async fn failovers(&mut self, count: usize) {
        for round in 0..count {
            let leader = self.cluster.wait_for_leader(Duration::from_secs(20)).await;
            let connections = self.connections.clone();
            let member = self.cluster.member(leader);
            let took = load::failover(
                8,
                || member.kill9(),
                move |client, i| {
                    let connections = connections.clone();
                    async move {
                        let name = format!("failover-{round}-{client}-{i}");
                        apply(connection(&connections, client), job("default", &name, 1)).await?;
                        Ok(())
                    }
                },
            )
            .await;
            self.row.failovers.push(took);
            self.cluster.member(leader).restart();
        }
    }
}

struct Etcd {
    cluster: EtcdCluster,
    /// The clients of the load, one per connection.
    connections: Arc<Vec<EtcdClient>>,
    value: Vec<u8>,
    row: Row,
}

impl Etcd {
    async fn start(options: &Options, value_bytes: usize) -> anyhow::Result<Etcd> {
        // The election timeout of Berth's defaults (400 ms); etcd wants a
        // heartbeat of at most a fifth of it.
        let cluster = EtcdCluster::start(options.replicas as usize, 80, 400)?;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
        let connections = (0..options.connections)
            .map(|_| Ok(EtcdClient::new(&cluster.endpoints())?.starting_at(leader)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let value = vec![b'x'; value_bytes];
        connection(&connections, 0)
            .put("bench-read".into(), value.clone())
            .await?;
        Ok(Etcd {
            cluster,
            connections: Arc::new(connections),
            value,
            row: Row::new(format!("etcd 3.4 ({})", options.replicas)),
        })
    }

    async fn writes(&mut self, clients: usize, duration: Duration, round: u32) {
        let (connections, v) = (self.connections.clone(), self.value.clone());
        self.row
            .writes
            .measure(&self.cluster.pids(), clients, duration, move |client, i| {
                let (connections, v) = (connections.clone(), v.clone());
                async move {
                    let c = connection(&connections, client);
                    c.put(format!("bench/{round}/{client}/{i}"), v).await
                }
            })
            .await;
    }

    async fn reads(&mut self, clients: usize, duration: Duration) {
        let connections = self.connections.clone();
        self.row
            .reads
            .measure(&self.cluster.pids(), clients, duration, move |client, _| {
                let connections = connections.clone();
                async move {
                    let c = connection(&connections, client);
                    c.get("bench-read").await
                }
            })
            .await;
    }

    async fn failovers(&mut self, count: usize) -> anyhow::Result<()> {
        for round in 0..count {
            let leader = self
                .cluster
                .wait_for_leader(Duration::from_secs(30))
                .await?;
            let (connections, v) = (self.connections.clone(), self.value.clone());
            let cluster = &mut self.cluster;
            let took = load::failover(
                8,
                || cluster.kill9(leader),
                move |client, i| {
                    let (connections, v) = (connections.clone(), v.clone());
                    async move {
                        let c = connection(&connections, client);
                        c.put(format!("failover/{round}/{client}/{i}"), v).await
                    }
                },
            )
            .await;
            self.row.failovers.push(took);
            self.cluster.restart(leader)?;
        }
        Ok(())
    }
}
