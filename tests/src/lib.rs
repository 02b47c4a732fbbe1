//! Test harness: run the real Berth binaries on loopback and temporary dirs.
//!
//! The binaries come from the workspace's target directory, so build them
//! first: `cargo build --workspace` (the README's test command does).
//! Everything waits for conditions with a deadline; nothing sleeps and hopes.

#![allow(clippy::unwrap_used)]

pub mod docker;
pub mod linearizability;
pub mod nemesis;
pub mod netns;
pub mod security;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_proto::connect::BerthClient;
use berth_proto::pb;

/// How long a server may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A workspace binary, built by `cargo build --workspace`.
pub fn binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// The repository root (for manifests/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A `berth-apiserver` process on a data dir.
pub struct ApiServer {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    /// A command the server runs under (e.g. `ip netns exec NS`).
    wrapper: Vec<String>,
}

impl ApiServer {
    /// Starts a server on `data_dir` and a free loopback port.
    pub fn start(data_dir: &Path) -> ApiServer {
        ApiServer::start_with(data_dir, &[])
    }

    /// Starts a server with extra flags.
    pub fn start_with(data_dir: &Path, args: &[&str]) -> ApiServer {
        ApiServer::start_at(data_dir, "127.0.0.1:0", args)
    }

    /// Starts a server listening on `addr`, with extra flags.
    pub fn start_at(data_dir: &Path, addr: &str, args: &[&str]) -> ApiServer {
        let mut server = ApiServer::new(data_dir, addr, args);
        server.spawn();
        server
    }

    /// A server not started yet (see [`ApiServer::restart`]).
    pub fn new(data_dir: &Path, addr: &str, args: &[&str]) -> ApiServer {
        ApiServer {
            child: None,
            addr: addr.into(),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            wrapper: Vec::new(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("create the data dir");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary("berth-apiserver"));
                c
            }
            None => Command::new(binary("berth-apiserver")),
        };
        let security = security::flags(security::Part::Member(&self.addr), &self.args);
        let mut child = command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.addr)
            .args(&self.args)
            .args(&security)
            // BERTH_TEST_LOG=debug shows the servers' own logs.
            .env(
                "BERTH_LOG",
                std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth-apiserver");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("berth-apiserver listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("berth-apiserver did not start within {START_TIMEOUT:?} (exit: {status:?})");
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL, as a crash or power loss would stop it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("wait");
        }
    }

    /// Starts again on the same data dir and address.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn client(&self) -> BerthClient {
        BerthClient::new(std::slice::from_ref(&self.addr)).unwrap()
    }

    /// Runs berthctl against this server.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl(&self.addr, args, None)
    }

    /// Runs berthctl with `stdin` as its input.
    pub fn ctl_stdin(&self, args: &[&str], stdin: &[u8]) -> CtlOutput {
        ctl(&self.addr, args, Some(stdin))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `berth-scheduler` or `berth-agent` process (they print nothing to
/// wait for: tests wait for what they do to the cluster).
pub struct Component {
    child: Option<Child>,
    pub name: &'static str,
}

impl Component {
    /// Starts `binary` (a workspace binary) with `args`.
    pub fn start(name: &'static str, args: &[&str]) -> Component {
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let after = |flag: &str| {
            args.iter()
                .position(|a| *a == flag)
                .and_then(|i| args.get(i + 1))
                .copied()
        };
        let part = match (name, after("--runtime"), after("--node-name")) {
            ("berth-agent", Some("sim"), _) => security::Part::Fleet,
            ("berth-agent", _, Some(node)) => security::Part::Node(node),
            ("berth-agent", _, None) => security::Part::Fleet,
            _ => security::Part::Scheduler,
        };
        let security = security::flags(part, &owned);
        let child = Command::new(binary(name))
            .args(args)
            .args(&security)
            .env(
                "BERTH_LOG",
                std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Component {
            child: Some(child),
            name,
        }
    }

    /// A scheduler for `servers` with extra flags.
    pub fn scheduler(servers: &str, args: &[&str]) -> Component {
        let mut all = vec!["--server", servers];
        all.extend_from_slice(args);
        Component::start("berth-scheduler", &all)
    }

    /// A simulated fleet of `nodes` nodes named `prefix-0…`, with extra flags.
    pub fn sim_nodes(servers: &str, prefix: &str, nodes: usize, args: &[&str]) -> Component {
        let nodes = nodes.to_string();
        let mut all = vec![
            "--server",
            servers,
            "--runtime",
            "sim",
            "--sim-nodes",
            &nodes,
            "--node-prefix",
            prefix,
            "--heartbeat",
            "500ms",
        ];
        all.extend_from_slice(args);
        Component::start("berth-agent", &all)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// SIGKILL: the process dies without a word.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `berth-apiserver` with `args`, expecting it to refuse to start;
/// returns what it printed on stderr.
pub fn apiserver_refuses(args: &[&str]) -> String {
    let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let security = security::flags(security::Part::Member("127.0.0.1:0"), &owned);
    let mut child = Command::new(binary("berth-apiserver"))
        .args(args)
        .args(&security)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth-apiserver");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let output = child.wait_with_output().expect("output");
            assert!(
                !status.success(),
                "berth-apiserver should have refused to start"
            );
            return String::from_utf8_lossy(&output.stderr).into_owned();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth-apiserver neither served nor exited within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether tests that need root (mounts, network namespaces) must fail
/// rather than skip or fall back when they cannot have it
/// (`BERTH_REQUIRE_PRIVILEGED=1`, set by `.ci/run`).
pub fn privileged_required() -> bool {
    std::env::var("BERTH_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// A free loopback port (bound, then released for the caller to use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Several `berth-apiserver` members forming one cluster, each with fault
/// injection on, so that tests can partition them.
pub struct Cluster {
    /// Members by id (1-based); `members[id - 1]`. (Dropped before the
    /// network below, so that no process outlives its namespace.)
    pub members: Vec<ApiServer>,
    pub dir: tempfile::TempDir,
    /// With [`Cluster::start_networked`]: the members' own network, where
    /// partitions are iptables rules.
    pub network: Option<netns::Network>,
    /// The extra flags every member was started with.
    args: Vec<String>,
    /// The member id running in each slot (they differ once a member was
    /// replaced).
    ids: Vec<u64>,
}

impl Cluster {
    /// Starts `n` members with extra flags on each, on loopback, with the
    /// transport's fault injection on (partitions go through it).
    pub fn start(n: u64, args: &[&str]) -> Cluster {
        let addresses: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut all = vec!["--fault-injection"];
        all.extend_from_slice(args);
        Cluster::launch(addresses, &all, None)
    }

    /// Starts `n` members, each in its own network namespace on a bridge
    /// (see [`netns`]); Err says why that is not possible here.
    pub fn start_networked(n: u64, args: &[&str]) -> Result<Cluster, String> {
        let network = netns::Network::create(n)?;
        // Off loopback, every connection is mutual TLS.
        security::enable_tls();
        let addresses: Vec<String> = (1..=n)
            .map(|id| format!("{}:7400", network.ip(id)))
            .collect();
        Ok(Cluster::launch(addresses, args, Some(network)))
    }

    /// Starts `n` members for a fault run: each in a network namespace of
    /// its own where this machine allows it (root, iproute2, iptables), so
    /// that partitions are real; on loopback with the transport's fault
    /// injection otherwise — unless [`privileged_required`], then that is a
    /// failure.
    pub fn start_for_faults(n: u64, args: &[&str]) -> Cluster {
        match Cluster::start_networked(n, args) {
            Ok(cluster) => {
                eprintln!(
                    "members in network namespaces of their own; partitions are iptables rules"
                );
                cluster
            }
            Err(why) => {
                assert!(
                    !privileged_required(),
                    "BERTH_REQUIRE_PRIVILEGED=1 but no network namespaces: {why}"
                );
                eprintln!(
                    "no network namespaces ({why}): partitions through the transport's fault injection"
                );
                Cluster::start(n, args)
            }
        }
    }

    /// Starts one member per address (member ids from 1), forming one
    /// cluster; in `network`'s namespaces if given.
    fn launch(addresses: Vec<String>, args: &[&str], network: Option<netns::Network>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let initial = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<ApiServer> = addresses
            .iter()
            .enumerate()
            .map(|(i, address)| {
                let id = (i + 1).to_string();
                let mut member_args = vec!["--member-id", &id, "--initial-cluster", &initial];
                member_args.extend_from_slice(args);
                let mut member =
                    ApiServer::new(&dir.path().join(format!("m{id}")), address, &member_args);
                if let Some(network) = &network {
                    member.wrapper = network.wrapper(i as u64 + 1);
                }
                member
            })
            .collect();
        for member in &mut members {
            member.spawn();
        }
        Cluster {
            members,
            dir,
            network,
            args: args.iter().map(|s| s.to_string()).collect(),
            ids: (1..=addresses.len() as u64).collect(),
        }
    }

    /// The member id in `slot`.
    pub fn member_id(&self, slot: u64) -> u64 {
        self.ids[(slot - 1) as usize]
    }

    /// Replaces the process in `slot` (the member at `members[slot - 1]`,
    /// in its network namespace if any) by a brand-new member `new_id`: the
    /// old one is killed and its data dir deleted, the new one starts empty
    /// at the same address with `--join` and waits to be added (a machine
    /// replaced, as an operator would do it after `remove-member`).
    pub fn respawn_as_joiner(&mut self, slot: u64, new_id: u64) {
        let index = (slot - 1) as usize;
        let address = self.members[index].addr.clone();
        self.members[index].kill9();
        let _ = std::fs::remove_dir_all(&self.members[index].data_dir);
        let id = new_id.to_string();
        let mut args = vec!["--member-id", &id, "--join"];
        args.extend(self.args.iter().map(String::as_str));
        let mut member = ApiServer::new(
            &self.dir.path().join(format!("m{slot}-{new_id}")),
            &address,
            &args,
        );
        if let Some(network) = &self.network {
            member.wrapper = network.wrapper(slot);
        }
        member.spawn();
        self.members[index] = member;
        self.ids[index] = new_id;
    }

    /// Starts a new, empty member that waits to be added (`--join`).
    pub fn start_joiner(&mut self, id: u64, args: &[&str]) -> String {
        let address = format!("127.0.0.1:{}", free_port());
        let id_text = id.to_string();
        let mut member_args = vec!["--member-id", &id_text, "--join", "--fault-injection"];
        member_args.extend_from_slice(args);
        let member = ApiServer::start_at(
            &self.dir.path().join(format!("m{id}")),
            &address,
            &member_args,
        );
        assert_eq!(
            self.members.len() as u64 + 1,
            id,
            "joiners take the next id"
        );
        self.members.push(member);
        self.ids.push(id);
        address
    }

    pub fn member(&mut self, id: u64) -> &mut ApiServer {
        &mut self.members[(id - 1) as usize]
    }

    pub fn addresses(&self) -> Vec<String> {
        self.members.iter().map(|m| m.addr.clone()).collect()
    }

    /// A client of every member, failing over between them.
    pub fn client(&self) -> BerthClient {
        BerthClient::new(&self.addresses()).unwrap()
    }

    /// A client of one member only, without retries.
    pub fn client_of(&self, id: u64) -> BerthClient {
        BerthClient::new(std::slice::from_ref(&self.members[(id - 1) as usize].addr))
            .unwrap()
            .with_retry_for(Duration::ZERO)
    }

    /// One member's own view, or `None` if it does not answer.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        if !self.members[(id - 1) as usize].is_running() {
            return None;
        }
        let client = self.client_of(id);
        tokio::time::timeout(
            Duration::from_secs(2),
            client.call_cluster(|mut c| async move { c.status(pb::ClusterStatusRequest {}).await }),
        )
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
    }

    /// Waits until some running member leads; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for id in 1..=self.members.len() as u64 {
                if let Some(s) = self.status(id).await
                    && s.role == "leader"
                {
                    return id;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops all traffic between member `id` and `others` (both directions).
    pub async fn partition(&self, id: u64, others: &[u64]) {
        let links: Vec<(u64, u64)> = others.iter().map(|o| (id, *o)).collect();
        self.cut_links(&links).await;
    }

    /// Drops all traffic over each link (a pair of slots, both ways).
    pub async fn cut_links(&self, links: &[(u64, u64)]) {
        if let Some(network) = &self.network {
            for (a, b) in links {
                network.cut(*a, &[*b]);
            }
            return;
        }
        // The transport's fault injection takes each member's whole list.
        let mut blocked: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        for (a, b) in links {
            blocked.entry(*a).or_default().push(self.member_id(*b));
            blocked.entry(*b).or_default().push(self.member_id(*a));
        }
        for (slot, ids) in blocked {
            self.set_blocked(slot, ids).await;
        }
    }

    /// Ends every partition.
    pub async fn heal(&self) {
        if let Some(network) = &self.network {
            network.heal();
            return;
        }
        for id in 1..=self.members.len() as u64 {
            if self.members[(id - 1) as usize].is_running() {
                self.set_blocked(id, Vec::new()).await;
            }
        }
    }

    async fn set_blocked(&self, id: u64, blocked: Vec<u64>) {
        use berth_proto::internal::raft_client::RaftClient;
        let endpoint =
            berth_proto::connect::endpoint(&self.members[(id - 1) as usize].addr).unwrap();
        let mut client = RaftClient::new(endpoint.connect_lazy());
        client
            .partition(berth_proto::internal::PartitionRequest { blocked })
            .await
            .unwrap();
    }

    /// Every object as one member has it (a stale read: its own state).
    pub async fn dump_of(&self, id: u64) -> String {
        dump_with(&self.client_of(id), true).await
    }

    /// Waits until every running member has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for id in 1..=self.members.len() as u64 {
            if !self.members[(id - 1) as usize].is_running() {
                continue;
            }
            loop {
                let applied = self.status(id).await.map_or(0, |s| s.applied_index);
                if applied >= index {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "member {id} applied {applied}, not {index}, within {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What a berthctl run printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Asserts success; returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert!(
            self.success,
            "berthctl failed:\n{}{}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Asserts failure; returns stderr.
    #[track_caller]
    pub fn fails(self) -> String {
        assert!(
            !self.success,
            "berthctl should have failed:\n{}{}",
            self.stdout, self.stderr
        );
        self.stderr
    }
}

/// Runs berthctl against `server` (a blocking call: from async code, run
/// it with `spawn_blocking`).
pub fn ctl_at(server: &str, args: &[&str]) -> CtlOutput {
    ctl(server, args, None)
}

fn ctl(server: &str, args: &[&str], stdin: Option<&[u8]>) -> CtlOutput {
    let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let security = security::flags(security::Part::Admin, &owned);
    let mut command = Command::new(binary("berthctl"));
    command
        .args(&security)
        .args(args)
        .env("BERTH_SERVER", server)
        .env("BERTH_CONFIG", "/nonexistent/berth-config.yaml")
        .env_remove("BERTH_NAMESPACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output: Output = match stdin {
        None => command.stdin(Stdio::null()).output().expect("run berthctl"),
        Some(input) => {
            command.stdin(Stdio::piped());
            let mut child = command.spawn().expect("run berthctl");
            let mut pipe = child.stdin.take().unwrap();
            let input = input.to_vec();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&input);
            });
            let output = child.wait_with_output().expect("wait berthctl");
            let _ = writer.join();
            output
        }
    };
    CtlOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Polls `condition` until it holds or `timeout` passes (then panics).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Err(e) = try_wait_until(timeout, what, condition).await {
        panic!("{e}");
    }
}

/// Polls `condition` until it holds, or fails once `timeout` has passed.
pub async fn try_wait_until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Every object of every kind, plus the revision: two equal dumps mean an
/// identical store.
pub async fn dump(client: &BerthClient) -> String {
    dump_with(client, false).await
}

async fn dump_with(client: &BerthClient, stale: bool) -> String {
    let mut out = String::new();
    for kind in pb::Kind::ALL {
        let list = client
            .call(|mut c| async move {
                c.list(pb::ListRequest {
                    kind: kind as i32,
                    stale,
                    ..Default::default()
                })
                .await
            })
            .await
            .unwrap()
            .into_inner();
        out.push_str(&format!(
            "# {} at revision {}\n",
            kind.plural(),
            list.revision
        ));
        for object in list.objects {
            out.push_str(&format!("{object:?}\n"));
        }
    }
    out
}

/// A minimal valid job.
pub fn job(namespace: &str, name: &str, replicas: u32) -> pb::Object {
    pb::Object::from(pb::Job {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        }),
        spec: Some(pb::JobSpec {
            tier: pb::Tier::Batch as i32,
            replicas,
            template: Some(pb::TaskTemplate {
                image: "berth-testapp:latest".into(),
                resources: Some(pb::Resources {
                    cpu_millis: 100,
                    memory_bytes: 64 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// Applies `object`; returns the stored object.
pub async fn apply(client: &BerthClient, object: pb::Object) -> Result<pb::Object, tonic::Status> {
    let request = pb::ApplyRequest {
        object: Some(object),
        create_only: false,
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.apply(request).await }
        })
        .await
        .map(|r| r.into_inner().object.unwrap_or_default())
}
