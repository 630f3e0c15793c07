//! The extauth protocol of ejabberd and Prosody: a long-running program
//! reads requests on stdin and answers on stdout, so existing scripts work
//! unchanged.
//!
//! Each request is `auth:USER:SERVER:PASSWORD`, `isuser:USER:SERVER` or
//! `setpass:USER:SERVER:PASSWORD`, sent as a 2-byte big-endian length and
//! the bytes; each answer is a 2-byte length (2) and a 2-byte big-endian
//! result, 1 for yes and 0 for no.
//!
//! A program answers one request at a time, so the pool runs `instances`
//! copies, each owned by one worker task that takes requests from a shared
//! bounded queue. A copy that crashes, answers nonsense or exceeds the
//! timeout is killed and started again for the next request: one hung
//! script cannot hold logins up longer than the timeout.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::config::ExtAuthConfig;

/// Why a request got no yes-or-no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExtAuthError {
    #[error("extauth queue full")]
    Busy,
    #[error("extauth program did not answer in time")]
    Timeout,
    #[error("extauth program failed: {0}")]
    Program(String),
    #[error("request too long for the extauth framing")]
    TooLong,
    #[error("extauth pool stopped")]
    Stopped,
}

/// One request, as the protocol spells it.
#[derive(Debug, Clone)]
pub enum Request {
    Auth {
        user: String,
        server: String,
        password: String,
    },
    IsUser {
        user: String,
        server: String,
    },
    SetPass {
        user: String,
        server: String,
        password: String,
    },
}

impl Request {
    fn encode(&self) -> Result<Vec<u8>, ExtAuthError> {
        let line = match self {
            Request::Auth {
                user,
                server,
                password,
            } => format!("auth:{user}:{server}:{password}"),
            Request::IsUser { user, server } => format!("isuser:{user}:{server}"),
            Request::SetPass {
                user,
                server,
                password,
            } => {
                format!("setpass:{user}:{server}:{password}")
            }
        };
        let len = u16::try_from(line.len()).map_err(|_| ExtAuthError::TooLong)?;
        let mut out = Vec::with_capacity(line.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(line.as_bytes());
        Ok(out)
    }
}

type Job = (Request, oneshot::Sender<Result<bool, ExtAuthError>>);

/// The running copies of one host's program.
pub struct Pool {
    queue: mpsc::Sender<Job>,
}

impl Pool {
    /// Starts the worker tasks; programs start on their first request.
    pub fn start(config: &ExtAuthConfig) -> Arc<Pool> {
        let (tx, rx) = mpsc::channel(config.queue);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..config.instances {
            let worker = Worker {
                config: config.clone(),
                child: None,
                n,
            };
            tokio::spawn(worker.run(rx.clone()));
        }
        Arc::new(Pool { queue: tx })
    }

    /// Asks the program; `Ok(true)` is its yes.
    pub async fn ask(&self, request: Request) -> Result<bool, ExtAuthError> {
        let (tx, rx) = oneshot::channel();
        self.queue.try_send((request, tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ExtAuthError::Busy,
            mpsc::error::TrySendError::Closed(_) => ExtAuthError::Stopped,
        })?;
        rx.await.map_err(|_| ExtAuthError::Stopped)?
    }
}

struct Running {
    // Held so that `kill_on_drop` ends the program with its worker.
    _child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

struct Worker {
    config: ExtAuthConfig,
    child: Option<Running>,
    n: usize,
}

impl Worker {
    async fn run(mut self, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
        loop {
            // The lock only serialises who waits for the next job; it is
            // released before the job is worked on.
            let job = queue.lock().await.recv().await;
            let Some((request, reply)) = job else {
                return; // the pool was dropped: the program goes with us
            };
            let answer = self.answer(&request).await;
            if let Err(e) = &answer {
                tracing::warn!(instance = self.n, program = %self.config.program.display(), error = %e, "extauth request failed");
            }
            let _ = reply.send(answer);
        }
    }

    async fn answer(&mut self, request: &Request) -> Result<bool, ExtAuthError> {
        let frame = request.encode()?;
        if self.child.is_none() {
            self.child = Some(self.spawn()?);
        }
        let running = self.child.as_mut().expect("just started");
        let exchange = async {
            running.stdin.write_all(&frame).await?;
            running.stdin.flush().await?;
            let mut head = [0u8; 2];
            running.stdout.read_exact(&mut head).await?;
            let len = u16::from_be_bytes(head);
            if len != 2 {
                return Err(std::io::Error::other(format!(
                    "answer of length {len}, expected 2"
                )));
            }
            let mut body = [0u8; 2];
            running.stdout.read_exact(&mut body).await?;
            Ok(u16::from_be_bytes(body))
        };
        let outcome = tokio::time::timeout(self.config.timeout, exchange).await;
        match outcome {
            Ok(Ok(1)) => Ok(true),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(other)) => {
                self.child = None;
                Err(ExtAuthError::Program(format!(
                    "answered {other}, expected 0 or 1"
                )))
            }
            Ok(Err(e)) => {
                // Exited or broke the framing: a fresh copy for the next request.
                self.child = None;
                Err(ExtAuthError::Program(e.to_string()))
            }
            Err(_) => {
                // It may still answer this request later and desynchronise
                // the stream: a copy that ran over is never reused.
                self.child = None;
                Err(ExtAuthError::Timeout)
            }
        }
    }

    fn spawn(&self) -> Result<Running, ExtAuthError> {
        let mut child = Command::new(&self.config.program)
            .args(&self.config.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The scripts' own diagnostics go to our log stream.
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ExtAuthError::Program(format!(
                    "cannot start {}: {e}",
                    self.config.program.display()
                ))
            })?;
        tracing::info!(instance = self.n, program = %self.config.program.display(), "extauth program started");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        Ok(Running {
            _child: child,
            stdin,
            stdout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_length_prefixed() {
        let r = Request::Auth {
            user: "alice".into(),
            server: "example.org".into(),
            password: "p:w".into(),
        };
        let f = r.encode().unwrap();
        assert_eq!(&f[..2], &[0, 26]);
        assert_eq!(&f[2..], b"auth:alice:example.org:p:w");
        let long = Request::IsUser {
            user: "a".repeat(70_000),
            server: "x".into(),
        };
        assert!(matches!(long.encode(), Err(ExtAuthError::TooLong)));
    }
}
