//! A branch's files as pages show them: a directory as a one-column list
//! (directories first) followed by its README rendered ([`crate::markdown`]),
//! a file as numbered, highlighted lines ([`crate::highlight`]).

use api_types::repos::{Contents, EntryKind, TreeEntry};
use maud::{Markup, PreEscaped, html};

use crate::api::{Api, encode};
use crate::highlight;
use crate::markdown::{self, LinkBase};
use crate::session::User;

/// Where the files are: the API path of the repository, the branch and its
/// page (`/-/repos/o/n/branch?name=...`).
pub struct Place<'a> {
    pub api: &'a str,
    pub branch: &'a str,
    pub page: &'a str,
}

/// The page of `path` on the branch.
fn path_page(place: &Place<'_>, path: &str) -> String {
    format!("{}&path={}", place.page, encode(path))
}

/// The contents of `path` on the branch.
pub async fn contents(
    api: &Api,
    user: &User,
    place: &Place<'_>,
    path: &str,
) -> Result<Contents, crate::api::Failure> {
    api.get(
        &user.token,
        &format!(
            "{}/contents?branch={}&path={}",
            place.api,
            encode(place.branch),
            encode(path)
        ),
    )
    .await
}

/// A directory's entries, or a file's lines; a directory's README below.
pub async fn view(
    api: &Api,
    user: &User,
    place: &Place<'_>,
    path: &str,
    contents: Contents,
) -> Markup {
    let prefix = path.trim_matches('/');
    let full = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        }
    };
    match contents {
        Contents::Dir { entries, .. } => {
            let readme = match entries.iter().find(|entry| is_readme(entry)) {
                Some(entry) => readme(api, user, place, prefix, &full(&entry.name)).await,
                None => None,
            };
            html! {
                ul.tree aria-label="Directory" {
                    @for entry in &entries {
                        li class=(entry.kind.as_str()) {
                            a href=(path_page(place, &full(&entry.name))) {
                                (entry.name) @if entry.kind == EntryKind::Dir { "/" }
                            }
                        }
                    }
                }
                @if let Some(readme) = readme { (readme) }
            }
        }
        Contents::File { binary: true, .. } => html! { p { "Binary file, not shown." } },
        Contents::File {
            text,
            truncated,
            size,
            ..
        } => {
            let text = text.unwrap_or_default();
            let owned_path = prefix.to_owned();
            let listing =
                tokio::task::spawn_blocking(move || highlight::listing(&owned_path, &text)).await;
            html! {
                p.facts { (size) " bytes" @if truncated { ", only the first MiB shown" } }
                @match listing {
                    Ok(listing) => (listing),
                    Err(_) => p.error { "This file could not be shown." },
                }
            }
        }
    }
}

fn is_readme(entry: &TreeEntry) -> bool {
    if entry.kind != EntryKind::File {
        return false;
    }
    let name = entry.name.to_ascii_lowercase();
    ["readme", "readme.md", "readme.markdown", "readme.txt"].contains(&name.as_str())
}

/// The README at `path` in directory `dir`: Markdown rendered and
/// sanitised, other text as it is. `None` when it cannot be read.
async fn readme(
    api: &Api,
    user: &User,
    place: &Place<'_>,
    dir: &str,
    path: &str,
) -> Option<Markup> {
    let Contents::File {
        text: Some(text), ..
    } = contents(api, user, place, path).await.ok()?
    else {
        return None;
    };
    let lower = path.to_ascii_lowercase();
    let is_markdown = lower.ends_with(".md") || lower.ends_with(".markdown");
    let name = path.rsplit('/').next().unwrap_or(path);
    let body = if is_markdown {
        let base = LinkBase {
            branch_page: place.page,
            dir,
        };
        html! { div.markdown { (PreEscaped(markdown::render(&text, &base))) } }
    } else {
        html! { pre { (text) } }
    };
    Some(html! {
        section.readme aria-labelledby="readme" {
            h2 #readme { (name) }
            (body)
        }
    })
}
