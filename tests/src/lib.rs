//! End-to-end tests that drive the real `forge` binary.
