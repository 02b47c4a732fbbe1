//! Wiring: check the data dir, open the store, start replication, serve
//! gRPC, stop cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, bail};
use berth_proto::auth::{Authenticator, TokenFile};
use berth_proto::connect;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::liveness::{self, Liveness, Timeouts};
use crate::metrics::Metrics;
use crate::replication::{self, Replica, Settings, transport::RaftService};
use crate::service::ApiService;
use crate::state_machine::StateMachine;
use crate::storage::Storage;
use crate::watch::WatchHub;

/// A running apiserver member. It restarts itself in place (same address,
/// state read back from its store, as after a process restart) when its
/// disk filled up and space has returned.
pub struct ApiServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    supervisor: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// How long a restart in place keeps trying to open the store again.
const REOPEN_FOR: std::time::Duration = std::time::Duration::from_secs(30);

impl ApiServer {
    /// Opens the store in `config.data_dir` (bootstrapping a new member on an
    /// empty one), binds `config.listen` and serves.
    pub async fn start(mut config: Config) -> anyhow::Result<ApiServer> {
        let mut registry = berth_proto::metrics::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let tokens = match &config.token_file {
            Some(path) => {
                Some(TokenFile::open(path).map_err(|e| anyhow::anyhow!("--token-file: {e}"))?)
            }
            None => None,
        };
        let auth = Arc::new(Authenticator::new(connect::tls_enabled(), tokens));
        auth.register(&mut registry, "berth_api");
        let member = Member::start(&config, &metrics, &auth).await?;
        berth_proto::metrics::serve_configured(config.metrics_listen, registry).await?;
        let local_addr = member.local_addr;
        // A restart binds the same port, not another free one, and does
        // not restore again.
        config.listen = local_addr;
        config.restore = None;
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(member, config, metrics, auth, stopped));
        Ok(ApiServer {
            local_addr,
            stop,
            supervisor,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting requests, ends watch streams, stops the raft loop.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.supervisor.await?
    }

    /// Serves until `signal` resolves, then shuts down; returns early with
    /// the error if the member cannot go on (a restart in place failed).
    pub async fn serve_until(
        mut self,
        signal: impl std::future::Future<Output = std::io::Result<()>>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            received = signal => {
                received?;
                tracing::info!("shutting down");
                self.shutdown().await
            }
            ended = &mut self.supervisor => match ended? {
                Ok(()) => bail!("the member stopped"),
                Err(e) => Err(e),
            },
        }
    }
}

/// Runs `member` until told to stop, restarting it when it asks to.
async fn supervise(
    mut member: Member,
    config: Config,
    metrics: Metrics,
    auth: Arc<Authenticator>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let restart = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => false,
            // Err: the raft loop ended without asking (it stopped or
            // panicked); the member stays down until told to stop.
            wanted = &mut member.restart_wanted => wanted.is_ok(),
        };
        if !restart {
            let _ = stopped.wait_for(|stop| *stop).await;
            return member.shutdown().await;
        }
        member.shutdown().await?;
        let deadline = std::time::Instant::now() + REOPEN_FOR;
        member = loop {
            match Member::start(&config, &metrics, &auth).await {
                Ok(member) => break member,
                // The old store's last handles may take a moment to close.
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %format!("{e:#}"), "restart in place: retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context("restarting after the disk filled up")),
            }
        };
        tracing::warn!(addr = %member.local_addr, "restarted in place; serving again");
    }
}

/// One incarnation of the member: store, raft loop, gRPC server.
struct Member {
    local_addr: SocketAddr,
    replica: Replica,
    shutdown: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    raft: JoinHandle<()>,
    restart_wanted: tokio::sync::oneshot::Receiver<()>,
}

impl Member {
    async fn start(
        config: &Config,
        metrics: &Metrics,
        auth: &Arc<Authenticator>,
    ) -> anyhow::Result<Member> {
        if !config.data_dir.is_dir() {
            bail!(
                "the data dir {} does not exist: create it to start a new member; if this member had \
                 state, its disk is missing, and it must not rejoin as an empty member (remove it with \
                 `berthctl cluster remove-member` and add it back)",
                config.data_dir.display()
            );
        }
        if config.member_id == 0 {
            bail!("--member-id must be a positive number");
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        if local_addr.ip().is_unspecified() && config.advertise.is_none() {
            bail!(
                "listening on {local_addr}: give --advertise HOST:PORT, the address other members reach this one at"
            );
        }

        let fresh = !Storage::exists(&config.data_dir);
        // The whole file is read and checked before the store is created: a
        // bad snapshot leaves the data dir as empty as it was.
        let restore = match &config.restore {
            Some(_) if !fresh => bail!(
                "--restore: the data dir {} already holds a store; a restore needs an empty one \
                 (start without --restore to serve what it holds)",
                config.data_dir.display()
            ),
            Some(_) if config.join => bail!("--restore and --join exclude each other"),
            Some(path) => Some(berth_proto::backup::read(path)?),
            None => None,
        };
        let storage = Storage::open(&config.data_dir)?;
        if fresh && !config.join {
            let members = config
                .initial_cluster
                .clone()
                .unwrap_or_else(|| [(config.member_id, advertise.clone())].into());
            if !members.contains_key(&config.member_id) {
                bail!("member {} is not in --initial-cluster", config.member_id);
            }
            match restore {
                Some(backup) => {
                    let (revision, objects) = (backup.header.revision, backup.objects.len());
                    replication::bootstrap_restored(&storage, &members, backup)?;
                    tracing::info!(
                        member = config.member_id,
                        ?members,
                        revision,
                        objects,
                        "new cluster restored from a snapshot"
                    );
                }
                None => {
                    replication::bootstrap(&storage, &members)?;
                    tracing::info!(
                        member = config.member_id,
                        ?members,
                        "new cluster bootstrapped"
                    );
                }
            }
        } else if !fresh && config.initial_cluster.is_some() {
            tracing::info!("the data dir holds state; --initial-cluster is ignored");
        }

        let loaded = storage.load()?;
        let log = storage.load_log()?;
        log.check(&loaded)?;
        let compacted = loaded.compacted;
        let machine = StateMachine::new(loaded, log.conf_state.clone());
        tracing::info!(
            data_dir = %config.data_dir.display(),
            member = config.member_id,
            applied = machine.applied(),
            revision = machine.revision(),
            objects = machine.snapshot().objects.len(),
            "store loaded"
        );
        let hub = Arc::new(WatchHub::new(
            storage.clone(),
            machine.snapshot(),
            compacted,
            config.history_cache,
        ));
        let tick = config.heartbeat_interval / 2;
        let ticks = |d: std::time::Duration| (d.as_millis() / tick.as_millis().max(1)) as usize;
        let settings = Settings {
            member_id: config.member_id,
            advertise: advertise.clone(),
            tick,
            heartbeat_ticks: 2,
            election_ticks: ticks(config.election_timeout).max(3),
            snapshot_threshold: config.snapshot_threshold.max(2),
            proposal_timeout: config.proposal_timeout,
            history_retention: config.history_retention.max(1),
            fault_injection: config.fault_injection,
            data_dir: config.data_dir.clone(),
            disk_reserve: config.disk_reserve,
            metrics: metrics.raft.clone(),
        };
        let (replica, running) = replication::start(settings, storage, log, machine, hub.clone())?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let liveness = Arc::new(Liveness::default());
        tokio::spawn(liveness::run_lifecycle(
            liveness.clone(),
            replica.clone(),
            hub.clone(),
            Timeouts {
                not_ready_after: config.node_not_ready_after,
                lost_after: config.node_lost_after.max(config.node_not_ready_after),
            },
            shutdown_rx.clone(),
        ));
        let service = ApiService {
            replica: replica.clone(),
            liveness,
            hub,
            shutdown: shutdown_rx.clone(),
            bookmark_every: config.bookmark_interval,
            proposal_timeout: config.proposal_timeout,
            watchers: metrics.watchers.clone(),
            auth: auth.clone(),
        };
        let mut stop = shutdown_rx.clone();
        let serving = tokio::spawn(
            connect::server_with(auth.accepts_tokens())?
                .layer(metrics.grpc.clone())
                .add_service(connect::objects_service(service.clone()))
                .add_service(connect::cluster_service(service.clone()))
                .add_service(connect::nodes_service(service))
                .add_service(
                    RaftService {
                        replica: replica.clone(),
                        shutdown: shutdown_rx.clone(),
                        auth: auth.clone(),
                    }
                    .into_server(),
                )
                .serve_with_incoming_shutdown(connect::incoming(listener), async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                }),
        );
        tracing::info!(%local_addr, %advertise, "serving");
        Ok(Member {
            local_addr,
            replica,
            shutdown,
            serving,
            raft: running.thread,
            restart_wanted: running.restart_wanted,
        })
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.serving.await??;
        self.replica.shutdown();
        tokio::task::spawn_blocking(move || self.raft.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the raft thread panicked"))?;
        Ok(())
    }
}
