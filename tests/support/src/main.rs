//! Prints the requirements a CI run may lack ([`OPTIONAL`]);
//! `scripts/test.sh` runs it at the end of every run.

#![forbid(unsafe_code)]

use test_support::requirements::OPTIONAL;

fn main() {
    if OPTIONAL.is_empty() {
        println!("optional requirements under CI: none (a missing requirement fails its test)");
    }
    for optional in OPTIONAL {
        println!(
            "optional under CI: {} ({})",
            optional.requirement, optional.why
        );
    }
}
