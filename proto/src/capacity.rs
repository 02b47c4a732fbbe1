//! What a node can hold: one rule, shared by the apiserver (which refuses a
//! bind that breaks it) and the scheduler (which plans with it), so that they
//! never disagree about whether a task fits.
//!
//! Per node:
//!
//! - prod requests ≤ allocatable;
//! - batch requests ≤ allocatable − prod requests + reclaimable, where
//!   reclaimable is what prod reserved but is not expected to use (never more
//!   than prod requests; only CPU and memory);
//! - extended resources (`gpu`): all requests ≤ allocatable.

use std::collections::BTreeMap;
use std::fmt;

use crate::pb;
use crate::quantity::{format_cpu, format_memory};

/// Summed requests (or a capacity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Amount {
    pub cpu: i64,
    pub memory: i64,
    pub extended: BTreeMap<String, i64>,
}

impl Amount {
    pub fn of(r: &pb::Resources) -> Amount {
        Amount {
            cpu: r.cpu_millis,
            memory: r.memory_bytes,
            extended: r.extended.clone(),
        }
    }

    /// Adds `other` times `sign` (1 or -1).
    pub fn add(&mut self, other: &Amount, sign: i64) {
        self.cpu += sign * other.cpu;
        self.memory += sign * other.memory;
        for (k, v) in &other.extended {
            let slot = self.extended.entry(k.clone()).or_default();
            *slot += sign * v;
            if *slot == 0 {
                self.extended.remove(k);
            }
        }
    }

    pub fn plus(&self, other: &Amount) -> Amount {
        let mut sum = self.clone();
        sum.add(other, 1);
        sum
    }

    pub fn minus(&self, other: &Amount) -> Amount {
        let mut rest = self.clone();
        rest.add(other, -1);
        rest
    }

    pub fn extended(&self, name: &str) -> i64 {
        self.extended.get(name).copied().unwrap_or(0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}, memory {}",
            format_cpu(self.cpu),
            format_memory(self.memory)
        )?;
        for (k, v) in &self.extended {
            write!(f, ", {k} {v}")?;
        }
        Ok(())
    }
}

/// A node's capacity and what prod lends to batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    pub allocatable: Amount,
    pub reclaimable_cpu: i64,
    pub reclaimable_memory: i64,
}

impl Capacity {
    pub fn of(node: &pb::Node) -> Capacity {
        let status = node.status.clone().unwrap_or_default();
        let reclaimable = status.reclaimable.unwrap_or_default();
        Capacity {
            allocatable: Amount::of(&status.allocatable.or(status.capacity).unwrap_or_default()),
            reclaimable_cpu: reclaimable.cpu_millis,
            reclaimable_memory: reclaimable.memory_bytes,
        }
    }

    /// Whether a node holding `prod` and `batch` requests is within bounds;
    /// the error names the resource that is not.
    pub fn check(&self, node: &str, prod: &Amount, batch: &Amount) -> Result<(), String> {
        let room = |resource: &str,
                    capacity: i64,
                    prod: i64,
                    batch: i64,
                    reclaimable: i64,
                    show: fn(i64) -> String| {
            if prod > capacity {
                return Err(format!(
                    "node {node} has {} of {resource} for prod, its prod tasks would ask {}",
                    show(capacity),
                    show(prod)
                ));
            }
            let borrowable = reclaimable.clamp(0, prod);
            if batch > capacity - prod + borrowable {
                return Err(format!(
                    "node {node}: batch tasks would ask {} of {resource}, but prod leaves {} \
                     (with {} reclaimed); preempt batch first",
                    show(batch),
                    show(capacity - prod),
                    show(borrowable)
                ));
            }
            Ok(())
        };
        let a = &self.allocatable;
        room(
            "cpu",
            a.cpu,
            prod.cpu,
            batch.cpu,
            self.reclaimable_cpu,
            format_cpu,
        )?;
        room(
            "memory",
            a.memory,
            prod.memory,
            batch.memory,
            self.reclaimable_memory,
            format_memory,
        )?;
        for (name, wanted) in prod.plus(batch).extended {
            let have = a.extended(&name);
            if wanted > have {
                return Err(format!(
                    "node {node} has {have} {name}, its tasks would ask {wanted}"
                ));
            }
        }
        Ok(())
    }

    /// Whether `asked` (prod or batch) fits next to `prod` and `batch`.
    pub fn check_add(
        &self,
        node: &str,
        prod: &Amount,
        batch: &Amount,
        asked: &Amount,
        is_prod: bool,
    ) -> Result<(), String> {
        if is_prod {
            self.check(node, &prod.plus(asked), batch)
        } else {
            self.check(node, prod, &batch.plus(asked))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(cpu: i64, gpu: i64) -> Amount {
        Amount {
            cpu,
            memory: 1,
            extended: if gpu > 0 {
                [("gpu".to_string(), gpu)].into()
            } else {
                BTreeMap::new()
            },
        }
    }

    fn capacity(cpu: i64, reclaimable: i64) -> Capacity {
        Capacity {
            allocatable: Amount {
                cpu,
                memory: 100,
                extended: [("gpu".to_string(), 1)].into(),
            },
            reclaimable_cpu: reclaimable,
            reclaimable_memory: 0,
        }
    }

    #[test]
    fn prod_fills_the_node_batch_fills_the_rest() {
        let c = capacity(4000, 0);
        let prod = amount(3000, 0);
        assert!(
            c.check_add("n", &prod, &Amount::default(), &amount(1000, 0), false)
                .is_ok()
        );
        let err = c
            .check_add("n", &prod, &Amount::default(), &amount(1001, 0), false)
            .unwrap_err();
        assert!(err.contains("prod leaves 1"), "{err}");
        assert!(
            c.check_add("n", &prod, &Amount::default(), &amount(1001, 0), true)
                .unwrap_err()
                .contains("for prod")
        );
    }

    #[test]
    fn batch_borrows_what_prod_does_not_use_and_prod_takes_it_back() {
        let c = capacity(4000, 2000);
        let (prod, batch) = (amount(3000, 0), amount(3000, 0));
        assert!(c.check("n", &prod, &batch).is_ok());
        assert!(
            c.check_add("n", &prod, &batch, &amount(1, 0), false)
                .is_err()
        );
        let err = c
            .check_add("n", &prod, &batch, &amount(500, 0), true)
            .unwrap_err();
        assert!(err.contains("preempt batch first"), "{err}");
    }

    #[test]
    fn extended_resources_are_never_borrowed() {
        let c = capacity(4000, 4000);
        let batch = amount(100, 1);
        assert!(
            c.check_add("n", &Amount::default(), &batch, &amount(100, 1), false)
                .unwrap_err()
                .contains("gpu")
        );
    }
}
