//! The forge's web UI: server-rendered pages and the static files they use.
#![forbid(unsafe_code)]
