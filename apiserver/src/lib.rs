//! `berth-apiserver`: the durable, watchable store of the cluster's desired state.
//!
//! Where to start reading:
//!
//! - [`service`]: the gRPC handlers — check a request, then write or read.
//! - [`replication`]: the raft log — the Ready loop, the log store on sled,
//!   the transport between members; group commit, fsync before acknowledge.
//! - [`state_machine`]: what each command does to the objects, deterministically.
//! - [`watch`]: change streams from any revision, from memory or disk.
//! - [`storage`]: the sled layout; the only module that knows sled.
//! - [`state`]: immutable snapshots that reads are served from.
//! - [`disk`]: the free-space reserve that keeps a full disk from failing writes.
//! - [`server`]: wiring, shutdown, and the restart in place after a full disk.

pub mod allocation;
pub mod authz;
pub mod config;
pub mod disk;
pub mod error;
pub mod liveness;
pub mod metrics;
pub mod replication;
pub mod server;
pub mod service;
mod sled_blobs;
pub mod state;
pub mod state_machine;
pub mod storage;
pub mod watch;

pub use config::Config;
pub use server::ApiServer;
