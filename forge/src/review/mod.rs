//! What a review says about a change, wherever it is posted: the findings
//! of the tools ([`findings`]), placed on the lines of the change's diff
//! ([`diff`]) as inline comments, or listed in the summary when their line
//! is not part of the change.
//!
//! Findings come from the analysis a run does after its steps
//! ([`crate::pipelines`]): the project's own TypeScript compiler, ESLint
//! and Biome, when its checkout configures and installs them, and the
//! failing tests and compiler errors in its steps' logs. [`model`] asks an
//! OpenAI-compatible model for its review of the same change, and
//! [`compose`] makes the verdict, body and comments that the GitHub bot
//! and the forge's own branch reviews post.

pub mod compose;
pub mod diff;
pub mod findings;
pub mod model;

use std::collections::BTreeMap;

pub use compose::ReviewMode;
pub use diff::Diff;
pub use findings::Finding;

/// Most findings kept of one run (the rest are counted in a note).
pub const MAX_FINDINGS: usize = 500;
/// Most inline comments on one review; further findings are listed.
pub const MAX_INLINE_COMMENTS: usize = 30;
/// Most findings listed in a summary.
pub const MAX_LISTED: usize = 30;

/// What the analysis after a run's steps found.
pub type Analysis = api_types::runs::RunAnalysis;

/// Adds `found` to `analysis`, skipping findings already known, up to
/// [`MAX_FINDINGS`].
pub fn add(analysis: &mut Analysis, found: Vec<Finding>) {
    let before = analysis.findings.len();
    let mut dropped = 0;
    for finding in found {
        if analysis.findings.contains(&finding) {
            continue;
        }
        if analysis.findings.len() >= MAX_FINDINGS {
            dropped += 1;
            continue;
        }
        analysis.findings.push(finding);
    }
    if dropped > 0 {
        analysis.notes.push(format!(
            "{dropped} more findings were dropped (at most {MAX_FINDINGS} are kept; {} were new)",
            analysis.findings.len() - before
        ));
    }
}

/// A review comment on one line of the change (the new side).
pub use api_types::runs::ReviewComment as LineComment;

/// Findings placed on a diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placed {
    /// One comment per line of the change that has findings.
    pub comments: Vec<LineComment>,
    /// Findings whose line is not part of the change, or past
    /// [`MAX_INLINE_COMMENTS`].
    pub elsewhere: Vec<Finding>,
}

impl Placed {
    /// Puts each finding on its line of `diff` when it has one there.
    pub fn new(findings: &[Finding], diff: &Diff) -> Self {
        let mut on_lines: BTreeMap<(&str, u32), Vec<&Finding>> = BTreeMap::new();
        let mut elsewhere = Vec::new();
        for finding in findings {
            match finding.line {
                Some(line) if diff.commentable(&finding.path, line) => on_lines
                    .entry((finding.path.as_str(), line))
                    .or_default()
                    .push(finding),
                _ => elsewhere.push(finding.clone()),
            }
        }
        let mut comments = Vec::new();
        for ((path, line), found) in on_lines {
            if comments.len() == MAX_INLINE_COMMENTS {
                elsewhere.extend(found.into_iter().cloned());
                continue;
            }
            let body = found
                .iter()
                .map(|finding| findings::describe(finding))
                .collect::<Vec<_>>()
                .join("\n\n");
            comments.push(LineComment {
                path: path.to_owned(),
                line,
                body,
            });
        }
        Self {
            comments,
            elsewhere,
        }
    }

    /// The summary's section on findings; empty when there are none.
    pub fn section(&self, analysis: &Analysis) -> String {
        let mut out = String::new();
        if !analysis.tools.is_empty() || !self.comments.is_empty() || !self.elsewhere.is_empty() {
            let ran = if analysis.tools.is_empty() {
                String::new()
            } else {
                format!(" (ran {})", analysis.tools.join(", "))
            };
            out.push_str(&format!(
                "\n#### Findings{ran}\n\n{} on lines of this change, commented inline; {} elsewhere.\n",
                self.comments.len(),
                self.elsewhere.len()
            ));
        }
        for finding in self.elsewhere.iter().take(MAX_LISTED) {
            out.push_str(&format!(
                "- `{}` {}\n",
                finding.place().replace('`', "'"),
                one_line(&findings::describe(finding))
            ));
        }
        if self.elsewhere.len() > MAX_LISTED {
            out.push_str(&format!(
                "- and {} more\n",
                self.elsewhere.len() - MAX_LISTED
            ));
        }
        for note in &analysis.notes {
            out.push_str(&format!("\n> {}\n", one_line(note)));
        }
        out
    }
}

/// `text` on one line (a list item or a quote must not be broken out of).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::findings::{Severity, Tool};
    use super::*;

    fn finding(tool: Tool, path: &str, line: u32, message: &str) -> Finding {
        Finding {
            tool,
            path: path.into(),
            line: Some(line),
            severity: Severity::Error,
            rule: None,
            message: message.into(),
        }
    }

    fn diff() -> Diff {
        Diff::parse(
            "diff --git a/a.ts b/a.ts\n--- a/a.ts\n+++ b/a.ts\n@@ -1,2 +1,3 @@\n x\n+y\n z\n",
        )
    }

    #[test]
    fn findings_on_changed_lines_become_one_comment_per_line() {
        let found = [
            finding(Tool::Tsc, "a.ts", 2, "type error"),
            finding(Tool::Biome, "a.ts", 2, "lint error"),
            finding(Tool::Tsc, "a.ts", 9, "outside the hunk"),
            finding(Tool::BunTest, "b.ts", 1, "another file"),
        ];
        let placed = Placed::new(&found, &diff());
        assert_eq!(placed.comments.len(), 1);
        assert_eq!(placed.comments[0].line, 2);
        assert_eq!(
            placed.comments[0].body,
            "**tsc**: type error\n\n**Biome**: lint error"
        );
        assert_eq!(placed.elsewhere.len(), 2);
        let section = placed.section(&Analysis {
            tools: vec!["tsc".into()],
            ..Analysis::default()
        });
        assert!(section.contains("1 on lines of this change, commented inline; 2 elsewhere."));
        assert!(section.contains("- `a.ts:9` **tsc**: outside the hunk"));
        assert!(section.contains("- `b.ts:1` **bun test**: another file"));
    }

    #[test]
    fn inline_comments_are_capped_and_the_rest_listed() {
        let lines = (1..=100)
            .map(|n| format!("+line {n}\n"))
            .collect::<String>();
        let big = Diff::parse(&format!(
            "diff --git a/a.ts b/a.ts\n+++ b/a.ts\n@@ -0,0 +1,100 @@\n{lines}"
        ));
        let found: Vec<_> = (1..=100)
            .map(|n| finding(Tool::Tsc, "a.ts", n, "x"))
            .collect();
        let placed = Placed::new(&found, &big);
        assert_eq!(placed.comments.len(), MAX_INLINE_COMMENTS);
        assert_eq!(placed.elsewhere.len(), 100 - MAX_INLINE_COMMENTS);
        let section = placed.section(&Analysis::default());
        assert!(section.contains(&format!(
            "- and {} more",
            100 - MAX_INLINE_COMMENTS - MAX_LISTED
        )));
    }

    #[test]
    fn the_analysis_keeps_each_finding_once_and_a_bounded_number() {
        let mut analysis = Analysis::default();
        add(&mut analysis, vec![finding(Tool::Tsc, "a.ts", 1, "x"); 3]);
        assert_eq!(analysis.findings.len(), 1);
        add(
            &mut analysis,
            (0..MAX_FINDINGS as u32 + 10)
                .map(|n| finding(Tool::Tsc, "a.ts", n + 2, "x"))
                .collect(),
        );
        assert_eq!(analysis.findings.len(), MAX_FINDINGS);
        assert!(analysis.notes[0].starts_with("11 more findings were dropped"));
    }

    #[test]
    fn a_message_cannot_break_out_of_its_list_item() {
        let placed = Placed {
            comments: Vec::new(),
            elsewhere: vec![finding(Tool::Tsc, "a`.ts", 1, "x\n\n# heading\n- item")],
        };
        let section = placed.section(&Analysis::default());
        assert!(
            section.contains("- `a'.ts:1` **tsc**: x # heading - item\n"),
            "{section}"
        );
    }
}
