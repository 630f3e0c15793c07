//! `waxwing cluster …`: the nodes of a cluster as Redis sees them.

use clap::Subcommand;
use waxwing_core::Config;

#[derive(Subcommand)]
pub enum Action {
    /// Every node: alive (heartbeat), sessions, stream lag (envelopes not
    /// yet read). Reads Redis directly; works with any node's configuration.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, action: Action) -> anyhow::Result<()> {
    let Some(cluster) = &config.cluster else {
        anyhow::bail!("this configuration has no [cluster] redis: a single node");
    };
    match action {
        Action::Status { json } => {
            let nodes = waxwing_core::cluster::status::status(cluster).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<6} {:>10} {:>10} {:>12}",
                "node", "alive", "sessions", "lag", "heartbeat"
            );
            for n in &nodes {
                let beat = n
                    .heartbeat_ttl_ms
                    .map_or_else(|| "expired".to_string(), |t| format!("{t} ms left"));
                println!(
                    "{:<24} {:<6} {:>10} {:>10} {:>12}",
                    n.node,
                    if n.alive { "yes" } else { "NO" },
                    n.sessions,
                    n.stream_lag,
                    beat
                );
            }
            let total: u64 = nodes.iter().map(|n| n.sessions).sum();
            println!("{} nodes, {total} sessions", nodes.len());
            Ok(())
        }
    }
}
