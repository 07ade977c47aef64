//! KVM state of one VM: guest memory, the VM file descriptor with its
//! in-kernel irqchip and PIT, and the vCPUs with their threads.

pub mod exit;
pub mod memory;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
