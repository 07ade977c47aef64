//! Machine-readable findings of the tools a review reads, one parser per
//! format: the TypeScript compiler (`tsc --noEmit --pretty false`), ESLint
//! (`--format json`), Biome (`lint --reporter=json`, Biome 2) and the
//! failing tests of `bun test`.
//!
//! Every parser is given the checkout's root inside the sandbox
//! (`/workspace`) and answers paths relative to it; a finding about a file
//! outside the checkout (a dependency, the runtime) is dropped, and so is a
//! path that climbs out with `..`. Output is hostile like everything a
//! sandbox writes: parsers never fail, they skip what they cannot read, and
//! every message is cut to [`MAX_MESSAGE_CHARS`].

pub use api_types::runs::{Finding, FindingSeverity as Severity, FindingTool as Tool};
use serde::Deserialize;

/// Longest message kept of one finding.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// `finding` as one line of Markdown: the tool, the rule and the message.
pub fn describe(finding: &Finding) -> String {
    let rule = finding
        .rule
        .as_deref()
        .map(|rule| format!(" `{rule}`"))
        .unwrap_or_default();
    format!("**{}**{rule}: {}", finding.tool.label(), finding.message)
}

/// `path` (absolute, or relative to `root`) made relative to `root`;
/// `None` outside it.
fn relative(path: &str, root: &str) -> Option<String> {
    let root = root.trim_end_matches('/');
    let rest = if path.starts_with('/') {
        path.strip_prefix(root)?.strip_prefix('/')?
    } else {
        path
    };
    let mut parts = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    if parts.is_empty() || parts.contains(&"node_modules") {
        return None;
    }
    Some(parts.join("/"))
}

fn message(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `text` without ANSI escape sequences (a step's log is coloured).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            // CSI: parameters and intermediates, then one final byte.
            Some('[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ST.
            Some(']') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

/// The TypeScript compiler's plain output: `path(line,col): error TSnnnn:
/// message`, a chained explanation indented under it.
pub fn tsc(output: &str, root: &str) -> Vec<Finding> {
    let mut found: Vec<Finding> = Vec::new();
    // Whether the last header line was kept (its indented lines follow it).
    let mut open = false;
    for line in strip_ansi(output).lines() {
        if line.starts_with(' ') && open {
            if let Some(last) = found.last_mut() {
                last.message = message(&format!("{}\n{}", last.message, line.trim()));
            }
            continue;
        }
        open = false;
        let Some((place, rest)) = line.split_once("): ") else {
            continue;
        };
        let Some((path, position)) = place.rsplit_once('(') else {
            continue;
        };
        let Some((row, _column)) = position.split_once(',') else {
            continue;
        };
        let Ok(row) = row.parse::<u32>() else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once(' ') else {
            continue;
        };
        let severity = match kind {
            "error" => Severity::Error,
            "warning" => Severity::Warning,
            "message" => Severity::Info,
            _ => continue,
        };
        let Some((code, text)) = rest.split_once(": ") else {
            continue;
        };
        if !code.starts_with("TS") || !code[2..].bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Some(path) = relative(path.trim(), root) else {
            continue;
        };
        found.push(Finding {
            tool: Tool::Tsc,
            path,
            line: Some(row).filter(|&row| row > 0),
            severity,
            rule: Some(code.to_owned()),
            message: message(text),
        });
        open = true;
    }
    found
}

/// The first JSON value of `output` that starts with `open` (a tool may
/// print a notice before it).
fn json_from<T: serde::de::DeserializeOwned>(output: &str, open: char) -> Option<T> {
    let start = output.find(open)?;
    let mut values = serde_json::Deserializer::from_str(&output[start..]).into_iter::<T>();
    values.next()?.ok()
}

/// ESLint's `--format json`: one entry per file, its messages with a
/// severity of 1 (warning) or 2 (error).
pub fn eslint(output: &str, root: &str) -> Vec<Finding> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct File {
        file_path: String,
        #[serde(default)]
        messages: Vec<Message>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Message {
        rule_id: Option<String>,
        #[serde(default)]
        severity: u8,
        #[serde(default)]
        message: String,
        line: Option<u32>,
    }
    let files: Vec<File> = json_from(output, '[').unwrap_or_default();
    let mut found = Vec::new();
    for file in files {
        let Some(path) = relative(&file.file_path, root) else {
            continue;
        };
        for item in file.messages {
            found.push(Finding {
                tool: Tool::Eslint,
                path: path.clone(),
                line: item.line.filter(|&line| line > 0),
                severity: if item.severity >= 2 {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                rule: item.rule_id,
                message: message(&item.message),
            });
        }
    }
    found
}

/// Biome 2's `lint --reporter=json`: diagnostics with a category (the
/// rule), a severity and a location (path, start line).
pub fn biome(output: &str, root: &str) -> Vec<Finding> {
    #[derive(Deserialize)]
    struct Report {
        #[serde(default)]
        diagnostics: Vec<Diagnostic>,
    }
    #[derive(Deserialize)]
    struct Diagnostic {
        #[serde(default)]
        severity: String,
        #[serde(default)]
        message: String,
        category: Option<String>,
        location: Option<Location>,
    }
    #[derive(Deserialize)]
    struct Location {
        path: Option<String>,
        start: Option<Position>,
    }
    #[derive(Deserialize)]
    struct Position {
        line: u32,
    }
    let Some(report) = json_from::<Report>(output, '{') else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for item in report.diagnostics {
        let Some(location) = item.location else {
            continue;
        };
        let Some(path) = location.path.as_deref().and_then(|p| relative(p, root)) else {
            continue;
        };
        let severity = match item.severity.as_str() {
            "error" | "fatal" => Severity::Error,
            "warning" => Severity::Warning,
            _ => Severity::Info,
        };
        found.push(Finding {
            tool: Tool::Biome,
            path,
            line: location.start.map(|p| p.line).filter(|&line| line > 0),
            severity,
            rule: item.category,
            message: message(&item.message),
        });
    }
    found
}

/// `path:line:col` at the end of a stack frame (`at f (path:line:col)` or
/// `at path:line:col`).
fn frame(line: &str) -> Option<(&str, u32)> {
    let rest = line.trim_start().strip_prefix("at ")?;
    let place = match rest.rfind('(') {
        Some(open) => rest[open + 1..].strip_suffix(')')?,
        None => rest.trim(),
    };
    let (place, _column) = place.rsplit_once(':')?;
    let (path, row) = place.rsplit_once(':')?;
    Some((path, row.parse().ok()?))
}

/// `bun test`'s failures: each `(fail) name` line (`✗ name` in colour)
/// ends a block holding the error (`error: …`) and its stack; the first
/// frame inside the checkout is where the test failed.
pub fn bun_test(output: &str, root: &str) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut error: Option<String> = None;
    let mut place: Option<(String, u32)> = None;
    let mut file: Option<String> = None;
    for line in strip_ansi(output).lines() {
        if let Some(name) = line.strip_suffix(':')
            && !name.contains(' ')
            && (name.contains(".test.") || name.contains(".spec.") || name.contains("_test"))
        {
            file = relative(name, root);
            continue;
        }
        if let Some(text) = line.strip_prefix("error: ") {
            error = Some(text.to_owned());
            place = None;
            continue;
        }
        if place.is_none()
            && let Some((path, row)) = frame(line)
            && let Some(path) = relative(path, root)
        {
            place = Some((path, row));
            continue;
        }
        // `(fail) name`, or `✗ name` when bun colours its output.
        if let Some(rest) = line
            .strip_prefix("(fail) ")
            .or_else(|| line.strip_prefix("\u{2717} "))
        {
            let name = match rest.rfind(" [") {
                Some(cut) if rest.ends_with(']') => &rest[..cut],
                _ => rest,
            };
            let (path, row) = match place.take() {
                Some((path, row)) => (path, Some(row)),
                None => match &file {
                    Some(file) => (file.clone(), None),
                    None => {
                        error = None;
                        continue;
                    }
                },
            };
            let text = match error.take() {
                Some(error) => format!("`{name}` failed: {error}"),
                None => format!("`{name}` failed"),
            };
            found.push(Finding {
                tool: Tool::BunTest,
                path,
                line: row.filter(|&row| row > 0),
                severity: Severity::Error,
                rule: None,
                message: message(&text),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/workspace";

    fn places(found: &[Finding]) -> Vec<(String, Option<u32>)> {
        found.iter().map(|f| (f.path.clone(), f.line)).collect()
    }

    #[test]
    fn tsc_errors_keep_their_chained_explanation() {
        let found = tsc(include_str!("fixtures/tsc.txt"), ROOT);
        assert_eq!(
            places(&found),
            [
                ("src/chain.ts".into(), Some(2)),
                ("src/math.ts".into(), Some(5)),
                ("src/math.ts".into(), Some(8)),
                ("src/math.ts".into(), Some(9)),
            ]
        );
        assert_eq!(found[1].rule.as_deref(), Some("TS2345"));
        assert_eq!(
            found[1].message,
            "Argument of type 'string' is not assignable to parameter of type 'number'."
        );
        assert!(
            found[0]
                .message
                .ends_with("Type 'string' is not assignable to type 'number'."),
            "{}",
            found[0].message
        );
        assert_eq!(found[0].message.lines().count(), 5);
        assert!(found.iter().all(|f| f.severity == Severity::Error));
    }

    #[test]
    fn eslint_json_gives_rules_and_severities() {
        let found = eslint(include_str!("fixtures/eslint.json"), ROOT);
        assert_eq!(
            places(&found),
            [
                ("src/util.ts".into(), Some(2)),
                ("src/util.ts".into(), Some(2)),
                ("src/util.ts".into(), Some(4)),
            ]
        );
        assert_eq!(found[2].rule.as_deref(), Some("no-debugger"));
        assert_eq!(found[2].message, "Unexpected 'debugger' statement.");
        assert_eq!(found[0].severity, Severity::Error);
    }

    #[test]
    fn biome_json_gives_categories_and_lines() {
        let found = biome(include_str!("fixtures/biome.json"), ROOT);
        assert_eq!(
            places(&found),
            [
                ("src/util.ts".into(), Some(6)),
                ("src/util.ts".into(), Some(2)),
                ("src/util.ts".into(), Some(3)),
                ("src/util.ts".into(), Some(4)),
            ]
        );
        assert_eq!(found[3].rule.as_deref(), Some("lint/suspicious/noDebugger"));
        assert_eq!(
            found.iter().map(|f| f.severity).collect::<Vec<_>>(),
            [
                Severity::Info,
                Severity::Warning,
                Severity::Error,
                Severity::Error
            ]
        );
    }

    #[test]
    fn bun_test_failures_point_at_the_failing_line() {
        for fixture in [
            include_str!("fixtures/bun-test.txt"),
            include_str!("fixtures/bun-test-color.txt"),
        ] {
            let found = bun_test(fixture, ROOT);
            assert_eq!(
                places(&found),
                [
                    ("test/math.test.ts".into(), Some(5)),
                    ("test/math.test.ts".into(), Some(18)),
                ]
            );
            assert_eq!(
                found[0].message,
                "`adds small numbers` failed: expect(received).toBe(expected)"
            );
            assert_eq!(
                found[1].message,
                "`group > throws inside a helper` failed: boom"
            );
        }
    }

    #[test]
    fn places_outside_the_checkout_are_dropped() {
        let output = "/etc/passwd(1,1): error TS1005: x\n\
                      ../up.ts(1,1): error TS1005: x\n\
                      src/../../up.ts(1,1): error TS1005: x\n\
                      node_modules/lib/index.d.ts(3,1): error TS1005: x\n\
                      /workspace/./src/ok.ts(7,1): error TS1005: kept\n\
                      /workspacex/evil.ts(1,1): error TS1005: x\n";
        let found = tsc(output, ROOT);
        assert_eq!(places(&found), [("src/ok.ts".into(), Some(7))]);
        let frame = "error: boom\n      at f (/usr/lib/x.js:1:1)\n      at g (/workspace/a.test.ts:9:3)\n(fail) t [1ms]\n";
        assert_eq!(
            places(&bun_test(frame, ROOT)),
            [("a.test.ts".into(), Some(9))]
        );
    }

    #[test]
    fn garbage_yields_nothing_and_long_messages_are_cut() {
        for parse in [tsc, eslint, biome, bun_test] {
            assert!(parse("", ROOT).is_empty());
            assert!(parse("{[(\u{1b}[31m not json", ROOT).is_empty());
            assert!(parse("[{\"filePath\": 3}]", ROOT).is_empty());
        }
        let long = format!("a.ts(1,1): error TS1: {}\n", "x".repeat(5000));
        let found = tsc(&long, ROOT);
        assert_eq!(found[0].message.chars().count(), MAX_MESSAGE_CHARS + 1);
        // A notice before ESLint's JSON is skipped.
        let noisy = format!("npm notice\n{}", include_str!("fixtures/eslint.json"));
        assert_eq!(eslint(&noisy, ROOT).len(), 3);
    }

    #[test]
    fn colour_codes_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[0m\u{1b}[31merror\u{1b}[0m: x"),
            "error: x"
        );
        assert_eq!(strip_ansi("a\u{1b}]8;;http://x\u{7}b"), "ab");
    }
}
