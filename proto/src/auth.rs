//! Who is calling: a principal from the caller's client certificate or
//! bearer token. What a principal may do is each server's business (the
//! apiserver's `authz`, the agent's log service); this module only says who.
//!
//! - A client certificate from the cluster CA names its principal in a URI
//!   SAN, `berth://ROLE/NAME[?namespaces=A,B]` (see [`crate::pki`]).
//! - A bearer token (`authorization: Bearer TOKEN`) is looked up in the
//!   server's token file, which holds SHA-256 hashes of tokens, never the
//!   tokens themselves (`berthctl tokens create` writes it). A request with
//!   a token is its token's principal, whatever certificate the connection
//!   shows.
//! - Without TLS (`--insecure-dev`, loopback only) a caller without a token
//!   has every right, a member's included: the development mode trusts its
//!   own machine, and says so at start.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::pki::{Identity, Role};

/// The request header that carries a bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The namespaces it is limited to; `None`: every namespace.
    pub namespaces: Option<BTreeSet<String>>,
}

impl Principal {
    pub fn new(role: Role, name: &str) -> Principal {
        Principal {
            name: name.to_string(),
            role,
            namespaces: None,
        }
    }

    pub fn in_namespaces<'a>(mut self, namespaces: impl IntoIterator<Item = &'a str>) -> Principal {
        let set: BTreeSet<String> = namespaces.into_iter().map(str::to_string).collect();
        self.namespaces = (!set.is_empty()).then_some(set);
        self
    }

    /// The caller of a plaintext development cluster: it may be a member,
    /// so it has a member's rights (every right).
    pub fn insecure_dev() -> Principal {
        Principal::new(Role::Apiserver, "insecure-dev")
    }

    /// Whether it may act in `namespace` (a limited principal only in its own).
    pub fn covers(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|set| set.contains(namespace))
    }

    pub fn is_limited(&self) -> bool {
        self.namespaces.is_some()
    }

    /// Reads the principal a client certificate (DER) names.
    pub fn from_certificate(der: &[u8]) -> Result<Principal, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| format!("the client certificate's names cannot be read: {e}"))?;
        let identity = names
            .into_iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Identity::parse_uri(uri),
                _ => None,
            })
            .ok_or_else(|| {
                format!(
                    "the client certificate ({}) names no Berth identity (a URI SAN berth://ROLE/NAME); \
                     issue one with `berthctl certs issue`",
                    cert.subject()
                )
            })?;
        Ok(Principal::from(identity))
    }
}

impl From<Identity> for Principal {
    fn from(identity: Identity) -> Principal {
        Principal::new(identity.role, &identity.name)
            .in_namespaces(identity.namespaces.iter().map(String::as_str))
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)?;
        if let Some(set) = &self.namespaces {
            let list: Vec<&str> = set.iter().map(String::as_str).collect();
            write!(f, " (namespaces {})", list.join(", "))?;
        }
        Ok(())
    }
}

/// Labels of `*_auth_denials_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// `unauthenticated` or `permission_denied`.
    pub code: String,
    /// The caller's role; empty when it is not known.
    pub role: String,
}

/// Authenticates requests, and counts refusals.
pub struct Authenticator {
    tls: bool,
    tokens: Option<TokenFile>,
    denials: Family<DenialLabels, Counter>,
}

impl Authenticator {
    /// `tls`: whether the server speaks TLS (else everyone without a token
    /// is the development admin); `tokens`: the token file, if any.
    pub fn new(tls: bool, tokens: Option<TokenFile>) -> Authenticator {
        Authenticator {
            tls,
            tokens,
            denials: Family::default(),
        }
    }

    /// Serves the denial counter as `{prefix}_auth_denials_total`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry, prefix: &str) {
        registry.register(
            format!("{prefix}_auth_denials"),
            "Requests refused as UNAUTHENTICATED or PERMISSION_DENIED, by the caller's role",
            self.denials.clone(),
        );
    }

    /// Whether certificate-less TLS clients may come in (with a token).
    pub fn accepts_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Who sent `request`, or UNAUTHENTICATED.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let result = self.identify(request.metadata(), request.peer_certs());
        if let Err(status) = &result {
            self.count(status.code(), "");
        }
        result
    }

    fn identify(
        &self,
        metadata: &MetadataMap,
        certificates: Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
    ) -> Result<Principal, Status> {
        if let Some(value) = metadata.get(AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header is not `Bearer TOKEN`")
                })?;
            let tokens = self.tokens.as_ref().ok_or_else(|| {
                Status::unauthenticated(
                    "this server accepts no bearer tokens (it was started without --token-file)",
                )
            })?;
            return tokens.lookup(token).ok_or_else(|| {
                Status::unauthenticated("the bearer token is not known to this server")
            });
        }
        if !self.tls {
            return Ok(Principal::insecure_dev());
        }
        let certificates = certificates.ok_or_else(|| {
            Status::unauthenticated("no client certificate and no bearer token: who is calling?")
        })?;
        let leaf = certificates.first().ok_or_else(|| {
            Status::unauthenticated("the client showed an empty certificate chain")
        })?;
        Principal::from_certificate(leaf).map_err(Status::unauthenticated)
    }

    /// The message of a PERMISSION_DENIED for `who`, counted.
    pub fn denied(&self, who: &Principal, what: impl std::fmt::Display) -> String {
        self.count(tonic::Code::PermissionDenied, who.role.as_str());
        format!("{who} may not {what}")
    }

    /// A PERMISSION_DENIED status for `who`, counted.
    pub fn deny(&self, who: &Principal, what: impl std::fmt::Display) -> Status {
        Status::permission_denied(self.denied(who, what))
    }

    fn count(&self, code: tonic::Code, role: &str) {
        let code = match code {
            tonic::Code::PermissionDenied => "permission_denied",
            _ => "unauthenticated",
        };
        self.denials
            .get_or_create(&DenialLabels {
                code: code.to_string(),
                role: role.to_string(),
            })
            .inc();
    }
}

/// How often a token file is checked for changes.
const TOKEN_FILE_CHECK: Duration = Duration::from_secs(1);

/// A file of bearer tokens, one per line:
///
/// ```text
/// # HASH                 NAME   ROLE    [NAMESPACES]
/// sha256:9f86d0…          alice  viewer  team-a,team-b
/// ```
///
/// It is read again when it changes, so tokens can be added and revoked
/// without a restart; while a change does not parse, no token is accepted
/// (logged): a revocation must never be undone by a typo.
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenState>,
}

struct TokenState {
    checked: Instant,
    modified: Option<SystemTime>,
    by_hash: HashMap<String, Principal>,
}

impl TokenFile {
    /// Reads the file; an error names the file and line.
    pub fn open(path: &Path) -> Result<TokenFile, String> {
        let (modified, by_hash) = read_tokens(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            state: Mutex::new(TokenState {
                checked: Instant::now(),
                modified,
                by_hash,
            }),
        })
    }

    fn lookup(&self, token: &str) -> Option<Principal> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= TOKEN_FILE_CHECK {
            state.checked = Instant::now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != state.modified {
                match read_tokens(&self.path) {
                    Ok((modified, by_hash)) => {
                        tracing::info!(path = %self.path.display(), tokens = by_hash.len(), "token file reloaded");
                        state.modified = modified;
                        state.by_hash = by_hash;
                    }
                    Err(e) => {
                        // Fail closed: an edit that revokes a token must
                        // not leave it valid because of a typo elsewhere.
                        state.modified = modified;
                        state.by_hash.clear();
                        tracing::error!(error = %e, "token file unreadable: no token is accepted until it is fixed");
                    }
                }
            }
        }
        state.by_hash.get(&hash_token(token)).cloned()
    }
}

fn read_tokens(path: &Path) -> Result<(Option<SystemTime>, HashMap<String, Principal>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut by_hash = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), number + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hash, name, role, rest @ ..] = fields.as_slice() else {
            return Err(format!(
                "{}: expected `sha256:HEX NAME ROLE [NAMESPACES]`",
                at()
            ));
        };
        let hash = hash
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| format!("{}: the hash must be sha256: and 64 hex digits", at()))?;
        let role: Role = role.parse().map_err(|e| format!("{}: role: {e}", at()))?;
        let namespaces = match rest {
            [] => Vec::new(),
            [list] => {
                let namespaces: Vec<&str> = list.split(',').filter(|n| !n.is_empty()).collect();
                if namespaces.is_empty() {
                    // Present but empty must not read as "every namespace".
                    return Err(format!("{}: the namespaces field names none", at()));
                }
                namespaces
            }
            _ => {
                return Err(format!(
                    "{}: namespaces are one comma-separated field",
                    at()
                ));
            }
        };
        let principal = Principal::new(role, name).in_namespaces(namespaces);
        by_hash.insert(hash.to_ascii_lowercase(), principal);
    }
    Ok((modified, by_hash))
}

/// The hex SHA-256 of a token, as the token file stores it.
pub fn hash_token(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token (256 bits, hex).
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token-file line for a principal's token.
pub fn token_line(token: &str, who: &Principal) -> String {
    let mut line = format!("sha256:{} {} {}", hash_token(token), who.name, who.role);
    if let Some(set) = &who.namespaces {
        let list: Vec<&str> = set.iter().map(String::as_str).collect();
        line.push(' ');
        line.push_str(&list.join(","));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_name_principals_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let ann = Principal::new(Role::Viewer, "ann").in_namespaces(["team-a"]);
        let text = format!(
            "# tokens\n{}\n\n{}\n",
            token_line("secret-1", &ann),
            token_line("secret-2", &Principal::new(Role::Admin, "bob"))
        );
        assert!(!text.contains("secret-1"), "the file holds hashes only");
        std::fs::write(&path, text).unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.lookup("secret-1"), Some(ann));
        assert_eq!(file.lookup("secret-2").unwrap().role, Role::Admin);
        assert_eq!(file.lookup("secret-3"), None);

        std::fs::write(&path, "sha256:abc ann viewer\n").unwrap();
        let error = TokenFile::open(&path).err().unwrap();
        assert!(
            error.contains("tokens:1") && error.contains("64 hex"),
            "{error}"
        );
        let line = format!("sha256:{} ann root\n", hash_token("x"));
        std::fs::write(&path, line).unwrap();
        let error = TokenFile::open(&path).err().unwrap();
        assert!(error.contains("role") && error.contains("root"), "{error}");
        let line = format!("sha256:{} bob admin ,\n", hash_token("x"));
        std::fs::write(&path, line).unwrap();
        let error = TokenFile::open(&path).err().unwrap();
        assert!(error.contains("names none"), "{error}");
    }

    #[test]
    fn requests_are_identified_by_token_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let ann = Principal::new(Role::Viewer, "ann");
        std::fs::write(&path, token_line("t0k", &ann)).unwrap();
        let auth = Authenticator::new(true, Some(TokenFile::open(&path).unwrap()));
        let mut request = Request::new(());
        let error = auth.authenticate(&request).unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated);
        request
            .metadata_mut()
            .insert(AUTHORIZATION, "Bearer t0k".parse().unwrap());
        assert_eq!(auth.authenticate(&request).unwrap(), ann);
        request
            .metadata_mut()
            .insert(AUTHORIZATION, "Bearer nope".parse().unwrap());
        let error = auth.authenticate(&request).unwrap_err();
        assert!(error.message().contains("not known"), "{error:?}");

        let dev = Authenticator::new(false, None);
        assert_eq!(
            dev.authenticate(&Request::new(())).unwrap(),
            Principal::insecure_dev()
        );
    }

    #[test]
    fn certificates_name_their_principal() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::at(dir.path());
        pki.init().unwrap();
        let identity = Identity::new(Role::Viewer, "ann").in_namespaces(["team-a".to_string()]);
        let cert = pki.issue_now(&identity).unwrap();
        let pem = std::fs::read_to_string(cert).unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let who = Principal::from_certificate(&der.contents).unwrap();
        assert_eq!(
            who,
            Principal::new(Role::Viewer, "ann").in_namespaces(["team-a"])
        );
        assert!(who.covers("team-a") && !who.covers("team-b"));
        // The CA's own certificate names no identity.
        let pem = std::fs::read_to_string(pki.ca_cert()).unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let error = Principal::from_certificate(&der.contents).unwrap_err();
        assert!(error.contains("berth://ROLE/NAME"), "{error}");
    }
}
