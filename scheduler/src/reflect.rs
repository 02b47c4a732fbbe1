//! Reflectors: List then Watch for each kind the scheduler follows, and the
//! leader's usage stream, all feeding one channel that the run loop applies
//! to its [`ClusterState`](crate::state::ClusterState).
//!
//! A watch that breaks is re-opened from the last revision it delivered
//! whole (any member serves it, in the same order); a watch refused because its
//! revision was compacted, or that cannot be re-opened, starts over with a
//! fresh List — as Kubernetes' reflectors do.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::connect::BerthClient;
use berth_proto::pb;
use tokio::sync::{mpsc, watch};
use tonic::Code;

/// What a reflector saw.
#[derive(Debug)]
pub enum Update {
    /// Every object of `kind`, as of `revision`.
    Listed {
        kind: pb::Kind,
        objects: Vec<pb::Object>,
        revision: u64,
    },
    /// An object was created or changed.
    Changed(pb::Object),
    /// An object was deleted at `revision`.
    Deleted(pb::Object, u64),
    /// The watch of `kind` has delivered everything up to `revision`.
    Progress { kind: pb::Kind, revision: u64 },
    /// The latest usage of every node.
    Usage(pb::UsageReport),
}

/// Pause after a failed List or usage stream before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How often the leader sends usage.
const USAGE_INTERVAL: Duration = Duration::from_secs(2);

/// Starts one reflector per kind and the usage stream.
pub fn spawn(
    client: Arc<BerthClient>,
    kinds: &[pb::Kind],
    updates: mpsc::Sender<Update>,
    shutdown: watch::Receiver<bool>,
) {
    for kind in kinds {
        tokio::spawn(reflect(
            client.clone(),
            *kind,
            updates.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(follow_usage(client, updates, shutdown));
}

/// Sleeps for `pause` unless shut down first; false when shut down.
async fn pause(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = shutdown.wait_for(|stopped| *stopped) => false,
    }
}

async fn reflect(
    client: Arc<BerthClient>,
    kind: pb::Kind,
    updates: mpsc::Sender<Update>,
    mut shutdown: watch::Receiver<bool>,
) {
    'relist: loop {
        if *shutdown.borrow() {
            return;
        }
        let list = match client.list(kind, "").await {
            Ok(list) => list,
            Err(status) => {
                tracing::warn!(?kind, error = %status.message(), "list failed; retrying");
                if !pause(&mut shutdown, RETRY_PAUSE).await {
                    return;
                }
                continue;
            }
        };
        // The last revision delivered whole: a revision's changes arrive as
        // several events, and a stream can break between two of them, so a
        // watch re-opens from here (changes delivered twice are harmless:
        // the state ignores versions it already has), never from the last
        // event seen.
        let mut revision = list.revision;
        let mut last_seen = list.revision;
        let listed = Update::Listed {
            kind,
            objects: list.objects,
            revision,
        };
        if updates.send(listed).await.is_err() {
            return;
        }
        // Watch from the list's revision; re-open a broken stream once from
        // where it stopped, then fall back to a List.
        let mut reopened = false;
        loop {
            let request = pb::WatchRequest {
                kind: kind as i32,
                from_revision: revision,
                ..Default::default()
            };
            let mut stream = match client.objects().watch(request).await {
                Ok(stream) => stream.into_inner(),
                Err(status) => {
                    tracing::debug!(?kind, error = %status.message(), "watch refused; re-listing");
                    if status.code() != Code::OutOfRange && !pause(&mut shutdown, RETRY_PAUSE).await
                    {
                        return;
                    }
                    continue 'relist;
                }
            };
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                };
                let event = match message {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    Err(status) if status.code() == Code::OutOfRange => continue 'relist,
                    Err(status) => {
                        tracing::debug!(?kind, error = %status.message(), "watch broke");
                        break;
                    }
                };
                reopened = false;
                if event.r#type() == pb::WatchEventType::Bookmark {
                    revision = revision.max(event.revision);
                } else if event.revision > last_seen {
                    // A new revision begins: the one before is whole.
                    revision = revision.max(last_seen);
                }
                last_seen = last_seen.max(event.revision);
                let update = match (event.r#type(), event.object) {
                    (pb::WatchEventType::Added | pb::WatchEventType::Modified, Some(object)) => {
                        Update::Changed(object)
                    }
                    (pb::WatchEventType::Deleted, Some(object)) => {
                        Update::Deleted(object, event.revision)
                    }
                    _ => Update::Progress {
                        kind,
                        revision: event.revision,
                    },
                };
                if updates.send(update).await.is_err() {
                    return;
                }
            }
            if reopened {
                continue 'relist;
            }
            reopened = true;
        }
    }
}

/// Follows the usage agents report, from the leader (the only member that
/// has it). Absent usage only means nothing is lent to batch.
async fn follow_usage(
    client: Arc<BerthClient>,
    updates: mpsc::Sender<Update>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let opened = client
            .call_nodes(|mut c| async move {
                c.watch_usage(pb::WatchUsageRequest {
                    interval_ms: USAGE_INTERVAL.as_millis() as u64,
                })
                .await
            })
            .await;
        if let Ok(stream) = opened {
            let mut stream = stream.into_inner();
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = shutdown.wait_for(|stopped| *stopped) => return,
                };
                match message {
                    Ok(Some(report)) => {
                        if updates.send(Update::Usage(report)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if !pause(&mut shutdown, RETRY_PAUSE).await {
            return;
        }
    }
}
