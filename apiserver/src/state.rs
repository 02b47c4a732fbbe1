//! The objects as of one log index, in memory, for reads.
//!
//! A [`Snapshot`] is an immutable, cheaply cloned view (a persistent ordered
//! map: a clone shares structure with the original). The state machine owns
//! the newest map and publishes a clone after each batch of committed entries,
//! so readers never take a lock across a scan, never see a write that is not
//! committed, and a List is a consistent cut at exactly one revision. The same
//! view is what a leader streams to a follower that needs a snapshot.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use berth_proto::internal::Members;
use berth_proto::object::ObjectKey;
use berth_proto::pb;
use berth_proto::selector::Selector;
use raft::eraftpb::ConfState;

/// Keys are shared (`Arc`) because the persistent map copies the path to
/// every changed entry, keys included: a key copy must not allocate.
pub type ObjectMap = imbl::OrdMap<Arc<ObjectKey>, Arc<pb::Object>>;

#[derive(Clone, Default)]
pub struct Snapshot {
    /// The log index of the last change this view contains.
    pub revision: u64,
    /// The last log index applied (changes or not).
    pub applied: u64,
    pub objects: ObjectMap,
    pub membership: Arc<Membership>,
}

/// Who the replicas are, as of the applied index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    /// Voters and learners, as raft tracks them.
    pub conf_state: ConfState,
    /// Where each member serves.
    pub addresses: BTreeMap<u64, String>,
}

impl Membership {
    pub fn address(&self, id: u64) -> Option<&str> {
        self.addresses.get(&id).map(String::as_str)
    }

    fn is_voter(&self, id: u64) -> bool {
        self.conf_state.voters.contains(&id) || self.conf_state.voters_outgoing.contains(&id)
    }

    /// Every member (voters, then learners), for the API.
    pub fn members(&self) -> Vec<pb::Member> {
        let cs = &self.conf_state;
        let mut ids: Vec<u64> = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners)
            .chain(&cs.learners_next)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| pb::Member {
                id,
                address: self.addresses.get(&id).cloned().unwrap_or_default(),
                voter: self.is_voter(id),
            })
            .collect()
    }

    /// The addresses in their stored form.
    pub fn to_record(&self) -> Members {
        Members {
            members: self
                .addresses
                .iter()
                .map(|(id, address)| pb::Member {
                    id: *id,
                    address: address.clone(),
                    voter: self.is_voter(*id),
                })
                .collect(),
        }
    }

    /// Builds a membership from stored addresses and raft's conf state.
    pub fn from_record(record: &Members, conf_state: ConfState) -> Membership {
        Membership {
            conf_state,
            addresses: record
                .members
                .iter()
                .map(|m| (m.id, m.address.clone()))
                .collect(),
        }
    }
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
        .range::<_, ObjectKey>((Bound::Included(start), Bound::Unbounded))
        .take_while(move |(key, _)| {
            key.kind == kind && namespace.is_none_or(|ns| key.namespace == ns)
        })
        .map(|(_, object)| object)
}
