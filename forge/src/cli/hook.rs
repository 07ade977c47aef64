//! `forge hook`: webhooks of a repository over the API: create, list,
//! delete, the delivery log and redelivery.

use api_types::webhooks::{CreateWebhook, DeliveryPage, WebhookView};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::{Target, body, print_json, repo_path};

#[derive(Subcommand)]
pub enum HookCommand {
    /// Create a webhook; its secret is printed once.
    Create {
        /// `owner/name`.
        repo: String,
        /// Where deliveries are POSTed.
        url: String,
        /// Event types (push, branch.created, ... or *); repeat or separate with commas.
        #[arg(long = "event", value_delimiter = ',', default_value = "push")]
        events: Vec<String>,
        /// Branch globs (`!` excludes), e.g. main,release/*,!wip/**.
        #[arg(long = "branch", value_delimiter = ',')]
        branches: Vec<String>,
        /// Path globs for pushes (`!` excludes), e.g. src/**/*.ts,!**/*.md.
        #[arg(long = "path", value_delimiter = ',')]
        paths: Vec<String>,
        /// The signing secret (default: a generated one).
        #[arg(long, env = "FORGE_HOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        inactive: bool,
    },
    /// List a repository's webhooks (never their secrets).
    List {
        /// `owner/name`.
        repo: String,
    },
    /// Delete a webhook and its delivery log.
    Delete {
        /// `owner/name`.
        repo: String,
        id: String,
    },
    /// Show a webhook's deliveries, newest first, with their attempts.
    Deliveries {
        /// `owner/name`.
        repo: String,
        id: String,
        /// Only deliveries older than this `seq`.
        #[arg(long)]
        before: Option<i64>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Send a delivery again (same webhook-id).
    Redeliver {
        /// `owner/name`.
        repo: String,
        id: String,
        delivery_id: String,
    },
}

pub async fn hook(target: &Target<'_>, command: HookCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        HookCommand::Create {
            repo,
            url,
            events,
            branches,
            paths,
            secret,
            inactive,
        } => {
            let request = CreateWebhook {
                url,
                events,
                branches,
                paths,
                active: Some(!inactive),
                secret,
            };
            let hook: WebhookView = client
                .call(
                    Method::POST,
                    &format!("{}/webhooks", repo_path(&repo)?),
                    body(&request)?,
                )
                .await?;
            if target.json {
                return print_json(&hook);
            }
            println!("webhook {} created; its secret is shown only now:", hook.id);
            println!("{}", hook.secret.as_deref().unwrap_or("-"));
        }
        HookCommand::List { repo } => {
            let hooks: Vec<WebhookView> = client
                .call(
                    Method::GET,
                    &format!("{}/webhooks", repo_path(&repo)?),
                    None,
                )
                .await?;
            if target.json {
                return print_json(&hooks);
            }
            println!("{:<36} {:<8} {:<30} URL", "ID", "STATE", "EVENTS");
            for hook in &hooks {
                let state = if hook.active { "active" } else { "disabled" };
                println!(
                    "{:<36} {state:<8} {:<30} {}",
                    hook.id,
                    hook.events.join(","),
                    hook.url
                );
            }
        }
        HookCommand::Delete { repo, id } => {
            let _: Value = client
                .call(
                    Method::DELETE,
                    &format!("{}/webhooks/{id}", repo_path(&repo)?),
                    None,
                )
                .await?;
            println!("deleted webhook {id}");
        }
        HookCommand::Deliveries {
            repo,
            id,
            before,
            limit,
        } => {
            let mut path = format!(
                "{}/webhooks/{id}/deliveries?limit={limit}",
                repo_path(&repo)?
            );
            if let Some(before) = before {
                path.push_str(&format!("&before={before}"));
            }
            let page: DeliveryPage = client.call(Method::GET, &path, None).await?;
            if target.json {
                return print_json(&page);
            }
            println!(
                "{:<6} {:<28} {:<16} {:<10} {:>8} LAST",
                "SEQ", "ID", "EVENT", "STATUS", "ATTEMPTS"
            );
            for delivery in &page.deliveries {
                let last = delivery
                    .attempt_log
                    .last()
                    .map(|attempt| match attempt.response_status {
                        Some(code) => format!("HTTP {code} in {} ms", attempt.duration_ms),
                        None => attempt.error.clone().unwrap_or_else(|| "-".to_owned()),
                    })
                    .unwrap_or_default();
                println!(
                    "{:<6} {:<28} {:<16} {:<10} {:>8} {last}",
                    delivery.seq,
                    delivery.id,
                    delivery.event_type,
                    delivery.status,
                    delivery.attempts
                );
            }
            if let Some(next) = page.next_before {
                println!("older: --before {next}");
            }
        }
        HookCommand::Redeliver {
            repo,
            id,
            delivery_id,
        } => {
            let _: Value = client
                .call(
                    Method::POST,
                    &format!(
                        "{}/webhooks/{id}/deliveries/{delivery_id}/redeliver",
                        repo_path(&repo)?
                    ),
                    None,
                )
                .await?;
            println!("delivery {delivery_id} queued again");
        }
    }
    Ok(())
}
