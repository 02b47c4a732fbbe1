//! The cluster's certificate authority and the certificates it issues
//! (rcgen; nothing shells out to openssl).
//!
//! A PKI directory holds `ca.crt` and `ca.key`, and one `NAME.crt` /
//! `NAME.key` pair per identity. Each certificate says who it is three
//! ways: CN = the name (a node's name for an agent), OU = the role, and a
//! URI SAN `berth://ROLE/NAME` that servers read to authorize. Apiserver
//! and agent certificates also carry the addresses they are dialled at
//! (IP or DNS SANs): TLS checks them. Every certificate may serve and
//! connect (server and client auth), since members both accept and dial.
//!
//! Keys are ECDSA P-256, written with mode 0600.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// What an identity may do; the OU of its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An apiserver member.
    Apiserver,
    Scheduler,
    /// A node's agent: only its own node and the tasks bound to it.
    Node,
    /// A person or tool with every right.
    Admin,
    /// Reads only.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Apiserver,
        Role::Scheduler,
        Role::Node,
        Role::Admin,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Apiserver => "apiserver",
            Role::Scheduler => "scheduler",
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("{s:?} is not a role (one of: {})", all.join(", "))
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Cert(String),
    #[error("{path} already exists: remove it first to replace it")]
    Exists { path: PathBuf },
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> PkiError {
        PkiError::Cert(e.to_string())
    }
}

/// Who a certificate is for, and where it may be dialled.
#[derive(Debug, Clone)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    /// IP addresses or DNS names (host only, no port).
    pub hosts: Vec<String>,
    /// The namespaces an admin or viewer is limited to; empty: all.
    pub namespaces: Vec<String>,
}

impl Identity {
    pub fn new(role: Role, name: &str) -> Identity {
        Identity {
            role,
            name: name.to_string(),
            hosts: Vec::new(),
            namespaces: Vec::new(),
        }
    }

    /// Limits the identity to these namespaces.
    pub fn in_namespaces(mut self, namespaces: impl IntoIterator<Item = String>) -> Identity {
        self.namespaces.extend(namespaces);
        self
    }

    pub fn with_hosts(mut self, hosts: impl IntoIterator<Item = String>) -> Identity {
        self.hosts.extend(hosts);
        self
    }

    /// The URI SAN that names it: `berth://ROLE/NAME`, with
    /// `?namespaces=A,B` when it is limited to some.
    pub fn uri(&self) -> String {
        let mut uri = format!("berth://{}/{}", self.role, self.name);
        if !self.namespaces.is_empty() {
            uri.push_str("?namespaces=");
            uri.push_str(&self.namespaces.join(","));
        }
        uri
    }

    /// Reads `berth://ROLE/NAME[?namespaces=A,B]`.
    pub fn parse_uri(uri: &str) -> Option<Identity> {
        let (role, rest) = uri.strip_prefix("berth://")?.split_once('/')?;
        let (name, namespaces) = match rest.split_once('?') {
            Some((name, query)) => {
                let list = query.strip_prefix("namespaces=")?;
                let namespaces: Vec<String> = list
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect();
                // Present but empty must not read as "every namespace".
                if namespaces.is_empty() {
                    return None;
                }
                (name, namespaces)
            }
            None => (rest, Vec::new()),
        };
        if name.is_empty() {
            return None;
        }
        Some(Identity::new(role.parse().ok()?, name).in_namespaces(namespaces))
    }
}

/// A PKI directory.
pub struct Pki {
    dir: PathBuf,
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            io(source)
        }
    })?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The CA's own fields. Rebuilt the same way to sign later (rcgen keeps
/// only the subject and the key of an issuer), so they never change.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "berth");
    name.push(DnType::CommonName, "berth cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Pki {
    pub fn at(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Creates the CA (valid ten years); refuses to replace one.
    pub fn init(&self) -> Result<(), PkiError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| PkiError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_file(&self.dir.join("ca.key"), &key.serialize_pem(), true)?;
        write_file(&self.ca_cert(), &cert.pem(), false)
    }

    /// Issues a certificate for `identity`, valid from `not_before` for
    /// `days`, as `FILE.crt` / `FILE.key` where FILE is the identity's name
    /// (or `file` if given); returns the certificate's path.
    pub fn issue(
        &self,
        identity: &Identity,
        file: Option<&str>,
        not_before: OffsetDateTime,
        days: i64,
    ) -> Result<PathBuf, PkiError> {
        let ca_key = KeyPair::from_pem(&read_file(&self.dir.join("ca.key"))?)?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let mut params = CertificateParams::new(identity.hosts.clone())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "berth");
        name.push(DnType::OrganizationalUnitName, identity.role.as_str());
        name.push(DnType::CommonName, identity.name.as_str());
        params.distinguished_name = name;
        let uri = identity
            .uri()
            .try_into()
            .map_err(|e| PkiError::Cert(format!("{}: {e}", identity.uri())))?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_before + Duration::days(days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let file = file.unwrap_or(&identity.name);
        write_file(&self.key(file), &key.serialize_pem(), true)?;
        write_file(&self.cert(file), &cert.pem(), false)?;
        Ok(self.cert(file))
    }

    /// Issues a certificate valid from an hour ago for a year.
    pub fn issue_now(&self, identity: &Identity) -> Result<PathBuf, PkiError> {
        self.issue(
            identity,
            None,
            OffsetDateTime::now_utc() - Duration::hours(1),
            365,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_that_name_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::at(&dir.path().join("pki"));
        pki.init().unwrap();
        let error = pki.init().unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        let agent = Identity::new(Role::Node, "node-1").with_hosts(["10.0.0.5".to_string()]);
        let cert = pki.issue_now(&agent).unwrap();
        let pem = std::fs::read_to_string(&cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(pki.key("node-1"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let parsed = Identity::parse_uri(&agent.uri()).unwrap();
        assert_eq!((parsed.role, parsed.name.as_str()), (Role::Node, "node-1"));
        let viewer = Identity::new(Role::Viewer, "ann").in_namespaces(["a".into(), "b".into()]);
        assert_eq!(viewer.uri(), "berth://viewer/ann?namespaces=a,b");
        let parsed = Identity::parse_uri(&viewer.uri()).unwrap();
        assert_eq!(parsed.namespaces, ["a", "b"]);
        assert!(Identity::parse_uri("berth://root/x").is_none());
        assert!(Identity::parse_uri("berth://admin/x?namespaces=").is_none());
        assert!(Identity::parse_uri("https://admin/x").is_none());
        assert!("root".parse::<Role>().unwrap_err().contains("admin"));
    }
}
