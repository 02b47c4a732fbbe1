//! `berthctl tokens create`: a bearer token for a user, its hash added to
//! the apiservers' token file (`berth_proto::auth`).

use std::io::Write as _;

use anyhow::{Context as _, bail};
use berth_proto::auth::{Principal, new_token, token_line};
use berth_proto::pki::Role;

use crate::cli::TokensCommand;

pub fn run(command: TokensCommand) -> anyhow::Result<()> {
    let TokensCommand::Create {
        file,
        name,
        role,
        namespaces,
    } = command;
    if role == Role::Apiserver {
        bail!("--role: members identify with certificates, not tokens");
    }
    if !namespaces.is_empty() && !matches!(role, Role::Admin | Role::Viewer) {
        bail!("--namespaces: only an admin or a viewer is limited to namespaces, not a {role}");
    }
    berth_proto::validate::check_dns_subdomain(&name)
        .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    for namespace in &namespaces {
        berth_proto::validate::check_dns_subdomain(namespace)
            .map_err(|e| anyhow::anyhow!("--namespaces: {namespace:?}: {e}"))?;
    }
    let who = Principal::new(role, &name).in_namespaces(namespaces.iter().map(String::as_str));
    let token = new_token().map_err(anyhow::Error::msg)?;
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options
        .open(&file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    writeln!(out, "{}", token_line(&token, &who))
        .and_then(|()| out.sync_all())
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!(
        "berthctl: a token for {who} was added to {}; it is shown once:",
        file.display()
    );
    crate::say!("{token}");
    Ok(())
}
