//! The apiserver's Prometheus series, served on `--metrics-listen`.
//!
//! - `berth_api_requests_total{method,code}`, `berth_api_request_seconds{method}`:
//!   every gRPC call, counted by the server's layer (`berth_proto::metrics`;
//!   paths no service serves count as `method="other"`);
//! - `berth_api_watchers`: open watch streams;
//! - `berth_raft_*`: term, commit and applied index, leadership, leader
//!   changes, proposal latency (proposed → applied), snapshots sent and
//!   installed and their sizes — set by the raft loop and the transport.
//!
//! One set per process: a member restarted in place keeps counting.

use berth_proto::metrics::{
    Counter, Gauge, GrpcMetrics, Histogram, Registry, exponential_buckets, latency_histogram,
};

#[derive(Clone)]
pub struct Metrics {
    pub grpc: GrpcMetrics,
    pub raft: RaftMetrics,
    pub watchers: Gauge,
}

#[derive(Clone, Debug)]
pub struct RaftMetrics {
    pub term: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub leader: Gauge,
    pub leader_changes: Counter,
    pub proposal_seconds: Histogram,
    pub snapshots_sent: Counter,
    pub snapshots_installed: Counter,
    pub snapshot_bytes: Histogram,
}

impl Default for RaftMetrics {
    /// Handles that no registry serves until registered.
    fn default() -> RaftMetrics {
        RaftMetrics {
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            leader: Gauge::default(),
            leader_changes: Counter::default(),
            proposal_seconds: latency_histogram(),
            snapshots_sent: Counter::default(),
            snapshots_installed: Counter::default(),
            // 1 KiB to 1 GiB.
            snapshot_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 11)),
        }
    }
}

impl RaftMetrics {
    pub fn observe_proposal(&self, seconds: f64) {
        self.proposal_seconds.observe(seconds);
    }

    pub fn observe_snapshot_sent(&self, bytes: u64) {
        self.snapshots_sent.inc();
        self.snapshot_bytes.observe(bytes as f64);
    }
}

impl Metrics {
    /// The series, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let grpc = GrpcMetrics::register(registry, "berth_api");
        let watchers = Gauge::default();
        registry.register("berth_api_watchers", "Open watch streams", watchers.clone());
        let raft = RaftMetrics::default();
        let r = &raft;
        registry.register(
            "berth_raft_term",
            "The raft term this member is in",
            r.term.clone(),
        );
        registry.register(
            "berth_raft_commit_index",
            "The highest log index known committed",
            r.commit_index.clone(),
        );
        registry.register(
            "berth_raft_applied_index",
            "The highest log index applied to the state",
            r.applied_index.clone(),
        );
        registry.register(
            "berth_raft_leader",
            "1 while this member leads",
            r.leader.clone(),
        );
        registry.register(
            "berth_raft_leader_changes",
            "Times this member saw a new leader",
            r.leader_changes.clone(),
        );
        registry.register(
            "berth_raft_proposal_seconds",
            "From a write proposed by this member (as leader) to its entry applied",
            r.proposal_seconds.clone(),
        );
        registry.register(
            "berth_raft_snapshots_sent",
            "Snapshots streamed to followers",
            r.snapshots_sent.clone(),
        );
        registry.register(
            "berth_raft_snapshots_installed",
            "Snapshots received from a leader and installed",
            r.snapshots_installed.clone(),
        );
        registry.register(
            "berth_raft_snapshot_bytes",
            "Size of the objects of each snapshot sent",
            r.snapshot_bytes.clone(),
        );
        Metrics {
            grpc,
            raft,
            watchers,
        }
    }
}
