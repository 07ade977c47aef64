//! What a test needs from its host, and what it means when that is missing.
//!
//! A test that cannot run without something the host may lack (root and
//! cgroups, the built guest image, CRIU) asks [`met`] before it starts. When
//! the requirement is missing:
//!
//! 1. Under CI (`CI=true`, which `scripts/test.sh` sets unless told
//!    otherwise) the test **fails**, saying what is missing and how to get
//!    it, unless the requirement is declared optional for this host in
//!    [`OPTIONAL`], the one list of such exceptions.
//! 2. Otherwise (a developer's `cargo test` on a partial host, or an
//!    optional requirement) the test is **skipped**: it says so on stderr
//!    and appends a line to the file named by `FORGE_TEST_SKIPS`, which
//!    `scripts/test.sh` counts and lists at the end of the run. cargo counts
//!    a test that returned early as passed; the script subtracts the skipped
//!    ones, so a run never reports a test as passed that did not run.
//!
//! The skip file's lines are `<test>\t<requirement>\t<why>`.

use std::fmt;
use std::io::Write;

/// Something a test needs from the host it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Root, cgroup v2 and a built guest image: what running sandboxes
    /// needs (`scripts/setup-host.sh` provides it).
    Sandboxes,
    /// A guest image built into the data directory (`forge image build`).
    GuestImage,
    /// CRIU 4.0 or newer passing `criu check`
    /// (`container/scripts/build-criu.sh`): pause to disk and forks that
    /// keep processes on the container backend.
    Criu,
    /// Building the guest image (debootstrap, Node and Bun from their
    /// registries); `FORGE_SKIP_IMAGE_TESTS` declines it.
    ImageBuild,
}

impl Requirement {
    /// The name used in the skip file and in [`OPTIONAL`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Sandboxes => "sandboxes",
            Self::GuestImage => "guest-image",
            Self::Criu => "criu",
            Self::ImageBuild => "image-build",
        }
    }

    /// How a host gets it.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::Sandboxes => "run as root on a host with cgroup v2 after `scripts/setup-host.sh`",
            Self::GuestImage => "build one with `forge image build` (`scripts/setup-host.sh` does)",
            Self::Criu => {
                "build it with `container/scripts/build-criu.sh` (`scripts/setup-host.sh` does)"
            }
            Self::ImageBuild => "unset FORGE_SKIP_IMAGE_TESTS",
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A requirement a CI run may lack and still pass, and why that is
/// acceptable on the hosts it names.
#[derive(Debug, Clone, Copy)]
pub struct Optional {
    pub requirement: Requirement,
    pub why: &'static str,
}

/// The requirements a CI run may lack. Empty: the hosts CI runs on get
/// everything from `scripts/setup-host.sh`, so a missing requirement there
/// is a broken set-up, not a reason to pass. `scripts/test.sh` prints this
/// list at the end of every run (see the `test-support` binary).
pub const OPTIONAL: &[Optional] = &[];

/// The environment variable naming the file skipped tests are appended to.
pub const SKIPS_FILE_ENV: &str = "FORGE_TEST_SKIPS";

/// What to do about a missing requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Skip the test, recording why.
    Skip,
    /// Fail the test: CI must not pass without it.
    Fail,
}

/// The verdict for a missing `requirement` given whether this is a CI run.
pub fn verdict(requirement: Requirement, ci: bool) -> Verdict {
    let optional = OPTIONAL.iter().any(|o| o.requirement == requirement);
    if ci && !optional {
        Verdict::Fail
    } else {
        Verdict::Skip
    }
}

/// Whether this process runs under CI (`CI=true`, as CI services and
/// `scripts/test.sh` set it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// True when the requirement is met (`missing` is `None`) and the test
/// should go on. When it is missing, skips (false, recorded) or fails (a
/// panic naming what is missing) as the module doc says.
pub fn met(requirement: Requirement, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) => {
            self::missing(requirement, &why);
            false
        }
    }
}

/// Says that `requirement` is missing, for `why`: records the skip and
/// returns (the test then returns), or panics under CI.
pub fn missing(requirement: Requirement, why: &str) {
    let test = current_test();
    match verdict(requirement, under_ci()) {
        Verdict::Fail => panic!(
            "{test}: requirement `{requirement}` is missing under CI: {why}; {}. \
             A CI run must not pass without it (tests/support: requirements::OPTIONAL lists the exceptions)",
            requirement.remedy()
        ),
        Verdict::Skip => {
            eprintln!("SKIPPED {test}: `{requirement}` is missing: {why}");
            record_skip(&test, requirement, why);
        }
    }
}

/// The running test's name: libtest names each test's thread after it.
fn current_test() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("a test")
        .to_owned()
}

/// One line for the run's skip list; a failure to record is reported, not
/// hidden, since an unrecorded skip would be counted as a pass.
fn record_skip(test: &str, requirement: Requirement, why: &str) {
    let Some(path) = std::env::var_os(SKIPS_FILE_ENV) else {
        return;
    };
    let line = skip_line(test, requirement, why);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        // One write per line: O_APPEND keeps concurrent tests' lines whole.
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "{test}: could not record the skip in {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}

fn skip_line(test: &str, requirement: Requirement, why: &str) -> String {
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    format!("{}\t{requirement}\t{}\n", clean(test), clean(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_requirement_fails_under_ci_and_skips_elsewhere() {
        for requirement in [
            Requirement::Sandboxes,
            Requirement::GuestImage,
            Requirement::Criu,
            Requirement::ImageBuild,
        ] {
            assert_eq!(verdict(requirement, true), Verdict::Fail, "{requirement}");
            assert_eq!(verdict(requirement, false), Verdict::Skip, "{requirement}");
        }
    }

    #[test]
    fn a_met_requirement_never_records_anything() {
        assert!(met(Requirement::Criu, None));
    }

    #[test]
    fn skip_lines_are_one_line_of_three_fields() {
        let line = skip_line("t", Requirement::Criu, "no\tcriu\nhere");
        assert_eq!(line, "t\tcriu\tno criu here\n");
    }
}
