//! The objects as of one revision, in memory, for reads.
//!
//! A [`Snapshot`] is an immutable, cheaply cloned view (a persistent ordered
//! map: a clone shares structure with the original). The state machine owns
//! the newest map and publishes a clone after each durable batch, so readers
//! never take a lock across a scan, never see a write that is not yet on disk,
//! and a List is a consistent cut at exactly one revision.

use std::ops::Bound;
use std::sync::Arc;

use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::selector::Selector;

pub type ObjectMap = imbl::OrdMap<ObjectKey, Arc<pb::Object>>;

#[derive(Clone, Default)]
pub struct Snapshot {
    /// The revision of the last write this snapshot contains.
    pub revision: u64,
    pub objects: ObjectMap,
}

impl Snapshot {
    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<pb::Object>> {
        self.objects.get(key)
    }

    /// Objects of one kind, in one namespace or (`None`) all, in key order.
    pub fn scan<'a>(
        &'a self,
        kind: pb::Kind,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<pb::Object>> + 'a {
        scan(&self.objects, kind, namespace)
    }

    /// Objects of one kind matching a namespace filter and a label selector.
    pub fn list<'a>(
        &'a self,
        kind: pb::Kind,
        namespace: Option<&'a str>,
        selector: &'a Selector,
    ) -> impl Iterator<Item = &'a Arc<pb::Object>> + 'a {
        self.scan(kind, namespace)
            .filter(move |o| o.labels().is_some_and(|l| selector.matches(l)))
    }
}

/// Range scan over a map of objects (shared by the snapshot and the state
/// machine, which scans its own newer map).
pub fn scan<'a>(
    objects: &'a ObjectMap,
    kind: pb::Kind,
    namespace: Option<&'a str>,
) -> impl Iterator<Item = &'a Arc<pb::Object>> + 'a {
    let start = ObjectKey::new(kind, namespace.unwrap_or(""), "");
    objects
        .range((Bound::Included(start), Bound::Unbounded))
        .take_while(move |(key, _)| {
            key.kind == kind && namespace.is_none_or(|ns| key.namespace == ns)
        })
        .map(|(_, object)| object)
}
