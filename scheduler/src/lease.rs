//! Leader election among schedulers with a Lease object in the apiserver,
//! as Kubernetes' `leaderelection`: the holder renews the lease with
//! optimistic concurrency; another scheduler takes it over once it has seen
//! the same version of it, unrenewed, for a whole lease duration.
//!
//! Both sides measure time with their own monotonic clocks, never each
//! other's wall clocks: the holder counts its term from when it *sent* the
//! renewal, the standby from when it *saw* the version — which is after the
//! renewal was sent — so the holder always stops before the standby starts.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_proto::process::now_ms;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;

pub const LEASE_NAMESPACE: &str = "default";
pub const LEASE_NAME: &str = "berth-scheduler";

/// What this scheduler last read of the lease.
struct Observed {
    version: u64,
    spec: pb::LeaseSpec,
    /// When this version was first seen here.
    since: Instant,
}

struct Elector {
    client: Arc<BerthClient>,
    identity: String,
    duration: Duration,
    observed: Option<Observed>,
    /// Leading until this instant, unless renewed.
    leading_until: Option<Instant>,
}

fn lease(spec: pb::LeaseSpec, version: u64) -> pb::Object {
    pb::Object::from(pb::Lease {
        metadata: Some(pb::ObjectMeta {
            name: LEASE_NAME.into(),
            namespace: LEASE_NAMESPACE.into(),
            resource_version: version,
            ..Default::default()
        }),
        spec: Some(spec),
    })
}

impl Elector {
    fn leading(&self) -> bool {
        self.leading_until
            .is_some_and(|until| Instant::now() < until)
    }

    async fn read(&mut self) -> Result<(), tonic::Status> {
        let got = self
            .client
            .get(pb::Kind::Lease, LEASE_NAMESPACE, LEASE_NAME)
            .await;
        match got {
            Ok(object) => {
                let version = object.resource_version();
                let spec = object
                    .as_lease()
                    .and_then(|l| l.spec.clone())
                    .unwrap_or_default();
                if self.observed.as_ref().is_none_or(|o| o.version != version) {
                    self.observed = Some(Observed {
                        version,
                        spec,
                        since: Instant::now(),
                    });
                }
                Ok(())
            }
            Err(status) if status.code() == Code::NotFound => {
                self.observed = None;
                Ok(())
            }
            Err(status) => Err(status),
        }
    }

    /// Writes the lease (create when `version` is 0); true if it was taken.
    async fn write(&mut self, spec: pb::LeaseSpec, version: u64) -> bool {
        let sent = Instant::now();
        let request = pb::ApplyRequest {
            object: Some(lease(spec.clone(), version)),
            create_only: version == 0,
        };
        let written = self
            .client
            .call(|mut c| {
                let request = request.clone();
                async move { c.apply(request).await }
            })
            .await;
        match written {
            Ok(response) => {
                let version = response
                    .into_inner()
                    .object
                    .map_or(0, |o| o.resource_version());
                self.observed = Some(Observed {
                    version,
                    spec,
                    since: sent,
                });
                self.leading_until = Some(sent + self.duration);
                true
            }
            Err(status) => {
                tracing::debug!(error = %status.message(), "lease not written");
                false
            }
        }
    }

    /// One round: read the lease, then renew, take over or wait.
    async fn round(&mut self) {
        if let Err(status) = self.read().await {
            tracing::debug!(error = %status.message(), "lease not read");
            return;
        }
        let now = now_ms();
        let duration_ms = self.duration.as_millis() as u64;
        match &self.observed {
            None => {
                let spec = pb::LeaseSpec {
                    holder: self.identity.clone(),
                    acquired_at_ms: now,
                    renewed_at_ms: now,
                    duration_ms,
                    transitions: 0,
                };
                if self.write(spec, 0).await {
                    tracing::info!(identity = %self.identity, "took the scheduler lease");
                }
            }
            Some(o) if o.spec.holder == self.identity => {
                let spec = pb::LeaseSpec {
                    renewed_at_ms: now,
                    duration_ms,
                    ..o.spec.clone()
                };
                let version = o.version;
                if !self.write(spec, version).await && !self.leading() {
                    tracing::warn!(identity = %self.identity, "lost the scheduler lease");
                }
            }
            Some(o) => {
                let expired = o.spec.holder.is_empty()
                    || o.since.elapsed() >= Duration::from_millis(o.spec.duration_ms.max(1));
                if !expired {
                    self.leading_until = None;
                    return;
                }
                let spec = pb::LeaseSpec {
                    holder: self.identity.clone(),
                    acquired_at_ms: now,
                    renewed_at_ms: now,
                    duration_ms,
                    transitions: o.spec.transitions + 1,
                };
                let (previous, version) = (o.spec.holder.clone(), o.version);
                if self.write(spec, version).await {
                    tracing::info!(identity = %self.identity, %previous, "took over the scheduler lease");
                }
            }
        }
    }

    /// Gives the lease up on shutdown, so that a standby need not wait.
    async fn release(&mut self) {
        if !self.leading() {
            return;
        }
        if let Some(o) = &self.observed {
            let spec = pb::LeaseSpec {
                holder: String::new(),
                ..o.spec.clone()
            };
            let version = o.version;
            self.write(spec, version).await;
        }
        self.leading_until = None;
    }
}

/// Keeps trying to hold the lease; `leading` says whether this scheduler
/// may act. On shutdown the lease is released.
pub async fn keep(
    client: Arc<BerthClient>,
    identity: String,
    duration: Duration,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut elector = Elector {
        client,
        identity,
        duration,
        observed: None,
        leading_until: None,
    };
    // Renew well before the term ends: three tries per lease duration.
    let period = duration / 3;
    loop {
        if *shutdown.borrow() {
            break;
        }
        elector.round().await;
        leading.send_if_modified(|l| std::mem::replace(l, elector.leading()) != *l);
        // Wake at the next round, or when the term ends if that is sooner.
        let mut wake = Instant::now() + period;
        if let Some(until) = elector.leading_until
            && until > Instant::now()
        {
            wake = wake.min(until);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => break,
        }
        leading.send_if_modified(|l| std::mem::replace(l, elector.leading()) != *l);
    }
    leading.send_replace(false);
    elector.release().await;
}
