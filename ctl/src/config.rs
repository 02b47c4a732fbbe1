//! Which servers berthctl talks to, and the config file `berthctl up` writes.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The config file: where the cluster is, and the certificate to show it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// API servers as HOST:PORT.
    pub servers: Vec<String>,
    /// The cluster CA and this user's certificate and key (PEM files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsPaths>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The config file, if there is one.
fn read_config() -> anyhow::Result<Option<ConfigFile>> {
    let Some(path) = config_path().filter(|p| p.exists()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: ConfigFile = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a berthctl config file", path.display()))?;
    Ok(Some(config))
}

/// Where to connect and with which certificate: the command line's
/// servers (or BERTH_SERVER) and TLS flags, else the config file's, else
/// the default address in plaintext. The config file's certificate goes
/// with its servers only.
pub fn connection(
    server_flag: Option<&str>,
    tls_flags: &berth_proto::connect::TlsFlags,
) -> anyhow::Result<(String, berth_proto::connect::TlsFlags)> {
    if let Some(list) = server_flag {
        return Ok((list.to_string(), tls_flags.clone()));
    }
    let config = read_config()?.unwrap_or_default();
    let servers = if config.servers.is_empty() {
        berth_proto::connect::DEFAULT_SERVER.to_string()
    } else {
        config.servers.join(",")
    };
    let tls = match config.tls {
        Some(paths) if tls_flags.tls_ca.is_none() => berth_proto::connect::TlsFlags {
            tls_ca: Some(paths.ca),
            tls_cert: Some(paths.cert),
            tls_key: Some(paths.key),
        },
        _ => tls_flags.clone(),
    };
    Ok((servers, tls))
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

/// Writes the config file so that later commands find the cluster.
pub fn write(servers: &[String], tls: Option<TlsPaths>) -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_yaml::to_string(&ConfigFile {
        servers: servers.to_vec(),
        tls,
    })?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(path))
}
