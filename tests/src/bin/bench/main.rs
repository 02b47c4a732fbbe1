//! `berth-bench`: measures Berth on this machine.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/berth-bench writes --clients 1,64 --duration 10s   # one member
//! target/release/berth-bench memory --tasks 100000
//! target/release/berth-bench cluster --clients 64 --etcd            # 3 members vs etcd 3.4
//! target/release/berth-bench cluster --clients 64 --tls             # the same with mutual TLS
//! target/release/berth-bench trace openb                            # scheduler, per policy
//! target/release/berth-bench trace alibaba2017 --tasks 100000
//! target/release/berth-bench synthetic --nodes 10000 --tasks 100000
//! target/release/berth-bench containers --replicas 50              # Docker agent vs Swarm
//! ```
//!
//! Each run starts its own `berth-apiserver` members (the binary next to this
//! one) on fresh temporary data dirs, unless `--server` names a running one.

#![allow(clippy::unwrap_used)]

mod catch_up;
mod cluster;
mod containers;
mod cpu;
mod etcd;
mod load;
mod pack;
mod replay;
mod workload;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::{ApiServer, apply, job};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-bench",
    about = "Measure Berth's apiserver on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Throughput and latency of single-object writes (each a create, durable).
    Writes {
        /// Numbers of concurrent clients to measure, comma-separated.
        #[arg(long, default_value = "1,64", value_delimiter = ',')]
        clients: Vec<usize>,
        /// How long each measurement runs.
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        duration: Duration,
        /// A running server to measure instead of starting one.
        #[arg(long)]
        server: Option<String>,
    },
    /// A replicated apiserver under load: write and linearizable read
    /// throughput and latency, and failover time; with --etcd, the same
    /// against etcd 3.4 in the same run.
    Cluster {
        #[arg(long, default_value_t = 3)]
        replicas: u64,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Clients sharing one gRPC connection, for both systems alike
        /// (client i uses connection i mod connections); all of them by
        /// default. etcd's performance guide measures with ten
        /// (`--conns=100 --clients=1000`).
        #[arg(long)]
        clients_per_connection: Option<usize>,
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        duration: Duration,
        /// Leader kills to time.
        #[arg(long, default_value_t = 3)]
        failovers: usize,
        /// Also measure etcd 3.4 (Debian's etcd-server) with the same load.
        #[arg(long)]
        etcd: bool,
        /// Mutual TLS between the members and with the clients (a CA made
        /// for the run); compare with a run without.
        #[arg(long, conflicts_with = "etcd")]
        tls: bool,
    },
    /// A follower down for many writes catches up from a streamed snapshot.
    CatchUp {
        #[arg(long, default_value_t = 100_000)]
        writes: u64,
        #[arg(long, default_value_t = 64)]
        clients: u64,
    },
    /// Replays a production trace through apiserver members, the scheduler
    /// and simulated nodes, once per scoring policy: tasks bound per second
    /// end to end, tasks left pending, and how full the cluster was when the
    /// first task no longer fit.
    Trace {
        /// openb (Alibaba GPU cluster 2023) or alibaba2017 (batch).
        #[arg(value_parser = ["openb", "alibaba2017"])]
        trace: String,
        /// Tasks taken from the alibaba2017 trace (in creation order).
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Where the traces are.
        #[arg(long, default_value = "../shared/traces")]
        traces: std::path::PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Placement alone, in this process (no apiserver): how each policy
    /// packs a workload, and what placement costs.
    Pack {
        /// openb, alibaba2017 or synthetic.
        #[arg(value_parser = ["openb", "alibaba2017", "synthetic"])]
        workload: String,
        /// Tasks (alibaba2017 and synthetic).
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// Nodes (synthetic).
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        #[arg(long, default_value = "../shared/traces")]
        traces: std::path::PathBuf,
        #[arg(long, default_value = "binpack,spread,firstfit", value_delimiter = ',')]
        policies: Vec<String>,
        #[arg(long, default_value_t = 0)]
        sample: usize,
        /// Tasks arriving between two placement rounds.
        #[arg(long, default_value_t = 500)]
        arrival: usize,
        /// Place every task on its own (to measure what equivalence classes
        /// save).
        #[arg(long)]
        no_classes: bool,
    },
    /// The same with made-up jobs on uniform nodes.
    Synthetic {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Containers through the Docker agent versus Docker Swarm mode: time
    /// until N replicas of the test image run, per-replica start latency,
    /// and the agent's resident memory.
    Containers {
        #[arg(long, default_value_t = 50)]
        replicas: u32,
        /// Measure Berth only.
        #[arg(long)]
        skip_swarm: bool,
    },
    /// Resident memory of an apiserver holding many task objects.
    Memory {
        #[arg(long, default_value_t = 100_000)]
        tasks: u32,
        /// Concurrent writers used to load the tasks.
        #[arg(long, default_value_t = 64)]
        clients: u32,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scoring policies to compare, comma-separated.
    #[arg(long, default_value = "binpack,spread,firstfit", value_delimiter = ',')]
    policies: Vec<String>,
    /// Feasible nodes the scheduler examines per class (0: all).
    #[arg(long, default_value_t = 0)]
    sample: usize,
    /// apiserver members.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Extra flags for berth-scheduler (e.g. --scheduler-arg=--batch=500).
    #[arg(long = "scheduler-arg", allow_hyphen_values = true)]
    scheduler_args: Vec<String>,
}

impl RunArgs {
    fn options(&self) -> replay::Options {
        replay::Options {
            replicas: self.replicas,
            policy: String::new(),
            sample: self.sample,
            scheduler_args: self.scheduler_args.clone(),
        }
    }
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    s.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 10s): {e}"))
}

fn main() -> anyhow::Result<()> {
    berth_proto::process::server_runtime()?.block_on(bench(Cli::parse().command))
}

async fn bench(command: Bench) -> anyhow::Result<()> {
    match command {
        Bench::Writes {
            clients,
            duration,
            server,
        } => writes(&clients, duration, server).await,
        Bench::Memory { tasks, clients } => memory(tasks, clients).await,
        Bench::Containers {
            replicas,
            skip_swarm,
        } => {
            containers::run(containers::Options {
                replicas,
                skip_swarm,
            })
            .await
        }
        Bench::Trace {
            trace,
            tasks,
            traces,
            run,
        } => {
            let workload = match trace.as_str() {
                "openb" => workload::openb(&traces)?,
                _ => workload::alibaba2017(&traces, tasks)?,
            };
            replay::compare(&workload, &run.policies, run.options()).await
        }
        Bench::Pack {
            workload,
            tasks,
            nodes,
            traces,
            policies,
            sample,
            arrival,
            no_classes,
        } => {
            let workload = match workload.as_str() {
                "openb" => workload::openb(&traces)?,
                "alibaba2017" => workload::alibaba2017(&traces, tasks)?,
                _ => workload::synthetic(nodes, tasks),
            };
            let tricks = pack::Tricks {
                sample,
                classes: !no_classes,
            };
            pack::compare(&workload, &policies, tricks, arrival)
        }
        Bench::Synthetic { nodes, tasks, run } => {
            let workload = workload::synthetic(nodes, tasks);
            replay::compare(&workload, &run.policies, run.options()).await
        }
        Bench::CatchUp { writes, clients } => catch_up::run(writes, clients).await,
        Bench::Cluster {
            replicas,
            clients,
            clients_per_connection,
            duration,
            failovers,
            etcd,
            tls,
        } => {
            cluster::run(cluster::Options {
                replicas,
                clients,
                connections: clients_per_connection
                    .map_or(1, |n| clients.div_ceil(n.max(1)))
                    .max(1),
                duration,
                failovers,
                etcd,
                tls,
            })
            .await
        }
    }
}

async fn writes(
    clients: &[usize],
    duration: Duration,
    server: Option<String>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, address) = match server {
        Some(address) => (None, address),
        None => {
            let s = ApiServer::start(dir.path());
            let address = s.addr.clone();
            (Some(s), address)
        }
    };
    println!(
        "single-object writes (create a job; acknowledged = fsync'ed), {duration:?} per run, server {address}"
    );
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "clients", "writes", "writes/s", "p50 ms", "p99 ms", "p99.9 ms"
    );
    for (run, &n) in clients.iter().enumerate() {
        let client = Arc::new(BerthClient::from_list(&address)?);
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut workers = Vec::new();
        for c in 0..n {
            let client = client.clone();
            let stop = stop.clone();
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let object = job("default", &format!("bench-{run}-{c}-{i}"), 1);
                    let t = Instant::now();
                    apply(&client, object).await.context("write failed")?;
                    latencies.push(t.elapsed());
                    i += 1;
                }
                anyhow::Ok(latencies)
            }));
        }
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        for w in workers {
            latencies.extend(w.await??);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{:>8} {:>10} {:>12.0} {:>10.2} {:>10.2} {:>10.2}",
            n,
            latencies.len(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(0.999)
        );
    }
    Ok(())
}

async fn memory(tasks: u32, clients: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ApiServer::start(dir.path());
    let pid = server.pid().context("no server process")?;
    let client = Arc::new(server.client());
    println!("apiserver pid {pid}: RSS empty {}", rss(pid)?);

    apply(&client, job("default", "bench", tasks)).await?;
    let template = match job("default", "bench", tasks).kind {
        Some(pb::object::Kind::Job(j)) => j.spec.and_then(|s| s.template),
        _ => None,
    };
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..clients {
        let client = client.clone();
        let template = template.clone();
        writers.push(tokio::spawn(async move {
            let mut index = w;
            while index < tasks {
                let task = pb::Task {
                    metadata: Some(pb::ObjectMeta {
                        name: format!("bench-{index}"),
                        namespace: "default".into(),
                        labels: [("job".to_string(), "bench".to_string())].into(),
                        ..Default::default()
                    }),
                    spec: Some(pb::TaskSpec {
                        job: "bench".into(),
                        index,
                        tier: pb::Tier::Batch as i32,
                        template: template.clone(),
                        ..Default::default()
                    }),
                    status: Some(pb::TaskStatus {
                        phase: pb::TaskPhase::Pending as i32,
                        ..Default::default()
                    }),
                };
                apply(&client, task.into()).await?;
                index += clients;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let load = started.elapsed();
    let list_started = Instant::now();
    let listed = client
        .call(|mut c| async move {
            c.list(pb::ListRequest {
                kind: pb::Kind::Task as i32,
                ..Default::default()
            })
            .await
        })
        .await?
        .into_inner()
        .objects
        .len();
    let list = list_started.elapsed();
    if listed != tasks as usize {
        bail!("listed {listed} tasks, expected {tasks}");
    }
    println!(
        "{tasks} tasks written in {:.1}s ({:.0}/s, {clients} clients)",
        load.as_secs_f64(),
        f64::from(tasks) / load.as_secs_f64()
    );
    println!(
        "RSS holding {tasks} tasks: {}   (peak {})",
        rss(pid)?,
        peak(pid)?
    );
    println!(
        "List of all {tasks} tasks: {:.0} ms",
        list.as_secs_f64() * 1000.0
    );
    println!("data dir on disk: {} MiB", du(dir.path()) / (1 << 20));
    Ok(())
}

fn status_field(pid: u32, field: &str) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("unreadable")?;
    Ok(format!("{:.1} MiB", kib as f64 / 1024.0))
}

fn rss(pid: u32) -> anyhow::Result<String> {
    status_field(pid, "VmRSS:")
}

fn peak(pid: u32) -> anyhow::Result<String> {
    status_field(pid, "VmHWM:")
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for entry in entries.flatten() {
                match entry.metadata() {
                    Ok(m) if m.is_dir() => stack.push(entry.path()),
                    Ok(m) => total += m.len(),
                    Err(_) => {}
                }
            }
        }
    }
    total
}
