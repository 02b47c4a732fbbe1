//! `berthctl snapshot save FILE`: the cluster's state, at one revision, in a
//! checksummed file (`berth_proto::backup`). `berth-apiserver --restore
//! FILE` builds a new cluster from it.

use berth_proto::backup::BackupWriter;
use berth_proto::pb;

use crate::Context;
use crate::cli::SnapshotCommand;

pub async fn run(ctx: &Context, command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Save { file } => {
            let mut stream = ctx
                .client
                .call_cluster(|mut c| async move { c.snapshot(pb::SnapshotRequest {}).await })
                .await
                .map_err(|s| ctx.error(&s))?
                .into_inner();
            // Written as it arrives; named FILE only once whole.
            let mut writer = BackupWriter::create(&file)?;
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| anyhow::anyhow!("the snapshot stream broke: {}", ctx.explain(&s)))?
            {
                writer.write(&chunk)?;
            }
            let (header, objects, bytes) = writer.finish()?;
            crate::say!(
                "snapshot of {objects} objects at revision {} saved to {} ({bytes} bytes, from member {})",
                header.revision,
                file.display(),
                header.member_id
            );
            Ok(())
        }
    }
}
