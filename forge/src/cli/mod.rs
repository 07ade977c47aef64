//! The commands that talk to a running forge over HTTP: `repo`, `token`,
//! `events`, `vm`, `snapshot`, `template`, `run`, `hook`.

mod client;
mod github;
mod hook;
mod images;
mod nodes;
mod vm;

pub use github::{GithubCommand, github};
pub use hook::{HookCommand, hook};
pub use images::{SnapshotCommand, TemplateCommand, snapshot, template};
pub use nodes::{NodeCommand, node};
pub use vm::{RunCommand, VmCommand, parse_label, run, vm};

use std::path::Path;

use api_types::events::{Event, EventPage};
use api_types::repos::{CreateRepo, RepoView};
use api_types::tokens::{CreateToken, TokenView};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use client::Client;

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Create a repository, empty or imported from a git URL.
    Create {
        /// `owner/name`.
        name: String,
        /// The default branch (default: main, or the imported repository's).
        #[arg(long)]
        default_branch: Option<String>,
        /// Clone every branch and tag of this http(s) git URL.
        #[arg(long = "import")]
        import_url: Option<String>,
    },
    /// List repositories.
    List,
    /// Delete a repository and everything in it.
    Delete {
        /// `owner/name`.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// A name to recognise it by.
        name: String,
        /// admin, repo:write or repo:read (repeat or separate with commas).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Limit the token to one repository (`owner/name`).
        #[arg(long)]
        repo: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

/// Where the CLI finds the server.
pub struct Target<'a> {
    pub server: &'a str,
    pub token: Option<String>,
    pub data_dir: &'a Path,
    pub json: bool,
}

impl Target<'_> {
    fn client(&self) -> anyhow::Result<Client> {
        Client::new(self.server, self.token.clone(), self.data_dir)
    }
}

/// `forge mcp`: the forge's tools for an MCP client on stdin and stdout.
/// Nothing else is written to stdout (the log goes to stderr).
///
/// Its token is the model's power over the forge, so it must be given
/// (`FORGE_TOKEN` or `--token`): the data directory's admin token is never
/// picked up silently.
pub async fn mcp(target: &Target<'_>) -> anyhow::Result<()> {
    let Some(token) = target.token.clone().filter(|t| !t.trim().is_empty()) else {
        anyhow::bail!(
            "forge mcp needs a token: set FORGE_TOKEN (or --token), ideally a limited one, e.g. \
             `forge token create agent --scope repo:write --repo owner/name`"
        );
    };
    let token = client::resolve_token(Some(token), target.data_dir)?;
    forge::mcp::ForgeTools::remote(target.server, token)
        .serve_stdio()
        .await
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A typed request body as the client sends it.
fn body(request: &impl serde::Serialize) -> anyhow::Result<Option<Value>> {
    Ok(Some(serde_json::to_value(request)?))
}

fn repo_path(name: &str) -> anyhow::Result<String> {
    let name = forge::git::RepoName::parse(name)?;
    Ok(format!("/v1/repos/{}/{}", name.owner, name.name))
}

pub async fn repo(target: &Target<'_>, command: RepoCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        RepoCommand::Create {
            name,
            default_branch,
            import_url,
        } => {
            let request = CreateRepo {
                name,
                default_branch,
                import_url,
            };
            let repo: RepoView = client
                .call(Method::POST, "/v1/repos", body(&request)?)
                .await?;
            if target.json {
                return print_json(&repo);
            }
            println!(
                "created {} (default branch {})",
                repo.name, repo.default_branch
            );
            println!("clone: git clone {}", repo.clone_url);
        }
        RepoCommand::List => {
            let repos: Vec<RepoView> = client.call(Method::GET, "/v1/repos", None).await?;
            if target.json {
                return print_json(&repos);
            }
            println!("{:<40} {:<16} CLONE URL", "NAME", "DEFAULT");
            for repo in &repos {
                println!(
                    "{:<40} {:<16} {}",
                    repo.name, repo.default_branch, repo.clone_url
                );
            }
        }
        RepoCommand::Delete { name } => {
            let _: Value = client
                .call(Method::DELETE, &repo_path(&name)?, None)
                .await?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

pub async fn token(target: &Target<'_>, command: TokenCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        TokenCommand::Create { name, scopes, repo } => {
            let request = CreateToken { name, scopes, repo };
            let token: TokenView = client
                .call(Method::POST, "/v1/tokens", body(&request)?)
                .await?;
            if target.json {
                return print_json(&token);
            }
            println!("token {} created; its secret is shown only now:", token.id);
            println!("{}", token.token.as_deref().unwrap_or("-"));
        }
        TokenCommand::List => {
            let tokens: Vec<TokenView> = client.call(Method::GET, "/v1/tokens", None).await?;
            if target.json {
                return print_json(&tokens);
            }
            println!(
                "{:<36} {:<20} {:<26} {:<20} STATE",
                "ID", "NAME", "SCOPES", "REPO"
            );
            for token in &tokens {
                let state = if token.revoked_at.is_some() {
                    "revoked"
                } else {
                    "live"
                };
                println!(
                    "{:<36} {:<20} {:<26} {:<20} {state}",
                    token.id,
                    token.name,
                    token.scopes.join(","),
                    token.repo.as_deref().unwrap_or("(all)")
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let _: Value = client
                .call(Method::DELETE, &format!("/v1/tokens/{id}"), None)
                .await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// `forge events`: prints a repository's events from a cursor; with
/// `follow`, keeps waiting for new ones.
pub async fn events(
    target: &Target<'_>,
    repo: &str,
    mut after: i64,
    follow: bool,
) -> anyhow::Result<()> {
    let client = target.client()?;
    let base = repo_path(repo)?;
    loop {
        let wait = if follow { 30 } else { 0 };
        let page: EventPage = client
            .call(
                Method::GET,
                &format!("{base}/events?after={after}&limit=1000&wait_secs={wait}"),
                None,
            )
            .await?;
        let events = &page.events;
        for event in events {
            if target.json {
                println!("{}", serde_json::to_string(event)?);
            } else {
                println!("{}", describe(event));
            }
        }
        after = page.next_cursor;
        if !follow && events.is_empty() {
            return Ok(());
        }
        if !follow && events.len() < 1000 {
            return Ok(());
        }
    }
}

/// One line per event: cursor, time, kind, ref and what changed.
fn describe(event: &Event) -> String {
    let payload = &event.payload;
    let short = |v: &Value| {
        v.as_str()
            .map(|s| s.chars().take(8).collect::<String>())
            .unwrap_or_default()
    };
    let mut line = format!(
        "{:>6} {} {:<15} {}",
        event.id,
        event.created_at,
        event.kind,
        event.ref_name.as_deref().unwrap_or("")
    );
    if event.kind == "push" {
        line.push_str(&format!(
            " {}..{} commits={} paths={}{}",
            short(&payload["before"]),
            short(&payload["after"]),
            payload["commits_total"],
            payload["paths"].as_array().map_or(0, Vec::len),
            if payload["forced"] == true {
                " forced"
            } else {
                ""
            }
        ));
    }
    line
}
