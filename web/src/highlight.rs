//! A file's text as numbered lines, highlighted on the server with
//! syntect's bundled grammars (no script, no CDN). Each line is an element
//! of its own, `#L<n>`, with an anchor on its number.
//!
//! Highlighting is bounded, because the text is anyone's and grammars are
//! regular expressions with backtracking: past [`MAX_HIGHLIGHT_BYTES`] a
//! file is shown plain (still numbered); highlighting stops after
//! [`MAX_HIGHLIGHT_LINES`] lines or, past its first
//! [`ALWAYS_HIGHLIGHTED`] lines, [`HIGHLIGHT_BUDGET`] of work (the web
//! benchmark measured about 0.45 ms a line of dense Rust, so roughly 200
//! lines),
//! the rest shown plain and the page saying where it stopped; and a line
//! the grammar cannot parse ends highlighting for the rest of the file. The
//! colours are classes (`hl-<scope atom>`) that `app.css` styles.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use maud::{Markup, PreEscaped, html};
use syntect::html::{ClassStyle, line_tokens_to_classed_spans};
use syntect::parsing::{ParseState, ScopeStack, SyntaxReference, SyntaxSet};

/// Largest file highlighted; larger ones are shown plain.
pub const MAX_HIGHLIGHT_BYTES: usize = 512 << 10;
/// Most lines highlighted.
pub const MAX_HIGHLIGHT_LINES: usize = 10_000;
/// Most time spent highlighting one file, once its first
/// [`ALWAYS_HIGHLIGHTED`] lines are done.
pub const HIGHLIGHT_BUDGET: Duration = Duration::from_millis(100);
/// Lines highlighted whatever the time: the first use of a grammar in a
/// process compiles its expressions, which may take longer than the budget.
pub const ALWAYS_HIGHLIGHTED: usize = 50;

const STYLE: ClassStyle = ClassStyle::SpacedPrefixed { prefix: "hl-" };

fn syntaxes() -> &'static SyntaxSet {
    static SET: OnceLock<SyntaxSet> = OnceLock::new();
    SET.get_or_init(SyntaxSet::load_defaults_newlines)
}

/// The grammar for a file: by its extension or name, else by its first
/// line (`#!/bin/sh`).
fn syntax_for<'a>(set: &'a SyntaxSet, path: &str, text: &str) -> Option<&'a SyntaxReference> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let extension = name.rsplit_once('.').map_or(name, |(_, ext)| ext);
    set.find_syntax_by_extension(extension)
        .or_else(|| set.find_syntax_by_extension(name))
        .or_else(|| set.find_syntax_by_first_line(text.lines().next().unwrap_or_default()))
        .filter(|syntax| syntax.name != "Plain Text")
}

/// Each line of `text` as HTML, and how many of the first were highlighted
/// (`None`: all that could be, for want of a grammar or within bounds):
/// highlighted while a grammar fits, the file is within bounds and
/// `budget` lasts, escaped after. Every line's spans are balanced.
fn lines(path: &str, text: &str, budget: Duration) -> (Vec<String>, Option<usize>) {
    let set = syntaxes();
    let syntax = (text.len() <= MAX_HIGHLIGHT_BYTES)
        .then(|| syntax_for(set, path, text))
        .flatten();
    let mut parser = syntax.map(ParseState::new);
    let mut stack = ScopeStack::new();
    let mut out = Vec::new();
    let mut stopped = None;
    let started = Instant::now();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let out_of_time = index >= ALWAYS_HIGHLIGHTED && started.elapsed() > budget;
        if parser.is_some() && (index >= MAX_HIGHLIGHT_LINES || out_of_time) {
            parser = None;
            stopped = Some(index);
        }
        let highlighted = parser.as_mut().and_then(|parser| {
            let ops = parser.parse_line(line, set).ok()?;
            // Reopen the scopes left open by the lines before.
            let mut html: String = stack
                .as_slice()
                .iter()
                .map(|scope| {
                    let classes: Vec<String> = scope
                        .build_string()
                        .split('.')
                        .map(|atom| format!("hl-{atom}"))
                        .collect();
                    format!("<span class=\"{}\">", classes.join(" "))
                })
                .collect();
            let (spans, _) = line_tokens_to_classed_spans(line, &ops, STYLE, &mut stack).ok()?;
            html.push_str(&spans);
            html.push_str(&"</span>".repeat(stack.len()));
            Some(html)
        });
        match highlighted {
            Some(html) => out.push(html.trim_end_matches('\n').replace("\n</span>", "</span>")),
            None => {
                parser = None;
                out.push(html! { (line.trim_end_matches(['\n', '\r'])) }.into_string());
            }
        }
    }
    (out, stopped)
}

/// The file as a numbered, highlighted listing.
pub fn listing(path: &str, text: &str) -> Markup {
    listing_within(path, text, HIGHLIGHT_BUDGET)
}

fn listing_within(path: &str, text: &str, budget: Duration) -> Markup {
    let (lines, stopped) = lines(path, text, budget);
    html! {
        @if let Some(line) = stopped {
            p.muted.highlight-stopped { "Highlighted up to line " (line) "; the rest is shown plain." }
        }
        pre.file aria-label={ "Content of " (path) } {
            code {
                @for (index, line) in lines.iter().enumerate() {
                    @let id = format!("L{}", index + 1);
                    span.row id=(id) {
                        a.ln href={ "#" (id) } aria-hidden="true" tabindex="-1" { (index + 1) }
                        span.lt { (PreEscaped(line)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced(html: &str) -> bool {
        html.matches("<span").count() == html.matches("</span>").count()
    }

    #[test]
    fn rust_is_highlighted_and_every_line_stands_alone() {
        let text = "/* a comment\n   over lines */\nfn main() {\n    let s = \"<b>\";\n}\n";
        let (lines, stopped) = lines("src/main.rs", text, HIGHLIGHT_BUDGET);
        assert_eq!(stopped, None);
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|line| balanced(line)), "{lines:#?}");
        assert!(
            lines[1].contains("hl-comment"),
            "the comment goes on: {}",
            lines[1]
        );
        assert!(
            lines[2].contains("hl-storage") || lines[2].contains("hl-keyword"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("hl-string") && lines[3].contains("&lt;b&gt;"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn unknown_and_oversized_files_are_plain_and_escaped() {
        assert_eq!(
            lines("notes.unknownext", "<x>\n", HIGHLIGHT_BUDGET),
            (vec!["&lt;x&gt;".to_owned()], None)
        );
        let big = "let a = 1;\n".repeat(MAX_HIGHLIGHT_BYTES / 10);
        let (lines, _) = lines("big.rs", &big, HIGHLIGHT_BUDGET);
        assert!(!lines[0].contains("<span"), "{}", lines[0]);
    }

    #[test]
    fn highlighting_stops_when_its_time_is_spent_and_says_where() {
        let text = "fn a() {}\n".repeat(200);
        let (lines, stopped) = lines("a.rs", &text, Duration::ZERO);
        assert_eq!(lines.len(), 200);
        assert_eq!(
            stopped,
            Some(ALWAYS_HIGHLIGHTED),
            "no time: only the first lines"
        );
        assert!(
            lines[..ALWAYS_HIGHLIGHTED]
                .iter()
                .all(|line| line.contains("<span"))
        );
        assert!(
            lines[ALWAYS_HIGHLIGHTED..]
                .iter()
                .all(|line| !line.contains("<span"))
        );
        let html = listing_within("a.rs", &text, Duration::ZERO).into_string();
        assert!(html.contains("Highlighted up to line 50"), "{html}");
    }

    #[test]
    fn a_script_is_known_by_its_first_line() {
        let (lines, _) = lines("bin/run", "#!/bin/sh\necho \"hi\"\n", HIGHLIGHT_BUDGET);
        assert!(lines[1].contains("hl-"), "{lines:?}");
    }

    #[test]
    fn the_listing_numbers_lines_with_anchors() {
        let html = listing("a.txt", "one\ntwo\n").into_string();
        assert!(
            html.contains(r##"<span class="row" id="L2"><a class="ln" href="#L2""##),
            "{html}"
        );
        assert!(!html.contains("id=\"L3\""), "{html}");
    }
}
