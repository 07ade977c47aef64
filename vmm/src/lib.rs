//! `vmm`: the forge's KVM microVM monitor, one process per VM, built on the
//! rust-vmm crates. [`builder::Vmm`] builds a VM from a [`config::VmConfig`]
//! and runs it; the `forge-vmm` binary wraps it with a CLI, and the control
//! socket ([`control`]) drives a running VM.

pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod devices;
pub mod disk;
pub mod event_loop;
pub mod fork;
pub mod machine;
pub mod restore;
pub mod snapshot;
pub mod socket;
pub mod vcpus;
pub mod vstate;
