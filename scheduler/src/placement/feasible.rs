//! Feasibility: can this node take a task of this class at all?
//!
//! Each filter is a small function; [`Why`] counts the reasons nodes were
//! turned down, for the message a pending task carries ("0 of 20 nodes fit:
//! 15 insufficient resources, 5 constraints").

use std::collections::BTreeMap;
use std::fmt;

use super::Class;
use crate::state::NodeView;

/// Why a node cannot take a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    NotReady,
    Cordoned,
    Constraints,
    AntiAffinity,
    Spread,
    Resources,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::NotReady => "not ready",
            Reason::Cordoned => "cordoned",
            Reason::Constraints => "constraints not met",
            Reason::AntiAffinity => "already runs the job's limit per node",
            Reason::Spread => "would break the spread",
            Reason::Resources => "insufficient resources",
        }
    }
}

/// Node state, labels and constraints: what does not change as tasks land.
pub fn static_filter(node: &NodeView, class: &Class) -> Result<(), Reason> {
    if !node.known || !node.ready {
        return Err(Reason::NotReady);
    }
    if node.cordoned {
        return Err(Reason::Cordoned);
    }
    if !class.constraints.matches(&node.labels) {
        return Err(Reason::Constraints);
    }
    Ok(())
}

/// Whether the class's requests fit next to what the node holds (the rule
/// the apiserver checks at bind time).
pub fn fits(node: &NodeView, class: &Class) -> bool {
    node.capacity
        .check_add(
            &node.name,
            &node.prod,
            &node.batch,
            &class.asked,
            class.prod,
        )
        .is_ok()
}

/// Anti-affinity: the job's tasks already on the node, against its limit.
pub fn below_per_node_limit(on_node: u32, class: &Class) -> bool {
    class.max_per_node == 0 || on_node < class.max_per_node
}

/// Counts of the reasons nodes were refused.
#[derive(Debug, Default)]
pub struct Why {
    pub nodes: usize,
    reasons: BTreeMap<Reason, usize>,
}

impl Why {
    pub fn new(nodes: usize) -> Why {
        Why {
            nodes,
            reasons: BTreeMap::new(),
        }
    }

    pub fn note(&mut self, reason: Reason) {
        *self.reasons.entry(reason).or_default() += 1;
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0 of {} nodes can take it", self.nodes)?;
        for (i, (reason, n)) in self.reasons.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{n} {}", reason.text())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::{class, view};
    use berth_proto::pb;

    #[test]
    fn each_filter_refuses_for_its_reason() {
        let c = class(pb::Tier::Batch, 1000, "zone=a");
        let mut n = view("n1", 4000, &[("zone", "a")]);
        assert_eq!(static_filter(&n, &c), Ok(()));
        n.ready = false;
        assert_eq!(static_filter(&n, &c), Err(Reason::NotReady));
        n.ready = true;
        n.cordoned = true;
        assert_eq!(static_filter(&n, &c), Err(Reason::Cordoned));
        let other_zone = view("n2", 4000, &[("zone", "b")]);
        assert_eq!(static_filter(&other_zone, &c), Err(Reason::Constraints));
    }

    #[test]
    fn resources_follow_the_shared_capacity_rule() {
        let c = class(pb::Tier::Batch, 1000, "");
        let mut n = view("n1", 4000, &[]);
        assert!(fits(&n, &c));
        n.prod.cpu = 3500;
        assert!(!fits(&n, &c));
        n.capacity.reclaimable_cpu = 600;
        assert!(fits(&n, &c), "batch may borrow what prod does not use");
    }

    #[test]
    fn anti_affinity_caps_tasks_per_node() {
        let mut c = class(pb::Tier::Prod, 100, "");
        assert!(below_per_node_limit(5, &c));
        c.max_per_node = 1;
        assert!(below_per_node_limit(0, &c));
        assert!(!below_per_node_limit(1, &c));
    }

    #[test]
    fn reasons_read_like_a_sentence() {
        let mut why = Why::new(20);
        for _ in 0..15 {
            why.note(Reason::Resources);
        }
        for _ in 0..5 {
            why.note(Reason::Constraints);
        }
        assert_eq!(
            why.to_string(),
            "0 of 20 nodes can take it: 5 constraints not met, 15 insufficient resources"
        );
    }
}
