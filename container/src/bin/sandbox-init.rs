//! The sandbox launcher binary; all logic lives in
//! `sandbox_container::launcher`.
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(sandbox_container::launcher::run(&args));
}
