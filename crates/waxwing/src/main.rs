//! The `waxwing` binary: command line, logging, signals. Everything else
//! lives in the library crates.
#![deny(unsafe_code)] // one exception: allocator.rs

mod allocator;
mod link_local;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use waxwing::modules;
use waxwing_core::Config;

// mimalloc instead of the system allocator: per-thread free lists suit
// tokio's work-stealing (a buffer allocated on one worker and freed on
// another). Measured in bench/ (see bench/README.md). Freed memory goes
// back to the OS when the worker threads collect (allocator.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "waxwing", version, about = "Waxwing XMPP server")]
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
    /// Run the server until SIGTERM or SIGINT.
    Serve,
    /// Manage accounts (works while the server runs).
    User {
        #[command(subcommand)]
        action: user::Action,
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
    let config = load_config(cli.config.as_ref())?;
    match cli.command {
        Command::Config {
            action: ConfigAction::Check,
        } => {
            println!("configuration is valid: hosts {}", config.hosts.join(", "));
            Ok(())
        }
        Command::User { action } => runtime()?.block_on(user::run(&config, action)),
        Command::LinkLocal(opts) => {
            init_logging(&config);
            runtime()?.block_on(link_local::run(&config, opts))
        }
        Command::Serve => {
            init_logging(&config);
            runtime()?.block_on(serve(config))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(allocator::collect_when_idle)
        .build()
        .context("starting the runtime")
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let modules = modules::all(&config);
    // Handlers first: a SIGTERM that arrives right after `ready` must stop
    // the server gracefully, not kill it.
    let stop = shutdown_signal()?;
    let running = waxwing_core::start(config, modules).await?;
    // Machine-readable lines on stdout: port 0 resolves here, and tests
    // (and operators' scripts) wait for `ready` instead of sleeping.
    for (kind, addr) in &running.listeners {
        println!("waxwing: listening {} {addr}", kind.name());
    }
    println!("waxwing: ready");
    stop.await;
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
