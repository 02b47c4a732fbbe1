//! `berthctl config get-contexts|use-context|set-context`.

use anyhow::bail;

use crate::cli::{Cli, ConfigCommand};
use crate::config::{ClusterContext, ConfigFile, TlsPaths};

pub fn run(command: &ConfigCommand, cli: &Cli) -> anyhow::Result<()> {
    let mut file = ConfigFile::read()?;
    match command {
        ConfigCommand::GetContexts => {
            let header = ["CURRENT", "NAME", "SERVERS", "AUTH", "NAMESPACE"];
            let mut rows = Vec::new();
            for (name, context) in &file.contexts {
                let current = file.current_context.as_deref() == Some(name.as_str());
                let auth = match (
                    &context.token,
                    context.tls.as_ref().and_then(|t| t.cert.as_ref()),
                ) {
                    (Some(_), _) => "token".to_string(),
                    (None, Some(cert)) => format!("certificate {}", cert.display()),
                    (None, None) if context.tls.is_some() => "none (TLS)".into(),
                    (None, None) => "none (plaintext)".into(),
                };
                rows.push(vec![
                    if current {
                        "*".to_string()
                    } else {
                        String::new()
                    },
                    name.clone(),
                    context.servers.join(","),
                    auth,
                    context.namespace.clone().unwrap_or_default(),
                ]);
            }
            let header = header.iter().map(|h| h.to_string()).collect();
            crate::say!("{}", crate::output::table(Some(header), rows));
        }
        ConfigCommand::UseContext { name } => {
            // An unknown name is an error that lists the known ones.
            file.context(Some(name))?;
            file.current_context = Some(name.clone());
            file.write()?;
            crate::say!("Switched to context {name:?}.");
        }
        ConfigCommand::SetContext { name } => {
            let name = name.clone();
            let context = file
                .contexts
                .entry(name.clone())
                .or_insert_with(ClusterContext::default);
            if let Some(list) = &cli.server {
                context.servers = berth_proto::connect::parse_servers(list)?;
            }
            if let Some(ca) = &cli.tls.tls_ca {
                context.tls = Some(TlsPaths {
                    ca: absolute(ca),
                    cert: cli.tls.tls_cert.as_deref().map(absolute),
                    key: cli.tls.tls_key.as_deref().map(absolute),
                });
            }
            if let Some(token) = &cli.token {
                context.token = Some(token.clone());
            }
            if let Some(namespace) = &cli.namespace {
                context.namespace = Some(namespace.clone());
            }
            if context.servers.is_empty() {
                bail!("context {name:?} has no servers: give --server HOST:PORT[,HOST:PORT…]");
            }
            file.write()?;
            crate::say!("Context {name:?} set.");
        }
    }
    Ok(())
}

fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
