//! Members on a network of their own: one network namespace per member,
//! each with a veth on a bridge the test creates, so that a partition is a
//! real one — iptables in the member's namespace drops the packets — rather
//! than the transport choosing not to send. Needs root and iproute2; a test
//! that cannot have it says why.
//!
//! Everything is named after the test process and a count (bridge
//! `bb<pid><n>`, namespaces `bn<pid><n>-<id>`, subnet 10.x.y.0/24 from
//! both), so parallel tests never meet, and is removed on drop.

use std::process::Command;

pub struct Network {
    tag: String,
    bridge: String,
    subnet: String,
    members: u64,
}

fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Network {
    /// A bridge and `members` namespaces on it; Err says why not.
    pub fn create(members: u64) -> Result<Network, String> {
        // Unique per process and per network within it (`cargo test` runs
        // tests as threads of one process).
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let nth = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
        let tag = format!("{pid}{nth}");
        let unique = pid.wrapping_mul(8).wrapping_add(nth);
        let subnet = format!("10.{}.{}", 200 + unique % 50, (unique / 50) % 250);
        let network = Network {
            bridge: format!("bb{tag}"),
            tag,
            subnet,
            members,
        };
        network.build()?;
        Ok(network)
    }

    fn build(&self) -> Result<(), String> {
        let gateway = format!("{}.1/24", self.subnet);
        run(&["ip", "link", "add", &self.bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &gateway, "dev", &self.bridge])?;
        run(&["ip", "link", "set", &self.bridge, "up"])?;
        self.forwarding("-I")?;
        for id in 1..=self.members {
            let ns = self.namespace(id);
            let veth = format!("bv{}-{id}", self.tag);
            let address = format!("{}/24", self.ip(id));
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &self.bridge, "up"])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &address, "dev", "eth0",
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Inserts (`-I`) or deletes (`-D`) the rule that lets traffic cross
    /// the bridge: Docker's FORWARD policy drops bridged traffic it does not
    /// know.
    fn forwarding(&self, op: &str) -> Result<(), String> {
        run(&[
            "iptables",
            op,
            "FORWARD",
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ])
    }

    fn namespace(&self, id: u64) -> String {
        format!("bn{}-{id}", self.tag)
    }

    /// The member's address on the test network.
    pub fn ip(&self, id: u64) -> String {
        format!("{}.{}", self.subnet, 10 + id)
    }

    /// The command prefix that runs a program in the member's namespace.
    pub fn wrapper(&self, id: u64) -> Vec<String> {
        ["ip", "netns", "exec"]
            .into_iter()
            .map(String::from)
            .chain([self.namespace(id)])
            .collect()
    }

    /// Drops every packet between `id` and each of `others`, both ways.
    pub fn cut(&self, id: u64, others: &[u64]) {
        for other in others {
            for (at, peer) in [(id, *other), (*other, id)] {
                let ns = self.namespace(at);
                let peer = self.ip(peer);
                for (chain, flag) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                    let _ = run(&[
                        "ip", "netns", "exec", &ns, "iptables", "-A", chain, flag, &peer, "-j",
                        "DROP",
                    ]);
                }
            }
        }
    }

    /// Lifts every cut.
    pub fn heal(&self) {
        for id in 1..=self.members {
            let _ = run(&["ip", "netns", "exec", &self.namespace(id), "iptables", "-F"]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for id in 1..=self.members {
            let _ = run(&["ip", "netns", "del", &self.namespace(id)]);
        }
        let _ = self.forwarding("-D");
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
