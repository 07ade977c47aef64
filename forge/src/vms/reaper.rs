//! The idle reaper: once a second, persistent VMs idle past their timeout
//! are paused to disk, ephemeral ones destroyed. Beside it, the expiry
//! loop destroys VMs whose deadline (`ttl_secs`) has passed (one at a
//! time: an expiry may wait `expiry_grace` for its VM's users), and the
//! node watch marks `lost` the VMs of sandbox nodes that stopped reporting
//! and gives the VMs of a node that reports again their state back; every
//! [`crate::nodes::STRAYS_EVERY`] the sandboxes on nodes that nothing
//! records are collected.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Sandboxes, VmError};
use crate::store::{VmRow, unix_now};

pub fn start(sandboxes: Arc<Sandboxes>, every: Duration, shutdown: CancellationToken) {
    let reaper = sandboxes.clone();
    each_tick(every, shutdown.clone(), "idle", move || {
        let sandboxes = reaper.clone();
        async move {
            for vm in sandboxes.store.idle_vms(unix_now()).await? {
                match sandboxes.reap_if_idle(&vm).await {
                    Ok(Some(what)) => tracing::info!(vm = %vm.id, what, "idle sandbox"),
                    Ok(None) => {}
                    Err(error) => failed(&vm, "idle sandbox could not be reaped", &error),
                }
            }
            Ok(())
        }
    });
    let watcher = sandboxes.clone();
    each_tick(every, shutdown.clone(), "nodes' lost", move || {
        let sandboxes = watcher.clone();
        async move {
            if let Err(error) = sandboxes.watch_nodes().await {
                tracing::warn!(error = %error, "watching the sandbox nodes failed");
            }
            Ok(())
        }
    });
    let collector = sandboxes.clone();
    each_tick(
        crate::nodes::STRAYS_EVERY,
        shutdown.clone(),
        "nodes' stray",
        move || {
            let sandboxes = collector.clone();
            async move {
                if let Err(error) = sandboxes.collect_strays(crate::nodes::STRAY_GRACE).await {
                    tracing::warn!(error = %error, "collecting stray sandboxes on the nodes failed");
                }
                Ok(())
            }
        },
    );
    each_tick(every, shutdown, "expired", move || {
        let sandboxes = sandboxes.clone();
        async move {
            for vm in sandboxes.store.expired_vms(unix_now()).await? {
                match sandboxes.expire(&vm).await {
                    Ok(true) => tracing::info!(vm = %vm.id, "expired sandbox destroyed"),
                    Ok(false) => {}
                    Err(error) => failed(&vm, "expired sandbox could not be destroyed", &error),
                }
            }
            Ok(())
        }
    });
}

fn failed(vm: &VmRow, what: &'static str, error: &VmError) {
    tracing::warn!(vm = %vm.id, error = %error, "{what}");
}

/// Runs `pass` every `every` until `shutdown`; a pass that fails (reading
/// the `which` sandboxes) is logged and the next tick tries again.
fn each_tick<F, Fut>(every: Duration, shutdown: CancellationToken, which: &'static str, pass: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = crate::store::Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = pass().await {
                tracing::error!(error = %error, "reading {which} sandboxes failed");
            }
        }
    });
}
