//! Wiring: open the store, start the writer, serve gRPC, stop cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use berth_proto::connect;
use berth_proto::internal::{ApplyOp, Command, command::Op};
use berth_proto::pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::error::ApiError;
use crate::sequencer::{self, Proposer, Settings};
use crate::service::ApiService;
use crate::state_machine::{DEFAULT_NAMESPACE, StateMachine};
use crate::storage::Storage;
use crate::watch::WatchHub;

/// A running apiserver.
pub struct ApiServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    writer: JoinHandle<()>,
}

impl ApiServer {
    /// Opens the store in `config.data_dir`, binds `config.listen` and serves.
    pub async fn start(config: Config) -> anyhow::Result<ApiServer> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        let storage = Storage::open(&config.data_dir)?;
        let (machine, compacted) = StateMachine::open(storage.clone())?;
        tracing::info!(
            data_dir = %config.data_dir.display(),
            revision = machine.revision(),
            objects = machine.snapshot().objects.len(),
            "store loaded"
        );
        let hub = Arc::new(WatchHub::new(
            storage,
            machine.snapshot(),
            compacted,
            config.history_cache,
        ));
        let (proposer, writer) = sequencer::spawn(
            machine,
            hub.clone(),
            Settings {
                max_batch: config.max_batch.max(1),
                history_retention: config.history_retention.max(1),
            },
        )?;
        ensure_default_namespace(&proposer).await?;

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let service = ApiService {
            proposer,
            hub,
            shutdown: shutdown_rx.clone(),
            bookmark_every: config.bookmark_interval,
        };
        let mut stop = shutdown_rx;
        let serving = tokio::spawn(
            connect::server()
                .add_service(connect::objects_service(service.clone()))
                .add_service(connect::cluster_service(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                }),
        );
        tracing::info!(%local_addr, "serving");
        Ok(ApiServer {
            local_addr,
            shutdown,
            serving,
            writer,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting requests, ends watch streams, answers the writes
    /// already queued and waits for the writer to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.serving.await??;
        // The service (and with it the last proposer) is gone once serving
        // ends, so the writer drains its queue and exits.
        tokio::task::spawn_blocking(move || self.writer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
        Ok(())
    }
}

/// Every cluster has a `default` namespace from its first revision on.
async fn ensure_default_namespace(proposer: &Proposer) -> anyhow::Result<()> {
    let namespace = pb::Object::from(pb::Namespace {
        metadata: Some(pb::ObjectMeta {
            name: DEFAULT_NAMESPACE.into(),
            ..Default::default()
        }),
        spec: Some(pb::NamespaceSpec::default()),
    });
    let command = Command {
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        op: Some(Op::Apply(ApplyOp {
            object: Some(namespace),
            create_only: true,
            new_uid: uuid::Uuid::new_v4().to_string(),
        })),
    };
    match proposer.propose(command).await {
        Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e).context("cannot create the default namespace"),
    }
}
