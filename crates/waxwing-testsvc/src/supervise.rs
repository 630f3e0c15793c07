//! Running a server process for the lifetime of a test (or test process).
//!
//! The server is started by `sh`, which holds the read end of a pipe whose
//! write end only this process has. When this process drops the
//! [`Supervised`] handle or dies, the pipe reaches end-of-file and the shell
//! stops the server with its graceful-shutdown signal, waits for it, and
//! deletes its directory. No `PR_SET_PDEATHSIG` (it follows the spawning
//! *thread*, not the process) and no pid files to clean up after a crash.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Log lines kept for the panic message of a server that failed.
const LOG_LINES: usize = 200;

/// How long a server may take to report that it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The shell supervisor. `$1` is the signal that stops the server, `$2` the
/// directory to delete afterwards, the rest the server's command line. The
/// watcher reads fd 3 (a copy of stdin: an asynchronous list's own stdin is
/// /dev/null); the server's exit status is reported last, so a reader of
/// the log knows it ended.
const SUPERVISOR: &str = r#"
sig=$1; dir=$2; shift 2
exec 3<&0 </dev/null
"$@" 3<&- &
server=$!
( read -r _ <&3; kill -s "$sig" "$server" 2>/dev/null ) &
watcher=$!
wait "$server"
status=$?
kill "$watcher" 2>/dev/null
rm -rf "$dir"
echo "waxwing-testsvc: server exited with status $status"
"#;

/// A server process under the shell supervisor.
pub(crate) struct Supervised {
    shell: Child,
    /// Dropping it is the stop request.
    stdin: Option<ChildStdin>,
    log: Arc<Mutex<Vec<String>>>,
    exited: Mutex<mpsc::Receiver<()>>,
}

/// What to start and how to know it is ready.
pub(crate) struct Spec<'a> {
    /// The server's program and arguments.
    pub command: Vec<String>,
    /// Run it as this user (the server refuses root), when we are root.
    pub user: Option<&'a str>,
    /// The signal that shuts it down cleanly.
    pub stop_signal: &'a str,
    /// Deleted once it has stopped (`None`: nothing to delete).
    pub cleanup: Option<&'a Path>,
    /// A line of its output that says it accepts connections.
    pub ready: &'a str,
}

impl Supervised {
    /// Starts the server and waits for its ready line. `Err` carries the
    /// server's output when it exits first or does not get ready in time.
    pub(crate) fn start(spec: &Spec<'_>) -> Result<Supervised, String> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("waxwing-testsvc")
            .arg(spec.stop_signal)
            .arg(spec.cleanup.map(PathBuf::from).unwrap_or_default());
        if let Some(user) = spec.user.filter(|_| is_root()) {
            command.args([
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--",
            ]);
        }
        command
            .args(&spec.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut shell = command
            .spawn()
            .map_err(|e| format!("cannot run sh for {:?}: {e}", spec.command))?;
        let stdin = shell.stdin.take();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (exited_tx, exited) = mpsc::channel();
        // One reader per pipe; each keeps draining after the ready line, so
        // the server never blocks on a full pipe.
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(shell.stdout.take().expect("piped stdout")),
            Box::new(shell.stderr.take().expect("piped stderr")),
        ];
        for (i, stream) in streams.into_iter().enumerate() {
            let log = log.clone();
            let ready_tx = ready_tx.clone();
            let exited_tx = exited_tx.clone();
            let ready = spec.ready.to_string();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains(&ready) {
                        let _ = ready_tx.send(true);
                    }
                    let exit = line.starts_with("waxwing-testsvc: server exited");
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.len() == LOG_LINES {
                        log.remove(0);
                    }
                    log.push(line);
                    drop(log);
                    if exit {
                        let _ = ready_tx.send(false);
                        let _ = exited_tx.send(());
                    }
                }
                // stdout closing means the supervisor is gone.
                if i == 0 {
                    let _ = ready_tx.send(false);
                    let _ = exited_tx.send(());
                }
            });
        }
        let mut server = Supervised {
            shell,
            stdin,
            log,
            exited: Mutex::new(exited),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(true) => Ok(server),
            Ok(false) => Err(server.log_text()),
            Err(_) => {
                server.stop();
                Err(format!(
                    "not ready after {START_TIMEOUT:?}:\n{}",
                    server.log_text()
                ))
            }
        }
    }

    /// The server's recent output.
    pub(crate) fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Stops the server gracefully and waits until it and its supervisor
    /// have exited (and its directory is gone).
    pub(crate) fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        let _ = exited.recv_timeout(START_TIMEOUT);
        drop(exited);
        let _ = self.shell.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn is_root() -> bool {
    // The owner of /proc/self is this process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Gives `path` to `user` when we are root (the server runs as that user).
pub(crate) fn chown_for(path: &Path, user: Option<&str>) -> Result<(), String> {
    let Some(user) = user.filter(|_| is_root()) else {
        return Ok(());
    };
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(path)
        .status()
        .map_err(|e| format!("cannot run chown: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "chown {user} {} failed: {status} (does the user exist? \
             scripts/packages/storage.list installs the packages that create it)",
            path.display()
        ))
    }
}

/// A loopback port nothing listens on, drawn at random *below* the kernel's
/// ephemeral range (32768 and up), not with `bind(0)`: a port from the
/// ephemeral range can be taken, before the server binds it, as the source
/// port of any outgoing connection on the machine, while a random port below
/// it collides only with another test drawing the same one (and a server
/// that loses that race is started again on another port).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    for _ in 0..1000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 10_000 + (seed >> 33) as u16 % 22_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 10000 and 32000");
}
