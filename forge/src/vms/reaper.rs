//! The idle reaper: once a second, persistent VMs idle past their timeout
//! are paused to disk, ephemeral ones destroyed.

use std::sync::Arc;
use std::time::Duration;

use ::sandbox::PauseMode;
use tokio_util::sync::CancellationToken;

use super::Sandboxes;
use crate::store::unix_now;

pub fn start(sandboxes: Arc<Sandboxes>, every: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let idle = match sandboxes.store.idle_vms(unix_now()).await {
                Ok(idle) => idle,
                Err(error) => {
                    tracing::error!(error = %error, "reading idle sandboxes failed");
                    continue;
                }
            };
            for vm in idle {
                let outcome = if vm.persistent {
                    sandboxes
                        .pause(&vm.id, PauseMode::Disk)
                        .await
                        .map(|_| "paused to disk")
                } else {
                    sandboxes.destroy(&vm.id).await.map(|()| "destroyed")
                };
                match outcome {
                    Ok(what) => tracing::info!(vm = %vm.id, what, "idle sandbox"),
                    Err(error) => {
                        tracing::warn!(vm = %vm.id, error = %error, "idle sandbox could not be reaped")
                    }
                }
            }
        }
    });
}
