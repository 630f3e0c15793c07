//! Bounded database calls and a circuit breaker, so that a PostgreSQL server
//! that stops answering costs the server one bounded wait, not a hang.
//!
//! sqlx bounds only the wait for a pooled connection. A statement sent on a
//! connection to a server that froze (a network partition, a stalled host)
//! waits for ever: no timeout, no TCP keepalive, and a server that cannot
//! run cannot enforce its own `statement_timeout`. Every statement of the
//! shared `dml/` files therefore goes through [`Bounded::bounded`]: it fails
//! after [`BOUND`], and a failure that says the server is unreachable (that
//! timeout, an I/O error, the pool giving up) *opens* the breaker. While it
//! is open, calls fail at once instead of each waiting out the bound, so
//! that, say, a message whose archiving fails is delivered without delay
//! rather than after a pile of timeouts (callers decide what a failed call
//! means: MAM delivers unarchived, offline storage bounces with `wait`).
//! After [`COOL_DOWN`] one call is let through as a probe; its success
//! closes the breaker (the pool has reconnected by then), its failure opens
//! it again.
//!
//! One breaker per process: `waxwing serve` has one database. (`storage
//! migrate` has two; an unreachable one fails the migration either way.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one statement, with the wait for its connection, may take.
/// Longer than any statement Waxwing issues takes on a healthy server;
/// also sqlx's pool acquire timeout (`ACQUIRE_TIMEOUT`).
pub(crate) const BOUND: Duration = Duration::from_secs(10);

/// How long calls fail at once after the server was found unreachable,
/// before one call probes it again.
pub(crate) const COOL_DOWN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through.
    Closed,
    /// The server was unreachable: calls fail at once until `until`.
    Open { until: Instant },
    /// One call is finding out whether the server is back; the others fail.
    Probing,
}

/// What a call may do, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Run,
    Probe,
    Refuse,
}

#[derive(Debug)]
struct Breaker {
    state: Mutex<State>,
}

static BREAKER: Breaker = Breaker {
    state: Mutex::new(State::Closed),
};

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admit(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match *state {
            State::Closed => Admission::Run,
            State::Open { until } if now >= until => {
                *state = State::Probing;
                Admission::Probe
            }
            State::Open { .. } | State::Probing => Admission::Refuse,
        }
    }

    /// A call ended; `reachable` is false when it says the server cannot be reached.
    fn finish(&self, admission: Admission, reachable: bool, now: Instant) {
        let mut state = self.lock();
        if reachable {
            if *state != State::Closed {
                tracing::info!("PostgreSQL answers again; database calls resume");
            }
            *state = State::Closed;
        } else if admission == Admission::Probe || *state == State::Closed {
            if *state == State::Closed {
                tracing::error!(
                    bound_secs = BOUND.as_secs(),
                    "PostgreSQL is unreachable; database calls fail at once until it answers again"
                );
            }
            *state = State::Open {
                until: now + COOL_DOWN,
            };
        }
    }
}

/// Errors that say nothing about the server's health (a constraint
/// violation, a decoding problem) do not open the breaker.
fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    )
}

fn refused() -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(
        io::ErrorKind::NotConnected,
        "PostgreSQL is unreachable (no answer recently; retrying)",
    ))
}

fn timed_out() -> sqlx::Error {
    sqlx::Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("PostgreSQL did not answer within {} s", BOUND.as_secs()),
    ))
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `.bounded()` on a sqlx call: see the module docs.
pub(crate) trait Bounded<'a, T>:
    Future<Output = Result<T, sqlx::Error>> + Send + 'a
{
    fn bounded(self) -> BoxFuture<'a, Result<T, sqlx::Error>>;
}

impl<'a, T, F> Bounded<'a, T> for F
where
    F: Future<Output = Result<T, sqlx::Error>> + Send + 'a,
    T: 'a,
{
    fn bounded(self) -> BoxFuture<'a, Result<T, sqlx::Error>> {
        Box::pin(run(&BREAKER, self))
    }
}

async fn run<T>(
    breaker: &Breaker,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let admission = breaker.admit(Instant::now());
    if admission == Admission::Refuse {
        return Err(refused());
    }
    let result = match tokio::time::timeout(BOUND, call).await {
        Ok(r) => r,
        Err(_) => Err(timed_out()),
    };
    let reachable = result.as_ref().err().is_none_or(|e| !unreachable(e));
    breaker.finish(admission, reachable, Instant::now());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed),
        }
    }

    fn io_error() -> sqlx::Error {
        sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_costs_one_bound_then_calls_fail_at_once() {
        let b = breaker();
        let started = tokio::time::Instant::now();
        let r: Result<(), _> = run(&b, std::future::pending()).await;
        assert!(matches!(r, Err(sqlx::Error::Io(e)) if e.kind() == io::ErrorKind::TimedOut));
        assert_eq!(started.elapsed(), BOUND);
        // Open: refused without running the call.
        let r = run(&b, async { panic!("ran while open") as Result<(), _> }).await;
        assert!(matches!(r, Err(sqlx::Error::Io(e)) if e.kind() == io::ErrorKind::NotConnected));
    }

    #[test]
    fn one_probe_after_the_cool_down_closes_or_reopens() {
        let b = breaker();
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admission::Run);
        b.finish(Admission::Run, false, t0);
        assert_eq!(b.admit(t0), Admission::Refuse);
        let later = t0 + COOL_DOWN;
        assert_eq!(b.admit(later), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(later), Admission::Refuse);
        b.finish(Admission::Probe, false, later);
        assert_eq!(b.admit(later), Admission::Refuse);
        let again = later + COOL_DOWN;
        assert_eq!(b.admit(again), Admission::Probe);
        b.finish(Admission::Probe, true, again);
        assert_eq!(b.admit(again), Admission::Run);
    }

    #[tokio::test]
    async fn only_connectivity_errors_open_it() {
        let b = breaker();
        let r: Result<(), _> = run(&b, async { Err(sqlx::Error::RowNotFound) }).await;
        assert!(r.is_err());
        assert_eq!(*b.lock(), State::Closed);
        let r: Result<(), _> = run(&b, async { Err(io_error()) }).await;
        assert!(r.is_err());
        assert!(matches!(*b.lock(), State::Open { .. }));
    }
}
