//! What a run does, read from the pushed commit: the steps of
//! `.forge.toml`, or else the `lint` and `test` scripts of `package.json`
//! run with Bun; plus an install step when dependency manifests exist.
//!
//! ```toml
//! [pipeline]
//! install = "bun install --frozen-lockfile"   # optional; default "bun install"
//!
//! [[pipeline.steps]]
//! name = "lint"
//! run = "bun run lint"
//! timeout_secs = 300                          # optional; default 600
//! ```
//!
//! The install step is skipped when the manifests (`package.json` and the
//! lockfiles) hash to what the sandbox last installed from: a fork carries
//! its parent's `node_modules`, and an unchanged lockfile needs no install.

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
    /// Hash of the manifests at this commit.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub install: Option<Install>,
    pub steps: Vec<Step>,
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
    let config = match file(".forge.toml") {
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
        if let Some(bytes) = file(name) {
            any_manifest = true;
            hasher.update(name.as_bytes());
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    let custom_install = config.as_ref().and_then(|c| c.install.clone());
    let install = (any_manifest || custom_install.is_some()).then(|| Install {
        run: custom_install.unwrap_or_else(|| "bun install".to_owned()),
        hash: hex::encode(hasher.finalize()),
    });
    let steps = match config {
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
            steps
        }
        _ => package_scripts(file("package.json"))?,
    };
    Ok(Plan { install, steps })
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
    }
}
