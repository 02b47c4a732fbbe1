//! A closed-loop load generator: N clients each repeat one operation as fast
//! as answers come back, for a fixed time; latencies are recorded per call.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Throughput and latency of one run.
pub struct Stats {
    pub ops: usize,
    pub errors: usize,
    pub elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    /// Nothing measured yet.
    pub fn empty() -> Stats {
        Stats {
            ops: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        }
    }

    /// Adds a run measured after this one: throughput over both, latencies
    /// of both.
    pub fn merge(&mut self, other: Stats) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
    }

    pub fn per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-quantile latency in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// Runs `op(client, i)` from `clients` concurrent clients for `duration`.
pub async fn run<F, Fut>(clients: usize, duration: Duration, op: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for client in 0..clients {
        let op = op.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match op(client, i).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        if let Ok((l, e)) = w.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Stats {
        ops: latencies.len(),
        errors,
        elapsed,
        latencies,
    }
}

/// Time from `killed` until the first success of a write issued after it,
/// with `clients` writers running meanwhile.
pub async fn failover<F, Fut>(clients: usize, kill: impl FnOnce(), op: F) -> Duration
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    // Writers run before the kill so that the cluster is under load.
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let killed_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let mut workers = Vec::new();
    for client in 0..clients {
        let op = op.clone();
        let stop = stop.clone();
        let killed_at = killed_at.clone();
        let first_tx = first_tx.clone();
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let issued = Instant::now();
                let ok = op(client, 1_000_000_000 + i).await.is_ok();
                i += 1;
                if ok && killed_at.get().is_some_and(|k| issued >= *k) {
                    let _ = first_tx.send(Instant::now());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at = Instant::now();
    let _ = killed_at.set(at);
    kill();
    let first = first_rx.recv().await.unwrap_or(at);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    first.duration_since(at)
}
