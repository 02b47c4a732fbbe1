//! Preemption: a prod task that fits nowhere may evict batch tasks — the
//! fewest, lowest-priority ones that make it fit (Borg). Batch never evicts
//! prod, and prod never evicts prod.

use berth_proto::capacity::Amount;
use berth_proto::object::ObjectKey;

use super::Class;
use crate::state::NodeView;

/// A batch task that could be evicted.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: ObjectKey,
    pub priority: i32,
    pub asked: Amount,
}

/// The victims that would make room on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub victims: Vec<ObjectKey>,
    /// The highest priority among the victims (lower is a better choice).
    pub worst_priority: i32,
}

impl Eviction {
    /// The better of two evictions: fewer victims, then lower priorities.
    pub fn cost(&self) -> (usize, i32) {
        (self.victims.len(), self.worst_priority)
    }
}

/// The fewest, lowest-priority batch tasks on `node` whose eviction makes
/// room for a prod task of `class`; `None` if evicting all of them would
/// not be enough. `batch` lists the node's batch tasks.
pub fn evict_for(node: &NodeView, class: &Class, mut batch: Vec<Candidate>) -> Option<Eviction> {
    if !class.prod {
        return None;
    }
    let fits = |remaining: &Amount| {
        node.capacity
            .check_add(&node.name, &node.prod, remaining, &class.asked, true)
            .is_ok()
    };
    if fits(&node.batch) {
        return Some(Eviction {
            victims: Vec::new(),
            worst_priority: i32::MIN,
        });
    }
    // Lowest priority first; among equals, the largest first (fewer victims).
    batch.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.asked.cpu.cmp(&a.asked.cpu))
            .then(b.asked.memory.cmp(&a.asked.memory))
            .then(a.key.cmp(&b.key))
    });
    let mut remaining = node.batch.clone();
    let mut chosen: Vec<Candidate> = Vec::new();
    for candidate in batch {
        remaining.add(&candidate.asked, -1);
        chosen.push(candidate);
        if fits(&remaining) {
            // Spare the victims that turned out unnecessary (a larger one
            // taken later may have made an earlier small one superfluous).
            let mut i = 0;
            while i < chosen.len() {
                let spared = remaining.plus(&chosen[i].asked);
                if fits(&spared) {
                    remaining = spared;
                    chosen.remove(i);
                } else {
                    i += 1;
                }
            }
            return Some(Eviction {
                worst_priority: chosen.iter().map(|c| c.priority).max().unwrap_or(i32::MIN),
                victims: chosen.into_iter().map(|c| c.key).collect(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::{class, view};
    use berth_proto::pb;

    fn candidate(name: &str, priority: i32, cpu: i64) -> Candidate {
        Candidate {
            key: ObjectKey::new(pb::Kind::Task, "default", name),
            priority,
            asked: Amount {
                cpu,
                memory: 0,
                ..Default::default()
            },
        }
    }

    #[test]
    fn evicts_the_fewest_lowest_priority_batch_tasks() {
        let c = class(pb::Tier::Prod, 2000, "");
        let mut n = view("n1", 4000, &[]);
        n.batch.cpu = 4000;
        let batch = vec![
            candidate("low-small", 1, 1000),
            candidate("low-big", 1, 2000),
            candidate("high", 50, 1000),
        ];
        let eviction = evict_for(&n, &c, batch).unwrap();
        assert_eq!(
            eviction.victims,
            vec![ObjectKey::new(pb::Kind::Task, "default", "low-big")]
        );
        assert_eq!(eviction.worst_priority, 1);
    }

    #[test]
    fn batch_never_preempts_and_prod_is_never_a_victim() {
        let mut n = view("n1", 4000, &[]);
        n.prod.cpu = 4000;
        let prod = class(pb::Tier::Prod, 1000, "");
        assert!(
            evict_for(&n, &prod, vec![]).is_none(),
            "only prod holds the node"
        );
        let batch = class(pb::Tier::Batch, 1000, "");
        n.prod.cpu = 0;
        n.batch.cpu = 4000;
        assert!(evict_for(&n, &batch, vec![candidate("b", 0, 4000)]).is_none());
    }
}
