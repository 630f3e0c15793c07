//! The `waxwing` binary: command line, logging, signals. Everything else
//! lives in the library crates.
#![deny(unsafe_code)] // one exception: allocator.rs

mod admin;
mod allocator;
mod cert;
mod cluster;
mod instance;
mod link_local;
mod portable;
mod storage;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use waxwing::modules;
use waxwing_core::Config;
use waxwing_core::reload::LogLevelSetter;

// mimalloc instead of the system allocator: per-thread free lists suit
// tokio's work-stealing (a buffer allocated on one worker and freed on
// another). Measured in bench/ (see bench/README.md). Called through its
// unaligned entry points where they suffice, and freed memory goes back to
// the OS when the worker threads collect (allocator.rs).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

#[derive(Parser)]
#[command(name = "waxwing", version = waxwing_core::LONG_VERSION, about = "Waxwing XMPP server")]
struct Cli {
    /// Configuration file (TOML). Without one, the embedded default is used:
    /// domain `localhost`, SQLite and a self-signed certificate under ./data/.
    #[arg(long, short, global = true, env = "WAXWING_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or SIGINT; SIGHUP reloads the
    /// configuration and certificates (as `waxwing admin reload`).
    Serve,
    /// Manage accounts (works while the server runs).
    User {
        #[command(subcommand)]
        action: user::Action,
    },
    /// Write a consistent copy of the SQLite database to FILE (works while
    /// the server runs; the file is replaced atomically, mode 0600).
    Backup { file: PathBuf },
    /// Replace the database with the backup FILE (the server must be
    /// stopped; the replaced database is kept as `<name>.before-restore`).
    Restore { file: PathBuf },
    /// Export accounts and their data (roster, vCard, private XML, offline
    /// messages, PEP nodes, SCRAM secrets) as XEP-0227 XML to FILE (mode 0600).
    Export {
        file: PathBuf,
        /// Only this account (repeatable); all accounts when left out.
        #[arg(long = "user")]
        users: Vec<String>,
    },
    /// Import the accounts of a XEP-0227 file (the server must be stopped);
    /// existing accounts are skipped and reported.
    Import { file: PathBuf },
    /// Administer the running server through its admin API ([admin]).
    Admin {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        action: admin::Action,
    },
    /// Certificates: `waxwing cert status` lists each name's.
    Cert {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        action: cert::Action,
    },
    /// Database tools (they take database URLs, not the configuration).
    Storage {
        #[command(subcommand)]
        action: storage::Action,
    },
    /// Cluster tools ([cluster]).
    Cluster {
        #[command(subcommand)]
        action: cluster::Action,
    },
    /// Run only a XEP-0174 link-local peer (serverless chat on the LAN).
    LinkLocal(link_local::Opts),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration file and report mistakes with their line.
    Check,
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display())),
        None => Ok(Config::embedded_default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waxwing: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Database tools take URLs: no configuration needed (nor read).
    let config = || -> anyhow::Result<Config> {
        let config = load_config(cli.config.as_ref())?;
        modules::check_disabled(&config).map_err(anyhow::Error::msg)?;
        Ok(config)
    };
    match cli.command {
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let config = config()?;
            println!("configuration is valid: hosts {}", config.hosts.join(", "));
            Ok(())
        }
        Command::User { action } => {
            let config = config()?;
            runtime()?.block_on(user::run(&config, action))
        }
        Command::Cluster { action } => {
            let config = config()?;
            runtime()?.block_on(cluster::run(&config, action))
        }
        Command::Storage { action } => {
            init_cli_logging();
            runtime()?.block_on(storage::run(action))
        }
        Command::Export { file, users } => {
            let config = config()?;
            runtime()?.block_on(export(&config, &file, users))
        }
        Command::Import { file } => {
            let config = config()?;
            // A running server caches some of what an import writes (who
            // has offline messages, rooms): it must not be running.
            let _running = instance::acquire(&config.data_dir)
                .context("the server must be stopped to import accounts")?;
            runtime()?.block_on(import(&config, &file))
        }
        Command::Admin { target, action } => {
            let config = config()?;
            runtime()?.block_on(admin::run(&config, target, action))
        }
        Command::Cert { target, action } => {
            let config = config()?;
            runtime()?.block_on(cert::run(&config, target, action))
        }
        Command::Backup { file } => {
            let config = config()?;
            let r = runtime()?.block_on(waxwing_store::backup(&config.database_url, &file))?;
            println!("backup written: {} ({} bytes)", r.path.display(), r.bytes);
            Ok(())
        }
        Command::Restore { file } => {
            let config = config()?;
            let _running = instance::acquire(&config.data_dir)
                .context("the server must be stopped to restore a backup")?;
            let r = runtime()?.block_on(waxwing_store::restore(&config.database_url, &file))?;
            println!("restored {} into {}", file.display(), r.path.display());
            if let Some(p) = r.previous {
                println!("the previous database is kept as {}", p.display());
            }
            Ok(())
        }
        Command::LinkLocal(opts) => {
            let config = config()?;
            let _ = init_logging(&config);
            runtime()?.block_on(link_local::run(&config, opts))
        }
        Command::Serve => {
            let config = config()?;
            if let Some(keytab) = waxwing_core::auth::gssapi::keytab_reexec(&config) {
                return reexec_with_keytab(keytab);
            }
            let _one_server = instance::acquire(&config.data_dir)?;
            let set_log_level = init_logging(&config);
            let path = cli.config.clone();
            runtime()?.block_on(serve(config, path, set_log_level))
        }
    }
}

async fn export(config: &Config, file: &std::path::Path, users: Vec<String>) -> anyhow::Result<()> {
    let selection = if users.is_empty() {
        portable::Selection::All
    } else {
        let jids = users
            .iter()
            .map(|u| user::account(config, u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        portable::Selection::Users(jids)
    };
    let stores = waxwing_store::open(&config.database_url).await?;
    let xml = portable::export(config, &stores, selection).await?;
    write_private(file, xml.as_bytes())?;
    println!("exported to {}", file.display());
    Ok(())
}

async fn import(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let stores = waxwing_store::open(&config.database_url).await?;
    let done = portable::import_file(config, &stores, file).await?;
    for u in &done.users {
        println!("imported {u}");
    }
    for (u, why) in &done.skipped {
        eprintln!("skipped {u}: {why}");
    }
    if !done.skipped.is_empty() {
        anyhow::bail!("{} account(s) not imported", done.skipped.len());
    }
    Ok(())
}

/// Writes a file only its owner can read (exports hold password hashes).
fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = waxwing_core::private_file::open(
        path,
        std::fs::OpenOptions::new().write(true).truncate(true),
    )
    .with_context(|| format!("creating {}", path.display()))?;
    // An existing file keeps its mode through `open`: restrict it too.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// MIT's GSS library reads its keytab from `KRB5_KTNAME`; setting that in
/// this (soon threaded) process is unsound, so the server starts over with
/// it set (same PID, arguments and descriptors), before any lock is taken.
fn reexec_with_keytab(keytab: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating the waxwing binary")?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("KRB5_KTNAME", format!("FILE:{}", keytab.display()))
        .exec();
    Err(err).context("re-executing with [auth.gssapi] keytab in KRB5_KTNAME")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(allocator::collect_when_idle)
        .build()
        .context("starting the runtime")
}

/// Warnings and errors of an administration command on stderr (RUST_LOG
/// for more).
fn init_cli_logging() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Logging on stderr, filtered by RUST_LOG or else `log.level`; the
/// filter sits behind a reload layer so that a reload can change the level.
/// The filter for a configured `log.level`. The TURN crate's read loop logs
/// every refused or malformed datagram at ERROR: a client's mistake, not the
/// operator's, and a way to flood the log. Our own TURN code logs refusals
/// at debug; RUST_LOG still shows the crate's lines.
fn configured_filter(
    level: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    Ok(tracing_subscriber::EnvFilter::try_new(level)?
        .add_directive("turn::server=off".parse().expect("a valid directive")))
}

fn init_logging(config: &Config) -> LogLevelSetter {
    use tracing_subscriber::EnvFilter;
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| configured_filter(&config.log_level).ok())
        .unwrap_or_else(|| configured_filter("info").expect("a valid level"));
    let set =
        |reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>| -> LogLevelSetter {
            Box::new(move |level: &str| {
                if pinned {
                    return Err("RUST_LOG is set and takes precedence over log.level".into());
                }
                let filter = configured_filter(level).map_err(|e| format!("{level:?}: {e}"))?;
                reload(filter)
            })
        };
    if config.log_json {
        let builder = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        set(Box::new(move |f| {
            handle.reload(f).map_err(|e| e.to_string())
        }))
    } else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_filter_reloading();
        let handle = builder.reload_handle();
        builder.init();
        set(Box::new(move |f| {
            handle.reload(f).map_err(|e| e.to_string())
        }))
    }
}

async fn serve(
    config: Config,
    path: Option<PathBuf>,
    set_log_level: LogLevelSetter,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let modules = modules::all(&config);
    // Handlers first: a SIGTERM that arrives right after `ready` must stop
    // the server gracefully, not kill it, and a SIGHUP (whose default is to
    // end the process) must wait for the server to be up.
    let stop = shutdown_signal()?;
    let mut hangup = signal(SignalKind::hangup())?;
    let running = waxwing_core::start(config, modules).await?;
    running
        .server
        .set_reload_hooks(waxwing_core::reload::ReloadHooks {
            path,
            check: Box::new(modules::check_disabled),
            set_log_level,
        });
    // Machine-readable lines on stdout: port 0 resolves here, and tests
    // (and operators' scripts) wait for `ready` instead of sleeping.
    for (kind, addr) in &running.listeners {
        println!("waxwing: listening {} {addr}", kind.name());
    }
    println!("waxwing: ready");
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = hangup.recv() => {
                // The log has the details; stdout says that it happened,
                // for scripts and tests to wait on.
                match running.server.reload().await {
                    Ok(r) if r.needs_restart.is_empty() => println!("waxwing: reloaded"),
                    Ok(r) => println!(
                        "waxwing: reloaded; needs restart: {}",
                        r.needs_restart.join(", ")
                    ),
                    Err(e) => println!("waxwing: reload refused: {e}"),
                }
            }
        }
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Installs the SIGTERM/SIGINT handlers now; the future resolves on either.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
