//! What `forge-vmm` and its callers say to each other, defined once: the
//! VM description a VMM starts from ([`config`], the `vm.json` of
//! `forge-vmm run --config`) and the requests and replies of its control
//! socket ([`control`]). The VMM and every caller import these types, so
//! both ends of the wire change together; the tests here pin the JSON.
//!
//! Plain serde types and nothing of KVM: a caller that writes configs and
//! drives VMMs over their sockets (the sandbox's microVM backend) does not
//! link the monitor.
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
