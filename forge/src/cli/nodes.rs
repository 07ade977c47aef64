//! `forge node add|list|rm`: sandbox nodes, over the API (admin).

use api_types::nodes::{CreateNode, NodeState, NodeView};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::{Target, body, print_json};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Add a node; its token (for `forge node run --token`) is printed once.
    Add {
        /// 1 to 63 of a-z, 0-9 and -.
        name: String,
        /// A label placement matches the node by, `key=value`; repeat for
        /// more. Given, these are its labels whatever it reports.
        #[arg(long = "label", value_parser = super::parse_label)]
        labels: Vec<(String, String)>,
        /// Most memory counted on the node, in MiB, whatever it reports.
        #[arg(long)]
        max_memory_mib: Option<u64>,
    },
    /// Nodes with their state, capacity and what is placed on them.
    List,
    /// Remove a node that holds no sandbox; its token stops working.
    Rm { name: String },
}

pub async fn node(target: &Target<'_>, command: NodeCommand) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        NodeCommand::Add {
            name,
            labels,
            max_memory_mib,
        } => {
            let request = CreateNode {
                name,
                labels: (!labels.is_empty()).then(|| labels.into_iter().collect()),
                max_memory_mib,
            };
            let node: NodeView = client
                .call(Method::POST, "/v1/nodes", body(&request)?)
                .await?;
            if target.json {
                return print_json(&node);
            }
            println!(
                "node {} added; its token is shown only now (forge node run --token):",
                node.name
            );
            println!("{}", node.token.as_deref().unwrap_or("-"));
        }
        NodeCommand::List => {
            let nodes: Vec<NodeView> = client.call(Method::GET, "/v1/nodes", None).await?;
            if target.json {
                return print_json(&nodes);
            }
            println!(
                "{:<20} {:<6} {:<22} {:<10} {:>10} {:>10} {:>6} {:>9}",
                "NAME", "STATE", "ADDRESS", "BACKEND", "MEM MIB", "AVAIL MIB", "VCPUS", "SANDBOXES"
            );
            for node in &nodes {
                let state = match node.state {
                    NodeState::New => "new",
                    NodeState::Up => "up",
                    NodeState::Lost => "lost",
                };
                println!(
                    "{:<20} {:<6} {:<22} {:<10} {:>10} {:>10} {:>6} {:>9}",
                    node.name,
                    state,
                    node.address.as_deref().unwrap_or("-"),
                    node.backend.as_deref().unwrap_or("-"),
                    node.memory_bytes >> 20,
                    node.available_mib,
                    node.vcpus,
                    node.sandboxes
                );
            }
        }
        NodeCommand::Rm { name } => {
            let _: Value = client
                .call(Method::DELETE, &format!("/v1/nodes/{name}"), None)
                .await?;
            println!("removed node {name}");
        }
    }
    Ok(())
}
