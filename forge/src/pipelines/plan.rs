//! What a run does, read from the pushed commit: the steps of
//! `.forge.toml`, or else the `lint` and `test` scripts of `package.json`
//! run with Bun; plus an install step when dependency manifests exist.
//!
//! ```toml
//! [pipeline]
//! install = "bun install --frozen-lockfile"   # optional; default "bun install"
//! template = "python"                         # optional; the sandbox's template
//!
//! [[pipeline.steps]]
//! name = "lint"
//! run = "bun run lint"
//! timeout_secs = 300                          # optional; default 600
//! ```
//!
//! The install step is skipped when the manifests (`package.json` and the
//! lockfiles) and the install command hash to what the sandbox last
//! installed from: a fork carries its parent's `node_modules`, and an
//! unchanged lockfile needs no install.
//!
//! The steps may be read from another commit than the one that runs
//! ([`plan_from`]): the review bot runs a pull request's head with the steps
//! of its base branch, so that the pull request cannot choose how it is
//! judged. The steps' commands (and the install command) come from that
//! commit; what they run on, and the manifests that decide the install,
//! come from the commit checked out.

use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Files that decide whether dependencies must be installed again.
pub const MANIFESTS: [&str; 5] = [
    "package.json",
    "bun.lock",
    "bun.lockb",
    "package-lock.json",
    "yarn.lock",
];

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub run: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub run: String,
    /// Hash of the manifests at the commit checked out, and of `run`.
    pub hash: String,
}

/// The file a plan's steps were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepsFile {
    ForgeToml,
    PackageJson,
}

impl StepsFile {
    pub fn name(self) -> &'static str {
        match self {
            Self::ForgeToml => ".forge.toml",
            Self::PackageJson => "package.json",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub install: Option<Install>,
    pub steps: Vec<Step>,
    /// Where `steps` came from; `None` when neither file defines any.
    pub steps_file: Option<StepsFile>,
    /// The template the branch's sandbox starts from (`/v1/templates`);
    /// the forge's image when `None`.
    pub template: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgeToml {
    pipeline: Option<PipelineToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineToml {
    install: Option<String>,
    template: Option<String>,
    #[serde(default)]
    steps: Vec<StepToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepToml {
    name: String,
    run: String,
    timeout_secs: Option<u64>,
}

/// Builds the plan from the commit's files; `file(path)` returns a file's
/// content at the commit. An invalid `.forge.toml` is an error naming the
/// problem.
pub fn plan(file: impl Fn(&str) -> Option<Vec<u8>>) -> Result<Plan, String> {
    plan_from(&file, &file)
}

/// The plan of a run of one commit with the steps of another:
/// `.forge.toml` (steps and install command) and `package.json`'s scripts
/// are read with `steps_from`, the dependency manifests with `tree` (the
/// commit checked out, whose dependencies are installed).
pub fn plan_from(
    steps_from: impl Fn(&str) -> Option<Vec<u8>>,
    tree: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Plan, String> {
    let config = match steps_from(".forge.toml") {
        Some(bytes) => {
            let text =
                String::from_utf8(bytes).map_err(|_| ".forge.toml is not UTF-8".to_owned())?;
            let parsed: ForgeToml =
                toml::from_str(&text).map_err(|e| format!("invalid .forge.toml: {e}"))?;
            parsed.pipeline
        }
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut any_manifest = false;
    for name in MANIFESTS {
        if let Some(bytes) = tree(name) {
            any_manifest = true;
            hasher.update(name.as_bytes());
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    let custom_install = config.as_ref().and_then(|c| c.install.clone());
    let template = config.as_ref().and_then(|c| c.template.clone());
    let install = (any_manifest || custom_install.is_some()).then(|| {
        let run = custom_install.unwrap_or_else(|| "bun install".to_owned());
        // Another command installs differently: it is part of the hash.
        hasher.update(b"install command");
        hasher.update(run.as_bytes());
        Install {
            run,
            hash: hex::encode(hasher.finalize()),
        }
    });
    let (steps, steps_file) = match config {
        Some(config) if !config.steps.is_empty() => {
            let mut steps = Vec::new();
            for step in config.steps {
                if step.name.trim().is_empty() || step.run.trim().is_empty() {
                    return Err(
                        "invalid .forge.toml: every step needs a name and a run command".into(),
                    );
                }
                steps.push(Step {
                    name: step.name,
                    run: step.run,
                    timeout: step
                        .timeout_secs
                        .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
                });
            }
            (steps, Some(StepsFile::ForgeToml))
        }
        _ => {
            let steps = package_scripts(steps_from("package.json"))?;
            let file = (!steps.is_empty()).then_some(StepsFile::PackageJson);
            (steps, file)
        }
    };
    Ok(Plan {
        install,
        steps,
        steps_file,
        template,
    })
}

/// `lint` and `test` from `package.json`'s scripts, run with Bun.
fn package_scripts(manifest: Option<Vec<u8>>) -> Result<Vec<Step>, String> {
    let Some(bytes) = manifest else {
        return Ok(Vec::new());
    };
    let manifest: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("package.json is not valid JSON: {e}"))?;
    Ok(["lint", "test"]
        .into_iter()
        .filter(|script| manifest["scripts"][script].is_string())
        .map(|script| Step {
            name: script.to_owned(),
            run: format!("bun run {script}"),
            timeout: DEFAULT_TIMEOUT,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<Vec<u8>> + use<> {
        let list: Vec<(String, String)> = list
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |path| {
            list.iter()
                .find(|(p, _)| p == path)
                .map(|(_, c)| c.clone().into_bytes())
        }
    }

    #[test]
    fn package_scripts_become_steps_and_manifests_an_install() {
        let plan = plan(files(&[(
            "package.json",
            r#"{"scripts":{"test":"bun test","build":"x"}}"#,
        )]))
        .expect("plan");
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].run, "bun run test");
        let install = plan.install.expect("install");
        assert_eq!(install.run, "bun install");
        let other = super::plan(files(&[
            ("package.json", r#"{"scripts":{"test":"bun test"}}"#),
            ("bun.lock", "x"),
        ]))
        .expect("plan");
        assert_ne!(
            other.install.expect("install").hash,
            install.hash,
            "a lockfile changes the hash"
        );
    }

    #[test]
    fn forge_toml_wins_and_is_validated() {
        let toml = "[pipeline]\ninstall = \"npm ci\"\n[[pipeline.steps]]\nname = \"unit\"\nrun = \"make test\"\ntimeout_secs = 5\n";
        let plan = plan(files(&[
            (".forge.toml", toml),
            ("package.json", r#"{"scripts":{"lint":"x"}}"#),
        ]))
        .expect("plan");
        assert_eq!(
            plan.steps,
            vec![Step {
                name: "unit".into(),
                run: "make test".into(),
                timeout: Duration::from_secs(5)
            }]
        );
        assert_eq!(plan.install.expect("install").run, "npm ci");
        let bad =
            super::plan(files(&[(".forge.toml", "[pipeline]\nsteps = 3\n")])).expect_err("invalid");
        assert!(bad.starts_with("invalid .forge.toml"), "{bad}");
        let empty = super::plan(files(&[])).expect("plan");
        assert!(empty.install.is_none() && empty.steps.is_empty());
        assert_eq!(empty.steps_file, None);
    }

    #[test]
    fn borrowed_steps_come_from_one_commit_and_manifests_from_the_other() {
        let base = files(&[
            (
                ".forge.toml",
                "[pipeline]\ninstall = \"bun install --frozen-lockfile\"\n[[pipeline.steps]]\nname = \"test\"\nrun = \"bun test\"\n",
            ),
            ("package.json", r#"{"scripts":{}}"#),
        ]);
        let head = files(&[
            (
                ".forge.toml",
                "[pipeline]\ninstall = \"true\"\n[[pipeline.steps]]\nname = \"test\"\nrun = \"true\"\n",
            ),
            ("package.json", r#"{"scripts":{"test":"true"}}"#),
            ("bun.lock", "x"),
        ]);
        let own = plan(&head).expect("plan");
        let borrowed = plan_from(&base, &head).expect("plan");
        assert_eq!(borrowed.steps[0].run, "bun test", "the base's steps");
        assert_eq!(borrowed.steps_file, Some(StepsFile::ForgeToml));
        let install = borrowed.install.clone().expect("install");
        assert_eq!(
            install.run, "bun install --frozen-lockfile",
            "the base's command"
        );
        assert_eq!(own.install.clone().expect("install").run, "true");
        assert_ne!(borrowed, own, "the head's own steps are not the review's");
        // The manifests are the head's: the base's differ, and so would the hash.
        let base_own = plan(&base).expect("plan");
        assert_ne!(base_own.install.expect("install").hash, install.hash);
        assert_eq!(plan_from(&head, &head), Ok(own));
    }

    #[test]
    fn borrowed_package_scripts_name_their_file() {
        let base = files(&[("package.json", r#"{"scripts":{"lint":"x","test":"y"}}"#)]);
        let head = files(&[(
            ".forge.toml",
            "[[pipeline.steps]]\nname = \"ok\"\nrun = \"true\"\n",
        )]);
        let borrowed = plan_from(&base, &head).expect("plan");
        assert_eq!(borrowed.steps_file, Some(StepsFile::PackageJson));
        let names: Vec<&str> = borrowed.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["lint", "test"]);
        assert!(borrowed.install.is_none(), "the head has no manifest");
        let invalid = files(&[(".forge.toml", "[pipeline]\nsteps = 3\n")]);
        assert!(
            plan_from(&invalid, &head).is_err(),
            "the base's errors are the run's"
        );
    }

    #[test]
    fn another_install_command_installs_again() {
        let with = |command: &str| {
            let toml = format!("[pipeline]\ninstall = \"{command}\"\n");
            plan(files(&[
                (".forge.toml", toml.as_str()),
                ("package.json", "{}"),
            ]))
            .expect("plan")
            .install
            .expect("install")
            .hash
        };
        assert_ne!(with("bun install"), with("bun install --frozen-lockfile"));
    }
}
