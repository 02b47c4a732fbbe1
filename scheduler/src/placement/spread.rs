//! Topology spread: a job's tasks across the values of a node label (zones,
//! racks), such that the fullest domain holds at most `max_skew` more than
//! the emptiest. As Kubernetes' `DoNotSchedule`: a placement that would
//! break it is not made; the task waits.

use std::collections::BTreeMap;

/// The job's task count per domain, over the domains its tasks may use.
#[derive(Debug, Clone)]
pub struct Spread {
    pub key: String,
    pub max_skew: u32,
    counts: BTreeMap<String, u32>,
}

impl Spread {
    /// `domains`: the label values of the nodes the class may use at all;
    /// `placed`: the domains of the job's tasks already holding a node.
    pub fn new(
        key: String,
        max_skew: u32,
        domains: impl IntoIterator<Item = String>,
        placed: impl IntoIterator<Item = String>,
    ) -> Spread {
        let mut counts: BTreeMap<String, u32> = domains.into_iter().map(|d| (d, 0)).collect();
        for domain in placed {
            if let Some(count) = counts.get_mut(&domain) {
                *count += 1;
            }
        }
        Spread {
            key,
            max_skew,
            counts,
        }
    }

    fn min(&self) -> u32 {
        self.counts.values().copied().min().unwrap_or(0)
    }

    /// Whether one more task in `domain` keeps the skew within bounds.
    pub fn allows(&self, domain: Option<&String>) -> bool {
        let Some(count) = domain.and_then(|d| self.counts.get(d)) else {
            return false; // a node without the label is no domain
        };
        count + 1 - self.min() <= self.max_skew
    }

    pub fn record(&mut self, domain: Option<&String>) {
        if let Some(count) = domain.and_then(|d| self.counts.get_mut(d)) {
            *count += 1;
        }
    }

    /// The largest difference between two domains.
    pub fn skew(&self) -> u32 {
        self.counts.values().copied().max().unwrap_or(0) - self.min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn the_fullest_domain_stays_within_skew_of_the_emptiest() {
        let mut s = Spread::new("zone".into(), 1, zones(), vec!["a".to_string()]);
        let a = "a".to_string();
        let b = "b".to_string();
        assert!(
            !s.allows(Some(&a)),
            "a has 1, c has 0: a second in a would skew by 2"
        );
        assert!(s.allows(Some(&b)));
        s.record(Some(&b));
        assert!(!s.allows(Some(&b)));
        assert!(s.allows(Some(&"c".to_string())));
        assert!(!s.allows(None));
        assert!(!s.allows(Some(&"elsewhere".to_string())));
        assert_eq!(s.skew(), 1);
    }
}
