//! Entry points for the fuzz targets (the `fuzz-targets` crate) into
//! device code private to its modules. Not an API.

/// A script of guest vsock packets against the host-side muxer, its bounds
/// checked after every step (`devices::virtio::vsock::muxer`).
pub fn vsock_muxer(data: &[u8]) {
    crate::devices::virtio::vsock::fuzz_script(data);
}
