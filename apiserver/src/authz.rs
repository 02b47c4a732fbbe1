//! What each role may do: a pure function of the principal and the
//! access, so that the whole policy is one table (see the tests).
//!
//! | role      | may                                                                 |
//! |-----------|---------------------------------------------------------------------|
//! | apiserver | everything (members forward requests they have authorized already)  |
//! | admin     | everything; limited to namespaces: every verb on namespaced objects  |
//! |           | there (leases only read), and reading those namespaces              |
//! | viewer    | reading; limited to namespaces as an admin is                       |
//! | scheduler | reading everything; tasks, events and leases; job and node status   |
//! | node      | reading nodes and namespaces; its own Node; tasks bound to it       |
//! |           | (read, status); events about those; heartbeats for itself           |
//!
//! "Bound to it" depends on stored state, so for a node the answer may be
//! [`Decision::BoundTo`]: the service then checks the task (or filters a
//! list or watch) against the state, and the state machine keeps a task's
//! node from being changed by a status write.

use berth_proto::auth::Principal;
use berth_proto::pb::Kind;
use berth_proto::pki::Role;

/// What is done to objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Apply,
    UpdateStatus,
    Delete,
    Bind,
}

impl Verb {
    fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }

    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Apply => "apply",
            Verb::UpdateStatus => "update the status of",
            Verb::Delete => "delete",
            Verb::Bind => "bind",
        }
    }
}

/// An operation on objects. `namespace` is `None` for a cluster-scoped
/// kind, and for a list or watch across all namespaces; `name` is the
/// object's (for a cluster-scoped kind, a namespace's name is its name).
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub verb: Verb,
    pub kind: Kind,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl std::fmt::Display for Access<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb.as_str(), plural(self.kind))?;
        if let Some(name) = self.name {
            write!(f, " {name:?}")?;
        }
        match self.namespace {
            Some(ns) => write!(f, " in namespace {ns:?}"),
            None if self.kind.is_namespaced() => write!(f, " across all namespaces"),
            None => Ok(()),
        }
    }
}

fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => "namespaces",
        Kind::Node => "nodes",
        Kind::Job => "jobs",
        Kind::Task => "tasks",
        Kind::Event => "events",
        Kind::Lease => "leases",
        Kind::Unspecified => "objects",
    }
}

/// The answer for one access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed for tasks bound to this node only (events: about this node
    /// or such tasks).
    BoundTo(String),
    /// Refused; the text says what was refused (the caller adds who).
    Deny(String),
}

/// The policy for objects.
pub fn decide(who: &Principal, access: &Access) -> Decision {
    let deny = || Decision::Deny(access.to_string());
    match who.role {
        Role::Apiserver => Decision::Allow,
        Role::Admin | Role::Viewer => {
            if who.role == Role::Viewer && !access.verb.reads() {
                return deny();
            }
            if !who.is_limited() {
                return Decision::Allow;
            }
            let allowed = if access.kind == Kind::Lease && !access.verb.reads() {
                // Leases elect the cluster's components (the scheduler's
                // lives in `default`): not a tenant's to take.
                false
            } else if access.kind.is_namespaced() {
                access.namespace.is_some_and(|ns| who.covers(ns))
            } else {
                // Of the cluster's objects, only its own namespaces, by name.
                access.kind == Kind::Namespace
                    && access.verb == Verb::Get
                    && access.name.is_some_and(|ns| who.covers(ns))
            };
            if allowed { Decision::Allow } else { deny() }
        }
        Role::Scheduler => {
            let allowed = access.verb.reads()
                || match access.kind {
                    Kind::Task | Kind::Lease => true,
                    Kind::Event => matches!(access.verb, Verb::Apply | Verb::Delete),
                    Kind::Job | Kind::Node => access.verb == Verb::UpdateStatus,
                    Kind::Namespace | Kind::Unspecified => false,
                };
            if allowed { Decision::Allow } else { deny() }
        }
        Role::Node => match (access.kind, access.verb) {
            (Kind::Node | Kind::Namespace, Verb::Get | Verb::List | Verb::Watch) => Decision::Allow,
            (Kind::Node, Verb::Apply | Verb::UpdateStatus) if access.name == Some(&who.name) => {
                Decision::Allow
            }
            (Kind::Task, Verb::Get | Verb::List | Verb::Watch | Verb::UpdateStatus)
            | (Kind::Event, Verb::Apply) => Decision::BoundTo(who.name.clone()),
            _ => deny(),
        },
    }
}

/// Operations that are not on objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterAction {
    /// `cluster status`, `cluster members`.
    ReadMembers,
    /// Adding or removing a member.
    ChangeMembers,
    /// A copy of every object (secrets included).
    Snapshot,
    /// Nodes' and tasks' CPU and memory use.
    ReadUsage,
    /// Heartbeats, for the nodes the caller runs.
    Heartbeat,
    /// Raft messages, snapshots and forwarded proposals between members.
    Replicate,
    /// Cutting links between members (fault injection in tests).
    Partition,
}

impl ClusterAction {
    fn as_str(self) -> &'static str {
        match self {
            ClusterAction::ReadMembers => "read the cluster's members and status",
            ClusterAction::ChangeMembers => "change the cluster's members",
            ClusterAction::Snapshot => "take a snapshot of the whole state",
            ClusterAction::ReadUsage => "read nodes' and tasks' resource usage",
            ClusterAction::Heartbeat => "send node heartbeats",
            ClusterAction::Replicate => "take part in replication (members only)",
            ClusterAction::Partition => "cut links between members",
        }
    }
}

/// The policy for the rest of the API. A node's heartbeats are further
/// limited to its own node by the service.
pub fn decide_cluster(who: &Principal, action: ClusterAction) -> Decision {
    let unlimited = !who.is_limited();
    let allowed = match (who.role, action) {
        (Role::Apiserver, _) => true,
        (_, ClusterAction::Replicate) => false,
        (Role::Admin, _) => unlimited,
        (Role::Viewer, ClusterAction::ReadMembers | ClusterAction::ReadUsage) => unlimited,
        (Role::Scheduler, ClusterAction::ReadMembers | ClusterAction::ReadUsage) => true,
        (Role::Node, ClusterAction::Heartbeat) => true,
        _ => false,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(action.as_str().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_VERBS: [Verb; 7] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Apply,
        Verb::UpdateStatus,
        Verb::Delete,
        Verb::Bind,
    ];
    const ALL_KINDS: [Kind; 6] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Job,
        Kind::Task,
        Kind::Event,
        Kind::Lease,
    ];

    fn access(verb: Verb, kind: Kind, namespace: Option<&'static str>) -> Access<'static> {
        let name = if kind == Kind::Namespace {
            namespace.or(Some("team-a"))
        } else {
            Some("x")
        };
        Access {
            verb,
            kind,
            namespace: if kind.is_namespaced() {
                namespace
            } else {
                None
            },
            name,
        }
    }

    fn allowed(who: &Principal, a: &Access) -> bool {
        !matches!(decide(who, a), Decision::Deny(_))
    }

    #[test]
    fn admins_and_members_may_do_anything_viewers_only_read() {
        let admin = Principal::new(Role::Admin, "root");
        let member = Principal::new(Role::Apiserver, "m1");
        let viewer = Principal::new(Role::Viewer, "ann");
        for kind in ALL_KINDS {
            for verb in ALL_VERBS {
                let a = access(verb, kind, Some("team-a"));
                assert!(allowed(&admin, &a), "{a}");
                assert!(allowed(&member, &a), "{a}");
                assert_eq!(allowed(&viewer, &a), verb.reads(), "viewer: {a}");
            }
        }
    }

    #[test]
    fn namespaces_limit_what_a_user_sees_and_changes() {
        let user = Principal::new(Role::Admin, "bob").in_namespaces(["team-a"]);
        let viewer = Principal::new(Role::Viewer, "ann").in_namespaces(["team-a"]);
        for verb in ALL_VERBS {
            for kind in [Kind::Job, Kind::Task, Kind::Event, Kind::Lease] {
                let mine = access(verb, kind, Some("team-a"));
                let theirs = access(verb, kind, Some("team-b"));
                let everywhere = access(verb, kind, None);
                let leader_election = kind == Kind::Lease && !verb.reads();
                assert_eq!(allowed(&user, &mine), !leader_election, "{mine}");
                assert!(!allowed(&user, &theirs), "{theirs}");
                assert!(!allowed(&user, &everywhere), "{everywhere}");
                assert_eq!(allowed(&viewer, &mine), verb.reads(), "{mine}");
                assert!(!allowed(&viewer, &theirs), "{theirs}");
            }
            // Cluster objects: only reading its own namespace.
            let own = access(verb, Kind::Namespace, Some("team-a"));
            assert_eq!(allowed(&user, &own), verb == Verb::Get, "{own}");
            assert!(!allowed(
                &user,
                &access(verb, Kind::Namespace, Some("team-b"))
            ));
            assert!(!allowed(&user, &access(verb, Kind::Node, None)));
        }
        let everywhere = Access {
            verb: Verb::List,
            kind: Kind::Job,
            namespace: None,
            name: None,
        };
        assert_eq!(
            decide(&viewer, &everywhere),
            Decision::Deny("list jobs across all namespaces".into())
        );
        for action in [
            ClusterAction::ChangeMembers,
            ClusterAction::Snapshot,
            ClusterAction::ReadUsage,
            ClusterAction::Replicate,
        ] {
            assert!(matches!(decide_cluster(&user, action), Decision::Deny(_)));
        }
    }

    #[test]
    fn the_scheduler_places_tasks_but_does_not_change_what_users_asked_for() {
        let scheduler = Principal::new(Role::Scheduler, "scheduler");
        for kind in ALL_KINDS {
            for verb in ALL_VERBS {
                let a = access(verb, kind, Some("default"));
                let expected = verb.reads()
                    || kind == Kind::Task
                    || kind == Kind::Lease
                    || (kind == Kind::Event && matches!(verb, Verb::Apply | Verb::Delete))
                    || (matches!(kind, Kind::Job | Kind::Node) && verb == Verb::UpdateStatus);
                assert_eq!(allowed(&scheduler, &a), expected, "{a}");
            }
        }
        assert_eq!(
            decide_cluster(&scheduler, ClusterAction::Snapshot),
            Decision::Deny("take a snapshot of the whole state".into())
        );
    }

    #[test]
    fn a_node_touches_only_itself_and_its_tasks() {
        let node = Principal::new(Role::Node, "n1");
        let bound = Decision::BoundTo("n1".into());
        let own_node = Access {
            verb: Verb::Apply,
            kind: Kind::Node,
            namespace: None,
            name: Some("n1"),
        };
        assert_eq!(decide(&node, &own_node), Decision::Allow);
        let other_node = Access {
            name: Some("n2"),
            ..own_node
        };
        assert_eq!(
            decide(&node, &other_node),
            Decision::Deny("apply nodes \"n2\"".into())
        );
        for verb in [Verb::Get, Verb::List, Verb::Watch, Verb::UpdateStatus] {
            assert_eq!(decide(&node, &access(verb, Kind::Task, Some("d"))), bound);
        }
        for verb in [Verb::Apply, Verb::Delete, Verb::Bind] {
            let a = access(verb, Kind::Task, Some("d"));
            assert!(!allowed(&node, &a), "{a}");
        }
        for verb in ALL_VERBS {
            assert!(!allowed(&node, &access(verb, Kind::Job, Some("d"))));
            assert!(!allowed(&node, &access(verb, Kind::Lease, Some("d"))));
            assert_eq!(
                allowed(&node, &access(verb, Kind::Event, Some("d"))),
                verb == Verb::Apply
            );
        }
        assert_eq!(
            decide_cluster(&node, ClusterAction::Heartbeat),
            Decision::Allow
        );
        for action in [
            ClusterAction::ReadUsage,
            ClusterAction::Snapshot,
            ClusterAction::Replicate,
            ClusterAction::ChangeMembers,
        ] {
            assert!(matches!(decide_cluster(&node, action), Decision::Deny(_)));
        }
    }
}
