//! A PostgreSQL cluster of our own: `initdb` in a temporary directory, the
//! server on a loopback port with its Unix socket in that directory, as the
//! `postgres` user when we are root (PostgreSQL refuses to run as root),
//! trust authentication (nothing but this machine's loopback reaches it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

use crate::supervise::{Spec, Supervised, chown_for, free_port, is_root};

/// Where Debian puts the server binaries (`postgresql` package, version 15).
const BIN_DIRS: &[&str] = &[
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];

/// The unprivileged user the server runs as when the tests run as root.
const USER: &str = "postgres";

/// Ports tried before giving up (another test may take the drawn port
/// between the check and the server's bind).
const ATTEMPTS: usize = 5;

/// A running PostgreSQL server with its data directory.
pub struct Cluster {
    server: Supervised,
    port: u16,
    dir: PathBuf,
    next_db: AtomicU32,
}

impl Cluster {
    /// The cluster of this test process, started on first use.
    ///
    /// # Panics
    /// When PostgreSQL cannot be started: the calling test fails.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a cluster of its own (for a test that stops and restarts
    /// PostgreSQL); stopped and deleted when dropped.
    pub fn start() -> Result<Cluster, String> {
        let bin = bin_dir()?;
        let base = tempfile::Builder::new()
            .prefix("waxwing-pg-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?
            // The supervisor deletes it once the server has stopped, also
            // when this process is killed.
            .keep();
        chown_for(&base, Some(USER))?;
        let data = base.join("data");
        let mut initdb = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={USER}"),
                &format!("--regid={USER}"),
                "--init-groups",
                "--",
            ]);
            c.arg(bin.join("initdb"));
            c
        } else {
            Command::new(bin.join("initdb"))
        };
        let out = initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                // Throwaway data: no fsync at initdb or later.
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&base);
            return Err(format!(
                "initdb failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let port = free_port();
            match start_server(&bin, &base, &data, port) {
                Ok(server) => {
                    return Ok(Cluster {
                        server,
                        port,
                        dir: base,
                        next_db: AtomicU32::new(0),
                    });
                }
                Err(log) if log.contains("already in use") => last = log,
                Err(log) => {
                    let _ = std::fs::remove_dir_all(&base);
                    return Err(format!("PostgreSQL did not start:\n{log}"));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&base);
        Err(format!("PostgreSQL found no free port:\n{last}"))
    }

    /// The loopback TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding its Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a fresh, empty database and returns its URL.
    ///
    /// # Panics
    /// When the server refuses (the calling test fails).
    pub async fn database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        self.url(&name)
    }

    /// The server's recent log.
    pub fn log(&self) -> String {
        self.server.log_text()
    }
}

fn start_server(bin: &Path, base: &Path, data: &Path, port: u16) -> Result<Supervised, String> {
    let settings = [
        "listen_addresses=127.0.0.1".to_string(),
        format!("port={port}"),
        format!("unix_socket_directories={}", base.display()),
        // Throwaway data: durability would only cost time.
        "fsync=off".into(),
        "synchronous_commit=off".into(),
        "full_page_writes=off".into(),
        // Several waxwing nodes and test pools at once.
        "max_connections=300".into(),
        "shared_buffers=32MB".into(),
    ];
    let mut command = vec![
        bin.join("postgres").display().to_string(),
        "-D".into(),
        data.display().to_string(),
    ];
    for s in settings {
        command.push("-c".into());
        command.push(s);
    }
    Supervised::start(&Spec {
        command,
        user: Some(USER),
        // SIGINT: "fast" shutdown (disconnects clients, then exits).
        stop_signal: "INT",
        cleanup: Some(base),
        ready: "database system is ready to accept connections",
    })
}

fn bin_dir() -> Result<PathBuf, String> {
    BIN_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("postgres").exists())
        .ok_or_else(|| {
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): \
             scripts/packages/storage.list lists the Debian package, \
             `bash scripts/test.sh` installs it"
                .to_string()
        })
}
