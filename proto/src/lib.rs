//! `berth-proto`: everything two Berth components must agree on.
//!
//! - [`pb`]: the `berth.v1` messages and the `Objects` / `Cluster` services,
//!   generated at build time from `proto/berth/v1/objects.proto`.
//! - [`internal`]: records the apiserver keeps in its log and store.
//! - [`quantity`]: resource quantities that parse and print like Kubernetes'
//!   (`500m`, `2`, `256Mi`, `1Gi`).
//! - [`selector`]: label selectors (`app=web,zone in (a,b)`).
//! - [`validate`] and [`defaults`]: the rules an object must satisfy, shared by
//!   the server (which cannot trust clients) and clients (for early errors).
//! - [`object`]: kind-independent access to objects (names, keys, metadata).
//! - [`backup`]: the snapshot file of `berthctl snapshot save` / `--restore`.
//! - [`connect`]: the single place where gRPC clients and servers are built.
//! - [`metrics`]: Prometheus series and the HTTP server every component
//!   serves them from.
//! - [`pki`]: the cluster CA and the certificates it issues (rcgen).
//! - [`process`]: logging, clock and shutdown signal, as every binary does them.

pub mod auth;
pub mod backup;
pub mod capacity;
pub mod connect;
pub mod defaults;
pub mod history;
pub mod metrics;
pub mod object;
pub mod pki;
pub mod process;
pub mod quantity;
pub mod selector;
pub mod validate;

/// Generated code, nested as the proto packages are so that cross-package
/// references (`super::super::v1`) resolve.
mod generated {
    pub mod berth {
        pub mod v1 {
            tonic::include_proto!("berth.v1");
        }
        pub mod internal {
            pub mod v1 {
                tonic::include_proto!("berth.internal.v1");
            }
        }
    }
}

/// The public API, package `berth.v1`.
pub use generated::berth::v1 as pb;

/// The apiserver's log and storage records, package `berth.internal.v1`.
pub mod internal {
    pub use crate::generated::berth::internal::v1::*;
    pub use crate::history::Change;
}
