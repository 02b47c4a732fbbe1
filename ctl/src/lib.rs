//! `berthctl`: Berth's command-line client.
//!
//! [`cli`] declares the commands; each lives in [`commands`]. Manifests are
//! read and checked in [`manifest`] (YAML in the Kubernetes shape, errors that
//! name file, document and field); [`output`] prints tables, YAML and JSON.
//! Every request goes through [`berth_proto::connect::BerthClient`], which
//! fails over between the given servers.

pub mod cli;
pub mod commands;
pub mod config;
pub mod inputs;
pub mod manifest;
pub mod output;
pub mod stdout;

use anyhow::bail;
use berth_proto::connect::BerthClient;
use berth_proto::defaults::DEFAULT_NAMESPACE;
use berth_proto::pb;
use clap::CommandFactory;
use tonic::{Code, Status};

use crate::cli::{Cli, Command};

/// An error whose details were already printed; only a summary remains.
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

/// What every command needs: a client and the namespace flag.
pub struct Context {
    pub client: BerthClient,
    pub servers: String,
    pub namespace: Option<String>,
    /// Reads may be served stale.
    pub stale: bool,
}

impl Context {
    pub fn namespace_or_default(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
    }

    /// A server's answer in words, with a hint when no server is reachable.
    pub fn explain(&self, status: &Status) -> String {
        let unreachable = ["connect", "transport error", "connection"]
            .iter()
            .any(|word| status.message().contains(word));
        match status.code() {
            Code::Unavailable if unreachable => format!(
                "cannot reach a Berth API server at {} ({}); is the cluster up? Start one with `berthctl up`",
                self.servers,
                status.message()
            ),
            Code::DeadlineExceeded => {
                format!("the server did not answer in time: {}", status.message())
            }
            // A handshake the server refused, or TLS spoken to one side
            // only: the transport says little, so say what to check.
            Code::Unknown | Code::Cancelled | Code::Internal
                if berth_proto::connect::tls_enabled() =>
            {
                format!(
                    "the TLS connection to {} failed ({}): the server accepts only certificates \
                     of the cluster CA that are still valid — check --tls-cert/--tls-key (is one \
                     given? issued by the CA in --tls-ca? expired?)",
                    self.servers,
                    status.message()
                )
            }
            Code::Unknown | Code::Cancelled | Code::Internal => format!(
                "the connection to {} failed ({}); if the cluster uses TLS, pass --tls-ca, \
                 --tls-cert and --tls-key (or BERTH_TLS_CA, BERTH_TLS_CERT, BERTH_TLS_KEY)",
                self.servers,
                status.message()
            ),
            _ => status.message().to_string(),
        }
    }

    pub fn error(&self, status: &Status) -> anyhow::Error {
        anyhow::anyhow!(self.explain(status))
    }

    pub async fn list(
        &self,
        kind: pb::Kind,
        namespace: Option<String>,
        selector: &str,
    ) -> anyhow::Result<(Vec<pb::Object>, u64)> {
        let request = pb::ListRequest {
            kind: kind as i32,
            namespace: namespace.unwrap_or_default(),
            label_selector: selector.to_string(),
            stale: self.stale,
        };
        let response = self
            .client
            .call(|mut c| {
                let request = request.clone();
                async move { c.list(request).await }
            })
            .await
            .map_err(|s| self.error(&s))?
            .into_inner();
        Ok((response.objects, response.revision))
    }

    pub async fn get(
        &self,
        kind: pb::Kind,
        namespace: String,
        name: &str,
    ) -> Result<pb::Object, Status> {
        let request = pb::GetRequest {
            kind: kind as i32,
            namespace,
            name: name.to_string(),
            stale: self.stale,
        };
        self.client
            .call(|mut c| {
                let request = request.clone();
                async move { c.get(request).await }
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// A kind as users type it (`jobs`, `job`, `j`, `ns`, …).
pub fn parse_kind(word: &str) -> anyhow::Result<pb::Kind> {
    match pb::Kind::parse(word) {
        Some(kind) => Ok(kind),
        None => bail!(
            "{word:?} is not a kind; use one of {}",
            pb::Kind::ALL.map(|k| k.plural()).join(", ")
        ),
    }
}

/// Runs one command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => commands::up::run(args).await,
        Command::Certs(command) => commands::certs::run(command),
        Command::Tokens(command) => commands::tokens::run(command),
        Command::Config(ref command) => commands::contexts::run(command, &cli),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "berthctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        command => {
            let connection = config::connection(
                cli.server.as_deref(),
                cli.context.as_deref(),
                &cli.tls,
                cli.token.as_deref(),
            )?;
            connection.tls.apply()?;
            if let Some(token) = &connection.token {
                berth_proto::connect::use_token(token)?;
            }
            let servers = connection.servers;
            let context = Context {
                client: BerthClient::from_list(&servers)?,
                servers,
                namespace: cli.namespace.or(connection.namespace),
                stale: cli.stale,
            };
            match command {
                Command::Apply(args) => commands::apply::run(&context, args).await,
                Command::Get(args) => commands::get::run(&context, args).await,
                Command::Describe(args) => commands::describe::run(&context, args).await,
                Command::Delete(args) => commands::delete::run(&context, args).await,
                Command::Scale(args) => commands::scale::run(&context, args).await,
                Command::Logs(args) => commands::logs::run(&context, args).await,
                Command::Top(args) => commands::top::run(&context, args).await,
                Command::Cluster(command) => commands::cluster::run(&context, command).await,
                Command::Cordon(args) => commands::node::cordon(&context, args).await,
                Command::Uncordon(args) => commands::node::uncordon(&context, args).await,
                Command::Drain(args) => commands::node::drain(&context, args).await,
                Command::Snapshot(command) => commands::snapshot::run(&context, command).await,
                Command::Up(_)
                | Command::Completion { .. }
                | Command::Certs(_)
                | Command::Tokens(_)
                | Command::Config(_) => Ok(()),
            }
        }
    }
}
