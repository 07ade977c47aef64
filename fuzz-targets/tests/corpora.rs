//! Every input kept for a fuzz target, replayed through it: the corpus
//! cargo-fuzz grew (`fuzz/corpus/<target>/`) and the inputs that once
//! crashed it (`fuzz/regressions/<target>/`, kept when fixed).

use std::path::Path;

#[test]
fn every_kept_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (name, target) in fuzz_targets::TARGETS {
        let mut seen = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let input = std::fs::read(entry.path()).expect("a kept input");
                let caught = std::panic::catch_unwind(|| target(&input));
                assert!(caught.is_ok(), "{name} fails on {}", entry.path().display());
                seen += 1;
            }
        }
        assert!(seen > 0, "no kept inputs for {name}: run scripts/fuzz.sh");
        replayed += seen;
    }
    println!("{replayed} inputs replayed");
}
