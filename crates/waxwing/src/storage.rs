//! `waxwing storage …`: database administration across backends.

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Action {
    /// Copy every table of one database into another, e.g. a single-node
    /// SQLite installation into the PostgreSQL a cluster shares. Stop the
    /// server first. The copy is one transaction on the target, committed
    /// only when every table has as many rows as the source; the target must
    /// be empty unless --force, which replaces its contents.
    Migrate {
        /// The database to copy (`sqlite://PATH` or `postgres://…`).
        #[arg(long)]
        from: String,
        /// The database to fill (created tables, migrated to this release).
        #[arg(long)]
        to: String,
        /// Replace whatever the target holds.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Migrate { from, to, force } => {
            let counts = waxwing_store::transfer::migrate(&from, &to, force)
                .await
                .context("migration failed")?;
            let total: u64 = counts.iter().map(|c| c.rows).sum();
            for c in &counts {
                println!("{:<24} {:>10} rows", c.table, c.rows);
            }
            println!(
                "migrated {total} rows in {} tables; counts match",
                counts.len()
            );
            Ok(())
        }
    }
}
