//! Label selectors in the Kubernetes syntax.
//!
//! `app=web`, `app==web`, `tier!=batch`, `zone in (a,b)`, `zone notin (c)`,
//! `gpu` (the label exists), `!legacy` (it does not), joined by commas; every
//! requirement must hold. The same matcher evaluates job constraints against
//! node labels.

use std::collections::BTreeMap;
use std::fmt;

use crate::pb;
use crate::validate::{check_label_key, check_label_value};

/// A parsed selector: a conjunction of requirements. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector {input:?}: {reason}")]
pub struct SelectorError {
    input: String,
    reason: String,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Parses the Kubernetes selector syntax.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let fail = |reason: String| SelectorError {
            input: input.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        for term in split_terms(input).map_err(|r| fail(r.to_string()))? {
            let term = term.trim();
            if term.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(fail("empty requirement between commas".into()));
            }
            let requirement =
                parse_term(term).map_err(|reason| fail(format!("{term:?}: {reason}")))?;
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    /// Builds a selector from job constraints; the caller validated them.
    pub fn from_constraints(constraints: &[pb::LabelRequirement]) -> Selector {
        let requirements = constraints
            .iter()
            .map(|c| Requirement {
                key: c.key.clone(),
                op: match c.operator() {
                    pb::Operator::In | pb::Operator::Unspecified => Op::In(c.values.clone()),
                    pb::Operator::NotIn => Op::NotIn(c.values.clone()),
                    pb::Operator::Exists => Op::Exists,
                    pb::Operator::DoesNotExist => Op::DoesNotExist,
                },
            })
            .collect();
        Selector { requirements }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::In(values) => value.is_some_and(|v| values.contains(v)),
            Op::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                Op::In(v) if v.len() == 1 => write!(f, "{}={}", r.key, v[0])?,
                Op::NotIn(v) if v.len() == 1 => write!(f, "{}!={}", r.key, v[0])?,
                Op::In(v) => write!(f, "{} in ({})", r.key, v.join(","))?,
                Op::NotIn(v) => write!(f, "{} notin ({})", r.key, v.join(","))?,
                Op::Exists => write!(f, "{}", r.key)?,
                Op::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

/// Splits at commas that are not inside parentheses.
fn split_terms(input: &str) -> Result<Vec<&str>, &'static str> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced ')'")?,
            ',' if depth == 0 => {
                terms.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('");
    }
    terms.push(&input[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    let key_checked = |key: &str| -> Result<String, String> {
        let key = key.trim();
        check_label_key(key)?;
        Ok(key.to_string())
    };
    let value_checked = |value: &str| -> Result<String, String> {
        let value = value.trim();
        check_label_value(value)?;
        Ok(value.to_string())
    };

    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement {
            key: key_checked(key)?,
            op: Op::DoesNotExist,
        });
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement {
            key: key_checked(key)?,
            op: Op::NotIn(vec![value_checked(value)?]),
        });
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement {
            key: key_checked(key)?,
            op: Op::In(vec![value_checked(value)?]),
        });
    }
    if let Some(open) = term.find('(') {
        let close = term
            .rfind(')')
            .filter(|c| *c == term.len() - 1)
            .ok_or("a value set must end with ')'")?;
        let mut words = term[..open].split_whitespace();
        let (key, op) = match (words.next(), words.next(), words.next()) {
            (Some(key), Some(op), None) => (key, op),
            _ => return Err("expected `key in (v1,v2)` or `key notin (v1,v2)`".into()),
        };
        let values = term[open + 1..close]
            .split(',')
            .map(value_checked)
            .collect::<Result<Vec<_>, _>>()?;
        let op = match op {
            "in" => Op::In(values),
            "notin" => Op::NotIn(values),
            other => return Err(format!("unknown operator {other:?}; use in or notin")),
        };
        return Ok(Requirement {
            key: key_checked(key)?,
            op,
        });
    }
    Ok(Requirement {
        key: key_checked(term)?,
        op: Op::Exists,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_form() {
        let s =
            Selector::parse("app=web, tier!=batch,zone in (a, b),rack notin (r1),gpu,!legacy,x==y")
                .unwrap();
        assert_eq!(s.requirements().len(), 7);
        assert_eq!(
            s.to_string(),
            "app=web,tier!=batch,zone in (a,b),rack!=r1,gpu,!legacy,x=y"
        );
    }

    #[test]
    fn matches_labels() {
        let s = Selector::parse("app=web,zone in (a,b),!legacy").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("zone", "c")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("zone", "a"), ("legacy", "")])));
        assert!(!s.matches(&labels(&[("zone", "a")])));
        let s = Selector::parse("tier!=batch").unwrap();
        assert!(
            s.matches(&labels(&[])),
            "absent label is not equal to batch"
        );
        assert!(Selector::parse("").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "=web",
            "a,,b",
            "zone in (a",
            "zone of (a)",
            "bad key=v",
            "!",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
