//! The idle reaper: once a second, persistent VMs idle past their timeout
//! are paused to disk, ephemeral ones destroyed. Beside it, the expiry
//! loop destroys VMs whose deadline (`ttl_secs`) has passed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Sandboxes;
use crate::store::unix_now;

pub fn start(sandboxes: Arc<Sandboxes>, every: Duration, shutdown: CancellationToken) {
    start_expiry(sandboxes.clone(), every, shutdown.clone());
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
                match sandboxes.reap_if_idle(&vm).await {
                    Ok(Some(what)) => tracing::info!(vm = %vm.id, what, "idle sandbox"),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(vm = %vm.id, error = %error, "idle sandbox could not be reaped")
                    }
                }
            }
        }
    });
}

/// Destroys, once a second, the VMs whose deadline has passed (one at a
/// time: an expiry may wait `expiry_grace` for its VM's users).
fn start_expiry(sandboxes: Arc<Sandboxes>, every: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let expired = match sandboxes.store.expired_vms(unix_now()).await {
                Ok(expired) => expired,
                Err(error) => {
                    tracing::error!(error = %error, "reading expired sandboxes failed");
                    continue;
                }
            };
            for vm in expired {
                match sandboxes.expire(&vm).await {
                    Ok(true) => tracing::info!(vm = %vm.id, "expired sandbox destroyed"),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(vm = %vm.id, error = %error, "expired sandbox could not be destroyed")
                    }
                }
            }
        }
    });
}
