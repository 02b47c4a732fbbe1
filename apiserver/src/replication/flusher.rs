//! The leader's log flushes, on a thread of their own.
//!
//! A leader sends new entries to its followers before it writes them, and
//! needs its own copy durable only to count itself in the quorum that
//! commits them. Flushing on the raft loop blocked the loop for every fsync,
//! most of a turn: proposals and the followers' acknowledgements waited in
//! its queue meanwhile. The loop now hands the flush over — after
//! raft-rs's `advance_append_async` — and goes on; it learns with
//! [`Input::Persisted`] that the Readies up to a number are durable, for
//! `on_persist_ready`, which lets raft count the leader's own copy. Requests
//! queued while a flush runs share the next one (group commit).
//!
//! Followers keep flushing on the raft loop: what they send after a Ready
//! (their acknowledgements) must wait for the flush anyway.

use std::sync::mpsc;

use super::Input;
use crate::storage::Storage;

pub struct Flusher {
    requests: mpsc::Sender<u64>,
    /// The highest Ready number handed over, and the highest reported
    /// durable (or covered by a flush of the raft loop's own).
    requested: u64,
    persisted: u64,
}

impl Flusher {
    pub(crate) fn start(storage: Storage, inputs: mpsc::Sender<Input>) -> std::io::Result<Flusher> {
        let (requests, queue) = mpsc::channel::<u64>();
        std::thread::Builder::new()
            .name("berth-flush".into())
            .spawn(move || {
                while let Ok(mut number) = queue.recv() {
                    // A flush makes everything written so far durable: it
                    // answers every request queued before it started.
                    while let Ok(later) = queue.try_recv() {
                        number = number.max(later);
                    }
                    let result = storage.flush();
                    if inputs.send(Input::Persisted { number, result }).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Flusher {
            requests,
            requested: 0,
            persisted: 0,
        })
    }

    /// Asks for what is written so far to be made durable, for the Ready
    /// numbered `number`.
    pub fn request(&mut self, number: u64) {
        self.requested = self.requested.max(number);
        let _ = self.requests.send(number);
    }

    /// Whether a flush handed over has not been reported yet.
    pub fn pending(&self) -> bool {
        self.requested > self.persisted
    }

    /// Notes that the Readies up to `number` are durable.
    pub fn persisted(&mut self, number: u64) {
        self.persisted = self.persisted.max(number);
    }

    /// Notes that the raft loop flushed everything itself.
    pub fn covered(&mut self) {
        self.persisted = self.requested;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_request_is_reported_durable_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let (inputs, reports) = mpsc::channel();
        let mut flusher = Flusher::start(storage, inputs).unwrap();
        assert!(!flusher.pending());
        for number in 1..=50 {
            flusher.request(number);
        }
        assert!(flusher.pending());
        // Requests queued behind a flush share the next one: fewer reports
        // than requests, each for a higher number, the last for 50.
        let mut last = 0;
        while last < 50 {
            match reports.recv_timeout(Duration::from_secs(10)) {
                Ok(Input::Persisted { number, result }) => {
                    result.unwrap();
                    assert!(number > last, "{number} reported after {last}");
                    last = number;
                    flusher.persisted(number);
                }
                Ok(_) => panic!("only Persisted is sent"),
                Err(e) => panic!("no report for request 50 within 10 s: {e}"),
            }
        }
        assert!(!flusher.pending());
    }

    #[test]
    fn a_flush_of_the_raft_loop_covers_what_was_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (inputs, _reports) = mpsc::channel();
        let mut flusher = Flusher::start(Storage::open(dir.path()).unwrap(), inputs).unwrap();
        flusher.request(7);
        flusher.covered();
        assert!(!flusher.pending());
        // A late report of an older number changes nothing.
        flusher.persisted(3);
        assert!(!flusher.pending());
    }
}
