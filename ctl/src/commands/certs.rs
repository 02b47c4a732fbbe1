//! `berthctl certs init|issue`: the cluster's CA and certificates
//! (`berth_proto::pki`), as files an operator hands to each component.

use std::path::PathBuf;

use anyhow::Context as _;
use berth_proto::pki::{Identity, Pki, Role};

use crate::cli::CertsCommand;

fn pki_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(dir) => Ok(dir),
        None => crate::config::home()
            .map(|home| home.join("pki"))
            .context("no --dir and no HOME to put ~/.berth/pki in"),
    }
}

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, hosts } => {
            let pki = Pki::at(&pki_dir(dir)?);
            pki.init()?;
            let mut apiserver_hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            apiserver_hosts.extend(hosts);
            let issued = [
                Identity::new(Role::Apiserver, "apiserver").with_hosts(apiserver_hosts),
                Identity::new(Role::Scheduler, "scheduler"),
                Identity::new(Role::Admin, "admin"),
            ];
            crate::say!("CA created: {}", pki.ca_cert().display());
            for identity in &issued {
                let cert = pki.issue_now(identity)?;
                crate::say!("{} ({}): {}", identity.name, identity.uri(), cert.display());
            }
            Ok(())
        }
        CertsCommand::Issue {
            role,
            name,
            hosts,
            namespaces,
            days,
            dir,
        } => {
            if !namespaces.is_empty() && !matches!(role, Role::Admin | Role::Viewer) {
                anyhow::bail!(
                    "--namespaces: only an admin or a viewer is limited to namespaces, not a {role}"
                );
            }
            let pki = Pki::at(&pki_dir(dir)?);
            let identity = Identity::new(role, &name)
                .with_hosts(hosts)
                .in_namespaces(namespaces);
            let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
            let cert = pki.issue(&identity, None, now, days)?;
            crate::say!("{} ({}): {}", identity.name, identity.uri(), cert.display());
            Ok(())
        }
    }
}
