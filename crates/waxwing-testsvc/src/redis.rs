//! A Redis server of our own on a loopback port, without persistence (the
//! cluster keeps only live state there), which a test can stop and start
//! again on the same port.

use std::path::Path;

use crate::supervise::{Spec, Supervised, free_port};

/// Ports tried before giving up.
const ATTEMPTS: usize = 5;

/// A Redis server; stopped (and its directory deleted) when dropped.
pub struct Redis {
    server: Option<Supervised>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one.
    ///
    /// # Panics
    /// When `redis-server` cannot be started: the calling test fails.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("waxwing-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let port = free_port();
            match start_server(dir.path(), port) {
                Ok(server) => {
                    return Redis {
                        server: Some(server),
                        port,
                        dir,
                    };
                }
                Err(log) if log.contains("in use") => last = log,
                Err(log) => panic!("redis-server did not start:\n{log}"),
            }
        }
        panic!("redis-server found no free port:\n{last}");
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it (clients see their connections close); its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
    }

    /// Starts it again on the same port after [`Redis::stop`].
    ///
    /// # Panics
    /// When it cannot (someone took the port meanwhile, say).
    pub fn restart(&mut self) {
        self.stop();
        let server = start_server(self.dir.path(), self.port)
            .unwrap_or_else(|log| panic!("redis-server did not restart:\n{log}"));
        self.server = Some(server);
    }

    /// Its recent log.
    pub fn log(&self) -> String {
        self.server
            .as_ref()
            .map(Supervised::log_text)
            .unwrap_or_default()
    }
}

fn start_server(dir: &Path, port: u16) -> Result<Supervised, String> {
    let command = [
        "redis-server",
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    Supervised::start(&Spec {
        command,
        user: None,
        stop_signal: "TERM",
        cleanup: None,
        ready: "Ready to accept connections",
    })
}
