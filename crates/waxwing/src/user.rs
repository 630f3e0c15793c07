//! `waxwing user …`: account administration straight on the database, so it
//! works whether or not the server is running (SQLite WAL allows both).

use anyhow::{Context, bail};
use clap::Subcommand;
use waxwing_core::{Config, credentials};
use waxwing_proto::jid::BareJid;
use waxwing_store::StoreError;

#[derive(Subcommand)]
pub enum Action {
    /// Create an account.
    Add {
        jid: String,
        /// The password; prompted for when left out.
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account and all its data.
    Remove { jid: String },
    /// Change an account's password.
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// List accounts, optionally of one host.
    List { host: Option<String> },
}

pub fn account(config: &Config, jid: &str) -> anyhow::Result<BareJid> {
    let jid = BareJid::parse(jid).with_context(|| format!("{jid:?} is not a valid bare JID"))?;
    if jid.local().is_none() {
        bail!("{jid} has no local part (expected user@host)");
    }
    if !config.is_local_host(jid.domain()) {
        bail!(
            "{} is not one of this server's hosts ({})",
            jid.domain(),
            config.hosts.join(", ")
        );
    }
    Ok(jid)
}

fn password(config: &Config, given: Option<String>) -> anyhow::Result<String> {
    let pw = match given {
        Some(p) => p,
        None => {
            let p = rpassword::prompt_password("Password: ")?;
            if rpassword::prompt_password("Again: ")? != p {
                bail!("the passwords differ");
            }
            p
        }
    };
    if pw.chars().count() < config.min_password_length {
        bail!(
            "the password must have at least {} characters",
            config.min_password_length
        );
    }
    Ok(pw)
}

pub async fn run(config: &Config, action: Action) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let stores = waxwing_store::open_with(&config.database_url, &config.storage).await?;
    let changes = !matches!(action, Action::List { .. });
    run_action(config, &stores, action).await?;
    // A server running on this data directory keeps accounts' secrets in
    // memory: tell it they changed (`store_cache`).
    if changes && let Err(e) = waxwing_core::store_cache::note_outside_change(&config.data_dir) {
        eprintln!(
            "warning: cannot tell a running server about the change ({e}); it takes effect \
             there within [storage] cache_secs"
        );
    }
    Ok(())
}

async fn run_action(
    config: &Config,
    stores: &waxwing_store::Stores,
    action: Action,
) -> anyhow::Result<()> {
    match action {
        Action::Add { jid, password: pw } => {
            let jid = account(config, &jid)?;
            let pw = password(config, pw)?;
            let secrets = credentials::make_secrets(&pw, config.scram_iterations)?;
            let secrets = credentials::with_digest(config, &jid, &pw, secrets)?;
            match stores.accounts.create(&jid, &secrets).await {
                Ok(()) => println!("created {jid}"),
                Err(StoreError::AlreadyExists) => bail!("{jid} already exists"),
                Err(e) => return Err(e.into()),
            }
        }
        Action::Remove { jid } => {
            let jid = account(config, &jid)?;
            match stores.remove_account(&jid).await {
                Ok(()) => println!("removed {jid}"),
                Err(StoreError::NotFound) => bail!("{jid} does not exist"),
                Err(e) => return Err(e.into()),
            }
        }
        Action::Passwd { jid, password: pw } => {
            let jid = account(config, &jid)?;
            let pw = password(config, pw)?;
            let secrets = credentials::make_secrets(&pw, config.scram_iterations)?;
            let secrets = credentials::with_digest(config, &jid, &pw, secrets)?;
            match stores.accounts.set_secrets(&jid, &secrets).await {
                Ok(()) => println!("password changed for {jid}"),
                Err(StoreError::NotFound) => bail!("{jid} does not exist"),
                Err(e) => return Err(e.into()),
            }
        }
        Action::List { host } => {
            for jid in stores.accounts.list(host.as_deref()).await? {
                println!("{jid}");
            }
        }
    }
    Ok(())
}
