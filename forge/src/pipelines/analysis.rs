//! The analysis after a run's steps, for a review to read: the project's
//! own TypeScript compiler, ESLint and Biome, each run in the branch's
//! sandbox when the checkout configures it and its install put it in
//! `node_modules/.bin` (nothing is installed for it), and the failing
//! tests and compiler errors found in the steps' logs. Findings go to
//! `run_analyses` ([`crate::review::Analysis`]); they never change the
//! run's result, which is its steps'.

use std::time::Duration;

use ::sandbox::{Command, ExitStatus};
use tokio_util::sync::CancellationToken;

use super::Pipelines;
use crate::review::Analysis;
use crate::review::findings::{self, Finding, Tool};
use crate::store::RunRow;

/// Where the checkout is inside the sandbox.
const ROOT: &str = "/workspace";

/// Longest one tool may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// The exit status of a tool's script when the checkout does not use it.
const NOT_USED: i32 = 99;

/// One tool the analysis may run.
struct Analyser {
    tool: Tool,
    /// A shell test: whether the checkout configures and installed it.
    used: &'static str,
    /// The command, printing the format [`Self::parse`] reads on stdout.
    run: &'static str,
    parse: fn(&str, &str) -> Vec<Finding>,
}

const ANALYSERS: [Analyser; 3] = [
    Analyser {
        tool: Tool::Tsc,
        used: "test -f tsconfig.json && test -x node_modules/.bin/tsc",
        run: "node_modules/.bin/tsc --noEmit --pretty false",
        parse: findings::tsc,
    },
    Analyser {
        tool: Tool::Eslint,
        used: "ls -d eslint.config.* .eslintrc* 2>/dev/null | grep -q . && test -x node_modules/.bin/eslint",
        run: "node_modules/.bin/eslint --format json .",
        parse: findings::eslint,
    },
    Analyser {
        tool: Tool::Biome,
        used: "{ test -f biome.json || test -f biome.jsonc; } && test -x node_modules/.bin/biome",
        run: "node_modules/.bin/biome lint --reporter=json --max-diagnostics=200 .",
        parse: findings::biome,
    },
];

impl Pipelines {
    /// Runs the analysis of `run` in sandbox `vm` after its steps, and
    /// records it. A failure of the analysis is a note in it, never the
    /// run's.
    pub(super) async fn analyse(&self, run: &RunRow, vm: &str, token: &CancellationToken) {
        let mut analysis = Analysis::default();
        for analyser in &ANALYSERS {
            if token.is_cancelled() {
                return;
            }
            let script = format!(
                "if {}; then exec {}; else exit {NOT_USED}; fi",
                analyser.used, analyser.run
            );
            let command = Command::shell(&script)
                .cwd(ROOT)
                .env("CI", "true")
                .env("NO_COLOR", "1")
                .timeout(TOOL_TIMEOUT);
            let output = tokio::select! {
                _ = token.cancelled() => return,
                output = self.sandboxes.exec(vm, command) => output,
            };
            let label = analyser.tool.label();
            let output = match output {
                Ok(output) => output,
                Err(error) => {
                    analysis
                        .notes
                        .push(format!("{label} could not run: {error}"));
                    continue;
                }
            };
            if output.exited.status == ExitStatus::Code(NOT_USED) {
                continue;
            }
            analysis.tools.push(label.to_owned());
            let stdout = String::from_utf8_lossy(&output.stdout);
            let found = (analyser.parse)(&stdout, ROOT);
            if output.exited.timed_out {
                analysis.notes.push(format!(
                    "{label} timed out after {} s",
                    TOOL_TIMEOUT.as_secs()
                ));
            } else if output.exited.truncated {
                analysis
                    .notes
                    .push(format!("{label} printed more than the output limit"));
            } else if found.is_empty() && !output.exited.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                let status = match output.exited.status {
                    ExitStatus::Code(code) => format!("exit {code}"),
                    ExitStatus::Signal(signal) => format!("signal {signal}"),
                };
                analysis.notes.push(format!(
                    "{label} failed ({status}) and reported nothing readable: {}",
                    first.chars().take(300).collect::<String>()
                ));
            }
            crate::review::add(&mut analysis, found);
        }
        // The steps' own output: a failing test, a compiler a step ran.
        match self.store.steps(run.id).await {
            Ok(steps) => {
                for step in steps.iter().skip(1) {
                    crate::review::add(&mut analysis, findings::tsc(&step.log, ROOT));
                    crate::review::add(&mut analysis, findings::bun_test(&step.log, ROOT));
                }
            }
            Err(error) => analysis
                .notes
                .push(format!("reading the steps failed: {error}")),
        }
        if let Err(error) = self.store.set_run_analysis(run.id, &analysis).await {
            tracing::warn!(run = run.id, error = %error, "recording the analysis failed");
        }
    }
}
