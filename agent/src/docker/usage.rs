//! Usage: every interval, one stats sample per running container; CPU is
//! the rate between two samples of the same container (a one-shot sample
//! carries no previous reading), memory the working set (usage minus the
//! page cache the kernel can drop). Heartbeats carry the latest table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb;
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::runtime::{ContainerState, Engine};

/// Samples taken at once.
const CONCURRENT_SAMPLES: usize = 8;

/// The latest usage of each running task: (namespace, name) → usage.
#[derive(Debug, Default, Clone)]
pub struct UsageTable {
    pub tasks: HashMap<(String, String), pb::Usage>,
}

impl UsageTable {
    /// The node's usage: the sum over its tasks.
    pub fn total(&self) -> pb::Usage {
        self.tasks
            .values()
            .fold(pb::Usage::default(), |sum, u| pb::Usage {
                cpu_millis: sum.cpu_millis + u.cpu_millis,
                memory_bytes: sum.memory_bytes + u.memory_bytes,
            })
    }
}

pub type SharedUsage = Arc<Mutex<UsageTable>>;

/// Samples every `interval` until shutdown, replacing the shared table.
pub async fn sample_forever(
    engine: Engine,
    interval: Duration,
    table: SharedUsage,
    mut shutdown: watch::Receiver<bool>,
) {
    // Previous reading per container: CPU ns and when it was taken.
    let mut previous: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let running = match engine.list().await {
            Ok(all) => all
                .into_iter()
                .filter(|c| c.state == ContainerState::Running)
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers for usage");
                continue;
            }
        };
        let samples: Vec<_> = futures::stream::iter(running)
            .map(|c| {
                let engine = engine.clone();
                async move {
                    let sample = engine.sample(&c.id).await;
                    (c, sample, Instant::now())
                }
            })
            .buffer_unordered(CONCURRENT_SAMPLES)
            .collect()
            .await;
        let mut table_now = UsageTable::default();
        let mut seen = HashMap::new();
        for (container, sample, at) in samples {
            let sample = match sample {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "no usage sample");
                    continue;
                }
            };
            let cpu_millis = match previous.get(&container.id) {
                Some((cpu_before, before)) if at > *before => {
                    let used_ns = sample.cpu_total_ns.saturating_sub(*cpu_before) as f64;
                    let wall_ns = (at - *before).as_nanos() as f64;
                    (used_ns / wall_ns * 1000.0).round() as i64
                }
                _ => 0,
            };
            seen.insert(container.id.clone(), (sample.cpu_total_ns, at));
            table_now.tasks.insert(
                (container.namespace, container.task),
                pb::Usage {
                    cpu_millis,
                    memory_bytes: sample.memory_bytes as i64,
                },
            );
        }
        previous = seen;
        *table.lock().unwrap_or_else(|e| e.into_inner()) = table_now;
    }
}
