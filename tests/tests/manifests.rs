//! Every example in manifests/ applies cleanly, alone and together.

#![allow(clippy::unwrap_used)]

use berth_tests::{ApiServer, repo_root};

#[test]
fn every_manifest_applies() {
    let dir = tempfile::tempdir().unwrap();
    let server = ApiServer::start(dir.path());
    let manifests = repo_root().join("manifests");

    let mut files: Vec<_> = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests/ should hold examples");

    // Together (berthctl orders namespaces first) ...
    let out = server
        .ctl(&["apply", "-f", manifests.to_str().unwrap()])
        .ok();
    assert!(!out.contains("unchanged"), "{out}");
    // ... and each file alone, which now changes nothing.
    for file in &files {
        let out = server.ctl(&["apply", "-f", file.to_str().unwrap()]).ok();
        for line in out.lines() {
            assert!(line.ends_with(" unchanged"), "{}: {line}", file.display());
        }
    }

    let names = server.ctl(&["get", "jobs", "-A", "-o", "name"]).ok();
    assert!(
        names.contains("job/web") && names.contains("job/nightly-report"),
        "{names}"
    );
    let namespaces = server.ctl(&["get", "namespaces"]).ok();
    assert!(namespaces.contains("team-a"), "{namespaces}");

    // What get prints in YAML applies again unchanged.
    let yaml = server
        .ctl(&["get", "jobs", "-n", "team-a", "-o", "yaml"])
        .ok();
    let again = server
        .ctl_stdin(&["apply", "-f", "-"], yaml.as_bytes())
        .ok();
    assert_eq!(again.lines().count(), 2, "{again}");
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");
}
