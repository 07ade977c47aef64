//! Entry points for the fuzz targets (the `fuzz-targets` crate) into
//! parsers private to their modules, each checking that parser's promised
//! properties. Not an API.

/// The egress proxy's request head parser (`vms::egress`).
pub fn egress_head(head: &[u8]) {
    crate::vms::egress::check_parse_head(head);
}
