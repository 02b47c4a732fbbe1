//! Defaults the server fills in before validating and storing an object, so
//! that every stored object is explicit and every replica stores the same.

use crate::pb::{self, object::Kind as Body};

pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_HEALTH_PERIOD_MS: u64 = 10_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// Fills in every defaulted field that is unset.
pub fn apply(object: &mut pb::Object) {
    let kind = object.kind();
    if kind.is_namespaced()
        && let Some(meta) = object.metadata_mut()
        && meta.namespace.is_empty()
    {
        meta.namespace = DEFAULT_NAMESPACE.to_string();
    }
    match &mut object.kind {
        Some(Body::Job(job)) => {
            if let Some(spec) = &mut job.spec {
                let tier = spec.tier();
                if let Some(template) = &mut spec.template {
                    template_defaults(template, tier);
                }
            }
        }
        Some(Body::Task(task)) => {
            if let Some(spec) = &mut task.spec {
                let tier = spec.tier();
                if let Some(template) = &mut spec.template {
                    template_defaults(template, tier);
                }
            }
        }
        Some(Body::Event(event)) => {
            if event.r#type == pb::EventType::Unspecified as i32 {
                event.r#type = pb::EventType::Normal as i32;
            }
        }
        Some(Body::Namespace(_) | Body::Node(_) | Body::Lease(_)) | None => {}
    }
}

fn template_defaults(template: &mut pb::TaskTemplate, tier: pb::Tier) {
    if template.restart_policy == pb::RestartPolicy::Unspecified as i32 {
        // Services run forever; batch work runs to completion (as Kubernetes
        // Deployments and Jobs).
        template.restart_policy = match tier {
            pb::Tier::Batch => pb::RestartPolicy::OnFailure,
            _ => pb::RestartPolicy::Always,
        } as i32;
    }
    for port in &mut template.ports {
        if port.protocol == pb::Protocol::Unspecified as i32 {
            port.protocol = pb::Protocol::Tcp as i32;
        }
    }
    if let Some(hc) = &mut template.health_check {
        if hc.period_ms == 0 {
            hc.period_ms = DEFAULT_HEALTH_PERIOD_MS;
        }
        if hc.timeout_ms == 0 {
            hc.timeout_ms = DEFAULT_HEALTH_TIMEOUT_MS.min(hc.period_ms);
        }
        if hc.failure_threshold == 0 {
            hc.failure_threshold = DEFAULT_FAILURE_THRESHOLD;
        }
    }
}
