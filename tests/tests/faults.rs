//! Randomized fault runs against three real `berth-apiserver` members on
//! loopback: concurrent clients read, write and compare-and-set a few
//! registers (namespaces whose `value` label is the register) while a
//! nemesis kills members with SIGKILL and restarts them, pauses them with
//! SIGSTOP/SIGCONT, and cuts one off from the others (each member runs in a
//! network namespace of its own and the cut is an iptables rule there; the
//! transport's fault injection where namespaces are not available),
//! restarts all of them at once, or replaces one: removed from the
//! membership, its machine wiped, a new empty member with a new id added
//! back at its address (joint consensus). Afterwards every register's
//! history must be linearizable — which also means no acknowledged write was
//! lost: the final reads come after everything else — and a watcher that
//! followed the registers throughout (resuming on another member whenever
//! its stream broke) must have seen every acknowledged write, each change
//! once, in revision order, ending equal to the final state.
//!
//! `BERTH_SEED` replays a run's choices; `BERTH_FAULT_SECONDS` (default 12)
//! sets its length. A failing run prints its seed, the faults and the part
//! of the history where no order fits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use berth_tests::Cluster;
use berth_tests::linearizability::{Input, Operation, Output, Verdict, check};
use berth_tests::nemesis::{Rng, seconds_from_env, seed_from_env};
use tonic::Code;

const KEYS: usize = 3;
const CLIENTS: usize = 6;
const LABEL: &str = "value";

fn key(i: usize) -> String {
    format!("register-{i}")
}

fn register(name: &str, value: i64, resource_version: u64) -> pb::Object {
    pb::Object::from(pb::Namespace {
        metadata: Some(pb::ObjectMeta {
            name: name.to_string(),
            labels: [(LABEL.to_string(), value.to_string())].into(),
            resource_version,
            ..Default::default()
        }),
        spec: Some(pb::NamespaceSpec::default()),
    })
}

fn value_of(object: &pb::Object) -> Option<i64> {
    object.labels()?.get(LABEL)?.parse().ok()
}

/// A refusal that proves the write did not happen.
fn definitely_refused(code: Code) -> bool {
    matches!(
        code,
        Code::Aborted
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::ResourceExhausted
    )
}

type History = Arc<Mutex<Vec<(usize, Operation)>>>;

struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Reads a register; records the read if it got an answer.
async fn read(
    client: &BerthClient,
    k: usize,
    process: u64,
    clock: &Clock,
    history: &History,
) -> Option<(Option<i64>, u64)> {
    // BERTH_FAULT_STALE_READS=1 reads members' local state without a
    // quorum: the checker should then find violations (it does), which
    // shows that it can.
    let stale = std::env::var("BERTH_FAULT_STALE_READS").is_ok_and(|v| v == "1");
    let request = pb::GetRequest {
        kind: pb::Kind::Namespace as i32,
        namespace: String::new(),
        name: key(k),
        stale,
    };
    let call = clock.now();
    let answer = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.get(request).await }
        })
        .await
        .map(tonic::Response::into_inner);
    let ret = clock.now();
    let (value, version) = match answer {
        Ok(object) => (value_of(&object), object.resource_version()),
        Err(status) if status.code() == Code::NotFound => (None, 0),
        Err(_) => return None,
    };
    history.lock().unwrap_or_else(|e| e.into_inner()).push((
        k,
        Operation {
            process,
            input: Input::Read,
            output: Output::Read(value),
            call,
            ret: Some(ret),
        },
    ));
    Some((value, version))
}

/// Writes (at `version`, if not 0: then it is a compare-and-set from
/// `from`); records the outcome unless the write was refused.
#[allow(clippy::too_many_arguments)]
async fn write(
    client: &BerthClient,
    k: usize,
    value: i64,
    cas_from: Option<(i64, u64)>,
    process: u64,
    clock: &Clock,
    history: &History,
) {
    let version = cas_from.map_or(0, |(_, v)| v);
    let call = clock.now();
    let answer = client.apply(register(&key(k), value, version), false).await;
    let ret = clock.now();
    let (output, ret) = match answer {
        Ok(_) => (Output::Done, Some(ret)),
        Err(status) if definitely_refused(status.code()) => return,
        Err(_) => (Output::Unknown, None),
    };
    let input = match cas_from {
        Some((from, _)) => Input::Cas { from, to: value },
        None => Input::Write(value),
    };
    history.lock().unwrap_or_else(|e| e.into_inner()).push((
        k,
        Operation {
            process,
            input,
            output,
            call,
            ret,
        },
    ));
}

/// One change a watcher saw: revision, register, value.
type Seen = (u64, String, Option<i64>);

/// Follows the registers from `from` until `stop` is set and it has seen
/// revision `until`, resuming on the next member after each broken stream
/// from the last revision it saw, as every Berth component does.
async fn watch_registers(
    servers: Vec<String>,
    from: u64,
    stop: Arc<AtomicBool>,
    until: Arc<AtomicU64>,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut last = from;
    let mut server = 0;
    loop {
        if stop.load(Ordering::Relaxed) && last >= until.load(Ordering::Relaxed) {
            return seen;
        }
        server = (server + 1) % servers.len();
        let client = BerthClient::new(&servers[server..=server]).expect("server");
        let request = pb::WatchRequest {
            kind: pb::Kind::Namespace as i32,
            from_revision: last,
            ..Default::default()
        };
        let Ok(stream) = client.objects().watch(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
            let event = match next {
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None) | Err(_)) => break,
                // Quiet: time to look at `stop` again.
                Err(_) => {
                    if stop.load(Ordering::Relaxed) && last >= until.load(Ordering::Relaxed) {
                        return seen;
                    }
                    continue;
                }
            };
            if event.r#type() == pb::WatchEventType::Bookmark {
                last = last.max(event.revision);
                continue;
            }
            if let Some(object) = &event.object {
                seen.push((event.revision, object.name().to_string(), value_of(object)));
            }
            last = event.revision;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_stay_linearizable_under_crashes_pauses_partitions_and_replacements() {
    fault_run(3, 12).await;
}

/// Five members: partitions can split them into a majority and a minority,
/// or bridge two halves that only reach each other through one member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_stay_linearizable_under_splits_bridges_and_isolated_leaders() {
    fault_run(5, 12).await;
}

/// The slots `1..=n` in a random order.
fn shuffled(rng: &mut Rng, n: u64) -> Vec<u64> {
    let mut slots: Vec<u64> = (1..=n).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.below(i as u64 + 1) as usize);
    }
    slots
}

/// Every link between a slot of `left` and one of `right`.
fn links_between(left: &[u64], right: &[u64]) -> Vec<(u64, u64)> {
    left.iter()
        .flat_map(|a| right.iter().map(move |b| (*a, *b)))
        .collect()
}

/// A partition the nemesis picks: its kind, its description and the links
/// it cuts.
async fn pick_partition(
    rng: &mut Rng,
    cluster: &Cluster,
    n: u64,
) -> (&'static str, String, Vec<(u64, u64)>) {
    let slots = shuffled(rng, n);
    let name = |group: &[u64]| -> String {
        let ids: Vec<String> = group
            .iter()
            .map(|s| cluster.member_id(*s).to_string())
            .collect();
        format!("{{{}}}", ids.join(","))
    };
    let kinds = if n >= 5 { 4 } else { 3 };
    match rng.below(kinds) {
        0 => {
            let (one, rest) = slots.split_at(1);
            (
                "one member cut off",
                format!("member {} cut off", name(one)),
                links_between(one, rest),
            )
        }
        1 => {
            // The leader alone: it must step down (check quorum), and a
            // new leader is elected on the other side.
            let mut leader = slots[0];
            for slot in 1..=n {
                if cluster
                    .status(slot)
                    .await
                    .is_some_and(|s| s.role == "leader")
                {
                    leader = slot;
                }
            }
            let rest: Vec<u64> = (1..=n).filter(|s| *s != leader).collect();
            (
                "leader cut off",
                format!("the leader {} cut off", name(&[leader])),
                links_between(&[leader], &rest),
            )
        }
        2 => {
            let (minority, majority) = slots.split_at(((n - 1) / 2) as usize);
            (
                "majority/minority split",
                format!("split into {} and {}", name(minority), name(majority)),
                links_between(minority, majority),
            )
        }
        _ => {
            // A bridge: two halves that see one member in the middle but
            // not each other.
            let (bridge, rest) = slots.split_at(1);
            let (left, right) = rest.split_at(rest.len() / 2);
            (
                "bridge",
                format!(
                    "{} and {} see each other only through {}",
                    name(left),
                    name(right),
                    name(bridge)
                ),
                links_between(left, right),
            )
        }
    }
}

/// Seeded runs against `n` members: `BERTH_FAULT_RUNS` of them (default
/// 1; more for a soak), each `default_seconds` long unless
/// `BERTH_FAULT_SECONDS` says otherwise.
async fn fault_run(n: u64, default_seconds: u64) {
    let first_seed = seed_from_env();
    let seconds = seconds_from_env(default_seconds);
    let runs: u64 = std::env::var("BERTH_FAULT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for run in 0..runs {
        one_run(n, seconds, first_seed.wrapping_add(run)).await;
    }
}

async fn one_run(n: u64, seconds: u64, seed: u64) {
    eprintln!(
        "fault run: {n} members, seed {seed}, {seconds}s (BERTH_SEED={seed} replays the choices)"
    );
    let mut rng = Rng::new(seed);

    let mut cluster = Cluster::start_for_faults(n, &[]);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let servers = cluster.addresses();
    let clock = Arc::new(Clock(Instant::now()));
    let history: History = Arc::default();
    let next_value = Arc::new(AtomicI64::new(1));
    let stop = Arc::new(AtomicBool::new(false));

    // Every register starts at 0, before any fault.
    let setup = cluster.client();
    for k in 0..KEYS {
        write(&setup, k, 0, None, 0, &clock, &history).await;
    }

    let start = setup
        .list(pb::Kind::Namespace, "")
        .await
        .expect("list")
        .revision;
    let caught_up_to = Arc::new(AtomicU64::new(u64::MAX));
    let watcher = tokio::spawn(watch_registers(
        servers.clone(),
        start,
        stop.clone(),
        caught_up_to.clone(),
    ));

    let mut clients = Vec::new();
    for process in 1..=CLIENTS as u64 {
        let client = BerthClient::new(&servers)
            .expect("servers")
            .with_retry_for(Duration::from_secs(2));
        let (clock, history, next_value, stop) = (
            clock.clone(),
            history.clone(),
            next_value.clone(),
            stop.clone(),
        );
        let mut rng = Rng::derived(seed, process);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let k = rng.below(KEYS as u64) as usize;
                match rng.below(10) {
                    0..4 => {
                        read(&client, k, process, &clock, &history).await;
                    }
                    4..7 => {
                        let value = next_value.fetch_add(1, Ordering::Relaxed);
                        write(&client, k, value, None, process, &clock, &history).await;
                    }
                    _ => {
                        // Compare-and-set: what was read, at the version read.
                        if let Some((Some(from), version)) =
                            read(&client, k, process, &clock, &history).await
                        {
                            let value = next_value.fetch_add(1, Ordering::Relaxed);
                            let cas = Some((from, version));
                            write(&client, k, value, cas, process, &clock, &history).await;
                        }
                    }
                }
            }
        }));
    }

    // The nemesis. Faults act on slots 1..=n: the place of a member, whose
    // id changes when it is replaced.
    let mut next_member_id = n + 1;
    let mut faults = Vec::new();
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
        let id = 1 + rng.below(n);
        let member = cluster.member_id(id);
        let hold = Duration::from_millis(500 + rng.below(1500));
        match rng.below(5) {
            0 => {
                *kinds.entry("kill -9 one").or_default() += 1;
                faults.push(format!("{:?} kill -9 member {member}", clock.0.elapsed()));
                cluster.member(id).kill9();
                tokio::time::sleep(hold).await;
                cluster.member(id).restart();
            }
            1 => {
                *kinds.entry("SIGSTOP").or_default() += 1;
                faults.push(format!(
                    "{:?} SIGSTOP member {member} for {hold:?}",
                    clock.0.elapsed()
                ));
                let pid = cluster.member(id).pid().expect("running");
                let signal = |s: &str| {
                    std::process::Command::new("kill")
                        .arg(format!("-{s}"))
                        .arg(pid.to_string())
                        .status()
                };
                let _ = signal("STOP");
                tokio::time::sleep(hold).await;
                let _ = signal("CONT");
            }
            4 => {
                *kinds.entry("member replaced").or_default() += 1;
                faults.push(format!(
                    "{:?} member {member} replaced by member {next_member_id}",
                    clock.0.elapsed()
                ));
                replace_member(&mut cluster, id, next_member_id).await;
                next_member_id += 1;
            }
            2 => {
                *kinds.entry("kill -9 all").or_default() += 1;
                faults.push(format!("{:?} kill -9 every member", clock.0.elapsed()));
                for member in 1..=n {
                    cluster.member(member).kill9();
                }
                for member in 1..=n {
                    cluster.member(member).restart();
                }
            }
            _ => {
                let (kind, what, links) = pick_partition(&mut rng, &cluster, n).await;
                *kinds.entry(kind).or_default() += 1;
                faults.push(format!("{:?} {what} for {hold:?}", clock.0.elapsed()));
                cluster.cut_links(&links).await;
                tokio::time::sleep(hold).await;
                cluster.heal().await;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    cluster.heal().await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;

    // Final reads, after everything: an acknowledged write that was lost
    // shows up here as a violation.
    let last = cluster.client();
    for k in 0..KEYS {
        let mut tries = 0;
        while read(&last, k, 1000, &clock, &history).await.is_none() {
            tries += 1;
            assert!(tries < 50, "no final read of register {k}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The watcher ends once it has seen the final state.
    let final_list = last
        .list(pb::Kind::Namespace, "")
        .await
        .expect("final list");
    caught_up_to.store(final_list.revision, Ordering::Relaxed);
    let watched = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("the watcher catches up")
        .expect("watcher");

    let history = history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    check_watch(&watched, &history, &final_list, seed);
    let mut by_key: BTreeMap<usize, Vec<Operation>> = BTreeMap::new();
    for (k, op) in history {
        by_key.entry(k).or_default().push(op);
    }
    let total: usize = by_key.values().map(Vec::len).sum();
    let unknown = by_key
        .values()
        .flatten()
        .filter(|op| op.output == Output::Unknown)
        .count();
    eprintln!(
        "{total} operations ({unknown} with unknown outcome), {} faults:\n  {}",
        faults.len(),
        faults.join("\n  ")
    );
    eprintln!("faults by kind: {kinds:?}");
    for (k, ops) in &by_key {
        match check(ops, None, 20_000_000) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { longest } => {
                // The operations around the first one no order could place.
                let placed: std::collections::HashSet<usize> = longest.into_iter().collect();
                let first = (0..ops.len())
                    .filter(|i| !placed.contains(i))
                    .min_by_key(|i| ops[*i].call)
                    .unwrap_or(0);
                let at = ops[first].call;
                let excerpt: Vec<String> = ops
                    .iter()
                    .filter(|op| {
                        op.call <= at && op.ret.is_none_or(|r| r >= at.saturating_sub(200_000_000))
                    })
                    .map(|op| format!("{op:?}"))
                    .collect();
                panic!(
                    "register {k} is not linearizable (seed {seed}); around {:?}:\n{}\nfaults:\n{}",
                    Duration::from_nanos(at),
                    excerpt.join("\n"),
                    faults.join("\n")
                );
            }
            Verdict::Unknown { budget } => {
                panic!("register {k}: no verdict within {budget} steps (seed {seed})")
            }
        }
    }
    eprintln!(
        "run with seed {seed}: {total} operations, {} faults, linearizable",
        faults.len()
    );
}

/// A membership change as an operator makes it when a machine dies: the
/// member in `slot` is removed, its machine replaced by an empty one, and a
/// new member `new_id` at the same address is added back (a learner until
/// it has caught up, then a voter). Retries until each step is done: the
/// leader may be the member removed, or change in between.
async fn replace_member(cluster: &mut Cluster, slot: u64, new_id: u64) {
    let old = cluster.member_id(slot);
    let address = cluster.members[(slot - 1) as usize].addr.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = cluster.client();
    loop {
        let request = pb::RemoveMemberRequest { id: old };
        let answer = client
            .call_cluster(|mut c| async move { c.remove_member(request).await })
            .await;
        match answer {
            Ok(_) => break,
            Err(status) if status.message().contains("is not a member") => break,
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "member {old} not removed: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    cluster.respawn_as_joiner(slot, new_id);
    loop {
        let request = pb::AddMemberRequest {
            id: new_id,
            address: address.clone(),
            replace_id: 0,
        };
        let answer = client
            .call_cluster(|mut c| {
                let request = request.clone();
                async move { c.add_member(request).await }
            })
            .await;
        match answer {
            Ok(_) => break,
            Err(status) if status.message().contains("already a voter") => break,
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "member {new_id} not added: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The watch contract: revisions strictly increase (no duplicate, no
/// reordering, across resumptions), every acknowledged write shows up (no
/// gap), and replaying the changes gives the final state.
fn check_watch(
    watched: &[Seen],
    history: &[(usize, Operation)],
    final_list: &pb::ListResponse,
    seed: u64,
) {
    for pair in watched.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "watch out of order or repeated (seed {seed}): {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let values: std::collections::HashSet<(String, i64)> = watched
        .iter()
        .filter_map(|(_, name, value)| Some((name.clone(), (*value)?)))
        .collect();
    for (k, op) in history {
        let written = match op.input {
            Input::Write(v) => v,
            Input::Cas { to, .. } => to,
            Input::Read => continue,
        };
        // The setup writes came before the watch started.
        if op.output == Output::Done && written != 0 {
            assert!(
                values.contains(&(key(*k), written)),
                "the watch missed the acknowledged write of {written} to {} (seed {seed})",
                key(*k)
            );
        }
    }
    let mut replayed: BTreeMap<String, Option<i64>> = BTreeMap::new();
    for (revision, name, value) in watched {
        if *revision <= final_list.revision {
            replayed.insert(name.clone(), *value);
        }
    }
    for object in &final_list.objects {
        if let Some(seen) = replayed.get(object.name()) {
            assert_eq!(
                *seen,
                value_of(object),
                "the watch ends at another value of {} than the store (seed {seed})",
                object.name()
            );
        }
    }
    eprintln!(
        "the watcher saw {} changes, in order, none missing",
        watched.len()
    );
}
