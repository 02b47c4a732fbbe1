//! The one place where Berth builds gRPC clients and servers, so that
//! timeouts, keepalives, message limits and failover are decided once.
//!
//! A client is given a list of servers (`--server a:7400,b:7400` or
//! `BERTH_SERVER`). [`BerthClient::call`] sends to the server that answered
//! last and moves on to the next one when a server is unreachable.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Response, Status};

use crate::pb::cluster_client::ClusterClient;
use crate::pb::cluster_server::{Cluster, ClusterServer};
use crate::pb::objects_client::ObjectsClient;
use crate::pb::objects_server::{Objects, ObjectsServer};

/// Where berthctl and the components look when given no server.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7400";

/// Largest request a server decodes. Objects themselves are limited to
/// [`crate::validate::MAX_OBJECT_BYTES`]; the margin lets an oversize object
/// reach validation and get a RESOURCE_EXHAUSTED that names it, instead of a
/// transport error.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Largest response a client decodes (a List of every task in a large cluster).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024 * 1024;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no server given: pass --server HOST:PORT[,HOST:PORT…] or set BERTH_SERVER")]
    NoServer,
    #[error("server address {address:?} is not valid: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("cannot read {path}: {source}")]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

/// The cluster's CA, and this process's certificate and key: with them
/// every connection it makes or accepts is mutual TLS (the peer must show a
/// certificate from the same CA). Set once at start with [`use_tls`].
#[derive(Clone)]
pub struct Tls {
    ca: tonic::transport::Certificate,
    identity: Option<tonic::transport::Identity>,
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static TLS: std::sync::OnceLock<Tls> = std::sync::OnceLock::new();

impl Tls {
    /// Reads the PEM files: the CA, and (for anything but a client without
    /// an identity) a certificate and its key.
    pub fn load(
        ca: &std::path::Path,
        cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Tls, ConnectError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ConnectError::TlsFile {
                path: path.to_path_buf(),
                source,
            })
        };
        let ca = tonic::transport::Certificate::from_pem(read(ca)?);
        let identity = match cert_and_key {
            Some((cert, key)) => Some(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            )),
            None => None,
        };
        Ok(Tls { ca, identity })
    }
}

/// The TLS flags every Berth binary takes (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// The cluster CA's certificate (PEM, `berthctl certs init`): with it,
    /// every connection this process makes or accepts is mutual TLS.
    #[arg(long, env = "BERTH_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// This process's certificate (PEM), issued by the cluster CA.
    #[arg(long, env = "BERTH_TLS_CERT", global = true, requires = "tls_ca")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "BERTH_TLS_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsFlags {
    /// Turns TLS on for this process if a CA was given.
    pub fn apply(&self) -> Result<(), ConnectError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(());
        };
        let pair = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(ConnectError::Tls(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        };
        use_tls(Tls::load(ca, pair)?)
    }
}

/// How a daemon (apiserver, scheduler, agent) secures its connections:
/// mutual TLS from `tls`, or — only with `insecure_dev`, and only when
/// every address it serves or dials is on loopback — plaintext, with a
/// loud warning. Anything else is refused: a daemon never speaks plaintext
/// to the network by omission.
pub fn secure_daemon(
    program: &str,
    tls: &TlsFlags,
    insecure_dev: bool,
    addresses: &[String],
) -> Result<(), ConnectError> {
    match (tls.tls_ca.is_some(), insecure_dev) {
        (true, true) => Err(ConnectError::Tls(
            "--insecure-dev and --tls-ca exclude each other".into(),
        )),
        (true, false) => tls.apply(),
        (false, false) => Err(ConnectError::Tls(format!(
            "{program} speaks mutual TLS: give --tls-ca, --tls-cert and --tls-key (make them with `berthctl certs init` and `berthctl certs issue`), or --insecure-dev for plaintext on loopback only"
        ))),
        (false, true) => {
            if let Some(address) = addresses.iter().find(|a| !is_loopback(a)) {
                return Err(ConnectError::Tls(format!(
                    "--insecure-dev keeps plaintext on this machine, but {address} is not a loopback address: use TLS (--tls-ca, --tls-cert, --tls-key) to reach other hosts"
                )));
            }
            warn_insecure(program);
            Ok(())
        }
    }
}

/// The warning a plaintext development setup prints at start.
pub fn warn_insecure(program: &str) {
    let warning = "INSECURE DEVELOPMENT MODE (--insecure-dev): no TLS and no authentication; anyone on this machine has every right. Loopback addresses only.";
    eprintln!("{program}: WARNING: {warning}");
    tracing::warn!("{warning}");
}

/// Whether `address` (HOST:PORT, or a bare host) is on loopback.
pub fn is_loopback(address: &str) -> bool {
    use std::net::{IpAddr, SocketAddr};
    let address = address.trim().trim_start_matches("http://");
    if let Ok(ip) = address.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host == "localhost"
}

/// Makes every endpoint and server of this process use `tls`. Call once,
/// before any connection; a second call is refused.
pub fn use_tls(tls: Tls) -> Result<(), ConnectError> {
    TLS.set(tls)
        .map_err(|_| ConnectError::Tls("TLS is already configured in this process".into()))
}

static TOKEN: std::sync::OnceLock<tonic::metadata::AsciiMetadataValue> = std::sync::OnceLock::new();

/// Makes every call of this process's [`BerthClient`]s carry `token` as a
/// bearer token. Call once, before any call.
pub fn use_token(token: &str) -> Result<(), ConnectError> {
    let value = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| ConnectError::Tls("the token has characters a header cannot carry".into()))?;
    TOKEN
        .set(value)
        .map_err(|_| ConnectError::Tls("a token is already configured in this process".into()))
}

/// Adds this process's bearer token, if it has one, to each request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials;

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = TOKEN.get() {
            request
                .metadata_mut()
                .insert(crate::auth::AUTHORIZATION, token.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry this process's credentials.
pub type BerthChannel = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

/// Whether this process speaks TLS.
pub fn tls_enabled() -> bool {
    TLS.get().is_some()
}

/// Splits `a:7400, b:7400` into addresses; accepts `http://` prefixes.
pub fn parse_servers(list: &str) -> Result<Vec<String>, ConnectError> {
    let servers: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_start_matches("http://").to_string())
        .collect();
    if servers.is_empty() {
        return Err(ConnectError::NoServer);
    }
    for s in &servers {
        endpoint(s)?;
    }
    Ok(servers)
}

/// A lazily connecting endpoint with Berth's timeouts and keepalives.
pub fn endpoint(address: &str) -> Result<Endpoint, ConnectError> {
    endpoint_with(address, TLS.get())
}

/// As [`endpoint`], with `tls` instead of this process's TLS (a tool or
/// test that speaks as several identities).
pub fn endpoint_with(address: &str, tls: Option<&Tls>) -> Result<Endpoint, ConnectError> {
    let bad = |reason: String| ConnectError::BadAddress {
        address: address.to_string(),
        reason,
    };
    if !address.contains(':') {
        return Err(bad("expected HOST:PORT".into()));
    }
    // The scheme decides whether tonic speaks TLS: an `http://` endpoint
    // with a TLS config would talk plaintext.
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Endpoint::from_shared(format!("{scheme}://{address}")).map_err(|e| bad(e.to_string()))?;
    if let Some(tls) = tls {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tls.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(identity) = &tls.identity {
            config = config.identity(identity.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// A server builder with Berth's transport settings; with TLS configured,
/// it accepts only clients with a certificate from the cluster CA.
pub fn server() -> Result<Server, ConnectError> {
    server_with(false)
}

/// As [`server`]; with `certificate_optional`, TLS clients without a
/// certificate are let in too — to show a bearer token (the services
/// refuse them as UNAUTHENTICATED otherwise).
pub fn server_with(certificate_optional: bool) -> Result<Server, ConnectError> {
    let builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    let Some(tls) = TLS.get() else {
        return Ok(builder);
    };
    let identity = tls
        .identity
        .clone()
        .ok_or_else(|| ConnectError::Tls("a server needs its own certificate and key".into()))?;
    let config = tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(tls.ca.clone())
        .client_auth_optional(certificate_optional)
        .timeout(HANDSHAKE_TIMEOUT);
    builder
        .tls_config(config)
        .map_err(|e| ConnectError::Tls(e.to_string()))
}

/// The connections `listener` accepts, for `serve_with_incoming…`, with
/// Nagle's algorithm off. tonic sets `tcp_nodelay` only on listeners it
/// binds itself: on these, a small response would wait for the client's
/// delayed ACK (about 40 ms) whenever one was still in flight.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot turn Nagle's algorithm off");
            }
            stream
        });
        Some((accepted, listener))
    })
}

/// Wraps an `Objects` implementation with Berth's message limits.
pub fn objects_service<S: Objects>(service: S) -> ObjectsServer<S> {
    ObjectsServer::new(service)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES)
}

/// Wraps a `Nodes` implementation with Berth's message limits.
pub fn nodes_service<S: crate::pb::nodes_server::Nodes>(
    service: S,
) -> crate::pb::nodes_server::NodesServer<S> {
    crate::pb::nodes_server::NodesServer::new(service)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES)
}

/// Wraps a `Cluster` implementation with Berth's message limits.
pub fn cluster_service<S: Cluster>(service: S) -> ClusterServer<S> {
    ClusterServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// Wraps an `Agent` implementation (a node agent's own service).
pub fn agent_service<S: crate::pb::agent_server::Agent>(
    service: S,
) -> crate::pb::agent_server::AgentServer<S> {
    crate::pb::agent_server::AgentServer::new(service)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES)
}

/// A client of one node agent at `address` (a node's `status.address`).
pub fn agent_client(
    address: &str,
) -> Result<crate::pb::agent_client::AgentClient<Channel>, ConnectError> {
    Ok(
        crate::pb::agent_client::AgentClient::new(endpoint(address)?.connect_lazy())
            .max_decoding_message_size(MAX_RESPONSE_BYTES),
    )
}

/// Metadata a server puts on an UNAVAILABLE answer that is worth retrying
/// (an election is running, leadership is moving), as opposed to a server
/// that cannot be reached at all.
pub const RETRY_METADATA: &str = "berth-retry";
/// Metadata naming the leader's address: on an answer a member forwarded,
/// and on an UNAVAILABLE answer when it could not forward.
pub const LEADER_METADATA: &str = "berth-leader";

/// How long a client keeps retrying while the cluster elects a leader.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(15);

/// A client of a Berth cluster that fails over between its servers.
///
/// Each call goes first to the server that answered last. A server that
/// cannot be reached is skipped; a server that answers UNAVAILABLE with a
/// leader hint sends the call to the leader; while some server says an
/// election is running, the client keeps trying (with a growing pause) for
/// up to its retry budget.
#[derive(Debug)]
pub struct BerthClient {
    servers: Vec<(String, BerthChannel)>,
    /// Index of the server to try first: the last one that answered.
    current: AtomicUsize,
    retry_for: Duration,
}

impl BerthClient {
    /// Builds a client; connections are made on first use.
    pub fn new(servers: &[String]) -> Result<BerthClient, ConnectError> {
        if servers.is_empty() {
            return Err(ConnectError::NoServer);
        }
        let servers = servers
            .iter()
            .map(|s| {
                let channel = endpoint(s)?.connect_lazy();
                Ok((s.clone(), BerthChannel::new(channel, Credentials)))
            })
            .collect::<Result<Vec<_>, ConnectError>>()?;
        Ok(BerthClient {
            servers,
            current: AtomicUsize::new(0),
            retry_for: DEFAULT_RETRY_FOR,
        })
    }

    /// Builds a client from a comma-separated list.
    pub fn from_list(list: &str) -> Result<BerthClient, ConnectError> {
        BerthClient::new(&parse_servers(list)?)
    }

    /// Sets how long calls keep retrying while the cluster has no leader.
    pub fn with_retry_for(mut self, retry_for: Duration) -> BerthClient {
        self.retry_for = retry_for;
        self
    }

    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(|(s, _)| s.as_str())
    }

    /// An `Objects` client on the preferred server, without failover (for
    /// streams the caller re-opens itself).
    pub fn objects(&self) -> ObjectsClient<BerthChannel> {
        let i = self.current.load(Ordering::Relaxed) % self.servers.len();
        objects_client(self.servers[i].1.clone())
    }

    /// Runs `call` with failover (see the type's documentation). Returns the
    /// first answer that is not UNAVAILABLE, or the last error.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<Response<T>, Status>
    where
        F: FnMut(ObjectsClient<BerthChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.with_channel(|channel| call(objects_client(channel)))
            .await
    }

    /// As [`BerthClient::call`], for the `Cluster` service.
    pub async fn call_cluster<T, F, Fut>(&self, mut call: F) -> Result<Response<T>, Status>
    where
        F: FnMut(ClusterClient<BerthChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.with_channel(|channel| call(ClusterClient::new(channel)))
            .await
    }

    /// As [`BerthClient::call`], for the `Nodes` service.
    pub async fn call_nodes<T, F, Fut>(&self, mut call: F) -> Result<Response<T>, Status>
    where
        F: FnMut(crate::pb::nodes_client::NodesClient<BerthChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.with_channel(|channel| {
            call(
                crate::pb::nodes_client::NodesClient::new(channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .max_encoding_message_size(MAX_REQUEST_BYTES),
            )
        })
        .await
    }

    async fn with_channel<T, F, Fut>(&self, mut call: F) -> Result<Response<T>, Status>
    where
        F: FnMut(BerthChannel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let n = self.servers.len();
        let deadline = Instant::now() + self.retry_for;
        let mut pause = Duration::from_millis(20);
        let mut next = self.current.load(Ordering::Relaxed) % n;
        loop {
            let mut last_error = None;
            let mut worth_retrying = false;
            let mut tried = 0;
            while tried < n {
                let i = next;
                next = (next + 1) % n;
                tried += 1;
                let (address, channel) = &self.servers[i];
                match call(channel.clone()).await {
                    Err(status) if status.code() == Code::Unavailable => {
                        tracing::debug!(server = %address, error = %status.message(), "server unavailable");
                        let metadata = status.metadata();
                        worth_retrying |= metadata.contains_key(RETRY_METADATA);
                        if let Some(leader) =
                            metadata.get(LEADER_METADATA).and_then(|v| v.to_str().ok())
                            && let Some(j) = self.servers.iter().position(|(s, _)| s == leader)
                        {
                            next = j;
                        }
                        last_error = Some(Status::unavailable(format!(
                            "server {address} is unavailable: {}",
                            status.message()
                        )));
                    }
                    result => {
                        // A member that forwarded the call names the leader:
                        // go straight there next time.
                        let leader = result
                            .as_ref()
                            .ok()
                            .and_then(|r| r.metadata().get(LEADER_METADATA))
                            .and_then(|v| v.to_str().ok())
                            .and_then(|leader| self.servers.iter().position(|(s, _)| s == leader));
                        self.current.store(leader.unwrap_or(i), Ordering::Relaxed);
                        return result;
                    }
                }
            }
            if !worth_retrying || Instant::now() + pause > deadline {
                return Err(last_error.unwrap_or_else(|| Status::unavailable("no server answered")));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// The common calls, with failover, for components that need no more than
/// the answer's body.
impl BerthClient {
    pub async fn get(
        &self,
        kind: crate::pb::Kind,
        namespace: &str,
        name: &str,
    ) -> Result<crate::pb::Object, Status> {
        let request = crate::pb::GetRequest {
            kind: kind as i32,
            namespace: namespace.to_string(),
            name: name.to_string(),
            stale: false,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.get(request).await }
        })
        .await
        .map(Response::into_inner)
    }

    /// Every object of `kind` (all namespaces) and the revision of the list.
    pub async fn list(
        &self,
        kind: crate::pb::Kind,
        label_selector: &str,
    ) -> Result<crate::pb::ListResponse, Status> {
        let request = crate::pb::ListRequest {
            kind: kind as i32,
            label_selector: label_selector.to_string(),
            ..Default::default()
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.list(request).await }
        })
        .await
        .map(Response::into_inner)
    }

    /// Creates or updates `object` (a non-zero resource_version is a
    /// precondition); with `create_only`, only creates.
    pub async fn apply(
        &self,
        object: crate::pb::Object,
        create_only: bool,
    ) -> Result<crate::pb::ApplyResponse, Status> {
        let request = crate::pb::ApplyRequest {
            object: Some(object),
            create_only,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.apply(request).await }
        })
        .await
        .map(Response::into_inner)
    }

    pub async fn batch(
        &self,
        ops: Vec<crate::pb::BatchOp>,
    ) -> Result<crate::pb::BatchResponse, Status> {
        let request = crate::pb::BatchRequest { ops };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.batch(request).await }
        })
        .await
        .map(Response::into_inner)
    }
}

fn objects_client(channel: BerthChannel) -> ObjectsClient<BerthChannel> {
    ObjectsClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_lists() {
        assert_eq!(
            parse_servers("127.0.0.1:7400, http://10.0.0.2:7400").unwrap(),
            vec!["127.0.0.1:7400", "10.0.0.2:7400"]
        );
        assert!(matches!(parse_servers(" , "), Err(ConnectError::NoServer)));
        assert!(parse_servers("localhost").is_err());
    }

    #[test]
    fn tells_loopback_addresses() {
        for a in [
            "127.0.0.1:7400",
            "127.3.0.1:1",
            "localhost:7400",
            "[::1]:7400",
            "::1",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "10.0.0.1:7400",
            "0.0.0.0:7400",
            "example.com:7400",
            "[::]:1",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn a_daemon_needs_tls_or_a_loopback_development_mode() {
        let none = TlsFlags::default();
        let error = secure_daemon("x", &none, false, &[]).unwrap_err();
        assert!(error.to_string().contains("--insecure-dev"), "{error}");
        let far = ["127.0.0.1:1".to_string(), "10.1.2.3:7400".to_string()];
        let error = secure_daemon("x", &none, true, &far).unwrap_err();
        assert!(error.to_string().contains("10.1.2.3:7400"), "{error}");
        secure_daemon("x", &none, true, &far[..1]).unwrap();
    }
}
