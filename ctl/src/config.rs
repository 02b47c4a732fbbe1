//! Which cluster berthctl talks to, and as whom: the config file's
//! contexts (as kubeconfig has them), overridden by flags.
//!
//! ```yaml
//! current-context: local
//! contexts:
//!   local:                      # written by `berthctl up`
//!     servers: [127.0.0.1:7400, 127.0.0.1:7410, 127.0.0.1:7420]
//!     tls: {ca: …/ca.crt, cert: …/admin.crt, key: …/admin.key}
//!   team-a:                     # berthctl config set-context team-a …
//!     servers: [10.0.0.5:7400]
//!     tls: {ca: …/ca.crt}       # the CA alone: the token says who
//!     token: 6f1c…
//!     namespace: team-a
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// The config file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, ClusterContext>,
}

/// One cluster and one identity in it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterContext {
    /// API servers as HOST:PORT.
    pub servers: Vec<String>,
    /// The cluster CA, and this user's certificate and key (PEM files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsPaths>,
    /// A bearer token (`berthctl tokens create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The namespace of namespaced kinds when -n is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    pub ca: PathBuf,
    /// Without a certificate, the token is the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl ConfigFile {
    /// The config file; empty if there is none.
    pub fn read() -> anyhow::Result<ConfigFile> {
        let Some(path) = config_path().filter(|p| p.exists()) else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a berthctl config file", path.display()))
    }

    /// Writes the file (mode 0600: it may hold tokens).
    pub fn write(&self) -> anyhow::Result<Option<PathBuf>> {
        let Some(path) = config_path() else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_yaml::to_string(self)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Some(path))
    }

    /// The context `name`, else the current one (an unknown name is an
    /// error; no context at all is not).
    pub fn context(&self, name: Option<&str>) -> anyhow::Result<Option<&ClusterContext>> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get(name) {
            Some(context) => Ok(Some(context)),
            None => {
                let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
                bail!(
                    "context {name:?} is not in {} (known: {})",
                    config_path()
                        .map_or_else(|| "the config file".into(), |p| p.display().to_string()),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            }
        }
    }
}

/// Where to connect, with which certificate and token, in which namespace.
pub struct Connection {
    pub servers: String,
    pub tls: berth_proto::connect::TlsFlags,
    pub token: Option<String>,
    pub namespace: Option<String>,
}

/// Flags first (--server or BERTH_SERVER, the TLS flags, --token), then the
/// context (--context, else the config file's current one), else the
/// default address in plaintext. A context's certificate and token go
/// with its servers only.
pub fn connection(
    server_flag: Option<&str>,
    context_flag: Option<&str>,
    tls_flags: &berth_proto::connect::TlsFlags,
    token_flag: Option<&str>,
) -> anyhow::Result<Connection> {
    let file = ConfigFile::read()?;
    let context = file.context(context_flag)?.cloned().unwrap_or_default();
    if let Some(list) = server_flag {
        return Ok(Connection {
            servers: list.to_string(),
            tls: tls_flags.clone(),
            token: token_flag.map(str::to_string),
            namespace: context.namespace,
        });
    }
    let servers = if context.servers.is_empty() {
        berth_proto::connect::DEFAULT_SERVER.to_string()
    } else {
        context.servers.join(",")
    };
    let tls = match context.tls {
        Some(paths) if tls_flags.tls_ca.is_none() => berth_proto::connect::TlsFlags {
            tls_ca: Some(paths.ca),
            tls_cert: paths.cert,
            tls_key: paths.key,
        },
        _ => tls_flags.clone(),
    };
    Ok(Connection {
        servers,
        tls,
        token: token_flag.map(str::to_string).or(context.token),
        namespace: context.namespace,
    })
}

/// `$BERTH_CONFIG`, else `~/.berth/config.yaml`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BERTH_CONFIG") {
        return Some(PathBuf::from(path));
    }
    home().map(|h| h.join("config.yaml"))
}

/// `~/.berth`, where `up` keeps its files by default.
pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".berth"))
}

/// The context `berthctl up` writes for its cluster.
pub const LOCAL_CONTEXT: &str = "local";

/// Records the local cluster as context `local` and makes it current;
/// other contexts stay.
pub fn write_local(servers: &[String], tls: Option<TlsPaths>) -> anyhow::Result<Option<PathBuf>> {
    // A file berthctl cannot read is replaced rather than failing `up`.
    let mut file = ConfigFile::read().unwrap_or_default();
    file.contexts.insert(
        LOCAL_CONTEXT.to_string(),
        ClusterContext {
            servers: servers.to_vec(),
            tls,
            ..Default::default()
        },
    );
    file.current_context = Some(LOCAL_CONTEXT.to_string());
    file.write()
}
