//! The set of running vCPU threads of one VM, paused and resumed together.

use crate::vstate::vcpu::{VcpuError, VcpuHandle, VcpuRequest, VcpuState};

/// All vCPUs of a VM.
pub struct VcpuSet {
    handles: Vec<VcpuHandle>,
    paused: bool,
}

impl VcpuSet {
    /// Takes over started vCPU threads.
    pub fn new(handles: Vec<VcpuHandle>) -> Self {
        Self {
            handles,
            paused: false,
        }
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

    /// "running", "paused" or "exiting".
    pub fn state_name(&self, exiting: bool) -> &'static str {
        if exiting {
            "exiting"
        } else if self.paused {
            "paused"
        } else {
            "running"
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
