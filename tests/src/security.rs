//! How the harness's processes secure their connections.
//!
//! By default every daemon runs with `--insecure-dev` (plaintext, loopback
//! only). A test that needs TLS — any cluster off loopback, such as members
//! in network namespaces, and the authorization tests — calls
//! [`enable_tls`]: from then on this process is an admin client of a CA made
//! for it, and every daemon and berthctl the harness starts gets a
//! certificate from that CA for its role (members: the addresses they
//! serve; a Docker agent: its node's name). Arguments that already carry
//! `--tls-ca` are left alone (tests that bring their own CA).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use berth_proto::connect::{Tls, use_tls};
use berth_proto::pki::{Identity, Pki, Role};

/// The process's test CA, once [`enable_tls`] made it.
pub struct TestPki {
    _dir: tempfile::TempDir,
    pub pki: Pki,
    /// Certificates issued so far, by file name.
    issued: Mutex<HashSet<String>>,
}

static PKI: OnceLock<TestPki> = OnceLock::new();

/// Turns TLS on for this test process (idempotent) and returns its CA.
pub fn enable_tls() -> &'static TestPki {
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a dir for the test CA");
        let pki = Pki::at(&dir.path().join("pki"));
        pki.init().expect("the test CA");
        let test = TestPki {
            _dir: dir,
            pki,
            issued: Mutex::new(HashSet::new()),
        };
        test.issue("admin", Identity::new(Role::Admin, "admin"));
        use_tls(
            Tls::load(
                &test.pki.ca_cert(),
                Some((&test.pki.cert("admin"), &test.pki.key("admin"))),
            )
            .expect("the admin certificate"),
        )
        .expect("TLS for the test process");
        test
    })
}

/// The test CA, if TLS is on.
pub fn test_pki() -> Option<&'static TestPki> {
    PKI.get()
}

impl TestPki {
    /// Issues `identity` as FILE.crt/.key once; returns FILE.
    pub fn issue(&self, file: &str, identity: Identity) -> String {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if !issued.contains(file) {
            let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
            self.pki
                .issue(&identity, Some(file), now, 30)
                .expect("issue a test certificate");
            issued.insert(file.to_string());
        }
        file.to_string()
    }

    /// `--tls-ca CA --tls-cert FILE.crt --tls-key FILE.key`.
    pub fn flags(&self, file: &str) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--tls-ca".into(),
            path(self.pki.ca_cert()),
            "--tls-cert".into(),
            path(self.pki.cert(file)),
            "--tls-key".into(),
            path(self.pki.key(file)),
        ]
    }
}

/// The host part of HOST:PORT.
fn host_of(address: &str) -> String {
    address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .to_string()
}

/// Who a spawned process is, for its certificate.
pub enum Part<'a> {
    /// An apiserver member serving at this address.
    Member(&'a str),
    Scheduler,
    /// A Docker agent for this node, serving logs on loopback.
    Node(&'a str),
    /// A simulated fleet: many nodes behind one process (an admin, since
    /// one node's identity could heartbeat only itself).
    Fleet,
    /// berthctl, as the admin.
    Admin,
}

/// The security flags for a process started with `args`.
pub fn flags(part: Part, args: &[String]) -> Vec<String> {
    if args.iter().any(|a| a == "--tls-ca") {
        return Vec::new();
    }
    let Some(test) = test_pki() else {
        return match part {
            Part::Admin => Vec::new(),
            _ => vec!["--insecure-dev".into()],
        };
    };
    let file = match part {
        Part::Member(address) => {
            let host = host_of(address);
            let hosts = [host.clone(), "127.0.0.1".into(), "localhost".into()];
            let identity = Identity::new(Role::Apiserver, "member").with_hosts(hosts);
            test.issue(&format!("member-{host}"), identity)
        }
        Part::Scheduler => test.issue("scheduler", Identity::new(Role::Scheduler, "scheduler")),
        Part::Node(node) => {
            let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
            let identity = Identity::new(Role::Node, node).with_hosts(hosts);
            test.issue(&format!("node-{node}"), identity)
        }
        Part::Fleet => test.issue("fleet", Identity::new(Role::Admin, "fleet")),
        Part::Admin => "admin".to_string(),
    };
    test.flags(&file)
}
