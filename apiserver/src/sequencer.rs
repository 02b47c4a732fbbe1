//! The write path of a single replica: sequence commands, apply, fsync, then
//! acknowledge — with group commit.
//!
//! Proposals queue on a channel. One thread takes everything queued (up to a
//! batch limit), gives each command the next log index and applies it to the
//! state machine, makes the whole batch durable with one fsync, publishes the
//! new snapshot and records to readers and watchers, and only then answers the
//! proposers. So an acknowledged write is on disk, a read never sees a write
//! that is not, and many concurrent writers share one fsync.
//!
//! This is the seam where Raft goes: a replicated log replaces the local
//! index counter, and the state machine applies committed entries the same way.

use std::sync::Arc;
use std::thread;

use berth_proto::internal::Command;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::state_machine::{Applied, StateMachine};
use crate::watch::WatchHub;

/// Proposals waiting for the writer; beyond this, proposers wait (backpressure).
const QUEUE_DEPTH: usize = 8192;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Applied, ApiError>>,
}

/// Hands commands to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Sequences, applies and persists `command`; resolves once it is durable.
    pub async fn propose(&self, command: Command) -> Result<Applied, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        answer.await.map_err(|_| ApiError::ShuttingDown)?
    }
}

pub struct Settings {
    /// Most commands applied per fsync.
    pub max_batch: usize,
    /// History revisions kept for watches.
    pub history_retention: u64,
}

/// Starts the writer thread. It stops when every [`Proposer`] is dropped,
/// after answering what was queued.
pub fn spawn(
    machine: StateMachine,
    hub: Arc<WatchHub>,
    settings: Settings,
) -> std::io::Result<(Proposer, thread::JoinHandle<()>)> {
    let (queue, proposals) = mpsc::channel(QUEUE_DEPTH);
    let writer = Writer {
        machine,
        hub,
        settings,
        failed: None,
    };
    let handle = thread::Builder::new()
        .name("berth-writer".into())
        .spawn(move || writer.run(proposals))?;
    Ok((Proposer { queue }, handle))
}

struct Writer {
    machine: StateMachine,
    hub: Arc<WatchHub>,
    settings: Settings,
    /// Set when storage failed: memory and disk may disagree from then on, so
    /// every later write is refused until a restart reloads from disk.
    failed: Option<String>,
}

impl Writer {
    fn run(mut self, mut proposals: mpsc::Receiver<Proposal>) {
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        while let Some(first) = proposals.blocking_recv() {
            batch.push(first);
            while batch.len() < self.settings.max_batch {
                match proposals.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.write_batch(&mut batch);
        }
        tracing::debug!("writer stopped: no proposer left");
    }

    fn write_batch(&mut self, batch: &mut Vec<Proposal>) {
        if let Some(reason) = &self.failed {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(ApiError::Storage(reason.clone())));
            }
            return;
        }
        let started = std::time::Instant::now();
        let mut results = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        for p in batch.iter() {
            let index = self.machine.revision() + 1;
            let result = self.machine.apply(index, &p.command);
            if let Ok(Applied {
                record: Some(record),
                ..
            }) = &result
            {
                records.push(record.clone());
            }
            results.push(result);
        }
        // Answers may depend on earlier writes of this batch (an "unchanged"
        // or "already exists"), so every answer waits for the one fsync.
        let applied = started.elapsed();
        if let Err(e) = self.machine.persist() {
            self.failed = Some(e.to_string());
        }
        tracing::debug!(
            batch = batch.len(),
            apply_us = applied.as_micros() as u64,
            flush_us = (started.elapsed() - applied).as_micros() as u64,
            "batch written"
        );
        if let Some(reason) = &self.failed {
            tracing::error!(%reason, "storage failed; refusing writes until restarted");
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(ApiError::Storage(reason.clone())));
            }
            return;
        }
        self.hub.publish(self.machine.snapshot(), records);
        for (p, result) in batch.drain(..).zip(results) {
            let _ = p.reply.send(result);
        }
        self.compact_history();
    }

    /// Keeps `history_retention` revisions of history, deleting older ones in
    /// bulk once a tenth more has accumulated.
    fn compact_history(&mut self) {
        let retention = self.settings.history_retention;
        let revision = self.machine.revision();
        let compacted = self.hub.compacted();
        if revision.saturating_sub(compacted) <= retention + retention / 10 {
            return;
        }
        let upto = revision - retention;
        self.hub.begin_compaction(upto);
        if let Err(e) = self.machine.storage().compact_history(upto) {
            // Not fatal: the history stays longer than asked.
            tracing::warn!(error = %e, upto, "history compaction failed");
        }
    }
}
