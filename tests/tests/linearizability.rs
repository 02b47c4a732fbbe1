//! The history checker against ground truth: every labelled Jepsen etcd
//! history in `../shared/histories/jepsen-etcd/` (23 linearizable, 79 not)
//! must get its known verdict before the checker may judge Berth.

use std::path::PathBuf;
use std::time::Instant;

use berth_tests::linearizability::{Verdict, check, parse_jepsen};

/// Where the labelled histories are: `BERTH_HISTORIES`, else the shared
/// folder beside the repository.
fn histories() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("BERTH_HISTORIES").map(PathBuf::from),
        Some(berth_tests::repo_root().join("../shared/histories")),
        Some(PathBuf::from("/work/shared/histories")),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|dir| dir.join("jepsen-etcd"))
        .find(|dir| dir.join("verdicts.csv").is_file())
}

#[test]
fn the_checker_reproduces_every_known_verdict() {
    let Some(dir) = histories() else {
        assert!(
            std::env::var("BERTH_REQUIRE_HISTORIES").is_err(),
            "no labelled histories found (set BERTH_HISTORIES)"
        );
        eprintln!(
            "SKIPPED: no ../shared/histories/jepsen-etcd/verdicts.csv beside the repository (set BERTH_HISTORIES)"
        );
        return;
    };
    let verdicts = std::fs::read_to_string(dir.join("verdicts.csv")).expect("verdicts.csv");
    let (mut linearizable, mut not, mut wrong) = (0, 0, Vec::new());
    let started = Instant::now();
    for line in verdicts.lines().skip(1) {
        let Some((file, expected)) = line.trim().split_once(',') else {
            continue;
        };
        let expected: bool = expected.parse().expect("true or false");
        let log = std::fs::read_to_string(dir.join(file)).expect("history");
        let history = parse_jepsen(&log).unwrap_or_else(|e| panic!("{file}: {e}"));
        let verdict = check(&history, None, 0);
        let got = match verdict {
            Verdict::Linearizable => true,
            Verdict::NotLinearizable { .. } => false,
            Verdict::Unknown { .. } => unreachable!("no budget was set"),
        };
        if got {
            linearizable += 1;
        } else {
            not += 1;
        }
        if got != expected {
            wrong.push(format!("{file}: expected {expected}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
    assert_eq!((linearizable, not), (23, 79), "the labelled set changed?");
    eprintln!(
        "102 histories checked in {:.2?}: {linearizable} linearizable, {not} not, all as labelled",
        started.elapsed()
    );
}
