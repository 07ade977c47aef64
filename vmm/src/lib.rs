//! `vmm`: the forge's KVM microVM monitor, one process per VM, built on the
//! rust-vmm crates. [`builder::Vmm`] builds a VM from a [`config::VmConfig`]
//! (or from a snapshot, [`restore`]) and runs it; the `forge-vmm` binary
//! wraps it with a CLI, and the control socket ([`control`]) drives a
//! running VM: pause, resume, [`snapshot`] (also pause to disk), [`fork`].
//!
//! Map: [`arch`] boot structures · [`vstate`] KVM VM, vCPUs, memory ·
//! [`devices`] serial, i8042, virtio-mmio (block, vsock, rng) · [`disk`] the
//! layered copy-on-write disk · [`machine`] the live VM the control socket
//! acts on · [`event_loop`] the epoll thread · [`socket`] socket paths that
//! survive `kill -9`.

pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod devices;
pub mod disk;
pub mod event_loop;
pub mod fork;
#[doc(hidden)]
pub mod fuzzing;
pub mod jail;
pub mod machine;
pub mod restore;
pub mod seccomp;
pub mod snapshot;
pub mod socket;
pub mod vcpus;
pub mod vstate;
