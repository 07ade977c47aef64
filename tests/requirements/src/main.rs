//! Prints the requirements a CI run may lack ([`requirements::OPTIONAL`]);
//! `scripts/test.sh` runs it at the end of every run.

#![forbid(unsafe_code)]

fn main() {
    if requirements::OPTIONAL.is_empty() {
        println!("optional requirements under CI: none (a missing requirement fails its test)");
    }
    for optional in requirements::OPTIONAL {
        println!(
            "optional under CI: {} ({})",
            optional.requirement, optional.why
        );
    }
}
