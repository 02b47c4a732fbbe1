//! The rules every object must satisfy before it is stored.
//!
//! The apiserver runs these on every write (clients cannot be trusted);
//! berthctl runs them too, to point at the manifest line before a round trip.
//! Every error names the field by its manifest path, e.g.
//! `spec.template.resources.cpu: must be greater than zero (got 0)`.

use std::collections::BTreeMap;
use std::fmt;

use prost::Message;

use crate::pb::{self, object::Kind as Body};
use crate::quantity::{format_cpu, format_memory};

/// Largest encoded object the apiserver stores (as etcd's request limit).
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;
pub const MAX_REPLICAS: u32 = 100_000;
pub const MAX_PRIORITY: i32 = 1000;
/// 1024 cores.
pub const MAX_CPU_MILLIS: i64 = 1024 * 1000;
/// 64 TiB.
pub const MAX_MEMORY_BYTES: i64 = 64 << 40;
pub const MAX_EXTENDED_UNITS: i64 = 1 << 20;
const MAX_LABELS: usize = 64;
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 16 * 1024;
const MAX_ENV: usize = 256;
const MAX_IMAGE_BYTES: usize = 512;
const MAX_MESSAGE_BYTES: usize = 4096;
const MAX_PERIOD_MS: u64 = 3_600_000;

/// One violated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Manifest path of the field: `spec.template.resources.cpu`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every violated rule of one object, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects errors under a growing field path.
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.fail(field, message);
        }
    }
}

/// Validates a whole object. Defaults must have been applied first
/// ([`crate::defaults::apply`]).
pub fn validate_object(object: &pb::Object) -> Result<(), ValidationErrors> {
    let mut c = Checker { errors: Vec::new() };
    let size = object.encoded_len();
    if size > MAX_OBJECT_BYTES {
        c.fail(
            "",
            format!("object is {size} bytes, more than the limit of {MAX_OBJECT_BYTES} bytes"),
        );
        return Err(ValidationErrors(c.errors));
    }
    let kind = object.kind();
    match object.metadata() {
        None if kind != pb::Kind::Unspecified => c.fail("metadata", "required"),
        None => {}
        Some(meta) => check_metadata(&mut c, kind, meta),
    }
    match &object.kind {
        None => c.fail(
            "kind",
            "required: one of Namespace, Node, Job, Task, Event, Lease",
        ),
        Some(Body::Job(job)) => match &job.spec {
            None => c.fail("spec", "required"),
            Some(spec) => check_job_spec(&mut c, spec),
        },
        Some(Body::Task(task)) => match &task.spec {
            None => c.fail("spec", "required"),
            Some(spec) => check_task_spec(&mut c, spec),
        },
        Some(Body::Node(node)) => {
            if let Some(status) = &node.status {
                check_node_status(&mut c, status);
            }
        }
        Some(Body::Namespace(ns)) => {
            if let Some(quota) = ns.spec.as_ref().and_then(|s| s.quota.as_ref()) {
                for (tier, limits) in [("prod", &quota.prod), ("batch", &quota.batch)] {
                    if let Some(limits) = limits {
                        check_quota_limits(&mut c, &format!("spec.quota.{tier}"), limits);
                    }
                }
            }
        }
        Some(Body::Event(event)) => check_event(&mut c, event),
        Some(Body::Lease(lease)) => match &lease.spec {
            None => c.fail("spec", "required"),
            Some(spec) => {
                if spec.duration_ms == 0 {
                    c.fail("spec.duration", "must be positive");
                }
                if spec.holder.len() > 253 {
                    c.fail("spec.holder", "longer than 253 characters");
                }
            }
        },
    }
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(c.errors))
    }
}

fn check_metadata(c: &mut Checker, kind: pb::Kind, meta: &pb::ObjectMeta) {
    let name_rule = match kind {
        // Namespaces and jobs name Docker containers and DNS records.
        pb::Kind::Namespace | pb::Kind::Job => check_dns_label,
        _ => check_dns_subdomain,
    };
    c.check("metadata.name", name_rule(&meta.name));
    if kind.is_namespaced() {
        c.check("metadata.namespace", check_dns_label(&meta.namespace));
    } else if !meta.namespace.is_empty() {
        c.fail(
            "metadata.namespace",
            format!(
                "{kind} is not namespaced; remove the namespace {:?}",
                meta.namespace
            ),
        );
    }
    check_labels(c, "metadata.labels", &meta.labels);
}

fn check_labels(c: &mut Checker, path: &str, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        c.fail(
            path,
            format!("{} labels, more than {MAX_LABELS}", labels.len()),
        );
    }
    for (key, value) in labels {
        c.check(format!("{path}.{key}"), check_label_key(key));
        c.check(format!("{path}.{key}"), check_label_value(value));
    }
}

fn check_job_spec(c: &mut Checker, spec: &pb::JobSpec) {
    c.check("spec.tier", check_tier(spec.tier));
    if !(0..=MAX_PRIORITY).contains(&spec.priority) {
        c.fail(
            "spec.priority",
            format!("{} is out of range (0 to {MAX_PRIORITY})", spec.priority),
        );
    }
    if spec.replicas > MAX_REPLICAS {
        c.fail(
            "spec.replicas",
            format!("{} is out of range (0 to {MAX_REPLICAS})", spec.replicas),
        );
    }
    match &spec.template {
        None => c.fail("spec.template", "required"),
        Some(t) => check_template(c, "spec.template", t, spec.tier()),
    }
    check_constraints(c, &spec.constraints);
    if let Some(spread) = &spec.spread {
        c.check("spec.spread.key", check_label_key(&spread.key));
        if spread.max_skew == 0 {
            c.fail("spec.spread.maxSkew", "must be at least 1");
        }
    }
    if let Some(update) = &spec.update
        && update.max_unavailable == Some(0)
        && update.max_surge == Some(0)
    {
        c.fail(
            "spec.update",
            "maxUnavailable and maxSurge cannot both be 0: no update could make progress",
        );
    }
}

fn check_task_spec(c: &mut Checker, spec: &pb::TaskSpec) {
    c.check("spec.job", check_dns_label(&spec.job));
    c.check("spec.tier", check_tier(spec.tier));
    match &spec.template {
        None => c.fail("spec.template", "required"),
        Some(t) => check_template(c, "spec.template", t, spec.tier()),
    }
    check_constraints(c, &spec.constraints);
}

fn check_tier(tier: i32) -> Result<(), String> {
    match pb::Tier::try_from(tier) {
        Ok(pb::Tier::Prod | pb::Tier::Batch) => Ok(()),
        Ok(pb::Tier::Unspecified) => Err("required: prod or batch".into()),
        Err(_) => Err(format!("{tier} is not a known tier (prod or batch)")),
    }
}

fn check_template(c: &mut Checker, path: &str, t: &pb::TaskTemplate, tier: pb::Tier) {
    c.check(format!("{path}.image"), check_image(&t.image));
    for (field, list) in [("command", &t.command), ("args", &t.args)] {
        if list.len() > MAX_ARGS {
            c.fail(
                format!("{path}.{field}"),
                format!("more than {MAX_ARGS} entries"),
            );
        }
        for (i, arg) in list.iter().enumerate() {
            if arg.len() > MAX_ARG_BYTES || arg.contains('\0') {
                c.fail(
                    format!("{path}.{field}[{i}]"),
                    format!("must be at most {MAX_ARG_BYTES} bytes without NUL characters"),
                );
            }
        }
    }
    if t.env.len() > MAX_ENV {
        c.fail(
            format!("{path}.env"),
            format!("more than {MAX_ENV} variables"),
        );
    }
    for (name, value) in &t.env {
        c.check(format!("{path}.env.{name}"), check_env_name(name));
        if value.contains('\0') || value.len() > MAX_ARG_BYTES {
            c.fail(
                format!("{path}.env.{name}"),
                format!("value must be at most {MAX_ARG_BYTES} bytes without NUL characters"),
            );
        }
    }
    let mut host_ports = Vec::new();
    for (i, port) in t.ports.iter().enumerate() {
        let p = format!("{path}.ports[{i}]");
        if !port.name.is_empty() {
            c.check(format!("{p}.name"), check_dns_label(&port.name));
        }
        c.check(
            format!("{p}.containerPort"),
            check_port(port.container_port),
        );
        if port.host_port != 0 {
            c.check(format!("{p}.hostPort"), check_port(port.host_port));
            let key = (port.host_port, port.protocol);
            if host_ports.contains(&key) {
                c.fail(
                    format!("{p}.hostPort"),
                    format!("{} is published twice", port.host_port),
                );
            }
            host_ports.push(key);
        }
        if !matches!(
            pb::Protocol::try_from(port.protocol),
            Ok(pb::Protocol::Tcp | pb::Protocol::Udp)
        ) {
            c.fail(format!("{p}.protocol"), "must be TCP or UDP");
        }
    }
    match &t.resources {
        None => c.fail(format!("{path}.resources"), "required: cpu and memory"),
        Some(r) => check_requests(c, &format!("{path}.resources"), r),
    }
    if let Some(hc) = &t.health_check {
        check_health_check(c, &format!("{path}.healthCheck"), hc);
    }
    match pb::RestartPolicy::try_from(t.restart_policy) {
        Ok(pb::RestartPolicy::Always) if tier == pb::Tier::Batch => c.fail(
            format!("{path}.restartPolicy"),
            "Always is not allowed for batch jobs, which must finish: use OnFailure or Never",
        ),
        Ok(pb::RestartPolicy::Unspecified) => c.fail(
            format!("{path}.restartPolicy"),
            "required: Always, OnFailure or Never",
        ),
        Ok(_) => {}
        Err(_) => c.fail(
            format!("{path}.restartPolicy"),
            format!(
                "{} is not a restart policy (Always, OnFailure or Never)",
                t.restart_policy
            ),
        ),
    }
}

fn check_requests(c: &mut Checker, path: &str, r: &pb::Resources) {
    if r.cpu_millis <= 0 {
        c.fail(
            format!("{path}.cpu"),
            format!(
                "must be greater than zero (got {})",
                format_cpu(r.cpu_millis)
            ),
        );
    } else if r.cpu_millis > MAX_CPU_MILLIS {
        c.fail(
            format!("{path}.cpu"),
            format!(
                "{} is more than the largest request, {}",
                format_cpu(r.cpu_millis),
                format_cpu(MAX_CPU_MILLIS)
            ),
        );
    }
    if r.memory_bytes <= 0 {
        c.fail(
            format!("{path}.memory"),
            format!(
                "must be greater than zero (got {})",
                format_memory(r.memory_bytes)
            ),
        );
    } else if r.memory_bytes > MAX_MEMORY_BYTES {
        c.fail(
            format!("{path}.memory"),
            format!(
                "{} is more than the largest request, {}",
                format_memory(r.memory_bytes),
                format_memory(MAX_MEMORY_BYTES)
            ),
        );
    }
    for (name, value) in &r.extended {
        let p = format!("{path}.extended.{name}");
        c.check(p.clone(), check_resource_name(name));
        if *value <= 0 || *value > MAX_EXTENDED_UNITS {
            c.fail(
                p,
                format!("{value} is out of range (1 to {MAX_EXTENDED_UNITS})"),
            );
        }
    }
}

fn check_quota_limits(c: &mut Checker, path: &str, limits: &pb::QuotaLimits) {
    if let Some(cpu) = limits.cpu_millis
        && cpu < 0
    {
        c.fail(
            format!("{path}.cpu"),
            format!("must not be negative (got {})", format_cpu(cpu)),
        );
    }
    if let Some(memory) = limits.memory_bytes
        && memory < 0
    {
        c.fail(
            format!("{path}.memory"),
            format!("must not be negative (got {})", format_memory(memory)),
        );
    }
    for (name, value) in &limits.extended {
        let p = format!("{path}.extended.{name}");
        c.check(p.clone(), check_resource_name(name));
        if *value < 0 {
            c.fail(p, format!("must not be negative (got {value})"));
        }
    }
}

fn check_health_check(c: &mut Checker, path: &str, hc: &pb::HealthCheck) {
    match &hc.probe {
        None => c.fail(path.to_string(), "needs one probe: http, tcp or exec"),
        Some(pb::health_check::Probe::Http(http)) => {
            c.check(format!("{path}.http.port"), check_port(http.port));
            if !http.path.starts_with('/') {
                c.fail(
                    format!("{path}.http.path"),
                    format!("{:?} must start with /", http.path),
                );
            }
        }
        Some(pb::health_check::Probe::Tcp(tcp)) => {
            c.check(format!("{path}.tcp.port"), check_port(tcp.port));
        }
        Some(pb::health_check::Probe::Exec(exec)) => {
            if exec.command.is_empty() {
                c.fail(
                    format!("{path}.exec.command"),
                    "required: the command to run",
                );
            }
        }
    }
    if hc.period_ms == 0 || hc.period_ms > MAX_PERIOD_MS {
        c.fail(format!("{path}.period"), "must be between 1ms and 1h");
    }
    if hc.timeout_ms == 0 || hc.timeout_ms > hc.period_ms {
        c.fail(
            format!("{path}.timeout"),
            "must be positive and at most the period",
        );
    }
    if hc.failure_threshold == 0 {
        c.fail(format!("{path}.failureThreshold"), "must be at least 1");
    }
    if hc.initial_delay_ms > MAX_PERIOD_MS {
        c.fail(format!("{path}.initialDelay"), "must be at most 1h");
    }
}

fn check_constraints(c: &mut Checker, constraints: &[pb::LabelRequirement]) {
    for (i, r) in constraints.iter().enumerate() {
        let p = format!("spec.constraints[{i}]");
        c.check(format!("{p}.key"), check_label_key(&r.key));
        match pb::Operator::try_from(r.operator) {
            Ok(pb::Operator::In | pb::Operator::NotIn) => {
                if r.values.is_empty() {
                    c.fail(format!("{p}.values"), "required for In and NotIn");
                }
                for (j, v) in r.values.iter().enumerate() {
                    c.check(format!("{p}.values[{j}]"), check_label_value(v));
                }
            }
            Ok(pb::Operator::Exists | pb::Operator::DoesNotExist) => {
                if !r.values.is_empty() {
                    c.fail(
                        format!("{p}.values"),
                        "must be empty for Exists and DoesNotExist",
                    );
                }
            }
            _ => c.fail(
                format!("{p}.operator"),
                "must be In, NotIn, Exists or DoesNotExist",
            ),
        }
    }
}

fn check_node_status(c: &mut Checker, status: &pb::NodeStatus) {
    check_labels(c, "status.labels", &status.labels);
    for (field, res) in [
        ("capacity", &status.capacity),
        ("allocatable", &status.allocatable),
    ] {
        if let Some(r) = res
            && (r.cpu_millis < 0 || r.memory_bytes < 0 || r.extended.values().any(|v| *v < 0))
        {
            c.fail(format!("status.{field}"), "must not be negative");
        }
    }
}

fn check_event(c: &mut Checker, event: &pb::Event) {
    match &event.involved {
        None => c.fail("involved", "required: the object the event is about"),
        Some(r) => {
            if pb::Kind::try_from(r.kind).map_or(true, |k| k == pb::Kind::Unspecified) {
                c.fail("involved.kind", "required");
            }
            c.check("involved.name", check_dns_subdomain(&r.name));
        }
    }
    if event.reason.is_empty() || event.reason.len() > 128 {
        c.fail("reason", "required, at most 128 characters");
    }
    if event.message.len() > MAX_MESSAGE_BYTES {
        c.fail("message", format!("more than {MAX_MESSAGE_BYTES} bytes"));
    }
}

// ---------------------------------------------------------------------------
// Syntax rules shared with the selector parser
// ---------------------------------------------------------------------------

/// RFC 1123 label: at most 63 of `a-z 0-9 -`, starting and ending alphanumeric.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("required".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use lower-case letters, digits and '-', \
             starting and ending with a letter or digit (RFC 1123)"
        ))
    }
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("required".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    if name.split('.').all(|part| check_dns_label(part).is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use lower-case letters, digits, '-' and '.', \
             each part starting and ending with a letter or digit (RFC 1123)"
        ))
    }
}

/// `[prefix/]name`: prefix a DNS subdomain, name at most 63 of
/// `A-Z a-z 0-9 - _ .`, starting and ending alphanumeric.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("label key is empty".into());
    }
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            check_dns_subdomain(prefix)
                .map_err(|e| format!("label key {key:?} has a bad prefix: {e}"))?;
            name
        }
        None => key,
    };
    if is_label_word(name) {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a valid label key: at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit, optionally after a DNS prefix and '/'"
        ))
    }
}

/// Empty, or at most 63 of `A-Z a-z 0-9 - _ .`, starting and ending alphanumeric.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_word(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

fn is_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Extended resource names: a label key, and not one of the built-in names.
fn check_resource_name(name: &str) -> Result<(), String> {
    if matches!(name, "cpu" | "memory") {
        return Err(format!(
            "{name} is a built-in resource, not an extended one"
        ));
    }
    check_label_key(name)
}

fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("required: the container image, e.g. berth-testapp:latest".into());
    }
    if image.len() > MAX_IMAGE_BYTES {
        return Err(format!("longer than {MAX_IMAGE_BYTES} characters"));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{image:?} is not an image reference: it contains whitespace"
        ));
    }
    Ok(())
}

fn check_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("{port} is not a port number (1 to 65535)"))
    }
}

/// POSIX-ish variable names: letters, digits, `_`, `.`, `-`, not starting
/// with a digit (as Kubernetes allows).
fn check_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid variable name: letters, digits, '_', '.' or '-', \
             not starting with a digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults;

    fn job() -> pb::Object {
        let mut object = pb::Object::from(pb::Job {
            metadata: Some(pb::ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(pb::JobSpec {
                tier: pb::Tier::Prod as i32,
                replicas: 3,
                template: Some(pb::TaskTemplate {
                    image: "berth-testapp:latest".into(),
                    resources: Some(pb::Resources {
                        cpu_millis: 500,
                        memory_bytes: 256 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        });
        defaults::apply(&mut object);
        object
    }

    fn job_spec(object: &mut pb::Object) -> &mut pb::JobSpec {
        match &mut object.kind {
            Some(Body::Job(j)) => j.spec.as_mut().unwrap(),
            _ => unreachable!(),
        }
    }

    fn errors_of(object: &pb::Object) -> String {
        validate_object(object).unwrap_err().to_string()
    }

    #[test]
    fn a_good_job_passes() {
        validate_object(&job()).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut o = job();
        job_spec(&mut o)
            .template
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .cpu_millis = 0;
        assert_eq!(
            errors_of(&o),
            "spec.template.resources.cpu: must be greater than zero (got 0)"
        );

        let mut o = job();
        job_spec(&mut o).replicas = MAX_REPLICAS + 1;
        assert!(errors_of(&o).starts_with("spec.replicas: 100001 is out of range"));

        let mut o = job();
        job_spec(&mut o).tier = 9;
        assert!(errors_of(&o).starts_with("spec.tier: 9 is not a known tier"));

        let mut o = job();
        o.metadata_mut().unwrap().name = "Web_1".into();
        assert!(errors_of(&o).starts_with("metadata.name: \"Web_1\" is not a valid name"));

        let mut o = job();
        job_spec(&mut o).template.as_mut().unwrap().image.clear();
        assert!(errors_of(&o).starts_with("spec.template.image: required"));
    }

    #[test]
    fn batch_cannot_restart_always() {
        let mut o = job();
        let spec = job_spec(&mut o);
        spec.tier = pb::Tier::Batch as i32;
        spec.template.as_mut().unwrap().restart_policy = pb::RestartPolicy::Always as i32;
        assert!(errors_of(&o).contains("restartPolicy: Always is not allowed for batch"));
    }

    #[test]
    fn oversize_objects_are_refused() {
        let mut o = job();
        job_spec(&mut o).template.as_mut().unwrap().args = vec!["x".repeat(10_000); 200];
        assert!(errors_of(&o).contains("more than the limit"));
    }

    #[test]
    fn names() {
        assert!(check_dns_label("web-1").is_ok());
        assert!(check_dns_label("-web").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_subdomain("node-1.rack-2").is_ok());
        assert!(check_dns_subdomain("node..1").is_err());
        assert!(check_label_key("berth.dev/zone").is_ok());
        assert!(check_label_key("Zone_A").is_ok());
        assert!(check_label_key("a b").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("-x").is_err());
    }
}
