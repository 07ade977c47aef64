//! The set of running vCPU threads of one VM, paused and resumed together.

use vmm_proto::control::VmState;

use crate::vstate::vcpu::{VcpuError, VcpuHandle, VcpuRequest, VcpuState};
use crate::vstate::vcpu_state::VcpuSnapshot;

/// All vCPUs of a VM.
pub struct VcpuSet {
    handles: Vec<VcpuHandle>,
    paused: bool,
}

impl VcpuSet {
    /// Takes over started vCPU threads (`paused` if they started so).
    pub fn new(handles: Vec<VcpuHandle>, paused: bool) -> Self {
        Self { handles, paused }
    }

    fn request_all(&mut self, request: VcpuRequest) -> Result<(), VcpuError> {
        for h in &self.handles {
            h.send(request);
        }
        for h in &self.handles {
            let state = h.wait(request)?;
            if state == VcpuState::Exited {
                break;
            }
        }
        Ok(())
    }

    /// Stops every vCPU outside KVM_RUN; returns when all have stopped.
    pub fn pause(&mut self) -> Result<(), VcpuError> {
        self.request_all(VcpuRequest::Pause)?;
        self.paused = true;
        Ok(())
    }

    /// Lets every vCPU run again.
    pub fn resume(&mut self) -> Result<(), VcpuError> {
        self.request_all(VcpuRequest::Resume)?;
        self.paused = false;
        Ok(())
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Reads every vCPU's KVM state, MP state first; they must be paused.
    pub fn save_all(&self) -> Result<Vec<VcpuSnapshot>, VcpuError> {
        self.handles.iter().map(VcpuHandle::save).collect()
    }

    /// Forgets the threads without touching them: a forked child has only
    /// the forking thread, so the handles name threads that do not exist.
    pub fn forget(&mut self) {
        for h in std::mem::take(&mut self.handles) {
            std::mem::forget(h);
        }
    }

    /// What the VM is doing, as the control socket reports it.
    pub fn state(&self, exiting: bool) -> VmState {
        if exiting {
            VmState::Exiting
        } else if self.paused {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// Ends and joins every vCPU thread.
    pub fn exit_all(&mut self) {
        for h in &self.handles {
            h.send(VcpuRequest::Exit);
        }
        for h in &mut self.handles {
            h.exit();
        }
        self.handles.clear();
    }
}
