//! Disk storage behind virtio-blk: the layered copy-on-write disk.

pub mod layered;

pub use layered::{LayerError, LayeredDisk};
