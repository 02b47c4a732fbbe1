//! Kind-independent access to objects: names, metadata, kinds and their
//! spellings on the command line.

use std::fmt;

use crate::pb::{self, object::Kind as Body};

impl pb::Kind {
    /// Every kind a user can name, in the order `get all` prints them.
    pub const ALL: [pb::Kind; 6] = [
        pb::Kind::Namespace,
        pb::Kind::Node,
        pb::Kind::Job,
        pb::Kind::Task,
        pb::Kind::Event,
        pb::Kind::Lease,
    ];

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            pb::Kind::Job | pb::Kind::Task | pb::Kind::Event | pb::Kind::Lease
        )
    }

    /// The manifest spelling: `Job`, `Namespace`, ….
    pub fn title(self) -> &'static str {
        match self {
            pb::Kind::Unspecified => "Unspecified",
            pb::Kind::Namespace => "Namespace",
            pb::Kind::Node => "Node",
            pb::Kind::Job => "Job",
            pb::Kind::Task => "Task",
            pb::Kind::Event => "Event",
            pb::Kind::Lease => "Lease",
        }
    }

    /// The plural, lower-case spelling used by `berthctl get jobs`.
    pub fn plural(self) -> &'static str {
        match self {
            pb::Kind::Unspecified => "unspecified",
            pb::Kind::Namespace => "namespaces",
            pb::Kind::Node => "nodes",
            pb::Kind::Job => "jobs",
            pb::Kind::Task => "tasks",
            pb::Kind::Event => "events",
            pb::Kind::Lease => "leases",
        }
    }

    /// Parses what a user may type: `job`, `jobs`, `Job`, `j`; `ns`, `no`, `ev`.
    pub fn parse(word: &str) -> Option<pb::Kind> {
        let kind = match word.to_ascii_lowercase().as_str() {
            "namespace" | "namespaces" | "ns" => pb::Kind::Namespace,
            "node" | "nodes" | "no" => pb::Kind::Node,
            "job" | "jobs" | "j" => pb::Kind::Job,
            "task" | "tasks" | "t" => pb::Kind::Task,
            "event" | "events" | "ev" => pb::Kind::Event,
            "lease" | "leases" => pb::Kind::Lease,
            _ => return None,
        };
        Some(kind)
    }
}

impl fmt::Display for pb::Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// Identifies one object: kind, namespace (empty when cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: pb::Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: pb::Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    /// `job default/web`, `node n1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.title().to_ascii_lowercase();
        if self.namespace.is_empty() {
            write!(f, "{kind} {}", self.name)
        } else {
            write!(f, "{kind} {}/{}", self.namespace, self.name)
        }
    }
}

impl pb::Object {
    pub fn kind(&self) -> pb::Kind {
        match &self.kind {
            None => pb::Kind::Unspecified,
            Some(Body::Namespace(_)) => pb::Kind::Namespace,
            Some(Body::Node(_)) => pb::Kind::Node,
            Some(Body::Job(_)) => pb::Kind::Job,
            Some(Body::Task(_)) => pb::Kind::Task,
            Some(Body::Event(_)) => pb::Kind::Event,
            Some(Body::Lease(_)) => pb::Kind::Lease,
        }
    }

    pub fn metadata(&self) -> Option<&pb::ObjectMeta> {
        match &self.kind {
            None => None,
            Some(Body::Namespace(o)) => o.metadata.as_ref(),
            Some(Body::Node(o)) => o.metadata.as_ref(),
            Some(Body::Job(o)) => o.metadata.as_ref(),
            Some(Body::Task(o)) => o.metadata.as_ref(),
            Some(Body::Event(o)) => o.metadata.as_ref(),
            Some(Body::Lease(o)) => o.metadata.as_ref(),
        }
    }

    /// The metadata, created empty if absent. `None` only for an object
    /// without a kind.
    pub fn metadata_mut(&mut self) -> Option<&mut pb::ObjectMeta> {
        let slot = match &mut self.kind {
            None => return None,
            Some(Body::Namespace(o)) => &mut o.metadata,
            Some(Body::Node(o)) => &mut o.metadata,
            Some(Body::Job(o)) => &mut o.metadata,
            Some(Body::Task(o)) => &mut o.metadata,
            Some(Body::Event(o)) => &mut o.metadata,
            Some(Body::Lease(o)) => &mut o.metadata,
        };
        Some(slot.get_or_insert_with(Default::default))
    }

    pub fn name(&self) -> &str {
        self.metadata().map_or("", |m| m.name.as_str())
    }

    pub fn namespace(&self) -> &str {
        self.metadata().map_or("", |m| m.namespace.as_str())
    }

    pub fn resource_version(&self) -> u64 {
        self.metadata().map_or(0, |m| m.resource_version)
    }

    pub fn labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.metadata().map(|m| &m.labels)
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.kind(), self.namespace(), self.name())
    }
}

macro_rules! into_object {
    ($($ty:ident),*) => {
        $(impl From<pb::$ty> for pb::Object {
            fn from(o: pb::$ty) -> Self {
                pb::Object { kind: Some(Body::$ty(o)) }
            }
        })*
    };
}
into_object!(Namespace, Node, Job, Task, Event, Lease);

/// Typed access to an object's body.
impl pb::Object {
    pub fn as_job(&self) -> Option<&pb::Job> {
        match &self.kind {
            Some(Body::Job(j)) => Some(j),
            _ => None,
        }
    }

    pub fn as_task(&self) -> Option<&pb::Task> {
        match &self.kind {
            Some(Body::Task(t)) => Some(t),
            _ => None,
        }
    }

    pub fn as_node(&self) -> Option<&pb::Node> {
        match &self.kind {
            Some(Body::Node(n)) => Some(n),
            _ => None,
        }
    }

    pub fn as_namespace(&self) -> Option<&pb::Namespace> {
        match &self.kind {
            Some(Body::Namespace(n)) => Some(n),
            _ => None,
        }
    }

    pub fn as_lease(&self) -> Option<&pb::Lease> {
        match &self.kind {
            Some(Body::Lease(l)) => Some(l),
            _ => None,
        }
    }
}

impl pb::TaskPhase {
    /// Phases after which a task holds no resources and will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            pb::TaskPhase::Succeeded
                | pb::TaskPhase::Failed
                | pb::TaskPhase::Lost
                | pb::TaskPhase::Preempted
                | pb::TaskPhase::Killed
        )
    }
}

impl pb::Task {
    /// The node the task is bound to, finished or not ("" while unbound).
    pub fn bound_node(&self) -> &str {
        self.status.as_ref().map_or("", |s| s.node.as_str())
    }

    /// The node the task holds resources on: bound and not finished.
    pub fn holding_node(&self) -> Option<&str> {
        let status = self.status.as_ref()?;
        (!status.node.is_empty() && !status.phase().is_terminal()).then_some(status.node.as_str())
    }

    pub fn requests(&self) -> Option<&pb::Resources> {
        self.spec.as_ref()?.template.as_ref()?.resources.as_ref()
    }
}

/// A warning Event about a task's incarnation, named
/// `<task>.<incarnation>.<reason>`: one per incarnation and reason, so that
/// writing it again (create-only or not) never piles up copies.
pub fn task_warning(
    task: &pb::Object,
    reason: &str,
    message: String,
    source: &str,
    time_ms: i64,
) -> pb::Object {
    let incarnation = task
        .as_task()
        .and_then(|t| t.spec.as_ref())
        .map_or(0, |s| s.incarnation);
    pb::Object::from(pb::Event {
        metadata: Some(pb::ObjectMeta {
            name: format!(
                "{}.{incarnation}.{}",
                task.name(),
                reason.to_ascii_lowercase()
            ),
            namespace: task.namespace().to_string(),
            ..Default::default()
        }),
        involved: Some(pb::ObjectRef {
            kind: pb::Kind::Task as i32,
            namespace: task.namespace().to_string(),
            name: task.name().to_string(),
            uid: task.metadata().map(|m| m.uid.clone()).unwrap_or_default(),
        }),
        r#type: pb::EventType::Warning as i32,
        reason: reason.to_string(),
        message,
        source: source.to_string(),
        time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_every_spelling() {
        for kind in pb::Kind::ALL {
            assert_eq!(pb::Kind::parse(kind.plural()), Some(kind));
            assert_eq!(pb::Kind::parse(kind.title()), Some(kind));
        }
        assert_eq!(pb::Kind::parse("ns"), Some(pb::Kind::Namespace));
        assert_eq!(pb::Kind::parse("pods"), None);
    }

    #[test]
    fn keys_display_like_messages() {
        let job = pb::Object::from(pb::Job {
            metadata: Some(pb::ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(job.key().to_string(), "job default/web");
        assert_eq!(
            ObjectKey::new(pb::Kind::Node, "", "n1").to_string(),
            "node n1"
        );
    }
}
