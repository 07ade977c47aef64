//! Markdown (a repository's README) to HTML that is safe to put in a page.
//!
//! The text is hostile: whoever pushed it wrote it. It is parsed with
//! pulldown-cmark (CommonMark with tables, strikethrough and task lists),
//! and before HTML is written:
//! 1. raw HTML, block or inline, becomes text: it shows escaped, never
//!    runs (no `<script>`, no `onerror=`, no `<iframe>`);
//! 2. a link keeps its address only when it is relative or `http`,
//!    `https` or `mailto` (scheme read as a browser does, ignoring blanks
//!    and control characters, so `java\tscript:` is caught); others lead
//!    nowhere. A relative link to a path opens that file in the forge's
//!    file view of the same branch;
//! 3. an image loads only from an absolute `http` or `https` address.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

use crate::api::encode;

/// Where relative links of a document lead: the file view of `branch` of
/// a repository, `dir` being the document's directory.
pub struct LinkBase<'a> {
    /// The branch page, `/-/repos/o/n/branch?name=...`.
    pub branch_page: &'a str,
    pub dir: &'a str,
}

/// `source` as sanitised HTML.
pub fn render(source: &str, base: &LinkBase<'_>) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let events = Parser::new_ext(source, options).map(|event| match event {
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: link(&dest_url, base),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: image(&dest_url),
            title,
            id,
        }),
        other => other,
    });
    let mut html = String::with_capacity(source.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

/// The scheme of an address, lower-cased, as a browser reads it: blanks
/// and control characters anywhere are dropped first. `None`: relative.
fn scheme(url: &str) -> Option<String> {
    let cleaned: String = url
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && !c.is_control())
        .collect();
    let end = cleaned.find([':', '/', '?', '#'])?;
    if !cleaned[end..].starts_with(':') {
        return None;
    }
    Some(cleaned[..end].to_ascii_lowercase())
}

fn link(url: &str, base: &LinkBase<'_>) -> CowStr<'static> {
    match scheme(url).as_deref() {
        Some("http" | "https" | "mailto") => CowStr::from(url.to_owned()),
        Some(_) => CowStr::from("#"),
        None if url.starts_with('#') || url.starts_with('/') || url.is_empty() => {
            CowStr::from(url.to_owned())
        }
        None => match resolve(base.dir, url) {
            Some(path) => CowStr::from(format!("{}&path={}", base.branch_page, encode(&path))),
            None => CowStr::from("#"),
        },
    }
}

fn image(url: &str) -> CowStr<'static> {
    match scheme(url).as_deref() {
        Some("http" | "https") => CowStr::from(url.to_owned()),
        _ => CowStr::from(""),
    }
}

/// `relative` (its query and fragment dropped) from directory `dir`, with
/// `.` and `..` resolved; `None` when it climbs out of the repository.
fn resolve(dir: &str, relative: &str) -> Option<String> {
    let relative = relative.split(['?', '#']).next().unwrap_or_default();
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: LinkBase<'static> = LinkBase {
        branch_page: "/-/repos/o/n/branch?name=main",
        dir: "docs",
    };

    #[test]
    fn markdown_renders() {
        let html = render(
            "# Title\n\nSome *text* and `code`.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
            &BASE,
        );
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(
            html.contains("<em>text</em>") && html.contains("<code>code</code>"),
            "{html}"
        );
        assert!(html.contains("<table>"), "{html}");
    }

    #[test]
    fn raw_html_shows_as_text_and_never_runs() {
        let html = render(
            "<script>alert(1)</script>\n\nhi <img src=x onerror=alert(2)> <iframe src=//evil></iframe>\n",
            &BASE,
        );
        assert!(
            !html.contains("<script") && !html.contains("<img") && !html.contains("<iframe"),
            "{html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
    }

    #[test]
    fn only_safe_link_schemes_keep_their_address() {
        for hostile in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "java\tscript:alert(1)",
            " javascript:alert(1)",
            "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
            "vbscript:msgbox(1)",
        ] {
            let html = render(&format!("[x](<{hostile}>)"), &BASE);
            assert!(html.contains("href=\"#\""), "{hostile}: {html}");
        }
        let autolink = render("<javascript:alert(1)>", &BASE);
        assert!(autolink.contains("href=\"#\""), "{autolink}");
        let html = render(
            "[a](https://example.com/x) [b](mailto:a@b.c) [c](#usage)",
            &BASE,
        );
        assert!(html.contains("href=\"https://example.com/x\""), "{html}");
        assert!(
            html.contains("href=\"mailto:a@b.c\"") && html.contains("href=\"#usage\""),
            "{html}"
        );
    }

    #[test]
    fn relative_links_open_the_file_view_and_images_load_only_from_the_web() {
        let html = render(
            "[guide](../src/main.rs) [up](../../x) ![p](pic.png) ![q](https://img.example/q.png) ![r](javascript:x)",
            &BASE,
        );
        assert!(
            html.contains("href=\"/-/repos/o/n/branch?name=main&amp;path=src%2Fmain.rs\""),
            "{html}"
        );
        assert!(
            html.contains("href=\"#\""),
            "climbing out of the repository: {html}"
        );
        assert!(html.contains("src=\"\" alt=\"p\""), "{html}");
        assert!(html.contains("src=\"https://img.example/q.png\""), "{html}");
        assert!(html.contains("src=\"\" alt=\"r\""), "{html}");
    }
}
