//! A linearizability checker for histories of one register with read,
//! write and compare-and-set — the shape of Jepsen's etcd and Knossos
//! register tests, and of what the fault harness records per Berth object.
//!
//! The algorithm is Wing & Gong's search with Lowe's memoization, as
//! porcupine implements it: walk the history's call and return events in
//! time order; at a call, try to linearize that operation now (if the model
//! accepts it from the current state and this set of linearized operations
//! with this state was not tried before), removing its call and return from
//! the list; at a return whose call is still pending, the last choice was
//! wrong: undo it and try the next candidate. The history is linearizable
//! when every operation has been linearized.
//!
//! Operations whose outcome is unknown (Jepsen's `:info`: a timeout, a
//! crash) may have taken effect at any point after their call, or never:
//! they return at the end of the history and the model accepts any result
//! from them, so the search can place them anywhere after the call —
//! including after everything else, which is "never" for the others.

use std::collections::{HashMap, HashSet};

/// The register's value; `None` is "absent" (Jepsen's `nil`).
pub type Value = Option<i64>;

/// What an operation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Read,
    Write(i64),
    /// Compare-and-set: if the value is `from`, make it `to`.
    Cas {
        from: i64,
        to: i64,
    },
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A read that returned this value.
    Read(Value),
    /// A write, or a compare-and-set that swapped.
    Done,
    /// A compare-and-set whose comparison failed: nothing changed.
    CasFailed,
    /// Unknown: it may or may not have taken effect.
    Unknown,
}

/// One operation of a history. `call` and `ret` are positions in one
/// total order of events (e.g. line numbers, or nanoseconds); `ret` is
/// `None` for an operation that never returned (outcome unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub process: u64,
    pub input: Input,
    pub output: Output,
    pub call: u64,
    pub ret: Option<u64>,
}

/// The register model: the new value if `op` may happen now.
fn step(state: Value, input: Input, output: Output) -> Option<Value> {
    match (input, output) {
        (Input::Read, Output::Read(v)) => (v == state).then_some(state),
        (Input::Read, _) => Some(state),
        (Input::Write(v), _) => Some(Some(v)),
        (Input::Cas { from, to }, Output::Done) => (state == Some(from)).then_some(Some(to)),
        (Input::Cas { from, .. }, Output::CasFailed) => (state != Some(from)).then_some(state),
        (Input::Cas { from, to }, _) => Some(if state == Some(from) { Some(to) } else { state }),
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order fits. `longest` is the largest set of operations (indexes
    /// into the history) the search managed to linearize: the violation is
    /// among the operations that overlap the first one left out.
    NotLinearizable {
        longest: Vec<usize>,
    },
    /// The search gave up after `budget` steps.
    Unknown {
        budget: u64,
    },
}

/// A set of operation indexes, as words of bits (a cache key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
    fn members(&self) -> Vec<usize> {
        (0..self.0.len() * 64)
            .filter(|i| self.0[i / 64] & (1 << (i % 64)) != 0)
            .collect()
    }
}

/// Leaves out operations of unknown outcome whose effect nobody observed:
/// a write or compare-and-set whose value no read returned and no
/// compare-and-set expected. Placing such an operation after everything
/// else is always allowed, and without failed compare-and-sets (whose
/// verdict depends on the value *not* being something) nothing else can
/// depend on it either — so the verdict is the same, and the search no
/// longer tries every position for each of them (a run with many timeouts
/// otherwise explodes). Returns the kept operations' original indexes.
fn without_unobserved_unknowns(history: &[Operation]) -> Option<Vec<usize>> {
    if history.iter().any(|op| op.output == Output::CasFailed) {
        return None;
    }
    let mut observed: HashSet<i64> = HashSet::new();
    for op in history {
        if let Output::Read(Some(v)) = op.output {
            observed.insert(v);
        }
        if let Input::Cas { from, .. } = op.input {
            observed.insert(from);
        }
    }
    let kept: Vec<usize> = (0..history.len())
        .filter(|&i| {
            let op = &history[i];
            let written = match op.input {
                Input::Write(v) | Input::Cas { to: v, .. } => v,
                Input::Read => return true,
            };
            op.output != Output::Unknown || observed.contains(&written)
        })
        .collect();
    (kept.len() < history.len()).then_some(kept)
}

/// Checks one register's history, starting from `initial`, giving up after
/// `budget` search steps (0: never).
pub fn check(history: &[Operation], initial: Value, budget: u64) -> Verdict {
    if let Some(kept) = without_unobserved_unknowns(history) {
        let pruned: Vec<Operation> = kept.iter().map(|&i| history[i].clone()).collect();
        return match search(&pruned, initial, budget) {
            Verdict::NotLinearizable { longest } => Verdict::NotLinearizable {
                longest: longest.into_iter().map(|i| kept[i]).collect(),
            },
            verdict => verdict,
        };
    }
    search(history, initial, budget)
}

fn search(history: &[Operation], initial: Value, budget: u64) -> Verdict {
    let n = history.len();
    // Events: (time, is_return, op). Calls sort before returns at the same
    // time; operations without a return end after everything else.
    let end = history
        .iter()
        .flat_map(|op| [Some(op.call), op.ret])
        .flatten()
        .max()
        .unwrap_or(0)
        + 1;
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        events.push((op.call, false, i));
        events.push((op.ret.unwrap_or(end), true, i));
    }
    events.sort();
    // A doubly linked list over the events; node 0 is the head, event k is
    // node k + 1, and `len + 1` ends it.
    let len = events.len();
    let tail = len + 1;
    let mut next: Vec<usize> = (1..=len + 1).chain([tail]).collect();
    let mut prev: Vec<usize> = [0].into_iter().chain(0..=len).collect();
    let mut return_node = vec![0; n];
    for (k, (_, is_return, op)) in events.iter().enumerate() {
        if *is_return {
            return_node[*op] = k + 1;
        }
    }
    let op_of = |node: usize| events[node - 1].2;
    let is_return = |node: usize| events[node - 1].1;

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = node;
        prev[q] = node;
    };

    let mut state = initial;
    let mut linearized = Bits::new(n);
    let mut longest = Bits::new(n);
    let mut tried: HashSet<(Bits, Value)> = HashSet::new();
    // (call node of the operation linearized, state before it)
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut node = next[0];
    let mut steps = 0u64;
    while next[0] != tail {
        steps += 1;
        if budget > 0 && steps > budget {
            return Verdict::Unknown { budget };
        }
        if !is_return(node) {
            let op = op_of(node);
            let candidate = &history[op];
            if let Some(after) = step(state, candidate.input, candidate.output) {
                let mut with = linearized.clone();
                with.set(op);
                if tried.insert((with.clone(), after)) {
                    stack.push((node, state));
                    state = after;
                    linearized = with;
                    if linearized.count() > longest.count() {
                        longest = linearized.clone();
                    }
                    // Lift the call and its return out of the list (in this
                    // order, so that relinking in reverse restores it).
                    unlink(&mut next, &mut prev, node);
                    unlink(&mut next, &mut prev, return_node[op]);
                    node = next[0];
                    continue;
                }
            }
            node = next[node];
        } else {
            // A return whose call is still pending: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return Verdict::NotLinearizable {
                    longest: longest.members(),
                };
            };
            let op = op_of(call);
            state = before;
            linearized.clear(op);
            relink(&mut next, &mut prev, return_node[op]);
            relink(&mut next, &mut prev, call);
            node = next[call];
        }
    }
    Verdict::Linearizable
}

/// Why a Jepsen log could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

fn parse_value(text: &str, line: usize) -> Result<Value, ParseError> {
    match text {
        "nil" => Ok(None),
        v => v.parse().map(Some).map_err(|_| ParseError {
            line,
            reason: format!("{v:?} is not a value"),
        }),
    }
}

/// Reads a Jepsen register log (`INFO jepsen.util - PROCESS\t:TYPE\t:F\tVALUE`
/// lines; tabs or spaces) into a history. A `:fail`ed read or write did not
/// happen and is left out; a `:fail`ed compare-and-set is one whose
/// comparison failed; `:info` is an unknown outcome, as is an operation
/// still pending at the end.
pub fn parse_jepsen(log: &str) -> Result<Vec<Operation>, ParseError> {
    let mut pending: HashMap<u64, (u64, Input)> = HashMap::new();
    let mut history = Vec::new();
    for (index, text) in log.lines().enumerate() {
        let line = index + 1;
        let Some((_, event)) = text.split_once("jepsen.util - ") else {
            continue;
        };
        let mut fields = event.split_whitespace();
        let (Some(process), Some(kind), Some(f)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(process) = process.parse::<u64>() else {
            // The nemesis and other non-client lines.
            continue;
        };
        let value = fields.collect::<Vec<_>>().join(" ");
        let bad = |reason: String| ParseError { line, reason };
        let time = line as u64;
        match kind {
            ":invoke" => {
                let input = match f {
                    ":read" => Input::Read,
                    ":write" => Input::Write(
                        parse_value(&value, line)?.ok_or_else(|| bad("write of nil".into()))?,
                    ),
                    ":cas" => {
                        let pair: Vec<&str> = value
                            .trim_matches(|c| c == '[' || c == ']')
                            .split_whitespace()
                            .collect();
                        let [from, to] = pair[..] else {
                            return Err(bad(format!("{value:?} is not [from to]")));
                        };
                        let number = |t: &str| {
                            t.parse::<i64>()
                                .map_err(|_| bad(format!("{t:?} is not a number")))
                        };
                        Input::Cas {
                            from: number(from)?,
                            to: number(to)?,
                        }
                    }
                    other => return Err(bad(format!("unknown operation {other}"))),
                };
                if pending.insert(process, (time, input)).is_some() {
                    return Err(bad(format!("process {process} invoked twice")));
                }
            }
            ":ok" | ":fail" | ":info" => {
                let Some((call, input)) = pending.remove(&process) else {
                    return Err(bad(format!("process {process} completes nothing")));
                };
                let (output, ret) = match (kind, input) {
                    (":ok", Input::Read) => (Output::Read(parse_value(&value, line)?), Some(time)),
                    (":ok", _) => (Output::Done, Some(time)),
                    (":fail", Input::Cas { .. }) => (Output::CasFailed, Some(time)),
                    // A failed read or write did not happen.
                    (":fail", _) => continue,
                    _ => (Output::Unknown, None),
                };
                history.push(Operation {
                    process,
                    input,
                    output,
                    call,
                    ret,
                });
            }
            _ => {}
        }
    }
    for (process, (call, input)) in pending {
        history.push(Operation {
            process,
            input,
            output: Output::Unknown,
            call,
            ret: None,
        });
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(input: Input, output: Output, call: u64, ret: u64) -> Operation {
        Operation {
            process: call,
            input,
            output,
            call,
            ret: Some(ret),
        }
    }

    #[test]
    fn sequential_histories() {
        let ok = [
            op(Input::Write(1), Output::Done, 0, 1),
            op(Input::Read, Output::Read(Some(1)), 2, 3),
            op(Input::Cas { from: 1, to: 2 }, Output::Done, 4, 5),
            op(Input::Cas { from: 1, to: 3 }, Output::CasFailed, 6, 7),
            op(Input::Read, Output::Read(Some(2)), 8, 9),
        ];
        assert_eq!(check(&ok, None, 0), Verdict::Linearizable);
        // A stale read after the write returned.
        let stale = [
            op(Input::Write(1), Output::Done, 0, 1),
            op(Input::Read, Output::Read(None), 2, 3),
        ];
        assert!(matches!(
            check(&stale, None, 0),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write: it may see either value.
        for seen in [None, Some(1)] {
            let h = [
                op(Input::Write(1), Output::Done, 0, 3),
                op(Input::Read, Output::Read(seen), 1, 2),
            ];
            assert_eq!(check(&h, None, 0), Verdict::Linearizable, "{seen:?}");
        }
        // Two reads that disagree about the order of two writes.
        let h = [
            op(Input::Write(1), Output::Done, 0, 10),
            op(Input::Write(2), Output::Done, 1, 11),
            op(Input::Read, Output::Read(Some(1)), 2, 3),
            op(Input::Read, Output::Read(Some(2)), 4, 5),
            op(Input::Read, Output::Read(Some(1)), 6, 7),
        ];
        assert!(matches!(
            check(&h, None, 0),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_happen() {
        let lost = Operation {
            process: 9,
            input: Input::Write(5),
            output: Output::Unknown,
            call: 0,
            ret: None,
        };
        for seen in [None, Some(5)] {
            let h = [lost.clone(), op(Input::Read, Output::Read(seen), 1, 2)];
            assert_eq!(check(&h, None, 0), Verdict::Linearizable, "{seen:?}");
        }
        // But once seen, it cannot be unseen.
        let h = [
            lost,
            op(Input::Read, Output::Read(Some(5)), 1, 2),
            op(Input::Read, Output::Read(None), 3, 4),
        ];
        assert!(matches!(
            check(&h, None, 0),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn unobserved_unknown_writes_are_left_out_without_changing_the_verdict() {
        let mut h = vec![op(Input::Write(1), Output::Done, 0, 1)];
        // Many timed-out writes nobody saw: the search must not try them all.
        for i in 0..200 {
            h.push(Operation {
                process: 100 + i,
                input: Input::Write(1000 + i as i64),
                output: Output::Unknown,
                call: 2 + i,
                ret: None,
            });
        }
        h.push(op(Input::Read, Output::Read(Some(1)), 300, 301));
        assert_eq!(check(&h, None, 100_000), Verdict::Linearizable);
        // One that was seen stays, and still fits.
        h.push(op(Input::Read, Output::Read(Some(1005)), 302, 303));
        assert_eq!(check(&h, None, 100_000), Verdict::Linearizable);
        // A stale read after it is still caught.
        h.push(op(Input::Read, Output::Read(Some(1)), 304, 305));
        assert!(matches!(
            check(&h, None, 100_000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn jepsen_logs_parse() {
        let log = "INFO  jepsen.util - 0\t:invoke\t:write\t4\n\
                   INFO  jepsen.util - 1   :invoke :cas    [4 2]\n\
                   INFO  jepsen.util - 0\t:ok\t:write\t4\n\
                   INFO  jepsen.util - 1\t:fail\t:cas\t[4 2]\n\
                   INFO  jepsen.util - 2\t:invoke\t:read\tnil\n\
                   INFO  jepsen.util - 2\t:info\t:read\t:timed-out\n\
                   INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n";
        let h = parse_jepsen(log).expect("parses");
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].input, Input::Write(4));
        assert_eq!(h[1].output, Output::CasFailed);
        assert_eq!((h[2].output, h[2].ret), (Output::Unknown, None));
        // The cas failed although 4 had been written before it returned:
        // fine, it may have compared before the write.
        assert_eq!(check(&h, None, 0), Verdict::Linearizable);
    }
}
